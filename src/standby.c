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
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "events.h"
#include "guc.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "standby.h"
#include "state.h"
#include "store.h"

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

/* Since when a state read from a file or the history holds: its time, or now. */
static TimestampTz
state_since(const KsState *st)
{
	int64		usec;

	if (st->engaged_at && ks_parse_iso(st->engaged_at, &usec))
		return ks_unix_usec_to_timestamptz(usec);
	return GetCurrentTimestamp();
}

/*
 * Publish a state read from a file or the history (UTF-8 texts); with
 * only_newer, not over a newer generation (false then).
 */
bool
ks_publish_state(const KsState *st, int flags, bool only_newer)
{
	TimestampTz since = state_since(st);

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
 * Replay (or the history) has brought this generation, and with lsn
 * (InvalidXLogRecPtr: none) the position of the WAL that brought the state
 * about to be published: a record's end when redo applies it, the replay
 * position when the watcher follows the history.  Noted before the state
 * is published, so that a waiter woken by the publish reads it in
 * ks_status(); neither ever moves back.
 */
static void
note_replayed(int64 generation, XLogRecPtr lsn)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (generation > ks_shared->replayed_generation)
		ks_shared->replayed_generation = generation;
	if (lsn > ks_shared->state_lsn)
		ks_shared->state_lsn = lsn;
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Remove the heard overlay's bytes once the overlay is gone (caller holds
 * the writers' lock): a restart must not bring back what replay or another
 * history ended.
 */
static bool
forget_heard_file(char *problem, size_t problemlen)
{
	if (ks_heard_generation() >= 0 || unlink(KS_HEARD_FILE) == 0 || errno == ENOENT)
		return true;
	snprintf(problem, problemlen, "could not remove \"%s\": %m", KS_HEARD_FILE);
	return false;
}

/*
 * Write the state file with these bytes (caller holds the writers' lock),
 * unless the state directory is another server's (claim.c): then it is
 * not this standby's to write.
 */
static bool
write_state_file(const char *text, size_t len, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];

	if (ks_shared->state_dir_foreign)
		return true;
	ks_state_file_path(path, sizeof(path));
	return ks_write_shared_file_durably(path, text, len, problem, problemlen);
}

/*
 * Write a state this standby replayed into its private copy, and into its
 * state file unless a heard state is in force above it (whose bytes the
 * state file then holds), with the primary's exact bytes, under the
 * writers' lock — waited for a bounded time, in redo at most
 * KS_LOCK_REDO_WAIT_MS and not at all while the files are behind
 * (persist.c): whoever holds the lock must not slow replay; the heard
 * overlay's bytes go once it has ended.  Nothing is written over a newer
 * state published meanwhile (its own taker writes that one), so the files
 * never fall behind what they held.  Never an error: false, logged, and
 * files_behind when they could not be written.
 */
bool
ks_standby_write_files(const char *text, size_t len, int64 generation)
{
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		ok = true;

	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (lockfd >= 0 && KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) > generation)
	{
		/* newer: its taker writes it, or said the files are behind */
		ks_unlock_dir(lockfd);
		return true;
	}
	if (lockfd >= 0)
	{
		bool		heard = ks_heard_generation() >= 0;

		ok = ks_write_file_durably(KS_LAST_APPLIED_FILE, text, len, problem, sizeof(problem)) &&
			forget_heard_file(problem, sizeof(problem)) &&
			(heard || write_state_file(text, len, problem, sizeof(problem)));
	}
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
	bool		older;

	if (ks_state_from_text(text, len, NULL, 0, NULL, false, &st,
						   problem, sizeof(problem)) == KS_FILE_BAD ||
		st.generation < 0)
	{
		ereport(WARNING,
				(errmsg("a replayed kill switch state record could not be read: %s", problem),
				 errdetail("The standby keeps its state; its watcher follows the history.")));
		return;
	}
	/* an older one, or older than what the upstream told (upstream.c) */
	older = st.generation < KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word));
	note_replayed(st.generation, older ? InvalidXLogRecPtr : lsn);
	if (older)
		return;

	/*
	 * Shared memory first: the record is already durable in this server's
	 * WAL, and a crash before the files are written replays it again.
	 */
	if (!ks_publish_state(&st, 0, true))
		return;					/* the watcher published a newer one meanwhile */
	if (st.mode == KS_EMERGENCY)
		ks_wake_watcher();
	(void) ks_standby_write_files(text, len, st.generation);
}

