/*
 * change.c — ks_engage() and ks_disengage(), and when their change takes
 * effect (ARCHITECTURE §5).  Raising and lowering are different operations:
 *
 *   a raise   is in force at once: this backend's raising slot (state.c),
 *             then the interlock with committing agents (interlock.c).  Its
 *             event is recorded in the transaction if the lock that orders
 *             the history can be had within KS_ORDER_LOCK_WAIT_MS; if not
 *             (an open transaction holds a change, someone ran LOCK), the
 *             raise stands and its event follows the commit, recorded by
 *             the watcher or the next change (ks_record_marks()).  The state
 *             file is written before commit as best it can be — never an
 *             error — and the commit is only locally synchronous.
 *   a lower   (a release) waits for the ordering lock, records its event,
 *             and before commit writes only its private mark: nothing
 *             anyone else reads shows the lower mode until the commit is
 *             durable.  Then shared memory, the state file (bounded; a
 *             failure leaves the file higher, for the watcher to retry),
 *             the private copy and the WAL record.
 *
 * Every committing change leaves a mark (marks.c) before its commit record,
 * so that a crash at any instant is settled by the commit log; the watcher
 * announces every committed change (notify.c).  A rollback, of the
 * transaction or of a savepoint, leaves no trace: a raise in flight falls
 * back, a state file written before commit is put back (only our bytes).
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "approval.h"
#include "change.h"
#include "encoding.h"
#include "events.h"
#include "guc.h"
#include "interlock.h"
#include "marks.h"
#include "modetype.h"
#include "owner.h"
#include "persist.h"
#include "rights.h"
#include "scopechange.h"
#include "standby.h"
#include "state.h"
#include "store.h"
#include "wal.h"
#include "watch.h"

PG_FUNCTION_INFO_V1(ks_engage);
PG_FUNCTION_INFO_V1(ks_disengage);

/* How long a raise waits for the lock that orders the history before its event follows. */
#define KS_ORDER_LOCK_WAIT_MS 10

/* A change made by this transaction, not yet committed. */
typedef struct KsPending
{
	KsState		state;			/* what the state file will say (recorded) */
	int			flags;			/* KS_FLAG_* to publish with it */
	int			nestlevel;		/* subtransaction that made it */
	bool		recorded_startup;	/* it also recorded the startup change */
	KsChangeKind kind;			/* against the state before it */
	/* a raise whose event follows the commit: the change as asked */
	bool		deferred;
	KsEventInput in;
	KsEventIdentity who;		/* who asked, and when */
	/* the recorded event of another transaction's committed raise (its mark) */
	uint64		swept_xid;
} KsPending;

/* This transaction's changes, oldest first, in TopTransactionContext. */
static List *pending = NIL;
/* The state in force before its first change: what the whole is judged against. */
static KsMode start_mode;
static bool start_tampered;
/* What the pre-commit did, to finish it at commit or undo it. */
static KsWritten written;
static StringInfoData commit_text;	/* the state file's text of the last change */
static bool marked = false;		/* this transaction's mark is written */
static bool lowering = false;	/* the whole is a lower (decided at pre-commit) */
static bool all_deferred = false;
/* What the state file held when this transaction's changes were judged. */
static KsExpect expect;

/* A text argument in UTF-8: present, not blank, not too long. */
static char *
text_arg(FunctionCallInfo fcinfo, int argno, const char *name, bool null_ok)
{
	char	   *s;
	size_t		utf8len;
	bool		blank = true;

	if (PG_ARGISNULL(argno))
	{
		if (null_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
	}
	s = TextDatumGetCString(PG_GETARG_DATUM(argno));
	for (const char *p = s; *p; p++)
		if (!isspace((unsigned char) *p))
			blank = false;
	if (blank)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name)));
	s = ks_text_to_utf8(s, name);
	utf8len = strlen(s);
	if (utf8len > KS_MAX_TEXT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", name),
				 errdetail("It is %zu bytes in UTF-8; the limit is %d.", utf8len, KS_MAX_TEXT_LEN),
				 errhint("Every agent may read the state file before every action; keep it short.")));
	return s;
}

/* The newest uncommitted change of this transaction, or NULL. */
static KsPending *
last_pending(void)
{
	return pending == NIL ? NULL : (KsPending *) llast(pending);
}

