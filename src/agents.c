/*
 * agents.c — is this session an agent?  A session is one when its current
 * role, its session role or the role it logged in as is a member of
 * killswitch_agent (directly or through other roles, whatever INHERIT
 * says), so that neither SET ROLE to a granted non-agent role, nor a
 * SECURITY DEFINER function owned by one, nor SET SESSION AUTHORIZATION
 * lifts the halt.  The answer is cached per (current, session) role pair and
 * forgotten whenever roles or memberships change.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/syscache.h"

#include "agents.h"
#include "rights.h"

static bool cache_valid = false;
static Oid	cached_user = InvalidOid;
static Oid	cached_session = InvalidOid;
static bool cached_answer = false;

/* Bumped whenever roles or memberships change (the watcher's list of agent roles). */
uint64		ks_agent_roles_epoch = 0;

/* Syscache callback: a role or a membership changed. */
static void
agents_inval(Datum arg, int cacheid, uint32 hashvalue)
{
	cache_valid = false;
	ks_agent_roles_epoch++;
}

/* Register the invalidation callbacks; once per process, from _PG_init. */
void
ks_agents_init(void)
{
	CacheRegisterSyscacheCallback(AUTHOID, agents_inval, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, agents_inval, (Datum) 0);
}

/*
 * Is the session an agent?  Needs catalog access (a transaction) on a cache
 * miss; callers are hooks that run inside one.
 */
bool
ks_session_is_agent(void)
{
	Oid			user = GetUserId();
	Oid			session = GetSessionUserId();

	bool		answer;

	if (cache_valid && user == cached_user && session == cached_session)
		return cached_answer;
	/* valid first: an invalidation arriving during the lookups clears it */
	cache_valid = true;
	answer = ks_role_is_agent(user) || (session != user && ks_role_is_agent(session)) ||
		(OidIsValid(GetAuthenticatedUserId()) && GetAuthenticatedUserId() != session &&
		 ks_role_is_agent(GetAuthenticatedUserId()));
	cached_user = user;
	cached_session = session;
	cached_answer = answer;
	return answer;
}
