/*
 * api.c — the read side of the SQL surface (ARCHITECTURE §7): the mode, the task
 * checks, the raw shared state behind ks_status(), and the install check.
 * ks_mode() and ks_engaged() are one atomic read of shared memory.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "api.h"
#include "compat.h"
#include "encoding.h"
#include "guc.h"
#include "modetype.h"
#include "names.h"
#include "scope.h"
#include "state.h"
#include "store.h"
#include "tasks.h"

#ifdef KS_HAVE_CUSTOM_RMGR
#include "access/xlogrecovery.h"	/* the recovery API's own header from 15 on */
#endif

PG_FUNCTION_INFO_V1(ks_mode);
PG_FUNCTION_INFO_V1(ks_engaged);
PG_FUNCTION_INFO_V1(ks_check_task);
PG_FUNCTION_INFO_V1(ks_task_allowed);
PG_FUNCTION_INFO_V1(ks_assert_task);
PG_FUNCTION_INFO_V1(ks_shared_state);
PG_FUNCTION_INFO_V1(ks_check_install);

/* SQL: the current mode. */
Datum
ks_mode(PG_FUNCTION_ARGS)
{
	/* the enum's type, looked up once per call site */
	if (fcinfo->flinfo->fn_extra == NULL)
	{
		Oid		   *typoid;

		ks_require_loaded();
		typoid = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(Oid));
		*typoid = get_func_rettype(fcinfo->flinfo->fn_oid);
		fcinfo->flinfo->fn_extra = typoid;
	}
	PG_RETURN_DATUM(ks_mode_to_datum(ks_session_mode(),
									 *(Oid *) fcinfo->flinfo->fn_extra));
}

/* SQL: is the kill switch engaged (any mode but disengaged)? */
Datum
ks_engaged(PG_FUNCTION_ARGS)
{
	if (unlikely(ks_shared == NULL))
		ks_require_loaded();
	PG_RETURN_BOOL(ks_session_mode() != KS_DISENGAGED);
}

/* The task argument: not null, not empty. */
static char *
task_arg(FunctionCallInfo fcinfo)
{
	char	   *task;

	ks_require_loaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task must not be null")));
	task = TextDatumGetCString(PG_GETARG_DATUM(0));
	if (task[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("task must not be empty")));
	return task;
}

/* SQL: {allowed, action, reason | note}, as check_task_allowed returns it. */
Datum
ks_check_task(PG_FUNCTION_ARGS)
{
	KsTaskVerdict v = ks_task_verdict(ks_session_mode(), task_arg(fcinfo));
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"allowed\": %s, \"action\": \"%s\"",
					 v.allowed ? "true" : "false", v.action);
	if (v.reason)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, v.reason);
	}
	if (v.note)
		appendStringInfo(&buf, ", \"note\": \"%s\"", v.note);
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* SQL: may this task run now? */
Datum
ks_task_allowed(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(ks_task_verdict(ks_session_mode(), task_arg(fcinfo)).allowed);
}

/* The primary message of a task's refusal, whole for each case. */
static int
task_refused_message(KsTaskRefused what, const char *mode, const char *name)
{
	switch (what)
	{
		case KS_TASK_QUEUED:
			return errmsg("kill switch engaged (%s): task \"%s\" queued", mode, name);
		case KS_TASK_BLOCKED:
			return errmsg("kill switch engaged (%s): task \"%s\" blocked", mode, name);
		case KS_TASK_ROW_REFUSED:
			return errmsg("kill switch engaged (%s): task \"%s\" refused", mode, name);
		case KS_TASK_TABLE_ROW_REFUSED:
			return errmsg("kill switch engaged (%s): a row of table \"%s\" refused", mode, name);
	}
	return 0;					/* keep the compiler quiet */
}

/*
 * Raise the kill switch error for a task the rules refuse (name is the
 * task, or the table of a row of no task).
 */
