/*
 * alert.c — the emergency's alert (ARCHITECTURE §9): NOTIFY
 * killswitch_alert (sent at the watcher's commit, notify.c), a WARNING in
 * the log, and killswitch.alert_command.
 *
 * The command is run with the details in environment variables, never in
 * the shell text (a reason is free text), in a process group of its own,
 * and never waited for: the watcher reaps it on later ticks and kills the
 * group once it outlives killswitch.alert_timeout, so an alert that hangs
 * never holds up the watcher.
 */
#include "postgres.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "alert.h"
#include "guc.h"
#include "names.h"
#include "notify.h"
#include "state.h"
#include "store.h"

/* The alert command running, if any. */
static pid_t alert_pid = 0;
static TimestampTz alert_deadline = 0;

/* What the alert command is told, copied out of shared memory. */
typedef struct AlertDetails
{
	char		reason[256];
	char		by[64];
	char		source[16];
	char		snapshot[MAXPGPATH];
	char		scope[NAMEDATALEN];	/* a scope's emergency: its role; the fleet's: empty */
} AlertDetails;

/*
 * The emergency's own reason, who raised it and from where.  A raise from
 * SQL whose event is not the chain's yet is named by its raising slot:
 * the chain still shows the mode before it.
 */
static void
alert_details(AlertDetails *d)
{
	char		path[MAXPGPATH];

	memset(d, 0, sizeof(*d));
	SpinLockAcquire(&ks_shared->mutex);
	if (ks_shared->chain_mode != KS_EMERGENCY && ks_shared->raise_reason[0])
	{
		strlcpy(d->reason, ks_shared->raise_reason, sizeof(d->reason));
		strlcpy(d->by, ks_shared->raise_by, sizeof(d->by));
		strlcpy(d->source, "sql", sizeof(d->source));
	}
	else
	{
		strlcpy(d->reason, ks_shared->reason, sizeof(d->reason));
		strlcpy(d->by, ks_shared->triggered_by, sizeof(d->by));
		strlcpy(d->source, ks_shared->source, sizeof(d->source));
	}
	SpinLockRelease(&ks_shared->mutex);
	snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_SNAPSHOT_FILE_NAME);
	strlcpy(d->snapshot, make_absolute_path(path), sizeof(d->snapshot));
}

/* Set an environment variable to a number; event 0 (not recorded yet) is empty. */
static void
setenv_int64(const char *name, int64 value, bool empty_if_zero)
{
	char		buf[32];

	if (empty_if_zero && value == 0)
		buf[0] = '\0';
	else
		snprintf(buf, sizeof(buf), INT64_FORMAT, value);
	setenv(name, buf, 1);
}

/* In the forked child: become the command, with the details in the environment. */
static void
exec_alert_command(const AlertDetails *d, int64 generation, int64 event_id, int ended)
{
	/* its own process group, so that a timeout ends all of it */
	setsid();
	setenv("KS_MODE", "emergency", 1);
	setenv("KS_REASON", d->reason, 1);
	setenv("KS_TRIGGERED_BY", d->by, 1);
	setenv("KS_SOURCE", d->source, 1);
	setenv_int64("KS_GENERATION", generation, false);
	setenv_int64("KS_EVENT_ID", event_id, true);
	setenv_int64("KS_SESSIONS_ENDED", ended, false);
	setenv("KS_SNAPSHOT_FILE", d->snapshot, 1);
	if (d->scope[0])
		setenv("KS_SCOPE", d->scope, 1);
	execl("/bin/sh", "sh", "-c", ks_alert_command, (char *) NULL);
	_exit(127);
}

/* Start killswitch.alert_command, unless none is set or one still runs. */
static void
run_alert_command(const AlertDetails *d, int64 generation, int64 event_id, int ended)
{
	pid_t		pid;

	if (ks_alert_command == NULL || ks_alert_command[0] == '\0' || alert_pid != 0)
		return;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
	{
		ereport(WARNING, (errmsg("could not start killswitch.alert_command: %m")));
		return;
	}
	if (pid == 0)
		exec_alert_command(d, generation, event_id, ended);
	alert_pid = pid;
	alert_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ks_alert_timeout);
	ereport(LOG, (errmsg("killswitch.alert_command started (pid %d)", (int) pid)));
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
			ereport(LOG, (errmsg("killswitch.alert_command succeeded")));
		else
			ereport(WARNING, (errmsg("killswitch.alert_command failed (status %d)", status)));
		alert_pid = 0;
	}
	else if (GetCurrentTimestamp() >= alert_deadline)
	{
		kill(-alert_pid, SIGKILL);
		(void) waitpid(alert_pid, &status, 0);
		ereport(WARNING, (errmsg("killswitch.alert_command did not finish within %d ms and was killed",
								 ks_alert_timeout)));
		alert_pid = 0;
	}
}

