/*
 * sessions.c — the agent sessions and the locks they hold, read from shared
 * memory (the backend status array and the lock table) rather than through
 * pg_stat_activity and pg_locks, which are views of a database: the one
 * rule for which sessions an emergency ends (ending.c), whether the
 * watcher is connected to a database or to none, and the snapshot of a
 * watcher connected to none (snapshot.c), in the shape of the one taken
 * through the views, and UTF-8 like it.
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "common/ip.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/backend_status.h"
#include "utils/json.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "sessions.h"
#include "state.h"
#include "store.h"

/* Is this backend status entry a session of one of the roles (and not us)? */
static bool
of_roles(const PgBackendStatus *be, List *roles)
{
	return be->st_procpid > 0 && be->st_procpid != MyProcPid &&
		be->st_backendType == B_BACKEND && list_member_oid(roles, be->st_userid);
}

/* Does this backend hold an advisory lock?  (From the lock table, no database needed.) */
static bool
holds_advisory_lock(const LockData *locks, int pid)
{
	for (int i = 0; i < locks->nelements; i++)
		if (locks->locks[i].pid == pid && locks->locks[i].holdMask != 0 &&
			locks->locks[i].locktag.locktag_type == LOCKTAG_ADVISORY)
			return true;
	return false;
}

/*
 * The pids of the client sessions of these roles to end (ending.c says
 * why): busy in a transaction that began before the emergency was
 * published, disabled (activity not tracked), or holding an advisory lock.
 * A session whose transaction start is not known yet (starting up, or
 * between its statement's start and its transaction's) began after the
 * publication, or is ended at the next tick.  An idle session stays: each
 * of its statements is refused.
 */
List *
ks_sessions_of_roles(List *roles, TimestampTz before)
{
	List	   *pids = NIL;
	int			n = pgstat_fetch_stat_numbackends();
	LockData   *locks = GetLockStatusData();

	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_get_local_beentry_by_index(i);
		PgBackendStatus *be;

		if (!local || !of_roles(&local->backendStatus, roles))
			continue;
		be = &local->backendStatus;
		if ((be->st_state != STATE_IDLE && be->st_xact_start_timestamp != 0 &&
			 be->st_xact_start_timestamp < before) ||
			be->st_state == STATE_DISABLED ||
			holds_advisory_lock(locks, be->st_procpid))
			pids = lappend_int(pids, be->st_procpid);
	}
	return pids;
}

/*
 * Text as UTF-8 for the file.  Another session's text is in its database's
 * encoding, and with no database there is no conversion to call: text that
 * is not valid UTF-8 keeps its ASCII, each other byte becomes '?'.
 */
static const char *
as_utf8(const char *s)
{
	int			len = strlen(s);
	char	   *copy;

	if (pg_encoding_verifymbstr(PG_UTF8, s, len) == len)
		return s;
	copy = pstrdup(s);
	for (char *p = copy; *p; p++)
		if (IS_HIGHBIT_SET(*p))
			*p = '?';
	return copy;
}

/* Append "key": a JSON string (UTF-8), or null. */
static void
add_text(StringInfo out, const char *key, const char *value)
{
	appendStringInfo(out, "\"%s\": ", key);
	if (value)
		escape_json(out, as_utf8(value));
	else
		appendStringInfoString(out, "null");
}

/* Append "key": a time stamp as the state file writes them, or null. */
static void
add_time(StringInfo out, const char *key, TimestampTz ts)
{
	char		buf[40];

	if (ts == 0)
	{
		appendStringInfo(out, "\"%s\": null", key);
		return;
	}
	ks_format_iso_utc(ks_timestamptz_to_unix_usec(ts), buf, sizeof(buf));
	add_text(out, key, buf);
}

/* A session's state as pg_stat_activity names it. */
static const char *
state_name(BackendState state)
{
	switch (state)
	{
		case STATE_IDLE:
			return "idle";
		case STATE_RUNNING:
			return "active";
		case STATE_IDLEINTRANSACTION:
			return "idle in transaction";
		case STATE_FASTPATH:
			return "fastpath function call";
		case STATE_IDLEINTRANSACTION_ABORTED:
			return "idle in transaction (aborted)";
		case STATE_DISABLED:
			return "disabled";
		default:
			return NULL;
	}
}

