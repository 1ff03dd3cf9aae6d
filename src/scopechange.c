/*
 * scopechange.c — a scope's change through SQL (ARCHITECTURE §13):
 * ks_engage(..., scope => role) and ks_disengage(..., scope => role), what
 * their commit and abort do, the refusal to drop a role whose scope is
 * active, and the set's SQL view (killswitch.active_scopes()).
 *
 * The fleet's rule holds for scopes: raising is unconditional, lowering
 * only by a committed release.  A raise is in force at once (a raise in
 * flight in scope.c, then the interlock: no agent of the scope commits
 * after the raiser), recorded in the chain in its transaction under the
 * lock that orders changes, and becomes the scope's committed state at
 * commit; an abort (of the transaction, or of the savepoint that made
 * it) takes it back.  A raise never waits for that lock (ARCHITECTURE
 * §5.3 "Busy"): when it cannot be had at once, the event follows the
 * commit — a mark per scope (marks.c) before the commit record, the raise
 * kept in force after the commit as a marked entry of the set, and the
 * event recorded, with the generation next on the scope's line then, by
 * the watcher or the next scope change under the lock
 * (ks_record_scope_marks()).  A release is recorded in its transaction
 * and changes nothing anyone reads before its commit record is durable.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "agents.h"
#include "change.h"
#include "compat.h"
#include "encoding.h"
#include "events.h"
#include "guc.h"
#include "interlock.h"
#include "marks.h"
#include "modetype.h"
#include "names.h"
#include "owner.h"
#include "rights.h"
#include "scope.h"
#include "scopechange.h"
#include "scopefile.h"
#include "scopemembers.h"
#include "state.h"
#include "store.h"

PG_FUNCTION_INFO_V1(ks_active_scopes);
PG_FUNCTION_INFO_V1(ks_scopes_overflowed);

/* One change of a scope in this transaction, oldest first. */
typedef struct ScopeChange
{
	Oid			role;
	KsMode		mode;			/* as recorded: a raise never below what the scope held */
	bool		release;
	bool		recorded;		/* false: a raise in force whose event is not recorded yet */
	SubTransactionId subid;		/* the (sub)transaction that made it */
	int64		generation;
	TimestampTz at;
	/* a raise whose event follows the commit (the lock was busy): the change as asked */
	bool		deferred;
	SubTransactionId recorded_in;	/* such a raise recorded later: the (sub)transaction that did */
	char	   *scope_name;
	KsEventInput in;
	KsEventIdentity who;
	/* the recorded event of another transaction's committed raise (its mark) */
	uint64		swept_xid;
	bool		in_place;		/* made in the committed entry: no slot was free (scope.c) */
} ScopeChange;

static List *changes = NIL;		/* in TopTransactionContext */
static uint64 marked_xid = 0;	/* this transaction's marks of deferred raises are written */
static object_access_hook_type prev_object_access_hook = NULL;

/* A scope that names no role: nothing is changed. */
static void
role_unknown(const char *scope)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("role \"%s\" does not exist", scope),
			 errdetail("A scope names an existing role."),
			 errhint("Create the role first, or give NULL for the whole fleet.")));
}

/*
 * Lock role for a change of its scope, and say whether it still exists.
 * A release holds the role's lock (shared, to its end): a DROP ROLE or
 * membership change under way is waited for (they take it exclusively),
 * and one that committed meanwhile is seen.  A raise, already in force,
 * never waits for an open change: it orders itself with those changes as
 * scopemembers.c does (ks_scope_raise_lock_role()).
 */
static bool
role_locked(Oid role, bool release)
{
	if (!release)
		return ks_scope_raise_lock_role(role);
	LockSharedObject(AuthIdRelationId, role, 0, AccessShareLock);
	return SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role));
}

/*
 * The role a scope names: not empty, and known.  Nothing is changed on
 * error.  A release locks it here; a raise once it is in force
 * (raise_scope()), so that it never waits before.
 */
static Oid
scope_role(const char *scope, bool release)
{
	Oid			role;

	if (scope[strspn(scope, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("scope must not be empty"),
				 errdetail("A scope names a role: that role and every role that is a member of it."),
				 errhint("Give a role's name, or NULL for the whole fleet.")));
	role = get_role_oid(scope, true);
	if (OidIsValid(role) && release && !role_locked(role, true))
		role = InvalidOid;
	if (!OidIsValid(role))
		role_unknown(scope);
	return role;
}

/* The scope's mode as this transaction sees it: its own newest change, else the committed one. */
static KsMode
mode_held(Oid role)
{
	ListCell   *lc;
	KsScope		held;
	KsMode		mode = ks_scope_lookup(role, &held, NULL) ? held.mode : KS_DISENGAGED;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->role == role && c->recorded)
			mode = c->mode;
	}
	return mode;
}

