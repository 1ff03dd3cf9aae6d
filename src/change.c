/*
 * change.c — ks_engage() and ks_disengage(), and when their change takes
 * effect (ARCHITECTURE §5): the event row and the NOTIFY are transactional; the
 * state file is written just before commit (an error there aborts the
 * transaction); shared memory is published at commit.  Changes serialize
 * on a lock on killswitch.events held to commit, so the chain and the file
 * follow commit order.  A rollback, of the transaction or of a savepoint,
 * leaves no trace.
 *
 * The pre-commit write is a compare-and-swap (persist.c): if a program
 * outside the database changed the file since the server last judged it,
 * the change fails with a serialization failure rather than overwrite what
 * nobody has seen, and the watcher applies and records the newcomer first;
 * the client retries on top of it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "killswitch.h"

PG_FUNCTION_INFO_V1(ks_engage);
PG_FUNCTION_INFO_V1(ks_disengage);

/* A change made by this transaction, not yet committed. */
typedef struct KsPending
{
	KsState		state;			/* what the state file will say */
	int			flags;			/* KS_FLAG_* to publish with it */
	int			nestlevel;		/* subtransaction that made it */
	bool		recorded_startup;	/* it also recorded the startup change */
} KsPending;

/* This transaction's changes, oldest first, in TopTransactionContext. */
static List *pending = NIL;
/* What the pre-commit write did, to finish it at commit or undo it. */
static KsWritten written;
/* What the state file held when this transaction's changes were judged. */
static KsExpect expect;
/* A raise whose state file could not be written: why, for ks_file_behind() at commit. */
static char file_behind[KS_PROBLEM_LEN];

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

/* A copy of a state in TopTransactionContext (the caller switched to it). */
static KsState *
copy_state(const KsState *st)
{
	KsState    *c = palloc(sizeof(KsState));

	*c = *st;
	c->engaged_at = st->engaged_at ? pstrdup(st->engaged_at) : NULL;
	c->reason = st->reason ? pstrdup(st->reason) : NULL;
	c->triggered_by = st->triggered_by ? pstrdup(st->triggered_by) : NULL;
	c->source = st->source ? pstrdup(st->source) : NULL;
	c->key_id = st->key_id ? pstrdup(st->key_id) : NULL;
	c->replaces = st->replaces ? pstrdup(st->replaces) : NULL;
	return c;
}

/* Remember a recorded change for the commit callbacks. */
static void
push_pending(const KsState *file_state, int flags, bool recorded_startup,
			 const KsExpect *judged)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	KsPending  *p = palloc0(sizeof(KsPending));

	p->state = *copy_state(file_state);
	/* a file the watcher judged may stand in for the state held */
	if (judged && judged->judged)
		expect.judged = copy_state(judged->judged);
	if (judged && judged->untrusted)
		expect.untrusted = true;
	p->flags = flags;
	p->nestlevel = GetCurrentTransactionNestLevel();
	p->recorded_startup = recorded_startup;
	pending = lappend(pending, p);
	MemoryContextSwitchTo(oldcxt);
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

/*
 * Make one change, whoever asks (SQL, the watcher): take the lock that
 * orders changes, record the event, and remember it for commit.  Rights are
 * the caller's business.
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

	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	/* a change written before a crash is settled first, on the history */
	if (ks_shared->unconfirmed)
		ks_confirm_in_flight();
	word = pg_atomic_read_u64(&ks_shared->word);
	last = last_pending();

	if (ks_shared->unrecorded && last == NULL)
	{
		record_startup_change(word, &file_state);
		recorded_startup = true;
	}

	memset(&in, 0, sizeof(in));
	in.mode = c->mode;
	in.previous = last ? last->state.mode : KS_WORD_MODE(word);
	in.reason = c->reason;
	in.triggered_by = c->triggered_by;
	in.affected_tasks = c->affected_tasks;
	in.source = c->source;
	in.request = c->request;
	in.release_target = c->release_target;
	/* the next generation, or the one the file's writer gave (the CLI printed it) */
	in.floor_generation = Max(Max(KS_WORD_GENERATION(word),
								  last ? last->state.generation : 0) + 1,
							  c->generation);
	row = ks_record_event(&in, &file_state);
	push_pending(&file_state, c->flags,
				 recorded_startup || (last && last->recorded_startup), &c->expect);
	return row;
}

/* Record a pending startup change on its own (the watcher, at its start). */
void
ks_flush_unrecorded(void)
{
	uint64		word;
	KsState		file_state;

	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	word = pg_atomic_read_u64(&ks_shared->word);
	if (!ks_shared->unrecorded || pending != NIL)
		return;
	record_startup_change(word, &file_state);
	push_pending(&file_state, KS_WORD_FLAGS(word), true, NULL);
}

