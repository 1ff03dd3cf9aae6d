/*
 * logins.c — who may log in (ARCHITECTURE §5.8, §9).
 *
 *   - Operators keep a way in: an agent login is refused (FATAL, 53300)
 *     when it would leave fewer than the slots PostgreSQL reserves
 *     (superuser_reserved_connections, and from 16 reserved_connections)
 *     plus killswitch.reserved_connections, so that a fleet that
 *     took every connection cannot keep a member of killswitch_operator or
 *     killswitch_admin from connecting and engaging.  PostgreSQL keeps its
 *     superuser reserve the same way (InitPostgres(), HaveNFreeProcs()).
 *   - In emergency, with killswitch.refuse_agent_logins on, every agent
 *     login is refused; with a scope in emergency, every agent login the
 *     scope holds (ARCHITECTURE §13).
 *
 * Both are decided in the ClientAuthentication hook, which runs inside the
 * login's first transaction (InitPostgres() starts it before
 * PerformAuthentication()), so role membership — in the shared catalogs —
 * can be read there.  The count is looked at first: while slots are free,
 * nobody's membership is.
 */
#include "postgres.h"

#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "utils/acl.h"

#include "agentlist.h"
#include "compat.h"
#include "guc.h"
#include "logins.h"
#include "names.h"
#include "rights.h"
#include "scope.h"
#include "state.h"
#include "store.h"

/* killswitch.reserved_connections */
int			ks_reserved_connections = 3;

static ClientAuthentication_hook_type prev_ClientAuthentication = NULL;

/* Is the role logging in an agent?  (Needs the login's transaction.) */
static bool
login_is_agent(Port *port)
{
	Oid			role = get_role_oid(port->user_name, true);

	return OidIsValid(role) && ks_role_is_agent(role);
}

/* Refuse an agent login that would eat into the operators' reserve. */
static void
keep_reserve(Port *port)
{
	int			keep = KS_RESERVED_BACKENDS + ks_reserved_connections;

	if (ks_reserved_connections <= 0 || !AmRegularBackendProcess() || ks_have_free_procs(keep))
		return;
	if (!login_is_agent(port))
		return;
	ereport(FATAL,
			(errcode(ERRCODE_TOO_MANY_CONNECTIONS),
			 errmsg("remaining connection slots are reserved for roles that operate the kill switch"),
			 errdetail("Agent \"%s\" may not take the last %d connection slots (the %d PostgreSQL reserves, and killswitch.reserved_connections %d).",
					   port->user_name, keep, KS_RESERVED_BACKENDS, ks_reserved_connections),
			 errhint("Members of %s and %s can still connect.", KS_ROLE_OPERATOR, KS_ROLE_ADMIN)));
}

/*
 * In emergency, with killswitch.refuse_agent_logins on, refuse a login
 * whose role is one of the agent roles the watcher listed.  A role missing
 * from the list is stopped at its first statement.
 */
static void
refuse_in_emergency(Port *port)
{
	if (ks_refuse_agent_logins && ks_current_mode() == KS_EMERGENCY &&
		ks_emergency_lists_role(port->user_name))
		ereport(FATAL,
				(errcode(ERRCODE_KILLSWITCH_ENGAGED),
				 errmsg("kill switch engaged (emergency): login by agent \"%s\" refused",
						port->user_name),
				 errhint("Agent logins are refused until a member of %s releases the kill switch.",
						 KS_ROLE_ADMIN)));
}

/*
 * With a scope in emergency (committed or being raised) and
 * killswitch.refuse_agent_logins on, refuse an agent login the scope holds,
 * with the fleet's message and the scope named.  The agent role is read
 * from the catalog: the watcher lists agent roles for the fleet's emergency
 * only.
 */
static void
refuse_in_scope_emergency(Port *port)
{
	KsScope    *list;
	int			n;
	Oid			role;

	if (!ks_refuse_agent_logins ||
		(pg_atomic_read_u64(&ks_shared->word) & KS_WORD_SCOPES) == 0)
		return;
	list = ks_scopes_in_emergency(&n);
	if (n == 0)
		return;
	role = get_role_oid(port->user_name, true);
	if (!OidIsValid(role) || !ks_role_is_agent(role))
		return;
	for (int i = 0; i < n; i++)
		if (is_member_of_role_nosuper(role, list[i].role))
		{
			const char *scope = GetUserNameFromId(list[i].role, false);

			ereport(FATAL,
					(errcode(ERRCODE_KILLSWITCH_ENGAGED),
					 errmsg("kill switch engaged (emergency): login by agent \"%s\" refused",
							port->user_name),
					 errdetail("Scope \"%s\", which holds role \"%s\", is in emergency.",
							   scope, port->user_name),
					 errhint("Agent logins in the scope are refused until a member of %s releases it: ks_disengage(reason, scope => '%s').",
							 KS_ROLE_ADMIN, scope)));
		}
}

/* ClientAuthentication hook: the reserve, then the emergency, the fleet's and the scopes'. */
static void
ks_ClientAuthentication(Port *port, int status)
{
	if (prev_ClientAuthentication)
		prev_ClientAuthentication(port, status);
	if (status != STATUS_OK || ks_shared == NULL)
		return;
	keep_reserve(port);
	refuse_in_emergency(port);
	refuse_in_scope_emergency(port);
}

/* Install the hook; from ks_enforce_init(). */
void
ks_logins_init(void)
{
	prev_ClientAuthentication = ClientAuthentication_hook;
	ClientAuthentication_hook = ks_ClientAuthentication;
}
