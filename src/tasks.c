/*
 * tasks.c — the critical tasks (killswitch.critical_tasks), who may claim
 * them (killswitch.task_grants), and the reference library's task rules:
 * which task may run in which mode, and the result shape
 * {allowed, action, reason | note} with its strings.
 *
 * Every path reads one list, the shared copy (lists.c): ks_check_task(),
 * ks_guard() and hard enforcement in every database.  It is rebuilt by the
 * transaction that changes either table, before its commit, under a lock
 * that orders such transactions, and swapped in at its commit; a PREPAREd
 * change is applied by the watcher once committed, and until then the
 * list counts as stale (fail closed).
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "lists.h"
#include "names.h"
#include "owner.h"
#include "state.h"
#include "store.h"
#include "tasks.h"

PG_FUNCTION_INFO_V1(ks_critical_tasks_changed);
PG_FUNCTION_INFO_V1(ks_refused_claims_sql);

/* The tasks, each with the roles granted it; sorted in C (lists.c). */
#define CRITICAL_LIST_SQL \
	"SELECT c.task, coalesce((SELECT pg_catalog.array_agg(g.grantee::oid)" \
	"  FROM killswitch.task_grants g WHERE g.task = c.task), '{}')" \
	" FROM killswitch.critical_tasks c"

/* This transaction changed the tables; the list it built before commit. */
static bool critical_changed = false;
static bool critical_gone = false;	/* the tables went (DROP EXTENSION) */
static dsa_pointer critical_built = InvalidDsaPointer;
static TransactionId *critical_over = NULL;
static int	critical_nover = 0;

/* OID of killswitch.critical_tasks here, or InvalidOid without the extension. */
static Oid
critical_relid(void)
{
	Oid			nsp = get_namespace_oid(KS_SCHEMA, true);

	return OidIsValid(nsp) ? get_relname_relid(KS_CRITICAL_TABLE, nsp) : InvalidOid;
}

/*
 * Read both tables with a snapshot taken now (so a change that committed
 * before, and this transaction's own, are seen whatever the isolation
 * level) and build the list block.  *over: the prepared changes that were
 * over before the snapshot.
 */