/* The highest mode this transaction's raises of role still ask for. */
static KsMode
raised_in_flight(Oid role)
{
	ListCell   *lc;
	KsMode		mode = KS_DISENGAGED;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->role == role && !c->release)
			mode = Max(mode, c->mode);
	}
	return mode;
}

/* Does an agent role belong to the scope (the role itself, or a member of it, at any depth)? */
static bool
scope_holds_agents(Oid role)
{
	KsOwnerContext owner;
	Oid			argtypes[2] = {OIDOID, OIDOID};
	Datum		values[2] = {ObjectIdGetDatum(role), ObjectIdGetDatum(ks_role_oid(KS_ROLE_AGENT))};
	bool		found;

	ks_owner_begin(&owner);
	if (SPI_execute_with_args("WITH RECURSIVE m(r) AS (SELECT $1 UNION "
							  "SELECT am.member FROM pg_catalog.pg_auth_members am JOIN m ON am.roleid = m.r) "
							  "SELECT 1 FROM m WHERE pg_catalog.pg_has_role(m.r, $2, 'MEMBER') LIMIT 1",
							  2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_auth_members");
	found = SPI_processed > 0;
	ks_owner_end(&owner);
	return found;
}

/* The newest event of a scope, for a raise that changes nothing. */
static Datum
newest_event_of(Oid role)
{
	KsOwnerContext owner;
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(role)};
	Datum		row = (Datum) 0;
	bool		isnull = true;

	ks_owner_begin(&owner);
	if (SPI_execute_with_args("SELECT e FROM killswitch.events e WHERE e.scope = $1 "
							  "ORDER BY e.id DESC LIMIT 1", 1, argtypes, values, NULL,
							  true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	if (SPI_processed == 1)
		row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		row = SPI_datumTransfer(row, false, -1);
	ks_owner_end(&owner);
	return row;
}

/*
 * Note a change of role in this (sub)transaction, not recorded yet.  A
 * raise is noted before it is put in force, so that an error before its
 * event is recorded (the interlock, the ordering lock's lock_timeout)
 * still takes it back at abort.
 */
static ScopeChange *
note_change(Oid role, KsMode mode)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	ScopeChange *c = palloc0(sizeof(ScopeChange));

	c->role = role;
	c->mode = mode;
	c->subid = GetCurrentSubTransactionId();
	changes = lappend(changes, c);
	MemoryContextSwitchTo(old);
	return c;
}

/*
 * Record the change's event and remember it for the commit (request: a
 * release request; source: "sql", or "file" for an outside write the
 * watcher applies).  A raise's change was noted by raise_scope(): raised.
 */
static Datum
record(Oid role, const char *scope, KsMode mode, KsMode previous, const char *reason,
	   const char *by, int32 affected, bool release, bool request, const char *source,
	   ScopeChange *raised)
{
	KsEventInput in;
	ScopeChange *c;
	Datum		row;
	int64		generation;
	TimestampTz at;

	memset(&in, 0, sizeof(in));
	in.mode = mode;
	in.previous = previous;
	in.reason = reason;
	in.triggered_by = by;
	in.affected_tasks = affected;
	in.source = request ? "release_request" : source;
	in.floor_generation = 0;
	in.request = request;
	in.release_target = request ? KS_DISENGAGED : mode;
	/* the event takes its texts in UTF-8 (scope is the catalog's, in the database encoding) */
	row = ks_record_scope_event(&in, role, ks_text_to_utf8(scope, "the scope's role name"), &generation, &at);

	c = release ? note_change(role, mode) : raised;
	c->mode = mode;
	c->release = release && !request;
	c->recorded = true;
	c->generation = generation;
	c->at = at;
	return row;
}

/*
 * The ordering lock is busy: the raise stands, and its event follows the
 * commit (ARCHITECTURE §5.3 "Busy", §13).  The transaction gets an id in
 * our name, so that its commit settles the mark; the change is kept whole
 * with who asked.  Returns the row as it will be, with id, generation,
 * prev_hash, hash and signature null.
 */
static Datum
defer_raise(ScopeChange *c, const char *scope, const char *reason, const char *by,
			int32 affected)
{
	MemoryContext old;
	KsEventInput in;

	ks_own_transaction_id();
	old = MemoryContextSwitchTo(TopTransactionContext);
	c->deferred = true;
	c->scope_name = pstrdup(scope);
	c->in.mode = c->mode;
	c->in.previous = mode_held(c->role);
	c->in.reason = pstrdup(reason);
	c->in.triggered_by = pstrdup(by);
	c->in.affected_tasks = affected;
	c->in.source = "sql";
	c->who.session_role = ks_text_to_utf8(GetUserNameFromId(GetSessionUserId(), false),
										  "the session user's name");
	c->who.client_addr = ks_client_address();
	c->who.backend_pid = MyProcPid;
	c->who.xid = U64FromFullTransactionId(GetTopFullTransactionId());
	c->who.at = GetCurrentTimestamp();
	MemoryContextSwitchTo(old);
	in = c->in;
	in.identity = &c->who;
	return ks_event_row_pending_scope(&in, c->role, scope);
}

/*
 * Record a raise whose event followed (ours, or another transaction's
 * committed one) as its caller's, never below what the scope holds by now.
 * The change moves to the end: the list is in the chain's order.
 */
static void
record_followed(ScopeChange *c)
{
	KsMode		held = mode_held(c->role);
	KsEventInput in = c->in;

	in.mode = Max(c->in.mode, held);
	in.previous = held;
	in.identity = &c->who;
	(void) ks_record_scope_event(&in, c->role, c->scope_name, &c->generation, &c->at);
	c->mode = in.mode;
	c->recorded = true;
	c->deferred = false;
	c->recorded_in = GetCurrentSubTransactionId();
	changes = list_delete_ptr(changes, c);
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		changes = lappend(changes, c);
		MemoryContextSwitchTo(old);
	}
}

/* A mark's raise, as a change of this transaction to record (TopTransactionContext). */
static ScopeChange *
change_of_mark(const KsMark *m)
{
	ScopeChange *c = note_change(m->scope, m->mode);
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	c->swept_xid = m->xid;
	c->scope_name = pstrdup(m->scope_name);
	c->in.mode = m->mode;
	c->in.reason = pstrdup(m->reason);
	c->in.triggered_by = pstrdup(m->triggered_by);
	c->in.affected_tasks = m->affected_tasks;
	c->in.source = pstrdup(m->source ? m->source : "sql");
	c->who.session_role = pstrdup(m->session_role);
	c->who.client_addr = m->client_addr ? pstrdup(m->client_addr) : NULL;
	c->who.backend_pid = m->backend_pid;
	c->who.xid = m->xid;
	c->who.at = ks_unix_usec_to_timestamptz(m->at_usec);
	MemoryContextSwitchTo(old);
	return c;
}

/* Has this transaction recorded the mark of xid's raise of role already? */
static bool
swept(Oid role, uint64 xid)
{
	ListCell   *lc;

	foreach(lc, changes)
		if (((ScopeChange *) lfirst(lc))->swept_xid == xid &&
			((ScopeChange *) lfirst(lc))->role == role)
			return true;
	return false;
}

/* The watcher is to look again (a mark still waits, or its recording is to be confirmed). */
static void
marks_due_again(void)
{
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->marks_due = true;
	SpinLockRelease(&ks_shared->mutex);
}

/*
 * Record, in this transaction, the scopes' raises of committed transactions
 * whose event followed (their marks), before any change of ours; settle
 * away those whose transaction did not commit.  The caller holds the lock
 * that orders changes.  Their marked entries and marks go when this
 * transaction commits (at_commit()).  all: read the marks even when the
 * set holds no marked raise (the first look after a start).
 */
void
ks_record_scope_marks(bool all)
{
	List	   *marks;
	ListCell   *lc;
	bool		bad;
	bool		again = false;
	uint64		seen;
	char		problem[KS_PROBLEM_LEN];

	if (!ks_scope_marks_due(&seen) && !all)
		return;
	marks = ks_scope_marks_read(&bad, problem, sizeof(problem));
	if (bad)
		ereport(WARNING,
				(errmsg("a mark of a scope's raise cannot be read: %s", problem),
				 errdetail("A raise it names stays in force while the server runs, but its event cannot be recorded.")));
	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);
		FullTransactionId fxid = FullTransactionIdFromU64(m->xid);
		TransactionId xid = XidFromFullTransactionId(fxid);
		bool		before_next = FullTransactionIdPrecedes(fxid, ReadNextFullTransactionId());

		if (TransactionIdIsCurrentTransactionId(xid) || swept(m->scope, m->xid))
			continue;
		if (before_next && TransactionIdIsInProgress(xid))
		{
			again = true;		/* its backend's business until it ends */
			continue;
		}
		if (!before_next || !TransactionIdDidCommit(xid))
		{
			ks_scope_drop_marked(m->scope, m->xid);
			(void) ks_scope_mark_remove(m->xid, m->scope);
			ereport(LOG,
					(errmsg("the raise of scope \"%s\" to %s of transaction %u never committed",
							m->scope_name, ks_mode_sql_names[m->mode], xid)));
			continue;
		}
		if (ks_events_hold(m->xid, ks_unix_usec_to_timestamptz(m->at_usec)))
		{
			/* recorded by a look that committed (and settled the set) but kept the mark */
			(void) ks_scope_mark_remove(m->xid, m->scope);
			continue;
		}
		record_followed(change_of_mark(m));
		again = true;			/* its marked entry goes at our commit: look once more */
	}
	if (again)
		marks_due_again();
	else
		ks_scope_marks_settled(seen);	/* until the next write (a bad mark is not read again) */
}

