/*
 * owner.c — run SPI work as the extension's owner with a fixed search_path,
 * so that callers need no rights on the tables and cannot redirect our
 * queries with objects of their own.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "access/htup_details.h"
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

/* Owner of killswitch.events: the role that created the extension. */
static Oid
extension_owner(void)
{
	Oid			relid = ks_events_relid();
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
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
	ks_own_write_depth++;
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* Undo ks_owner_begin(). */
void
ks_owner_end(KsOwnerContext *ctx)
{
	SPI_finish();
	AtEOXact_GUC(false, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
	ks_own_write_depth--;
}
