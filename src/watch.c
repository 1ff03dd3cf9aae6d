/*
 * watch.c — judging the state file while the server runs (ARCHITECTURE §4): a
 * validly signed newer file is applied; anything else that differs from
 * the state the server holds is tampering and can only raise the mode:
 *
 *   valid, same generation          our own write: nothing to do
 *   valid, newer                    applied (source cli or file)
 *   valid, older                    a replay: at least halt_all, tamper
 *   bad (unsigned, garbage, ...)    at least halt_all, tamper, file set aside
 *   deleted or emptied              state kept, file rewritten, tamper
 *
 * Called by the watcher inside a transaction.  It never waits for the lock
 * that orders the history (ARCHITECTURE §5.7): a raise or a verdict is in
 * force at once (in place, state.c) and recorded on the first look that
 * takes the lock (ConditionalLockAcquire); an outside release is applied
 * only when it can be recorded.  Its own writes are recognised by their
 * bytes (KsShared.file_hash, persist.c), not by holding a lock.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/transam.h"
#include "mb/pg_wchar.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "killswitch.h"

/* What to do about the file. */
typedef struct KsVerdictAction
{
	bool		act;
	KsChange	change;
} KsVerdictAction;

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
 * Keep a rejected file as evidence, as <path>.rejected (replacing an older
 * one), and clear the way for a trusted file.
 */
static void
set_aside(const char *path)
{
	char		aside[MAXPGPATH];

	snprintf(aside, sizeof(aside), "%s.rejected", path);
	if (unlink(aside) != 0 && errno == EISDIR)
		(void) rmdir(aside);
	if (rename(path, aside) != 0)
		ereport(LOG,
				(errmsg("killswitch: could not move the rejected state file aside: %m")));
}

/*
 * The state the server holds: its private copy when that is what the
 * chain carries (it keeps an engaged_at of null as null), else shared
 * memory itself (a verdict not yet written).  The chain's mode, not the
 * word's: a raise in flight is nobody's file yet.
 */
static void
held_state(KsState *held, uint64 word, TimestampTz since)
{
	char		problem[KS_PROBLEM_LEN];
	char		at[40];
	int			flags;
	KsMode		chain = ks_chain_state(&flags);

	if (ks_read_held(held, problem, sizeof(problem)) &&
		held->generation == KS_WORD_GENERATION(word) && held->mode == chain)
		return;
	ks_state_init(held);
	held->mode = chain;
	held->generation = KS_WORD_GENERATION(word);
	ks_format_iso_utc(ks_timestamptz_to_unix_usec(since), at, sizeof(at));
	held->engaged_at = pstrdup(at);
}

/* Decide what the file asks for, compared with the state held. */
static KsVerdictAction
judge(const char *path)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int			held_flags;
	/* the state in force without the raises in flight (ARCHITECTURE §5.1) */
	KsMode		held = ks_base_mode(&held_flags);
	int64		generation = KS_WORD_GENERATION(word);
	KsMode		raised = Max(held, KS_HALT_ALL);
	TimestampTz since;
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	KsState		st,
				hst;
	KsVerdict	v;
	KsOrder		order;
	struct stat sb;

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
	v = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac,
					  ks_recheck_delay, &st, problem, sizeof(problem));
	if (v == KS_FILE_MISSING ||
		(v == KS_FILE_BAD && lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0))
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
		a.change.expect.untrusted = true;
		return a;
	}

	/* readable: ours, newer, or a replay */
	held_state(&hst, word, since);
	order = ks_compare_to_held(&st, &hst);
	if (order == KS_SAME)
		return a;
	a.change.expect.judged = palloc(sizeof(KsState));
	*(KsState *) a.change.expect.judged = st;
	if (order == KS_OLDER)
	{
		tamper(&a, raised, "replay: the state file is older than the state the server holds");
		return a;
	}
	if (!ks_release_authorized(&st, held, problem, sizeof(problem)))
	{
		set_aside(path);
		tamper(&a, raised, problem);
		a.change.expect.untrusted = true;	/* set aside: no file now */
		return a;
	}
	a.act = true;
	/* the generation the writer gave (the CLI printed it), if it is ahead */
	a.change.generation = st.generation > generation ? st.generation : 0;
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
 * Outside changes and verdicts in force in place, waiting for the lock that
 * orders the history to be recorded (TopMemoryContext, oldest first).
 */
static List *waiting = NIL;
/* An outside release waits for the lock: look again soon. */
static bool retry_soon = false;
/* This look raised in place (halt_now()): its commit makes the chain hold it. */
static bool raised_in_place = false;