/*
 * The watcher's look that holds the ordering lock (watch.c): the scopes'
 * raises whose event followed are recorded; a committed entry raised in
 * place by a raise that did not commit is settled by the chain (which
 * records those first).
 */
void
ks_scope_look(void)
{
	if (ks_scope_settle_due())
		ks_scopes_from_history(true);
	else
		ks_record_scope_marks(false);
}

/* This transaction's raises made in committed entries end (committed or not). */
static void
end_in_place(bool committed)
{
	ListCell   *lc;
	bool		any = false;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->in_place)
		{
			ks_scope_end_in_place(c->role, committed);
			any = true;
		}
	}
	if (any)
		marks_due_again();		/* the watcher settles the entries, once none is in flight */
}

/* Record this transaction's own raises whose event was to follow: it holds the lock now. */
static void
record_own_deferred(void)
{
	List	   *own = NIL;
	ListCell   *lc;

	foreach(lc, changes)
		if (((ScopeChange *) lfirst(lc))->deferred)
			own = lappend(own, lfirst(lc));
	foreach(lc, own)
		record_followed(lfirst(lc));
	list_free(own);
}

/*
 * Holding the lock that orders changes, before a change of ours: first what
 * committed before (other transactions' raises whose event followed), then
 * this transaction's own raises made while the lock was busy.
 */
