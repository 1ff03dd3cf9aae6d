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
 * not verify, or a scope file ahead of the copy that it refuses, or one not
 * past it that is not what a crash between the two writes leaves (each
 * write names the scope file it replaces), is tampering (startup.c makes
 * the verdict).  A scope file a crash left behind the copy, or a missing
 * one, is put back.  Nothing here throws an error.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "scope.h"
#include "scopechange.h"
#include "scopefile.h"
#include "scopeformat.h"
#include "state.h"
#include "store.h"

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
file_text(StringInfo out, KsScope *list, int n, int64 version, char *replaces,
		  const char *secret, size_t secretlen)
{
	KsScopeFile f;

	memset(&f, 0, sizeof(f));
	f.entries = palloc0(sizeof(KsScopeEntry) * Max(n, 1));
	qsort(list, n, sizeof(KsScope), by_role_mode);
	for (int i = 0; i < n; i++)
	{
		KsScopeEntry *e = &f.entries[f.n];

		if (i > 0 && list[i].role == list[i - 1].role)
			continue;			/* a lower mode of the same role */
		e->role = list[i].role;
		e->mode = list[i].mode;
		e->generation = list[i].generation;
		e->since_usec = ks_timestamptz_to_unix_usec(list[i].since);
		e->unconfirmed = list[i].owner >= 0 || list[i].owner == KS_SCOPE_MARKED;
		f.n++;
	}
	f.version = version;
	f.replaces = replaces;
	return ks_scope_file_text(out, &f, secret, secretlen, NULL, 0);
}

/*
 * The signature of the scope file as it is before a write (NULL: missing,
 * or it does not verify), which the new text names in "replaces": a crash
 * between the write of the copy and that of the scope file leaves exactly
 * that file, and the start tells it so from a replay (ks_scope_file_load()).
 */
static char *
replaced_signature(const char *path, const char *secret, size_t secretlen)
{
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	KsScopeFile f;

	if (ks_shared->state_dir_foreign ||
		!ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, &text, &len, problem, sizeof(problem)) ||
		!ks_scope_file_parse(text, len, secret, secretlen, &f, problem, sizeof(problem)))
		return NULL;
	return f.signature;
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
	int64		version;
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
	version = ks_scope_file_version_next();
	scope_file_path(path, sizeof(path));
	ok = file_text(&text, list, n, version, replaced_signature(path, secret, secretlen),
				   secret, secretlen);
	if (!ok)
		strlcpy(problem, "could not compute HMAC-SHA256", sizeof(problem));
	ok = ok && ks_write_file_durably(KS_SCOPES_COPY_FILE, text.data, text.len, problem, sizeof(problem));
	if (ok)
	{
		/* the feed tells the copy: its long polls wake (feed.c) */
		ks_scope_file_version_written(version);
		ConditionVariableBroadcast(&ks_shared->published);
	}
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

/*
 * An outside write the round accepted, waiting for a look to record it: its
 * bytes and those of the copy it was judged against (TopMemoryContext).
 * Kept whatever happens to the file meanwhile — a scope change from SQL
 * rewrites the file with the raise in it — until a look has recorded it.
 */
static char *pending_file = NULL;
static size_t pending_file_len = 0;
static char *pending_copy = NULL;	/* NULL: there was no copy */
static size_t pending_copy_len = 0;

/*
 * Every raise the rounds put in force from outside files since the last
 * look that recorded them, merged (the highest per role): what is in force
 * is the copy plus these.  A newer outside file (judged against the copy)
 * raises over that and is merged into it, never replacing it — a file that
 * leaves a pending raise out (written on the copy alone) does not lower it:
 * only a look drops them, once it has recorded them (TopMemoryContext).
 */
static KsScopeFile pending_raises;

static char *
keep_bytes(const char *bytes, size_t len)
{
	char	   *kept;

	if (bytes == NULL)
		return NULL;
	kept = MemoryContextAlloc(TopMemoryContext, len + 1);
	memcpy(kept, bytes, len);
	kept[len] = '\0';
	return kept;
}

static void
forget_pending(void)
{
	if (pending_file)
		pfree(pending_file);
	if (pending_copy)
		pfree(pending_copy);
	pending_file = pending_copy = NULL;
	pending_file_len = pending_copy_len = 0;
	if (pending_raises.entries)
		pfree(pending_raises.entries);
	memset(&pending_raises, 0, sizeof(pending_raises));
}

