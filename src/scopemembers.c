/*
 * scopemembers.c — memberships inside a halted scope are frozen
 * (ARCHITECTURE §13, "Membership inside a halted scope").
 *
 * A scope holds its role and every role that is a member of it, read live
 * from pg_auth_members.  Taking a role out of a halted scope would lower the
 * scope for that role without a release and without an event, so while a
 * scope is in force (committed or being raised) every change that deletes a
 * membership edge inside it is refused:
 *
 *   - REVOKE g FROM m, and ALTER GROUP g DROP USER m, where g is in an
 *     active scope (the scope's own role or one of its members): m, and
 *     whoever is in the scope through m, would leave it;
 *   - DROP ROLE r where r is in an active scope: its members would leave the
 *     scope, and so would r's own open sessions (PostgreSQL lets a role be
 *     dropped while other sessions of it run, and a dropped role is a member
 *     of nothing).
 *
 * Those are the only ways PostgreSQL 15 deletes from pg_auth_members
 * (DelRoleMems() and DropRole(), commands/user.c); DROP OWNED and REASSIGN
 * OWNED leave memberships alone, and ALTER ROLE ... NOINHERIT does not change
 * what a scope holds (is_member_of_role_nosuper()).  REVOKE ADMIN OPTION FOR
 * keeps the membership and is allowed.  A superuser is refused too; one who
 * writes pg_auth_members directly is outside the threat model.
 *
 * The race with a raise, which never waits for a role's lock (raising is
 * unconditional): a raise is put in force first (in shared memory, where
 * every check reads it), then tries its role's lock, shared
 * (ks_scope_raise_lock_role()).  A membership change locks, exclusively and
 * to its own end, every role the changed role is in, directly or not (each
 * a scope it could leave), and only then reads the set: a raise under way is
 * seen in force.  A raise that finds the role's lock taken (a change is open
 * over it) goes on without it and takes the role's second lock instead
 * (objsubid 1, "committing"), shared; the change takes that one
 * exclusively at its pre-commit and reads the set again, so a raise that
 * came after its first look is seen, in force or committed, and the change
 * is refused.  Only a raise that comes while a change is past that last
 * look — committing — waits, for its commit alone, and then sees the
 * catalog after it.  A GRANT holds its grantees shared to its commit, so a
 * change of a role being granted into a scope waits for the GRANT and sees
 * that scope too.  A transaction that deleted a membership is not prepared:
 * its second look would have no end to hold it to.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_auth_members.h"
#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/catcache.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "compat.h"
#include "modetype.h"
#include "scope.h"
#include "scopemembers.h"
#include "state.h"

/*
 * A role's second lock (objsubid 1): held exclusively by a membership change
 * from its look at pre-commit to its end, shared by a raise that went on
 * without the role's first lock.
 */
#define KS_ROLE_COMMITTING_LOCK 1

/* A membership change that passed its first look, to be looked at again at pre-commit. */
typedef struct CheckedChange
{
	Oid			role;			/* the role revoked from or dropped */
	char	   *name;			/* its name (a dropped role's catalog row is gone) */
	bool		drop;
	List	   *over;			/* the roles it is in: the scopes it could leave */
	SubTransactionId subid;		/* the (sub)transaction that made it */
} CheckedChange;

static List *checked = NIL;		/* of CheckedChange, in TopTransactionContext */
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

/* The roles role is in, directly or through others, and role itself. */
static List *
roles_holding(Oid role)
{
	List	   *found = list_make1_oid(role);

	/* breadth first: found grows as it is walked */
	for (int i = 0; i < list_length(found); i++)
	{
		CatCList   *memlist = SearchSysCacheList1(AUTHMEMMEMROLE,
												  ObjectIdGetDatum(list_nth_oid(found, i)));

		for (int j = 0; j < memlist->n_members; j++)
		{
			Form_pg_auth_members form = (Form_pg_auth_members) GETSTRUCT(&memlist->members[j]->tuple);

			found = list_append_unique_oid(found, form->roleid);
		}
		ReleaseSysCacheList(memlist);
	}
	return found;
}

