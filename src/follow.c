/*
 * follow.c — the state file follows the state in force (ARCHITECTURE §5.3,
 * §5.7).
 *
 * The server knows what the file holds: the SHA-256 of the bytes it last
 * wrote there, or last judged there (KsShared.file_hash).  Its own writes
 * are recognised by their bytes, not by holding a lock, and an outside
 * write is judged once: bytes already judged are never judged again, so
 * re-reading a file cannot turn into a stream of events.
 *
 * A raise never waits for the file: when a change is in force that the file
 * does not show (the writers' lock was busy, the disk full), the file is
 * behind — a visible problem (ks_status() file_problem, a WARNING from the
 * change), never a failed change — and the watcher writes it as soon as it
 * can, by compare-and-swap: only over bytes the server knows, so that an
 * outside write that came meanwhile is judged first.
 */
#include "postgres.h"

#include <sys/stat.h>

#include "events.h"
#include "follow.h"
#include "guc.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "state.h"
#include "store.h"

/*
 * What file_hash says of these bytes: their SHA-256 as hex, or
 * KS_FILE_MISSING_HASH for no file (data NULL); "" if it cannot be
 * computed (never known).
 */
void
ks_file_hash_of(const char *data, size_t len, char *hash)
{
	if (data == NULL)
		strlcpy(hash, KS_FILE_MISSING_HASH, KS_HEX_DIGEST_LEN + 1);
	else if (!ks_sha256_hex(data, len, hash))
		hash[0] = '\0';
}

/*
 * Note bytes the server put into the state file (NULL: it removed it): its
 * own, and the file follows.  The writer calls it before it lets go of the
 * writers' lock, so that whoever takes the lock next knows them.
 */
void
ks_file_written(const char *data, size_t len)
{
	char		hash[KS_HEX_DIGEST_LEN + 1];

	ks_file_hash_of(data, len, hash);
	SpinLockAcquire(&ks_shared->mutex);
	memcpy(ks_shared->file_hash, hash, sizeof(hash));
	ks_shared->file_behind = false;
	ks_shared->file_problem[0] = '\0';
	SpinLockRelease(&ks_shared->mutex);
}

