/*
 * notify.c — announcing changes (ARCHITECTURE §5.6): the JSON payload on
 * channel killswitch, and killswitch_alert for emergency and tamper.
 *
 * Never queued in the changing transaction: a full NOTIFY queue (or a
 * transaction holding the queue's lock while it waits for a synchronous
 * standby) would abort or hold up the change at PreCommit_Notify.  Whoever
 * commits a change wakes the watcher, and the watcher sends, in a
 * transaction of its own, the payload of every event newer than
 * KsShared.notified_generation — so only committed changes are announced,
 * a moment after their commit.  A queue that cannot take them costs a
 * WARNING and those notifications, never a change; agents that must not
 * miss one wait in ks_wait() or read the mode before each action.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "names.h"
#include "notify.h"
#include "scope.h"
#include "state.h"
#include "store.h"

/* NOTIFY payloads must stay under 8000 bytes; leave room to spare. */
#define KS_NOTIFY_MAX 7900

/* Build the NOTIFY payload with reason and triggered_by cut to maxlen bytes. */
static void
notify_payload(StringInfo out, int64 id, KsMode mode, int previous,
			   const char *reason, const char *by, TimestampTz at,
			   int64 generation, const char *source, const char *scope, int maxlen)
{
	char		ts[40];
	int			rlen = pg_mbcliplen(reason, strlen(reason), maxlen);
	int			blen = pg_mbcliplen(by, strlen(by), maxlen);

	ks_format_iso_utc(ks_timestamptz_to_unix_usec(at), ts, sizeof(ts));
	resetStringInfo(out);
	appendStringInfo(out, "{\"event_id\": " INT64_FORMAT ", \"mode\": \"%s\", \"previous_mode\": ",
					 id, ks_mode_sql_names[mode]);
	if (previous == KS_NO_MODE)
		appendStringInfoString(out, "null");
	else
		appendStringInfo(out, "\"%s\"", ks_mode_sql_names[previous]);
	appendStringInfoString(out, ", \"reason\": ");
	escape_json(out, pnstrdup(reason, rlen));
	appendStringInfoString(out, ", \"triggered_by\": ");
	escape_json(out, pnstrdup(by, blen));
	appendStringInfo(out, ", \"at\": \"%s\", \"generation\": " INT64_FORMAT ", \"source\": ",
					 ts, generation);
	escape_json(out, source);
	/* a scope's event names its role (ARCHITECTURE §13); the fleet's payload is unchanged */
	if (scope)
	{
		appendStringInfoString(out, ", \"scope\": ");
		escape_json(out, scope);
	}
	if (rlen < (int) strlen(reason) || blen < (int) strlen(by))
		appendStringInfoString(out, ", \"truncated\": true");
	appendStringInfoChar(out, '}');
}

/* How long the watcher waits for the NOTIFY queue's lock before it gives up. */
#define KS_NOTIFY_LOCK_TIMEOUT "1s"

/*
 * Queue the NOTIFY of a change on channel killswitch (and killswitch_alert
 * for emergency and tamper), in the watcher's transaction.  The payload
 * stays valid JSON under the 8000-byte limit: long texts are shortened
 * here only, the table keeps them whole.
 */
static void
notify_event(int64 event_id, KsMode mode, int previous, const char *reason,
			 const char *triggered_by, TimestampTz at, int64 generation,
			 const char *source, const char *scope)
{
	StringInfoData payload;
	int			maxlen = KS_MAX_TEXT_LEN;

	initStringInfo(&payload);
	for (;;)
	{
		notify_payload(&payload, event_id, mode, previous, reason, triggered_by,
					   at, generation, source, scope, maxlen);
		if (payload.len < KS_NOTIFY_MAX || maxlen == 0)
			break;
		maxlen = maxlen > 4000 ? 4000 : maxlen / 2;
	}
	Async_Notify(KS_CHANNEL, payload.data);
	if (mode == KS_EMERGENCY || strcmp(source, "tamper") == 0)
		Async_Notify(KS_ALERT_CHANNEL, payload.data);
}

/* The emergency's alert, waiting for the next round of notifications. */
static bool alert_pending = false;
static int64 alert_generation;
static int	alert_sessions_ended;

/* NOTIFY killswitch_alert that the emergency actions ran (with the next round). */
void
ks_notify_alert_later(int64 generation, int sessions_ended)
{
	alert_pending = true;
	alert_generation = generation;
	alert_sessions_ended = sessions_ended;
}

/* The alerts of scopes' emergencies, waiting for the next round (in TopMemoryContext). */
static List *scope_alerts = NIL;

/* NOTIFY killswitch_alert that a scope's emergency actions ran (with the next round). */
void
ks_notify_scope_alert_later(const char *scope, int64 generation, int sessions_ended)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	StringInfoData payload;

	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"alert\": \"emergency\", \"scope\": ");
	escape_json(&payload, scope);
	appendStringInfo(&payload, ", \"generation\": " INT64_FORMAT ", \"sessions_ended\": %d}",
					 generation, sessions_ended);
	scope_alerts = lappend(scope_alerts, payload.data);
	MemoryContextSwitchTo(old);
}