/*
 * Lock every role role is in (each a scope role could leave), exclusively,
 * in OID order: a raise of one of them that holds its role's lock is waited
 * for; a later raise goes on without it (ks_scope_raise_lock_role()).
 * A GRANT that puts role into another role holds role shared to its commit
 * (lock_grantees()): once it is waited for, role is in more roles, so they
 * are looked at again until no new one comes (each lock takes the
 * invalidations of what it waited for).
 */
static List *
lock_scopes_over(Oid role)
{
	List	   *locked = NIL;

	for (;;)
	{
		List	   *roles = roles_holding(role);
		List	   *fresh = list_difference_oid(roles, locked);
		ListCell   *lc;

		if (fresh == NIL)
			return locked;
		list_sort(fresh, list_oid_cmp);
		foreach(lc, fresh)
			LockSharedObject(AuthIdRelationId, lfirst_oid(lc), 0, AccessExclusiveLock);
		locked = list_concat(locked, fresh);
	}
}

/*
 * A GRANT that makes these roles members of another holds them shared to
 * its commit: a REVOKE or DROP ROLE of one of them (which locks it
 * exclusively) then sees the membership it added, and the scopes over it.
 * A raise takes the same shared lock, so neither waits for the other.
 */
static void
lock_grantees(List *grantees)
{
	ListCell   *lc;

	foreach(lc, grantees)
	{
		Oid			role = get_rolespec_oid(lfirst_node(RoleSpec, lc), true);

		if (OidIsValid(role))
			LockSharedObject(AuthIdRelationId, role, 0, AccessShareLock);
	}
}

/*
 * The active scope (committed or being raised) over one of the roles in
 * over, if any: false when none is.  An overflowed set is missing scopes, so
 * it holds every role (fail closed): *scope is then InvalidOid.
 */
static bool
scope_active_over(List *over, Oid *scope, KsMode *mode)
{
	KsScope    *list;
	int			n;

	if (ks_scope_overflowed())
	{
		*scope = InvalidOid;
		*mode = KS_EMERGENCY;
		return true;
	}
	list = ks_scope_list_all(&n);
	for (int i = 0; i < n; i++)
		if (list[i].mode != KS_DISENGAGED && list_member_oid(over, list[i].role))
		{
			*scope = list[i].role;
			*mode = list[i].mode;
			return true;
		}
	return false;
}

/* A scope's name for a message: a role this transaction dropped has none left. */
static const char *
scope_name_of(Oid scope, const CheckedChange *change)
{
	const char *name = GetUserNameFromId(scope, true);

	if (name != NULL)
		return name;
	if (scope == change->role)
		return change->name;
	return psprintf("%u", scope);
}

/* The error of a change that would take members of change->role out of an active scope. */
static void
refuse(const CheckedChange *change, Oid scope, KsMode mode)
{
	const char *scope_name;

	if (!OidIsValid(scope))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg(change->drop ? "cannot drop role \"%s\" while the set of scopes is overflowed"
						: "cannot revoke membership in role \"%s\" while the set of scopes is overflowed",
						change->name),
				 errdetail("More scopes are active than the server holds, so any role may be in one."),
				 errhint("Release scopes first, until the server's log says they fit.")));
	scope_name = scope_name_of(scope, change);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg(change->drop ? "cannot drop role \"%s\" while a scope that holds it is halted"
					: "cannot revoke membership in role \"%s\" while a scope that holds it is halted",
					change->name),
			 errdetail(change->drop ? "Role \"%s\" is in scope \"%s\", at mode %s: it and its members would leave the scope without a release."
					   : "Role \"%s\" is in scope \"%s\", at mode %s: its members would leave the scope without a release.",
					   change->name, scope_name, ks_mode_sql_names[mode]),
			 errhint("Release the scope first: ks_disengage(reason, scope => '%s').", scope_name)));
}

