/*
 * snapshot.c — the emergency snapshot (ARCHITECTURE §9), taken once per
 * episode before any session is ended, so that it shows what the agents
 * were doing: the status, every agent session, the locks they hold or wait
 * for, and the agents' prepared transactions, as one JSON document in
 * kill_switch_snapshot.json beside the state file (UTF-8, as that file
 * is) and, where the database has the history, a row of
 * killswitch.snapshots.
 *
 * A watcher connected to a database reads it through the views
 * (pg_stat_activity, pg_locks, pg_prepared_xacts, killswitch.shared_state());
 * one connected to none — killswitch.database unusable, or a standby —
 * has no views to read, and sessions.c builds the same document from
 * shared memory, without the prepared transactions (pg_prepared_xacts
 * names their owners, which takes a database).
 *
 * A snapshot that fails is a WARNING: it never keeps the sessions from
 * being ended.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "agentlist.h"
#include "guc.h"
#include "names.h"
#include "sessions.h"
#include "snapshot.h"
#include "store.h"

/* The snapshot as one JSON document, read through the views. */
#define SNAPSHOT_SQL \
	"SELECT pg_catalog.jsonb_build_object(" \
	" 'generation', $2, 'taken_at', pg_catalog.clock_timestamp()," \
	" 'status', (SELECT pg_catalog.to_jsonb(s) FROM killswitch.shared_state() s)," \
	" 'sessions', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(" \
	"   'pid', a.pid, 'role', a.usename, 'database', a.datname, 'application', a.application_name," \
	"   'client', a.client_addr, 'state', a.state, 'query', a.query, 'xact_start', a.xact_start," \
	"   'query_start', a.query_start, 'wait_event_type', a.wait_event_type," \
	"   'wait_event', a.wait_event) ORDER BY a.pid), '[]'::jsonb)" \
	"   FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = ANY ($1))," \
	" 'locks', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(" \
	"   'pid', l.pid, 'locktype', l.locktype, 'database', l.database," \
	"   'relation', l.relation, 'mode', l.mode, 'granted', l.granted," \
	"   'transactionid', l.transactionid::text) ORDER BY l.pid), '[]'::jsonb)" \
	"   FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid" \
	"   WHERE a.usesysid = ANY ($1))," \
	" 'prepared', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(" \
	"   'gid', p.gid, 'owner', p.owner, 'database', p.database, 'prepared', p.prepared," \
	"   'transaction', p.transaction::text) ORDER BY p.prepared), '[]'::jsonb)" \
	"   FROM pg_catalog.pg_prepared_xacts p JOIN pg_catalog.pg_roles r ON r.rolname = p.owner" \
	"   WHERE r.oid = ANY ($1)))::text"

/* The snapshot through the views, in the database's encoding.  (SPI connected.) */
static char *
snapshot_through_views(List *roles, int64 generation)
{
	Oid			argtypes[2] = {OIDARRAYOID, INT8OID};
	Datum		values[2] = {ks_oid_array(roles), Int64GetDatum(generation)};

	if (SPI_execute_with_args(SNAPSHOT_SQL, 2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not take the emergency snapshot");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* Write the snapshot file; one that cannot be written is a WARNING. */
static void
write_snapshot_file(const char *utf8_json)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];

	snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_SNAPSHOT_FILE_NAME);
	if (!ks_write_file_durably(path, utf8_json, strlen(utf8_json), problem, sizeof(problem)))
		ereport(WARNING, (errmsg("could not write the kill switch emergency snapshot file: %s", problem)));
}

/*
 * A snapshot taken while its emergency was in force but not yet the
 * chain's (a raise whose event commits a moment later, or follows): the
 * sessions are ended at once, so the snapshot cannot wait, but its row
 * names the emergency's generation, which only the event gives.  It waits
 * here, in TopMemoryContext, to be recorded as the alert is: once the
 * chain holds the emergency (ks_emergency_record_snapshot()).
 */
static char *pending_json = NULL;
static int64 pending_generation;	/* in force when it was taken */

/*
 * Add the snapshot to killswitch.snapshots with this generation (in the
 * document too), and write the file as recorded.  (SPI connected.)
 */
