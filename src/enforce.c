/*
 * enforce.c — hard enforcement (DESIGN §8.3): members of killswitch_agent
 * are stopped by the server itself, in every database, whether they check
 * or not.  Decided at execution time (ExecutorStart, ProcessUtility), not
 * at parse time, so plans cached by PL/pgSQL cannot slip through:
 *
 *   halt_noncritical   writes refused unless the session's killswitch.task
 *                      is a critical task granted to its role (tasks.c);
 *                      an ungranted claim is refused and recorded
 *   halt_all           the same (the reference rules let critical tasks on)
 *   emergency          every statement refused and the session ended; new
 *                      logins refused
 *
 * Non-agents pay one atomic read per statement while disengaged.
 */
#include "postgres.h"

#include "executor/executor.h"
#include "libpq/auth.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"

#include "killswitch.h"

/* killswitch.task: the task this session claims to be doing. */
char	   *ks_session_task = NULL;

/* > 0 while the kill switch itself writes (ks_engage by an agent operator). */
int			ks_own_write_depth = 0;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static ClientAuthentication_hook_type prev_ClientAuthentication = NULL;

/* Refuse, or in emergency end the session. */
static void
refuse_agent(KsMode mode, const char *what)
{
	char		detail[512];
	const char *who = GetUserNameFromId(GetSessionUserId(), false);

	ks_refusal_detail(detail, sizeof(detail));
	ereport(mode == KS_EMERGENCY ? FATAL : ERROR,
			(errcode(ERRCODE_KILLSWITCH_ENGAGED),
			 errmsg("Kill switch engaged (%s): %s by agent \"%s\" refused",
					ks_mode_file_names[mode], what, who),
			 errdetail("%s", detail),
			 mode == KS_EMERGENCY
			 ? errhint("Agent sessions are ended while the kill switch is in emergency.")
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
 * May the session do what would write?  Only asked when the mode is not
 * disengaged; the agent check is cached.  An agent's claim to a critical
 * task counts only when the task is granted to its role.
 */
static bool
write_allowed(KsMode mode)
{
	if (ks_own_write_depth > 0 || !ks_session_is_agent())
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

/* Does this execution write (or lock rows)? */
static bool
execution_writes(QueryDesc *queryDesc)
{
	return queryDesc->operation != CMD_SELECT ||
		queryDesc->plannedstmt->hasModifyingCTE ||
		queryDesc->plannedstmt->rowMarks != NIL;
}

/* ExecutorStart: refuse an agent's writes, and everything in emergency. */
static void
ks_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	KsMode		mode = ks_shared ? ks_current_mode() : KS_DISENGAGED;

	if (unlikely(mode != KS_DISENGAGED) && !(eflags & EXEC_FLAG_EXPLAIN_ONLY))
	{
		if (mode == KS_EMERGENCY ? !write_allowed(mode)
			: execution_writes(queryDesc) && !write_allowed(mode))
			refuse_agent(mode, mode == KS_EMERGENCY ? "any statement" : "a write");
	}
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * Utility statements an agent may run while halted: reading, transaction
 * control, session settings (which lift nothing: enforcement does not read
 * them), cursors.  Statements they contain (EXECUTE, CALL, DO, EXPLAIN
 * ANALYZE, COPY (query) TO) are checked again by the executor.
 */
static bool
utility_allowed_while_halted(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_TransactionStmt:
		case T_VariableSetStmt:
		case T_VariableShowStmt:
		case T_ListenStmt:
		case T_UnlistenStmt:
		case T_DeclareCursorStmt:
		case T_FetchStmt:
		case T_ClosePortalStmt:
		case T_PrepareStmt:
		case T_ExecuteStmt:
		case T_DeallocateStmt:
		case T_ExplainStmt:
		case T_DiscardStmt:
		case T_CallStmt:
		case T_DoStmt:
			return true;
		case T_CopyStmt:
			return !((CopyStmt *) stmt)->is_from;
		default:
			return false;
	}
}

/* ProcessUtility: refuse an agent's DDL, COPY FROM, LOAD, role changes... */
static void
ks_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest,
				  QueryCompletion *qc)
{
	KsMode		mode = ks_shared ? ks_current_mode() : KS_DISENGAGED;

	if (unlikely(mode != KS_DISENGAGED))
	{
		bool		harmless = utility_allowed_while_halted(pstmt->utilityStmt);

		/* in emergency even harmless statements end an agent's session */
		if ((mode == KS_EMERGENCY || !harmless) && IsTransactionState() &&
			!write_allowed(mode))
			refuse_agent(mode, mode == KS_EMERGENCY ? "any statement"
						 : psprintf("%s", GetCommandTagName(CreateCommandTag(pstmt->utilityStmt))));
	}
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * ClientAuthentication: in emergency, refuse a login whose role is one of
 * the agent roles the watcher listed (no catalog access is possible here;
 * the list has no length limit and is read under a shared LWLock).  A role
 * missing from the list is stopped at its first statement.
 */
static void
ks_ClientAuthentication(Port *port, int status)
{
	if (prev_ClientAuthentication)
		prev_ClientAuthentication(port, status);
	if (status == STATUS_OK && ks_shared && ks_current_mode() == KS_EMERGENCY &&
		ks_emergency_lists_role(port->user_name))
		ereport(FATAL,
				(errcode(ERRCODE_KILLSWITCH_ENGAGED),
				 errmsg("Kill switch engaged (EMERGENCY): login by agent \"%s\" refused",
						port->user_name),
				 errhint("Agent logins are refused until a member of %s releases the kill switch.",
						 KS_ROLE_ADMIN)));
}

/* Install the hooks; from _PG_init while preloading. */
void
ks_enforce_init(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = ks_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ks_ProcessUtility;
	prev_ClientAuthentication = ClientAuthentication_hook;
	ClientAuthentication_hook = ks_ClientAuthentication;
}