static bool
same_stat(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
		a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Read the scope file and the copy: same bytes (both missing: yes)? */
static bool
same_bytes(const char *path, bool *shared_missing, char **shared, size_t *sharedlen,
		   char **copy, size_t *copylen)
{
	char		problem[KS_PROBLEM_LEN];
	bool		have_copy = ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, copy, copylen,
										 problem, sizeof(problem));
	bool		have_shared = ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, shared, sharedlen,
										   problem, sizeof(problem));

	*shared_missing = !have_shared && access(path, F_OK) != 0;
	if (!have_copy)
		*copy = NULL;
	if (!have_shared)
		*shared = NULL;
	if (!have_copy || !have_shared)
		return !have_copy && !have_shared;
	return *sharedlen == *copylen && memcmp(*shared, *copy, *sharedlen) == 0;
}

/* Put the copy's bytes back over a refused scope file (no copy: nothing to put back). */
static void
put_back(const char *path, const char *copy, size_t copylen)
{
	char		problem[KS_PROBLEM_LEN];

	if (copy != NULL && !ks_write_shared_file_durably(path, copy, copylen, problem, sizeof(problem)))
		ereport(WARNING,
				(errmsg("could not put the scope file back: %s", problem)));
}

/* What an outside write of the scope file asks, against the server's copy. */
typedef enum OutsideKind
{
	OUTSIDE_SAME,				/* no scope changes (a newer version of the same set) */
	OUTSIDE_RAISES,				/* raises only: applied at once */
	OUTSIDE_RELEASES,			/* lowers a scope, with the release credential */
	OUTSIDE_REFUSED				/* anything else: tampering */
} OutsideKind;

/*
 * Judge an outside scope file (verified under the signing secret) against
 * the server's copy (held; no copy: an empty set of version 0), as the
 * watcher judges the state file (ARCHITECTURE §5.7): a version not past the
 * copy's is a replay; raising needs nothing more; lowering or removing any
 * scope needs the release key's signature and "replaces" naming the copy —
 * an agent holding only the signing secret can raise, never lower.
 */
static OutsideKind
judge_outside(const KsScopeFile *held, const KsScopeFile *file, char *problem, size_t problemlen)
{
	bool		raises = false;
	bool		lowers = false;
	char	   *key;
	size_t		keylen;
	char		why[KS_PROBLEM_LEN];

	if (file->version <= held->version)
	{
		snprintf(problem, problemlen, "%s is a replay: its version " INT64_FORMAT
				 " is not past the server's " INT64_FORMAT,
				 KS_SCOPE_FILE_NAME, file->version, held->version);
		return OUTSIDE_REFUSED;
	}
	for (int i = 0; i < held->n; i++)
	{
		KsScopeEntry *f = ks_scope_file_find(file, held->entries[i].role);

		lowers |= f == NULL || f->mode < held->entries[i].mode;
	}
	for (int i = 0; i < file->n; i++)
	{
		KsScopeEntry *h = ks_scope_file_find(held, file->entries[i].role);

		raises |= h == NULL || file->entries[i].mode > h->mode;
	}
	if (!lowers)
		return raises ? OUTSIDE_RAISES : OUTSIDE_SAME;
	if (!ks_secret_load(ks_release_key_file, false, &key, &keylen, why, sizeof(why)))
	{
		snprintf(problem, problemlen, "%s lowers a scope, and the release key cannot be read to verify it: %s",
				 KS_SCOPE_FILE_NAME, why);
		return OUTSIDE_REFUSED;
	}
	if (!ks_scope_file_release_signed(file, key, keylen, ks_release_key_file, why, sizeof(why)))
	{
		ks_secret_forget(key, keylen);
		snprintf(problem, problemlen, "%s lowers a scope without the release credential: %s",
				 KS_SCOPE_FILE_NAME, why);
		return OUTSIDE_REFUSED;
	}
	ks_secret_forget(key, keylen);
	if (file->replaces == NULL || held->signature == NULL ||
		!ks_hex_equal(file->replaces, held->signature))
	{
		snprintf(problem, problemlen, "%s lowers a scope but does not name the server's scope file in \"replaces\" "
				 "(a release written for an earlier set)", KS_SCOPE_FILE_NAME);
		return OUTSIDE_REFUSED;
	}
	return OUTSIDE_RELEASES;
}