static void
record_before_ours(void)
{
	ks_record_scope_marks(false);
	record_own_deferred();
}

/* Raise (or repeat) a scope: in force at once, recorded in this transaction. */
static Datum
raise_scope(Oid role, const char *scope, KsMode mode, const char *reason,
			const char *by, int32 affected)
{
	KsMode		held = mode_held(role);
	Datum		row;
	ScopeChange *c;

	if (mode <= held)
	{
		ereport(NOTICE,
				(errmsg("scope \"%s\" is already at mode %s", scope, ks_mode_sql_names[held]),
				 errdetail("Nothing was changed: a scope is only raised by ks_engage()."),
				 errhint("Lower a scope with ks_disengage(..., scope => '%s').", scope)));
		row = newest_event_of(role);
		if (row == (Datum) 0)
			elog(ERROR, "scope \"%s\" has no event", scope);
		return row;
	}
	if (!scope_holds_agents(role))
		ereport(NOTICE,
				(errmsg("scope \"%s\" holds no agent role", scope),
				 errdetail("The scope is recorded and latches: an agent role later made a member of \"%s\" is halted at once.",
						   scope)));

	/* in force at once, before anything that can wait on another session */
	c = note_change(role, mode);	/* first: an abort from here on takes it back */
	c->in_place = ks_scope_raise_in_flight(role, mode);
	pg_memory_barrier();
	ks_interlock_wait();

	/* no scope outlives its role: a DROP ROLE that committed meanwhile ends the raise */
	if (!role_locked(role, false))
		role_unknown(scope);

	/* the chain follows commit order: the lock is held to commit, if it can be had at once */
	if (!ks_order_lock_briefly())
		return defer_raise(c, scope, reason, by, affected);
	record_before_ours();
	held = mode_held(role);		/* what committed meanwhile */
	return record(role, scope, Max(mode, held), held, reason, by, affected, false, false,
				  "sql", c);
}

/*
 * Is the scope's newest event a release request still pending, and by
 * whom?  (Two-person release, as approval.c does it for the fleet: the
 * request is read from the chain under the lock that orders changes, so a
 * rolled-back request never happened; a change of the scope in between
 * voids it.)
 */