/* Text from a state file (UTF-8, as events take it), or NULL if empty. */
static const char *
from_file_text(const char *utf8)
{
	if (utf8 == NULL || utf8[0] == '\0')
		return NULL;
	return utf8;
}

/*
 * Record the change made while the server started (a tamper verdict, a file
 * written while it was down), which killswitch.events lacks, with the
 * generation shared memory already carries.  The private copy holds that
 * change whole (the file's reason, triggered_by, affected_tasks and
 * source); shared memory only shortened, so it is the fallback.
 */
static void
record_startup_change(uint64 word, KsState *file_state)
{
	KsEventInput in;
	char		reason[sizeof(ks_shared->unrecorded_reason)];
	char		source[sizeof(ks_shared->source)];
	char		by[sizeof(ks_shared->triggered_by)];
	KsState		held;
	char		problem[KS_PROBLEM_LEN];

	memset(&in, 0, sizeof(in));
	in.mode = KS_WORD_MODE(word);
	SpinLockAcquire(&ks_shared->mutex);
	in.previous = ks_shared->unrecorded_previous;
	strlcpy(reason, ks_shared->unrecorded_reason, sizeof(reason));
	strlcpy(source, ks_shared->source, sizeof(source));
	strlcpy(by, ks_shared->triggered_by, sizeof(by));
	SpinLockRelease(&ks_shared->mutex);
	/* no palloc under a spinlock: copy out, then hand over */
	in.reason = reason;
	in.source = source;
	/* whoever the state names: the file's writer, or the server itself */
	in.triggered_by = by[0] ? by : "killswitch";
	in.floor_generation = KS_WORD_GENERATION(word);
	if (ks_read_held(&held, problem, sizeof(problem)) &&
		held.generation == KS_WORD_GENERATION(word) && held.mode == in.mode)
	{
		/* the whole reason, unless the verdict wrapped it in its own words */
		if (from_file_text(held.reason) &&
			strncmp(held.reason, reason, strlen(reason)) == 0)
			in.reason = from_file_text(held.reason);
		if (from_file_text(held.triggered_by))
			in.triggered_by = from_file_text(held.triggered_by);
		if (held.affected_tasks >= 0 && held.affected_tasks <= PG_INT32_MAX)
			in.affected_tasks = (int32) held.affected_tasks;
	}
	(void) ks_record_event(&in, file_state);
}

/* Remember a change for the commit callbacks. */
static KsPending *
push_pending(const KsState *file_state, int flags, bool recorded_startup,
			 const KsExpect *judged, KsChangeKind kind)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	KsPending  *p = palloc0(sizeof(KsPending));

	if (file_state)
		p->state = *ks_state_copy(file_state);
	/* a file the watcher judged may stand in for the state held */
	if (judged && judged->judged)
		expect.judged = ks_state_copy(judged->judged);
	if (judged && judged->untrusted)
		expect.untrusted = true;
	p->flags = flags;
	p->nestlevel = GetCurrentTransactionNestLevel();
	p->recorded_startup = recorded_startup;
	p->kind = kind;
	pending = lappend(pending, p);
	MemoryContextSwitchTo(oldcxt);
	return p;
}

/* The state in force without the raises in flight: the mode and the verdict. */
static KsMode
state_before(bool *tampered)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	KsPending  *last = last_pending();
	int			flags;
	KsMode		mode = ks_base_mode(&flags);

	if (last)
	{
		*tampered = last->state.tampered;
		return last->state.mode;
	}
	*tampered = (flags & KS_FLAG_TAMPERED) != 0 || (KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED);
	return mode;
}

/* Note the state a transaction's changes are judged against, at its first. */
static void
note_start(void)
{
	if (pending == NIL)
		start_mode = state_before(&start_tampered);
}

/*
 * This transaction's raise in flight: the highest mode of its raises (and
 * also, one about to be made).  In force at once; if the mode in force
 * rose, the interlock follows.
 */
