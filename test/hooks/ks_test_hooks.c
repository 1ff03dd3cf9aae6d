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

#include <unistd.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "postmaster/bgworker.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/resowner.h"

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

/* Is this process the kill switch's watcher? */
static bool
am_watcher(void)
{
	return MyBackendType == B_BG_WORKER && MyBgworkerEntry != NULL &&
		strcmp(MyBgworkerEntry->bgw_type, "killswitch watcher") == 0;
}

/*
 * After the commit of a watcher's transaction that holds an id, its locks
 * gone: wait while ks_test_pause_after_commit exists.
 */
static void
pause_after_commit(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	static bool paused = false;	/* once per commit: called for every resource owner */
	char		flag[MAXPGPATH];
	char		shown[MAXPGPATH];
	FILE	   *f;

	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isCommit || !isTopLevel)
	{
		paused = false;
		return;
	}
	if (paused || !am_watcher() || !TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	snprintf(flag, sizeof(flag), "%s/ks_test_pause_after_commit", DataDir);
	if (access(flag, F_OK) != 0)
		return;
	paused = true;
	snprintf(shown, sizeof(shown), "%s/ks_test_paused_after_commit", DataDir);
	f = fopen(shown, "w");
	if (f)
		fclose(f);
	for (int i = 0; i < 6000 && access(flag, F_OK) == 0; i++)
		pg_usleep(10000L);
	unlink(shown);
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
	RegisterResourceReleaseCallback(pause_after_commit, NULL);
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = delay_commit_prepared;
}
