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
 * it) takes it back.  A release is recorded in its transaction and
 * changes nothing anyone reads before its commit record is durable.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "agents.h"
#include "encoding.h"
#include "events.h"
#include "guc.h"
#include "interlock.h"
#include "modetype.h"
#include "names.h"
#include "owner.h"
#include "rights.h"
#include "scope.h"
#include "scopechange.h"
#include "scopefile.h"
#include "state.h"
#include "store.h"

PG_FUNCTION_INFO_V1(ks_active_scopes);

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
} ScopeChange;

static List *changes = NIL;		/* in TopTransactionContext */
static bool file_raised = false;	/* the scope file was written at pre-commit */
static const char *record_source = NULL;	/* an outside write's ("file"); NULL: "sql" */
static object_access_hook_type prev_object_access_hook = NULL;

/* The role a scope names: not empty, and known.  Nothing is changed on error. */
static Oid
scope_role(const char *scope)
{
	Oid			role;

	if (scope[strspn(scope, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("scope must not be empty"),
				 errdetail("A scope names a role: that role and every role that is a member of it."),
				 errhint("Give a role's name, or NULL for the whole fleet.")));
	role = get_role_oid(scope, true);
	if (OidIsValid(role))
	{
		/*
		 * Held to the end of the transaction: a DROP ROLE under way (it
		 * takes the lock AccessExclusive, scope_object_access()) is waited
		 * for, and one that committed meanwhile is seen, so that no scope
		 * outlives its role.
		 */
		LockSharedObject(AuthIdRelationId, role, 0, AccessShareLock);
		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
			role = InvalidOid;
	}
	if (!OidIsValid(role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", scope),
				 errdetail("A scope names an existing role."),
				 errhint("Create the role first, or give NULL for the whole fleet.")));
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
 * release request).  A raise's change was noted by raise_scope(), last.
 */
static Datum
record(Oid role, const char *scope, KsMode mode, KsMode previous, const char *reason,
	   const char *by, int32 affected, bool release, bool request)
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
	in.source = request ? "release_request" : (record_source ? record_source : "sql");
	in.floor_generation = 0;
	in.request = request;
	in.release_target = request ? KS_DISENGAGED : mode;
	/* the event takes its texts in UTF-8 (scope is the catalog's, in the database encoding) */
	row = ks_record_scope_event(&in, role, ks_text_to_utf8(scope, "the scope's role name"), &generation, &at);

	c = release ? note_change(role, mode) : llast(changes);	/* a raise noted its own */
	c->mode = mode;
	c->release = release && !request;
	c->recorded = true;
	c->generation = generation;
	c->at = at;
	return row;
}

/* Raise (or repeat) a scope: in force at once, recorded in this transaction. */
static Datum
raise_scope(Oid role, const char *scope, KsMode mode, const char *reason,
			const char *by, int32 affected)
{
	KsMode		held = mode_held(role);
	Datum		row;

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
	note_change(role, mode);	/* first: an abort from here on takes it back */
	ks_scope_raise_in_flight(role, mode);
	pg_memory_barrier();
	ks_interlock_wait();

	/* the chain follows commit order: the lock is held to commit */
	LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
	held = mode_held(role);		/* what committed meanwhile */
	return record(role, scope, Max(mode, held), held, reason, by, affected, false, false);
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
	held = mode_held(role);
	if (held == KS_DISENGAGED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("scope \"%s\" is not halted", scope),
				 errdetail("Only an active scope can be released."),
				 errhint("See ks_scopes() for the active scopes.")));
	if (ks_release_approvals < 2)
		return record(role, scope, KS_DISENGAGED, held, reason, by, 0, true, false);

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
		return record(role, scope, KS_DISENGAGED, held, reason, by, 0, true, false);
	}
	ereport(NOTICE,
			(errmsg("release of scope \"%s\" requested; it stays %s until a second administrator confirms",
					scope, ks_mode_sql_names[held]),
			 errdetail("killswitch.release_approvals is %d.", ks_release_approvals),
			 errhint("Another member of \"%s\" must release the same scope within %d seconds.",
					 KS_ROLE_ADMIN, ks_approval_timeout)));
	return record(role, scope, held, held, reason, by, 0, true, true);
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
	role = scope_role(scope);
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
		list[n].owner = -1;
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

	LockSharedObject(AuthIdRelationId, role, 0, AccessShareLock);	/* as scope_role() */
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		return false;
	scope = GetUserNameFromId(role, false);
	if (!lowers)
		note_change(role, mode);	/* a raise notes its own (record()) */
	record_source = "file";
	PG_TRY();
	{
		(void) record(role, scope, mode, previous, reason, by, 0, lowers, false);
	}
	PG_FINALLY();
	{
		record_source = NULL;
	}
	PG_END_TRY();
	return true;
}

/* At commit: each changed scope takes its newest change; the raises in flight end. */
static void
at_commit(void)
{
	ListCell   *lc;
	bool		any_release = false;

	foreach(lc, changes)
		any_release |= ((ScopeChange *) lfirst(lc))->release;
	/* with synchronous_commit off the commit record is not durable yet */
	if (any_release)
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
		ks_scope_set_committed(c->role, c->mode, c->generation, c->at);
		ks_scope_drop_in_flight(c->role);
	}
	ks_scope_file_write();		/* confirmed; a release's first */
	ks_wake_watcher();			/* the NOTIFY */
}

/* At abort: every raise in flight of this transaction ends. */
static void
at_abort(void)
{
	ListCell   *lc;

	foreach(lc, changes)
		ks_scope_drop_in_flight(((ScopeChange *) lfirst(lc))->role);
	if (file_raised)
		ks_scope_file_write();	/* without the raises that did not commit */
}

/* Before the commit record: a raise is in the scope file (a release is not, yet). */
static void
at_pre_commit(void)
{
	ListCell   *lc;

	foreach(lc, changes)
	{
		if (!((ScopeChange *) lfirst(lc))->release)
		{
			ks_scope_file_write();
			file_raised = true;
			return;
		}
	}
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
			file_raised = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			at_abort();
			changes = NIL;
			file_raised = false;
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
		}
		return;
	}
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	foreach(lc, changes)
	{
		ScopeChange *c = lfirst(lc);

		if (c->subid >= mySubid)
		{
			roles = list_append_unique_oid(roles, c->role);
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
		 * raise of the role under way (scope_role() holds it shared to its
		 * commit) has committed or aborted when the set is read.
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
		list[n].owner = -1;
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

/* Install the callbacks and the hook; from _PG_init while preloading. */
void
ks_scopechange_init(void)
{
	RegisterXactCallback(scope_xact_callback, NULL);
	RegisterSubXactCallback(scope_subxact_callback, NULL);
	prev_object_access_hook = object_access_hook;
	object_access_hook = scope_object_access;
}
