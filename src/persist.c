/*
 * persist.c — the server's side of the state file: where it is, the secret
 * that signs it, and writing it under the writers' lock by compare-and-swap,
 * so that no outside change is ever overwritten unseen.
 *
 * The compare is by bytes: the state file is the server's own as long as
 * it holds exactly what the server last put there or judged — whose
 * SHA-256 is KsShared.file_hash (follow.c) — and nothing else makes it so
 * (a private copy left behind by a failed write does not turn the server's
 * own file into a stranger's).  Only while file_hash is unknown (a
 * standby's redo writes without it) does the private copy stand in for it.
 * The file is replaced without ever being opened (files.c
 * ks_replace_shared_file()): an in-place write that raced the replace, or
 * an unseen outside change a raise finds there, is kept beside the file as
 * a raced write for the watcher to judge — never overwritten.
 *
 * The private copy pg_killswitch/last_applied.json holds the newest
 * committed state; it learns a change at commit, never before, so it never
 * runs ahead of the history.  A failure to write it after a commit is not
 * an error (the transaction has committed): the change's mark stays
 * (marks.c), and the watcher, settling the mark by the commit log, writes
 * the copy from it.  Until then a restart starts at the higher of the two.
 *
 * Every wait for the writers' lock here is bounded (any OS user who can
 * write the state directory can hold the lock): a release's before its
 * commit as long as its session allows and at most 10 s (files.c), every
 * other write's KS_LOCK_RAISE_WAIT_MS, less for the watcher inside a
 * transaction and for WAL redo (lock_wait_allowed()).  A failed write
 * leaves the file behind the state in force: a visible problem (ks_status()
 * file_problem, a WARNING) that the watcher puts right
 * (ks_write_behind_file()), never a failed raise.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "claim.h"
#include "follow.h"
#include "guc.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "state.h"
#include "store.h"

/* Absolute or data-directory-relative path of the state file. */
void
ks_state_file_path(char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", ks_state_dir, KS_STATE_FILE_NAME);
}

/*
 * Read the signing secret.  Read on every use rather than cached, so that
 * a rotated secret takes effect without a restart; changes are rare.  Its
 * bytes are zeroed when the caller's memory context goes (files.c), so no
 * copy outlives the transaction or the call that read it.
 */
bool
ks_backend_secret(char **secret, size_t *len, char *problem, size_t problemlen)
{
	return ks_secret_load(ks_secret_file, false, secret, len, problem, problemlen);
}

/* Which secret signed: the first 16 hex digits of its SHA-256. */
void
ks_key_id(const char *secret, size_t len, char *buf)
{
	if (!ks_key_id_of(secret, len, buf))
		strlcpy(buf, "unknown", 17);
}

/* The time of a state in microseconds since 1970, or false if it has none. */
static bool
state_time(const KsState *st, int64 *usec)
{
	return st->engaged_at != NULL && ks_parse_iso(st->engaged_at, usec);
}

/*
 * Compare a readable file with the state the server holds: the same state,
 * an older one (a replay), or a newer one.  A file with a generation is
 * placed by it; one without (the reference library's) by its engaged_at,
 * and a file that was never engaged (engaged_at null) is older than any
 * held state that was, the same as one that was not.  The one rule for the
 * postmaster at start, the watcher, and the compare-and-swap of a writer.
 */
KsOrder
ks_compare_to_held(const KsState *file, const KsState *held)
{
	int64		f,
				h;
	bool		fhas = state_time(file, &f);
	bool		hhas = state_time(held, &h);

	if (file->generation >= 0)
	{
		if (file->generation < held->generation)
			return KS_OLDER;
		if (file->generation > held->generation)
			return KS_NEWER;
		/* same generation: only the state we hold is the same */
		return file->mode == held->mode && fhas == hhas && (!fhas || f == h)
			? KS_SAME : KS_NEWER;
	}
	if (!fhas)
		return hhas ? KS_OLDER : (file->mode == held->mode ? KS_SAME : KS_NEWER);
	if (!hhas)
		return KS_NEWER;
	if (f < h)
		return KS_OLDER;
	return f == h && file->mode == held->mode ? KS_SAME : KS_NEWER;
}