static dsa_pointer
build_critical_list(TransactionId **over, int *nover)
{
	KsOwnerContext owner;
	KsListItem *items;
	int			n;
	dsa_pointer block;
	MemoryContext cxt = CurrentMemoryContext;

	*over = ks_list_prepared_over(nover);
	PushActiveSnapshot(GetLatestSnapshot());
	ks_owner_begin(&owner);
	if (SPI_execute(CRITICAL_LIST_SQL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.critical_tasks");
	n = (int) SPI_processed;
	items = MemoryContextAlloc(cxt, sizeof(KsListItem) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		task = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		ArrayType  *roles = DatumGetArrayTypeP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		Datum	   *elems;
		int			nelems;

		items[i].name = MemoryContextStrdup(cxt, TextDatumGetCString(task));
		deconstruct_array(roles, OIDOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, NULL, &nelems);
		items[i].nroles = nelems;
		items[i].roles = MemoryContextAlloc(cxt, sizeof(Oid) * Max(nelems, 1));
		for (int r = 0; r < nelems; r++)
			items[i].roles[r] = DatumGetObjectId(elems[r]);
	}
	ks_owner_end(&owner);
	PopActiveSnapshot();
	block = ks_list_build(items, n, ERROR);
	return block;
}

/*
 * Load the list into shared memory (the watcher, and backends of
 * killswitch.database that find it unknown), in a transaction.  Published
 * only if no change committed meanwhile (its own build is newer).  first:
 * after a start, also count every prepared transaction of this database
 * as a possible change (what was registered before a restart is gone).
 */
void
ks_load_critical_list(bool first)
{
	uint64		version = ks_list_version(KS_LIST_CRITICAL);
	TransactionId *over;
	int			nover;
	dsa_pointer block;

	if (first && max_prepared_xacts > 0)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* a backend's own search_path: the operator named too (ARCHITECTURE §7) */
		if (SPI_execute("SELECT transaction FROM pg_catalog.pg_prepared_xacts "
						"WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
						true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not list the prepared transactions");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			TransactionId xid = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc, 1, &isnull));

			ks_list_register_prepared(xid);
		}
		SPI_finish();
	}
	block = build_critical_list(&over, &nover);
	(void) ks_list_swap(KS_LIST_CRITICAL, block, &version, over, nover);
}

/* Does the watcher have to (re)load the list: never loaded, or a prepared change over? */
bool
ks_critical_list_due(void)
{
	int			nover;

	if (!ks_list_loaded(KS_LIST_CRITICAL))
		return true;
	pfree(ks_list_prepared_over(&nover));
	return nover > 0;
}

/*
 * On a standby no transaction of this server changes the tables (they
 * change by WAL replay) and no watcher runs: read the table itself, the
 * one truth the shared list copies.  Only the task rules need it there;
 * nothing can write on a standby.
 */
static KsListAnswer
standby_lookup(const char *task)
{
	KsOwnerContext owner;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(task)};
	bool		found;

	ks_owner_begin(&owner);
	if (SPI_execute_with_args("SELECT 1 FROM killswitch.critical_tasks WHERE task = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.critical_tasks");
	found = SPI_processed > 0;
	ks_owner_end(&owner);
	return found ? KS_LIST_PRESENT : KS_LIST_ABSENT;
}

/*
 * The list's answer for a task; KS_LIST_UNKNOWN (fail closed) when it is
 * not loaded or stale.  In killswitch.database, with a transaction, an
 * unknown list is loaded on the spot; elsewhere the watcher is woken.
 */
static KsListAnswer
lookup_critical(const char *task, Oid **roles, int *nroles)
{
	KsListAnswer answer;

	if (RecoveryInProgress() && roles == NULL && IsTransactionState() &&
		OidIsValid(critical_relid()))
		return standby_lookup(task);
	answer = ks_list_lookup(KS_LIST_CRITICAL, task, roles, nroles);
	if (answer != KS_LIST_UNKNOWN)
		return answer;
	ks_wake_watcher();
	if (IsTransactionState() && !IsInParallelMode() && !RecoveryInProgress() &&
		OidIsValid(critical_relid()))
	{
		ks_load_critical_list(!ks_list_loaded(KS_LIST_CRITICAL));
		answer = ks_list_lookup(KS_LIST_CRITICAL, task, roles, nroles);
	}
	return answer;
}

/* Is task one of the critical tasks?  (Not while the list cannot be trusted.) */
bool
ks_task_is_critical(const char *task)
{
	return lookup_critical(task, NULL, NULL) == KS_LIST_PRESENT;
}

/*
 * Judge the session's claim to a task for hard enforcement.  A critical
 * task exempts the session only when granted to its session user (the role
 * it logged in as, which neither SET ROLE nor a SECURITY DEFINER function
 * changes) or to a role that one is a member of, directly or through other
 * roles, INHERIT or not (a member may SET ROLE to it); being superuser
 * counts for nothing.  Grants are per role, so a setting leaked by a pooler
 * exempts only roles that hold the grant anyway.
 */
KsClaim
ks_judge_claim(const char *task)
{
	Oid		   *roles;
	int			nroles;
	Oid			session = GetSessionUserId();

	if (task == NULL || task[0] == '\0' ||
		lookup_critical(task, &roles, &nroles) != KS_LIST_PRESENT)
		return KS_CLAIM_NONE;
	for (int i = 0; i < nroles; i++)
		if (is_member_of_role_nosuper(session, roles[i]))
			return KS_CLAIM_GRANTED;
	return KS_CLAIM_UNGRANTED;
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
	/*
	 * The reason of the reference library's result (and its exception's
	 * text), which ks_check_task() returns as data; the error that
	 * ks_assert_task() raises says it in PostgreSQL's style (api.c).
	 */
	v.reason = psprintf("Kill switch engaged (%s): %s %s",
						ks_mode_file_names[mode], task,
						mode == KS_HALT_NONCRITICAL ? "queued" : "blocked");
	return v;
}

/*
 * Trigger on killswitch.critical_tasks and killswitch.task_grants: this
 * transaction rebuilds the shared list before it commits.  The lock (on the
 * list as an object, not on the tables, so that readers and the writes
 * themselves never wait for it) orders such transactions, so each builds on
 * what the one before committed; a PREPAREd one holds it until COMMIT or
 * ROLLBACK PREPARED.
 */
Datum
ks_critical_tasks_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "ks_critical_tasks_changed() must be called as a trigger");
	ks_require_loaded();
	LockDatabaseObject(RelationRelationId, critical_relid(), 0, ExclusiveLock);
	critical_changed = true;
	return PointerGetDatum(NULL);
}

/* Forget this transaction's build. */
static void
reset_critical_build(bool discard)
{
	if (discard)
		ks_list_discard(critical_built);
	critical_built = InvalidDsaPointer;
	critical_over = NULL;		/* TopTransactionContext, gone with it */
	critical_nover = 0;
	critical_changed = false;
	critical_gone = false;
}

/*
 * Transaction callback: build before commit (an error here aborts the
 * change, nothing published), swap in at commit, register a PREPARE.
 */
static void
tasks_xact_callback(XactEvent event, void *arg)
{
	if (!critical_changed)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			{
				Oid			relid = critical_relid();
				MemoryContext old;

				critical_gone = !OidIsValid(relid);
				if (critical_gone)
					break;
				/* again: a savepoint rolled back may have released it */
				LockDatabaseObject(RelationRelationId, relid, 0, ExclusiveLock);
				/* make the last statement's own changes visible to the read */
				CommandCounterIncrement();
				old = MemoryContextSwitchTo(TopTransactionContext);
				critical_built = build_critical_list(&critical_over, &critical_nover);
				MemoryContextSwitchTo(old);
			}
			break;
		case XACT_EVENT_COMMIT:
			/* nobody else could build meanwhile: we hold the lock */
			if (critical_gone)
				ks_list_unload(KS_LIST_CRITICAL);
			else
				(void) ks_list_swap(KS_LIST_CRITICAL, critical_built, NULL,
									critical_over, critical_nover);
			reset_critical_build(false);
			break;
		case XACT_EVENT_PRE_PREPARE:
			ks_list_register_prepared(GetTopTransactionId());
			break;
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			reset_critical_build(true);
			break;
		default:
			break;
	}
}

/* Register the transaction callback; once per process, from _PG_init. */
void
ks_tasks_init(void)
{
	RegisterXactCallback(tasks_xact_callback, NULL);
}

/* SQL: how many claims to a critical task were refused since the server started. */
Datum
ks_refused_claims_sql(PG_FUNCTION_ARGS)
{
	ks_require_loaded();
	PG_RETURN_INT64((int64) ks_refused_claims());
}
