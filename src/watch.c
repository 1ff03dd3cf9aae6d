/*
 * watch.c — judging the state file while the server runs (ARCHITECTURE §4,
 * §5.7): a validly signed newer file is applied; anything else that differs
 * from the state the server holds is tampering and can only raise the mode:
 *
 *   bytes the server wrote or judged     nothing to do (or write it, if behind)
 *   not valid, its writer still at it     nothing yet: judged once it finished
 *   valid, same state                     our own write: nothing to do
 *   valid, newer                          applied (source cli or file)
 *   valid, more than 1000 generations on  tamper, file set aside
 *   valid, older                          a replay: at least halt_all, tamper
 *   lowers or clears a verdict, without   tamper, file set aside
 *     the release credential naming
 *     the state held (release.c)
 *   bad (unsigned, garbage, ...)          at least halt_all, tamper, file set aside
 *   deleted or emptied                    state kept, file rewritten, tamper
 *
 * A raced file — an outside write that raced a replace of the state file,
 * kept beside it (files.c) — is judged the same way, except that it came
 * with the replace (never a replay for want of a generation), one that was
 * never written (missing, empty) asks for nothing, and one that would lower
 * the state now in force without naming it is superseded by the change it
 * raced: not applied, and no verdict.
 *
 * Called by the watcher inside a transaction that holds the lock ordering
 * all changes.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "killswitch.h"

/* What to do about the file. */
typedef struct KsVerdictAction
{
	bool		act;			/* make change */
	bool		wait;			/* its writer may be at it: judge once it has finished */
	bool		rewrite;		/* bytes the server knows, lagging the state in force */
	const KsState *file;		/* the valid state judged, or NULL */
	KsChange	change;
} KsVerdictAction;

/*
 * The bytes of the state file this look judged, and what the server knew
 * the file held when it began: known from now on once the look commits
 * (ks_judge_settled()).  Raced files are never the state file's bytes.
 */
static char judged_hash[KS_HEX_DIGEST_LEN + 1];
static char hash_before[KS_HEX_DIGEST_LEN + 1];

/* Text from the file, kept in UTF-8 like every change's, or a stand-in. */
static const char *
file_text(const char *utf8, const char *fallback)
{
	if (utf8 == NULL || utf8[0] == '\0')
		return fallback;
	return utf8;
}

/* Fill a tamper action: never lower than held, at least halt_all unless kept. */
static void
tamper(KsVerdictAction *a, KsMode mode, const char *what)
{
	a->act = true;
	a->change.mode = mode;
	a->change.reason = psprintf("state file rejected: %s", what);
	a->change.triggered_by = "killswitch";
	a->change.affected_tasks = 0;
	a->change.source = "tamper";
	a->change.flags = KS_FLAG_TAMPERED;
	ereport(WARNING,
			(errmsg("killswitch: the state file could not be trusted; mode is now %s",
					ks_mode_sql_names[mode]),
			 errdetail("%s", what),
			 errhint("An administrator can inspect the state with ks_status() and release it with ks_disengage().")));
}

/*
 * Keep a rejected file (the state file, or a raced one) as evidence, as
 * <state file>.rejected (replacing an older one), and clear the way for a
 * trusted file.
 */
static void
set_aside(const char *path)
{
	char		aside[MAXPGPATH];

	ks_state_file_path(aside, sizeof(aside));
	strlcat(aside, ".rejected", sizeof(aside));
	if (unlink(aside) != 0 && errno == EISDIR)
		(void) rmdir(aside);
	if (rename(path, aside) != 0)
		ereport(LOG,
				(errmsg("killswitch: could not move the rejected state file aside: %m")));
}

/*
 * The state the server holds: its private copy when that is what shared
 * memory carries (it keeps an engaged_at of null as null, and the signature
 * a release must name), else shared memory itself (a verdict not yet
 * written: no signature, so nothing can name it).
 */
static void
held_state(KsState *held, uint64 word, TimestampTz since)
{
	char		problem[KS_PROBLEM_LEN];
	char		at[40];

	if (ks_read_held(held, problem, sizeof(problem)) &&
		held->generation == KS_WORD_GENERATION(word) && held->mode == KS_WORD_MODE(word))
		return;
	ks_state_init(held);
	held->mode = KS_WORD_MODE(word);
	held->generation = KS_WORD_GENERATION(word);
	ks_format_iso_utc(ks_timestamptz_to_unix_usec(since), at, sizeof(at));
	held->engaged_at = pstrdup(at);
}