/*
 * The id of the event that set this generation, for the alert to name; 0
 * when there is none (yet).  Reads killswitch.events: inside the watcher's
 * transaction in a database with the history.
 */
int64
ks_alert_event_id(int64 generation)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(generation)};
	int64		id = 0;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT id FROM killswitch.events WHERE generation = $1 AND scope IS NULL",
							  1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return id;
}

/*
 * Alert that an emergency episode began: its generation, the event that
 * set it (0: not recorded yet), how many agent sessions were ended.  A
 * watcher connected to no database sends no NOTIFY (a NOTIFY belongs to a
 * database) and says so in the WARNING, with why.
 */
void
ks_alert_emergency(int64 generation, int64 event_id, int ended, bool database)
{
	AlertDetails d;

	if (database)
	{
		ks_notify_alert_later(generation, ended);
		ereport(WARNING,
				(errmsg_plural("kill switch emergency (generation " INT64_FORMAT "): %d agent session ended",
							  "kill switch emergency (generation " INT64_FORMAT "): %d agent sessions ended",
							  ended, generation, ended),
				 errdetail("Every statement of an agent is refused until the kill switch is released.")));
	}
	else
		ereport(WARNING,
				(errmsg_plural("kill switch emergency (generation " INT64_FORMAT "): %d agent session ended",
							  "kill switch emergency (generation " INT64_FORMAT "): %d agent sessions ended",
							  ended, generation, ended),
				 RecoveryInProgress() ?
				 errdetail("Every statement of an agent is refused until the kill switch is released. "
						   "This is a standby: the snapshot is in the file %s only, and no NOTIFY was sent.",
						   KS_SNAPSHOT_FILE_NAME) :
				 errdetail("Every statement of an agent is refused until the kill switch is released. "
						   "The watcher has no database: the snapshot is in the file %s only, and no NOTIFY was sent.",
						   KS_SNAPSHOT_FILE_NAME)));
	alert_details(&d);
	run_alert_command(&d, generation, event_id, ended);
}

/*
 * The details of a scope's emergency: its role, and the reason, caller,
 * source and id of its event at generation (none while its raise is not
 * committed: generation 0).  Reads killswitch.events.
 */
static int64
scope_alert_details(AlertDetails *d, Oid role, const char *name, int64 generation)
{
	Oid			argtypes[2] = {OIDOID, INT8OID};
	Datum		values[2] = {ObjectIdGetDatum(role), Int64GetDatum(generation)};
	int64		id = 0;
	bool		isnull;

	memset(d, 0, sizeof(*d));
	strlcpy(d->scope, name, sizeof(d->scope));
	strlcpy(d->source, "sql", sizeof(d->source));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * The latest snapshot: the scope's generation is shared memory's, set at
	 * its commit, which the watcher's transaction may have begun before.
	 */
	if (SPI_execute_snapshot(SPI_prepare("SELECT id, reason, triggered_by, source FROM killswitch.events "
										 "WHERE scope = $1 AND generation = $2", 2, argtypes),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *by = SPI_getvalue(tup, desc, 3);

		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(d->reason, SPI_getvalue(tup, desc, 2), sizeof(d->reason));
		strlcpy(d->by, by ? by : "", sizeof(d->by));
		strlcpy(d->source, SPI_getvalue(tup, desc, 4), sizeof(d->source));
	}
	SPI_finish();
	return id;
}

/*
 * Alert that a scope entered emergency (ARCHITECTURE §13): NOTIFY
 * killswitch_alert with the scope named, and killswitch.alert_command with
 * KS_SCOPE set (no snapshot: the snapshot is the fleet's emergency's only).
 * generation is the scope's, 0 while its raise is not committed.  Inside
 * the watcher's transaction in a database with the history.
 */
void
ks_alert_scope_emergency(Oid role, int64 generation, int ended)
{
	AlertDetails d;
	char	   *name = GetUserNameFromId(role, true);
	int64		event_id;

	if (name == NULL)
		return;					/* dropped since: its scope is gone with it */
	event_id = scope_alert_details(&d, role, name, generation);
	ks_notify_scope_alert_later(name, generation, ended);
	run_alert_command(&d, generation, event_id, ended);
}
