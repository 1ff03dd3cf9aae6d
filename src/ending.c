/*
 * ending.c — what an emergency stops (ARCHITECTURE §9): the agent sessions
 * that are doing something, and the agents' prepared transactions.
 *
 * A session is ended when it is running a statement or is in a
 * transaction that began before the emergency was published, or holds
 * advisory locks (sessions.c decides, from shared memory); without
 * activity tracking (track_activities off: state "disabled"), every
 * session, since none can be told idle.  Idle sessions
 * stay: enforce.c refuses their every statement with KS001, which is what
 * an agent behind a transaction pooler must see — a pooler whose server
 * connections are ended leaves its clients hanging, and turns them away
 * after the release.  Sessions busy in a transaction begun after the
 * publication stay too: enforce.c refuses them, and they must see KS001
 * rather than a lost connection.
 *
 * A prepared transaction has no session to end.  Those of this database
 * are rolled back after the watcher's tick; those of other databases
 * cannot be from here (a prepared transaction is finished from its own
 * database), so the log names them.  While halted, agents cannot COMMIT
 * PREPARED them (enforce.c).
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "agentlist.h"
#include "ending.h"
#include "sessions.h"
#include "worker.h"

/* Agents' prepared transactions in this database, to roll back after the tick. */
static List *prepared_to_rollback = NIL;

/*
 * End the busy sessions of these agent roles; a transaction is "before"
 * the emergency when it began before published_at.  Returns how many were
 * signalled.
 */
int
ks_end_busy_agent_sessions(List *roles, TimestampTz published_at)
{
	ListCell   *lc;
	int			ended = 0;

	foreach(lc, ks_sessions_of_roles(roles, published_at))
	{
		if (DatumGetBool(DirectFunctionCall2(pg_terminate_backend,
											 Int32GetDatum(lfirst_int(lc)),
											 Int64GetDatum(0))))
			ended++;
	}
	return ended;
}

/* Keep a prepared transaction's gid to roll back after the tick. */
static void
rollback_after_tick(const char *gid)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	prepared_to_rollback = lappend(prepared_to_rollback, pstrdup(gid));
	MemoryContextSwitchTo(oldcxt);
}

/* Name a prepared transaction this watcher cannot roll back, and how to. */
static void
warn_prepared_elsewhere(const char *gid, const char *database)
{
	ereport(WARNING,
			(errmsg("prepared transaction \"%s\" of an agent in database \"%s\" was not rolled back",
					gid, database),
			 errdetail("A prepared transaction can only be finished from its own database; agents cannot commit it while halted."),
			 errhint("Run ROLLBACK PREPARED '%s' in database \"%s\".", gid, database)));
}

/*
 * Note these agent roles' prepared transactions (pg_prepared_xacts, so
 * inside the watcher's transaction in its database): those of this
 * database to roll back after the tick, the others named in the log.
 */
void
ks_note_agents_prepared(List *roles)
{
	Oid			argtypes[1] = {OIDARRAYOID};
	Datum		values[1] = {ks_oid_array(roles)};

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT p.gid, p.database = pg_catalog.current_database(), p.database "
							  "FROM pg_catalog.pg_prepared_xacts p "
							  "JOIN pg_catalog.pg_roles r ON r.rolname = p.owner "
							  "WHERE r.oid = ANY ($1) ORDER BY p.prepared",
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the agents' prepared transactions");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *gid = SPI_getvalue(tup, desc, 1);
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)))
			rollback_after_tick(gid);
		else
			warn_prepared_elsewhere(gid, SPI_getvalue(tup, desc, 3));
	}
	SPI_finish();
}

/*
 * Roll back the prepared transactions ks_note_agents_prepared() kept,
 * each in a transaction of its own as ROLLBACK PREPARED does; outside any
 * transaction (the watcher, after its tick).  One that fails (finished
 * meanwhile) is logged, and the others are still rolled back.
 */
void
ks_emergency_finish_prepared(void)
{
	while (prepared_to_rollback != NIL)
	{
		char	   *gid = (char *) linitial(prepared_to_rollback);
		MemoryContext ctx = CurrentMemoryContext;

		prepared_to_rollback = list_delete_first(prepared_to_rollback);
		PG_TRY();
		{
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			FinishPreparedTransaction(gid, false);
			CommitTransactionCommand();
			ereport(LOG,
					(errmsg("prepared transaction \"%s\" of an agent rolled back", gid)));
		}
		PG_CATCH();
		{
			ks_watcher_survive_error(ctx);
		}
		PG_END_TRY();
		pfree(gid);
	}
}