/*
 * The copy (NULL: none, an empty set) and an outside file's text, parsed
 * and judged.  False, with problem, if the copy or the file cannot be
 * trusted, or the file is refused.
 */
static bool
judge_texts(const char *copy, size_t copylen, const char *shared, size_t sharedlen,
			const char *secret, size_t secretlen, KsScopeFile *held, KsScopeFile *file,
			OutsideKind *kind, char *problem, size_t problemlen)
{
	char		why[KS_PROBLEM_LEN];

	memset(held, 0, sizeof(*held));
	if (copy != NULL &&
		!ks_scope_file_parse(copy, copylen, secret, secretlen, held, why, sizeof(why)))
	{
		snprintf(problem, problemlen, "the server's copy %s: %s", KS_SCOPES_COPY_FILE, why);
		return false;
	}
	if (!ks_scope_file_parse(shared, sharedlen, secret, secretlen, file, why, sizeof(why)))
	{
		snprintf(problem, problemlen, "%s: %s", KS_SCOPE_FILE_NAME, why);
		return false;
	}
	*kind = judge_outside(held, file, problem, problemlen);
	return *kind != OUTSIDE_REFUSED;
}

/* Put every raise of an accepted outside file in force at once (raising needs nothing). */
static void
apply_raises(const KsScopeFile *held, const KsScopeFile *file)
{
	for (int i = 0; i < file->n; i++)
	{
		const KsScopeEntry *f = &file->entries[i];
		KsScopeEntry *h = ks_scope_file_find(held, f->role);

		if (h == NULL || f->mode > h->mode)
			ks_scope_set_committed((Oid) f->role, f->mode, f->generation,
								   ks_unix_usec_to_timestamptz(f->since_usec));
	}
}

static int
by_entry_role(const void *a, const void *b)
{
	uint32		x = ((const KsScopeEntry *) a)->role;
	uint32		y = ((const KsScopeEntry *) b)->role;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* A set's scope of role, its entries in any order (NULL: none). */
static KsScopeEntry *
find_unsorted(KsScopeEntry *entries, int n, uint32 role)
{
	for (int i = 0; i < n; i++)
		if (entries[i].role == role)
			return &entries[i];
	return NULL;
}

/*
 * What the files have put in force: the copy's scopes with the pending
 * raises merged in, the highest per role (palloc'd, sorted; the copy's
 * version and signature).
 */
static void
in_force(const KsScopeFile *held, KsScopeFile *out)
{
	*out = *held;
	out->entries = palloc0(sizeof(KsScopeEntry) * Max(held->n + pending_raises.n, 1));
	if (held->n > 0)
		memcpy(out->entries, held->entries, sizeof(KsScopeEntry) * held->n);
	out->n = held->n;
	for (int i = 0; i < pending_raises.n; i++)
	{
		const KsScopeEntry *p = &pending_raises.entries[i];
		KsScopeEntry *e = find_unsorted(out->entries, out->n, p->role);

		if (e == NULL)
			out->entries[out->n++] = *p;
		else if (p->mode > e->mode)
			*e = *p;
	}
	if (out->n > 0)
		qsort(out->entries, out->n, sizeof(KsScopeEntry), by_entry_role);
}

/* Keep the raises of an accepted file over what is in force, until a look records them. */
static void
merge_pending(const KsScopeFile *now, const KsScopeFile *file)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	if (pending_raises.entries == NULL)
		pending_raises.entries = palloc0(sizeof(KsScopeEntry) * Max(file->n, 1));
	else
		pending_raises.entries = repalloc(pending_raises.entries,
										  sizeof(KsScopeEntry) * (pending_raises.n + Max(file->n, 1)));
	for (int i = 0; i < file->n; i++)
	{
		const KsScopeEntry *f = &file->entries[i];
		KsScopeEntry *h = ks_scope_file_find(now, f->role);
		KsScopeEntry *p;

		if (h != NULL && f->mode <= h->mode)
			continue;
		p = find_unsorted(pending_raises.entries, pending_raises.n, f->role);
		if (p == NULL)
			pending_raises.entries[pending_raises.n++] = *f;
		else
			*p = *f;			/* above what was in force, so above it */
	}
	if (pending_raises.n > 0)
		qsort(pending_raises.entries, pending_raises.n, sizeof(KsScopeEntry), by_entry_role);
	MemoryContextSwitchTo(old);
}