static bool
pending_request(Oid role, int64 *id, char **by)
{
	KsOwnerContext owner;
	MemoryContext caller = CurrentMemoryContext;
	Oid			argtypes[2] = {OIDOID, INT4OID};
	Datum		values[2] = {ObjectIdGetDatum(role), Int32GetDatum(ks_approval_timeout)};
	bool		found = false;

	ks_owner_begin(&owner);
	if (SPI_execute_snapshot(SPI_prepare("SELECT id, session_role FROM (SELECT id, session_role, source, at "
										 "FROM killswitch.events WHERE scope = $1 ORDER BY id DESC LIMIT 1) e "
										 "WHERE source = 'release_request' "
										 "AND at > pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => $2)",
										 2, argtypes),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	if (SPI_processed == 1)
	{
		bool		isnull;

		found = true;
		*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*by = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	}
	ks_owner_end(&owner);
	return found;
}

/* Release a scope: recorded now, in force once the commit is durable. */
static Datum
release_scope(Oid role, const char *scope, const char *reason, const char *by)
{
	KsMode		held;
	int64		request_id;
	char	   *requested_by;
	const char *me;

	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	record_before_ours();
	held = mode_held(role);
	if (held == KS_DISENGAGED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("scope \"%s\" is not halted", scope),
				 errdetail("Only an active scope can be released."),
				 errhint("See ks_scopes() for the active scopes.")));
	if (ks_release_approvals < 2)
		return record(role, scope, KS_DISENGAGED, held, reason, by, 0, true, false, "sql", NULL);

	/* two administrators: confirm the pending request, or record one */
	me = GetUserNameFromId(GetSessionUserId(), false);
	if (pending_request(role, &request_id, &requested_by))
	{
		if (strcmp(requested_by, me) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("a release must be confirmed by a second administrator"),
					 errdetail("You requested the release of scope \"%s\" in event " INT64_FORMAT
							   "; killswitch.release_approvals is %d.",
							   scope, request_id, ks_release_approvals),
					 errhint("Another member of \"%s\" must release the same scope within %d seconds of the request.",
							 KS_ROLE_ADMIN, ks_approval_timeout)));
		ereport(NOTICE,
				(errmsg("release of scope \"%s\" confirmed: requested by \"%s\" in event " INT64_FORMAT,
						scope, requested_by, request_id)));
		return record(role, scope, KS_DISENGAGED, held, reason, by, 0, true, false, "sql", NULL);
	}
	ereport(NOTICE,
			(errmsg("release of scope \"%s\" requested; it stays %s until a second administrator confirms",
					scope, ks_mode_sql_names[held]),
			 errdetail("killswitch.release_approvals is %d.", ks_release_approvals),
			 errhint("Another member of \"%s\" must release the same scope within %d seconds.",
					 KS_ROLE_ADMIN, ks_approval_timeout)));
	return record(role, scope, held, held, reason, by, 0, true, true, "sql", NULL);
}

/*
 * ks_engage() and ks_disengage() with a scope (change.c calls here once it
 * has read and checked the other arguments).
 */
Datum
ks_scope_change(const char *scope, KsMode mode, const char *reason, const char *by,
				int32 affected, bool release)
{
	Oid			role;
	const char *what = release ? "ks_disengage()" : "ks_engage()";

	PreventCommandIfReadOnly(what);
	PreventCommandDuringRecovery(what);
	if (release)
		ks_check_release_right();
	else
		ks_check_engage_right();
	role = scope_role(scope, release);
	scope = GetUserNameFromId(role, false);	/* as the catalog spells it */
	return release ? release_scope(role, scope, reason, by)
		: raise_scope(role, scope, mode, reason, by, affected);
}

/*
 * The scope's mode as the chain holds it (its newest event; none:
 * disengaged), for the watcher's record of an outside raise that shared
 * memory already holds (scopefile.c): the chain, not the set, says whether
 * it still has to be recorded.  The caller holds the ordering lock.
 */
KsMode
ks_scope_chain_mode(Oid role)
{
	KsOwnerContext owner;
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(role)};
	KsMode		mode = KS_DISENGAGED;

	ks_owner_begin(&owner);
	if (SPI_execute_snapshot(SPI_prepare("SELECT e.mode::text FROM killswitch.events e WHERE e.scope = $1 "
										 "ORDER BY e.id DESC LIMIT 1", 1, argtypes),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	if (SPI_processed == 1)
		mode = (KsMode) ks_mode_from_sql_name(SPI_getvalue(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 1));
	ks_owner_end(&owner);
	return mode;
}

/*
 * A release this transaction recorded (the watcher's, of an outside write,
 * in the look that then settles the scopes) is in the chain it reads, not
 * yet committed: its scope keeps the mode it holds until the commit.
 */
static KsScope *
keep_own_releases(KsScope *list, int *count)
{
	ListCell   *lc;
	int			n = *count;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);
		KsScope		held;
		KsMode		in_force;

		if (!c->release || !c->recorded || !ks_scope_lookup(c->role, &held, &in_force))
			continue;
		list = repalloc(list, sizeof(KsScope) * (n + 1));
		list[n] = held;
		list[n].owner = KS_SCOPE_COMMITTED;
		n++;
	}
	*count = n;
	return list;
}

/*
 * An outside write of the scope file that the watcher applies (scopefile.c,
 * ARCHITECTURE §13): the change of role from previous to mode (disengaged: a
 * release, authorized by the release key), recorded in the watcher's look,
 * which holds the ordering lock, with source "file".  At its commit the
 * scope takes it, as an SQL change's.  False if the role does not exist
 * (the caller's verdict); nothing is recorded then.
 */
