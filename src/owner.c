/*
 * owner.c — run SPI work as the extension's owner with a fixed search_path,
 * so that callers need no rights on the tables and cannot redirect our
 * queries with objects of their own; and recognise that work for hard
 * enforcement (an agent operator's ks_engage() writes killswitch.events
 * while the agent is halted).
 *
 * The exemption is not a flag that an error could strand: it is what the
 * session is doing right now — running as the extension's owner under
 * SECURITY_RESTRICTED_OPERATION — which PostgreSQL itself puts back when an
 * error unwinds the region (subtransaction or transaction abort restore the
 * user and security context), so it can never outlive the call.
 *
 * The commit backstop (enforce.c) asks one more thing: were the transaction
 * ids this commit makes durable first given to our own work?  A region
 * notes the window of ids assigned while it ran, with the subtransaction it
 * ran in; the rollback of that subtransaction (ROLLBACK TO a savepoint, an
 * EXCEPTION block) takes the note along, so a rolled-back engage leaves no
 * exemption behind for the agent's writes that follow.
 *
 * Such a window must hold no writes of the agent's.  Writes that begin
 * after the region are refused when they are made (the agent's own raise
 * is in force for it); but an agent statement that writes and was already
 * running when the region began — `WITH e AS MATERIALIZED (SELECT
 * ks_engage(...)) INSERT ... SELECT ... FROM e`, a trigger of the agent's
 * that engages — passed its checks disengaged, and its rows after the
 * region would carry the ids the region took.  So the agent's writing
 * executions are counted while they run, and a region that takes ids
 * while one runs is refused: the agent engages in a statement of its own.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "executor/execdesc.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "enforce.h"
#include "guc.h"
#include "names.h"
#include "owner.h"
#include "rights.h"

/*
 * The transaction ids first given to our own work: those from "from" up to
 * (not including) "to", as the counter stood around a region that ran in
 * subtransaction subid.  Ids are handed out in increasing order, so one of
 * ours inside a window was assigned while that region ran.  The list lives
 * in TopTransactionContext.
 */
typedef struct OwnWindow
{
	TransactionId from;
	TransactionId to;
	SubTransactionId subid;
} OwnWindow;

static List *own_windows = NIL;

/*
 * The agent's executions that write, from ExecutorStart to ExecutorEnd
 * (enforce.c), each with the subtransaction it began in: one that fails
 * never reaches ExecutorEnd, and goes with its subtransaction.  Noted for
 * every such statement, also while disengaged, so without allocating: the
 * first agent_writing_count entries of an array in TopMemoryContext, kept
 * from one transaction to the next (the count goes back to zero at its
 * end) and grown only when more executions nest than ever before.
 */
typedef struct AgentWriting
{
	const QueryDesc *queryDesc;
	SubTransactionId subid;
} AgentWriting;

static AgentWriting *agent_writing = NULL;
static int	agent_writing_count = 0;
static int	agent_writing_size = 0;

/* OID of killswitch.events; a clear error where the extension is absent. */
Oid
ks_events_relid(void)
{
	Oid			nsp = get_namespace_oid(KS_SCHEMA, true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(KS_EVENTS_TABLE, nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the killswitch extension is not installed in this database"),
				 errhint("Run CREATE EXTENSION killswitch in database \"%s\".", ks_database)));
	return relid;
}

/* Owner of a relation, or InvalidOid. */
static Oid
relation_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Owner of killswitch.events: the role that created the extension. */
static Oid
extension_owner(void)
{
	Oid			relid = ks_events_relid();
	Oid			owner = relation_owner(relid);

	if (!OidIsValid(owner))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	return owner;
}

/*
 * Is the session inside an owner region right now: running as the
 * extension's owner under SECURITY_RESTRICTED_OPERATION?  Only asked by
 * enforcement for an agent session while halted, so the catalog lookups
 * cost nothing when it matters.
 *
 * Nothing an agent controls runs that way.  PostgreSQL enters a restricted
 * operation as another user only for maintenance of a relation (VACUUM,
 * ANALYZE, CLUSTER, REINDEX, CREATE INDEX, REFRESH MATERIALIZED VIEW, index
 * checks), as that relation's owner: those statements are refused to a
 * halted agent before they switch user, and index expressions on the
 * owner's tables are the owner's own.  An owner who is an agent gets no
 * exemption at all (fail closed).  In a database without the extension
 * there is no owner and no exemption.
 */
bool
ks_in_owner_region(void)
{
	Oid			user;
	int			sec;
	Oid			nsp;
	Oid			relid;
	Oid			owner;

	GetUserIdAndSecContext(&user, &sec);
	if ((sec & SECURITY_RESTRICTED_OPERATION) == 0)
		return false;
	nsp = get_namespace_oid(KS_SCHEMA, true);
	relid = OidIsValid(nsp) ? get_relname_relid(KS_EVENTS_TABLE, nsp) : InvalidOid;
	owner = OidIsValid(relid) ? relation_owner(relid) : InvalidOid;
	return OidIsValid(owner) && user == owner && !ks_role_is_agent(owner);
}