/* A change in TopMemoryContext, to outlive this look's transaction. */
static KsChange *
keep_change(const KsChange *c)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	KsChange   *k = palloc(sizeof(KsChange));

	*k = *c;
	k->reason = pstrdup(c->reason);
	k->triggered_by = pstrdup(c->triggered_by);
	k->source = pstrdup(c->source);
	if (c->expect.judged)
	{
		KsState    *st = palloc(sizeof(KsState));

		*st = *c->expect.judged;
		st->engaged_at = st->engaged_at ? pstrdup(st->engaged_at) : NULL;
		st->reason = st->reason ? pstrdup(st->reason) : NULL;
		st->triggered_by = st->triggered_by ? pstrdup(st->triggered_by) : NULL;
		st->source = st->source ? pstrdup(st->source) : NULL;
		st->key_id = st->key_id ? pstrdup(st->key_id) : NULL;
		st->object = NULL;
		st->release_signature = NULL;
		st->release_key_id = NULL;
		k->expect.judged = st;
	}
	MemoryContextSwitchTo(old);
	return k;
}

/*
 * Raise the mode in shared memory at once, before anything that can fail
 * or wait (writing the file, recording the event): the halt must not
 * depend on the disk or on a lock.  The generation moves when the change
 * commits; until then the raise is in place (state.c).
 */
static void
halt_now(const KsChange *c)
{
	raised_in_place = true;
	if (ks_raise_in_place(c->mode, c->flags & KS_FLAG_TAMPERED, c->reason, c->triggered_by))
		ks_interlock_wait();
}

/* Record the changes in force in place, oldest first (the lock is held). */
static void
record_waiting(void)
{
	ListCell   *lc;

	foreach(lc, waiting)
		(void) ks_apply_change((KsChange *) lfirst(lc));
}

/* Does the watcher have to look again soon, though the file did not change? */
bool
ks_watch_due(void)
{
	return waiting != NIL || retry_soon;
}

/* The look committed: what it recorded is the chain's now, nothing stays in place. */
void
ks_watch_committed(void)
{
	if (waiting == NIL && !raised_in_place)
		return;
	list_free_deep(waiting);
	waiting = NIL;
	raised_in_place = false;
	if (!ks_shared->unconfirmed)
		ks_clear_in_place();
}

/*
 * Note as judged what judge() judged, so that it is not judged again: the
 * file as it is now, if it is the state judged (a writer in place may have
 * been mid-write when the bytes were first read: judge() read again); for
 * a verdict on an untrusted file, only the bytes read before it (or none).
 */
static void
note_what_was_judged(const char *path, const KsChange *c, const char *before, size_t beforelen)
{
	char	   *now = NULL;
	size_t		nowlen = 0;
	char		problem[KS_PROBLEM_LEN];
	KsState		st;

	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &now, &nowlen, problem, sizeof(problem)))
		now = NULL;
	if (c->expect.judged)
	{
		if (now && ks_state_from_text(now, nowlen, NULL, 0, NULL, false, &st,
									  problem, sizeof(problem)) != KS_FILE_BAD &&
			ks_compare_to_held(&st, c->expect.judged) == KS_SAME)
			ks_note_judged(path, now, nowlen);
		return;
	}
	ks_note_judged(path, before, beforelen);
}

/*
 * Judge the file and record what it calls for (the history exists), inside
 * the look's transaction; locked says whether it holds the lock that
 * orders changes.  Bytes the server wrote or judged are not judged again.
 */