/* Read a file once: its verdict and state, the hash of its bytes, whether it is empty. */
static KsVerdict
read_once(const char *path, const char *secret, size_t secretlen, KsState *st,
		  char *hash, bool *empty, char *problem, size_t problemlen)
{
	char	   *bytes;
	size_t		len;
	struct stat sb;

	ks_state_init(st);
	hash[0] = '\0';
	*empty = false;
	if (lstat(path, &sb) != 0 && errno == ENOENT)
	{
		snprintf(problem, problemlen, "the file does not exist");
		return KS_FILE_MISSING;
	}
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &bytes, &len, problem, problemlen))
		return KS_FILE_BAD;
	if (!ks_sha256_hex(bytes, len, hash))
		hash[0] = '\0';
	*empty = len == 0;
	return ks_state_from_text(bytes, len, secret, secretlen, ks_secret_file,
							  ks_require_hmac, st, problem, problemlen);
}

/*
 * Decide what a file asks for, compared with the state held: the state
 * file, or a raced file (a write that raced a replace of it, files.c).
 * writer_done: has its writer finished (closed it, renamed it into place,
 * or left it unchanged for a while, worker.c)?  Asked after the read, so
 * that a writer that began just before it counts.  Until then a file that
 * is not a valid state is no verdict, only a write in progress (a valid one
 * is complete whoever is still at it, and is judged at once).
 */
