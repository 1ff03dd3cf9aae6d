/*
 * audit.c — the watcher's eye on the fleet's escape routes (ARCHITECTURE §6).
 * killswitch.audit() (SQL, in the install script) lists agent roles that
 * hold powers getting around the switch; ks_audit() shows it, ks_status()
 * counts it, CREATE EXTENSION warns about it.  Here the watcher runs it
 * every minute, and within a second of a change to roles, memberships or
 * functions (a syscache invalidation), and logs a WARNING for each finding
 * it has not logged before — so a power granted to an agent mid-incident
 * is in the log at once, and an unchanged finding is not repeated every
 * minute.
 *
 * ks_status() counts the findings through killswitch.audit_findings(),
 * memoised in each session: killswitch.audit() reads every agent role's
 * memberships and privileges (about 1.5 s with 10,000 agent roles on an
 * assert build), and a metrics exporter asks at every scrape.  The count is
 * taken again after any change this session hears of to what the audit
 * reads — the invalidations the watcher audits on — and at least every
 * KS_AUDIT_COUNT_VALID_MS, for a search_path set with ALTER ROLE or ALTER
 * DATABASE, which invalidates nothing.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgstat.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "audit.h"
#include "worker.h"

/* How often to take in catalog changes, and to audit regardless. */
#define KS_AUDIT_LOOK_MS 1000
#define KS_AUDIT_EVERY_MS 60000
/* How long a session's count of findings stands without an invalidation. */
#define KS_AUDIT_COUNT_VALID_MS 60000

PG_FUNCTION_INFO_V1(ks_audit_findings);

static bool callbacks_registered = false;
static bool catalog_changed = true;
/* Bumped by every invalidation the audit cares about. */
static uint64 catalog_changes = 0;

/* This session's count of findings, and what it was taken after. */
static bool count_taken = false;
static int64 count_memo = 0;
static uint64 count_changes = 0;
static TimestampTz count_at = 0;
static TimestampTz last_look = 0;
static TimestampTz last_audit = 0;

/* The findings logged so far ("role\npower\ndetail"), in their own context. */
static MemoryContext known_cxt = NULL;
static List *known = NIL;

/* Syscache callback: roles, memberships, functions or schemas changed. */
static void
catalog_changed_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	catalog_changed = true;
	catalog_changes++;
}

/* Relcache callback: a table changed (a trigger, a rule, a grant). */
static void
relation_changed_cb(Datum arg, Oid relid)
{
	catalog_changed = true;
	catalog_changes++;
}

/* Hear of changes to what the audit reads, once per process. */
static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	CacheRegisterSyscacheCallback(AUTHOID, catalog_changed_cb, (Datum) 0);
	/* one cache of pg_auth_members hears of every change to it */
	CacheRegisterSyscacheCallback(AUTHMEMMEMROLE, catalog_changed_cb, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, catalog_changed_cb, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, catalog_changed_cb, (Datum) 0);
	CacheRegisterRelcacheCallback(relation_changed_cb, (Datum) 0);
	callbacks_registered = true;
}

/* Is a finding among those already logged? */
static bool
is_known(const char *finding)
{
	ListCell   *lc;

	foreach(lc, known)
		if (strcmp((const char *) lfirst(lc), finding) == 0)
			return true;
	return false;
}

/* Run killswitch.audit(); WARNING for each new finding; remember them all. */
static void
audit_now(void)
{
	/* under the transaction until done, so that an error frees it */
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "killswitch audit",
											  ALLOCSET_SMALL_SIZES);
	List	   *found = NIL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT role::text, power, detail FROM killswitch.audit()", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run killswitch.audit()");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *role = SPI_getvalue(row, desc, 1);
		char	   *power = SPI_getvalue(row, desc, 2);
		char	   *detail = SPI_getvalue(row, desc, 3);
		char	   *finding = psprintf("%s\n%s\n%s", role, power, detail);
		MemoryContext old;

		if (!is_known(finding))
			ereport(WARNING,
					(errmsg("agent role \"%s\" holds %s, which gets around the kill switch",
							role, power),
					 errdetail("What %s allows: %s.", power, detail),
					 errhint("SELECT * FROM ks_audit() lists every such power; revoke it from the fleet.")));
		old = MemoryContextSwitchTo(cxt);
		found = lappend(found, pstrdup(finding));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();

	if (known_cxt != NULL)
		MemoryContextDelete(known_cxt);
	MemoryContextSetParent(cxt, TopMemoryContext);
	known_cxt = cxt;
	known = found;
}

/*
 * From the watcher's loop: at most once a second, take in catalog changes
 * (a transaction start processes invalidations), and — once the extension,
 * and so killswitch.audit(), exists — audit when they touched roles,
 * memberships, functions, schemas or tables, or a minute has passed (a
 * search_path set with ALTER ROLE or ALTER DATABASE invalidates nothing).
 * Errors are logged and the loop goes on: the audit only reports.
 */
void
ks_audit_watch(void)
{
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext ctx = CurrentMemoryContext;

	if (!TimestampDifferenceExceeds(last_look, now, KS_AUDIT_LOOK_MS))
		return;
	last_look = now;
	register_callbacks();

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (OidIsValid(get_extension_oid("killswitch", true)) &&
			(catalog_changed || TimestampDifferenceExceeds(last_audit, now, KS_AUDIT_EVERY_MS)))
		{
			catalog_changed = false;
			last_audit = now;
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, "auditing the agent roles' powers");
			audit_now();
			PopActiveSnapshot();
			pgstat_report_activity(STATE_IDLE, NULL);
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ks_watcher_survive_error(ctx);
	}
	PG_END_TRY();
}

/* Count the rows of killswitch.audit() now, in the caller's snapshot. */
static int64
count_findings(void)
{
	bool		isnull;
	int64		n;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT count(*) FROM killswitch.audit()", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not count the rows of killswitch.audit()");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return n;
}

/*
 * Does this session's count still stand?  Taken since the last change it
 * has heard of (the invalidations others' commits sent are taken in first)
 * and within KS_AUDIT_COUNT_VALID_MS.
 */
static bool
count_stands(TimestampTz now)
{
	AcceptInvalidationMessages();
	return count_taken && count_changes == catalog_changes &&
		!TimestampDifferenceExceeds(count_at, now, KS_AUDIT_COUNT_VALID_MS);
}

/*
 * SQL killswitch.audit_findings(): the rows of killswitch.audit(), counted
 * (for ks_status()), memoised in the session as the file's header says —
 * but not a count taken in a transaction snapshot (REPEATABLE READ,
 * SERIALIZABLE), whose view of the catalogs later transactions do not
 * share.
 */
Datum
ks_audit_findings(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		before;
	int64		n;

	register_callbacks();
	if (count_stands(now))
		PG_RETURN_INT64(count_memo);
	/* a change heard while counting leaves the count to be taken again */
	before = catalog_changes;
	n = count_findings();
	if (!IsolationUsesXactSnapshot())
	{
		count_taken = true;
		count_memo = n;
		count_changes = before;
		count_at = now;
	}
	PG_RETURN_INT64(n);
}
