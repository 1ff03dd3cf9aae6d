/*
 * ks_test_hooks.c — a module for the TAP tests only, never installed: it
 * forces interleavings that the tests must not hope for.  Loaded by its
 * absolute path from the build tree, BEFORE killswitch in
 * shared_preload_libraries, so that its transaction callback is registered
 * first and therefore runs last (PostgreSQL calls the newest first): after
 * every check and write the kill switch makes at XACT_EVENT_PRE_COMMIT, and
 * before the commit record.
 *
 *   ks_test.commit_delay_ms   (any user, per session) sleep this long at
 *                             pre-commit in a transaction that holds a
 *                             transaction id: widens the window between a
 *                             commit's last check and its commit record
 *                             (TAP 164: agents; TAP 165: a release;
 *                             TAP 174: past the raiser's wait).
 *   ks_test.commit_prepared_delay_ms
 *                             (any user, per session) sleep this long
 *                             before COMMIT PREPARED runs: after the kill
 *                             switch's check of the statement (its
 *                             ProcessUtility hook, installed later, runs
 *                             first) and before the prepared transaction's
 *                             commit record (TAP 174).
 *
 * It works the same against any version of killswitch: it touches nothing
 * of it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static int	commit_delay_ms = 0;
static int	commit_prepared_delay_ms = 0;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static void
delay_commit(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT && commit_delay_ms > 0 &&
		TransactionIdIsValid(GetTopTransactionIdIfAny()))
		pg_usleep(commit_delay_ms * 1000L);
}

static void
delay_commit_prepared(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (commit_prepared_delay_ms > 0 && IsA(pstmt->utilityStmt, TransactionStmt) &&
		((TransactionStmt *) pstmt->utilityStmt)->kind == TRANS_STMT_COMMIT_PREPARED)
		pg_usleep(commit_prepared_delay_ms * 1000L);
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

void
_PG_init(void)
{
	DefineCustomIntVariable("ks_test.commit_delay_ms",
							"Sleep this long at pre-commit in a transaction with an id (tests only).",
							NULL, &commit_delay_ms, 0, 0, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("ks_test.commit_prepared_delay_ms",
							"Sleep this long before COMMIT PREPARED runs (tests only).",
							NULL, &commit_prepared_delay_ms, 0, 0, 60000,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	RegisterXactCallback(delay_commit, NULL);
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = delay_commit_prepared;
}