bool
ks_scope_record_outside(Oid role, KsMode mode, KsMode previous, const char *reason, const char *by)
{
	char	   *scope;
	bool		lowers = mode < previous;
	ScopeChange *raised;

	/*
	 * As an SQL change: a raise, in force since the watcher's round, never
	 * waits for an open change (the watcher holds the ordering lock, and an
	 * agent's open REVOKE over the scope held it: review5, TAP 253).
	 */
	if (!role_locked(role, lowers))
		return false;
	scope = GetUserNameFromId(role, false);
	raised = lowers ? NULL : note_change(role, mode);	/* a raise notes its own (record()) */
	(void) record(role, scope, mode, previous, reason, by, 0, lowers, false, "file", raised);
	return true;
}

/* At commit: the marks of other transactions' raises recorded here are settled. */
static void
settle_swept(void)
{
	ListCell   *lc;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->swept_xid == 0)
			continue;
		ks_scope_drop_marked(c->role, c->swept_xid);
		(void) ks_scope_mark_remove(c->swept_xid, c->role);
	}
}

/* At commit: each changed scope takes its newest change; the raises in flight end. */
static void
at_commit(void)
{
	ListCell   *lc;
	bool		must_be_durable = false;

	/*
	 * With synchronous_commit off the commit record is not durable yet: a
	 * release's must be before anyone reads the lower mode, and one that
	 * recorded other transactions' raises (their marks go below) before
	 * their marks go — a crash would otherwise lose a committed raise.
	 */
	foreach(lc, changes)
		must_be_durable |= ((ScopeChange *) lfirst(lc))->release ||
			((ScopeChange *) lfirst(lc))->swept_xid != 0;
	if (must_be_durable)
		XLogFlush(XactLastCommitEnd);
	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);
		ListCell   *later;
		bool		newest = true;

		for_each_cell(later, changes, lnext(changes, lc))
			if (((ScopeChange *) lfirst(later))->role == c->role &&
				((ScopeChange *) lfirst(later))->recorded)
				newest = false;
		if (!newest || !c->recorded)
			continue;
		ks_scope_settle_marked(c->role, c->swept_xid, c->mode, c->generation, c->at);
		ks_scope_drop_in_flight(c->role);
	}
	settle_swept();
	end_in_place(true);
	if (marked_xid != 0)
		marks_due_again();		/* our raises' events follow: the watcher records them */
	ks_scope_file_write();		/* confirmed; a release's first */
	ks_wake_watcher();			/* the NOTIFY */
}

/* Did this transaction raise a scope (in flight until its end)? */
static bool
raised_any(void)
{
	ListCell   *lc;

	foreach(lc, changes)
		if (!((ScopeChange *) lfirst(lc))->release)
			return true;
	return false;
}

/* At abort: every raise in flight of this transaction ends. */
static void
at_abort(void)
{
	ListCell   *lc;

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		ks_scope_drop_in_flight(c->role);
		if (marked_xid != 0 && c->deferred)
			(void) ks_scope_mark_remove(marked_xid, c->role);
	}
	if (marked_xid != 0)
		ks_scope_drop_marked(InvalidOid, marked_xid);
	end_in_place(false);

	/*
	 * Without the raises that did not commit.  Not only when this
	 * transaction wrote the file at pre-commit: another's write while a
	 * raise was in flight holds it "unconfirmed" (a raise that failed after
	 * it was in force, its role dropped meanwhile, was left there, and the
	 * next outside write, naming a role that does not exist, was refused
	 * with the fleet halted: review5, TAP 253).
	 */
	if (raised_any())
		ks_scope_file_write();
}

/* The mode this transaction's deferred raises of role ask, and the newest of them. */
static ScopeChange *
newest_deferred(Oid role, KsMode *mode)
{
	ListCell   *lc;
	ScopeChange *newest = NULL;

	*mode = KS_DISENGAGED;
	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->role == role && c->deferred)
		{
			*mode = Max(*mode, c->mode);
			newest = c;
		}
	}
	return newest;
}

/* Write the mark of this transaction's deferred raise of c's role; false (problem) if it failed. */
static bool
write_mark(const ScopeChange *c, KsMode mode, uint64 xid, char *problem, size_t len)
{
	KsMark		m;

	memset(&m, 0, sizeof(m));
	m.deferred = true;
	m.xid = xid;
	m.mode = mode;
	m.previous = c->in.previous;
	m.reason = (char *) c->in.reason;
	m.triggered_by = (char *) c->in.triggered_by;
	m.source = (char *) c->in.source;
	m.affected_tasks = c->in.affected_tasks;
	m.session_role = (char *) c->who.session_role;
	m.client_addr = (char *) c->who.client_addr;
	m.backend_pid = c->who.backend_pid;
	m.at_usec = ks_timestamptz_to_unix_usec(c->who.at);
	m.scope = c->role;
	m.scope_name = c->scope_name;
	return ks_mark_write(&m, problem, len);
}