void
ks_judge_file(const char *path, bool locked)
{
	KsVerdictAction a;
	char		problem[KS_PROBLEM_LEN];
	char	   *bytes = NULL;
	size_t		len = 0;
	int			flags;
	KsMode		held;
	KsChangeKind kind;
	struct stat sb;

	retry_soon = false;
	if (!ks_state_dir_ours(problem, sizeof(problem)))
		return;					/* another server's file (claim.c) */
	if (locked)
	{
		ks_settle_marks();
		ks_record_marks();
	}
	if (ks_file_is_ours(path, &bytes, &len))
	{
		if (locked)
			record_waiting();
		if (locked && ks_shared->unrecorded)
			ks_flush_unrecorded();
		return;
	}
	a = judge(path);
	if (!a.act)
	{
		ks_note_judged(path, bytes, len);
		if (locked)
			record_waiting();
		return;
	}
	held = ks_base_mode(&flags);
	/* an outside raise keeps a verdict; a verdict is one */
	if (!(a.change.flags & KS_FLAG_TAMPERED) && a.change.mode >= held &&
		(flags & KS_FLAG_TAMPERED) && !a.change.clears_verdict)
		a.change.flags |= KS_FLAG_TAMPERED;
	kind = ks_change_kind(held, (flags & KS_FLAG_TAMPERED) != 0, a.change.mode,
						  (a.change.flags & KS_FLAG_TAMPERED) != 0);
	if (kind == KS_CHANGE_LOWER && !locked)
	{
		retry_soon = true;		/* applied only when it can be recorded */
		return;
	}
	if (kind == KS_CHANGE_LOWER && waiting != NIL)
		record_waiting();		/* what was in force before it, first */
	/* judged: these bytes (or none, if set aside) are not judged again */
	note_what_was_judged(path, &a.change, lstat(path, &sb) == 0 ? bytes : NULL, len);
	if (kind == KS_CHANGE_LOWER)
	{
		(void) ks_apply_change(&a.change);
		return;
	}
	halt_now(&a.change);		/* a verdict, or an outside engage, halts at once */
	/* kept until a look records it and commits (ks_watch_committed()): never lost */
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		waiting = lappend(waiting, keep_change(&a.change));
		MemoryContextSwitchTo(old);
	}
	if (locked)
		record_waiting();
	else
		retry_soon = true;
}

/*
 * Judge the file where there is no history yet (the extension is not
 * created): shared memory still follows the file, so enforcement holds; the
 * change is recorded once the history exists (ks_flush_unrecorded()).  A
 * trusted change also goes into the private copy, as a change applied at
 * start does: the copy is the state held that the file is judged against,
 * so once the history exists the file is what we hold, not a newer change.
 */
void
ks_judge_file_without_history(const char *path)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		generation;
	char		reason[sizeof(ks_shared->unrecorded_reason)];
	char		problem[KS_PROBLEM_LEN];
	char	   *bytes;
	size_t		len;

	if (!ks_state_dir_ours(problem, sizeof(problem)))
		return;					/* another server's file (claim.c) */
	if (ks_file_is_ours(path, &bytes, &len))
		return;					/* written or judged by this server */
	a = judge(path);
	if (!a.act)
	{
		ks_note_judged(path, bytes, len);
		return;
	}
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
		KsState		held = *(const KsState *) a.change.expect.judged;

		held.generation = generation;
		held.previous_mode = KS_WORD_MODE(word);
		held.source = (char *) a.change.source;
		if (!ks_persist_applied(&held, false, problem, sizeof(problem)))
			ereport(WARNING,
					(errmsg("killswitch: could not keep the applied state in the private copy: %s", problem),
					 errdetail("The change is in force; once the history exists it may be recorded twice.")));
		else
			ks_wal_log_file(KS_LAST_APPLIED_FILE);	/* standbys follow */
	}
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
		/* redo wrote the file without noting its bytes: the private copy stands in */
		ks_note_file_unknown();
		return;
	}
	/* first settle the changes in flight at a crash, then compare */
	ks_settle_marks();
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
 * After a failed look (the event not recorded, the transaction aborted):
 * whatever halt_now() raised stays in place, and the changes waiting to be
 * recorded are tried again at the next look.
 */
void
ks_watch_failed(void)
{
	retry_soon = true;
}

/* Remove a mark nobody can read, keeping it as evidence. */
static void
set_mark_aside(const char *problem)
{
	ereport(WARNING,
			(errmsg("killswitch: a mark of a change in flight could not be read: %s", problem),
			 errhint("The mode stays as it is; an administrator can release it.")));
}

/* The file still holds this mark's state (a change that never committed)? Put the copy back. */
static void
put_back_uncommitted(const KsMark *m)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *now;
	size_t		nowlen;
	char	   *copy;
	size_t		copylen;

	ks_state_file_path(path, sizeof(path));
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &now, &nowlen, problem, sizeof(problem)) ||
		nowlen != m->state_len || memcmp(now, m->state, nowlen) != 0 ||
		!ks_read_file(KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE, &copy, &copylen,
					  problem, sizeof(problem)))
		return;
	/* the file is ours (its bytes are the mark's): the catch-up writes the copy there */
	ks_note_file_bytes(now, nowlen);
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->file_stale = true;
	SpinLockRelease(&ks_shared->mutex);
	ks_persist_catch_up();
}

/*
 * A recorded change whose transaction committed: the copy (and the chain)
 * learn it, unless they hold a newer one (marks come in no order).
 */
