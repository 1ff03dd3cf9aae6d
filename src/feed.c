/*
 * feed.c — what a server tells the watchers of its standbys
 * (ARCHITECTURE §11 "Halts outrun replay"; the standby's side is
 * upstream.c).
 *
 CALL killswitch.await_state(known_generation, timeout_ms) waits until the
 * state this server holds as committed — its private copy,
 * last_applied.json: on a primary the newest committed change, on a
 * standby what it replayed or heard from its own upstream — has another
 * generation than the caller knows, or until the timeout.  Then
 * killswitch.committed_state() returns its signed bytes, how old this
 * server's own word from the primary is (0 on a primary), the primary's
 * WAL position as this server knows it, and the system identifier and
 * timeline of the history it is on, by which a standby refuses word from
 * another system and learns of a failover (upstream.c).  A standby that
 * holds a state heard ahead of replay (its heard overlay) tells that one,
 * from its heard file: so a cascade hears the primary through it.
 * Its scopes too (ARCHITECTURE §13 "Standbys"): killswitch.committed_scopes()
 * returns the signed scope copy, and given the copy's version the wait
 * also ends when the copy moves past it.
 *
 * A long poll that holds no snapshot while it waits.  On a hot standby —
 * the upstream of a cascade — a snapshot held for the wait would make
 * replay wait for it at the next conflicting cleanup, the very delay the
 * watchers work around; LISTEN, the other way to wait, is not allowed
 * there.  So it is a procedure: called by CALL outside a transaction block
 * it may let go of the snapshot CALL takes (it reads no table), and the
 * session then holds no xmin while it sleeps.  It returns nothing: a CALL
 * that returns a row keeps a snapshot registered for the row, all along.  It sleeps on the condition
 * variable every publish broadcasts, like ks_wait().
 */
#include "postgres.h"

#include "access/xlog.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "names.h"
#include "scope.h"
#include "scopefile.h"
#include "standby.h"
#include "state.h"
#include "store.h"

#ifdef KS_HAVE_CUSTOM_RMGR
#include "access/xlogrecovery.h"	/* the recovery API's own header from 15 on */
#endif

PG_FUNCTION_INFO_V1(ks_await_state);
PG_FUNCTION_INFO_V1(ks_committed_state);
PG_FUNCTION_INFO_V1(ks_committed_scopes);

/*
 * The copy is written just after the publish that wakes us: while it is
 * behind the published generation, look again this often.
 */
#define KS_FEED_RECHECK_MS 5

/*
 * The bytes and generation of the state this server tells (-1 when they
 * cannot be read): the private copy, or on a standby the heard file while
 * its heard overlay is in force (*heard then).
 */
static char *
read_copy(size_t *len, int64 *generation, bool *heard)
{
	char	   *text;
	char		problem[KS_PROBLEM_LEN];
	KsState		st;

	*generation = -1;
	*heard = ks_heard_generation() >= 0;
	if (!ks_read_file(*heard ? KS_HEARD_FILE : KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE,
					  &text, len, problem, sizeof(problem)))
		return NULL;
	if (ks_state_from_text(text, *len, NULL, 0, NULL, false, &st, problem, sizeof(problem)) == KS_FILE_BAD)
		return NULL;
	*generation = st.generation;
	return text;
}

/*
 * Sleep until the copy holds a generation other than known, at least the
 * published one (the heard file: exactly the heard overlay's), or — with
 * known_scopes at 0 or more — until the scope copy's version on disk is
 * another than known_scopes, or until the timeout.  Each look reads the
 * file in a context of its own.
 */
