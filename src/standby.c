/*
 * standby.c — a server in recovery follows its primary (ARCHITECTURE §11).
 *
 * A standby's state is what it replayed: redo of the WAL record (wal.c)
 * publishes it and writes the primary's exact bytes into the state file
 * and the private copy, so a restart starts where replay was.  Its watcher
 * also follows the replicated history (a record can be missing: a crash
 * between a commit and its record, a recovery target between the two),
 * puts back any outside write to the state file — a standby never runs
 * lower than it replayed, and an outside write cannot release it — and
 * runs the emergency actions that need no table.  A standby never writes
 * history and never creates a key.  When recovery ends (promotion, or the
 * end of a point-in-time recovery), the history is the truth: the new
 * primary adopts its newest event, without a tamper verdict.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "killswitch.h"

/*
 * Will this start be a recovery from another server's WAL — a standby, a
 * point-in-time recovery, or a base backup started as it is (crash
 * recovery from its backup_label)?  The postmaster decides before the
 * startup process runs, by the files PostgreSQL itself goes by; and by our
 * own mark, which outlives a crash between the end of such a recovery and
 * the watcher's adoption of the history.
 */
bool
ks_recovery_requested(void)
{
	struct stat sb;

	return stat(STANDBY_SIGNAL_FILE, &sb) == 0 || stat(RECOVERY_SIGNAL_FILE, &sb) == 0 ||
		stat(BACKUP_LABEL_FILE, &sb) == 0 || stat(KS_RECOVERED_FILE, &sb) == 0;
}

/*
 * Publish a state read from a file or the history (UTF-8 texts); with
 * only_newer, not over a newer generation (false then).
 */
bool
ks_publish_state(const KsState *st, int flags, bool only_newer)
{
	int64		usec;
	TimestampTz since = GetCurrentTimestamp();

	if (st->engaged_at && ks_parse_iso(st->engaged_at, &usec))
		since = ks_unix_usec_to_timestamptz(usec);
	if (st->tampered)
		flags |= KS_FLAG_TAMPERED;	/* an engage after a verdict keeps it */
	if (only_newer)
		return ks_publish_if_newer(st->mode, flags, st->generation, since,
								   st->source ? st->source : "startup", st->reason, st->triggered_by);
	ks_publish(st->mode, flags, st->generation, since,
			   st->source ? st->source : "startup", st->reason, st->triggered_by);
	return true;
}

/*
 * The position of the WAL that brought the current state: a record's end
 * when redo applies it, the replay position when the watcher follows the
 * history.  Set before the state is published, so that a waiter woken by
 * the publish reads it in ks_status(); it never moves back.
 */
static void
note_state_lsn(XLogRecPtr lsn)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (lsn > ks_shared->state_lsn)
		ks_shared->state_lsn = lsn;
	SpinLockRelease(&ks_shared->mutex);
}

/* Replay (or the history) has brought this generation. */
static void
note_replayed(int64 generation)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (generation > ks_shared->replayed_generation)
		ks_shared->replayed_generation = generation;
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Write a state this standby took — replayed, or heard from its upstream —
 * into its private copy and its state file, with the primary's exact
 * bytes, under the writers' lock — waited for a bounded time, in redo at
 * most KS_LOCK_REDO_WAIT_MS and not at all while the files are behind
 * (persist.c): whoever holds the lock must not slow replay.  Nothing is
 * written over a newer state published meanwhile (its own taker writes that
 * one), so the files never fall behind what they held.  Never an error:
 * false, logged, and files_behind when they could not be written.
 */
bool
ks_standby_write_files(const char *text, size_t len, int64 generation)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		ok = true;

	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (lockfd >= 0 && KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) > generation)
	{
		/* newer: its taker writes it, or said the files are behind */
		ks_unlock_dir(lockfd);
		return true;
	}
	if (lockfd >= 0)
		ok = ks_write_file_durably(KS_LAST_APPLIED_FILE, text, len, problem, sizeof(problem)) &&
			(ks_shared->state_dir_foreign ||
			 ks_write_shared_file_durably(path, text, len, problem, sizeof(problem)));
	ks_unlock_dir(lockfd);
	ks_shared->files_behind = lockfd < 0 || !ok;
	if (ks_shared->files_behind)
		ereport(LOG,
				(errmsg("could not write the state of generation " INT64_FORMAT " into the files: %s",
						generation, problem),
				 errdetail("The standby follows it in shared memory; its watcher writes the files from the history.")));
	return !ks_shared->files_behind;
}

