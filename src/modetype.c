/*
 * modetype.c — the SQL enum ks_mode and our KsMode: converting between
 * enum label OIDs and modes, cached per backend.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_enum.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "modetype.h"
#include "owner.h"
#include "store.h"

/* The enum's type OID and its labels' OIDs, by mode. */
static Oid	cached_type = InvalidOid;
static Oid	cached_labels[KS_MODE_COUNT];

/* Type OID of ks_mode, found through killswitch.events.mode. */
Oid
ks_mode_type_oid(void)
{
	Oid			relid = ks_events_relid();
	AttrNumber	att = get_attnum(relid, "mode");

	if (att == InvalidAttrNumber)
		elog(ERROR, "killswitch.events has no column \"mode\"");
	return get_atttype(relid, att);
}

/* Fill the cache for an enum type. */
static void
load_labels(Oid typoid)
{
	for (int m = 0; m < KS_MODE_COUNT; m++)
	{
		Oid			label = GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid,
											ObjectIdGetDatum(typoid),
											CStringGetDatum(ks_mode_sql_names[m]));

		if (!OidIsValid(label))
			elog(ERROR, "enum ks_mode has no label \"%s\"", ks_mode_sql_names[m]);
		cached_labels[m] = label;
	}
	cached_type = typoid;
}

/* The enum Datum of a mode, for a function returning typoid. */
Datum
ks_mode_to_datum(KsMode mode, Oid typoid)
{
	if (typoid != cached_type)
		load_labels(typoid);
	return ObjectIdGetDatum(cached_labels[mode]);
}

/* The mode of an enum Datum. */
KsMode
ks_mode_from_datum(Datum value)
{
	Oid			label = DatumGetObjectId(value);
	HeapTuple	tup;
	int			mode;

	for (int m = 0; m < KS_MODE_COUNT && OidIsValid(cached_type); m++)
		if (cached_labels[m] == label)
			return (KsMode) m;
	tup = SearchSysCache1(ENUMOID, ObjectIdGetDatum(label));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for enum label %u", label);
	mode = ks_mode_from_sql_name(NameStr(((Form_pg_enum) GETSTRUCT(tup))->enumlabel));
	load_labels(((Form_pg_enum) GETSTRUCT(tup))->enumtypid);
	ReleaseSysCache(tup);
	if (mode == KS_NO_MODE)
		elog(ERROR, "enum label %u is not a kill switch mode", label);
	return (KsMode) mode;
}