static void
settle_committed(const KsMark *m, bool before_start)
{
	char		problem[KS_PROBLEM_LEN];
	KsState		st;
	KsState		held;

	if (!ks_read_held(&held, problem, sizeof(problem)) || m->generation > held.generation)
	{
		if (!ks_persist_copy(m->state, m->state_len, problem, sizeof(problem)))
		{
			ereport(WARNING,
					(errmsg("killswitch: could not write the private copy of a committed change: %s", problem)));
			SpinLockAcquire(&ks_shared->mutex);
			ks_shared->marks_due = true;	/* tried again */
			SpinLockRelease(&ks_shared->mutex);
			return;
		}
		if (ks_state_from_text(m->state, m->state_len, NULL, 0, NULL, false, &st,
							   problem, sizeof(problem)) != KS_FILE_BAD)
			(void) ks_publish_state(&st, (ks_require_hmac ? 0 : KS_FLAG_UNSIGNED) |
									(st.tampered ? KS_FLAG_TAMPERED : 0), true);
		ereport(LOG,
				(errmsg("killswitch: the change of generation " INT64_FORMAT " written before %s had committed; mode %s",
						m->generation, before_start ? "the crash" : "a failed write of the private copy",
						ks_mode_sql_names[m->mode])));
	}
	(void) ks_mark_remove(m->xid);
}

/*
 * Settle the marks of changes in flight (ARCHITECTURE §5.5) by the commit
 * log: a transaction still running is its backend's business; one that
 * committed has its change in force (a recorded change's copy is written if
 * the commit could not; a raise whose event follows stays counted until it
 * is recorded, ks_record_marks()); one that never committed has its mark
 * removed and, if the state file still holds its state, the file put back.
 * After a crash, the raise the postmaster put in place for the marks ends
 * when all are settled: the state goes back to the newest committed one.
 * Nothing is recorded here.
 */
void
ks_settle_marks(void)
{
	List	   *marks;
	ListCell   *lc;
	bool		bad;
	bool		due;
	bool		unconfirmed;
	char		problem[KS_PROBLEM_LEN];
	KsState		held;
	bool		held_ok;

	SpinLockAcquire(&ks_shared->mutex);
	due = ks_shared->marks_due || ks_shared->unconfirmed;
	unconfirmed = ks_shared->unconfirmed;
	ks_shared->marks_due = false;
	SpinLockRelease(&ks_shared->mutex);
	if (!due)
		return;
	held_ok = ks_read_held(&held, problem, sizeof(problem));
	marks = ks_marks_read(&bad, problem, sizeof(problem));
	if (bad)
		set_mark_aside(problem);
	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);
		FullTransactionId fxid = FullTransactionIdFromU64(m->xid);
		TransactionId xid = XidFromFullTransactionId(fxid);
		bool		before_start = m->xid <= ks_shared->marks_before_start;

		/*
		 * A transaction not before the next id never wrote a commit record
		 * (that would have moved the counter past it): it did not commit.
		 */
		if (FullTransactionIdPrecedes(fxid, ReadNextFullTransactionId()) &&
			TransactionIdIsInProgress(xid))
		{
			SpinLockAcquire(&ks_shared->mutex);
			ks_shared->marks_due = true;
			SpinLockRelease(&ks_shared->mutex);
			continue;
		}
		if (FullTransactionIdPrecedes(fxid, ReadNextFullTransactionId()) &&
			TransactionIdDidCommit(xid))
		{
			if (!m->deferred)
				settle_committed(m, before_start);
			else
			{
				/* counted by its backend at commit, or here for one from before the start */
				if (unconfirmed && before_start)
					ks_deferred_count_add(m->mode, 1, m->reason, m->triggered_by);
				SpinLockAcquire(&ks_shared->mutex);
				ks_shared->marks_due = true;
				SpinLockRelease(&ks_shared->mutex);
			}
			continue;
		}
		if (!m->deferred)
			put_back_uncommitted(m);
		(void) ks_mark_remove(m->xid);
		if (m->deferred)
			ereport(LOG,
					(errmsg("killswitch: the raise to %s of transaction %u, in force before %s, never committed",
							ks_mode_sql_names[m->mode], xid,
							before_start ? "the crash" : "its backend ended")));
		else
			ereport(LOG,
					(errmsg("killswitch: the change of generation " INT64_FORMAT " written before %s never committed; mode %s stays",
							m->generation, before_start ? "the crash" : "its backend ended",
							ks_mode_sql_names[held_ok ? held.mode : KS_HALT_ALL])));
	}
	if (unconfirmed)
	{
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->unconfirmed = false;
		SpinLockRelease(&ks_shared->mutex);
		if (waiting == NIL)
			ks_clear_in_place();
	}
}