/*
 * How long the watcher lets another writer hold the writers' lock before it
 * judges an outside scope file without it: as long as it waits for a writer
 * of the state file (worker.c KS_LOCK_DEFER_MS), since anyone who can write
 * the state directory can hold the lock (ARCHITECTURE §5.7).
 */
#define KS_SCOPE_LOCK_DEFER_MS 250

/* Since when the rounds have found the writers' lock busy (0: it was free). */
static TimestampTz busy_since = 0;

/*
 * The writers' lock, or -1 with *stuck: has another process held it past
 * KS_SCOPE_LOCK_DEFER_MS, or can it not be taken at all?  Then the round
 * judges without it.
 */
static int
lock_or_stuck(bool *stuck, char *problem, size_t problemlen)
{
	int			fd = ks_lock_dir_within(ks_state_dir, 0, problem, problemlen);
	TimestampTz now;

	*stuck = false;
	if (fd >= 0 || errno != EWOULDBLOCK)
	{
		busy_since = 0;
		*stuck = fd < 0;
		return fd;
	}
	now = GetCurrentTimestamp();
	if (busy_since == 0)
		busy_since = now;
	*stuck = now >= TimestampTzPlusMilliseconds(busy_since, KS_SCOPE_LOCK_DEFER_MS);
	return -1;
}

/*
 * Judge an outside file's text against the copy (the HMACs are resources:
 * the round runs outside any transaction).  False, with problem, if it is
 * refused.
 */
static bool
judge_round(const char *copy, size_t copylen, const char *shared, size_t sharedlen,
			KsScopeFile *held, KsScopeFile *file, OutsideKind *kind,
			char *problem, size_t problemlen)
{
	char	   *secret;
	size_t		secretlen;
	ResourceOwner saved = CurrentResourceOwner;
	ResourceOwner owner = ResourceOwnerCreate(NULL, "killswitch scope file");
	bool		accepted;

	CurrentResourceOwner = owner;
	accepted = ks_backend_secret(&secret, &secretlen, problem, problemlen) &&
		judge_texts(copy, copylen, shared, sharedlen, secret, secretlen,
					held, file, kind, problem, problemlen);
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_BEFORE_LOCKS, false, true);
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_LOCKS, false, true);
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_AFTER_LOCKS, false, true);
	CurrentResourceOwner = saved;
	ResourceOwnerDelete(owner);
	return accepted;
}

/*
 * An accepted outside file: its raises in force now, over what is in force
 * (the copy and the raises still pending), and kept until a look records
 * them.
 */
static void
accept_outside(const char *copy, size_t copylen, const char *shared, size_t sharedlen,
			   const KsScopeFile *held, const KsScopeFile *file, OutsideKind kind)
{
	KsScopeFile now;

	/* raised over what is in force; what it leaves out stays pending */
	in_force(held, &now);
	apply_raises(&now, file);
	merge_pending(&now, file);
	if (pending_file)
		pfree(pending_file);
	if (pending_copy)
		pfree(pending_copy);
	pending_file = keep_bytes(shared, sharedlen);
	pending_file_len = sharedlen;
	pending_copy = keep_bytes(copy, copylen);
	pending_copy_len = copylen;
	ereport(LOG,
			(errmsg("the scope file was changed outside the server (version " INT64_FORMAT "): %s",
					file->version,
					kind == OUTSIDE_RAISES ? "a raise, in force now" :
					kind == OUTSIDE_RELEASES ? "a release, applied once recorded" : "no scope changes"),
			 errdetail("The next look of the watcher that holds the lock ordering changes records it.")));
}