static KsVerdictAction
judge(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	KsMode		held = KS_WORD_MODE(word);
	bool		tampered = (KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED) != 0;
	KsMode		raised = Max(held, KS_HALT_ALL);
	TimestampTz since;
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	char		hash[KS_HEX_DIGEST_LEN + 1];
	bool		empty;
	bool		behind;
	KsState		st,
				hst;
	KsState    *judged;
	KsVerdict	v;
	KsOrder		order;

	memset(&a, 0, sizeof(a));
	SpinLockAcquire(&ks_shared->mutex);
	since = ks_shared->since;
	SpinLockRelease(&ks_shared->mutex);

	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
	{
		tamper(&a, raised, psprintf("signing secret: %s", problem));
		a.change.expect.untrusted = true;
		return a;
	}
	/*
	 * Read; a file that is no valid state is read once more after
	 * killswitch.recheck_delay before it is judged: inotify reports a
	 * writer's truncate a moment after the truncate shows, so a writer that
	 * has just begun may not be known yet at the first read — the wait ends
	 * as soon as its events come (it is then left to its writer).
	 */
	for (int reads = 0;; reads++)
	{
		v = read_once(path, secret, secretlen, &st, hash, &empty, problem, sizeof(problem));
		/*
		 * The server's own bytes, or bytes already judged: nothing new —
		 * unless the file lags the state in force, or a writer made it
		 * narrower than the server writes it (the library chmods the file
		 * 0600 after writing it, by name: after the server's rewrite, that
		 * is the server's file) — then the server writes it again.  A raced
		 * file with such bytes (a write judged before the replace kept it)
		 * asks for nothing either.
		 */
		if (ks_file_known(hash, &behind))
		{
			struct stat sb;

			a.rewrite = !raced && (behind ||
								   (lstat(path, &sb) == 0 &&
									(sb.st_mode & 07777) != ks_shared_file_mode(path)));
			return a;
		}
		if (v != KS_FILE_BAD && v != KS_FILE_MISSING)
			break;
		if (raced && v == KS_FILE_MISSING)
			return a;			/* judged already, or removed: nothing to apply */
		if (!writer_done(path))
		{
			a.wait = true;
			return a;
		}
		if (reads > 0 || ks_recheck_delay <= 0)
			break;
		for (int waited = 0; waited < ks_recheck_delay; waited++)
		{
			pg_usleep(1000L);
			if (!writer_done(path))
			{
				a.wait = true;
				return a;
			}
		}
	}
	if (!raced)
	{
		strlcpy(judged_hash, hash, sizeof(judged_hash));
		ks_file_hash(hash_before);
	}
	if (raced && (v == KS_FILE_MISSING || empty))
		return a;				/* truncated and never written: nothing to apply */
	if (v == KS_FILE_MISSING || empty)
	{
		/* deleting or emptying never releases: keep the mode, rewrite */
		tamper(&a, held, v == KS_FILE_MISSING ? "the state file was deleted"
			   : "the state file was emptied");
		a.change.expect.untrusted = true;
		return a;
	}
	if (v == KS_FILE_BAD)
	{
		set_aside(path);
		tamper(&a, raised, problem);
		a.change.expect.untrusted = !raced;
		return a;
	}

	/* readable: ours, newer, or a replay */
	held_state(&hst, word, since);
	order = ks_compare_to_held(&st, &hst);
	/* a raced write without a generation came with the replace, not before it */
	if (raced && order == KS_OLDER && st.generation < 0)
		order = KS_NEWER;
	if (order == KS_SAME)
		return a;
	judged = palloc(sizeof(KsState));
	*judged = st;
	a.file = judged;
	/* the compare-and-swap of the rewrite expects the state file as judged */
	if (!raced)
		a.change.expect.judged = judged;
	if (!ks_generation_step_ok(&st, &hst, problem, sizeof(problem)))
	{
		set_aside(path);
		tamper(&a, Max(raised, st.mode), problem);
		a.change.expect.judged = NULL;
		a.change.expect.untrusted = !raced;	/* set aside: no file now */
		return a;
	}
	if (order == KS_OLDER)
	{
		tamper(&a, Max(raised, st.mode),
			   "replay: the state file is older than the state the server holds");
		return a;
	}
	if (raced && !ks_release_authorized(&st, &hst, tampered, problem, sizeof(problem)))
	{
		/*
		 * A raced write that would lower the mode (or clear a verdict) came
		 * with a change of the server's that supersedes it: it may have
		 * been a raise over the state it replaced, or a release of that
		 * state.  It is not applied, and is no verdict.
		 */
		ereport(WARNING,
				(errmsg("killswitch: an outside write that raced a change of the state was superseded by it"),
				 errdetail("It asked for mode %s; the state in force is %s: %s",
						   ks_mode_sql_names[st.mode], ks_mode_sql_names[hst.mode], problem),
				 errhint("A release must name the state it replaces; read the state file again and retry.")));
		return a;
	}
	if (!ks_release_authorized(&st, &hst, tampered, problem, sizeof(problem)))
	{
		set_aside(path);
		tamper(&a, Max(raised, st.mode), problem);
		a.change.expect.judged = NULL;
		a.change.expect.untrusted = !raced;	/* set aside: no file now */
		return a;
	}
	a.act = true;
	/* the generation the writer gave (the CLI printed it), if it is ahead */
	a.change.generation = st.generation > KS_WORD_GENERATION(word) ? st.generation : 0;
	a.change.mode = st.mode;
	a.change.reason = file_text(st.reason, "(no reason given in the state file)");
	a.change.triggered_by = file_text(st.triggered_by, "(unknown)");
	a.change.affected_tasks = st.affected_tasks >= 0 && st.affected_tasks <= PG_INT32_MAX
		? (int32) st.affected_tasks : 0;
	a.change.source = (st.source && strcmp(st.source, "cli") == 0) ? "cli" : "file";
	a.change.flags = v == KS_FILE_UNSIGNED ? KS_FLAG_UNSIGNED : 0;
	return a;
}

/*
 * The look's transaction has committed: the state file's bytes it judged
 * are known from now on, and are not judged again (no change is recorded
 * twice, however often the file is read).
 */
void
ks_judge_settled(void)
{
	if (judged_hash[0] != '\0')
		ks_file_judged(judged_hash, hash_before);
	judged_hash[0] = '\0';
}

/*
 * Raise the mode in shared memory at once, before anything that can fail
 * (writing the file, recording the event): the halt must not depend on the
 * disk.  The generation moves when the change commits; if it cannot, the
 * watcher marks the verdict unrecorded (ks_watch_failed).
 */
static void
halt_now(const KsChange *c)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	ks_publish(c->mode, c->flags, KS_WORD_GENERATION(word), GetCurrentTimestamp(),
			   c->source, c->reason, c->triggered_by);
}

/*
 * Judge a file — the state file, or a raced one — and record what it calls
 * for (the history exists).  False: a writer may still be at it; look again
 * once it has finished.
 */
