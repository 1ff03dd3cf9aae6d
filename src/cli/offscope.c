/*
 * offscope.c — killswitch -D engage|disengage --scope ROLE: a scope changed
 * through the scope file, kill_switch_scopes.json (ARCHITECTURE §13), with
 * the server down or without a connection.  The format is scopeformat.c's,
 * the server's own code built for the frontend.
 *
 * Offline there is no catalog to turn a role's name into its OID (the
 * file's key): pg_authid is a heap only the server can read with its commit
 * log, and a name kept in the file would be as old as the server's last
 * write — a role renamed or dropped and created again since would be named
 * wrongly.  So ROLE is the role's OID here, as ks_scopes() and pg_roles
 * give it ('agent_7'::regrole::oid); the server checks that it names a role
 * when it records the change.
 *
 * The new file is judged by the server against its copy,
 * pg_killswitch/scopes.json, as an outside write: a raise needs only the
 * signing secret; a release needs the release key's signature and names the
 * copy it replaces ("replaces"), so it can never be replayed.
 */
#include "postgres_fe.h"

#include <sys/stat.h>

#include "common/logging.h"

#include "cli.h"
#include "scopeformat.h"

/* How long an engage waits for the writers' lock before it writes without it (offline.c's). */
#define KS_SCOPE_LOCK_RAISE_MS 1000