static void
set_raising(int also, const char *reason, const char *triggered_by)
{
	ListCell   *lc;
	int			mode = also;

	foreach(lc, pending)
	{
		KsPending  *p = (KsPending *) lfirst(lc);

		if (p->kind == KS_CHANGE_RAISE && p->swept_xid == 0)
			mode = Max(mode, (int) (p->deferred ? p->in.mode : p->state.mode));
	}
	if (ks_raising_set(mode, reason, triggered_by))
	{
		if (mode == KS_EMERGENCY)
			ks_wake_watcher();	/* the emergency actions, now (ARCHITECTURE §9) */
		ks_interlock_wait();	/* no agent commit after the raise (ARCHITECTURE §5.2) */
	}
}

/* Copy an event input's texts into TopTransactionContext. */
static void
keep_input(KsEventInput *dst, const KsEventInput *src)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

	*dst = *src;
	dst->reason = pstrdup(src->reason);
	dst->triggered_by = pstrdup(src->triggered_by);
	dst->source = pstrdup(src->source);
	dst->identity = NULL;
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Record, in this transaction, the raises of committed transactions whose
 * event followed (their marks), before any change of ours: the chain then
 * holds them before what this transaction adds, and a release never
 * lowers below a raise committed before it.  The caller holds the lock
 * that orders changes.  Their marks go, and their count in shared memory
 * falls, when this transaction commits.
 */
void
ks_record_marks(void)
{
	List	   *marks;
	ListCell   *lc;
	bool		bad;
	char		problem[KS_PROBLEM_LEN];

	SpinLockAcquire(&ks_shared->mutex);
	bad = ks_shared->marks_due;
	for (int m = 0; m < KS_MODE_COUNT; m++)
		bad |= ks_shared->deferred_count[m] > 0;
	SpinLockRelease(&ks_shared->mutex);
	if (!bad)
		return;
	marks = ks_marks_read(&bad, problem, sizeof(problem));
	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);
		TransactionId xid = XidFromFullTransactionId(FullTransactionIdFromU64(m->xid));
		KsEventIdentity who;
		KsEventInput in;
		KsState		file_state;
		KsMode		current;
		bool		tampered;
		KsPending  *p;
		ListCell   *pc;
		bool		already = false;

		if (!m->deferred || TransactionIdIsCurrentTransactionId(xid) ||
			TransactionIdIsInProgress(xid) || !TransactionIdDidCommit(xid))
			continue;
		foreach(pc, pending)
			already |= ((KsPending *) lfirst(pc))->swept_xid == m->xid;
		who.session_role = m->session_role;
		who.client_addr = m->client_addr;
		who.backend_pid = m->backend_pid;
		who.xid = m->xid;
		who.at = ks_unix_usec_to_timestamptz(m->at_usec);
		if (already || ks_events_hold(m->xid, who.at))
			continue;
		/* after what the chain (and this transaction) holds, not after itself */
		if (last_pending())
		{
			current = last_pending()->state.mode;
			tampered = last_pending()->state.tampered;
		}
		else
		{
			int			flags;

			current = ks_chain_state(&flags);
			tampered = (flags & KS_FLAG_TAMPERED) != 0;
		}
		memset(&in, 0, sizeof(in));
		/* a raise: never below what the chain holds now, its verdict kept */
		in.mode = Max(m->mode, current);
		in.previous = current;
		in.reason = m->reason;
		in.triggered_by = m->triggered_by;
		in.affected_tasks = m->affected_tasks;
		in.source = m->source ? m->source : "sql";
		in.tampered = tampered || m->tampered;
		in.identity = &who;
		in.floor_generation = Max(KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)),
								  last_pending() ? last_pending()->state.generation : 0) + 1;
		note_start();
		(void) ks_record_event(&in, &file_state);
		p = push_pending(&file_state, in.tampered ? KS_FLAG_TAMPERED : 0, false, NULL,
						 KS_CHANGE_RAISE);
		p->swept_xid = m->xid;
		p->in.mode = m->mode;
	}
}

/* Record this transaction's own raises whose event was to follow: it holds the lock now. */
static void
record_own_deferred(void)
{
	ListCell   *lc;

	foreach(lc, pending)
	{
		KsPending  *p = (KsPending *) lfirst(lc);
		KsState		file_state;

		if (!p->deferred)
			continue;
		p->in.floor_generation = KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) + 1;
		p->in.identity = &p->who;
		(void) ks_record_event(&p->in, &file_state);
		p->in.identity = NULL;
		p->state = *ks_state_copy(&file_state);
		p->deferred = false;
	}
}