/* Read a file's bytes if it exists; NULL otherwise. */
static char *
read_if_present(const char *path, size_t *len)
{
	char	   *data;
	char		problem[KS_PROBLEM_LEN];

	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &data, len, problem, sizeof(problem)))
		return NULL;
	return data;
}

/*
 * Read the server's private copy of the newest committed state, checked
 * with this secret: signed it must be, and it is the server's own, so it
 * is read once (no recheck delay).  Every reader of the copy comes here.
 */
KsVerdict
ks_read_private_copy(const char *secret, size_t secretlen, KsState *held,
					 char *problem, size_t problemlen)
{
	return ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file,
						 true, 0, held, problem, problemlen);
}

/* Read the server's private copy of the newest committed state, in a backend. */
bool
ks_read_held(KsState *held, char *problem, size_t problemlen)
{
	char	   *secret;
	size_t		secretlen;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	return ks_read_private_copy(secret, secretlen, held, problem, problemlen) == KS_FILE_VALID;
}

/*
 * The signature of the state the server holds (its private copy), for the
 * "replaces" of what it writes next (ARCHITECTURE §3): a release the
 * server wrote names the state it released, so that found at start after
 * a crash it is authorized like any other.  False if the copy cannot be
 * read or carries none.
 */
bool
ks_held_signature(char **signature)
{
	KsState		held;
	char		problem[KS_PROBLEM_LEN];

	*signature = NULL;
	if (!ks_read_held(&held, problem, sizeof(problem)) || held.signature == NULL)
		return false;
	*signature = pstrdup(held.signature);
	return true;
}

/* Is the state file (these bytes, or missing as NULL) what the server last put there? */
static bool
bytes_are_ours(const char *data, size_t len)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];
	char		ours[KS_HEX_DIGEST_LEN + 1];
	char	   *copy;
	size_t		copylen;

	ks_file_hash(ours);
	if (data == NULL)
	{
		char		path[MAXPGPATH];
		struct stat sb;

		/* no file at all, as judged; something unreadable there is for judging */
		ks_state_file_path(path, sizeof(path));
		return strcmp(ours, KS_FILE_MISSING_HASH) == 0 &&
			lstat(path, &sb) != 0 && errno == ENOENT;
	}
	if (ours[0] != '\0')
	{
		ks_file_hash_of(data, len, hex);
		return strcmp(hex, ours) == 0;
	}
	/* unknown (after a standby's redo): the private copy, byte for byte */
	copy = read_if_present(KS_LAST_APPLIED_FILE, &copylen);
	return copy != NULL && copylen == len && memcmp(copy, data, len) == 0;
}

/*
 * Do these bytes of the state file (NULL: none) hold what the writer last
 * judged?  Its own bytes (file_hash); or the file the watcher judged
 * (expect->judged); or — for a verdict on an untrusted file — a file that
 * is still missing or untrusted.  Anything else is a newcomer nobody has
 * judged yet.
 */
static bool
file_as_expected(const char *data, size_t len, const KsExpect *expect,
				 const char *secret, size_t secretlen)
{
	KsState		file;
	KsVerdict	v;
	char		problem[KS_PROBLEM_LEN];

	if (bytes_are_ours(data, len))
		return true;
	v = data == NULL ? KS_FILE_MISSING :
		ks_state_from_text(data, len, secret, secretlen, ks_secret_file, ks_require_hmac,
						   &file, problem, sizeof(problem));
	if (v == KS_FILE_MISSING || v == KS_FILE_BAD)
		return expect->untrusted;
	return expect->judged && ks_compare_to_held(&file, expect->judged) == KS_SAME;
}

/* The watcher: set at its start (worker.c). */
bool		ks_am_watcher = false;

/*
 * How long this process may wait for the writers' lock when its caller
 * would wait wait_ms.  Anyone who can write the state directory can hold
 * the lock (ARCHITECTURE §5.7), so what must go on never waits on it
 * longer: the watcher inside a transaction — it holds a snapshot there,
 * perhaps the lock that orders changes — tries once, and what it could not
 * write is left behind for a later look; the startup process replaying WAL
 * waits at most KS_LOCK_REDO_WAIT_MS, and not at all while the files are
 * behind already (a held lock would otherwise cost every replayed record
 * that wait: the watcher writes the files once it can).
 */
