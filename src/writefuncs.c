/*
 * writefuncs.c — built-in functions that change something without a
 * statement that writes: a SELECT can call them.  A halted agent's call is
 * refused with KS001 when the function is about to run: the object access
 * hook's OAT_FUNCTION_EXECUTE, which PostgreSQL invokes wherever it sets up
 * a function call — in the executor, in PL/pgSQL's simple expressions, in
 * the planner's constant folding and for the fast-path protocol that
 * libpq's client-side large-object calls use.  (needs_fmgr_hook would not
 * do: built-in functions never consult it.)
 *
 * Large objects that are written, sequences (nextval, setval: not
 * transactional, so the commit backstop in enforce.c would not see them),
 * logical decoding messages, NOTIFY's function form, and lo_export, which
 * writes a server file.  The other large-object writes also hold a
 * transaction id and would be caught at commit; refusing them here gives a
 * clear message at once.
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"

#include "killswitch.h"

static object_access_hook_type prev_object_access_hook = NULL;

/* Is this one of the built-in functions that write? */
static bool
writes_by_itself(Oid fn)
{
	switch (fn)
	{
		case F_NEXTVAL:
		case F_SETVAL_REGCLASS_INT8:
		case F_SETVAL_REGCLASS_INT8_BOOL:
		case F_LO_CREAT:
		case F_LO_CREATE:
		case F_LO_FROM_BYTEA:
		case F_LO_PUT:
		case F_LOWRITE:
		case F_LO_TRUNCATE:
		case F_LO_TRUNCATE64:
		case F_LO_UNLINK:
		case F_LO_IMPORT_TEXT:
		case F_LO_IMPORT_TEXT_OID:
		case F_LO_EXPORT:
		case KS_F_PG_LOGICAL_EMIT_MESSAGE_TEXT:
		case KS_F_PG_LOGICAL_EMIT_MESSAGE_BYTEA:
		case F_PG_NOTIFY:
			return true;
		default:
			return false;
	}
}

/* Object access hook: refuse a halted agent's call of a function that writes. */
static void
ks_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId,
				 void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_FUNCTION_EXECUTE && ks_shared != NULL &&
		unlikely(ks_current_mode() != KS_DISENGAGED) && writes_by_itself(objectId))
	{
		KsMode		mode = ks_current_mode();

		if (!ks_agent_may_write(mode))
			ks_refuse_agent(mode, psprintf("%s()", get_func_name(objectId)));
	}
}

/* Install the hook; from ks_enforce_init(). */
void
ks_writefuncs_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = ks_object_access;
}
