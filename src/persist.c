/*
 * persist.c — the server's side of the state file: where it is, the secret
 * that signs it, and writing it under the writers' lock by compare-and-swap,
 * so that no outside change is ever overwritten unseen.
 *
 * Three files in the private directory and the state directory tell, after
 * a crash at any instant, whether a change had committed:
 *
 *   last_applied.json   the newest state known to have committed (the copy)
 *   in_flight.json      a change written to the state file whose commit is
 *                       not yet known (the mark): written before the state
 *                       file at pre-commit, removed at commit or abort
 *   kill_switch_state.json   the state file every program shares
 *
 * The copy is rewritten at commit, not before: so it never runs ahead of
 * the history, and a crash between the pre-commit write and the commit
 * record leaves the mark for the server to check against killswitch.events
 * (startup.c, ks_confirm_in_flight()).
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/guc.h"

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

/*
 * Do these bytes of the state file hold what the writer last judged?
 * Either the state the server holds (its copy), or the file the watcher
 * judged (expect->judged), or — for a verdict on an untrusted file — a file
 * that is still missing or untrusted.  Anything else is a newcomer nobody
 * has judged yet.  bytes NULL: there is no file.
 */
static bool
file_as_expected(const char *bytes, size_t len, const KsExpect *expect,
				 const char *secret, size_t secretlen)
{
	KsState		file,
				held;
	KsVerdict	v;
	char		problem[KS_PROBLEM_LEN];

	v = bytes == NULL ? KS_FILE_MISSING :
		ks_state_from_text(bytes, len, secret, secretlen, ks_secret_file, ks_require_hmac,
						   &file, problem, sizeof(problem));
	if (v == KS_FILE_MISSING || v == KS_FILE_BAD)
		return expect->untrusted;
	if (expect->judged && ks_compare_to_held(&file, expect->judged) == KS_SAME)
		return true;
	return ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file,
						 true, 0, &held, problem, sizeof(problem)) == KS_FILE_VALID &&
		ks_compare_to_held(&file, &held) == KS_SAME;
}

/*
 * The pre-commit write, by compare-and-swap under the writers' lock: mark
 * the change in flight, then, if the state file still holds what was last
 * judged, write it; otherwise write nothing and report the conflict.  *w
 * receives what the commit or the undo needs.
 *
 * A raise (raise) never fails nor waits for the file (ARCHITECTURE §5.3):
 * the writers' lock is waited for at most KS_LOCK_RAISE_WAIT_MS; busy, or
 * the file not writable, the result is KS_WRITE_BEHIND (the mark is
 * written: the change may commit, and the file follows through the
 * watcher).  An unseen outside change found there is not overwritten: it is
 * kept beside the file as a raced write, judged by the watcher against the
 * new state.  The file is replaced without ever being opened for writing,
 * and a write that raced the replace is kept the same way (files.c).
 */