static void
wait_for_state(int64 known, int64 known_scopes, int timeout_ms)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext look = AllocSetContextCreate(caller, "killswitch await_state",
											   ALLOCSET_DEFAULT_SIZES);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	size_t		len;
	int64		generation;

	ConditionVariablePrepareToSleep(&ks_shared->published);
	for (;;)
	{
		int64		published = ks_generation_in_force(pg_atomic_read_u64(&ks_shared->word));
		long		remaining;
		bool		readable;
		bool		behind;
		bool		heard;

		MemoryContextReset(look);
		MemoryContextSwitchTo(look);
		readable = read_copy(&len, &generation, &heard) != NULL;
		MemoryContextSwitchTo(caller);
		/* a file not written yet after the publish that woke us: look again soon */
		behind = readable && (heard ? generation != published : generation < published);
		if (readable && !behind && generation != known)
			break;
		if (known_scopes >= 0 && ks_scope_file_version_told() != known_scopes)
			break;				/* the scope set moved (each write broadcasts) */
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		/* checks for interrupts: statement_timeout, cancel, terminate */
		(void) ConditionVariableTimedSleep(&ks_shared->published,
										   behind ? Min(remaining, KS_FEED_RECHECK_MS) : remaining,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	MemoryContextDelete(look);
}

/*
 * Let go of the snapshot CALL took, so that this session holds no xmin
 * while it waits (nothing here reads a table).  Only a non-atomic CALL may:
 * in a transaction block or inside a function the snapshot belongs to the
 * caller.
 *
 * What is active then are portal snapshots: the top-level CALL's, or —
 * called from a procedure or a DO block — the snapshot of the portal that
 * runs it, which PL/pgSQL's next statement expects to find again or to be
 * told is gone.  ForgetPortalSnapshots() pops them and says so, as a
 * COMMIT inside a procedure does (SPI_commit()); popping one alone left
 * its portal pointing at it, an assertion failure in the caller's next
 * statement (or "portal snapshots did not account for all active
 * snapshots" at its COMMIT).
 */
static void
let_go_of_snapshot(FunctionCallInfo fcinfo)
{
	CallContext *call = (fcinfo->context && IsA(fcinfo->context, CallContext))
		? (CallContext *) fcinfo->context : NULL;

	if (call == NULL || call->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("killswitch.await_state() can only wait when called by CALL outside a transaction block"),
				 errdetail("It waits without a snapshot, so that it never holds back WAL replay on a standby."),
				 errhint("Call it on its own, or with timeout_ms 0 to read the state at once.")));
	ForgetPortalSnapshots();
	InvalidateCatalogSnapshot();
	if (HaveRegisteredOrActiveSnapshot() || TransactionIdIsValid(MyProc->xmin))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("killswitch.await_state() cannot wait while this session holds a snapshot"),
				 errhint("Call it on its own, outside a transaction block.")));
}

/* How old this server's word from the primary is, in ms: 0 on a primary, NULL if unknown. */
static bool
silence_ms(int64 *ms)
{
	TimestampTz fresh_at;

	*ms = 0;
	if (!RecoveryInProgress())
		return true;
	SpinLockAcquire(&ks_shared->mutex);
	fresh_at = ks_shared->upstream.configured ? ks_shared->upstream.fresh_at : 0;
	SpinLockRelease(&ks_shared->mutex);
	if (fresh_at == 0)
		return false;
	*ms = TimestampDifferenceMilliseconds(fresh_at, GetCurrentTimestamp());
	return true;
}

/* The primary's WAL position as this server knows it. */
static XLogRecPtr
primary_position(void)
{
	XLogRecPtr	heard;

	if (!RecoveryInProgress())
		return GetXLogWriteRecPtr();
	SpinLockAcquire(&ks_shared->mutex);
	heard = ks_shared->upstream.upstream_lsn;
	SpinLockRelease(&ks_shared->mutex);
	return Max(heard, GetXLogReplayRecPtr(NULL));
}