/*
 * A state heard from the upstream (upstream.c), verified with the signing
 * secret and of this standby's system, on the upstream's timeline: into
 * the heard overlay (state.c ks_publish_heard()), which raises at once and
 * is lowered only by replay of a state at or past its generation, or ended
 * by word of another history — never into the chain, whose generation
 * stays replay's (ARCHITECTURE §11).  The one place a heard state enters
 * shared memory.
 */
KsHeard
ks_standby_take_heard(const KsState *st, TimeLineID timeline)
{
	return ks_publish_heard(st->mode, st->tampered ? KS_FLAG_TAMPERED : 0, st->generation,
							timeline, state_since(st), st->source ? st->source : "sql",
							st->reason, st->triggered_by);
}

/*
 * Write the bytes of the state the heard overlay took into the heard file
 * and the state file, under the writers' lock, unless the overlay has
 * moved on or ended meanwhile: so a restart starts with the overlay
 * (ks_standby_load_heard()), and agents that read the file see the halt.
 * The private copy keeps what was replayed.  Never an error.
 */
bool
ks_standby_write_heard(const char *text, size_t len, int64 generation)
{
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		ok = true;

	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (lockfd >= 0 && ks_heard_generation() == generation)
		ok = ks_write_file_durably(KS_HEARD_FILE, text, len, problem, sizeof(problem)) &&
			write_state_file(text, len, problem, sizeof(problem));
	ks_unlock_dir(lockfd);
	if (lockfd < 0 || !ok)
		ereport(LOG,
				(errmsg("could not write the heard state of generation " INT64_FORMAT " into the files: %s",
						generation, problem),
				 errdetail("The standby holds it in shared memory; after a restart it holds what it replayed until it hears its upstream again.")));
	return lockfd >= 0 && ok;
}

/*
 * At start, in recovery (the postmaster, after the replayed state is
 * published): the heard overlay as it was, from its file — verified with
 * the signing secret, ahead of what was replayed and within
 * KS_GENERATION_STEP_MAX of it — so a restart does not lose a halt heard
 * ahead of replay.  It holds like before the restart: until replay reaches
 * it, or the upstream tells of another history (its timeline is learnt at
 * the first answer).  A file that does not qualify is removed, and the
 * state file holds what was replayed again.
 */
