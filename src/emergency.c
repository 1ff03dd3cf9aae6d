/*
 * emergency.c — what entering emergency does (ARCHITECTURE §9), run by the
 * watcher, which commits wake at once, whether emergency came from SQL,
 * the file or the CLI, and again at start if the server comes up in it:
 *
 *   1. the snapshot: status, every agent session, the locks they hold and
 *      the agents' prepared transactions, into killswitch.snapshots and
 *      kill_switch_snapshot.json beside the state file;
 *   2. the agent sessions that are doing something ended — running a
 *      statement, in a transaction, or holding advisory locks — and the
 *      agents' prepared transactions in this database rolled back.  Idle
 *      sessions stay: enforce.c refuses their every statement with KS001,
 *      which is what an agent behind a transaction pooler must see (a
 *      pooler whose server connections are ended or whose logins are
 *      refused leaves its clients hanging and turns them away after the
 *      release).  Agent logins are refused only with
 *      killswitch.refuse_agent_logins, from the list of agent role names
 *      kept here;
 *   3. the alert: NOTIFY killswitch_alert, a WARNING in the log, and
 *      killswitch.alert_command, run with the details in environment
 *      variables (never in the shell text), bounded by
 *      killswitch.alert_timeout, never waited for.
 *
 * While the emergency lasts, agent sessions still doing something that
 * began before it was published are ended too.
 *
 * A watcher connected to no database (killswitch.database unusable) does
 * what needs no table: the snapshot file, the sessions ended, the WARNING
 * and the alert command; the snapshot row, the NOTIFY and the prepared
 * transactions wait for a database.
 */
#include "postgres.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/table.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "agents.h"
#include "emergency.h"
#include "guc.h"
#include "lists.h"
#include "names.h"
#include "notify.h"
#include "sessions.h"
#include "state.h"
#include "store.h"
#include "worker.h"

/* The alert command running, if any. */
static pid_t alert_pid = 0;
static TimestampTz alert_deadline = 0;

/* Agents' prepared transactions in this database, to roll back after the tick. */
static List *prepared_to_rollback = NIL;

/* Agent roles: members of killswitch_agent, however indirect. */
#define AGENT_ROLES_SQL \
	"WITH RECURSIVE agents(oid) AS (" \
	"  SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'killswitch_agent'" \
	"  UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN agents a ON m.roleid = a.oid)" \
	" SELECT a.oid, r.rolname FROM agents a JOIN pg_catalog.pg_roles r ON r.oid = a.oid" \
	" WHERE r.rolname <> 'killswitch_agent'"

/* ks_agent_roles_epoch when the shared list of agent roles was last built. */
static uint64 agents_built_epoch = 0;
static bool agents_listed = false;

/*
 * List the agent roles; return their OIDs.  When roles or memberships
 * changed since the last time (or none is published), the names are built
 * into a new shared list outside any lock and swapped in (lists.c), for
 * the login check: any number of roles, read under a shared LWLock.
 */