/* ks_standby_apply(), in its memory context. */
static void
apply_replayed(const char *text, size_t len, XLogRecPtr lsn)
{
	KsState		st;
	char		problem[KS_PROBLEM_LEN];

	if (ks_state_from_text(text, len, NULL, 0, NULL, false, &st,
						   problem, sizeof(problem)) == KS_FILE_BAD ||
		st.generation < 0)
	{
		ereport(WARNING,
				(errmsg("killswitch: a replayed state record could not be read: %s", problem),
				 errdetail("The standby keeps its state; its watcher follows the history.")));
		return;
	}
	note_replayed(st.generation);
	/* an older one, or older than what the upstream told (upstream.c) */
	if (st.generation < KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)))
		return;

	/*
	 * Shared memory first: the record is already durable in this server's
	 * WAL, and a crash before the files are written replays it again.
	 */
	note_state_lsn(lsn);
	if (!ks_publish_state(&st, 0, true))
		return;					/* the watcher published a newer one meanwhile */
	if (st.mode == KS_EMERGENCY)
		ks_wake_watcher();
	(void) ks_standby_write_files(text, len, st.generation);
}

/*
 * A state heard from the upstream (upstream.c), verified with the signing
 * secret: published only if it raises — a higher mode, or the same halt at
 * a newer generation — never a lower mode nor a cleared verdict, which
 * arrive only by replaying their record (ARCHITECTURE §11).  Its
 * generation is the primary's, ahead of replay: records replayed before it
 * are older and change nothing, and the records of the changes it
 * supersedes are history by then.  The one place a heard state enters
 * shared memory; true if it did.
 */
bool
ks_standby_take_heard(const KsState *st)
{
	int64		usec;
	TimestampTz since = GetCurrentTimestamp();

	if (st->mode == KS_DISENGAGED)
		return false;
	if (st->engaged_at && ks_parse_iso(st->engaged_at, &usec))
		since = ks_unix_usec_to_timestamptz(usec);
	return ks_publish_heard(st->mode, st->tampered ? KS_FLAG_TAMPERED : 0, st->generation, since,
							st->source ? st->source : "sql", st->reason, st->triggered_by);
}

/*
 * Redo, in the startup process: apply a replayed state unless this server
 * already holds a newer one (a restarted standby replays from its last
 * restartpoint), write its bytes into the state file and the private copy,
 * and wake the watcher for the emergency actions.  Never an error: a file
 * that cannot be written is logged, and shared memory still follows.  Its
 * allocations go with a context of its own: nothing resets the startup
 * process's memory between records.
 */