static int
lock_wait_allowed(int wait_ms)
{
	if (ks_am_watcher && IsTransactionState())
		return 0;
	if (AmStartupProcess())
		return ks_shared->files_behind ? 0 : Min(wait_ms, KS_LOCK_REDO_WAIT_MS);
	return wait_ms;
}

/*
 * Take the writers' lock, waiting at most wait_ms (less where
 * lock_wait_allowed() says so), never interrupted and never an error:
 * the descriptor, or -1 with *problem set.
 */
int
ks_lock_state_dir(int wait_ms, char *problem, size_t problemlen)
{
	return ks_lock_dir_within(ks_state_dir, lock_wait_allowed(wait_ms), problem, problemlen);
}

/* The state file's text of a state, signed with the secret (and the release key). */
bool
ks_persist_text(const KsState *state, StringInfo out, char *problem, size_t problemlen)
{
	char	   *secret;
	size_t		secretlen;
	char	   *release_key;
	size_t		release_keylen;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	ks_release_key_for_writing(&release_key, &release_keylen);
	if (!ks_state_file_text(out, state, secret, secretlen, release_key, release_keylen))
	{
		snprintf(problem, problemlen, "could not compute HMAC-SHA256");
		return false;
	}
	return true;
}

/* Take the writers' lock for a write of this kind (see ks_persist_file()). */
static int
lock_for(KsPersistWhen when, char *problem, size_t problemlen)
{
	/* a release in a session waits as long as the session lets it, and at most 10 s */
	if (when == KS_PERSIST_CHECK && !ks_am_watcher)
		return ks_lock_dir(ks_state_dir, problem, problemlen);
	return ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, problemlen);
}

/*
 * Write the state file by compare-and-swap under the writers' lock, and
 * note it as the server's own before letting go of the lock.  *w receives
 * what an undo needs (the bytes before).
 *
 * KS_PERSIST_CHECK writes nothing: a release asks at pre-commit whether its
 * write will find the file as the server left it (KS_WRITE_CONFLICT if an
 * outside change nobody has judged is there), waiting for the lock as long
 * as its session allows (interruptibly, statement_timeout and lock_timeout
 * honoured) and at most 10 s — the watcher's outside release not at all: it
 * fails, and a later look applies it — and writes after its commit.  A
 * raise before its commit (KS_PERSIST_RAISE) and a write after a commit
 * wait at most KS_LOCK_RAISE_WAIT_MS: either writes whatever it finds — an unseen
 * outside change there is kept beside the file as a raced write
 * (files.c), judged by the watcher against the new state — and a failure
 * leaves the file behind (file_problem), for the watcher to put right,
 * never an error.
 */