/*
 * SQL: PROCEDURE killswitch.await_state(known_generation bigint, timeout_ms
 * integer, known_scopes_version bigint DEFAULT NULL): return once the
 * committed state has another generation than known_generation, or — given
 * known_scopes_version — the scope copy another version than that, or
 * after timeout_ms; read them with killswitch.committed_state() and
 * killswitch.committed_scopes().  A procedure with no result: a CALL that
 * returns a row holds a snapshot for it all along.  Without the third
 * argument (a watcher of an earlier build) it waits as it always did.
 */
Datum
ks_await_state(PG_FUNCTION_ARGS)
{
	int64		known;
	int64		known_scopes = -1;
	int32		timeout_ms;

	ks_require_loaded();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("known_generation and timeout_ms must not be null")));
	known = PG_GETARG_INT64(0);
	timeout_ms = PG_GETARG_INT32(1);
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		known_scopes = PG_GETARG_INT64(2);
		if (known_scopes < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("known_scopes_version must not be negative")));
	}
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative")));
	if (timeout_ms > 0)
	{
		let_go_of_snapshot(fcinfo);
		wait_for_state(known, known_scopes, timeout_ms);
	}
	PG_RETURN_VOID();
}

/*
 * The timeline of the history this server is on: where a primary inserts
 * WAL, where a standby's replay is.
 */
static TimeLineID
history_timeline(void)
{
	TimeLineID	timeline;

	if (!RecoveryInProgress())
		return GetWALInsertionTimeLine();
	(void) GetXLogReplayRecPtr(&timeline);
	return timeline;
}

/*
 * SQL: killswitch.committed_state(OUT state bytea, OUT silent_ms bigint,
 * OUT wal_lsn pg_lsn, OUT system_identifier bigint, OUT timeline_id
 * integer): the signed bytes of the state this server tells (null if they
 * cannot be read), how old this server's word from the primary is (0 on a
 * primary; null on a standby that has not heard yet), the primary's WAL
 * position as this server knows it, and this server's system identifier
 * (as pg_control_system() shows it) and timeline.
 */
Datum
ks_committed_state(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false};
	char	   *text;
	size_t		len;
	int64		generation;
	int64		silent;
	bool		heard;

	ks_require_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	text = read_copy(&len, &generation, &heard);
	if (text != NULL)
	{
		bytea	   *state = (bytea *) palloc(VARHDRSZ + len);

		SET_VARSIZE(state, VARHDRSZ + len);
		memcpy(VARDATA(state), text, len);
		values[0] = PointerGetDatum(state);
	}
	nulls[0] = text == NULL;
	nulls[1] = !silence_ms(&silent);
	values[1] = Int64GetDatum(silent);
	values[2] = LSNGetDatum(primary_position());
	values[3] = Int64GetDatum((int64) GetSystemIdentifier());
	values[4] = Int32GetDatum((int32) history_timeline());
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * SQL: killswitch.committed_scopes(OUT scopes bytea, OUT version bigint):
 * the signed bytes of this server's scope copy, pg_killswitch/scopes.json
 * (ARCHITECTURE §13 "Standbys") — every scope in force here, on a standby
 * those it heard ahead of replay included, so a cascade hears the
 * primary's through it — and the version on disk, which
 * killswitch.await_state() waits past; null bytes and version 0 while no
 * scope was ever in force here.  The watcher of a standby verifies the
 * bytes and reads the version from them.
 */
Datum
ks_committed_scopes(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	int64		version;

	ks_require_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	/* the version first: bytes read after it are at least as new */
	version = ks_scope_file_version_told();
	if (ks_read_file(KS_SCOPES_COPY_FILE, KS_MAX_SCOPE_FILE_SIZE, &text, &len, problem, sizeof(problem)))
	{
		bytea	   *scopes = (bytea *) palloc(VARHDRSZ + len);

		SET_VARSIZE(scopes, VARHDRSZ + len);
		memcpy(VARDATA(scopes), text, len);
		values[0] = PointerGetDatum(scopes);
	}
	else
		nulls[0] = true;
	values[1] = Int64GetDatum(version);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
