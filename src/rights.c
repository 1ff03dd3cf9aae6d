/*
 * rights.c — who may do what (ARCHITECTURE §6): engaging needs
 * killswitch_operator, releasing needs killswitch_admin, and members of
 * killswitch_agent may never release, whatever else they are granted.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"

#include "killswitch.h"

/* OID of one of our roles; a clear error if someone dropped it. */
Oid
ks_role_oid(const char *name)
{
	Oid			oid = get_role_oid(name, true);

	if (!OidIsValid(oid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", name),
				 errhint("The killswitch roles are created by CREATE EXTENSION killswitch; recreate it with CREATE ROLE %s NOLOGIN.", name)));
	return oid;
}

/*
 * Is this role an agent: a member of killswitch_agent, directly or through
 * other roles?  Superuser status does not make a role a member here.
 */
bool
ks_role_is_agent(Oid roleid)
{
	Oid			agent = get_role_oid(KS_ROLE_AGENT, true);

	return OidIsValid(agent) && is_member_of_role_nosuper(roleid, agent);
}

/* Raise an error unless the current role may engage. */
void
ks_check_engage_right(void)
{
	Oid			user = GetUserId();

	if (superuser())
		return;
	if (has_privs_of_role(user, ks_role_oid(KS_ROLE_OPERATOR)) ||
		has_privs_of_role(user, ks_role_oid(KS_ROLE_ADMIN)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to engage the kill switch"),
			 errdetail("Engaging needs the privileges of role \"%s\".", KS_ROLE_OPERATOR)));
}

/*
 * Raise an error unless the current role may release.  An agent session —
 * by the test every halt uses (agents.c): its current role, its session
 * role or the role it logged in as is an agent — never may, so that
 * neither SET ROLE to a granted admin role, nor a SECURITY DEFINER function
 * of an administrator, nor a superuser agent's SET SESSION AUTHORIZATION
 * lets an agent release.  A session whose statements are refused as an
 * agent's is refused the release too.
 */
void
ks_check_release_right(void)
{
	Oid			user = GetUserId();

	if (ks_session_is_agent())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("members of \"%s\" may never release the kill switch", KS_ROLE_AGENT),
				 errdetail("A release lowers the mode; it must come from a person or process outside the fleet."),
				 errhint("Ask a member of \"%s\" to release it.", KS_ROLE_ADMIN)));
	if (superuser() || has_privs_of_role(user, ks_role_oid(KS_ROLE_ADMIN)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to release the kill switch"),
			 errdetail("Lowering the mode needs the privileges of role \"%s\".", KS_ROLE_ADMIN)));
}
