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
 * The race with a raise: a scope's raise locks its role, shared, to its
 * commit (scopechange.c scope_role()).  A membership change first locks,
 * exclusively and to its own commit, every role the changed role is in,
 * directly or not (each a scope it could leave), and only then reads the
 * set: a raise under way has committed or aborted by then, and a raise that
 * comes later waits for the change and holds what the catalog holds after it.
 * A GRANT holds its grantees shared to its commit, so a change of a role
 * being granted into a scope waits for the GRANT and sees that scope too.
 */
#include "postgres.h"

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
#include "utils/syscache.h"

#include "compat.h"
#include "modetype.h"
#include "scope.h"
#include "scopemembers.h"
#include "state.h"

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
 * in OID order: a raise of one of them under way (it holds its role shared
 * to its commit) is waited for, and a later raise waits for this change.
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
 * A raise takes the same shared lock, so a GRANT never waits for one.
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
 * The active scope (committed or being raised) that holds role, if any:
 * false when none does.  An overflowed set is missing scopes, so it holds
 * every role (fail closed): *scope is then InvalidOid.
 */
static bool
scope_holding(Oid role, Oid *scope, KsMode *mode)
{
	List	   *over = lock_scopes_over(role);
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

/* Refuse a change that would take members of role out of an active scope. */
static void
refuse_if_in_scope(Oid role, bool drop)
{
	Oid			scope;
	KsMode		mode;
	const char *name;
	const char *scope_name;

	if (!OidIsValid(role) || ks_shared == NULL || !scope_holding(role, &scope, &mode))
		return;
	name = GetUserNameFromId(role, false);
	if (!OidIsValid(scope))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg(drop ? "cannot drop role \"%s\" while the set of scopes is overflowed"
						: "cannot revoke membership in role \"%s\" while the set of scopes is overflowed",
						name),
				 errdetail("More scopes are active than the server holds, so any role may be in one."),
				 errhint("Release scopes first, until the server's log says they fit.")));
	scope_name = GetUserNameFromId(scope, false);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg(drop ? "cannot drop role \"%s\" while a scope that holds it is halted"
					: "cannot revoke membership in role \"%s\" while a scope that holds it is halted",
					name),
			 errdetail(drop ? "Role \"%s\" is in scope \"%s\", at mode %s: it and its members would leave the scope without a release."
					   : "Role \"%s\" is in scope \"%s\", at mode %s: its members would leave the scope without a release.",
					   name, scope_name, ks_mode_sql_names[mode]),
			 errhint("Release the scope first: ks_disengage(reason, scope => '%s').", scope_name)));
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

/* Install the hooks; from _PG_init while preloading. */
void
ks_scopemembers_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = scopemembers_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = scopemembers_object_access;
}
