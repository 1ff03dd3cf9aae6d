/*
 * enforce.c — hard enforcement (ARCHITECTURE §8.3): members of killswitch_agent
 * are stopped by the server itself, in every database, whether they check
 * or not.  Decided when something runs, not when it is parsed, so plans
 * cached by PL/pgSQL and cursors declared before the halt cannot slip
 * through:
 *
 *   halt_noncritical,  writes refused (unless the session's killswitch.task
 *   halt_all           is a critical task granted to its role, tasks.c; an
 *                      ungranted claim is refused and recorded):
 *                      ExecutorStart and ExecutorRun
 *                      (statements, EXPLAIN ANALYZE of CREATE TABLE AS,
 *                      FETCH from a FOR UPDATE cursor), ProcessUtility
 *                      (DDL, COPY to or from files, PREPARE TRANSACTION,
 *                      COMMIT PREPARED, ...), every function that is not
 *                      known to change nothing (deny by default,
 *                      functions.c, running.c), and a backstop at commit: a
 *                      transaction that holds a transaction id wrote
 *                      something, whatever the path, and does not commit;
 *   emergency          nothing of an agent's runs: every statement refused
 *                      with an ERROR (KS001) at parse analysis, before the
 *                      planner folds any of it, and again at planning (a
 *                      statement prepared earlier) and execution; every
 *                      function call, the fast path included, refused
 *                      (functions.c).  The watcher ends the sessions that
 *                      were running something (emergency.c).  Logins stay
 *                      open, so that a pooler in front of the agents keeps
 *                      working and relays KS001 instead of hanging — unless
 *                      killswitch.refuse_agent_logins asks otherwise
 *                      (logins.c).
 *
 * The extension's own writes (an agent operator's ks_engage) are recognised
 * by what they are (owner.c), never by a flag; an agent's writing
 * executions are counted while they run, so that our own work never shares
 * its transaction ids with them.  Non-agents pay one atomic read per
 * statement while disengaged.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "optimizer/planner.h"
#include "parser/analyze.h"
#include "storage/ipc.h"
#include "tcop/dest.h"
#include "tcop/utility.h"

#include "agents.h"
#include "compat.h"
#include "enforce.h"
#include "functions.h"
#include "interlock.h"
#include "lists.h"
#include "logins.h"
#include "names.h"
#include "owner.h"
#include "rights.h"
#include "running.h"
#include "scope.h"
#include "state.h"
#include "store.h"
#include "tasks.h"

/* killswitch.task: the task this session claims to be doing. */
char	   *ks_session_task = NULL;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze = NULL;
static planner_hook_type prev_planner = NULL;

/* The current mode, or disengaged when the library is not preloaded. */
static inline KsMode
mode_now(void)
{
	return ks_shared ? ks_session_mode() : KS_DISENGAGED;
}

/*
 * The agent to name in a refusal: the session user if it is one, else the
 * role that logged in (SET SESSION AUTHORIZATION hides nothing), else the
 * current role.
 */
const char *
ks_agent_name(void)
{
	Oid			session = GetSessionUserId();
	Oid			login = GetAuthenticatedUserId();
	Oid			who = ks_role_is_agent(session) ? session
		: ks_role_is_agent(login) ? login : GetUserId();

	return GetUserNameFromId(who, false);
}

/*
 * The primary message of an agent's refusal: one whole message for each
 * thing refused, so that a translator sees each; name is the command or
 * the function where the message names one.
 */