bool
ks_judge_file(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a;
	KsMode		held;
	char		problem[KS_PROBLEM_LEN];

	judged_hash[0] = '\0';
	if (!ks_state_dir_ours(problem, sizeof(problem)))
		return true;			/* another server's file (claim.c) */
	if (ks_shared->unconfirmed)
		ks_confirm_in_flight();
	a = judge(path, raced, writer_done);
	if (a.wait)
		return false;
	if (a.rewrite)
		(void) ks_write_behind_file(true);
	held = ks_current_mode();

	/* a verdict, or an outside engage, halts before the disk is written */
	if (a.act && ((a.change.flags & KS_FLAG_TAMPERED) || a.change.mode > held))
		halt_now(&a.change);
	if (a.act)
		(void) ks_apply_change(&a.change);
	else if (ks_shared->unrecorded)
		ks_flush_unrecorded();
	return true;
}

/*
 * Judge a file where there is no history yet (the extension is not
 * created): shared memory still follows the file, so enforcement holds; the
 * change is recorded once the history exists (ks_flush_unrecorded()).  A
 * trusted change also goes into the private copy, as a change applied at
 * start does: the copy is the state held that the file is judged against,
 * so once the history exists the file is what we hold, not a newer change.
 * False: a writer may still be at the file (see ks_judge_file()).
 */