void
ks_refuse_task(KsMode mode, KsTaskRefused what, const char *name)
{
	char		detail[512];

	if (!ks_scope_refusal_detail(mode, detail, sizeof(detail)))
		ks_refusal_detail(detail, sizeof(detail));
	ereport(ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 task_refused_message(what, ks_mode_sql_names[mode], name),
			 errdetail_internal("%s", detail),
			 errhint("A member of %s may release it with ks_disengage().", KS_ROLE_ADMIN)));
}

/* SQL: raise the kill switch SQLSTATE unless the task may run. */
Datum
ks_assert_task(PG_FUNCTION_ARGS)
{
	KsMode		mode = ks_session_mode();
	const char *task = task_arg(fcinfo);
	KsTaskVerdict v = ks_task_verdict(mode, task);

	if (!v.allowed)
		ks_refuse_task(mode, mode == KS_HALT_NONCRITICAL ? KS_TASK_QUEUED : KS_TASK_BLOCKED, task);
	PG_RETURN_VOID();
}

/*
 * The standby's fields of ks_shared_state() (eight), null on a primary and
 * for what is not known yet.
 */
static void
standby_fields(const KsUpstreamStatus *up, int64 replayed, int64 heard, Datum *values, bool *nulls)
{
	TimestampTz now = GetCurrentTimestamp();
	XLogRecPtr	replay;

	for (int i = 0; i < 8; i++)
		nulls[i] = true;
	if (!RecoveryInProgress())
		return;
	replay = GetXLogReplayRecPtr(NULL);
	values[0] = Int64GetDatum(replayed);
	nulls[0] = replayed < 0;
	/* a state heard ahead of replay, in force above it */
	values[1] = Int64GetDatum(heard);
	nulls[1] = heard < 0;
	values[2] = TimestampTzGetDatum(up->heard_at);
	nulls[2] = up->heard_at == 0;
	if (!up->configured)
		return;
	values[3] = Int64GetDatum(TimestampDifferenceMilliseconds(up->fresh_at, now));
	nulls[3] = false;
	values[4] = BoolGetDatum(up->lost);
	nulls[4] = false;
	values[5] = CStringGetTextDatum(pg_verifymbstr(up->problem, strlen(up->problem), true)
									? up->problem : "the upstream cannot be heard; see the server log");
	nulls[5] = up->problem[0] == '\0';
	if (XLogRecPtrIsInvalid(up->upstream_lsn))
		return;
	values[6] = DirectFunctionCall1(int8_numeric,
									Int64GetDatum(up->upstream_lsn > replay ? up->upstream_lsn - replay : 0));
	nulls[6] = false;
	values[7] = Int64GetDatum(up->behind_since == 0 ? 0 :
							  TimestampDifferenceMilliseconds(up->behind_since, now));
	nulls[7] = false;
}

/*
 * SQL: the shared state as a row, for ks_status(): mode, generation,
 * integrity, source, since, problem, require_hmac, unrecorded,
 * watcher_checked_at, watcher_problem (null when the watcher can do all its
 * work), watch (how it sees changes: inotify or poll), role (primary or
 * standby), state_lsn (the WAL record of the state, written or replayed);
 * on a standby (null on a primary) replayed_generation, heard_generation
 * (of a state heard ahead of replay, in force above it: generation is
 * then that one), and what it knows
 * of its upstream (upstream.c): upstream_heard_at, upstream_age_ms (how old
 * the newest word from the primary is), upstream_lost (held at halt_all for
 * it), upstream_problem, replay_behind_bytes and replay_behind_ms; then
 * file_problem (why the state file lags the state in force; null when it
 * follows).
 */