/* The client's address, numeric, or NULL (a Unix socket). */
static char *
client_address(const SockAddr *addr)
{
	char		host[NI_MAXHOST];
	int			family = addr->addr.ss_family;

	if ((family != AF_INET && family != AF_INET6) ||
		pg_getnameinfo_all(&addr->addr, addr->salen, host, sizeof(host), NULL, 0,
						   NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return NULL;
	return pstrdup(host);
}

/* Append one session as an object of the snapshot's "sessions". */
static void
add_session(StringInfo out, const PgBackendStatus *be)
{
	PGPROC	   *proc = BackendPidGetProc(be->st_procpid);
	uint32		wait = proc ? *(volatile uint32 *) &proc->wait_event_info : 0;

	appendStringInfo(out, "{\"pid\": %d, ", be->st_procpid);
	add_text(out, "role", GetUserNameFromId(be->st_userid, true));
	appendStringInfoString(out, ", ");
	add_text(out, "database", get_database_name(be->st_databaseid));
	appendStringInfoString(out, ", ");
	add_text(out, "application", be->st_appname);
	appendStringInfoString(out, ", ");
	add_text(out, "client", client_address(&be->st_clientaddr));
	appendStringInfoString(out, ", ");
	add_text(out, "state", state_name(be->st_state));
	appendStringInfoString(out, ", ");
	add_text(out, "query", pgstat_clip_activity(be->st_activity_raw));
	appendStringInfoString(out, ", ");
	add_time(out, "xact_start", be->st_xact_start_timestamp);
	appendStringInfoString(out, ", ");
	add_time(out, "query_start", be->st_activity_start_timestamp);
	appendStringInfoString(out, ", ");
	add_text(out, "wait_event_type", wait ? pgstat_get_wait_event_type(wait) : NULL);
	appendStringInfoString(out, ", ");
	add_text(out, "wait_event", wait ? pgstat_get_wait_event(wait) : NULL);
	appendStringInfoChar(out, '}');
}

/* Append one lock (held or awaited) as an object of the snapshot's "locks". */
static void
add_lock(StringInfo out, const LockInstanceData *lock, LOCKMODE mode, bool granted)
{
	const LOCKTAG *tag = &lock->locktag;
	bool		relation = tag->locktag_type == LOCKTAG_RELATION ||
		tag->locktag_type == LOCKTAG_RELATION_EXTEND ||
		tag->locktag_type == LOCKTAG_PAGE || tag->locktag_type == LOCKTAG_TUPLE;

	appendStringInfo(out, "{\"pid\": %d, ", lock->pid);
	add_text(out, "locktype", tag->locktag_type <= LOCKTAG_LAST_TYPE
			 ? LockTagTypeNames[tag->locktag_type] : NULL);
	if (relation)
		appendStringInfo(out, ", \"database\": %u, \"relation\": %u",
						 tag->locktag_field1, tag->locktag_field2);
	else
		appendStringInfoString(out, ", \"database\": null, \"relation\": null");
	appendStringInfo(out, ", \"mode\": \"%s\", \"granted\": %s, ",
					 GetLockmodeName(tag->locktag_lockmethodid, mode),
					 granted ? "true" : "false");
	add_text(out, "transactionid", tag->locktag_type == LOCKTAG_TRANSACTION
			 ? psprintf("%u", tag->locktag_field1) : NULL);
	appendStringInfoChar(out, '}');
}

/*
 * The emergency snapshot as JSON, from shared memory only: the status, the
 * sessions of these roles and the locks they hold or wait for.
 */
char *
ks_sessions_snapshot_json(List *roles, int64 generation)
{
	StringInfoData out;
	List	   *pids = NIL;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int			flags = KS_WORD_FLAGS(word);
	int			n = pgstat_fetch_stat_numbackends();
	char		source[sizeof(ks_shared->source)];
	char		reason[sizeof(ks_shared->reason)];
	char		by[sizeof(ks_shared->triggered_by)];
	char		problem[sizeof(ks_shared->watcher_problem)];
	TimestampTz since;
	LockData   *locks;
	bool		comma = false;

	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(source, ks_shared->source, sizeof(source));
	strlcpy(reason, ks_shared->reason, sizeof(reason));
	strlcpy(by, ks_shared->triggered_by, sizeof(by));
	strlcpy(problem, ks_shared->watcher_problem, sizeof(problem));
	since = ks_shared->since;
	SpinLockRelease(&ks_shared->mutex);

	initStringInfo(&out);
	appendStringInfo(&out, "{\"generation\": " INT64_FORMAT ", ", generation);
	add_time(&out, "taken_at", GetCurrentTimestamp());
	/* the status as killswitch.shared_state() shows it */
	appendStringInfo(&out, ", \"status\": {\"mode\": \"%s\", \"generation\": " INT64_FORMAT ", ",
					 ks_mode_sql_names[KS_WORD_MODE(word)], KS_WORD_GENERATION(word));
	add_text(&out, "integrity", (flags & KS_FLAG_TAMPERED) ? "tampered" :
			 (flags & KS_FLAG_UNSIGNED) ? "unsigned" : "ok");
	appendStringInfoString(&out, ", ");
	add_text(&out, "source", source);
	appendStringInfoString(&out, ", ");
	add_time(&out, "since", since);
	appendStringInfoString(&out, ", ");
	add_text(&out, "reason", reason);
	appendStringInfoString(&out, ", ");
	add_text(&out, "triggered_by", by);
	appendStringInfoString(&out, ", ");
	add_text(&out, "watcher_problem", problem[0] ? problem : NULL);
	appendStringInfoString(&out, "}, \"sessions\": [");
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_get_local_beentry_by_index(i);

		if (!local || !of_roles(&local->backendStatus, roles))
			continue;
		if (comma)
			appendStringInfoString(&out, ", ");
		add_session(&out, &local->backendStatus);
		pids = lappend_int(pids, local->backendStatus.st_procpid);
		comma = true;
	}
	appendStringInfoString(&out, "], \"locks\": [");
	comma = false;
	locks = GetLockStatusData();
	for (int i = 0; i < locks->nelements; i++)
	{
		const LockInstanceData *lock = &locks->locks[i];

		if (!list_member_int(pids, lock->pid))
			continue;
		for (LOCKMODE mode = 1; mode < MAX_LOCKMODES; mode++)
		{
			if (!(lock->holdMask & LOCKBIT_ON(mode)))
				continue;
			if (comma)
				appendStringInfoString(&out, ", ");
			add_lock(&out, lock, mode, true);
			comma = true;
		}
		if (lock->waitLockMode != NoLock)
		{
			if (comma)
				appendStringInfoString(&out, ", ");
			add_lock(&out, lock, lock->waitLockMode, false);
			comma = true;
		}
	}
	appendStringInfoString(&out, "]}");
	return out.data;
}