/*
 * The watcher, at every round (worker.c): is the scope file the server's own
 * bytes, those of its copy?  An outside write (ARCHITECTURE §13) is judged
 * against the copy: raises are put in force at once, and a release waits,
 * unapplied; both wait for a look that holds the ordering lock to record
 * them (ks_scope_file_record_outside()).  Anything else is false, with
 * problem — a tamper verdict for the caller — and the copy's bytes put
 * back.  Bytes that differ are read again under the writers' lock before
 * they are judged — a writer between its two writes holds it.  Busy, the
 * next round looks again — until another process has held it past
 * KS_SCOPE_LOCK_DEFER_MS: then the file is judged without it, and only a
 * file that raises or changes nothing is accepted (raising needs nothing);
 * a release, a refusal and a put-back wait for the lock (without it, a
 * server writer between its two writes cannot be told from a replay).
 * A missing file is put back, no verdict (nothing was lowered: the scopes
 * in force are shared memory's).  Never an error.
 *
 * The stat remembered as the server's own file is taken before the bytes
 * are read: a write landing after it changes the stat, so the next round
 * reads and judges it — never a stat of bytes that were not judged.
 */
bool
ks_scope_file_is_ours(char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	struct stat st;
	bool		have_st;
	char	   *copy;
	char	   *shared;
	size_t		copylen;
	size_t		sharedlen;
	bool		missing;
	bool		ours;
	bool		stuck;
	bool		settled = true;
	int			fd = -1;
	MemoryContext tmp;
	MemoryContext old;

	if (ks_shared->state_dir_foreign)
		return true;
	scope_file_path(path, sizeof(path));
	have_st = stat(path, &st) == 0;
	if (have_st && known && same_stat(&st, &known_stat))
		return true;
	/* the files' bytes go with this context: the watcher lives long */
	tmp = AllocSetContextCreate(CurrentMemoryContext, "killswitch scope file", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(tmp);
	ours = same_bytes(path, &missing, &shared, &sharedlen, &copy, &copylen);
	if (!ours)
		fd = lock_or_stuck(&stuck, problem, problemlen);
	if (!ours && fd < 0 && !stuck)
		settled = false;		/* a writer is at it: the next round */
	else if (!ours)
	{
		if (fd >= 0)
			ours = same_bytes(path, &missing, &shared, &sharedlen, &copy, &copylen);
		if (!ours && shared != NULL)
		{
			KsScopeFile held;
			KsScopeFile file;
			OutsideKind kind;
			bool		accepted = judge_round(copy, copylen, shared, sharedlen,
											   &held, &file, &kind, problem, problemlen);

			if (accepted && (fd >= 0 || kind != OUTSIDE_RELEASES))
			{
				accept_outside(copy, copylen, shared, sharedlen, &held, &file, kind);
				ours = true;	/* no verdict: a look records it */
			}
			else if (fd < 0)
				settled = false;	/* a release or a verdict needs the lock */
		}
		else if (!ours && fd < 0)
			settled = false;	/* put back under the lock only */
		if (!ours && settled && copy != NULL &&
			!ks_write_shared_file_durably(path, copy, copylen, problem, problemlen))
			ereport(WARNING,
					(errmsg("could not put the scope file back: %s", problem)));
		ks_unlock_dir(fd);
		if (!ours && missing)
			ours = true;		/* put back, no verdict */
	}
	if (settled)
	{
		known = have_st;
		known_stat = st;
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(tmp);
	return ours || !settled;
}

/* Does an outside write of the scope file wait for a look to record it? */
bool
ks_scope_file_pending(void)
{
	return pending_file != NULL;
}

/*
 * A file the look refuses: the copy's bytes back if the file still holds
 * the refused bytes, and the raises the round put in force from it taken
 * back to the chain's scopes — the caller's verdict halts the fleet
 * meanwhile.  Always false.
 */
static bool
refuse(void)
{
	char		path[MAXPGPATH];
	char	   *now = NULL;
	size_t		nowlen = 0;
	char		problem[KS_PROBLEM_LEN];

	scope_file_path(path, sizeof(path));
	if (ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, &now, &nowlen, problem, sizeof(problem)) &&
		nowlen == pending_file_len && memcmp(now, pending_file, nowlen) == 0)
		put_back(path, pending_copy, pending_copy_len);
	forget_pending();
	ks_scopes_from_history(false);
	return false;
}

/*
 * Record the raises of an accepted file that the chain does not hold yet
 * (shared memory holds them since the round: the chain says what is
 * recorded).  False, with problem, if a role does not exist.
 */
static bool
record_raises(const KsScopeFile *file, const char *reason, const char *by,
			  int *recorded, char *problem, size_t problemlen)
{
	for (int i = 0; i < file->n; i++)
	{
		const KsScopeEntry *f = &file->entries[i];
		KsMode		chain = ks_scope_chain_mode((Oid) f->role);

		if (f->mode <= chain)
			continue;			/* recorded, or raised higher since */
		if (!ks_scope_record_outside((Oid) f->role, f->mode, chain, reason, by))
		{
			snprintf(problem, problemlen, "%s names a role that does not exist (OID %u)",
					 KS_SCOPE_FILE_NAME, f->role);
			return false;
		}
		(*recorded)++;
	}
	return true;
}

/*
 * Record the lowers of an accepted release: each scope of the copy it
 * names that it lowers or removes, from the mode the chain holds.  Only if
 * the copy is still the one it named — a change committed since (from SQL)
 * supersedes it: not applied, a WARNING, no verdict, as a raced file that
 * would lower the state now in force (ARCHITECTURE §5.7).
 */
static void
record_releases(const KsScopeFile *held, const KsScopeFile *file, const char *reason,
				const char *by, int *recorded)
{
	char	   *copy = NULL;
	size_t		copylen = 0;
	char		problem[KS_PROBLEM_LEN];

	if (!ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, &copy, &copylen,
					  problem, sizeof(problem)) ||
		pending_copy == NULL || copylen != pending_copy_len ||
		memcmp(copy, pending_copy, copylen) != 0)
	{
		ereport(WARNING,
				(errmsg("a release written to the scope file was superseded by a later change of the scopes"),
				 errdetail("It names a scope file the server has replaced since; the scopes stay as they are."),
				 errhint("Write the release again (killswitch -D disengage --scope), or release the scope with ks_disengage().")));
		return;
	}
	for (int i = 0; i < held->n; i++)
	{
		const KsScopeEntry *h = &held->entries[i];
		KsScopeEntry *f = ks_scope_file_find(file, h->role);
		KsMode		to = f ? f->mode : KS_DISENGAGED;
		KsMode		chain;

		if (to >= h->mode)
			continue;
		chain = ks_scope_chain_mode((Oid) h->role);
		if (to < chain && ks_scope_record_outside((Oid) h->role, to, chain, reason, by))
			(*recorded)++;
		/* a role that is gone has no scope to release */
	}
}