static int
by_role(const void *a, const void *b)
{
	uint32		x = ((const KsScopeEntry *) a)->role;
	uint32		y = ((const KsScopeEntry *) b)->role;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* The scope's role OID, from --scope; exits if it is not one. */
static uint32
scope_oid(const char *scope)
{
	char	   *end;
	unsigned long oid;

	errno = 0;
	oid = strtoul(scope, &end, 10);
	if (scope[0] < '1' || scope[0] > '9' || *end != '\0' || errno != 0 || oid > PG_UINT32_MAX)
	{
		pg_log_error("offline, --scope takes the role's OID, not \"%s\"", scope);
		pg_log_error_detail("Without the server there is no catalog to find a role's name in; the scope file keeps scopes by role OID.");
		pg_log_error_hint("Find it while the server runs: SELECT 'ROLE'::regrole::oid; or use -d.");
		exit(KS_EXIT_ERROR);
	}
	return (uint32) oid;
}

/* Read and verify a scope file; false if it is missing or cannot be trusted (problem says). */
static bool
read_scopes(const char *path, const char *secret, size_t secretlen, KsScopeFile *f,
			bool *missing, char *problem, size_t problemlen)
{
	char	   *text;
	size_t		len;
	struct stat sb;

	memset(f, 0, sizeof(*f));
	*missing = lstat(path, &sb) != 0 && errno == ENOENT;
	if (*missing)
		return false;
	if (!ks_read_file(path, KS_MAX_FILE_SIZE * 4, &text, &len, problem, problemlen))
		return false;
	return ks_scope_file_parse(text, len, secret, secretlen, f, problem, problemlen);
}

/*
 * The set the new file starts from: the server's copy, which is what the
 * server judges the new file against ("replaces" names it), plus — if the
 * scope file in the state directory verifies and is ahead of the copy (an
 * outside write not yet recorded) — that file's raises, never its lowers:
 * the state directory is writable by whoever holds it, and a set built on
 * a planted file would carry the planter's lowers under the release key.
 * Without a copy to trust (none, one that does not verify, or no data
 * directory given) the scope file is the base: an engage goes on (raising
 * needs nothing; the server judges the file), a release refuses.
 */
static void
base_set(const char *scope_file, const char *copy_file, const char *secret, size_t secretlen,
		 KsScopeFile *base, KsScopeFile *copy, bool *have_copy, const char **replaces,
		 int64 *version)
{
	KsScopeFile file;
	bool		file_missing;
	bool		copy_missing = true;
	bool		file_ok;
	bool		copy_ok = false;
	char		problem[KS_PROBLEM_LEN];

	file_ok = read_scopes(scope_file, secret, secretlen, &file, &file_missing, problem, sizeof(problem));
	if (!file_ok && !file_missing)
		pg_log_warning("the scope file cannot be trusted: %s", problem);
	memset(copy, 0, sizeof(*copy));
	if (copy_file != NULL)
		copy_ok = read_scopes(copy_file, secret, secretlen, copy, &copy_missing, problem, sizeof(problem));
	if (!copy_ok && !copy_missing)
		pg_log_warning("the server's copy of the scope file cannot be trusted: %s", problem);
	*have_copy = copy_ok;
	memset(base, 0, sizeof(*base));
	*replaces = NULL;
	*version = Max(file_ok ? file.version : 0, copy_ok ? copy->version : 0);
	if (!copy_ok)
	{
		if (file_ok)
		{
			*base = file;
			*replaces = file.signature;
		}
		return;
	}
	*replaces = copy->signature;
	base->entries = palloc0(sizeof(KsScopeEntry) * (copy->n + (file_ok ? file.n : 0) + 1));
	memcpy(base->entries, copy->entries, sizeof(KsScopeEntry) * copy->n);
	base->n = copy->n;
	for (int i = 0; file_ok && file.version > copy->version && i < file.n; i++)
	{
		KsScopeEntry *f = &file.entries[i];
		KsScopeEntry *h = NULL;

		for (int j = 0; j < base->n; j++)
			if (base->entries[j].role == f->role)
				h = &base->entries[j];
		if (h == NULL)
			base->entries[base->n++] = *f;
		else if (f->mode > h->mode)
			*h = *f;
	}
	qsort(base->entries, base->n, sizeof(KsScopeEntry), by_role);
}

/*
 * Does the new set differ from the server's copy only by the change asked
 * (role) and by raises?  What the release key signs must lower nothing but
 * the scope named: checked on the set about to be signed, whatever it was
 * built from.
 */
static bool
only_the_change(const KsScopeFile *copy, const KsScopeFile *next, uint32 role)
{
	for (int i = 0; i < copy->n; i++)
	{
		const KsScopeEntry *c = &copy->entries[i];
		const KsScopeEntry *e = NULL;

		if (c->role == role)
			continue;
		for (int j = 0; j < next->n; j++)
			if (next->entries[j].role == c->role)
				e = &next->entries[j];
		if (e == NULL || e->mode < c->mode)
			return false;
	}
	return true;
}

/* Does the scope file hold the server's copy's bytes (the server has judged it)? */
static bool
judged(const char *scope_file, const char *copy_file)
{
	char	   *a = NULL,
			   *b = NULL;
	size_t		alen = 0,
				blen = 0;
	char		problem[KS_PROBLEM_LEN];
	bool		have_a = ks_read_file(scope_file, KS_MAX_FILE_SIZE * 4, &a, &alen, problem, sizeof(problem));
	bool		have_b = ks_read_file(copy_file, KS_MAX_FILE_SIZE * 4, &b, &blen, problem, sizeof(problem));

	if (!have_a || !have_b)
		return true;			/* nothing to wait for: the server puts back or judges */
	return alen == blen && memcmp(a, b, alen) == 0;
}

/*
 * While a server runs here, wait (at most KS_SCOPE_JUDGED_WAIT_MS) until it
 * has recorded the previous outside write of the scope file: the new file
 * is judged against the server's copy, and two writes in quick succession
 * would reach it as one — a raise written over a release not yet recorded
 * would look like a lower without the release key.
 */
#define KS_SCOPE_JUDGED_WAIT_MS 5000

static void
wait_until_judged(const KsOptions *opt, const char *scope_file, const char *copy_file)
{
	int			waited = 0;

	if (opt->pgdata == NULL || !ks_cli_server_running(opt->pgdata))
		return;
	while (!judged(scope_file, copy_file) && waited < KS_SCOPE_JUDGED_WAIT_MS)
	{
		pg_usleep(10 * 1000L);
		waited += 10;
	}
	if (waited >= KS_SCOPE_JUDGED_WAIT_MS)
		pg_log_warning("the server has not recorded the previous change to the scope file yet; writing anyway");
}

/* engage|disengage --scope ROLE, offline. */
int
ks_cli_offline_scope(const KsOptions *opt, const char *state_dir, const char *secret,
					 size_t secretlen, const char *release_key_file)
{
	uint32		role = scope_oid(opt->scope);
	bool		release = opt->command == CMD_DISENGAGE;
	char		scope_file[MAXPGPATH];
	char		copy_file[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	KsScopeFile base;
	KsScopeFile copy;
	bool		have_copy = false;
	KsScopeFile next;
	KsScopeEntry *e;
	const char *replaces;
	int64		version;
	char	   *key = NULL;
	size_t		keylen = 0;
	StringInfoData text;
	int			lockfd;

	snprintf(scope_file, sizeof(scope_file), "%s/%s", state_dir, KS_SCOPE_FILE_NAME);
	if (opt->pgdata)
		snprintf(copy_file, sizeof(copy_file), "%s/pg_killswitch/scopes.json", opt->pgdata);
	if (release)
	{
		if (!ks_cli_release_key_load(release_key_file, true, "a scope file that lowers a scope",
									 &key, &keylen))
			exit(KS_EXIT_ERROR);
	}
	if (opt->pgdata)
		wait_until_judged(opt, scope_file, copy_file);
	lockfd = release ? ks_lock_dir(state_dir, problem, sizeof(problem))
		: ks_lock_dir_within(state_dir, KS_SCOPE_LOCK_RAISE_MS, problem, sizeof(problem));
	if (lockfd < 0 && release)
	{
		pg_log_error("could not take the writers' lock: %s", problem);
		return KS_EXIT_ERROR;
	}
	if (lockfd < 0)
		pg_log_warning("writing without the writers' lock: %s", problem);

	base_set(scope_file, opt->pgdata ? copy_file : NULL, secret, secretlen,
			 &base, &copy, &have_copy, &replaces, &version);
	if (release && !have_copy)
	{
		ks_unlock_dir(lockfd);
		pg_log_error("a release is built on the server's copy of the scope file, and there is none to trust");
		pg_log_error_detail("The scope file in the state directory alone may have been written by anyone who can write there; the release key signs only what the server holds.");
		pg_log_error_hint("Give -D with the data directory, or release the scope with ks_disengage().");
		return KS_EXIT_ERROR;
	}
	memset(&next, 0, sizeof(next));
	next.entries = palloc0(sizeof(KsScopeEntry) * (base.n + 1));
	memcpy(next.entries, base.entries, sizeof(KsScopeEntry) * base.n);
	next.n = base.n;
	e = ks_scope_file_find(&next, role);
	if (release && e == NULL)
	{
		ks_unlock_dir(lockfd);
		pg_log_error("scope %u is not halted", role);
		pg_log_error_detail("Only an active scope can be released; the server's copy of the scope file holds none for this role.");
		return KS_EXIT_ERROR;
	}
	if (!release && e != NULL && e->mode >= (KsMode) opt->mode)
	{
		ks_unlock_dir(lockfd);
		printf("scope %u is already at mode %s: nothing written\n", role, ks_mode_sql_names[e->mode]);
		return KS_EXIT_OK;
	}
	if (release)
	{
		*e = next.entries[next.n - 1];	/* the order is restored when written */
		next.n--;
	}
	else
	{
		if (e == NULL)
		{
			e = &next.entries[next.n++];
			e->role = role;
			e->generation = 0;
		}
		e->mode = (KsMode) opt->mode;
		e->generation++;
		e->since_usec = ks_cli_now_usec();
		e->unconfirmed = false;
	}
	if (have_copy && !only_the_change(&copy, &next, role))
	{
		ks_unlock_dir(lockfd);
		pg_log_error("the new scope file would lower a scope other than %u", role);
		pg_log_error_detail("It is built on the server's copy of the scope file; a set that lowers more than the scope named is not signed.");
		return KS_EXIT_ERROR;
	}
	next.version = version + 1;
	next.replaces = (char *) replaces;
	next.reason = (char *) opt->reason;
	next.triggered_by = (char *) opt->by;
	initStringInfo(&text);
	if (!ks_scope_file_text(&text, &next, secret, secretlen, key, keylen))
	{
		ks_unlock_dir(lockfd);
		pg_log_error("could not sign the scope file");
		return KS_EXIT_ERROR;
	}
	ks_secret_forget(key, keylen);
	if (!ks_write_shared_file_durably(scope_file, text.data, text.len, problem, sizeof(problem)))
	{
		ks_unlock_dir(lockfd);
		pg_log_error("could not write the scope file: %s", problem);
		return KS_EXIT_ERROR;
	}
	ks_unlock_dir(lockfd);
	if (opt->json)
		printf("{\"scope\":%u,\"mode\":\"%s\",\"version\":" INT64_FORMAT "}\n",
			   role, ks_mode_sql_names[release ? KS_DISENGAGED : opt->mode], next.version);
	else
		printf("scope %u %s (version " INT64_FORMAT ") written to %s\n", role,
			   release ? "released" : ks_mode_sql_names[opt->mode], next.version, scope_file);
	return KS_EXIT_OK;
}