/* Send the scopes' alerts queued, in the current transaction. */
static void
notify_scope_alerts(void)
{
	ListCell   *lc;

	foreach(lc, scope_alerts)
		Async_Notify(KS_ALERT_CHANNEL, lfirst(lc));
}

/*
 * Queue every event the query selects (its condition on $1, after):
 * returns the highest of after and the rows' column key (1, the id, or 7,
 * the generation).  A scope's events name it (scope_name), the fleet's do
 * not (the table's CHECK keeps it NULL there).
 */
static int64
queue_events_where(const char *condition, int64 after, int key)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(after)};
	int64		newest = after;

	if (SPI_execute_with_args(psprintf("SELECT id, mode::text, previous_mode::text, reason, triggered_by, "
									   "at, generation, source, scope_name FROM killswitch.events "
									   "WHERE %s ORDER BY id", condition),
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *prev = SPI_getvalue(tup, desc, 3);

		notify_event(DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)),
					 (KsMode) ks_mode_from_sql_name(SPI_getvalue(tup, desc, 2)),
					 prev ? ks_mode_from_sql_name(prev) : KS_NO_MODE,
					 SPI_getvalue(tup, desc, 4), SPI_getvalue(tup, desc, 5),
					 DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull)),
					 DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull)),
					 SPI_getvalue(tup, desc, 8), SPI_getvalue(tup, desc, 9));
		newest = Max(newest, DatumGetInt64(SPI_getbinval(tup, desc, key, &isnull)));
	}
	return newest;
}

/* Queue every fleet event newer than since; returns the newest generation queued. */
static int64
queue_events_since(int64 since)
{
	return queue_events_where("generation > $1 AND scope IS NULL", since, 7);
}

/*
 * Scope events (ARCHITECTURE §13) have generation lines of their own: the
 * watcher announces them by id, those newer than the newest it announced
 * — at its first look, those recorded since it started.
 */
static int64 scope_notified_id = -1;
static uint64 scope_notified_version = PG_UINT64_MAX;

static void
queue_scope_events(void)
{
	if (scope_notified_id < 0)
	{
		Oid			st[1] = {TIMESTAMPTZOID};
		Datum		sv[1] = {TimestampTzGetDatum(MyStartTimestamp)};
		bool		isnull;

		/* from the events recorded since this watcher started */
		if (SPI_execute_with_args("SELECT COALESCE(max(id), 0) FROM killswitch.events WHERE at < $1",
								  1, st, sv, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read killswitch.events");
		scope_notified_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	scope_notified_id = queue_events_where("id > $1 AND scope IS NOT NULL", scope_notified_id, 1);
}

/*
 * The watcher, outside a transaction, connected to the history: announce
 * the events newer than the last announced, and the emergency's alert, in
 * a transaction of its own.  The queue's lock is waited for at most
 * KS_NOTIFY_LOCK_TIMEOUT.  Whatever fails costs a WARNING and these
 * notifications: they are not tried again.
 */
void
ks_notify_pending(void)
{
	MemoryContext ctx = CurrentMemoryContext;
	int64		since;
	int64		newest;
	uint64		scope_version = ks_scope_version();
	bool		scopes_due = scope_version != scope_notified_version;

	SpinLockAcquire(&ks_shared->mutex);
	since = ks_shared->notified_generation;
	SpinLockRelease(&ks_shared->mutex);
	/* on failure, everything up to the generation in force is dropped */
	newest = KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word));
	if (newest <= since && !alert_pending && !scopes_due && scope_alerts == NIL)
		return;
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		(void) set_config_option("lock_timeout", KS_NOTIFY_LOCK_TIMEOUT, PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		newest = queue_events_since(since);
		if (scopes_due)
			queue_scope_events();
		SPI_finish();
		if (alert_pending)
			Async_Notify(KS_ALERT_CHANNEL,
						 psprintf("{\"alert\": \"emergency\", \"generation\": " INT64_FORMAT
								  ", \"sessions_ended\": %d, \"snapshot_file\": \"%s\"}",
								  alert_generation, alert_sessions_ended, KS_SNAPSHOT_FILE_NAME));
		notify_scope_alerts();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ctx);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("could not announce kill switch changes: %s", edata->message),
				 errdetail("The changes up to generation " INT64_FORMAT " are in force and recorded; their NOTIFY was dropped.",
						   newest),
				 errhint("Agents learn the mode from ks_mode() and ks_wait() as well.")));
	}
	PG_END_TRY();
	alert_pending = false;
	list_free_deep(scope_alerts);
	scope_alerts = NIL;
	scope_notified_version = scope_version;	/* read before the look: a later change looks again */
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->notified_generation = Max(ks_shared->notified_generation, newest);
	SpinLockRelease(&ks_shared->mutex);
}