/* Does every role the set names exist?  False, with problem, if not. */
static bool
roles_exist(const KsScopeFile *f, char *problem, size_t problemlen)
{
	for (int i = 0; i < f->n; i++)
		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum((Oid) f->entries[i].role)))
		{
			snprintf(problem, problemlen, "%s names a role that does not exist (OID %u)",
					 KS_SCOPE_FILE_NAME, f->entries[i].role);
			return false;
		}
	return true;
}

/*
 * In a look of the watcher that holds the ordering lock (worker.c), before
 * the first look sets the scopes to the chain's: record the outside write
 * of the scope file the round accepted (ks_scope_file_is_ours(), asked here
 * first: the first look may come before any round) — each scope it raises
 * or lowers an event of its own, source "file", in the look's transaction;
 * at its commit the scopes take them and the file is written with the
 * server's bytes (scopechange.c; the first look's settling keeps a release
 * recorded here until its commit).  False, with problem, if the file is
 * refused: the caller's verdict.
 */
bool
ks_scope_file_record_outside(char *problem, size_t problemlen)
{
	char	   *secret;
	size_t		secretlen;
	KsScopeFile held;
	KsScopeFile file;
	OutsideKind kind;
	int			recorded = 0;
	const char *reason;
	const char *by;

	if (!ks_scope_file_is_ours(problem, problemlen))
		return false;
	if (pending_file == NULL)
		return true;
	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	if (!judge_texts(pending_copy, pending_copy_len, pending_file, pending_file_len,
					 secret, secretlen, &held, &file, &kind, problem, problemlen))
		return refuse();
	reason = file.reason ? file.reason : "the scope file was changed outside the server";
	by = file.triggered_by ? file.triggered_by : "file";
	/* every role first: a file naming one that does not exist is refused whole */
	if (!roles_exist(&file, problem, problemlen) ||
		!roles_exist(&pending_raises, problem, problemlen))
		return refuse();
	/* every raise a round put in force, an earlier file's too, then this file's */
	if (!record_raises(&pending_raises, reason, by, &recorded, problem, problemlen) ||
		!record_raises(&file, reason, by, &recorded, problem, problemlen))
		return refuse();
	if (kind == OUTSIDE_RELEASES)
		record_releases(&held, &file, reason, by, &recorded);
	forget_pending();
	if (recorded == 0)
		ks_scope_file_write();	/* nothing to record: the server's bytes again */
	return true;
}
/* Put every scope of a verified file in force. */
static void
load(const KsScopeFile *f)
{
	for (int i = 0; i < f->n; i++)
		ks_scope_set_committed((Oid) f->entries[i].role, f->entries[i].mode,
							   f->entries[i].generation,
							   ks_unix_usec_to_timestamptz(f->entries[i].since_usec));
}

