/*
 * guard.c — ks_guard(), the data guard (ARCHITECTURE §8.2): a BEFORE INSERT OR
 * UPDATE row trigger on a task table that refuses rows while the kill switch
 * is engaged.  Arguments, all optional:
 *   1. the task-type column: rows whose task is critical are let through
 *      where the reference rules allow (halt_noncritical, halt_all);
 *   2. a status column and 3. a value: in halt_noncritical, non-critical
 *      rows are held (accepted with the status set to the value) instead of
 *      refused, so no task is lost.
 * Disengaged, a row costs one atomic read.
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "api.h"
#include "scope.h"
#include "state.h"
#include "store.h"
#include "tasks.h"

PG_FUNCTION_INFO_V1(ks_guard);

/* The trigger's arguments, resolved once per statement. */
typedef struct KsGuardConfig
{
	int			task_attnum;	/* 0: no task column */
	int			status_attnum;	/* 0: refuse rather than hold */
	Datum		hold_value;
} KsGuardConfig;

/* Column number of a named column, or a clear error. */
static int
guard_column(Relation rel, const char *name)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("ks_guard: column \"%s\" does not exist in table \"%s\"",
						name, RelationGetRelationName(rel))));
	return attnum;
}

/* Check the trigger's definition and arguments. */
static KsGuardConfig *
guard_config(FunctionCallInfo fcinfo, TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	Relation	rel = td->tg_relation;
	KsGuardConfig *cfg = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(KsGuardConfig));

	if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ks_guard must be a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger")));
	if (tg->tgnargs != 0 && tg->tgnargs != 1 && tg->tgnargs != 3)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ks_guard takes no arguments, a task column, or a task column, a status column and a hold value")));
	if (tg->tgnargs >= 1 && tg->tgargs[0][0] != '\0')
		cfg->task_attnum = guard_column(rel, tg->tgargs[0]);
	if (tg->tgnargs == 3)
	{
		Oid			typoid,
					typinput,
					typioparam;

		cfg->status_attnum = guard_column(rel, tg->tgargs[1]);
		typoid = TupleDescAttr(RelationGetDescr(rel), cfg->status_attnum - 1)->atttypid;
		getTypeInputInfo(typoid, &typinput, &typioparam);
		/* convert once; a bad value is an error now, not during an incident */
		cfg->hold_value = OidInputFunctionCall(typinput, tg->tgargs[2], typioparam, -1);
		cfg->hold_value = datumCopy(cfg->hold_value,
									TupleDescAttr(RelationGetDescr(rel), cfg->status_attnum - 1)->attbyval,
									TupleDescAttr(RelationGetDescr(rel), cfg->status_attnum - 1)->attlen);
	}
	return cfg;
}

/* The trigger. */
Datum
ks_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	KsGuardConfig *cfg;
	HeapTuple	row;
	KsMode		mode;
	char	   *task = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ks_guard() must be called as a trigger")));
	if (unlikely(ks_shared == NULL))
		ks_require_loaded();

	/* checked once per statement, so a misconfiguration shows while disengaged */
	if (fcinfo->flinfo->fn_extra == NULL)
		fcinfo->flinfo->fn_extra = guard_config(fcinfo, td);
	cfg = (KsGuardConfig *) fcinfo->flinfo->fn_extra;

	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	mode = ks_session_mode();
	if (likely(mode == KS_DISENGAGED))
		return PointerGetDatum(row);

	if (cfg->task_attnum > 0)
		task = SPI_getvalue(row, RelationGetDescr(td->tg_relation), cfg->task_attnum);
	if (task != NULL && ks_task_verdict(mode, task).allowed)
		return PointerGetDatum(row);

	if (mode == KS_HALT_NONCRITICAL && cfg->status_attnum > 0)
	{
		int			cols[1] = {cfg->status_attnum};
		Datum		vals[1] = {cfg->hold_value};
		bool		nulls[1] = {false};

		return PointerGetDatum(heap_modify_tuple_by_cols(row, RelationGetDescr(td->tg_relation),
														 1, cols, vals, nulls));
	}
	if (task != NULL)
		ks_refuse_task(mode, KS_TASK_ROW_REFUSED, task);
	ks_refuse_task(mode, KS_TASK_TABLE_ROW_REFUSED, RelationGetRelationName(td->tg_relation));
}