/* Forget what the file holds: a standby's redo wrote it (the private copy stands in). */
void
ks_file_unknown(void)
{
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->file_hash[0] = '\0';
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * A change is in force that the state file does not show: say why (for
 * ks_status()) and wake the watcher, which writes the file when it can.
 */
void
ks_file_behind(const char *problem)
{
	char		text[KS_PROBLEM_LEN];

	ks_clip_utf8(text, problem, sizeof(text));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->file_behind = true;
	memcpy(ks_shared->file_problem, text, sizeof(text));
	SpinLockRelease(&ks_shared->mutex);
	ks_wake_watcher();
}

/*
 * Are these the bytes the server knows the file holds?  *behind says
 * whether the file then lags the state in force.
 */
bool
ks_file_known(const char *hash, bool *behind)
{
	bool		known;

	SpinLockAcquire(&ks_shared->mutex);
	known = hash[0] != '\0' && strcmp(ks_shared->file_hash, hash) == 0;
	*behind = ks_shared->file_behind;
	SpinLockRelease(&ks_shared->mutex);
	return known;
}

/* What the server knows the file holds, into a buffer of KS_HEX_DIGEST_LEN + 1. */
void
ks_file_hash(char *hash)
{
	SpinLockAcquire(&ks_shared->mutex);
	memcpy(hash, ks_shared->file_hash, KS_HEX_DIGEST_LEN + 1);
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * The bytes a look judged (hash) are known from now on — noted before the
 * look commits, and unless the server wrote the file meanwhile (the hash
 * is no longer before, what it was when the look began).  True if noted:
 * an abort of the look takes the note back (ks_file_unjudged()).
 */
bool
ks_file_judged(const char *hash, const char *before)
{
	bool		noted;

	SpinLockAcquire(&ks_shared->mutex);
	noted = strcmp(ks_shared->file_hash, before) == 0;
	if (noted)
		strlcpy(ks_shared->file_hash, hash, sizeof(ks_shared->file_hash));
	SpinLockRelease(&ks_shared->mutex);
	return noted;
}

/*
 * The look that judged these bytes (hash) aborted: they are unseen again,
 * judged at a later look — unless the server wrote the file since the note
 * (file_hash moved on: its own bytes stay known).
 */
void
ks_file_unjudged(const char *hash, const char *before)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (strcmp(ks_shared->file_hash, hash) == 0)
		strlcpy(ks_shared->file_hash, before, sizeof(ks_shared->file_hash));
	SpinLockRelease(&ks_shared->mutex);
}

/* Say why the file still lags, for ks_status(). */
static void
still_behind(const char *problem)
{
	char		text[KS_PROBLEM_LEN];

	ks_clip_utf8(text, problem, sizeof(text));
	SpinLockAcquire(&ks_shared->mutex);
	memcpy(ks_shared->file_problem, text, sizeof(text));
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * The bytes the state file should hold: the private copy's, if it carries
 * the newest committed state (the chain: a raise in flight, or one whose
 * event follows, is nobody's file yet); else (the copy could not be written
 * either) the newest event's, signed afresh, which the copy then learns
 * too.  NULL, with a problem, if neither carries it.
 */
static char *
bytes_in_force(bool history, size_t *len, char *problem, size_t problemlen)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int			flags;
	KsMode		chain = ks_chain_state(&flags);
	char	   *bytes;
	char	   *secret;
	size_t		secretlen;
	char	   *release_key;
	size_t		release_keylen;
	KsState		st;
	StringInfoData text;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return NULL;
	if (ks_read_file(KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE, &bytes, len, problem, problemlen) &&
		ks_state_from_text(bytes, *len, secret, secretlen, ks_secret_file, true, &st,
						   problem, problemlen) == KS_FILE_VALID &&
		st.generation == KS_WORD_GENERATION(word) && st.mode == chain)
		return bytes;
	if (!history || ks_events_newest_state(&st) != KS_HISTORY_OK ||
		st.generation != KS_WORD_GENERATION(word) || st.mode != chain)
	{
		snprintf(problem, problemlen, "neither the private copy nor the history holds the state in force");
		return NULL;
	}
	ks_release_key_for_writing(&release_key, &release_keylen);
	initStringInfo(&text);
	if (!ks_state_file_text(&text, &st, secret, secretlen, release_key, release_keylen) ||
		!ks_write_file_durably(KS_LAST_APPLIED_FILE, text.data, text.len, problem, problemlen))
		return NULL;
	*len = text.len;
	return text.data;
}

/*
 * Write the state in force into a state file that lags behind it (a
 * failed write, an undo that could not complete, a release whose write
 * after its commit failed, a change in flight at a crash that never
 * committed).  By compare-and-swap under the writers' lock, which it does
 * not wait for (the watcher tries again at its next look): only over bytes
 * the server knows (or no file, where it knows none is there); a file that
 * holds anything else is an outside write, judged at the next look, and
 * one that races the replace is kept as a raced write.  history: the
 * caller may read the history (the watcher, in its transaction).  True
 * once the file follows.
 */
bool
ks_write_behind_file(bool history)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char		hash[KS_HEX_DIGEST_LEN + 1];
	char	   *held;
	char	   *now;
	size_t		held_len;
	size_t		now_len = 0;
	bool		behind;
	int			lockfd;
	KsReplaceResult r;

	ks_state_file_path(path, sizeof(path));
	held = bytes_in_force(history, &held_len, problem, sizeof(problem));
	if (held == NULL)
	{
		still_behind(problem);
		return false;
	}
	lockfd = ks_lock_dir_within(ks_state_dir, 0, problem, sizeof(problem));
	if (lockfd < 0)
	{
		still_behind(problem);
		return false;
	}
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &now, &now_len, problem, sizeof(problem)))
	{
		struct stat sb;

		now = NULL;				/* missing: known as such, or someone else's doing */
		if (lstat(path, &sb) == 0 || errno != ENOENT)
		{
			ks_unlock_dir(lockfd);
			return false;		/* something unreadable: judged first */
		}
	}
	ks_file_hash_of(now, now_len, hash);
	if (!ks_file_known(hash, &behind))
	{
		ks_unlock_dir(lockfd);
		return false;			/* an outside write: judged first */
	}
	r = ks_replace_shared_file(path, held, held_len, now, now_len, problem, sizeof(problem));
	if (r != KS_REPLACE_FAILED)
		ks_file_written(held, held_len);
	ks_unlock_dir(lockfd);
	if (r == KS_REPLACE_FAILED)
	{
		still_behind(problem);
		return false;
	}
	if (r != KS_REPLACED)
		ereport(WARNING,
				(errmsg("an outside write to the kill switch state file raced the server's replace of it"),
				 r == KS_REPLACED_RACED ? errdetail("It is kept beside the state file and judged next.")
				 : errdetail("It could not be kept (%s).", problem)));
	if (behind)
		ereport(LOG,
				(errmsg("the kill switch state file follows the state in force again")));
	return true;
}