/*
 * Make one change, whoever asks (SQL, the watcher): record the event and
 * remember it for commit.  The caller holds the lock that orders changes;
 * rights are its business.  A raise never records below what the chain
 * holds by then, and keeps a verdict.
 */
Datum
ks_apply_change(const KsChange *c)
{
	KsPending  *last;
	uint64		word;
	KsEventInput in;
	KsState		file_state;
	Datum		row;
	bool		recorded_startup = false;
	KsMode		current;
	bool		tampered;
	KsChangeKind kind;

	/* first what committed before us: changes written before a crash, raises whose event followed */
	if (ks_shared->unconfirmed)
		ks_settle_marks();
	ks_record_marks();
	record_own_deferred();
	word = pg_atomic_read_u64(&ks_shared->word);
	last = last_pending();

	if (ks_shared->unrecorded && last == NULL)
	{
		note_start();
		record_startup_change(word, &file_state);
		(void) push_pending(&file_state, KS_WORD_FLAGS(word), true, NULL, KS_CHANGE_RAISE);
		recorded_startup = true;
		last = last_pending();
	}

	note_start();
	current = state_before(&tampered);
	kind = ks_change_kind(current, tampered, c->mode, (c->flags & KS_FLAG_TAMPERED) != 0 ||
						  (!c->clears_verdict && tampered));
	memset(&in, 0, sizeof(in));
	in.mode = kind == KS_CHANGE_RAISE ? Max(c->mode, current) : c->mode;
	in.previous = current;
	in.reason = c->reason;
	in.triggered_by = c->triggered_by;
	in.affected_tasks = c->affected_tasks;
	in.source = c->source;
	in.request = c->request;
	in.release_target = c->release_target;
	in.tampered = (c->flags & KS_FLAG_TAMPERED) != 0 || (kind == KS_CHANGE_RAISE && tampered);
	/* the next generation, or the one the file's writer gave (the CLI printed it) */
	in.floor_generation = Max(Max(KS_WORD_GENERATION(word),
								  last ? last->state.generation : 0) + 1,
							  c->generation);
	row = ks_record_event(&in, &file_state);
	(void) push_pending(&file_state, (c->flags & ~KS_FLAG_TAMPERED) |
						(in.tampered ? KS_FLAG_TAMPERED : 0),
						recorded_startup || (last && last->recorded_startup), &c->expect, kind);
	return row;
}

/* Record a pending startup change on its own (the watcher, holding the ordering lock). */
void
ks_flush_unrecorded(void)
{
	uint64		word;
	KsState		file_state;

	word = pg_atomic_read_u64(&ks_shared->word);
	if (!ks_shared->unrecorded || pending != NIL)
		return;
	note_start();
	record_startup_change(word, &file_state);
	(void) push_pending(&file_state, KS_WORD_FLAGS(word), true, NULL, KS_CHANGE_RAISE);
}

/*
 * Try the lock that orders the history for a short while (a raise must not
 * queue behind a transaction that holds it).  Interruptible.
 */
bool
ks_order_lock_briefly(void)
{
	Oid			relid = ks_events_relid();
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														KS_ORDER_LOCK_WAIT_MS);

	for (;;)
	{
		if (ConditionalLockRelationOid(relid, ShareRowExclusiveLock))
			return true;
		if (GetCurrentTimestamp() >= deadline)
			return false;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(1000L);
	}
}

/*
 * Give this transaction an id in our own name (owner.c), so that its
 * commit is in the commit log: the mark of a raise whose event follows is
 * settled by it.  Not the agent's write: the commit backstop lets it pass.
 */
void
ks_own_transaction_id(void)
{
	KsOwnerContext owner;

	/*
	 * A transaction that wrote no WAL commits asynchronously: its commit
	 * record must be flushed before the client hears of it all the same.
	 */
	ForceSyncCommit();
	if (FullTransactionIdIsValid(GetTopFullTransactionIdIfAny()))
		return;
	ks_owner_begin(&owner);
	(void) GetTopFullTransactionId();
	ks_owner_end(&owner);
}

/*
 * The ordering lock is busy: the raise stands, and its event follows the
 * commit (ARCHITECTURE §5.3).  Returns the row as it will be, with id,
 * generation, prev_hash, hash and signature null.
 */