/*
 * The transaction's id must outlive a crash before a mark names it: were
 * it never in durable WAL, the server would after a crash give the same id
 * to a new transaction (the watcher's own, recording other marks), whose
 * commit would then settle this mark as committed.  Replay moves the next
 * id past the id of every record it reads: one record of ours, flushed
 * (a logical decoding message, not transactional, which replay ignores).
 */
static void
xid_outlives_crash(void)
{
	XLogFlush(ks_log_logical_message("killswitch", "", 0, false));
}

/*
 * A raise whose mark cannot be written (a full or read-only disk) is
 * recorded in its own transaction after all: its commit waits for the
 * ordering lock.  It is in force meanwhile, and neither lock_timeout nor
 * statement_timeout may roll it back — the busy path exists for callers
 * that set them; a cancel or the session's end still does.
 */
static void
lock_order_untimed(void)
{
	ks_waits_untimed();
	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
}

/*
 * Before the commit record, the raises whose event follows: a mark per
 * scope, durable, so that a crash at any instant is settled by the commit
 * log; then each raise in flight becomes a marked raise, in force after
 * the commit until its event is recorded.  A mark that cannot be written:
 * the raise waits for the lock after all, untimed, and is recorded here
 * (never lost).
 */
static void
mark_deferred(void)
{
	ListCell   *lc;
	uint64		xid = 0;
	char		problem[KS_PROBLEM_LEN];
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);
		KsMode		mode;

		if (!c->deferred || newest_deferred(c->role, &mode) != c)
			continue;
		if (xid == 0)
			xid_outlives_crash();
		xid = U64FromFullTransactionId(GetTopFullTransactionId());
		if (!write_mark(c, mode, xid, problem, sizeof(problem)))
		{
			ListCell   *written;

			MemoryContextSwitchTo(old);
			foreach(written, changes)
				if (((ScopeChange *) lfirst(written))->deferred)
					(void) ks_scope_mark_remove(xid, ((ScopeChange *) lfirst(written))->role);
			ereport(WARNING,
					(errmsg("could not write the mark of a scope's raise: %s", problem),
					 errdetail("The raise, in force, waits for the lock that orders changes and is recorded in its transaction; no timeout rolls it back.")));
			lock_order_untimed();
			/* at pre-commit no statement's snapshot is left: the record takes one */
			PushActiveSnapshot(GetTransactionSnapshot());
			record_before_ours();
			PopActiveSnapshot();
			return;
		}
	}
	MemoryContextSwitchTo(old);
	if (xid == 0)
		return;
	ks_scope_marks_written();
	marked_xid = xid;
	foreach(lc, changes)
		if (((ScopeChange *) lfirst(lc))->deferred)
			ks_scope_mark_in_flight(((ScopeChange *) lfirst(lc))->role, xid);
}

/* Before the commit record: a raise is in the scope file (a release is not, yet). */
static void
at_pre_commit(void)
{
	mark_deferred();
	if (raised_any())
		ks_scope_file_write();
}

static void
scope_xact_callback(XactEvent event, void *arg)
{
	if (changes == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			at_pre_commit();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot prepare a transaction that changed a scope"),
					 errdetail("A scope's change takes effect when its own session commits.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			at_commit();
			changes = NIL;
			marked_xid = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			at_abort();
			changes = NIL;
			marked_xid = 0;
			break;
		default:
			break;
	}
}

/*
 * A savepoint's changes: kept by its parent at release, gone at its abort
 * (the raises in flight they made fall back to what the rest still asks).
 */
static void
scope_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;
	List	   *roles = NIL;

	if (changes == NIL)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, changes)
		{
			ScopeChange *c = lfirst(lc);

			if (c->subid == mySubid)
				c->subid = parentSubid;
			if (c->recorded_in == mySubid)
				c->recorded_in = parentSubid;
		}
		return;
	}
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		/* our raise made before the savepoint, recorded in it: its event is gone, it follows again */
		if (c->subid < mySubid && c->swept_xid == 0 && c->recorded_in >= mySubid)
		{
			c->recorded = false;
			c->deferred = true;
			c->mode = c->in.mode;
			c->recorded_in = InvalidSubTransactionId;
		}

		if (c->subid >= mySubid)
		{
			roles = list_append_unique_oid(roles, c->role);
			if (c->in_place)
			{
				ks_scope_end_in_place(c->role, false);
				marks_due_again();
			}
			changes = foreach_delete_current(changes, lc);
		}
	}
	foreach(lc, roles)
	{
		Oid			role = lfirst_oid(lc);
		KsMode		still = raised_in_flight(role);

		if (still == KS_DISENGAGED)
			ks_scope_drop_in_flight(role);
		else
			ks_scope_set_in_flight(role, still);
	}
}

