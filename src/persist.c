/*
 * persist.c — the server's side of the state file: where it is, the secret
 * that signs it, and writing it under the writers' lock by compare-and-swap,
 * so that no outside change is ever overwritten unseen.
 *
 * The compare is by bytes: the state file is the server's own as long as
 * it holds exactly what the server last put there or judged — whose
 * SHA-256 is KsShared.file_hash — and nothing else makes it so (a private
 * copy left behind by a failed write does not turn the server's own file
 * into a stranger's).  Only while file_hash is unknown (a standby's redo
 * writes without it) does the private copy stand in for it.
 *
 * The private copy pg_killswitch/last_applied.json holds the newest
 * committed state; it learns a change at commit, never before, so it never
 * runs ahead of the history.  A failure to write it after a commit is not
 * an error (the transaction has committed): the change's mark stays
 * (marks.c), and the watcher, settling the mark by the commit log, writes
 * the copy from it.  Until then a restart starts at the higher of the two.
 *
 * Every wait for the writers' lock here is bounded (KS_LOCK_BOUNDED_MS in
 * files.c): a raise never waits longer for the file, and a failed write is
 * a visible problem (ks_status() file_problem, a WARNING) that the watcher
 * retries (ks_persist_catch_up()), never a failed raise.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "killswitch.h"

/* Absolute or data-directory-relative path of the state file. */
void
ks_state_file_path(char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", ks_state_dir, KS_STATE_FILE_NAME);
}

/*
 * Read the signing secret.  Read on every use rather than cached, so that
 * a rotated secret takes effect without a restart; changes are rare.
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
	char		hex[KS_HEX_DIGEST_LEN + 1];

	if (!ks_sha256_hex(secret, len, hex))
		strlcpy(hex, "unknown", sizeof(hex));
	strlcpy(buf, hex, 17);
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

/* Read the server's private copy of the newest committed state. */
bool
ks_read_held(KsState *held, char *problem, size_t problemlen)
{
	char	   *secret;
	size_t		secretlen;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	return ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file,
						 true, 0, held, problem, problemlen) == KS_FILE_VALID;
}

static int	lock_bounded(char *problem, size_t problemlen);

/* The SHA-256 of some bytes, as hex. */
static void
bytes_hash(const char *data, size_t len, char *hex)
{
	if (!ks_sha256_hex(data, len, hex))
		hex[0] = '\0';
}

/* file_hash for "judged missing": no SHA-256 looks like it */
#define KS_FILE_MISSING_HASH "-"

/*
 * The state file now holds these bytes (NULL: there is none), put there or
 * judged by this server: they are its own until someone else writes.  The
 * caller holds the writers' lock, or is the watcher that just judged them,
 * or the postmaster at start.
 */
void
ks_note_file_bytes(const char *data, size_t len)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];

	if (data == NULL)
		strlcpy(hex, KS_FILE_MISSING_HASH, sizeof(hex));
	else
		bytes_hash(data, len, hex);
	SpinLockAcquire(&ks_shared->mutex);
	memcpy(ks_shared->file_hash, hex, sizeof(hex));
	SpinLockRelease(&ks_shared->mutex);
}

/* Forget what the file held: a standby's redo wrote it (the private copy stands in). */
void
ks_note_file_unknown(void)
{
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->file_hash[0] = '\0';
	SpinLockRelease(&ks_shared->mutex);
}

/* Is the state file (these bytes, or missing as NULL) what the server last put there? */
static bool
bytes_are_ours(const char *data, size_t len)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];
	char		ours[KS_HEX_DIGEST_LEN + 1];
	char	   *copy;
	size_t		copylen;

	SpinLockAcquire(&ks_shared->mutex);
	memcpy(ours, ks_shared->file_hash, sizeof(ours));
	SpinLockRelease(&ks_shared->mutex);
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
		bytes_hash(data, len, hex);
		return strcmp(hex, ours) == 0;
	}
	/* unknown (after a standby's redo): the private copy, byte for byte */
	copy = read_if_present(KS_LAST_APPLIED_FILE, &copylen);
	return copy != NULL && copylen == len && memcmp(copy, data, len) == 0;
}