static Datum
defer_change(const KsChange *c, KsMode current, bool tampered)
{
	KsEventInput in;
	KsEventIdentity who;
	KsPending  *p;
	MemoryContext oldcxt;

	ks_own_transaction_id();
	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	who.session_role = ks_text_to_utf8(GetUserNameFromId(GetSessionUserId(), false),
									   "the session user's name");
	who.client_addr = ks_client_address();
	who.backend_pid = MyProcPid;
	who.xid = U64FromFullTransactionId(GetTopFullTransactionId());
	who.at = GetCurrentTimestamp();
	MemoryContextSwitchTo(oldcxt);
	memset(&in, 0, sizeof(in));
	in.mode = c->mode;
	in.previous = current;
	in.reason = c->reason;
	in.triggered_by = c->triggered_by;
	in.affected_tasks = c->affected_tasks;
	in.source = c->source;
	in.tampered = tampered;
	p = push_pending(NULL, tampered ? KS_FLAG_TAMPERED : 0, false, NULL, KS_CHANGE_RAISE);
	p->deferred = true;
	keep_input(&p->in, &in);
	p->who = who;
	p->state.mode = c->mode;
	p->state.tampered = tampered;
	p->state.generation = -1;
	set_raising(KS_NO_MODE, c->reason, c->triggered_by);
	in.identity = &who;
	return ks_event_row_pending(&in);
}

/* A change asked for through SQL: check the caller's rights, then make it. */
static Datum
make_change(KsMode mode, const char *reason, const char *triggered_by,
			int32 affected_tasks, bool is_release)
{
	KsMode		current;
	bool		tampered;
	KsChange	c;
	KsChangeKind kind;

	PreventCommandIfReadOnly(is_release ? "ks_disengage()" : "ks_engage()");
	PreventCommandDuringRecovery(is_release ? "ks_disengage()" : "ks_engage()");
	if (is_release)
		ks_check_release_right();
	else
		ks_check_engage_right();

	current = state_before(&tampered);
	if (mode < current && !is_release)
		ks_check_release_right();
	/* an engage keeps a tamper verdict; only a release clears it */
	kind = ks_change_kind(current, tampered, mode, tampered && !is_release && mode >= current);

	memset(&c, 0, sizeof(c));
	c.mode = mode;
	c.reason = reason;
	c.triggered_by = triggered_by;
	c.affected_tasks = affected_tasks;
	c.source = "sql";
	c.flags = 0;
	c.clears_verdict = is_release || mode < current;
	c.release_target = mode;
	c.expect.judged = NULL;		/* the file must hold what the server holds */

	if (kind == KS_CHANGE_RAISE)
	{
		/* in force at once, before anything that can wait on another session */
		note_start();
		set_raising(mode, reason, triggered_by);
		if (!ks_order_lock_briefly())
			return defer_change(&c, current, tampered);
	}
	else
		LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	if (ks_shared->from_recovery)
		ks_adopt_history_after_recovery();	/* the mode is the history's, not a stale copy's */
	if (kind == KS_CHANGE_LOWER)
	{
		/* what is in force once we hold the lock */
		current = state_before(&tampered);
		if (mode < current && ks_release_approvals > 1)
			return ks_release_with_approval(&c, current);
	}
	{
		Datum		row = ks_apply_change(&c);

		set_raising(KS_NO_MODE, reason, triggered_by);
		return row;
	}
}

/* SQL: raise or repeat the mode (or lower it, with the release right). */
Datum
ks_engage(PG_FUNCTION_ARGS)
{
	KsMode		mode;
	char	   *reason;
	char	   *by;
	int32		affected;

	ks_require_loaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("mode must not be null")));
	mode = ks_mode_from_datum(PG_GETARG_DATUM(0));
	if (mode == KS_DISENGAGED)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot engage mode \"disengaged\""),
				 errhint("Use ks_disengage() to release the kill switch.")));
	reason = text_arg(fcinfo, 1, "reason", false);
	by = text_arg(fcinfo, 2, "triggered_by", true);
	if (by == NULL)
		by = ks_text_to_utf8(GetUserNameFromId(GetSessionUserId(), false), "the session user's name");
	affected = PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3);
	if (affected < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("affected_tasks must not be negative")));
	/* a scope (ARCHITECTURE §13); NULL, the default: the whole fleet */
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
		PG_RETURN_DATUM(ks_scope_change(TextDatumGetCString(PG_GETARG_DATUM(4)),
										mode, reason, by, affected, false));
	PG_RETURN_DATUM(make_change(mode, reason, by, affected, false));
}