/*
 * Refuse a change that would take members of role out of an active scope;
 * one that passes is looked at again at pre-commit (check_again()).
 */
static void
refuse_if_in_scope(Oid role, bool drop)
{
	MemoryContext old;
	CheckedChange *change;
	Oid			scope;
	KsMode		mode;

	if (!OidIsValid(role) || ks_shared == NULL)
		return;
	old = MemoryContextSwitchTo(TopTransactionContext);
	change = palloc(sizeof(CheckedChange));
	change->role = role;
	change->name = pstrdup(GetUserNameFromId(role, false));
	change->drop = drop;
	change->over = lock_scopes_over(role);
	change->subid = GetCurrentSubTransactionId();
	MemoryContextSwitchTo(old);
	if (scope_active_over(change->over, &scope, &mode))
		refuse(change, scope, mode);
	old = MemoryContextSwitchTo(TopTransactionContext);
	checked = lappend(checked, change);
	MemoryContextSwitchTo(old);
}

/* The first change of this transaction that could take members out of scope. */
static const CheckedChange *
change_under(Oid scope)
{
	ListCell   *lc;

	foreach(lc, checked)
	{
		CheckedChange *change = lfirst(lc);

		if (list_member_oid(change->over, scope))
			return change;
	}
	return linitial(checked);
}

/* The error of a change whose scope's second lock a raise holds: it is being raised. */
static void
refuse_raising(const CheckedChange *change, Oid scope)
{
	const char *scope_name = scope_name_of(scope, change);

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg(change->drop ? "cannot drop role \"%s\" while a scope that holds it is being raised"
					: "cannot revoke membership in role \"%s\" while a scope that holds it is being raised",
					change->name),
			 errdetail(change->drop ? "Role \"%s\" is in scope \"%s\", raised meanwhile: it and its members would leave the scope without a release."
					   : "Role \"%s\" is in scope \"%s\", raised meanwhile: its members would leave the scope without a release.",
					   change->name, scope_name),
			 errhint("Release the scope first: ks_disengage(reason, scope => '%s').", scope_name)));
}

/*
 * At pre-commit, the second look: every role over a change is locked
 * exclusively, then the set is read again.  A raise that came after the
 * first look is in force or committed by now.  The locks are only tried:
 * one held is held shared by a raise that went on without the first lock —
 * in force, so the change is refused at once.  Waiting for it, holding
 * another role's second lock, would close a cycle with a transaction that
 * raises that role next (it waits for a change that holds the second lock:
 * "committing"), and the deadlock could end the raises (review5, TAP 253).
 */
static void
check_again(void)
{
	List	   *roles = NIL;
	ListCell   *lc;

	foreach(lc, checked)
		roles = list_concat_unique_oid(roles, ((CheckedChange *) lfirst(lc))->over);
	list_sort(roles, list_oid_cmp);
	foreach(lc, roles)
	{
		Oid			role = lfirst_oid(lc);

		if (!ks_conditional_lock_shared_object(AuthIdRelationId, role, KS_ROLE_COMMITTING_LOCK, AccessExclusiveLock))
			refuse_raising(change_under(role), role);
	}
	foreach(lc, checked)
	{
		CheckedChange *change = lfirst(lc);
		Oid			scope;
		KsMode		mode;

		if (scope_active_over(change->over, &scope, &mode))
			refuse(change, scope, mode);
	}
}

/*
 * The rest of this transaction's waits take neither lock_timeout nor
 * statement_timeout (nor, from 17, transaction_timeout): a raise in force
 * waits for what its record needs, and no timeout the caller set may roll
 * it back (a cancel or the session's end still does).
 */