/*
 * Is the state file the server's own now, written or judged by it?  The
 * watcher then has nothing to judge.  It reads without the writers' lock
 * first (the common case costs nothing more), and looks again under it
 * before it calls the file someone else's: a server write renames the
 * file and notes its bytes under the lock, and the watcher must not see
 * one without the other.  *data and *len receive what was read (NULL:
 * no file).
 */
bool
ks_file_is_ours(const char *path, char **data, size_t *len)
{
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		ours;

	*data = read_if_present(path, len);
	if (bytes_are_ours(*data, *len))
		return true;
	lockfd = lock_bounded(problem, sizeof(problem));
	*data = read_if_present(path, len);
	ours = bytes_are_ours(*data, *len);
	ks_unlock_dir(lockfd);
	return ours;
}

/*
 * The watcher has judged these bytes (NULL: no file): they are the
 * server's own from now on — if the file still holds them, under the
 * writers' lock, so that a write of the server's in between is not
 * forgotten.
 */
void
ks_note_judged(const char *path, const char *data, size_t len)
{
	char		problem[KS_PROBLEM_LEN];
	int			lockfd = lock_bounded(problem, sizeof(problem));
	size_t		nowlen = 0;
	char	   *now = read_if_present(path, &nowlen);

	if ((now == NULL && data == NULL) ||
		(now != NULL && data != NULL && nowlen == len && memcmp(now, data, len) == 0))
		ks_note_file_bytes(data, len);
	ks_unlock_dir(lockfd);
}

/*
 * Does the state file still hold what the writer last judged?  Its own
 * bytes (file_hash); or the file the watcher judged (expect->judged); or —
 * for a verdict on an untrusted file — a file that is still missing or
 * untrusted.  Anything else is a newcomer nobody has judged yet.
 */
static bool
file_as_expected(const char *path, const KsExpect *expect,
				 const char *secret, size_t secretlen)
{
	KsState		file;
	KsVerdict	v;
	char		problem[KS_PROBLEM_LEN];
	size_t		len;
	char	   *data = read_if_present(path, &len);

	if (bytes_are_ours(data, len))
		return true;
	v = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac,
					  0, &file, problem, sizeof(problem));
	if (v == KS_FILE_MISSING || v == KS_FILE_BAD)
		return expect->untrusted;
	return expect->judged && ks_compare_to_held(&file, expect->judged) == KS_SAME;
}

/*
 * Take the writers' lock with a bounded wait, whoever asks: interrupts are
 * held meanwhile, which makes ks_lock_dir() give up after
 * KS_LOCK_BOUNDED_MS rather than wait for a cancel.
 */