/* SQL: release the kill switch (needs the release right). */
Datum
ks_disengage(PG_FUNCTION_ARGS)
{
	char	   *reason;
	char	   *by;

	ks_require_loaded();
	reason = text_arg(fcinfo, 0, "reason", false);
	by = text_arg(fcinfo, 1, "triggered_by", true);
	if (by == NULL)
		by = ks_text_to_utf8(GetUserNameFromId(GetSessionUserId(), false), "the session user's name");
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		PG_RETURN_DATUM(ks_scope_change(TextDatumGetCString(PG_GETARG_DATUM(2)),
										KS_DISENGAGED, reason, by, 0, true));
	PG_RETURN_DATUM(make_change(KS_DISENGAGED, reason, by, 0, true));
}

/* Forget this transaction's changes. */
static void
reset_pending(void)
{
	pending = NIL;				/* its memory goes with TopTransactionContext */
	memset(&written, 0, sizeof(written));
	memset(&expect, 0, sizeof(expect));
	memset(&commit_text, 0, sizeof(commit_text));
	marked = false;
	lowering = false;
	all_deferred = false;
}

/* Are all of this transaction's changes raises whose event follows? */
static bool
only_deferred(void)
{
	ListCell   *lc;

	foreach(lc, pending)
		if (!((KsPending *) lfirst(lc))->deferred)
			return false;
	return true;
}

/*
 * Has the watcher an outside change in force in place, not yet recorded?
 * (Not asked of the watcher itself: it records those first, in the same
 * transaction.)
 */
static bool
outside_change_waiting(void)
{
	bool		waiting;

	SpinLockAcquire(&ks_shared->mutex);
	waiting = ks_shared->inplace_mode != KS_NO_MODE && !ks_shared->unconfirmed &&
		ks_shared->watcher_latch != MyLatch;
	SpinLockRelease(&ks_shared->mutex);
	return waiting;
}

/* This transaction's mark (ARCHITECTURE §5.3): the last change, whole. */
static void
fill_mark(KsMark *m)
{
	KsPending  *last = last_pending();

	memset(m, 0, sizeof(*m));
	m->xid = U64FromFullTransactionId(GetTopFullTransactionId());
	m->deferred = all_deferred;
	m->tampered = last->state.tampered;
	m->previous = last->deferred ? last->in.previous : last->state.previous_mode;
	if (all_deferred)
	{
		m->mode = last->in.mode;
		m->reason = (char *) last->in.reason;
		m->triggered_by = (char *) last->in.triggered_by;
		m->source = (char *) last->in.source;
		m->affected_tasks = last->in.affected_tasks;
		m->session_role = (char *) last->who.session_role;
		m->client_addr = (char *) last->who.client_addr;
		m->backend_pid = last->who.backend_pid;
		m->at_usec = ks_timestamptz_to_unix_usec(last->who.at);
	}
	else
	{
		m->mode = last->state.mode;
		m->generation = last->state.generation;
		m->state = commit_text.data;
		m->state_len = commit_text.len;
	}
}

/*
 * The hint for a raise whose state file could not be written: usually the
 * watcher writes it later, but never on a directory another running server
 * owns (claim.c; a release is refused there before its commit).
 */
static int
raise_file_failed_hint(void)
{
	if (ks_shared->state_dir_foreign)
		return errhint("Another running server owns killswitch.state_dir; this server never writes the file there. Give each server a state directory of its own.");
	return errhint("The watcher writes the file as soon as it can; ks_status() shows the problem until then.");
}

/*
 * Before commit.  Every change: its mark, durable before the commit
 * record.  A recorded raise: the state file too, as best it can — never an
 * error.  A lower: nothing anyone else reads; only whether its write after
 * the commit will find the file as the server left it (if not, an outside
 * change nobody has judged: 40001, as before).
 */
