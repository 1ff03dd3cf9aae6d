/*
 * functions.c — deny by default (ARCHITECTURE §8.3): while halted, an agent
 * may execute only functions that cannot change anything by themselves —
 * those PostgreSQL marks immutable or stable, SQL and PL/pgSQL functions
 * (their statements are checked one by one by enforce.c), and the volatile
 * ones on the allowlist (allowlist.c).  Every other function is refused
 * with KS001: a volatile function in C, internal or another language, a new
 * one in a later PostgreSQL, another extension's.  In emergency an agent
 * runs no function at all.
 *
 * Two places see a call:
 *
 *   - the object access hook's OAT_FUNCTION_EXECUTE, which PostgreSQL runs
 *     wherever it sets up a call (the executor, PL/pgSQL's simple
 *     expressions, the planner's constant folding, the fast-path protocol,
 *     CALL): every function, built-in or not, once per setup;
 *   - the function manager's hook, on every call, for the functions for
 *     which needs_fmgr_hook says so: the denied ones, in agent sessions.
 *     Built-ins never consult it (fmgr_isbuiltin() returns first), so a
 *     call of a built-in set up before the halt is not seen again here;
 *     running.c stops those.
 *
 * The same object access hook also sees OAT_DROP: in an agent's commit
 * work after the backstop (its ON COMMIT DROP tables), each drop checks the
 * halt again (enforce.c ks_check_commit_tail()).
 *
 * A function's verdict is computed once from its pg_proc row and kept
 * until functions, languages, schemas or the allowlist change.  While
 * disengaged the per-call hook costs one atomic read, and the setup hook
 * one atomic read and, for a built-in, one byte of an array.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "utils/fmgroids.h"
#include "utils/fmgrtab.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "agents.h"
#include "allowlist.h"
#include "enforce.h"
#include "functions.h"
#include "interlock.h"
#include "running.h"
#include "scope.h"
#include "state.h"
#include "store.h"

typedef enum Verdict
{
	VERDICT_UNKNOWN = 0,
	VERDICT_ALLOWED,
	VERDICT_DENIED
} Verdict;

/* Built-ins by OID (one byte each), the others in a hash table. */
static uint8 *builtin_verdicts = NULL;
static HTAB *other_verdicts = NULL;

typedef struct VerdictEntry
{
	Oid			fn;				/* hash key */
	Verdict		verdict;
} VerdictEntry;

static object_access_hook_type prev_object_access_hook = NULL;
static needs_fmgr_hook_type prev_needs_fmgr_hook = NULL;
static fmgr_hook_type prev_fmgr_hook = NULL;

/* Is this a built-in function, called without consulting needs_fmgr_hook? */
static inline bool
is_builtin(Oid fn)
{
	return fn <= fmgr_last_builtin_oid &&
		fmgr_builtin_oid_index[fn] != InvalidOidBuiltinMapping;
}

/*
 * Does the function run statements that are checked one by one (SQL,
 * PL/pgSQL), or is it PL/pgSQL's own handler (DO blocks call the inline
 * handler through the function manager)?
 */
static bool
runs_checked_statements(Oid fn, Form_pg_proc form)
{
	HeapTuple	lang;
	bool		plpgsql = false;

	if (form->prolang == SQLlanguageId)
		return true;
	lang = SearchSysCache1(LANGNAME, CStringGetDatum("plpgsql"));
	if (HeapTupleIsValid(lang))
	{
		Form_pg_language l = (Form_pg_language) GETSTRUCT(lang);

		plpgsql = form->prolang == l->oid || fn == l->lanplcallfoid ||
			fn == l->laninline || fn == l->lanvalidator;
		ReleaseSysCache(lang);
	}
	return plpgsql;
}

/* Judge a function from its pg_proc row; one missing is denied. */
static Verdict
judge(Oid fn)
{
	HeapTuple	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc form;
	bool		allowed;

	if (!HeapTupleIsValid(proc))
		return VERDICT_DENIED;
	form = (Form_pg_proc) GETSTRUCT(proc);
	allowed = form->provolatile != PROVOLATILE_VOLATILE ||
		runs_checked_statements(fn, form) || ks_allowlisted(fn, proc);
	ReleaseSysCache(proc);
	return allowed ? VERDICT_ALLOWED : VERDICT_DENIED;
}

/*
 * Bumped by every invalidation: a verdict judged while one arrived (the
 * catalog lookups in judge() take them in) may be stale and is not kept.
 */
static uint64 verdicts_epoch = 0;