KsWriteResult
ks_persist_file(const char *text, size_t len, const KsExpect *expect, KsPersistWhen when,
				KsWritten *w, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	int			lockfd;
	bool		expected;
	KsReplaceResult r;

	memset(w, 0, sizeof(KsWritten));
	if (!ks_state_dir_ours(problem, problemlen) ||
		!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return KS_WRITE_FAILED;
	ks_state_file_path(path, sizeof(path));
	lockfd = lock_for(when, problem, problemlen);
	if (lockfd < 0)
	{
		if (when != KS_PERSIST_CHECK)
			ks_file_behind(problem);	/* the watcher writes it */
		return KS_WRITE_FAILED;
	}
	w->before = read_if_present(path, &w->before_len);
	expected = file_as_expected(w->before, w->before_len, expect, secret, secretlen);
	if (when == KS_PERSIST_CHECK)
	{
		ks_unlock_dir(lockfd);
		if (expected)
			return KS_WRITE_OK;
		snprintf(problem, problemlen, "the state file changed outside the database");
		return KS_WRITE_CONFLICT;
	}
	/* a newcomer is kept as a raced write; an undo puts back the state held */
	r = ks_replace_shared_file(path, text, len,
							   expected ? w->before : NULL, expected ? w->before_len : 0,
							   problem, problemlen);
	if (!expected)
		w->before = read_if_present(KS_LAST_APPLIED_FILE, &w->before_len);
	if (r != KS_REPLACE_FAILED)
	{
		w->text = pstrdup(text);
		w->text_len = len;
		w->file_written = true;
		ks_file_written(text, len);
	}
	ks_unlock_dir(lockfd);
	if (r == KS_REPLACE_FAILED)
	{
		ks_file_behind(problem);
		return KS_WRITE_FAILED;
	}
	if (r == KS_REPLACED_LOST)
		ereport(WARNING,
				(errmsg("an outside write to the kill switch state file raced this change and could not be kept: %s",
						problem)));
	if (r != KS_REPLACED)
		ks_wake_watcher();		/* a raced write to judge */
	return KS_WRITE_OK;
}

/*
 * After a commit: the private copy learns the committed state.  False,
 * with a problem, if it could not (the caller keeps its mark for the
 * watcher).  No writers' lock: the copy is written by the holder of the
 * lock that orders changes (or the watcher settling a mark, or the
 * postmaster), and read whole (rename).
 */
bool
ks_persist_copy(const char *text, size_t len, char *problem, size_t problemlen)
{
	return ks_write_file_durably(KS_LAST_APPLIED_FILE, text, len, problem, problemlen);
}

/*
 * The copy learns a state applied from the state file where no transaction
 * records it (the watcher without its history).  The copy is what "the
 * state the server holds" means to the watcher's judging: left behind
 * shared memory, the same file would be judged newer once the history
 * exists, and its change recorded twice.
 *
 * With state_file, a state taken from the history (standby.c) goes into
 * the state file too (unless the directory is another server's, claim.c).
 * On a standby, nothing is written over a newer state that redo published
 * meanwhile: redo publishes first, then writes its files under this same
 * lock.  Returns false, with a problem, if something could not be written.
 */
bool
ks_persist_applied(const KsState *state, bool state_file, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	StringInfoData text;
	KsState		st = *state;
	int			lockfd;
	bool		ok;

	/* like every file the server writes, it names the state it replaces */
	(void) ks_held_signature(&st.replaces);
	initStringInfo(&text);
	if (!ks_persist_text(&st, &text, problem, problemlen))
		return false;
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, problemlen);
	if (lockfd < 0)
		return false;
	if (RecoveryInProgress() &&
		KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) > state->generation)
	{
		ks_unlock_dir(lockfd);
		return true;
	}
	ok = ks_persist_copy(text.data, text.len, problem, problemlen);
	if (ok && state_file && !ks_shared->state_dir_foreign)
	{
		/* a standby's: it judges no raced file, and puts back what is not its own */
		ks_state_file_path(path, sizeof(path));
		ok = ks_write_shared_file_durably(path, text.data, text.len, problem, problemlen);
		if (ok)
			ks_file_written(text.data, text.len);
	}
	ks_unlock_dir(lockfd);
	return ok;
}

/*
 * After an abort: put back only our own bytes.  Under the writers' lock
 * (bounded), the state file is restored only if it still holds exactly
 * what this change wrote; a newer outside write stays, for the watcher to
 * judge, and one that races the put-back is kept as a raced write.  Only a
 * raise writes before its commit, so an undo that cannot complete leaves
 * the file higher than the state in force, never lower: behind, for the
 * watcher to put right.  Returns false, with a problem, if the file could
 * not be put back.
 */
bool
ks_persist_undo(const KsWritten *w, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *now;
	size_t		nowlen;
	int			lockfd;
	bool		ok = true;

	if (!w->file_written)
		return true;
	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, problemlen);
	if (lockfd < 0)
	{
		ks_file_behind(problem);
		return false;
	}
	now = read_if_present(path, &nowlen);
	if (now && nowlen == w->text_len && memcmp(now, w->text, nowlen) == 0)
	{
		KsReplaceResult r = KS_REPLACED;

		if (w->before)
			r = ks_replace_shared_file(path, w->before, w->before_len, w->text, w->text_len,
									   problem, problemlen);
		else if (unlink(path) != 0 && errno != ENOENT)
		{
			snprintf(problem, problemlen, "could not remove \"%s\": %m", path);
			r = KS_REPLACE_FAILED;
		}
		ok = r != KS_REPLACE_FAILED;
		if (ok)
			ks_file_written(w->before, w->before_len);
		if (r == KS_REPLACED_RACED || r == KS_REPLACED_LOST)
			ks_wake_watcher();
	}
	ks_unlock_dir(lockfd);
	if (!ok)
		ks_file_behind(problem);
	return ok;
}