void
ks_standby_apply(const char *text, size_t len, XLogRecPtr lsn)
{
	MemoryContext ctx = AllocSetContextCreate(CurrentMemoryContext, "killswitch redo",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(ctx);

	apply_replayed(text, len, lsn);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
}

/*
 * The newest event does not verify (a row written without the secret, or
 * signed with another).  A standby does not follow it, and says so once
 * per generation; a server out of recovery assumes the halt, as for any
 * state it cannot trust, recorded by the watcher as a tamper event.
 */
static void
history_unverified(bool in_recovery, const KsState *st, uint64 word)
{
	static int64 warned = -1;
	int64		generation = Max(KS_WORD_GENERATION(word), st->generation) + 1;
	const char *reason = "the newest event of the history does not verify with the signing secret";

	if (in_recovery)
	{
		if (warned != st->generation)
			ereport(WARNING,
					(errmsg("killswitch: the standby does not follow the history: %s", reason),
					 errdetail("Event " INT64_FORMAT ", generation " INT64_FORMAT ".", st->event_id, st->generation),
					 errhint("Check ks_verify_events() on the primary, and that this standby has the primary's secret.")));
		warned = st->generation;
		return;
	}
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	strlcpy(ks_shared->unrecorded_reason, reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
	ks_publish(Max(KS_WORD_MODE(word), KS_HALT_ALL), 0, generation, GetCurrentTimestamp(),
			   "tamper", reason, "killswitch");
	ereport(WARNING,
			(errmsg("killswitch: recovery has ended, and %s; mode is now %s",
					reason, ks_mode_sql_names[Max(KS_WORD_MODE(word), KS_HALT_ALL)]),
			 errhint("Check ks_verify_events(); an administrator can release with ks_disengage().")));
}

/*
 * Take the newest event as the state (inside a transaction, the history at
 * hand).  On a standby only when the history is ahead of what was replayed;
 * out of recovery whenever the two differ, either way: the recovery target
 * decides, not a file copied with the base backup.  Returns true if the
 * state changed.
 */
static bool
adopt_history(bool in_recovery)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		held = KS_WORD_GENERATION(word);
	KsState		st;
	char		problem[KS_PROBLEM_LEN];
	KsHistory	h = ks_events_newest_state(&st);

	if (h == KS_HISTORY_EMPTY)
		return false;
	if (h == KS_HISTORY_BAD)
	{
		history_unverified(in_recovery, &st, word);
		return !in_recovery;
	}
	/* redo could not write the files: write what it published */
	if (in_recovery && ks_shared->files_behind && st.generation == held)
	{
		if (ks_persist_applied(&st, true, problem, sizeof(problem)))
			ks_shared->files_behind = false;
		return false;
	}
	if (in_recovery ? st.generation <= held :
		(st.generation == held && st.mode == KS_WORD_MODE(word) &&
		 !(KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED)))
		return false;
	if (!ks_persist_applied(&st, true, problem, sizeof(problem)))
		ereport(WARNING,
				(errmsg("killswitch: could not write the state taken from the history: %s", problem),
				 errhint("Check killswitch.signing_secret_file: every server of the fleet needs the primary's secret.")));
	if (in_recovery)
	{
		/* the WAL that brought it: the change's commit, at or before here */
		note_replayed(st.generation);
		note_state_lsn(GetXLogReplayRecPtr(NULL));
	}
	if (!ks_publish_state(&st, 0, in_recovery))
		return false;			/* redo published a newer one meanwhile */
	ereport(LOG,
			(errmsg("killswitch: %s: mode %s from the history (generation " INT64_FORMAT ", was " INT64_FORMAT ")",
					in_recovery ? "the standby follows the replicated history" : "recovery has ended",
					ks_mode_sql_names[st.mode], st.generation, held)));
	return true;
}

/*
 * At the first look after recovery ended: the new primary's state is its
 * history's newest event, announced to its own standbys.  No tamper
 * verdict: a promoted standby's files are behind or ahead of its history
 * only by what replay had not reached.  The watcher's first look then
 * announces it to this server's own standbys (worker.c).
 */
void
ks_adopt_history_after_recovery(void)
{
	if (!ks_shared->from_recovery || RecoveryInProgress())
		return;
	ks_release_key_prepare();
	(void) adopt_history(false);
	ks_shared->from_recovery = false;
	if (unlink(KS_RECOVERED_FILE) != 0 && errno != ENOENT)
		ereport(LOG,
				(errmsg("killswitch: could not remove \"%s\": %m", KS_RECOVERED_FILE)));
}

/*
 * The state file on a standby holds what was replayed.  An outside write
 * (the command-line tool, the Python library, anyone) is put back, with a
 * WARNING: it may not lower the standby, and a raise of one standby alone
 * would be a mode its primary does not know.  By the watcher, and by the
 * postmaster at start (the watcher needs hot standby).  Never an error, and
 * never a long wait for the writers' lock: false if it was not had (the
 * file was not looked at).
 */
bool
ks_standby_put_back(void)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *file = NULL;
	char	   *copy = NULL;
	size_t		filelen = 0;
	size_t		copylen = 0;
	int			lockfd;
	bool		put_back = false;
	bool		ok = true;

	if (ks_shared->state_dir_foreign)
		return true;
	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (lockfd < 0)
		return false;			/* looked at again at the next pass */
	if (ks_read_file(KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE, &copy, &copylen,
					 problem, sizeof(problem)))
	{
		if (!ks_read_file(path, KS_MAX_FILE_SIZE, &file, &filelen, problem, sizeof(problem)))
			file = NULL;
		put_back = file == NULL || filelen != copylen || memcmp(file, copy, copylen) != 0;
		if (put_back)
			ok = ks_write_shared_file_durably(path, copy, copylen, problem, sizeof(problem));
	}
	ks_unlock_dir(lockfd);
	if (put_back)
		ereport(WARNING,
				(errmsg("killswitch: refused an outside change of the state file on a standby"),
				 errdetail(ok ? "A standby follows its primary through the WAL; the replayed state was put back."
						   : "A standby follows its primary through the WAL; the replayed state could not be put back: %s",
						   problem),
				 errhint("Change the kill switch on the primary, or promote this standby.")));
	return true;
}

/*
 * The watcher on a standby, inside its transaction: follow the replicated
 * history where a record is missing.
 */
void
ks_standby_follow_history(void)
{
	(void) adopt_history(true);
}