/* Become the owner, pin search_path, connect SPI. */
void
ks_owner_begin(KsOwnerContext *ctx)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(owner, ctx->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->next_xid = XidFromFullTransactionId(ReadNextFullTransactionId());
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* An execution of the agent's that writes has begun (from enforce.c's ExecutorStart). */
void
ks_agent_writing_began(const QueryDesc *queryDesc)
{
	if (unlikely(agent_writing_count == agent_writing_size))
	{
		int			size = Max(agent_writing_size * 2, 8);

		agent_writing = agent_writing == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(AgentWriting) * size)
			: repalloc(agent_writing, sizeof(AgentWriting) * size);
		agent_writing_size = size;
	}
	agent_writing[agent_writing_count].queryDesc = queryDesc;
	agent_writing[agent_writing_count].subid = GetCurrentSubTransactionId();
	agent_writing_count++;
}

/* An execution has ended (from enforce.c's ExecutorEnd): forget it if it was one. */
void
ks_agent_writing_ended(const QueryDesc *queryDesc)
{
	for (int i = 0; i < agent_writing_count; i++)
	{
		if (agent_writing[i].queryDesc == queryDesc)
		{
			agent_writing_count--;
			memmove(&agent_writing[i], &agent_writing[i + 1],
					sizeof(AgentWriting) * (agent_writing_count - i));
			return;
		}
	}
}

/*
 * A region took transaction ids while a statement of the agent's that
 * writes was running: refuse it (see the header).
 */
static void
refuse_inside_agent_write(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the kill switch cannot record a change inside a statement of agent \"%s\" that writes",
					ks_agent_name()),
			 errdetail("The statement's own rows would commit under the transaction id of the change, past the halt."),
			 errhint("Call ks_engage() in a statement of its own.")));
}

/* Note the ids assigned while a region ran (see OwnWindow). */
static void
note_own_window(TransactionId from)
{
	TransactionId to = XidFromFullTransactionId(ReadNextFullTransactionId());
	OwnWindow  *w;
	MemoryContext old;

	if (TransactionIdEquals(from, to) || !TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	if (agent_writing_count > 0)
		refuse_inside_agent_write();
	old = MemoryContextSwitchTo(TopTransactionContext);
	w = palloc(sizeof(OwnWindow));
	w->from = from;
	w->to = to;
	w->subid = GetCurrentSubTransactionId();
	own_windows = lappend(own_windows, w);
	MemoryContextSwitchTo(old);
}

/*
 * Undo ks_owner_begin().  (An error inside the region never gets here: the
 * abort of the (sub)transaction it unwinds undoes all of it, and no window
 * is noted.)  The transaction ids assigned inside the region were assigned
 * to our own work: the commit backstop must not count them as the agent's.
 */
void
ks_owner_end(KsOwnerContext *ctx)
{
	SPI_finish();
	AtEOXact_GUC(false, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
	note_own_window(ctx->next_xid);
}

/* Was this id of ours assigned inside a noted window? */
static bool
in_own_window(TransactionId xid)
{
	ListCell   *lc;

	foreach(lc, own_windows)
	{
		OwnWindow  *w = lfirst(lc);

		if (TransactionIdFollowsOrEquals(xid, w->from) && TransactionIdPrecedes(xid, w->to))
			return true;
	}
	return false;
}

/*
 * Is every transaction id this commit makes durable — the top-level one
 * and each committed subtransaction's — one first given to our own work?
 * Then the transaction wrote nothing of the agent's in a subtransaction of
 * its own; writes it added beside ours are refused when they are made.
 */
bool
ks_commit_is_own_work(void)
{
	TransactionId *children;
	int			n;

	if (own_windows == NIL || !in_own_window(GetTopTransactionIdIfAny()))
		return false;
	n = xactGetCommittedChildren(&children);
	for (int i = 0; i < n; i++)
		if (!in_own_window(children[i]))
			return false;
	return true;
}

/*
 * A subtransaction rolled back: so did the regions that ran in it or below,
 * and the agent's executions that began there.
 */
static void
owner_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;
	int			kept = 0;

	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	/* subtransactions begun since mySubid are its children: their ids are larger */
	foreach(lc, own_windows)
	{
		OwnWindow  *w = lfirst(lc);

		if (w->subid >= mySubid)
			own_windows = foreach_delete_current(own_windows, lc);
	}
	for (int i = 0; i < agent_writing_count; i++)
	{
		if (agent_writing[i].subid < mySubid)
			agent_writing[kept++] = agent_writing[i];
	}
	agent_writing_count = kept;
}

/*
 * The transaction ended (from enforce.c's callback): the windows and the
 * executions go with it, the windows' memory with TopTransactionContext
 * (the executions' array is kept for the next transaction).
 */
void
ks_owner_xact_end(void)
{
	own_windows = NIL;
	agent_writing_count = 0;
}

/* Register the subtransaction callback; from ks_enforce_init(). */
void
ks_owner_init(void)
{
	RegisterSubXactCallback(owner_subxact_callback, NULL);
}
