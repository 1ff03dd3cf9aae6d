/*
 * scopefile.c — the scoped halts across restarts (ARCHITECTURE §13): the
 * scope file kill_switch_scopes.json in killswitch.state_dir, beside the
 * state file (whose bytes scopes never change), and the server's own copy
 * pg_killswitch/scopes.json, which is what it loads at start.
 *
 * Both hold the same bytes: every scope in force, committed or raised in a
 * transaction not yet committed ("unconfirmed"), by role OID, with its mode,
 * generation and since; a version that rises with every write; the key_id
 * and an HMAC-SHA256 under the signing secret over the canonical form of
 * every other member (the state file's scheme, store.c).  Written under the
 * writers' lock, waited for at most KS_LOCK_RAISE_WAIT_MS, the copy first:
 * a raise before its commit, every change after its commit, an abort after
 * it.  A write that cannot be made is a WARNING, never an error: the set in
 * shared memory is in force whatever the file says, and the next write
 * carries it.
 *
 * At start (the postmaster, before any backend runs) the copy is loaded,
 * unconfirmed raises included: never lower than what may have committed.
 * The watcher's first look that holds the lock ordering changes then sets
 * the committed scopes to what the chain says (scopechange.c,
 * ks_scopes_from_history()): a raise's event is in its transaction, so the
 * chain holds exactly the committed ones.  A copy or a scope file that does
 * not verify, or a scope file ahead of the copy, is tampering (startup.c
 * makes the verdict).  A scope file that lags the copy (a crash between the
 * two writes) or is missing is put back.  Nothing here throws an error.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/memutils.h"

#include "guc.h"
#include "names.h"
#include "persist.h"
#include "scope.h"
#include "scopefile.h"
#include "state.h"
#include "store.h"

/* 10,000 scopes of about 110 bytes each, with room */
#define KS_MAX_SCOPE_FILE_SIZE (4 * 1024 * 1024)

static void
scope_file_path(char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", ks_state_dir, KS_SCOPE_FILE_NAME);
}

/* Order by role, and within a role the highest mode first. */
static int
by_role_mode(const void *a, const void *b)
{
	const KsScope *x = a;
	const KsScope *y = b;

	if (x->role != y->role)
		return x->role < y->role ? -1 : 1;
	return (int) y->mode - (int) x->mode;
}

/*
 * The file's text for the scopes given (sorted here), signed: one member per
 * role, the highest of its committed state and its raises in flight.
 */
static bool
file_text(StringInfo out, KsScope *list, int n, int64 version,
		  const char *secret, size_t secretlen)
{
	KsJson	   *obj = ks_json_object();
	KsJson	   *scopes = ks_json_object();
	StringInfoData canon;
	char		key_id[17];
	char		sig[KS_HEX_DIGEST_LEN + 1];

	qsort(list, n, sizeof(KsScope), by_role_mode);
	for (int i = 0; i < n; i++)
	{
		KsJson	   *s;
		char		since[40];

		if (i > 0 && list[i].role == list[i - 1].role)
			continue;			/* a lower mode of the same role */
		s = ks_json_object();
		ks_format_iso_utc(ks_timestamptz_to_unix_usec(list[i].since), since, sizeof(since));
		ks_json_put_int(s, "generation", list[i].generation);
		ks_json_put_string(s, "mode", ks_mode_file_names[list[i].mode]);
		ks_json_put_string(s, "since", pstrdup(since));
		ks_json_put_bool(s, "unconfirmed", list[i].owner != KS_SCOPE_COMMITTED);
		ks_json_put_value(scopes, psprintf("%u", list[i].role), s);
	}
	ks_key_id(secret, secretlen, key_id);
	ks_json_put_string(obj, "key_id", pstrdup(key_id));
	ks_json_put_value(obj, "scopes", scopes);
	ks_json_put_int(obj, "version", version);
	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, NULL);
	if (!ks_hmac_hex(secret, secretlen, canon.data, canon.len, sig))
		return false;
	ks_json_put_string(obj, "signature", pstrdup(sig));
	resetStringInfo(out);
	ks_json_canonical(out, obj, NULL);
	appendStringInfoChar(out, '\n');
	return true;
}