void
ks_standby_load_heard(const char *secret, size_t secretlen)
{
	KsState		st;
	KsState		held;
	char		problem[KS_PROBLEM_LEN];
	struct stat sb;

	if (stat(KS_HEARD_FILE, &sb) != 0)
		return;
	ks_state_init(&held);
	held.generation = KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word));
	if (secret != NULL &&
		ks_state_read(KS_HEARD_FILE, secret, secretlen, ks_secret_file, true, 0,
					  &st, problem, sizeof(problem)) == KS_FILE_VALID &&
		st.generation > held.generation &&
		ks_generation_step_ok(&st, &held, problem, sizeof(problem)) &&
		ks_standby_take_heard(&st, 0) == KS_HEARD_TAKEN)
	{
		ereport(LOG,
				(errmsg("the standby holds %s (generation " INT64_FORMAT "), heard from its upstream ahead of replay before it stopped",
						ks_mode_sql_names[st.mode], st.generation)));
		return;
	}
	ks_standby_heard_dropped();
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
					(errmsg("the standby does not follow the kill switch history: %s", reason),
					 errdetail("Event " INT64_FORMAT ", generation " INT64_FORMAT ".", st->event_id, st->generation),
					 errhint("Check ks_verify_events() on the primary, and that this standby has the primary's secret.")));
		warned = st->generation;
		return;
	}
	ks_note_unrecorded(KS_WORD_MODE(word), reason);
	ks_publish(Max(KS_WORD_MODE(word), KS_HALT_ALL), 0, generation, GetCurrentTimestamp(),
			   "tamper", reason, "killswitch");
	ereport(WARNING,
			(errmsg("recovery has ended, and the kill switch history cannot be trusted; mode is now %s: %s",
					ks_mode_sql_names[Max(KS_WORD_MODE(word), KS_HALT_ALL)], reason),
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
				(errmsg("could not write the kill switch state taken from the history: %s", problem),
				 errhint("Check killswitch.signing_secret_file: every server of the fleet needs the primary's secret.")));
	if (in_recovery)
	{
		/* the WAL that brought it: the change's commit, at or before here */
		note_replayed(st.generation, GetXLogReplayRecPtr(NULL));
	}
	if (!ks_publish_state(&st, 0, in_recovery))
		return false;			/* redo published a newer one meanwhile */
	ereport(LOG,
			(in_recovery
			 ? errmsg("the standby follows the replicated kill switch history: mode %s (generation " INT64_FORMAT ", was " INT64_FORMAT ")",
					  ks_mode_sql_names[st.mode], st.generation, held)
			 : errmsg("recovery has ended: kill switch mode %s from the history (generation " INT64_FORMAT ", was " INT64_FORMAT ")",
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
				(errmsg("could not remove \"%s\": %m", KS_RECOVERED_FILE)));
}

/*
 * Make the state file hold the state in force — the heard state above
 * replay, or what was replayed — with its bytes (caller holds the writers'
 * lock); *changed says whether it had to be written.  False, and why, if
 * it could not be.
 */
static bool
restore_state_file(const char *path, bool *changed, char *problem, size_t problemlen)
{
	char	   *file = NULL;
	char	   *copy = NULL;
	size_t		filelen = 0;
	size_t		copylen = 0;

	*changed = false;
	if (!ks_read_file(ks_heard_generation() >= 0 ? KS_HEARD_FILE : KS_LAST_APPLIED_FILE,
					  KS_MAX_FILE_SIZE, &copy, &copylen, problem, problemlen))
		return true;			/* nothing to put back yet */
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &file, &filelen, problem, problemlen))
		file = NULL;
	*changed = file == NULL || filelen != copylen || memcmp(file, copy, copylen) != 0;
	return !*changed || ks_write_shared_file_durably(path, copy, copylen, problem, problemlen);
}

/*
 * The heard overlay ended by word of another history, at promotion, or
 * found stale at start: its file goes, and the state file gets the
 * replayed state back (no outside change: no WARNING).
 */
bool
ks_standby_heard_dropped(void)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		changed;
	bool		ok;

	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	ok = lockfd >= 0 && forget_heard_file(problem, sizeof(problem)) &&
		(ks_shared->state_dir_foreign || restore_state_file(path, &changed, problem, sizeof(problem)));
	ks_unlock_dir(lockfd);
	if (!ok)
		ereport(LOG,
				(errmsg("could not put the replayed state back in place of a heard one: %s", problem),
				 errdetail("The standby follows what it replayed in shared memory.")));
	return ok;
}

/*
 * The state file on a standby holds the state in force: what was replayed,
 * or the heard state above it.  An outside write (the command-line tool,
 * the Python library, anyone) is put back, with a WARNING: it may not lower
 * the standby, and a raise of one standby alone would be a mode its primary
 * does not know.  By the watcher, and by the postmaster at start (the
 * watcher needs hot standby).  Never an error, and never a long wait for
 * the writers' lock: false if it was not had (the file was not looked at).
 */
bool
ks_standby_put_back(void)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	int			lockfd;
	bool		put_back = false;
	bool		ok;

	if (ks_shared->state_dir_foreign)
		return true;
	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_state_dir(KS_LOCK_RAISE_WAIT_MS, problem, sizeof(problem));
	if (lockfd < 0)
		return false;			/* looked at again at the next pass */
	ok = restore_state_file(path, &put_back, problem, sizeof(problem));
	ks_unlock_dir(lockfd);
	if (put_back)
		ereport(WARNING,
				(errmsg("refused an outside change of the kill switch state file on a standby"),
				 ok ? errdetail("A standby follows its primary through the WAL; the replayed state was put back.")
				 : errdetail("A standby follows its primary through the WAL; the replayed state could not be put back (%s).",
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