bool
ks_judge_file_without_history(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		generation;
	char		reason[sizeof(ks_shared->unrecorded_reason)];
	char		problem[KS_PROBLEM_LEN];

	judged_hash[0] = '\0';
	if (!ks_state_dir_ours(problem, sizeof(problem)))
		return true;			/* another server's file (claim.c) */
	a = judge(path, raced, writer_done);
	if (a.wait)
		return false;
	if (!a.act)
		return true;
	/* the next generation, or the one the file's writer gave (the CLI printed it) */
	generation = Max(KS_WORD_GENERATION(word) + 1, a.change.generation);
	ks_clip_utf8(reason, a.change.reason, sizeof(reason));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	strlcpy(ks_shared->unrecorded_reason, reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
	ks_publish(a.change.mode, a.change.flags, generation,
			   GetCurrentTimestamp(), a.change.source,
			   a.change.reason, a.change.triggered_by);

	if (!(a.change.flags & KS_FLAG_TAMPERED))
	{
		KsState		held = *a.file;

		held.generation = generation;
		held.previous_mode = KS_WORD_MODE(word);
		held.source = (char *) a.change.source;
		held.replaces = NULL;
		if (!ks_persist_applied(&held, false, problem, sizeof(problem)))
			ereport(WARNING,
					(errmsg("killswitch: could not keep the applied state in the private copy: %s", problem),
					 errdetail("The change is in force; once the history exists it may be recorded twice.")));
		else
			ks_wal_log_file(KS_LAST_APPLIED_FILE);	/* standbys follow */
	}
	return true;
}

/*
 * Make the history agree with the state (at the watcher's start, once there
 * is a history).  The file is written just before a change commits, so a
 * crash in between leaves the file — and so the state — one change ahead of
 * killswitch.events: that change is recorded now, with its generation.  A
 * history ahead of the state means both state files were put back from an
 * older copy: a replay, and the halt is assumed.
 */
void
ks_reconcile_history(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		state_gen = KS_WORD_GENERATION(word);
	int64		history_gen;

	/* out of recovery, the replicated history is the truth (standby.c) */
	if (ks_shared->from_recovery)
	{
		ks_adopt_history_after_recovery();
		return;
	}
	/* first settle a change written before a crash, then compare */
	if (ks_shared->unconfirmed)
		ks_confirm_in_flight();
	word = pg_atomic_read_u64(&ks_shared->word);
	state_gen = KS_WORD_GENERATION(word);
	history_gen = ks_events_last_generation();
	if (history_gen == state_gen || ks_shared->unrecorded)
		return;
	if (history_gen > state_gen)
	{
		KsVerdictAction a;

		memset(&a, 0, sizeof(a));
		tamper(&a, Max(KS_WORD_MODE(word), KS_HALT_ALL),
			   psprintf("replay: the history has generation " INT64_FORMAT
						" but the state file only " INT64_FORMAT, history_gen, state_gen));
		(void) ks_apply_change(&a.change);
		return;
	}
	/* copy out, format outside the spinlock (whole characters), copy in */
	{
		char		held[sizeof(ks_shared->reason)];
		char		reason[sizeof(ks_shared->unrecorded_reason)];
		char	   *text;

		SpinLockAcquire(&ks_shared->mutex);
		memcpy(held, ks_shared->reason, sizeof(held));
		SpinLockRelease(&ks_shared->mutex);
		text = psprintf("recorded at start: the state file holds a change the history lacks (%s)",
						held);
		ks_clip_utf8(reason, text, sizeof(reason));
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->unrecorded = true;
		ks_shared->unrecorded_previous = KS_WORD_MODE(word);
		memcpy(ks_shared->unrecorded_reason, reason, sizeof(reason));
		SpinLockRelease(&ks_shared->mutex);
	}
	ks_flush_unrecorded();
}

/*
 * After a failed look (the file could not be rewritten, the event not
 * recorded): whatever halt_now() raised stays, and the verdict waits to be
 * recorded.
 */
void
ks_watch_failed(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	if (!(KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED))
		return;
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	strlcpy(ks_shared->unrecorded_reason, ks_shared->reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Settle a change that was written to the state file before a crash but
 * whose commit was not known at start (the mark, persist.c).  The server
 * started at the higher of it and the newest committed state; now, with
 * the history at hand (the caller holds the lock that orders changes), the
 * change's event tells: there → it committed, and is published as written;
 * absent → it never committed, and the state file and shared memory go
 * back to the newest committed state.  An uncommitted release never takes
 * effect.  Nothing is recorded: the history is already right.
 */
void
ks_confirm_in_flight(void)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	KsState		mark,
				held,
				file;
	char	   *bytes;
	size_t		len;
	int			lockfd;
	bool		committed;

	if (!ks_shared->unconfirmed)
		return;
	ks_state_file_path(path, sizeof(path));
	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)) ||
		ks_state_read(KS_IN_FLIGHT_FILE, secret, secretlen, ks_secret_file, true, 0,
					  &mark, problem, sizeof(problem)) != KS_FILE_VALID ||
		ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file, true, 0,
					  &held, problem, sizeof(problem)) != KS_FILE_VALID)
	{
		/* cannot tell: the higher of the two modes stays in force */
		ereport(WARNING,
				(errmsg("killswitch: could not confirm the change in flight at the crash: %s", problem),
				 errhint("The higher mode stays in force; an administrator can release it.")));
		ks_shared->unconfirmed = false;
		return;
	}
	committed = ks_events_last_generation() >= mark.generation;
	lockfd = ks_lock_dir(ks_state_dir, problem, sizeof(problem));
	if (lockfd < 0)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not lock the kill switch state directory"),
				 errdetail("%s", problem)));
	if (committed)
	{
		/* the copy learns what the commit callback could not write */
		if (ks_read_file(KS_IN_FLIGHT_FILE, KS_MAX_FILE_SIZE, &bytes, &len,
						 problem, sizeof(problem)) &&
			ks_write_file_durably(KS_LAST_APPLIED_FILE, bytes, len, problem, sizeof(problem)))
			(void) unlink(KS_IN_FLIGHT_FILE);
		(void) ks_publish_state(&mark, ks_require_hmac ? 0 : KS_FLAG_UNSIGNED, false);
		ereport(LOG,
				(errmsg("killswitch: the change of generation " INT64_FORMAT " written before the crash had committed; mode %s",
						mark.generation, ks_mode_sql_names[mark.mode])));
	}
	else
	{
		/* put back the newest committed state, unless someone wrote since */
		if (ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac, 0,
						  &file, problem, sizeof(problem)) != KS_FILE_BAD &&
			file.generation >= 0 && ks_compare_to_held(&file, &mark) == KS_SAME &&
			!(ks_read_file(KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE, &bytes, &len,
						   problem, sizeof(problem)) &&
			  ks_write_shared_file_durably(path, bytes, len, problem, sizeof(problem))))
		{
			/* the higher mode stays until the file can be put back */
			ks_unlock_dir(lockfd);
			ereport(ERROR,
					(errcode(ERRCODE_IO_ERROR),
					 errmsg("could not put back the kill switch state file after a change that never committed"),
					 errdetail("%s", problem)));
		}
		(void) unlink(KS_IN_FLIGHT_FILE);
		(void) ks_publish_state(&held, ks_require_hmac ? 0 : KS_FLAG_UNSIGNED, false);
		ereport(LOG,
				(errmsg("killswitch: the change of generation " INT64_FORMAT " written before the crash never committed; back to generation " INT64_FORMAT ", mode %s",
						mark.generation, held.generation, ks_mode_sql_names[held.mode])));
	}
	ks_shared->unconfirmed = false;
	ks_unlock_dir(lockfd);
}