/*
 * Write the scope file and the copy: every scope in force now — before a
 * raise's commit, after any change's commit, after an abort that wrote.
 * The writers' lock is waited for as a raise waits for it (bounded): what
 * must go on does not wait on a lock anyone may hold (ARCHITECTURE §5.7).
 */
void
ks_scope_file_write(void)
{
	char		problem[KS_PROBLEM_LEN];
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	StringInfoData text;
	KsScope    *list;
	int			n;
	int			fd;
	bool		ok;

	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
	{
		ereport(WARNING,
				(errmsg("could not write the scope file: %s", problem),
				 errdetail("The scoped halts are in force in shared memory; the next change writes the file.")));
		return;
	}
	fd = ks_lock_dir_within(ks_state_dir, KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (fd < 0)
	{
		ereport(WARNING,
				(errmsg("could not write the scope file: %s", problem),
				 errdetail("The scoped halts are in force in shared memory; the next change writes the file.")));
		return;
	}
	/* read under the lock: the last writer writes the newest set */
	list = ks_scope_list_all(&n);
	initStringInfo(&text);
	ok = file_text(&text, list, n, ks_scope_file_version_next(), secret, secretlen);
	if (!ok)
		strlcpy(problem, "could not compute HMAC-SHA256", sizeof(problem));
	ok = ok && ks_write_file_durably(KS_SCOPES_COPY_FILE, text.data, text.len, problem, sizeof(problem));
	scope_file_path(path, sizeof(path));
	ok = ok && (ks_shared->state_dir_foreign ||
				ks_write_shared_file_durably(path, text.data, text.len, problem, sizeof(problem)));
	ks_unlock_dir(fd);
	if (!ok)
		ereport(WARNING,
				(errmsg("could not write the scope file: %s", problem),
				 errdetail("The scoped halts are in force in shared memory; the next change writes the file.")));
}

/* The scope file as the watcher last found it the server's own: its stat. */
static struct stat known_stat;
static bool known = false;

static bool
same_stat(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
		a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Do the scope file and the copy hold the same bytes (both missing: yes)? */
static bool
same_bytes(const char *path, bool *shared_missing, char **copy, size_t *copylen)
{
	char	   *shared = NULL;
	size_t		sharedlen = 0;
	char		problem[KS_PROBLEM_LEN];
	bool		have_copy = ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, copy, copylen,
										 problem, sizeof(problem));
	bool		have_shared = ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, &shared, &sharedlen,
										   problem, sizeof(problem));

	*shared_missing = !have_shared && access(path, F_OK) != 0;
	if (!have_copy)
		*copy = NULL;
	if (!have_copy || !have_shared)
		return !have_copy && !have_shared;
	return sharedlen == *copylen && memcmp(shared, *copy, sharedlen) == 0;
}

/*
 * The watcher, at every round (worker.c): is the scope file the server's own
 * bytes, those of its copy?  Outside writes of it are not accepted
 * (ARCHITECTURE §13): false, with problem, is a tamper verdict for the
 * caller; the copy's bytes are put back.  Bytes that differ are read again
 * under the writers' lock before they are called someone else's — a writer
 * between its two writes holds it; taken only if free (busy: the next round
 * looks again).  A missing file is put back, no verdict (nothing was
 * lowered: the scopes in force are shared memory's).  Never an error.
 */
