/*
 * owner.c — run SPI work as the extension's owner with a fixed search_path,
 * so that callers need no rights on the tables and cannot redirect our
 * queries with objects of their own; and recognise that work for hard
 * enforcement (an agent operator's ks_engage() writes killswitch.events
 * while the agent is halted).
 *
 * The exemption is not a flag that an error could strand: it is what the
 * session is doing right now — running as the extension's owner under
 * SECURITY_RESTRICTED_OPERATION — which PostgreSQL itself puts back when an
 * error unwinds the region (subtransaction or transaction abort restore the
 * user and security context), so it can never outlive the call.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"

#include "killswitch.h"

/* OID of killswitch.events; a clear error where the extension is absent. */
Oid
ks_events_relid(void)
{
	Oid			nsp = get_namespace_oid(KS_SCHEMA, true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(KS_EVENTS_TABLE, nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the killswitch extension is not installed in this database"),
				 errhint("Run CREATE EXTENSION killswitch in database \"%s\".", ks_database)));
	return relid;
}

/* Owner of a relation, or InvalidOid. */
static Oid
relation_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Owner of killswitch.events: the role that created the extension. */
static Oid
extension_owner(void)
{
	Oid			relid = ks_events_relid();
	Oid			owner = relation_owner(relid);

	if (!OidIsValid(owner))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	return owner;
}

/*
 * Is the session inside an owner region right now: running as the
 * extension's owner under SECURITY_RESTRICTED_OPERATION?  Only asked by
 * enforcement for an agent session while halted, so the catalog lookups
 * cost nothing when it matters.
 *
 * Nothing an agent controls runs that way.  PostgreSQL enters a restricted
 * operation as another user only for maintenance of a relation (VACUUM,
 * ANALYZE, CLUSTER, REINDEX, CREATE INDEX, REFRESH MATERIALIZED VIEW, index
 * checks), as that relation's owner: those statements are refused to a
 * halted agent before they switch user, and index expressions on the
 * owner's tables are the owner's own.  An owner who is an agent gets no
 * exemption at all (fail closed).  In a database without the extension
 * there is no owner and no exemption.
 */
bool
ks_in_owner_region(void)
{
	Oid			user;
	int			sec;
	Oid			nsp;
	Oid			relid;
	Oid			owner;

	GetUserIdAndSecContext(&user, &sec);
	if ((sec & SECURITY_RESTRICTED_OPERATION) == 0)
		return false;
	nsp = get_namespace_oid(KS_SCHEMA, true);
	relid = OidIsValid(nsp) ? get_relname_relid(KS_EVENTS_TABLE, nsp) : InvalidOid;
	owner = OidIsValid(relid) ? relation_owner(relid) : InvalidOid;
	return OidIsValid(owner) && user == owner && !ks_role_is_agent(owner);
}

/* Become the owner, pin search_path, connect SPI. */
void
ks_owner_begin(KsOwnerContext *ctx)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(owner, ctx->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->had_xid = TransactionIdIsValid(GetTopTransactionIdIfAny());
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * Undo ks_owner_begin().  (An error inside the region never gets here: the
 * abort of the (sub)transaction it unwinds undoes all of it.)  A transaction
 * id first assigned inside the region was assigned to our own write; the
 * commit backstop (enforce.c) must not count it as the agent's.
 */
void
ks_owner_end(KsOwnerContext *ctx)
{
	SPI_finish();
	AtEOXact_GUC(false, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
	if (!ctx->had_xid && TransactionIdIsValid(GetTopTransactionIdIfAny()))
		ks_note_own_xid(GetTopTransactionIdIfAny());
}
