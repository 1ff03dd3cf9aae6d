/*
 * tasks.c — the critical tasks (killswitch.critical_tasks) and the
 * reference library's task rules: which task may run in which mode, and
 * the result shape {allowed, action, reason | note} with its strings.
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "catalog/namespace.h"

#include "killswitch.h"

PG_FUNCTION_INFO_V1(ks_critical_tasks_changed);

/* This backend's copy of the table, rebuilt after it changes. */
static List *critical_tasks = NIL;
static bool critical_valid = false;
static Oid	critical_relid = InvalidOid;

/* Relcache callback: the table changed (or everything was invalidated). */
static void
critical_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == critical_relid)
		critical_valid = false;
}

/* Register the invalidation callback; once per process, from _PG_init. */
void
ks_tasks_init(void)
{
	CacheRegisterRelcacheCallback(critical_inval, (Datum) 0);
}

/* Load the table into CacheMemoryContext. */
static void
load_critical_tasks(void)
{
	KsOwnerContext owner;
	MemoryContext oldcxt;
	List	   *tasks = NIL;

	ks_owner_begin(&owner);
	if (SPI_execute("SELECT task FROM killswitch.critical_tasks", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.critical_tasks");
	oldcxt = MemoryContextSwitchTo(CacheMemoryContext);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *task = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		if (task)
			tasks = lappend(tasks, pstrdup(task));
	}
	MemoryContextSwitchTo(oldcxt);
	ks_owner_end(&owner);

	list_free_deep(critical_tasks);
	critical_tasks = tasks;
	critical_relid = get_relname_relid(KS_CRITICAL_TABLE, get_namespace_oid(KS_SCHEMA, false));
	critical_valid = true;
}

/* Is task one of the critical tasks? */
bool
ks_task_is_critical(const char *task)
{
	ListCell   *lc;

	if (!critical_valid)
		load_critical_tasks();
	foreach(lc, critical_tasks)
		if (strcmp((const char *) lfirst(lc), task) == 0)
			return true;
	return false;
}

/*
 * The reference rules (check_task_allowed): disengaged allows everything;
 * halt_noncritical queues all but critical tasks; halt_all blocks all but
 * critical tasks; emergency blocks everything.
 */
KsTaskVerdict
ks_task_verdict(KsMode mode, const char *task)
{
	KsTaskVerdict v;
	bool		critical = mode != KS_DISENGAGED && mode != KS_EMERGENCY &&
		ks_task_is_critical(task);

	memset(&v, 0, sizeof(v));
	v.allowed = true;
	v.action = "allow";
	if (mode == KS_DISENGAGED)
		return v;
	if (critical)
	{
		v.note = mode == KS_HALT_NONCRITICAL ? "critical task exempted" : "critical only";
		return v;
	}
	v.allowed = false;
	v.action = mode == KS_HALT_NONCRITICAL ? "queue" : "block";
	v.reason = psprintf("Kill switch engaged (%s): %s %s",
						ks_mode_file_names[mode], task,
						mode == KS_HALT_NONCRITICAL ? "queued" : "blocked");
	return v;
}

/* Trigger on killswitch.critical_tasks: tell every backend to reload. */
Datum
ks_critical_tasks_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "ks_critical_tasks_changed() must be called as a trigger");
	/* transactional: delivered to other backends when this commits */
	CacheInvalidateRelcache(trigdata->tg_relation);
	/* and the copy in shared memory, which enforcement reads, is reloaded */
	ks_critical_tasks_mark_changed();
	return PointerGetDatum(NULL);
}

/* Copy killswitch.critical_tasks into shared memory (the watcher, in a transaction). */
void
ks_load_shared_critical_tasks(void)
{
	int			n;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT task FROM killswitch.critical_tasks ORDER BY task", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.critical_tasks");
	n = Min((int) SPI_processed, KS_MAX_CRITICAL);
	SpinLockAcquire(&ks_shared->mutex);
	for (int i = 0; i < n; i++)
		strlcpy(ks_shared->critical[i],
				SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1), NAMEDATALEN);
	ks_shared->ncritical = n;
	ks_shared->critical_reload = false;
	SpinLockRelease(&ks_shared->mutex);
	SPI_finish();
}