static void
before_commit(void)
{
	KsPending  *last = last_pending();
	KsMark		mark;
	char		problem[KS_PROBLEM_LEN];
	KsWriteResult r;
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

	all_deferred = only_deferred();
	lowering = ks_change_kind(start_mode, start_tampered, last->state.mode,
							  last->state.tampered) == KS_CHANGE_LOWER;
	if (!all_deferred)
	{
		/* the state it replaces, named: a release of it is then authorized wherever found */
		(void) ks_held_signature(&last->state.replaces);
		initStringInfo(&commit_text);
		if (!ks_persist_text(&last->state, &commit_text, problem, sizeof(problem)))
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("could not sign the kill switch state: %s", problem)));
	}
	fill_mark(&mark);
	/*
	 * A release's transaction id must outlive a crash before its mark is
	 * written: WAL lost in a crash would let a new transaction take the same
	 * id and commit, and the mark would be settled as committed.  (A raise's
	 * mark settled wrongly that way is only an extra halt.)
	 */
	if (lowering && XactLastRecEnd != InvalidXLogRecPtr)
		XLogFlush(XactLastRecEnd);
	marked = ks_mark_write(&mark, problem, sizeof(problem));
	MemoryContextSwitchTo(oldcxt);
	if (!marked && lowering)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not write the mark of the kill switch release: %s", problem),
				 errhint("The release was not made. Check the data directory's pg_killswitch and the server log.")));
	if (!marked)
		ereport(WARNING,
				(errmsg("could not write the mark of a kill switch change in flight: %s", problem),
				 errhint("The change is in force; a crash before it is recorded in full may start the server without it.")));
	if (all_deferred)
		return;

	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	r = ks_persist_file(commit_text.data, commit_text.len, &expect,
						lowering ? KS_PERSIST_CHECK : KS_PERSIST_RAISE, &written,
						problem, sizeof(problem));
	MemoryContextSwitchTo(oldcxt);
	/* an outside change judged and in force, not yet recorded: it comes first */
	if (lowering && r == KS_WRITE_OK && outside_change_waiting())
		r = KS_WRITE_CONFLICT;
	if (r == KS_WRITE_CONFLICT)
		ks_wake_watcher();		/* to apply and record the newcomer */
	if (lowering && r == KS_WRITE_CONFLICT)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the kill switch state changed outside the database while this change was in flight"),
				 errdetail("The state file holds a change the server has not applied yet; it was not overwritten."),
				 errhint("The outside change is being applied; retry.")));
	if (lowering && r != KS_WRITE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not write the kill switch state file: %s", problem),
				 errhint("The change was not made. Check killswitch.state_dir and the server log.")));
	if (r == KS_WRITE_FAILED)
		ereport(WARNING,
				(errmsg("could not write the kill switch state file; the change is in force without it: %s", problem),
				 raise_file_failed_hint()));
}

/* Publish the committed state: a raise never lowers what is in force, a lower is the new state. */
static void
publish_at_commit(void)
{
	KsPending  *last = last_pending();
	int64		usec;
	int			flags = last->flags | (ks_require_hmac ? 0 : KS_FLAG_UNSIGNED);

	if (last->recorded_startup)
		ks_shared->unrecorded = false;
	if (!ks_parse_iso(last->state.engaged_at, &usec))
		usec = ks_timestamptz_to_unix_usec(GetCurrentTimestamp());
	if (last->state.tampered)
		flags |= KS_FLAG_TAMPERED;
	if (lowering)
		ks_publish(last->state.mode, flags, last->state.generation,
				   ks_unix_usec_to_timestamptz(usec), last->state.source,
				   last->state.reason, last->state.triggered_by);
	else
		ks_publish_raise(last->state.mode, flags, last->state.generation,
						 ks_unix_usec_to_timestamptz(usec), last->state.source,
						 last->state.reason, last->state.triggered_by);
}

/* The marks of other transactions' raises recorded here: theirs to remove now. */
static void
finish_swept(void)
{
	ListCell   *lc;

	foreach(lc, pending)
	{
		KsPending  *p = (KsPending *) lfirst(lc);

		if (p->swept_xid == 0)
			continue;
		(void) ks_mark_remove(p->swept_xid);
		ks_deferred_count_add(p->in.mode, -1, NULL, NULL);
	}
}

/*
 * After the commit record, nothing can fail any more.  A raise whose event
 * follows stays in force by its count (its mark is the watcher's); a
 * recorded change becomes the chain's — a lower only once its commit
 * record is flushed — then the state file (a lower's), the private copy,
 * the WAL record; the mark goes last, and only if the copy has the change.
 */