KsWriteResult
ks_persist_state(const KsState *state, const KsExpect *expect, bool raise, KsWritten *w,
				 char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	char	   *release_key;
	size_t		release_keylen;
	StringInfoData text;
	int			lockfd;
	bool		expected;
	KsReplaceResult r;

	memset(w, 0, sizeof(KsWritten));
	if (!ks_state_dir_ours(problem, problemlen) ||
		!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return KS_WRITE_FAILED;
	ks_release_key_for_writing(&release_key, &release_keylen);
	initStringInfo(&text);
	if (!ks_state_file_text(&text, state, secret, secretlen, release_key, release_keylen))
	{
		snprintf(problem, problemlen, "could not sign the state (generation " INT64_FORMAT ")",
				 state->generation);
		return KS_WRITE_FAILED;
	}
	ks_state_file_path(path, sizeof(path));
	w->text = text.data;
	w->text_len = text.len;

	/*
	 * The mark first: a state file without it would look committed.  It
	 * needs no writers' lock (only a holder of the lock on killswitch.events
	 * writes the private files).
	 */
	w->marked = ks_write_file_durably(KS_IN_FLIGHT_FILE, text.data, text.len,
									  problem, problemlen);
	if (!w->marked && !raise)
		return KS_WRITE_FAILED;
	if (!w->marked)
		ereport(WARNING,
				(errmsg("could not mark the kill switch change in flight; the change goes on without it"),
				 errdetail("%s", problem),
				 errhint("After a crash before its commit completes, this raise may stand as a change from the state file.")));
	lockfd = raise ? ks_lock_dir_within(ks_state_dir, KS_LOCK_RAISE_WAIT_MS, problem, problemlen)
		: ks_lock_dir(ks_state_dir, problem, problemlen);
	if (lockfd < 0)
		return raise ? KS_WRITE_BEHIND : KS_WRITE_FAILED;
	w->before = read_if_present(path, &w->before_len);
	expected = file_as_expected(w->before, w->before_len, expect, secret, secretlen);
	if (!expected && !raise)
	{
		ks_unlock_dir(lockfd);
		snprintf(problem, problemlen, "the state file changed outside the database");
		return KS_WRITE_CONFLICT;
	}
	if (!expected)
	{
		/* the newcomer is kept as a raced write; an undo puts back the state held */
		w->before = read_if_present(KS_LAST_APPLIED_FILE, &w->before_len);
	}
	r = ks_replace_shared_file(path, text.data, text.len,
							   expected ? w->before : NULL, expected ? w->before_len : 0,
							   problem, problemlen);
	ks_unlock_dir(lockfd);
	if (r == KS_REPLACE_FAILED)
		return raise ? KS_WRITE_BEHIND : KS_WRITE_FAILED;
	w->file_written = true;
	ks_file_written(text.data, text.len);
	if (r == KS_REPLACED_LOST)
		ereport(WARNING,
				(errmsg("an outside write to the kill switch state file raced this change and could not be kept"),
				 errdetail("%s", problem)));
	if (r != KS_REPLACED)
		ks_wake_watcher();		/* a raced write to judge */
	return KS_WRITE_OK;
}

/*
 * At commit: the change is history now, so the copy learns it and the mark
 * goes.  Never an error (the transaction has committed): a failure leaves
 * the mark, which costs a short fail-closed window at the next start until
 * the watcher has confirmed the change.  No writers' lock is needed: only a
 * holder of the lock on killswitch.events (which this transaction still
 * holds) or the postmaster writes the private files.
 */
void
ks_persist_commit(const KsWritten *w)
{
	char		problem[KS_PROBLEM_LEN];

	/* a raise whose file (or mark) is behind has committed too: the copy learns it */
	if (w->text == NULL)
		return;
	if (!ks_write_file_durably(KS_LAST_APPLIED_FILE, w->text, w->text_len,
							   problem, sizeof(problem)))
	{
		ereport(LOG,
				(errmsg("killswitch: could not update the private copy after a commit: %s", problem),
				 errdetail("The change is committed; it is confirmed against the history at the next start.")));
		return;
	}
	if (w->marked && unlink(KS_IN_FLIGHT_FILE) != 0 && errno != ENOENT)
		ereport(LOG,
				(errmsg("killswitch: could not remove \"%s\": %m", KS_IN_FLIGHT_FILE)));
}

/*
 * The copy learns a state applied from the state file where no transaction
 * records it (the watcher without its history).  The copy is what "the
 * state the server holds" means to the watcher's judging and to the
 * compare-and-swap: left behind shared memory, the same file would be
 * judged newer once the history exists, and its change recorded twice.
 *
 * With state_file, a state taken from the history (standby.c) goes into
 * the state file too (unless the directory is another server's, claim.c),
 * superseding any change in flight.  On a standby, nothing is written over
 * a newer state that redo published meanwhile: redo publishes first, then
 * writes its files under this same lock.
 * Returns false, with a problem, if something could not be written.
 */
bool
ks_persist_applied(const KsState *state, bool state_file, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	char	   *release_key;
	size_t		release_keylen;
	int			lockfd;
	bool		ok;

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	ks_release_key_for_writing(&release_key, &release_keylen);
	lockfd = ks_lock_dir(ks_state_dir, problem, problemlen);
	if (lockfd < 0)
		return false;
	if (RecoveryInProgress() &&
		KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) > state->generation)
	{
		ks_unlock_dir(lockfd);
		return true;
	}
	ok = ks_state_write(KS_LAST_APPLIED_FILE, state, secret, secretlen,
						release_key, release_keylen, problem, problemlen);
	if (ok && state_file)
	{
		ks_state_file_path(path, sizeof(path));
		ok = ks_shared->state_dir_foreign ||
			ks_state_write(path, state, secret, secretlen,
						   release_key, release_keylen, problem, problemlen);
		(void) unlink(KS_IN_FLIGHT_FILE);
	}
	ks_unlock_dir(lockfd);
	return ok;
}

/*
 * After an abort: put back only our own bytes.  Under the writers' lock,
 * the state file is restored only if it still holds exactly what this
 * change wrote; a newer outside write stays, for the watcher to judge.
 * The mark goes last, so that a crash in between finds a file that is not
 * the change in flight and simply drops the mark.  Returns false, with a
 * problem, if something written could not be put back.
 */
bool
ks_persist_undo(const KsWritten *w, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *now;
	size_t		nowlen;
	int			lockfd;
	bool		ok = true;

	/* only the mark to remove (a raise whose file was behind): no lock to wait for */
	if (!w->file_written)
	{
		if (w->marked && unlink(KS_IN_FLIGHT_FILE) != 0 && errno != ENOENT)
		{
			snprintf(problem, problemlen, "could not remove \"%s\": %m", KS_IN_FLIGHT_FILE);
			return false;
		}
		return true;
	}
	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_dir(ks_state_dir, problem, problemlen);
	if (lockfd < 0)
		return false;
	now = w->file_written ? read_if_present(path, &nowlen) : NULL;
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
	}
	if (ok && w->marked && unlink(KS_IN_FLIGHT_FILE) != 0 && errno != ENOENT)
	{
		snprintf(problem, problemlen, "could not remove \"%s\": %m", KS_IN_FLIGHT_FILE);
		ok = false;
	}
	ks_unlock_dir(lockfd);
	return ok;
}