/*
 * Is a scope file not past the copy the copy's own bytes, or exactly what a
 * crash between the server's two writes leaves — the scope file the copy's
 * write replaced, whose signature the copy names in "replaces"?  Anything
 * else not past the copy is a replay.
 */
static bool
crash_left(const KsScopeFile *copy_file, const KsScopeFile *shared_file,
		   const char *shared, size_t sharedlen, const char *copy, size_t copylen)
{
	if (sharedlen == copylen && memcmp(shared, copy, copylen) == 0)
		return true;
	return copy_file->replaces != NULL && shared_file->signature != NULL &&
		ks_hex_equal(copy_file->replaces, shared_file->signature);
}

/*
 * At start, in the postmaster (startup.c): put the scopes of the copy in
 * force and the scope file back to the copy's bytes.  A scope file ahead of
 * the copy — an outside write while the server was down (killswitch -D) —
 * is judged as the watcher judges one (ARCHITECTURE §13): raises are in
 * force now, and a release waits unapplied, both left in the file for the
 * watcher's first look to record.  One not past the copy is put back if it
 * is what a crash between the two writes leaves (crash_left()), else it is
 * a replay.  False, with problem, if either cannot be trusted or the file
 * is refused: the caller's verdict is the halt.
 * Whatever verifies is loaded all the same (raising needs nothing).
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
	KsScopeFile copy_file;
	KsScopeFile shared_file;
	bool		copy_ok = false,
				shared_ok = false;
	OutsideKind kind = OUTSIDE_SAME;

	memset(&copy_file, 0, sizeof(copy_file));
	memset(&shared_file, 0, sizeof(shared_file));
	scope_file_path(path, sizeof(path));
	have_copy = ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, &copy, &copylen,
							 copy_problem, sizeof(copy_problem));
	have_shared = ks_read_file(path, KS_MAX_SCOPE_FILE_SIZE, &shared, &sharedlen,
							   shared_problem, sizeof(shared_problem));
	if (!have_copy && !have_shared)
		return true;			/* no scope was ever raised here */
	if (have_copy)
		copy_ok = ks_scope_file_parse(copy, copylen, secret, secretlen, &copy_file,
									  copy_problem, sizeof(copy_problem));
	if (have_shared)
		shared_ok = ks_scope_file_parse(shared, sharedlen, secret, secretlen, &shared_file,
										shared_problem, sizeof(shared_problem));

	/* raising needs nothing: whatever verifies is in force, a release is not */
	if (copy_ok)
		load(&copy_file);
	if (copy_ok && shared_ok && shared_file.version > copy_file.version)
		apply_raises(&copy_file, &shared_file);
	else if (shared_ok && !have_copy)
		load(&shared_file);
	ks_scope_file_version_set(Max(copy_file.version, shared_file.version));

	if (have_copy && !copy_ok)
	{
		snprintf(problem, problemlen, "the server's copy %s: %s", KS_SCOPES_COPY_FILE, copy_problem);
		return false;
	}
	problem[0] = '\0';
	if (have_shared && !shared_ok)
		snprintf(problem, problemlen, "%s: %s", KS_SCOPE_FILE_NAME, shared_problem);
	else if (have_shared && have_copy && shared_file.version <= copy_file.version &&
			 !crash_left(&copy_file, &shared_file, shared, sharedlen, copy, copylen))
		snprintf(problem, problemlen, "%s is a replay: its version " INT64_FORMAT
				 " is not past the server's " INT64_FORMAT ", and it is not the file the server's copy replaced",
				 KS_SCOPE_FILE_NAME, shared_file.version, copy_file.version);
	else if (have_shared && (!have_copy || shared_file.version > copy_file.version))
	{
		/* an outside write while the server was down: judged, left for the watcher */
		kind = judge_outside(&copy_file, &shared_file, problem, problemlen);
		if (kind != OUTSIDE_REFUSED)
		{
			ereport(LOG,
					(errmsg("the scope file was changed while the server was down (version " INT64_FORMAT "); the watcher records it",
							shared_file.version)));
			return true;
		}
	}
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