bool
ks_scope_file_is_ours(char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	struct stat st;
	char	   *copy;
	size_t		copylen;
	bool		missing;
	bool		ours;
	int			fd;
	MemoryContext tmp;
	MemoryContext old;

	if (ks_shared->state_dir_foreign)
		return true;
	scope_file_path(path, sizeof(path));
	if (stat(path, &st) == 0 && known && same_stat(&st, &known_stat))
		return true;
	/* the files' bytes go with this context: the watcher lives long */
	tmp = AllocSetContextCreate(CurrentMemoryContext, "killswitch scope file", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(tmp);
	if (same_bytes(path, &missing, &copy, &copylen))
		ours = true;
	else
	{
		fd = ks_lock_dir_within(ks_state_dir, 0, problem, problemlen);
		if (fd < 0)
		{
			MemoryContextSwitchTo(old);
			MemoryContextDelete(tmp);
			return true;		/* a writer is at it: the next round */
		}
		ours = same_bytes(path, &missing, &copy, &copylen);
		if (!ours && copy != NULL &&
			!ks_write_shared_file_durably(path, copy, copylen, problem, problemlen))
			ereport(WARNING,
					(errmsg("could not put the scope file back: %s", problem)));
		ks_unlock_dir(fd);
		if (!ours && missing)
			ours = true;		/* put back, no verdict */
		else if (!ours)
			snprintf(problem, problemlen, "%s was changed outside the server", KS_SCOPE_FILE_NAME);
	}
	known = stat(path, &known_stat) == 0;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(tmp);
	return ours;
}

/* Parse and verify a scope file's text; NULL with problem if it does not verify. */
static const KsJson *
verified(const char *text, size_t len, const char *secret, size_t secretlen,
		 int64 *version, char *problem, size_t problemlen)
{
	KsJson	   *obj = ks_json_parse(text, len, problem, problemlen);
	const KsJson *sig;
	const KsJson *ver;
	const KsJson *scopes;
	StringInfoData canon;
	char		expect[KS_HEX_DIGEST_LEN + 1];

	if (obj == NULL)
		return NULL;
	sig = ks_json_get(obj, "signature");
	ver = ks_json_get(obj, "version");
	scopes = ks_json_get(obj, "scopes");
	if (obj->kind != KSJ_OBJECT || sig == NULL || sig->kind != KSJ_STRING ||
		ver == NULL || ver->kind != KSJ_INT || scopes == NULL || scopes->kind != KSJ_OBJECT)
	{
		snprintf(problem, problemlen, "not a scope file (signature, version and scopes required)");
		return NULL;
	}
	initStringInfo(&canon);
	ks_json_canonical(&canon, obj, "signature");
	if (!ks_hmac_hex(secret, secretlen, canon.data, canon.len, expect) ||
		!ks_hex_equal(expect, sig->str))
	{
		snprintf(problem, problemlen, "bad signature");
		return NULL;
	}
	for (int i = 0; i < scopes->nitems; i++)
	{
		const KsJson *s = scopes->items[i];
		const KsJson *mode = ks_json_get(s, "mode");
		const KsJson *gen = ks_json_get(s, "generation");
		const KsJson *since = ks_json_get(s, "since");
		char	   *end;
		int64		usec;
		unsigned long oid = strtoul(scopes->keys[i], &end, 10);

		if (*end != '\0' || oid == 0 || oid > PG_UINT32_MAX || s->kind != KSJ_OBJECT ||
			mode == NULL || mode->kind != KSJ_STRING || ks_mode_from_file_name(mode->str) <= (int) KS_DISENGAGED ||
			gen == NULL || gen->kind != KSJ_INT || gen->ival < 0 || gen->ival > KS_MAX_GENERATION ||
			since == NULL || since->kind != KSJ_STRING || !ks_parse_iso(since->str, &usec))
		{
			snprintf(problem, problemlen, "scope \"%s\" is malformed", scopes->keys[i]);
			return NULL;
		}
	}
	*version = ver->ival;
	return scopes;
}

/* Put every scope of a verified file in force. */
static void
load(const KsJson *scopes)
{
	for (int i = 0; i < scopes->nitems; i++)
	{
		const KsJson *s = scopes->items[i];
		int64		usec = 0;

		(void) ks_parse_iso(ks_json_get(s, "since")->str, &usec);
		ks_scope_set_committed((Oid) strtoul(scopes->keys[i], NULL, 10),
							   (KsMode) ks_mode_from_file_name(ks_json_get(s, "mode")->str),
							   ks_json_get(s, "generation")->ival,
							   ks_unix_usec_to_timestamptz(usec));
	}
}

/*
 * At start, in the postmaster (startup.c): put the scopes of the copy in
 * force and the scope file back to the copy's bytes.  False, with problem,
 * if either cannot be trusted: the caller's verdict is the halt.  Whatever
 * verifies is loaded all the same (raising needs nothing).
 */
bool
ks_scope_file_load(const char *secret, size_t secretlen, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *copy = NULL,
			   *shared = NULL;
	size_t		copylen = 0,
				sharedlen = 0;
	char		copy_problem[KS_PROBLEM_LEN];
	char		shared_problem[KS_PROBLEM_LEN];
	char		why[KS_PROBLEM_LEN];
	bool		have_copy,
				have_shared;
	const KsJson *copy_scopes = NULL;
	const KsJson *shared_scopes = NULL;
	int64		copy_version = 0,
				shared_version = 0;

	scope_file_path(path, sizeof(path));
	have_copy = ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, &copy, &copylen,
							 copy_problem, sizeof(copy_problem));
	have_shared = ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, &shared, &sharedlen,
							   shared_problem, sizeof(shared_problem));
	if (!have_copy && !have_shared)
		return true;			/* no scope was ever raised here */
	if (have_copy)
		copy_scopes = verified(copy, copylen, secret, secretlen, &copy_version, why, sizeof(why));
	if (have_copy && copy_scopes == NULL)
		snprintf(copy_problem, sizeof(copy_problem), "%s", why);
	if (have_shared)
		shared_scopes = verified(shared, sharedlen, secret, secretlen, &shared_version, why, sizeof(why));
	if (have_shared && shared_scopes == NULL)
		snprintf(shared_problem, sizeof(shared_problem), "%s", why);

	/* raising needs nothing: whatever verifies is in force */
	if (copy_scopes)
		load(copy_scopes);
	if (shared_scopes && (copy_scopes == NULL || shared_version > copy_version))
		load(shared_scopes);
	ks_scope_file_version_set(Max(copy_version, shared_version));

	if (have_copy && copy_scopes == NULL)
	{
		snprintf(problem, problemlen, "the server's copy %s: %s", KS_SCOPES_COPY_FILE, copy_problem);
		return false;
	}
	if (have_shared && shared_scopes == NULL)
		snprintf(problem, problemlen, "%s: %s", KS_SCOPE_FILE_NAME, shared_problem);
	else if (!have_copy)
		snprintf(problem, problemlen, "%s without the server's copy: not the server's own", KS_SCOPE_FILE_NAME);
	else if (have_shared && shared_version > copy_version)
		snprintf(problem, problemlen, "%s is ahead of the server's copy (version " INT64_FORMAT " > " INT64_FORMAT "): not the server's own",
				 KS_SCOPE_FILE_NAME, shared_version, copy_version);
	else
		problem[0] = '\0';
	if (problem[0] != '\0')
	{
		/* set aside (as a rejected state file is), and the server's bytes put back */
		char		aside[MAXPGPATH];

		snprintf(aside, sizeof(aside), "%s.rejected", path);
		if (rename(path, aside) != 0)
			ereport(WARNING,
					(errmsg("could not set the rejected scope file aside: %m")));
		else if (have_copy && !ks_shared->state_dir_foreign &&
				 !ks_write_shared_file_durably(path, copy, copylen, why, sizeof(why)))
			ereport(WARNING,
					(errmsg("could not put the scope file back: %s", why)));
		return false;
	}
	/* missing, or behind the copy (a crash between the two writes): put back */
	if ((!have_shared || sharedlen != copylen || memcmp(shared, copy, copylen) != 0) &&
		!ks_shared->state_dir_foreign)
	{
		if (ks_write_shared_file_durably(path, copy, copylen, why, sizeof(why)))
			ereport(LOG,
					(errmsg("the scope file was put back from the server's copy (%s)",
							have_shared ? "it was behind" : "it was missing")));
		else
			ereport(WARNING,
					(errmsg("could not put the scope file back: %s", why)));
	}
	return true;
}
