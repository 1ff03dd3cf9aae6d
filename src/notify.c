/*
 * notify.c — announcing a change (ARCHITECTURE §5): the JSON payload on channel
 * killswitch, and killswitch_alert for emergency and tamper.  Queued inside
 * the changing transaction, so delivered at its commit and never after a
 * rollback.
 */
#include "postgres.h"

#include "commands/async.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "killswitch.h"

/* NOTIFY payloads must stay under 8000 bytes; leave room to spare. */
#define KS_NOTIFY_MAX 7900

/* Build the NOTIFY payload with reason and triggered_by cut to maxlen bytes. */
static void
notify_payload(StringInfo out, int64 id, KsMode mode, int previous,
			   const char *reason, const char *by, TimestampTz at,
			   int64 generation, const char *source, int maxlen)
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
	if (rlen < (int) strlen(reason) || blen < (int) strlen(by))
		appendStringInfoString(out, ", \"truncated\": true");
	appendStringInfoChar(out, '}');
}

/*
 * Queue the NOTIFY of a change on channel killswitch (and killswitch_alert
 * for emergency and tamper).  Delivered at commit, gone with a rollback.
 * The payload stays valid JSON under the 8000-byte limit: long texts are
 * shortened here only, the table keeps them whole.
 */
void
ks_notify(int64 event_id, KsMode mode, int previous, const char *reason,
		  const char *triggered_by, TimestampTz at, int64 generation,
		  const char *source)
{
	StringInfoData payload;
	int			maxlen = KS_MAX_TEXT_LEN;

	initStringInfo(&payload);
	for (;;)
	{
		notify_payload(&payload, event_id, mode, previous, reason, triggered_by,
					   at, generation, source, maxlen);
		if (payload.len < KS_NOTIFY_MAX || maxlen == 0)
			break;
		maxlen = maxlen > 4000 ? 4000 : maxlen / 2;
	}
	Async_Notify(KS_CHANNEL, payload.data);
	if (mode == KS_EMERGENCY || strcmp(source, "tamper") == 0)
		Async_Notify(KS_ALERT_CHANNEL, payload.data);
}

/* NOTIFY killswitch_alert that the emergency actions ran. */
void
ks_notify_alert(int64 generation, int sessions_ended)
{
	Async_Notify(KS_ALERT_CHANNEL,
				 psprintf("{\"alert\": \"emergency\", \"generation\": " INT64_FORMAT
						  ", \"sessions_ended\": %d, \"snapshot_file\": \"%s\"}",
						  generation, sessions_ended, KS_SNAPSHOT_FILE_NAME));
}