static void
at_commit(void)
{
	KsPending  *last = last_pending();
	char		problem[KS_PROBLEM_LEN];

	if (all_deferred)
	{
		ks_deferred_count_add(last->in.mode, 1, last->in.reason, last->in.triggered_by);
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->marks_due = true;
		SpinLockRelease(&ks_shared->mutex);
		return;
	}
	if (lowering)
		XLogFlush(XactLastCommitEnd);	/* with synchronous_commit off, not yet durable */
	publish_at_commit();
	finish_swept();
	if (lowering)
	{
		KsWriteResult r = ks_persist_file(commit_text.data, commit_text.len, &expect,
										  KS_PERSIST_COMMITTED, &written,
										  problem, sizeof(problem));

		if (r != KS_WRITE_OK)
			ereport(WARNING,
					(errmsg("could not write the kill switch state file after a release: %s", problem),
					 errhint("The release is in force; the file shows the higher mode until the watcher can write it.")));
	}
	if (ks_persist_copy(commit_text.data, commit_text.len, problem, sizeof(problem)))
	{
		if (marked)
			(void) ks_mark_remove(U64FromFullTransactionId(GetTopFullTransactionIdIfAny()));
	}
	else
	{
		ereport(LOG,
				(errmsg("could not update the private copy of the kill switch state after a commit: %s", problem),
				 errdetail("The change is committed and in force; the watcher writes the copy from its mark.")));
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->marks_due = true;
		SpinLockRelease(&ks_shared->mutex);
	}
	/* after the commit record: a standby applies only what committed */
	ks_wal_log_state(commit_text.data, commit_text.len, last->state.mode,
					 last->state.generation);
}

/* Put the files back after a failure between the write and the commit. */
static void
at_abort(void)
{
	char		problem[KS_PROBLEM_LEN];
	FullTransactionId fxid = GetTopFullTransactionIdIfAny();

	if (marked && FullTransactionIdIsValid(fxid))
		(void) ks_mark_remove(U64FromFullTransactionId(fxid));
	if (written.file_written && !ks_persist_undo(&written, problem, sizeof(problem)))
		ereport(WARNING,
				(errmsg("could not restore the kill switch state file after an aborted change: %s", problem),
				 errhint("The file shows a higher mode than is in force until the watcher puts it right.")));
}

/*
 * An engage takes effect locally at once, even when a synchronous standby
 * is down: a transaction whose changes are a raise commits with
 * synchronous_commit = local (as SET LOCAL would), so its commit does not
 * wait in SyncRepWaitForLSN().  A release waits for the standbys as usual,
 * and shows nothing lower before.  Other work in the same transaction
 * shares the one commit record, so it too is only locally durable when
 * the commit returns.
 */
static void
commit_engage_locally(void)
{
	if (lowering || synchronous_commit <= SYNCHRONOUS_COMMIT_LOCAL_FLUSH)
		return;
	(void) set_config_option("synchronous_commit", "local", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/* Transaction callback: the commit semantics above. */
void
ks_xact_callback(XactEvent event, void *arg)
{
	/* savepoints may have taken every change along, not what they judged */
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT) && pending == NIL)
		memset(&expect, 0, sizeof(expect));
	if (pending == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			before_commit();
			commit_engage_locally();
			break;
		case XACT_EVENT_COMMIT:
			at_commit();
			(void) ks_raising_set(KS_NO_MODE, NULL, NULL);
			ks_wake_watcher();	/* the NOTIFY, the emergency actions, a mark to record */
			reset_pending();
			break;
		case XACT_EVENT_ABORT:
			(void) ks_raising_set(KS_NO_MODE, NULL, NULL);
			at_abort();
			reset_pending();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that changed the kill switch")));
			break;
		default:
			break;
	}
}

/* Subtransaction callback: a rolled-back savepoint takes its changes along. */
void
ks_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (pending == NIL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (pending != NIL && last_pending()->nestlevel >= level)
			pending = list_delete_last(pending);
		set_raising(KS_NO_MODE, NULL, NULL);	/* falls back to what the transaction still holds */
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending)
		{
			KsPending  *p = (KsPending *) lfirst(lc);

			if (p->nestlevel >= level)
				p->nestlevel = level - 1;
		}
	}
}
