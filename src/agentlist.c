/*
 * agentlist.c — the agent roles of an emergency (ARCHITECTURE §9): every
 * role that is a member of killswitch_agent, however indirectly, read from
 * the shared catalogs so that the watcher finds them whether it is
 * connected to a database or to none.  While the emergency lasts their
 * names are also published as a shared list (lists.c) for logins.c, which
 * refuses agent logins with killswitch.refuse_agent_logins: a name lookup
 * under a shared LWLock, however many roles there are.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/pg_auth_members.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/hsearch.h"

#include "killswitch.h"

/* ks_agent_roles_epoch when the published list was built. */
static uint64 published_epoch = 0;
static bool published = false;

/*
 * Publish these names as the list logins are checked against.  Built
 * outside any lock and swapped in; a list that cannot be built is a
 * WARNING and is tried again at the next tick — it never keeps the
 * sessions from being ended.
 */
static void
publish_names(List *names, uint64 epoch)
{
	KsListItem *items = palloc0(sizeof(KsListItem) * Max(list_length(names), 1));
	dsa_pointer block;
	ListCell   *lc;
	int			n = 0;

	foreach(lc, names)
		items[n++].name = lfirst(lc);
	block = ks_list_build(items, n, WARNING);
	if (!DsaPointerIsValid(block))
		return;
	(void) ks_list_swap(KS_LIST_AGENTS, block, NULL, NULL, 0);
	published = true;
	published_epoch = epoch;
}

/*
 * The roles that are members of killswitch_agent, however indirectly, as a
 * set of OIDs — killswitch_agent among them.  Walked down from it over
 * pg_auth_members read once, as a recursive query would: asking
 * is_member_of_role_nosuper() role by role costs a catalog lookup for
 * every role, which with thousands of agents delays the snapshot.  Any
 * grant counts, as it does for ks_role_is_agent(): directly or through
 * other roles, whatever INHERIT says, superuser status not counted.
 */
static HTAB *
agent_role_set(Oid agent)
{
	HASHCTL		ctl;
	HTAB	   *set;
	List	   *grants = NIL;	/* pairs: role, member */
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		added;

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(Oid);
	ctl.hcxt = CurrentMemoryContext;
	set = hash_create("killswitch agent roles", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	(void) hash_search(set, &agent, HASH_ENTER, NULL);

	rel = table_open(AuthMemRelationId, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		Form_pg_auth_members m = (Form_pg_auth_members) GETSTRUCT(tup);

		grants = lappend_oid(lappend_oid(grants, m->roleid), m->member);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* add the members of roles in the set until none is new */
	do
	{
		added = false;
		for (int i = 0; i + 1 < list_length(grants); i += 2)
		{
			Oid			role = list_nth_oid(grants, i);
			Oid			member = list_nth_oid(grants, i + 1);
			bool		found;

			if (hash_search(set, &role, HASH_FIND, NULL) == NULL)
				continue;
			(void) hash_search(set, &member, HASH_ENTER, &found);
			added |= !found;
		}
	} while (added);
	return set;
}

/*
 * The agent roles' OIDs, killswitch_agent itself left out (nobody logs in
 * as it).  The list for logins is built again only when roles or
 * memberships changed since it was (agents.c bumps the epoch).
 */
List *
ks_agent_roles(void)
{
	Oid			agent = get_role_oid(KS_ROLE_AGENT, true);
	uint64		epoch = ks_agent_roles_epoch;
	List	   *roles = NIL;
	List	   *names = NIL;

	if (OidIsValid(agent))
	{
		HTAB	   *set = agent_role_set(agent);
		Relation	rel = table_open(AuthIdRelationId, AccessShareLock);
		SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
		HeapTuple	tup;

		while ((tup = systable_getnext(scan)) != NULL)
		{
			Form_pg_authid role = (Form_pg_authid) GETSTRUCT(tup);

			if (role->oid == agent || hash_search(set, &role->oid, HASH_FIND, NULL) == NULL)
				continue;
			roles = lappend_oid(roles, role->oid);
			names = lappend(names, pstrdup(NameStr(role->rolname)));
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
		hash_destroy(set);
	}
	if (!published || epoch != published_epoch)
		publish_names(names, epoch);
	return roles;
}

/*
 * The list is for the emergency only: once the mode is something else,
 * logins no longer look at it, and its memory is given back.
 */
void
ks_agent_roles_forget(void)
{
	if (!published)
		return;
	(void) ks_list_swap(KS_LIST_AGENTS, InvalidDsaPointer, NULL, NULL, 0);
	published = false;
}

/* Is this role name on the published list?  (No catalog access: logins.c.) */
bool
ks_emergency_lists_role(const char *name)
{
	return ks_list_lookup(KS_LIST_AGENTS, name, NULL, NULL) == KS_LIST_PRESENT;
}

/* These role OIDs as an oid[], for the queries that take them as a parameter. */
Datum
ks_oid_array(List *oids)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(oids), 1));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, oids)
		elems[n++] = ObjectIdGetDatum(lfirst_oid(lc));
	return PointerGetDatum(construct_array(elems, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
}