/*
 * The committed scopes of a scope file's text, verified with the signing
 * secret (palloc'd; *count of them, *version the file's): what a standby
 * hears from its upstream (upstream.c).  A raise not yet committed there
 * ("unconfirmed") is left out: its commit writes the file again, and one
 * that aborts must not hold a standby.  NULL, with problem, if the text
 * does not verify.
 */
KsScope *
ks_scope_file_heard(const char *text, size_t len, const char *secret, size_t secretlen,
					int64 *version, int *count, char *problem, size_t problemlen)
{
	KsScopeFile f;
	KsScope    *list;
	int			n = 0;

	*count = 0;
	if (!ks_scope_file_parse(text, len, secret, secretlen, &f, problem, problemlen))
		return NULL;
	*version = f.version;
	list = palloc0(sizeof(KsScope) * Max(f.n, 1));
	for (int i = 0; i < f.n; i++)
	{
		if (f.entries[i].unconfirmed)
			continue;
		list[n].role = (Oid) f.entries[i].role;
		list[n].mode = f.entries[i].mode;
		list[n].generation = f.entries[i].generation;
		list[n].since = ks_unix_usec_to_timestamptz(f.entries[i].since_usec);
		list[n].owner = KS_SCOPE_HEARD;
		n++;
	}
	*count = n;
	return list;
}

/*
 * At start in recovery (the postmaster, startup.c): the standby's own copy
 * — the scopes it had replayed or heard before it stopped — in force as
 * heard scopes, so that a restarted standby holds them from its first
 * connection, not only after its watcher's first look at the replicated
 * history; that look ends each one only when the chain holds its scope's
 * event at or past its generation (ks_scope_end_heard()): never lower.
 * A base backup's copy is the primary's: its committed scopes are in the
 * chain by the time the backup is consistent, so the first look settles
 * them; its unconfirmed raises are left out (a commit reaches the standby
 * by replay or its upstream; an abort must not hold it).  A copy that does
 * not verify is set aside, as the heard state file is (standby.c): the
 * standby then holds what replay and its upstream bring.  Never an error.
 */
void
ks_scope_file_load_heard(const char *secret, size_t secretlen)
{
	char	   *copy = NULL;
	size_t		copylen = 0;
	char		problem[KS_PROBLEM_LEN];
	int64		version = 0;
	KsScope    *list = NULL;
	int			n = 0;

	if (!ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, &copy, &copylen,
					  problem, sizeof(problem)))
		return;					/* none: no scope was ever in force here */
	if (secret != NULL)
		list = ks_scope_file_heard(copy, copylen, secret, secretlen, &version, &n,
								   problem, sizeof(problem));
	else
		strlcpy(problem, "no signing secret", sizeof(problem));
	if (list == NULL)
	{
		char		aside[MAXPGPATH];

		snprintf(aside, sizeof(aside), "%s.rejected", KS_SCOPES_COPY_FILE);
		ereport(WARNING,
				(errmsg("the standby's scope copy %s is not loaded: %s", KS_SCOPES_COPY_FILE, problem),
				 errdetail("The standby holds the scopes replay and its upstream bring.")));
		if (rename(KS_SCOPES_COPY_FILE, aside) != 0)
			ereport(WARNING,
					(errmsg("could not set the rejected scope copy aside: %m")));
		return;
	}
	ks_scope_file_version_set(version);
	if (n > 0 && ks_scope_take_heard(list, n))
		ereport(LOG,
				(errmsg_plural("the standby holds %d scope it held before it stopped, until replay brings its event",
							   "the standby holds %d scopes it held before it stopped, until replay brings their events",
							   n, n)));
}