static int
lock_bounded(char *problem, size_t problemlen)
{
	volatile int fd = -1;

	HOLD_INTERRUPTS();
	PG_TRY();
	{
		fd = ks_lock_dir(ks_state_dir, problem, problemlen);
	}
	PG_FINALLY();
	{
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	return fd;
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

/* Note a problem of the state file, or that it is solved (""). */
static void
file_problem(const char *problem, bool stale)
{
	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(ks_shared->file_problem, problem, sizeof(ks_shared->file_problem));
	ks_shared->file_stale = stale;
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Write the state file by compare-and-swap under the writers' lock
 * (bounded): if it still holds what was last judged, write text and note
 * it as the server's own; otherwise write nothing and report the conflict.
 * *w receives what an undo needs (the bytes before).  With check_only,
 * nothing is written: a release asks at pre-commit whether its write will
 * be allowed, and writes after its commit.
 */
KsWriteResult
ks_persist_file(const char *text, size_t len, const KsExpect *expect, bool check_only,
				KsWritten *w, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	int			lockfd;
	KsWriteResult result = KS_WRITE_FAILED;

	memset(w, 0, sizeof(KsWritten));
	if (!ks_state_dir_ours(problem, problemlen) ||
		!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return KS_WRITE_FAILED;
	ks_state_file_path(path, sizeof(path));
	/*
	 * A release asks before its commit, and may wait as long as its session
	 * allows (interruptibly, statement_timeout and lock_timeout honoured);
	 * every write waits a bounded time.
	 */
	lockfd = check_only ? ks_lock_dir(ks_state_dir, problem, problemlen)
		: lock_bounded(problem, problemlen);
	if (lockfd < 0)
	{
		if (!check_only)
			file_problem(problem, true);	/* behind: the watcher writes it */
		return KS_WRITE_FAILED;
	}
	if (!file_as_expected(path, expect, secret, secretlen))
	{
		snprintf(problem, problemlen, "the state file changed outside the database");
		result = KS_WRITE_CONFLICT;
	}
	else if (check_only)
		result = KS_WRITE_OK;
	else
	{
		w->before = read_if_present(path, &w->before_len);
		w->text = pstrdup(text);
		w->text_len = len;
		w->file_written = ks_write_shared_file_durably(path, text, len, problem, problemlen);
		if (w->file_written)
		{
			ks_note_file_bytes(text, len);
			result = KS_WRITE_OK;
		}
	}
	ks_unlock_dir(lockfd);
	if (!check_only)
		file_problem(result == KS_WRITE_OK ? "" : problem, result != KS_WRITE_OK);
	return result;
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
	int			lockfd;
	bool		ok;

	initStringInfo(&text);
	if (!ks_persist_text(state, &text, problem, problemlen))
		return false;
	lockfd = lock_bounded(problem, problemlen);
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
		ks_state_file_path(path, sizeof(path));
		ok = ks_write_shared_file_durably(path, text.data, text.len, problem, problemlen);
		if (ok)
			ks_note_file_bytes(text.data, text.len);
	}
	ks_unlock_dir(lockfd);
	return ok;
}

/*
 * After an abort: put back only our own bytes.  Under the writers' lock
 * (bounded), the state file is restored only if it still holds exactly
 * what this change wrote; a newer outside write stays, for the watcher to
 * judge.  Only a raise writes before its commit, so an undo that cannot
 * complete leaves the file higher than the state in force, never lower:
 * marked stale, for the watcher to put right.  Returns false, with a
 * problem, if the file could not be put back.
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
	lockfd = lock_bounded(problem, problemlen);
	if (lockfd < 0)
	{
		file_problem(problem, true);
		return false;
	}
	now = read_if_present(path, &nowlen);
	if (now && nowlen == w->text_len && memcmp(now, w->text, nowlen) == 0)
	{
		if (w->before)
			ok = ks_write_shared_file_durably(path, w->before, w->before_len,
											  problem, problemlen);
		else if (unlink(path) != 0 && errno != ENOENT)
		{
			snprintf(problem, problemlen, "could not remove \"%s\": %m", path);
			ok = false;
		}
		if (ok)
			ks_note_file_bytes(w->before, w->before_len);
	}
	ks_unlock_dir(lockfd);
	file_problem(ok ? "" : problem, !ok);
	return ok;
}

/* How often the watcher tries again to write a state file that fell behind. */
#define KS_CATCH_UP_RETRY_MS 1000

/*
 * The watcher: a state file left behind the state in force (a failed
 * write, an undo that could not complete, a release whose write after its
 * commit failed) is rewritten from the private copy — only while it still
 * holds the server's own bytes; an outside write there is judged instead.
 */
void
ks_persist_catch_up(void)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *copy;
	size_t		copylen;
	char	   *now;
	size_t		nowlen;
	int			lockfd;
	bool		stale;

	static TimestampTz tried_at = 0;

	SpinLockAcquire(&ks_shared->mutex);
	stale = ks_shared->file_stale;
	SpinLockRelease(&ks_shared->mutex);
	if (!stale || ks_shared->state_dir_foreign ||
		!TimestampDifferenceExceeds(tried_at, GetCurrentTimestamp(), KS_CATCH_UP_RETRY_MS))
		return;
	tried_at = GetCurrentTimestamp();
	ks_state_file_path(path, sizeof(path));
	copy = read_if_present(KS_LAST_APPLIED_FILE, &copylen);
	if (copy == NULL)
		return;
	lockfd = lock_bounded(problem, sizeof(problem));
	if (lockfd < 0)
	{
		file_problem(problem, true);
		return;
	}
	now = read_if_present(path, &nowlen);
	if (now == NULL || bytes_are_ours(now, nowlen))
	{
		if (ks_write_shared_file_durably(path, copy, copylen, problem, sizeof(problem)))
		{
			ks_note_file_bytes(copy, copylen);
			file_problem("", false);
			ereport(LOG, (errmsg("killswitch: the state file caught up with the state in force")));
		}
		else
			file_problem(problem, true);
	}
	else
		file_problem("", false);	/* someone else's now: judged as a newcomer */
	ks_unlock_dir(lockfd);
}