Datum
ks_shared_state(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[22];
	bool		nulls[22] = {false};
	uint64		word;
	int			flags;
	char		source[16];
	char		reason[sizeof(ks_shared->reason)];
	TimestampTz since;
	TimestampTz checked;
	bool		unrecorded;
	char		problem[sizeof(ks_shared->watcher_problem)];
	bool		inotify;
	XLogRecPtr	state_lsn;
	int64		replayed;
	int64		heard;
	KsUpstreamStatus up;
	char		file_problem[sizeof(ks_shared->file_problem)];
	bool		file_behind;

	ks_require_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	word = pg_atomic_read_u64(&ks_shared->word);
	flags = KS_WORD_FLAGS(word);
	SpinLockAcquire(&ks_shared->mutex);
	/* a standby's heard state, in force above what it replayed, speaks for itself */
	strlcpy(source, ks_shared->heard_generation >= 0 ? ks_shared->heard_source : ks_shared->source,
			sizeof(source));
	strlcpy(reason, ks_shared->reason, sizeof(reason));
	since = ks_shared->heard_generation >= 0 ? ks_shared->heard_since : ks_shared->since;
	/* a change in force the history lacks: at start, or a raise whose event follows */
	unrecorded = ks_shared->unrecorded;
	for (int m = 0; m < KS_MODE_COUNT; m++)
		unrecorded |= ks_shared->deferred_count[m] > 0;
	unrecorded |= ks_shared->inplace_mode != KS_NO_MODE && !ks_shared->unconfirmed;
	checked = ks_shared->watcher_checked_at;
	strlcpy(problem, ks_shared->watcher_problem, sizeof(problem));
	inotify = ks_shared->watcher_inotify;
	state_lsn = ks_shared->state_lsn;
	replayed = ks_shared->replayed_generation;
	heard = ks_shared->heard_generation;
	up = ks_shared->upstream;
	strlcpy(file_problem, ks_shared->file_problem, sizeof(file_problem));
	file_behind = ks_shared->file_behind;
	SpinLockRelease(&ks_shared->mutex);

	values[0] = ks_mode_to_datum(KS_WORD_MODE(word), TupleDescAttr(tupdesc, 0)->atttypid);
	values[1] = Int64GetDatum(Max(KS_WORD_GENERATION(word), heard));
	values[2] = CStringGetTextDatum((flags & KS_FLAG_TAMPERED) ? "tampered" :
									(flags & KS_FLAG_UNSIGNED) ? "unsigned" : "ok");
	values[3] = CStringGetTextDatum(source);
	values[4] = TimestampTzGetDatum(since);
	nulls[4] = since == 0;
	/* a verdict's reason says what was wrong */
	values[5] = CStringGetTextDatum(ks_utf8_to_db(reason));
	nulls[5] = !(flags & KS_FLAG_TAMPERED);
	values[6] = BoolGetDatum(ks_require_hmac);
	values[7] = BoolGetDatum(unrecorded);
	values[8] = TimestampTzGetDatum(checked);
	nulls[8] = checked == 0;
	/* it names killswitch.database, whose bytes may not be valid here */
	values[9] = CStringGetTextDatum(pg_verifymbstr(problem, strlen(problem), true) ? problem
									: "the watcher has a problem; see the server log");
	nulls[9] = problem[0] == '\0';
	values[10] = CStringGetTextDatum(inotify ? "inotify" : "poll");
	values[11] = CStringGetTextDatum(RecoveryInProgress() ? "standby" : "primary");
	values[12] = LSNGetDatum(state_lsn);
	nulls[12] = XLogRecPtrIsInvalid(state_lsn);
	standby_fields(&up, replayed, heard, values + 13, nulls + 13);
	/* it names paths, whose bytes may not be valid here */
	values[21] = CStringGetTextDatum(pg_verifymbstr(file_problem, strlen(file_problem), true)
									 ? ks_utf8_to_db(file_problem)
									 : "the state file lags the state in force; see the server log");
	nulls[21] = !file_behind;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* SQL, from the install script: preloaded, and in the right database. */
Datum
ks_check_install(PG_FUNCTION_ARGS)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	ks_require_loaded();
	if (strcmp(dbname, ks_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the killswitch extension can only be created in database \"%s\"", ks_database),
				 errdetail("The kill switch is cluster-wide; its history lives in one database, set by killswitch.database."),
				 errhint("Connect to \"%s\", or set killswitch.database = '%s' and restart the server.",
						 ks_database, dbname)));
	PG_RETURN_VOID();
}