void
ks_waits_untimed(void)
{
	(void) set_config_option("lock_timeout", "0", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	if (get_timeout_active(STATEMENT_TIMEOUT))
		disable_timeout(STATEMENT_TIMEOUT, false);
	ks_transaction_timeout_off();
}

/*
 * A raise of role's scope, already in force: order it with the membership
 * changes over role without waiting for an open one (see the file's head).
 * False when role was dropped by a change that committed meanwhile.
 */
bool
ks_scope_raise_lock_role(Oid role)
{
	if (!ks_conditional_lock_shared_object(AuthIdRelationId, role, 0, AccessShareLock) &&
		!ks_conditional_lock_shared_object(AuthIdRelationId, role, KS_ROLE_COMMITTING_LOCK, AccessShareLock))
	{
		/*
		 * A change over role is committing: past its last look, it has only
		 * its commit left.  The raise, in force, waits for it: no timeout
		 * may roll the raise back (a cancel still does).
		 */
		ks_waits_untimed();
		LockSharedObject(AuthIdRelationId, role, KS_ROLE_COMMITTING_LOCK, AccessShareLock);
	}
	return SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role));
}

/* The members this ALTER ROLE adds or drops (ALTER GROUP ... ADD/DROP USER), or NIL. */
static List *
members_changed(AlterRoleStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
		if (strcmp(lfirst_node(DefElem, lc)->defname, "rolemembers") == 0)
			return (List *) lfirst_node(DefElem, lc)->arg;
	return NIL;
}

/* The statements that delete memberships without dropping a role. */
static void
check_membership_change(Node *parsetree)
{
	/* a standby changes no membership (PostgreSQL refuses these itself) */
	if (ks_shared == NULL || RecoveryInProgress())
		return;
	if (IsA(parsetree, GrantRoleStmt))
	{
		GrantRoleStmt *stmt = (GrantRoleStmt *) parsetree;
		ListCell   *lc;

		if (stmt->is_grant)
		{
			lock_grantees(stmt->grantee_roles);
			return;
		}
		/* REVOKE ADMIN OPTION FOR (from 16, any OPTION FOR) keeps the membership */
		if (ks_revokes_option_only(stmt))
			return;
		foreach(lc, stmt->granted_roles)
		{
			AccessPriv *priv = (AccessPriv *) lfirst(lc);

			/* an unknown role or a bad form: GrantRole() says so */
			if (priv->priv_name != NULL)
				refuse_if_in_scope(get_role_oid(priv->priv_name, true), false);
		}
	}
	else if (IsA(parsetree, AlterRoleStmt))
	{
		AlterRoleStmt *stmt = (AlterRoleStmt *) parsetree;
		List	   *members = members_changed(stmt);

		if (members != NIL && stmt->action == +1)
			lock_grantees(members);
		else if (members != NIL && stmt->action == -1)
			refuse_if_in_scope(get_rolespec_oid(stmt->role, true), false);
	}
}

static void
scopemembers_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
							ProcessUtilityContext context, ParamListInfo params,
							QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	check_membership_change(pstmt->utilityStmt);
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* DROP ROLE: DropRole() calls the drop hook before it deletes the role's memberships. */
static void
scopemembers_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId,
						   void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == AuthIdRelationId)
		refuse_if_in_scope(objectId, true);
}

static void
scopemembers_xact_callback(XactEvent event, void *arg)
{
	if (checked == NIL)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			check_again();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot prepare a transaction that revoked a role membership or dropped a role"),
					 errdetail("Such a change is checked against the scoped halts again when its own session commits.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			checked = NIL;
			break;
		default:
			break;
	}
}

/* A savepoint's changes: kept by its parent at release, gone at its abort. */
static void
scopemembers_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							  SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	foreach(lc, checked)
	{
		CheckedChange *change = lfirst(lc);

		if (change->subid != mySubid)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			change->subid = parentSubid;
		else if (event == SUBXACT_EVENT_ABORT_SUB)
			checked = foreach_delete_current(checked, lc);
	}
}

/* Install the hooks; from _PG_init while preloading. */
void
ks_scopemembers_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = scopemembers_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = scopemembers_object_access;
	RegisterXactCallback(scopemembers_xact_callback, NULL);
	RegisterSubXactCallback(scopemembers_subxact_callback, NULL);
}