/* Keep a verdict. */
static void
remember(Oid fn, Verdict v)
{
	VerdictEntry *entry;
	bool		found;

	if (is_builtin(fn))
	{
		if (builtin_verdicts == NULL)
			builtin_verdicts = MemoryContextAllocZero(TopMemoryContext,
													  fmgr_last_builtin_oid + 1);
		builtin_verdicts[fn] = v;
		return;
	}
	if (other_verdicts == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(VerdictEntry);
		other_verdicts = hash_create("killswitch function verdicts", 64, &ctl,
									 HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(other_verdicts, &fn, HASH_ENTER, &found);
	entry->verdict = v;
}

/* The verdict, from the cache or judged now (needs a transaction then). */
static Verdict
verdict_of(Oid fn)
{
	uint64		epoch;
	Verdict		v = VERDICT_UNKNOWN;

	if (is_builtin(fn))
	{
		if (builtin_verdicts != NULL)
			v = builtin_verdicts[fn];
	}
	else if (other_verdicts != NULL)
	{
		VerdictEntry *entry = hash_search(other_verdicts, &fn, HASH_FIND, NULL);

		if (entry != NULL)
			v = entry->verdict;
	}
	if (v != VERDICT_UNKNOWN)
		return v;
	epoch = verdicts_epoch;
	v = judge(fn);
	if (epoch == verdicts_epoch)
		remember(fn, v);
	return v;
}

/* Is this function refused to a halted agent? */
bool
ks_function_denied(Oid fn)
{
	return verdict_of(fn) == VERDICT_DENIED;
}

/* Forget every verdict: functions, languages, schemas or the allowlist changed. */
void
ks_forget_function_verdicts(void)
{
	verdicts_epoch++;
	if (builtin_verdicts != NULL)
		memset(builtin_verdicts, 0, fmgr_last_builtin_oid + 1);
	if (other_verdicts != NULL)
	{
		hash_destroy(other_verdicts);
		other_verdicts = NULL;
	}
}

/* Syscache callback: see ks_forget_function_verdicts(). */
static void
verdicts_inval(Datum arg, int cacheid, uint32 hashvalue)
{
	ks_forget_function_verdicts();
}

/* Refuse a halted agent's call of a function: "nextval() by agent ... refused". */
static void
refuse_call(KsMode mode, Oid fn)
{
	char	   *name = get_func_name(fn);

	ks_refuse_agent(mode, KS_REFUSED_CALL, name ? name : "(unknown)");
}

/*
 * A call set up while halted.  An agent that may not write runs no denied
 * function, nothing at all in emergency, and nothing more in a transaction
 * that set up a denied built-in before the halt (running.c).
 */
static void
check_setup(KsMode mode, Oid fn)
{
	bool		noted;

	if (!ks_session_is_agent())
		return;
	noted = ks_noted_running_builtin();
	if (!(noted || mode == KS_EMERGENCY || ks_function_denied(fn)) || ks_agent_may_write(mode))
		return;
	if (noted)
		ks_refuse_running_builtin(mode);
	refuse_call(mode, fn);
}

/*
 * Object access hook.  OAT_DROP in an agent's commit work: the backstop
 * again (enforce.c).  OAT_FUNCTION_EXECUTE: a call is being set up.  While
 * disengaged an agent's setup of a denied built-in is noted (running.c)
 * before the mode is read again, so that a raise published meanwhile
 * either finds the note or is seen here.
 */
static void
ks_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId,
				 void *arg)
{
	KsMode		mode;

	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	/* an agent's commit dropping its ON COMMIT DROP tables after the backstop */
	if (unlikely(access == OAT_DROP) && ks_in_commit_tail())
		ks_check_commit_tail();
	if (access != OAT_FUNCTION_EXECUTE || ks_shared == NULL)
		return;
	mode = ks_session_mode();
	if (likely(mode == KS_DISENGAGED))
	{
		if (likely(!is_builtin(objectId)) || likely(!ks_function_denied(objectId)) ||
			!ks_session_is_agent())
			return;
		ks_note_running_builtin(objectId);
		if (objectId == F_PG_NOTIFY)
			ks_agent_notifies();	/* for the backstop (enforce.c) */
		mode = ks_session_mode();
		if (likely(mode == KS_DISENGAGED))
			return;
	}
	check_setup(mode, objectId);
}

/*
 * needs_fmgr_hook: give the denied functions of agent sessions the
 * per-call check.  Asked when a call of a function that is not a built-in
 * is set up, whatever the mode, so that a call set up before the halt is
 * checked after it.  Sessions that are not agents call them directly.
 */
static bool
ks_needs_fmgr_hook(Oid fn)
{
	if (prev_needs_fmgr_hook && prev_needs_fmgr_hook(fn))
		return true;
	if (ks_shared == NULL)
		return false;
	/* no catalog to read: check at every call, which runs in a transaction */
	if (!IsTransactionState())
		return true;
	return ks_session_is_agent() && ks_function_denied(fn);
}

/* fmgr_hook: the per-call check, one atomic read while disengaged. */
static void
ks_fmgr_hook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (event == FHET_START && ks_shared != NULL)
	{
		KsMode		mode = ks_session_mode();

		if (unlikely(mode != KS_DISENGAGED) && ks_session_is_agent() &&
			(mode == KS_EMERGENCY || ks_function_denied(flinfo->fn_oid)) &&
			!ks_agent_may_write(mode))
			refuse_call(mode, flinfo->fn_oid);
	}
	if (prev_fmgr_hook)
		prev_fmgr_hook(event, flinfo, private);
}

/* Install the hooks and the cache callbacks; from ks_enforce_init(). */
void
ks_functions_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = ks_object_access;
	prev_needs_fmgr_hook = needs_fmgr_hook;
	needs_fmgr_hook = ks_needs_fmgr_hook;
	prev_fmgr_hook = fmgr_hook;
	fmgr_hook = ks_fmgr_hook;
	CacheRegisterSyscacheCallback(PROCOID, verdicts_inval, (Datum) 0);
	CacheRegisterSyscacheCallback(LANGOID, verdicts_inval, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, verdicts_inval, (Datum) 0);
}