/*
 * DROP ROLE of a role whose scope is active (or being raised) is refused:
 * the scope would outlive its name, and a new role could never be told
 * apart from the halted one's members.
 */
static void
scope_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == AuthIdRelationId && ks_shared != NULL)
	{
		KsMode		in_force;

		/*
		 * DropRole() takes this lock just after the hook: taken first, a
		 * raise of the role that holds it shared has committed or aborted
		 * when the set is read; one that went on without it is in force,
		 * and one that comes later is seen by the look again at pre-commit
		 * (scopemembers.c check_again()).
		 */
		LockSharedObject(AuthIdRelationId, objectId, 0, AccessExclusiveLock);
		(void) ks_scope_lookup(objectId, NULL, &in_force);
		if (in_force != KS_DISENGAGED)
		{
			const char *name = GetUserNameFromId(objectId, false);

			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop role \"%s\" while its scope is halted", name),
					 errdetail("Scope \"%s\" is at mode %s.", name, ks_mode_sql_names[in_force]),
					 errhint("Release the scope first: ks_disengage(reason, scope => '%s').", name)));
		}
	}
}

/*
 * The watcher's first look that holds the lock ordering changes (worker.c):
 * the committed scopes become what the chain says — each scope's newest
 * event, where it is not a release.  A raise's event is in its transaction,
 * so after a crash the chain holds exactly the raises that committed: one
 * the scope file kept unconfirmed goes if its transaction did not commit,
 * and nothing the chain holds is lowered.  Then the scope file follows
 * (settle: at the first look, always — its unconfirmed raises are settled).
 * A standby's watcher calls it after each replayed commit: the scopes
 * replay brought are in force there, and the scopes it heard ahead of
 * replay end where the chain has caught up with them (all of them at the
 * first look as a primary: settle).
 */
void
ks_scopes_from_history(bool settle)
{
	KsOwnerContext owner;
	MemoryContext caller = CurrentMemoryContext;
	SPIPlanPtr	plan;
	KsScope    *list = NULL;
	int			n = 0;
	bool		changed;

	/* the raises that committed with their event to follow are history too: recorded first */
	if (settle)
	{
		ks_record_scope_marks(true);
		CommandCounterIncrement();
	}
	ks_owner_begin(&owner);
	plan = SPI_prepare("SELECT DISTINCT ON (e.scope) e.scope, e.mode::text, e.generation, e.at "
					   "FROM killswitch.events e WHERE e.scope IS NOT NULL "
					   "ORDER BY e.scope, e.id DESC", 0, NULL);
	/* the caller holds the lock: a fresh snapshot sees every committed change */
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read killswitch.events");
	list = MemoryContextAllocZero(caller, sizeof(KsScope) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		list[n].role = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		list[n].mode = (KsMode) ks_mode_from_sql_name(SPI_getvalue(tup, desc, 2));
		list[n].generation = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		list[n].since = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		list[n].owner = KS_SCOPE_COMMITTED;
		n++;
	}
	ks_owner_end(&owner);
	list = keep_own_releases(list, &n);
	changed = ks_scope_replace_committed(list, n);
	/*
	 * Then the heard scopes the chain settles (a standby, §13 "Standbys"):
	 * those whose event replay brought, every one once out of recovery (the
	 * history decides) — after the committed scopes, so that the set never
	 * shows less than either.
	 */
	if (ks_scope_end_heard(list, n, settle))
		changed = true;
	if (changed || settle)
		ks_scope_file_write();
}

/* SQL: the active scopes (committed), for ks_scopes() and ks_status(). */
Datum
ks_active_scopes(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			modetype;
	KsScope    *list;
	int			n;

	ks_require_loaded();
	InitMaterializedSRF(fcinfo, 0);
	modetype = ks_mode_type_oid();
	list = ks_scope_list(&n);
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = ObjectIdGetDatum(list[i].role);
		values[1] = ks_mode_to_datum(list[i].mode, modetype);
		values[2] = Int64GetDatum(list[i].generation);
		values[3] = TimestampTzGetDatum(list[i].since);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* SQL: is the set overflowed (a committed scope found no slot), for ks_status()? */
Datum
ks_scopes_overflowed(PG_FUNCTION_ARGS)
{
	ks_require_loaded();
	PG_RETURN_BOOL(ks_scope_overflowed());
}

/* Install the callbacks and the hook; from _PG_init while preloading. */
void
ks_scopechange_init(void)
{
	RegisterXactCallback(scope_xact_callback, NULL);
	RegisterSubXactCallback(scope_subxact_callback, NULL);
	prev_object_access_hook = object_access_hook;
	object_access_hook = scope_object_access;
}
