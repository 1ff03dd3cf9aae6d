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
 *                      COMMIT PREPARED, ...), the functions that write
 *                      without a writing statement (writefuncs.c), and a
 *                      backstop at commit: a transaction that holds a
 *                      transaction id wrote something, whatever the path,
 *                      and does not commit;
 *   emergency          every statement refused with an ERROR (KS001); the
 *                      watcher ends the sessions that were running
 *                      something (emergency.c).  Logins stay open, so that
 *                      a pooler in front of the agents keeps working and
 *                      relays KS001 instead of hanging — unless
 *                      killswitch.refuse_agent_logins asks otherwise.
 *
 * The extension's own writes (an agent operator's ks_engage) are recognised
 * by what they are (owner.c), never by a flag.  Non-agents pay one atomic
 * read per statement while disengaged.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "libpq/auth.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/dest.h"
#include "tcop/utility.h"
#include "utils/acl.h"

#include "killswitch.h"

/* killswitch.task: the task this session claims to be doing. */
char	   *ks_session_task = NULL;

/* The transaction id our own write (owner.c) was given in this transaction. */
static TransactionId own_xid = InvalidTransactionId;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static ClientAuthentication_hook_type prev_ClientAuthentication = NULL;

/* The current mode, or disengaged when the library is not preloaded. */
static inline KsMode
mode_now(void)
{
	return ks_shared ? ks_current_mode() : KS_DISENGAGED;
}

/*
 * The agent to name in a refusal: the session user if it is one, else the
 * role that logged in (SET SESSION AUTHORIZATION hides nothing), else the
 * current role.
 */
static const char *
agent_name(void)
{
	Oid			session = GetSessionUserId();
	Oid			login = GetAuthenticatedUserId();
	Oid			who = ks_role_is_agent(session) ? session
		: ks_role_is_agent(login) ? login : GetUserId();

	return GetUserNameFromId(who, false);
}

/* Refuse an agent's action with KS001: the mode, the reason, who may release. */
void
ks_refuse_agent(KsMode mode, const char *what)
{
	char		detail[512];
	const char *who = agent_name();

	ks_refusal_detail(detail, sizeof(detail));
	ereport(ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 errmsg("Kill switch engaged (%s): %s by agent \"%s\" refused",
					ks_mode_file_names[mode], what, who),
			 errdetail("%s", detail),
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
			(errmsg("killswitch: refused the claim of session user \"%s\" (pid %d) to critical task \"%s\" in %s: not granted",
					who, MyProcPid, task, ks_mode_file_names[mode])));
	ereport(ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 errmsg("Kill switch engaged (%s): critical task \"%s\" is not granted to role \"%s\"",
					ks_mode_file_names[mode], task, who),
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

/* Refuse an agent's execution that writes, or any in emergency. */
static void
check_execution(QueryDesc *queryDesc, KsMode mode)
{
	if ((mode == KS_EMERGENCY || execution_writes(queryDesc)) && !ks_agent_may_write(mode))
		ks_refuse_agent(mode, mode == KS_EMERGENCY ? "any statement" : "a write");
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
}

/*
 * ExecutorRun: the same again, for executions started before the halt and
 * run after it — a FETCH from a FOR UPDATE cursor declared earlier locks
 * rows at each run.
 */
static void
ks_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction, uint64 count,
			   bool execute_once)
{
	KsMode		mode = mode_now();

	if (unlikely(mode != KS_DISENGAGED))
		check_execution(queryDesc, mode);
	if (prev_ExecutorRun)
		prev_ExecutorRun(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
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

/* What a refused utility statement was, for the message. */
static const char *
utility_name(Node *stmt)
{
	if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->filename != NULL)
		return ((CopyStmt *) stmt)->is_program
			? (((CopyStmt *) stmt)->is_from ? "COPY FROM PROGRAM" : "COPY TO PROGRAM")
			: (((CopyStmt *) stmt)->is_from ? "COPY FROM a file" : "COPY TO a file");
	return GetCommandTagName(CreateCommandTag(stmt));
}

/* ProcessUtility: refuse an agent's DDL, COPY to or from files, LOAD, 2PC, ... */
static void
ks_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest,
				  QueryCompletion *qc)
{
	KsMode		mode = mode_now();

	/* outside a healthy transaction only ROLLBACK and the like can run */
	if (unlikely(mode != KS_DISENGAGED) && IsTransactionState() &&
		!utility_allowed(pstmt->utilityStmt, mode) && !ks_agent_may_write(mode))
		ks_refuse_agent(mode, mode == KS_EMERGENCY ? "any statement"
						: utility_name(pstmt->utilityStmt));
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* Our own write (owner.c) was given this transaction id; the backstop lets it commit. */
void
ks_note_own_xid(TransactionId xid)
{
	own_xid = xid;
}

/*
 * The backstop, at commit and at PREPARE TRANSACTION: a transaction with a
 * transaction id wrote something (a row, a row lock, a large object, a temp
 * table, ...), by whatever path — also one nobody listed, and also writes
 * made before the halt.  A halted agent's such transaction does not commit.
 * A transaction id first given to our own write is not the agent's; writes
 * the agent adds after it in the same transaction are caught by the checks
 * above, not by this one.
 */
static void
check_commit(bool prepare)
{
	KsMode		mode = ks_commit_mode();	/* the interlock (interlock.c) */
	TransactionId xid;

	if (likely(mode == KS_DISENGAGED))
		return;
	xid = GetTopTransactionIdIfAny();
	if (!TransactionIdIsValid(xid) || TransactionIdEquals(xid, own_xid))
		return;
	if (!ks_agent_may_write(mode))
		ks_refuse_agent(mode, prepare ? "PREPARE TRANSACTION of a transaction that wrote"
						: "the commit of a transaction that wrote");
}

/* Transaction callback: the backstop, and forgetting our own transaction id. */
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
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			own_xid = InvalidTransactionId;
			break;
		default:
			break;
	}
}

/*
 * ClientAuthentication: in emergency, with killswitch.refuse_agent_logins
 * on, refuse a login whose role is one of the agent roles the watcher listed (no catalog access is possible here;
 * the list has no length limit and is read under a shared LWLock).  A role
 * missing from the list is stopped at its first statement.
 */
static void
ks_ClientAuthentication(Port *port, int status)
{
	if (prev_ClientAuthentication)
		prev_ClientAuthentication(port, status);
	if (status == STATUS_OK && ks_refuse_agent_logins && ks_shared &&
		ks_current_mode() == KS_EMERGENCY &&
		ks_emergency_lists_role(port->user_name))
		ereport(FATAL,
				(errcode(ERRCODE_KILLSWITCH_ENGAGED),
				 errmsg("Kill switch engaged (EMERGENCY): login by agent \"%s\" refused",
						port->user_name),
				 errhint("Agent logins are refused until a member of %s releases the kill switch.",
						 KS_ROLE_ADMIN)));
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
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ks_ProcessUtility;
	prev_ClientAuthentication = ClientAuthentication_hook;
	ClientAuthentication_hook = ks_ClientAuthentication;
	RegisterXactCallback(enforce_xact_callback, NULL);
	ks_writefuncs_init();
}