static int
refused_message(KsRefused what, const char *mode, const char *who, const char *name)
{
	switch (what)
	{
		case KS_REFUSED_STATEMENT:
			return errmsg("kill switch engaged (%s): any statement by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_WRITE:
			return errmsg("kill switch engaged (%s): a write by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_COMMAND:
			return errmsg("kill switch engaged (%s): %s by agent \"%s\" refused",
						  mode, name, who);
		case KS_REFUSED_COPY_FROM_FILE:
			return errmsg("kill switch engaged (%s): COPY FROM a file by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_COPY_TO_FILE:
			return errmsg("kill switch engaged (%s): COPY TO a file by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_CALL:
			return errmsg("kill switch engaged (%s): %s() by agent \"%s\" refused",
						  mode, name, who);
		case KS_REFUSED_COMMIT:
			return errmsg("kill switch engaged (%s): the commit of a transaction that wrote by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_PREPARE:
			return errmsg("kill switch engaged (%s): PREPARE TRANSACTION of a transaction that wrote by agent \"%s\" refused",
						  mode, who);
		case KS_REFUSED_AFTER_BUILTIN:
			return errmsg("kill switch engaged (%s): the rest of a transaction that called %s() before the halt by agent \"%s\" refused",
						  mode, name, who);
	}
	return 0;					/* keep the compiler quiet */
}

/*
 * Refuse an agent's action with KS001: the mode and what was refused, who
 * set the mode and why, who may release.
 */
void
ks_refuse_agent(KsMode mode, KsRefused what, const char *name)
{
	char		detail[512];
	const char *who = ks_agent_name();

	if (!ks_scope_refusal_detail(mode, detail, sizeof(detail)))
		ks_refusal_detail(detail, sizeof(detail));
	ereport(ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 refused_message(what, ks_mode_sql_names[mode], who, name),
			 errdetail_internal("%s", detail),
			 mode == KS_EMERGENCY
			 ? errhint("Every statement of an agent is refused until a member of %s releases the kill switch.",
					   KS_ROLE_ADMIN)
			 : errhint("A member of %s may release it with ks_disengage().", KS_ROLE_ADMIN)));
}

/*
 * Refuse a claim to a critical task not granted to the session's role, and
 * record it where an auditor sees it even when the agent catches the error:
 * a LOG line (server only) and the count in ks_status().
 */
static void
refuse_claim(KsMode mode, const char *task)
{
	const char *who = GetUserNameFromId(GetSessionUserId(), false);

	ks_count_refused_claim();
	ereport(LOG_SERVER_ONLY,
			(errmsg("refused the claim of session user \"%s\" (pid %d) to critical task \"%s\" in %s: not granted",
					who, MyProcPid, task, ks_mode_sql_names[mode])));
	ereport(ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 errmsg("kill switch engaged (%s): critical task \"%s\" is not granted to role \"%s\"",
					ks_mode_sql_names[mode], task, who),
			 errdetail("Setting killswitch.task exempts an agent from the halt only for a task an administrator granted to its role."),
			 errhint("A member of %s may grant it: INSERT INTO killswitch.task_grants (task, grantee) VALUES (...).",
					 KS_ROLE_ADMIN)));
}

/*
 * May the session do what would write, in this (engaged) mode?  Non-agents
 * and the extension's own work may; an agent only for a critical task
 * granted to its role, and never in emergency.  The agent check is cached.
 */
bool
ks_agent_may_write(KsMode mode)
{
	if (!ks_session_is_agent() || ks_in_owner_region())
		return true;
	if (mode == KS_EMERGENCY)
		return false;
	switch (ks_judge_claim(ks_session_task))
	{
		case KS_CLAIM_GRANTED:
			return true;
		case KS_CLAIM_UNGRANTED:
			refuse_claim(mode, ks_session_task);
			break;
		case KS_CLAIM_NONE:
			break;
	}
	return false;
}

/*
 * Does this execution write (or lock rows)?  CREATE TABLE AS, SELECT INTO
 * and CREATE MATERIALIZED VIEW (also under EXPLAIN ANALYZE) run a SELECT
 * whose receiver fills a new relation.
 */
static bool
execution_writes(QueryDesc *queryDesc)
{
	CommandDest dest = queryDesc->dest ? queryDesc->dest->mydest : DestNone;

	return queryDesc->operation != CMD_SELECT ||
		queryDesc->plannedstmt->hasModifyingCTE ||
		queryDesc->plannedstmt->rowMarks != NIL ||
		dest == DestIntoRel || dest == DestTransientRel;
}

/*
 * Refuse an agent's execution that writes, any in emergency, and any in a
 * transaction that set up a call of a denied built-in before the halt
 * (running.c).
 */
static void
check_execution(QueryDesc *queryDesc, KsMode mode)
{
	if ((mode == KS_EMERGENCY || execution_writes(queryDesc)) && !ks_agent_may_write(mode))
		ks_refuse_agent(mode, mode == KS_EMERGENCY ? KS_REFUSED_STATEMENT : KS_REFUSED_WRITE, NULL);
	if (unlikely(ks_noted_running_builtin()) && !ks_agent_may_write(mode))
		ks_refuse_running_builtin(mode);
}

/*
 * Is this an agent's own execution that writes (not the extension's work
 * inside an owner region, which runs as the extension's owner)?  Counted
 * while it runs, so that an owner region that assigns transaction ids
 * meanwhile is refused (owner.c): the statement's rows would carry those
 * ids, and commit under the exemption meant for the extension's writes.
 */
static bool
agent_writing(QueryDesc *queryDesc, int eflags)
{
	return !(eflags & EXEC_FLAG_EXPLAIN_ONLY) && ks_shared != NULL &&
		execution_writes(queryDesc) && ks_session_is_agent() && !ks_in_owner_region();
}

/* ExecutorStart: refuse an agent's writes, and everything in emergency. */
static void
ks_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	KsMode		mode = mode_now();

	if (unlikely(mode != KS_DISENGAGED) && !(eflags & EXEC_FLAG_EXPLAIN_ONLY))
		check_execution(queryDesc, mode);
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	if (agent_writing(queryDesc, eflags))
		ks_agent_writing_began(queryDesc);
}

static void
run_executor(KS_EXECUTOR_RUN_PARAMS)
{
	if (prev_ExecutorRun)
		prev_ExecutorRun(KS_EXECUTOR_RUN_ARGS);
	else
		standard_ExecutorRun(KS_EXECUTOR_RUN_ARGS);
}

/*
 * Run the executor, reporting the halt's cancel as a refusal (running.c);
 * apart, so that the PG_TRY costs nothing on the usual path.
 */
static pg_noinline void
run_executor_reporting_halt(KS_EXECUTOR_RUN_PARAMS)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		run_executor(KS_EXECUTOR_RUN_ARGS);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		ks_rethrow_halt_cancel();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * ExecutorRun: the same again, for executions started before the halt and
 * run after it — a FETCH from a FOR UPDATE cursor declared earlier locks
 * rows at each run.  In a transaction that set up a denied built-in, the
 * halt's cancel is reported as a refusal.
 */
static void
ks_ExecutorRun(KS_EXECUTOR_RUN_PARAMS)
{
	KsMode		mode = mode_now();

	if (unlikely(mode != KS_DISENGAGED))
		check_execution(queryDesc, mode);
	if (unlikely(ks_noted_running_builtin()))
		run_executor_reporting_halt(KS_EXECUTOR_RUN_ARGS);
	else
		run_executor(KS_EXECUTOR_RUN_ARGS);
}

/* ExecutorEnd: an agent's writing execution is over (owner.c). */
static void
ks_ExecutorEnd(QueryDesc *queryDesc)
{
	ks_agent_writing_ended(queryDesc);
	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/*
 * Utility statements an agent may run while halted.  In every mode: ending
 * work (COMMIT — refused at commit if the transaction wrote —, ROLLBACK,
 * ROLLBACK PREPARED), dropping session state (DISCARD, DEALLOCATE, CLOSE,
 * UNLISTEN) and session settings (SET, RESET, SHOW: they lift nothing,
 * enforcement does not read them) — what a pooler sends when it hands a
 * server connection to a client, and drops the client when refused.  In
 * halt_noncritical and halt_all also reading, cursors, BEGIN and
 * savepoints, and COPY to the client.  Statements they contain (EXECUTE, CALL, DO, EXPLAIN
 * ANALYZE, COPY (query) TO, FETCH) are checked again by the executor.
 * Never: PREPARE TRANSACTION (it would keep the writes for later) and
 * COMMIT PREPARED (a transaction prepared before the halt).
 */
static bool
utility_allowed(Node *stmt, KsMode mode)
{
	switch (nodeTag(stmt))
	{
		case T_TransactionStmt:
			switch (((TransactionStmt *) stmt)->kind)
			{
				case TRANS_STMT_COMMIT:
				case TRANS_STMT_ROLLBACK:
				case TRANS_STMT_ROLLBACK_TO:
				case TRANS_STMT_RELEASE:
				case TRANS_STMT_ROLLBACK_PREPARED:
					return true;
				case TRANS_STMT_PREPARE:
				case TRANS_STMT_COMMIT_PREPARED:
					return false;
				default:
					return mode != KS_EMERGENCY;
			}
		case T_DiscardStmt:
		case T_DeallocateStmt:
		case T_ClosePortalStmt:
		case T_UnlistenStmt:
		case T_VariableSetStmt:
		case T_VariableShowStmt:
			return true;
		default:
			break;
	}
	if (mode == KS_EMERGENCY)
		return false;
	switch (nodeTag(stmt))
	{
		case T_ListenStmt:
		case T_DeclareCursorStmt:
		case T_FetchStmt:
		case T_PrepareStmt:
		case T_ExecuteStmt:
		case T_ExplainStmt:
		case T_CallStmt:
		case T_DoStmt:
			return true;
		case T_CopyStmt:
			/* COPY TO STDOUT only: a file or a program is a write */
			return !((CopyStmt *) stmt)->is_from && ((CopyStmt *) stmt)->filename == NULL;
		default:
			return false;
	}
}

/* Refuse a utility statement, named as the message names it. */
static void
refuse_utility(KsMode mode, Node *stmt)
{
	CopyStmt   *copy = IsA(stmt, CopyStmt) ? (CopyStmt *) stmt : NULL;

	if (mode == KS_EMERGENCY)
		ks_refuse_agent(mode, KS_REFUSED_STATEMENT, NULL);
	if (copy != NULL && copy->filename != NULL && copy->is_program)
		ks_refuse_agent(mode, KS_REFUSED_COMMAND,
						copy->is_from ? "COPY FROM PROGRAM" : "COPY TO PROGRAM");
	if (copy != NULL && copy->filename != NULL)
		ks_refuse_agent(mode, copy->is_from ? KS_REFUSED_COPY_FROM_FILE : KS_REFUSED_COPY_TO_FILE,
						NULL);
	ks_refuse_agent(mode, KS_REFUSED_COMMAND, GetCommandTagName(CreateCommandTag(stmt)));
}

/*
 * Refuse an agent's utility statement not allowed in this mode; in a
 * transaction that set up a denied built-in before the halt, anything but
 * ending the transaction and session settings.
 */
static void
check_utility(Node *stmt, KsMode mode)
{
	if (!utility_allowed(stmt, mode) && !ks_agent_may_write(mode))
		refuse_utility(mode, stmt);
	if (unlikely(ks_noted_running_builtin()) && !utility_allowed(stmt, KS_EMERGENCY) &&
		!ks_agent_may_write(mode))
		ks_refuse_running_builtin(mode);
}

static void
run_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* Run the utility statement, reporting the halt's cancel as a refusal (running.c). */
static pg_noinline void
run_utility_reporting_halt(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						   ProcessUtilityContext context, ParamListInfo params,
						   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		ks_rethrow_halt_cancel();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * An agent queues a notification (NOTIFY, pg_notify()): its transaction
 * takes its id now.  PostgreSQL gives a transaction that notifies its id
 * only in PreCommit_Notify(), after the XACT_EVENT_PRE_COMMIT callbacks,
 * so the backstop would take it for one that wrote nothing and a
 * notification queued before the halt would be delivered by a commit after
 * it.  With the id the backstop refuses that commit.  It costs nothing: the
 * commit would assign the same id.  Not in recovery, nor in parallel mode,
 * where PostgreSQL refuses the notification itself.
 */
void
ks_agent_notifies(void)
{
	if (!RecoveryInProgress() && !IsInParallelMode() && ks_session_is_agent())
		(void) GetTopTransactionId();
}

/* ProcessUtility: refuse an agent's DDL, COPY to or from files, LOAD, 2PC, ... */
static void
ks_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest,
				  QueryCompletion *qc)
{
	KsMode		mode = mode_now();

	/* an agent's COMMIT PREPARED writes a commit record: the interlock (interlock.c) */
	if (unlikely(IsA(pstmt->utilityStmt, TransactionStmt)) &&
		((TransactionStmt *) pstmt->utilityStmt)->kind == TRANS_STMT_COMMIT_PREPARED &&
		IsTransactionState() && ks_session_is_agent())
		mode = ks_commit_prepared_mode();
	/* outside a healthy transaction only ROLLBACK and the like can run */
	if (unlikely(mode != KS_DISENGAGED) && IsTransactionState())
		check_utility(pstmt->utilityStmt, mode);
	if (unlikely(IsA(pstmt->utilityStmt, NotifyStmt)) && ks_shared != NULL)
		ks_agent_notifies();
	if (unlikely(ks_noted_running_builtin()))
		run_utility_reporting_halt(pstmt, queryString, readOnlyTree, context, params,
								   queryEnv, dest, qc);
	else
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * Emergency, at parse analysis: refuse an agent's statement before the
 * planner can fold any of it (an IMMUTABLE function of the agent's, 1/0).
 * What an idle session and a pooler need stays open: ending the
 * transaction, session settings, dropping session state.
 */
static void
ks_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);
	if (unlikely(mode_now() == KS_EMERGENCY) &&
		!(query->commandType == CMD_UTILITY &&
		  utility_allowed(query->utilityStmt, KS_EMERGENCY)) &&
		IsTransactionState() && !ks_agent_may_write(KS_EMERGENCY))
		ks_refuse_agent(KS_EMERGENCY, KS_REFUSED_STATEMENT, NULL);
}

/*
 * Emergency, at planning: a statement analysed before the emergency (a
 * prepared statement bound now) is refused before it is planned.
 */
static PlannedStmt *
ks_planner(Query *parse, const char *query_string, int cursorOptions,
		   ParamListInfo boundParams)
{
	if (unlikely(mode_now() == KS_EMERGENCY) && !ks_agent_may_write(KS_EMERGENCY))
		ks_refuse_agent(KS_EMERGENCY, KS_REFUSED_STATEMENT, NULL);
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * The backstop, at commit and at PREPARE TRANSACTION: a transaction with a
 * transaction id wrote something (a row, a row lock, a large object, a temp
 * table, a queued notification, ...), by whatever path — also one nobody
 * listed, and also writes made before the halt.  A halted agent's such
 * transaction does not commit, unless every id it commits was first given
 * to our own work (owner.c).
 *
 * Except while the process exits: the only transaction that commits then
 * is PostgreSQL's own, dropping the session's temporary tables
 * (RemoveTempRelationsCallback() aborts whatever the session had open
 * first).  Refused, it would end the exit with a FATAL and leave the
 * tables behind — for every halted agent that had one, and for every
 * session the watcher ends in emergency.
 */
static void
check_commit(bool prepare)
{
	KsMode		mode;

	if (unlikely(proc_exit_inprogress))
		return;					/* not even into the interlock's slot */
	mode = ks_commit_mode();	/* the interlock (interlock.c) */
	if (likely(mode == KS_DISENGAGED))
		return;
	if (!TransactionIdIsValid(GetTopTransactionIdIfAny()) || ks_commit_is_own_work())
		return;
	if (!ks_agent_may_write(mode))
		ks_refuse_agent(mode, prepare ? KS_REFUSED_PREPARE : KS_REFUSED_COMMIT, NULL);
}

/*
 * The backstop again, in PostgreSQL's commit work after the pre-commit
 * callbacks (functions.c: each object ON COMMIT DROP drops).  Hundreds of
 * temporary tables stretch that work past the raiser's bounded wait
 * (ARCHITECTURE §5.2); a halt raised meanwhile refuses the commit there,
 * before its commit record, rather than let it follow the raiser's.
 */
void
ks_check_commit_tail(void)
{
	KsMode		mode = ks_session_mode();

	if (likely(mode == KS_DISENGAGED) || ks_commit_is_own_work())
		return;
	if (!ks_agent_may_write(mode))
		ks_refuse_agent(mode, KS_REFUSED_COMMIT, NULL);
}

/*
 * Transaction callback: the backstop; at the end, what owner.c and
 * running.c keep for the transaction goes (one callback for the three).
 */
static void
enforce_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			check_commit(false);
			break;
		case XACT_EVENT_PRE_PREPARE:
			check_commit(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			ks_owner_xact_end();
			ks_running_xact_end();
			break;
		default:
			break;
	}
}

/*
 * Install the hooks; from _PG_init while preloading.  Registered after the
 * kill switch's own transaction callback, so that the backstop runs first
 * and a refused commit writes no state file.
 */
void
ks_enforce_init(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = ks_ExecutorStart;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = ks_ExecutorRun;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = ks_ExecutorEnd;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ks_ProcessUtility;
	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = ks_post_parse_analyze;
	prev_planner = planner_hook;
	planner_hook = ks_planner;
	RegisterXactCallback(enforce_xact_callback, NULL);
	ks_owner_init();
	ks_functions_init();
	ks_running_init();
	ks_logins_init();
}