static void
record_snapshot(int64 generation, const char *json)
{
	Oid			argtypes[2] = {INT8OID, JSONBOID};
	Datum		values[2] = {Int64GetDatum(generation),
	DirectFunctionCall1(jsonb_in, CStringGetDatum(json))};
	char	   *recorded;

	if (SPI_execute_with_args("INSERT INTO killswitch.snapshots (generation, snapshot) "
							  "VALUES ($1, pg_catalog.jsonb_set($2, '{generation}', pg_catalog.to_jsonb($1))) "
							  "RETURNING snapshot::pg_catalog.text",
							  2, argtypes, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not record the emergency snapshot");
	recorded = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	write_snapshot_file(pg_server_to_any(recorded, strlen(recorded), PG_UTF8));
}

/*
 * The snapshot taken through the views: the file at once, and the row if
 * there is a history — now if the chain holds the emergency (recorded),
 * else once it does.
 */
static void
snapshot_in_database(List *roles, int64 generation, bool history, bool recorded)
{
	char	   *json;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	json = snapshot_through_views(roles, generation);
	write_snapshot_file(pg_server_to_any(json, strlen(json), PG_UTF8));
	if (history && recorded)
		record_snapshot(generation, json);
	else if (history)
	{
		pending_json = MemoryContextStrdup(TopMemoryContext, json);
		pending_generation = generation;
	}
	SPI_finish();
}

/*
 * Run work(arg) in a subtransaction of the watcher's transaction, so that
 * the watcher can go on after an error: an error can come while
 * GetLockStatusData() holds the lock manager's LWLocks, or from SPI
 * half-way through, and only an abort gives back what an error leaves held
 * (as PL/pgSQL's exception blocks do).  Returns the error, rolled back, or
 * NULL when the work went through.
 */
static ErrorData *
in_subtransaction(void (*work) (void *arg), void *arg)
{
	MemoryContext ctx = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile failed = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(ctx);
	PG_TRY();
	{
		work(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(ctx);
		failed = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(ctx);
	CurrentResourceOwner = owner;
	return failed;
}

/* The snapshot taken from shared memory: the file alone. */
static void
snapshot_without_database(List *roles, int64 generation)
{
	write_snapshot_file(ks_sessions_snapshot_json(roles, generation));
}

/* What a snapshot is taken of, and where it goes. */
typedef struct SnapshotWork
{
	List	   *roles;
	int64		generation;
	bool		database;		/* through the views, or from shared memory */
	bool		history;		/* the database has the extension's tables */
	bool		recorded;		/* the chain holds the emergency: the row now */
} SnapshotWork;

static void
take_snapshot(void *arg)
{
	SnapshotWork *w = arg;

	if (w->database)
		snapshot_in_database(w->roles, w->generation, w->history, w->recorded);
	else
		snapshot_without_database(w->roles, w->generation);
}

/*
 * Take the snapshot of these agent roles' sessions, inside the watcher's
 * transaction, in a subtransaction: a failure is logged and the watcher
 * goes on to end the sessions.
 */
void
ks_emergency_snapshot(List *roles, int64 generation, bool database, bool history,
					  bool recorded)
{
	SnapshotWork w = {roles, generation, database, history, recorded};
	ErrorData  *failed = in_subtransaction(take_snapshot, &w);

	if (failed)
		ereport(WARNING,
				(errmsg("the kill switch emergency snapshot failed: %s", failed->message)));
}

/* A snapshot waiting for its row, and the generation the row names. */
typedef struct PendingWork
{
	const char *json;
	int64		generation;
} PendingWork;

static void
record_pending(void *arg)
{
	PendingWork *w = arg;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	record_snapshot(w->generation, w->json);
	SPI_finish();
}

/*
 * Record the snapshot that waits for its emergency's event, with the
 * generation the chain gave it — or, with -1, the one in force when it was
 * taken (an emergency released before its event came: the row is kept all
 * the same); inside the watcher's transaction, in a subtransaction like
 * the snapshot itself (a failure is a WARNING).
 */
void
ks_emergency_record_snapshot(int64 generation)
{
	PendingWork w;
	ErrorData  *failed;

	if (pending_json == NULL)
		return;
	w.json = pending_json;
	w.generation = generation >= 0 ? generation : pending_generation;
	pending_json = NULL;
	failed = in_subtransaction(record_pending, &w);
	pfree(unconstify(char *, w.json));
	if (failed)
		ereport(WARNING,
				(errmsg("the kill switch emergency snapshot could not be recorded: %s", failed->message)));
}