static Datum
list_agent_roles(void)
{
	int			n;
	Datum	   *oids;
	KsListItem *items;
	uint64		epoch = ks_agent_roles_epoch;

	if (SPI_execute(AGENT_ROLES_SQL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the agent roles");
	n = (int) SPI_processed;
	oids = palloc(sizeof(Datum) * Max(n, 1));
	items = palloc0(sizeof(KsListItem) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		oids[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		items[i].name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	if (!agents_listed || epoch != agents_built_epoch)
	{
		/* a list that cannot be built never keeps sessions from being ended */
		dsa_pointer block = ks_list_build(items, n, WARNING);

		if (DsaPointerIsValid(block))
		{
			(void) ks_list_swap(KS_LIST_AGENTS, block, NULL, NULL, 0);
			agents_listed = true;
			agents_built_epoch = epoch;
		}
	}
	return PointerGetDatum(construct_array(oids, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
}

/* Is this role name on the list of agent roles?  (No catalog access.) */
bool
ks_emergency_lists_role(const char *name)
{
	return ks_list_lookup(KS_LIST_AGENTS, name, NULL, NULL) == KS_LIST_PRESENT;
}

/* The snapshot as one JSON document. */
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

/* Take the snapshot: a row in killswitch.snapshots (if there is a history) and the file. */
static void
take_snapshot(Datum agent_oids, int64 generation, bool history)
{
	Oid			argtypes[2] = {OIDARRAYOID, INT8OID};
	Datum		values[2] = {agent_oids, Int64GetDatum(generation)};
	char	   *json;
	char	   *file_json;
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];

	if (SPI_execute_with_args(SNAPSHOT_SQL, 2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not take the emergency snapshot");
	json = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	/* the file, like the state file beside it, is UTF-8 whatever the database's encoding */
	file_json = pg_server_to_any(json, strlen(json), PG_UTF8);

	snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_SNAPSHOT_FILE_NAME);
	if (!ks_write_file_durably(path, file_json, strlen(file_json), problem, sizeof(problem)))
		ereport(WARNING, (errmsg("killswitch: could not write the emergency snapshot file"),
						  errdetail("%s", problem)));
	if (history)
	{
		Oid			t[2] = {INT8OID, JSONBOID};
		Datum		v[2] = {Int64GetDatum(generation),
		DirectFunctionCall1(jsonb_in, CStringGetDatum(json))};

		if (SPI_execute_with_args("INSERT INTO killswitch.snapshots (generation, snapshot) "
								  "VALUES ($1, $2)", 2, t, v, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record the emergency snapshot");
	}
}

/*
 * take_snapshot() in a subtransaction: a snapshot that fails is logged and
 * never keeps the sessions from being ended.
 */
static void
snapshot_or_warn(Datum agent_oids, int64 generation, bool history)
{
	MemoryContext ctx = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(ctx);
	PG_TRY();
	{
		take_snapshot(agent_oids, generation, history);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ctx);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING,
				(errmsg("killswitch: the emergency snapshot failed: %s", edata->message)));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(ctx);
	CurrentResourceOwner = owner;
}

/*
 * End the agent sessions that are doing something: running a statement or
 * in a transaction that began before the emergency was published (later
 * ones are being refused by enforce.c, and must see KS001 rather than a
 * lost connection), or holding advisory locks.  A session whose transaction
 * start is not known yet (starting up, or between its statement's start and
 * its transaction's) began after the publication, or is ended at the next
 * tick.  Without activity tracking (state "disabled"), every session.
 * Returns how many were signalled.
 */
static int
end_agent_sessions(Datum agent_oids, TimestampTz before)
{
	Oid			argtypes[2] = {OIDARRAYOID, TIMESTAMPTZOID};
	Datum		values[2] = {agent_oids, TimestampTzGetDatum(before)};

	if (SPI_execute_with_args("SELECT pg_catalog.pg_terminate_backend(a.pid) "
							  "FROM pg_catalog.pg_stat_activity a "
							  "WHERE a.usesysid = ANY ($1) AND a.pid <> pg_catalog.pg_backend_pid() "
							  "AND ((a.state <> 'idle' AND a.xact_start < $2) OR a.state = 'disabled' "
							  "  OR EXISTS (SELECT FROM pg_catalog.pg_locks l "
							  "             WHERE l.pid = a.pid AND l.locktype = 'advisory'))",
							  2, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not end the agent sessions");
	return (int) SPI_processed;
}

/*
 * Note the agents' prepared transactions: those of this database are
 * rolled back after the tick (ks_emergency_finish_prepared); those of other
 * databases cannot be from here (a prepared transaction is finished from
 * its own database), so they are named in the log.  While halted, agents
 * cannot COMMIT PREPARED them (enforce.c).
 */
static void
note_prepared(Datum agent_oids)
{
	Oid			argtypes[1] = {OIDARRAYOID};
	Datum		values[1] = {agent_oids};
	MemoryContext oldcxt;

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
		{
			oldcxt = MemoryContextSwitchTo(TopMemoryContext);
			prepared_to_rollback = lappend(prepared_to_rollback, pstrdup(gid));
			MemoryContextSwitchTo(oldcxt);
		}
		else
			ereport(WARNING,
					(errmsg("killswitch: prepared transaction \"%s\" of an agent in database \"%s\" was not rolled back",
							gid, SPI_getvalue(tup, desc, 3)),
					 errdetail("A prepared transaction can only be finished from its own database; agents cannot commit it while halted."),
					 errhint("Run ROLLBACK PREPARED '%s' in database \"%s\".",
							 gid, SPI_getvalue(tup, desc, 3))));
	}
}

/*
 * Roll back the prepared transactions note_prepared() found, each in a
 * transaction of its own as ROLLBACK PREPARED does; outside any transaction
 * (the watcher, after its tick).  One that fails (finished meanwhile) is
 * logged.
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
					(errmsg("killswitch: prepared transaction \"%s\" of an agent rolled back", gid)));
		}
		PG_CATCH();
		{
			ks_watcher_survive_error(ctx);
		}
		PG_END_TRY();
		pfree(gid);
	}
}

/* Start killswitch.alert_command with the details in its environment. */
static void
run_alert_command(int64 generation, int64 event_id, int ended)
{
	char		reason[256];
	char		by[64];
	char		source[16];
	char		buf[MAXPGPATH];
	char		snapshot[MAXPGPATH];
	pid_t		pid;

	if (ks_alert_command == NULL || ks_alert_command[0] == '\0' || alert_pid != 0)
		return;
	SpinLockAcquire(&ks_shared->mutex);
	/* the emergency's own text, also while its event is not the chain's yet */
	if (ks_shared->chain_mode != KS_EMERGENCY && ks_shared->raise_reason[0])
	{
		strlcpy(reason, ks_shared->raise_reason, sizeof(reason));
		strlcpy(by, ks_shared->raise_by, sizeof(by));
		strlcpy(source, "sql", sizeof(source));
	}
	else
	{
		strlcpy(reason, ks_shared->reason, sizeof(reason));
		strlcpy(by, ks_shared->triggered_by, sizeof(by));
		strlcpy(source, ks_shared->source, sizeof(source));
	}
	SpinLockRelease(&ks_shared->mutex);
	snprintf(buf, sizeof(buf), "%s/%s", ks_state_dir, KS_SNAPSHOT_FILE_NAME);
	strlcpy(snapshot, make_absolute_path(buf), sizeof(snapshot));

	fflush(NULL);
	pid = fork();
	if (pid < 0)
	{
		ereport(WARNING, (errmsg("killswitch: could not start alert_command: %m")));
		return;
	}
	if (pid == 0)
	{
		/* the child: its own process group, so a timeout ends all of it */
		setsid();
		setenv("KS_MODE", "emergency", 1);
		setenv("KS_REASON", reason, 1);
		setenv("KS_TRIGGERED_BY", by, 1);
		setenv("KS_SOURCE", source, 1);
		snprintf(buf, sizeof(buf), INT64_FORMAT, generation);
		setenv("KS_GENERATION", buf, 1);
		if (event_id > 0)
			snprintf(buf, sizeof(buf), INT64_FORMAT, event_id);
		else
			buf[0] = '\0';		/* not recorded yet (no history in this database) */
		setenv("KS_EVENT_ID", buf, 1);
		snprintf(buf, sizeof(buf), "%d", ended);
		setenv("KS_SESSIONS_ENDED", buf, 1);
		setenv("KS_SNAPSHOT_FILE", snapshot, 1);
		execl("/bin/sh", "sh", "-c", ks_alert_command, (char *) NULL);
		_exit(127);
	}
	alert_pid = pid;
	alert_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ks_alert_timeout);
	ereport(LOG, (errmsg("killswitch: alert_command started (pid %d)", (int) pid)));
}

/* Reap the alert command, or end it when it outlives killswitch.alert_timeout. */
void
ks_alert_poll(void)
{
	int			status;
	pid_t		r;

	if (alert_pid == 0)
		return;
	r = waitpid(alert_pid, &status, WNOHANG);
	if (r == alert_pid)
	{
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			ereport(LOG, (errmsg("killswitch: alert_command succeeded")));
		else
			ereport(WARNING, (errmsg("killswitch: alert_command failed (status %d)", status)));
		alert_pid = 0;
	}
	else if (GetCurrentTimestamp() >= alert_deadline)
	{
		kill(-alert_pid, SIGKILL);
		(void) waitpid(alert_pid, &status, 0);
		ereport(WARNING, (errmsg("killswitch: alert_command did not finish within %d ms and was killed",
								 ks_alert_timeout)));
		alert_pid = 0;
	}
}

/* Id of the event that set a generation (0 if none), and is it a release request? */
static int64
event_of_generation(int64 generation, bool *request)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(generation)};
	bool		isnull;

	*request = false;
	if (SPI_execute_with_args("SELECT id, source = 'release_request' FROM killswitch.events "
							  "WHERE generation = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return 0;
	*request = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Is the mode emergency?  If not, free the agent list that logins are checked against. */
static bool
still_in_emergency(uint64 word)
{
	if (KS_WORD_MODE(word) == KS_EMERGENCY)
		return true;
	if (agents_listed)
		(void) ks_list_swap(KS_LIST_AGENTS, InvalidDsaPointer, NULL, NULL, 0);
	agents_listed = false;
	return false;
}

/*
 * This emergency episode (state.c counts one each time the mode in force
 * enters emergency), and when it showed.  Keyed on the episode, not the
 * generation: a raise to emergency is in force before its generation
 * moves, and a release request repeats the mode with a new one — the
 * actions run once for each, never twice and never not at all.
 */
static uint64
emergency_episode(TimestampTz *published_at)
{
	uint64		episode;

	SpinLockAcquire(&ks_shared->mutex);
	episode = ks_shared->emergency_episode;
	*published_at = ks_shared->published_at;
	SpinLockRelease(&ks_shared->mutex);
	return episode;
}

/* How long an emergency in force waits for its event before the alert goes without it. */
#define KS_ALERT_WAIT_MS 1000

/*
 * Is the alert of this episode due?  When the chain holds the emergency
 * (its event committed, so the alert names it), or once it has been in
 * force for KS_ALERT_WAIT_MS without (a raise whose event follows, held up).
 */
static bool
alert_due(uint64 episode, TimestampTz published_at)
{
	int			flags;

	if (ks_shared->emergency_alerted == episode)
		return false;
	return ks_chain_state(&flags) == KS_EMERGENCY ||
		TimestampDifferenceExceeds(published_at, GetCurrentTimestamp(), KS_ALERT_WAIT_MS);
}

/*
 * The watcher's emergency duty, inside its transaction: the first time it
 * sees an emergency episode — in force, maybe before its commit — the
 * snapshot and the busy agent sessions ended; then, at once or as soon as
 * its event is recorded, the alert; afterwards, agent sessions that
 * appear are ended.
 */
void
ks_emergency_tick(bool history)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		generation = ks_generation_in_force(word);
	Datum		agents;
	int			ended;
	int64		event_id = 0;
	bool		first;
	bool		alert;
	bool		request = false;
	TimestampTz published_at;
	uint64		episode;
	static int	ended_in_episode = 0;

	if (!still_in_emergency(word))
		return;
	episode = emergency_episode(&published_at);
	first = ks_shared->emergency_handled != episode;
	alert = alert_due(episode, published_at);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (alert && history)
		event_id = event_of_generation(generation, &request);
	agents = list_agent_roles();
	if (first)
		snapshot_or_warn(agents, generation, history);
	ended = end_agent_sessions(agents, published_at);
	if (first)
		note_prepared(agents);
	SPI_finish();
	if (first)
	{
		ks_shared->emergency_handled = episode;
		ended_in_episode = 0;
	}
	ended_in_episode += ended;
	if (!alert)
		return;
	ks_shared->emergency_alerted = episode;
	ks_notify_alert_later(generation, ended_in_episode);
	ereport(WARNING,
			(errmsg("killswitch: EMERGENCY (generation " INT64_FORMAT "): %d agent sessions ended",
					generation, ended_in_episode),
			 errdetail("Every statement of an agent is refused until the kill switch is released.")));
	run_alert_command(generation, event_id, ended_in_episode);
}

/*
 * The agent roles read from the shared catalogs (pg_authid, pg_auth_members)
 * with no database; their OIDs returned, and their names published as
 * list_agent_roles() does, for the login check.
 */
static List *
agent_roles_from_catalog(void)
{
	Oid			agent = get_role_oid(KS_ROLE_AGENT, true);
	uint64		epoch = ks_agent_roles_epoch;
	List	   *roles = NIL;
	List	   *names = NIL;
	KsListItem *items;
	ListCell   *lc;
	int			n = 0;

	if (OidIsValid(agent))
	{
		Relation	rel = table_open(AuthIdRelationId, AccessShareLock);
		SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
		HeapTuple	tup;

		while ((tup = systable_getnext(scan)) != NULL)
		{
			Form_pg_authid role = (Form_pg_authid) GETSTRUCT(tup);

			if (role->oid == agent || !is_member_of_role_nosuper(role->oid, agent))
				continue;
			roles = lappend_oid(roles, role->oid);
			names = lappend(names, pstrdup(NameStr(role->rolname)));
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	if (agents_listed && epoch == agents_built_epoch)
		return roles;
	items = palloc0(sizeof(KsListItem) * Max(list_length(names), 1));
	foreach(lc, names)
		items[n++].name = lfirst(lc);
	{
		/* a list that cannot be built never keeps sessions from being ended */
		dsa_pointer block = ks_list_build(items, n, WARNING);

		if (DsaPointerIsValid(block))
		{
			(void) ks_list_swap(KS_LIST_AGENTS, block, NULL, NULL, 0);
			agents_listed = true;
			agents_built_epoch = epoch;
		}
	}
	return roles;
}

/*
 * Write the snapshot file from shared memory alone.  A failure is a
 * WARNING: it never keeps the sessions from being ended.
 */
static void
snapshot_file_without_database(List *roles, int64 generation)
{
	MemoryContext ctx = CurrentMemoryContext;

	PG_TRY();
	{
		char	   *json = ks_sessions_snapshot_json(roles, generation);
		char		path[MAXPGPATH];
		char		problem[KS_PROBLEM_LEN];

		snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_SNAPSHOT_FILE_NAME);
		if (!ks_write_file_durably(path, json, strlen(json), problem, sizeof(problem)))
			ereport(WARNING, (errmsg("killswitch: could not write the emergency snapshot file"),
							  errdetail("%s", problem)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ctx);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(WARNING,
				(errmsg("killswitch: the emergency snapshot failed: %s", edata->message)));
	}
	PG_END_TRY();
}

/*
 * ks_emergency_tick() for a watcher connected to no database, inside its
 * transaction: the first time it sees an emergency generation, the snapshot
 * file, the sessions ended, the WARNING and the alert command; afterwards,
 * agent sessions that appear are ended.  Nothing is recorded: the history
 * learns of the change when the watcher has its database again.
 */
void
ks_emergency_tick_without_database(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		generation = ks_generation_in_force(word);
	List	   *roles;
	ListCell   *lc;
	int			ended = 0;
	bool		first;
	TimestampTz published_at;
	uint64		episode;

	if (!still_in_emergency(word))
		return;
	episode = emergency_episode(&published_at);
	first = ks_shared->emergency_handled != episode;
	roles = agent_roles_from_catalog();
	if (first)
		snapshot_file_without_database(roles, generation);
	foreach(lc, ks_sessions_of_roles(roles, published_at))
	{
		if (DatumGetBool(DirectFunctionCall2(pg_terminate_backend,
											 Int32GetDatum(lfirst_int(lc)),
											 Int64GetDatum(0))))
			ended++;
	}
	if (!first)
		return;

	ks_shared->emergency_handled = episode;
	ks_shared->emergency_alerted = episode;
	ereport(WARNING,
			(errmsg("killswitch: EMERGENCY (generation " INT64_FORMAT "): %d agent sessions ended",
					generation, ended),
			 RecoveryInProgress() ?
			 errdetail("Every statement of an agent is refused until the kill switch is released. "
					   "This is a standby: the snapshot is in the file %s only, and no NOTIFY was sent.",
					   KS_SNAPSHOT_FILE_NAME) :
			 errdetail("Every statement of an agent is refused until the kill switch is released. "
					   "The watcher has no database: the snapshot is in the file %s only, and no NOTIFY was sent.",
					   KS_SNAPSHOT_FILE_NAME)));
	run_alert_command(generation, 0, ended);
}