/* A change asked for through SQL: check the caller's rights, then make it. */
static Datum
make_change(KsMode mode, const char *reason, const char *triggered_by,
			int32 affected_tasks, bool is_release)
{
	KsPending  *last;
	KsMode		current;
	KsChange	c;

	PreventCommandIfReadOnly(is_release ? "ks_disengage()" : "ks_engage()");
	PreventCommandDuringRecovery(is_release ? "ks_disengage()" : "ks_engage()");
	if (is_release)
		ks_check_release_right();
	else
		ks_check_engage_right();

	/* one change at a time, in commit order; then see what we would lower */
	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	if (ks_shared->from_recovery)
		ks_adopt_history_after_recovery();	/* the mode is the history's, not a stale copy's */
	last = last_pending();
	current = last ? last->state.mode : ks_current_mode();
	if (mode < current && !is_release)
		ks_check_release_right();

	c.mode = mode;
	c.reason = reason;
	c.triggered_by = triggered_by;
	c.affected_tasks = affected_tasks;
	c.source = "sql";
	c.flags = 0;
	c.request = false;
	c.release_target = mode;
	c.generation = 0;
	c.expect.judged = NULL;		/* the file must hold what the server holds */
	c.expect.untrusted = false;
	if (mode < current && ks_release_approvals > 1)
		return ks_release_with_approval(&c, current);
	return ks_apply_change(&c);
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
	PG_RETURN_DATUM(make_change(KS_DISENGAGED, reason, by, 0, true));
}

/* Forget this transaction's changes. */
static void
reset_pending(void)
{
	pending = NIL;				/* its memory goes with TopTransactionContext */
	memset(&written, 0, sizeof(written));
	memset(&expect, 0, sizeof(expect));
	file_behind[0] = '\0';
}

/*
 * Write the state file before commit, by compare-and-swap; an error here
 * aborts the transaction.  A newcomer in the file is PostgreSQL's
 * write-write conflict: a serialization failure, which clients retry; the
 * watcher is woken to apply and record the newcomer first.
 */
static void
write_before_commit(void)
{
	KsPending  *last = last_pending();
	KsPending  *first = (KsPending *) linitial(pending);
	char		problem[KS_PROBLEM_LEN];
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	/* a raise leaves the mode at least where it found it: the file may not stop it */
	bool		raise = (int) last->state.mode >= first->state.previous_mode;
	KsWriteResult r = ks_persist_state(&last->state, &expect, raise, &written,
									   problem, sizeof(problem));

	MemoryContextSwitchTo(oldcxt);
	if (r == KS_WRITE_BEHIND)
	{
		/* the raise stands; the state file follows through the watcher */
		strlcpy(file_behind, problem, sizeof(file_behind));
		ereport(WARNING,
				(errmsg("could not write the kill switch state file; the change is in force without it"),
				 errdetail("%s", problem),
				 errhint("The watcher writes the file as soon as it can; ks_status() shows the problem until then.")));
		return;
	}
	if (r == KS_WRITE_CONFLICT)
	{
		ks_wake_watcher();
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the kill switch state changed outside the database while this change was in flight"),
				 errdetail("The state file holds a change the server has not applied yet; it was not overwritten."),
				 errhint("The outside change is being applied; retry.")));
	}
	if (r != KS_WRITE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not write the kill switch state file"),
				 errdetail("%s", problem),
				 errhint("The change was not made. Check killswitch.state_dir and the server log.")));
}

/* Publish the committed state to every session. */
static void
publish_at_commit(void)
{
	KsPending  *last = last_pending();
	int64		usec;

	if (last->recorded_startup)
		ks_shared->unrecorded = false;
	if (!ks_parse_iso(last->state.engaged_at, &usec))
		usec = ks_timestamptz_to_unix_usec(GetCurrentTimestamp());
	ks_publish(last->state.mode, last->flags | (ks_require_hmac ? 0 : KS_FLAG_UNSIGNED),
			   last->state.generation, ks_unix_usec_to_timestamptz(usec),
			   last->state.source, last->state.reason, last->state.triggered_by);
}

/* Put the files back after a failure between the write and the commit. */
static void
undo_file_write(void)
{
	char		problem[KS_PROBLEM_LEN];

	if (!ks_persist_undo(&written, problem, sizeof(problem)))
		ereport(WARNING,
				(errmsg("could not restore the kill switch state file after an aborted change"),
				 errdetail("%s", problem),
				 errhint("The file may hold a state that was not committed; check it with ks_status().")));
}

/*
 * An engage takes effect locally at once, even when a synchronous standby
 * is down: a transaction whose changes leave the mode at least where it
 * found it commits with synchronous_commit = local (as SET LOCAL would), so
 * its commit does not wait in SyncRepWaitForLSN() before shared memory is
 * published.  A release (the mode ends lower) waits for the standbys as
 * usual.  Other work in the same transaction shares the one commit record,
 * so it too is only locally durable when the commit returns.
 */
static void
commit_engage_locally(void)
{
	KsPending  *first = (KsPending *) linitial(pending);

	if ((int) last_pending()->state.mode < first->state.previous_mode ||
		synchronous_commit <= SYNCHRONOUS_COMMIT_LOCAL_FLUSH)
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
			commit_engage_locally();
			write_before_commit();
			break;
		case XACT_EVENT_COMMIT:
			publish_at_commit();
			/* after the commit record: a standby applies only what committed */
			if (written.text != NULL)
				ks_wal_log_state(written.text, written.text_len,
								 last_pending()->state.mode,
								 last_pending()->state.generation);
			ks_persist_commit(&written);
			if (file_behind[0] != '\0')
				ks_file_behind(file_behind);
			if (last_pending()->state.mode == KS_EMERGENCY)
				ks_wake_watcher();	/* the emergency actions, now */
			reset_pending();
			break;
		case XACT_EVENT_ABORT:
			if (written.marked || written.file_written)
				undo_file_write();
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
