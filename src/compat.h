/*
 * compat.h — the only place that knows which PostgreSQL major version we
 * are built against.  Built and tested against 15 (with assertions) and 18
 * (scripts/pg-builds); 16 and 17 lie between them and take the same shims.
 */
#ifndef KS_COMPAT_H
#define KS_COMPAT_H

#include "pg_config.h"

/* JSON semantic callbacks return an error code from 16 on. */
#if PG_VERSION_NUM >= 160000
#define KS_JSON_CB_RETURN_TYPE JsonParseErrorType
#define KS_JSON_CB_OK return JSON_SUCCESS
#else
#define KS_JSON_CB_RETURN_TYPE void
#define KS_JSON_CB_OK return
#endif

/* makeJsonLexContextCstringLen() takes a caller-supplied context from 17 on. */
#if PG_VERSION_NUM >= 170000
#define ks_make_json_lex(json, len) \
	makeJsonLexContextCstringLen(NULL, (json), (len), PG_UTF8, true)
#else
#define ks_make_json_lex(json, len) \
	makeJsonLexContextCstringLen((json), (len), PG_UTF8, true)
#endif

/*
 * pg_noreturn, a prefix, replaced pg_attribute_noreturn(), a suffix, in 18.
 * Before 18, spell it as 18 does (c.h, GCC and C11 alike).
 */
#ifndef pg_noreturn
#define pg_noreturn _Noreturn
#endif

#ifndef FRONTEND
/* shmem_request_hook appeared in 15; before it, ask from _PG_init. */
#if PG_VERSION_NUM >= 150000
#define KS_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/*
 * A conversion that stops before an untranslatable character instead of
 * raising it (pg_do_encoding_conversion_buf) exists from 14 on; before it,
 * encoding.c escapes every character beyond ASCII where a database is not
 * UTF-8.
 */
#if PG_VERSION_NUM >= 140000
#define KS_HAVE_CONVERSION_NOERROR 1
#endif

/* Custom WAL resource managers (RegisterCustomRmgr) appeared in 15. */
#if PG_VERSION_NUM >= 150000
#define KS_HAVE_CUSTOM_RMGR 1
#endif

/* MarkGUCPrefixReserved() replaced EmitWarningsOnPlaceholders() in 15. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/*
 * ExecutorRun lost its execute_once argument in 18.  A hook declares its
 * parameters as KS_EXECUTOR_RUN_PARAMS and passes KS_EXECUTOR_RUN_ARGS on.
 */
#if PG_VERSION_NUM >= 180000
#define KS_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count
#define KS_EXECUTOR_RUN_ARGS queryDesc, direction, count
#else
#define KS_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once
#define KS_EXECUTOR_RUN_ARGS queryDesc, direction, count, execute_once
#endif

/*
 * pgstat_fetch_stat_local_beentry() became pgstat_get_local_beentry_by_index()
 * in 16 (the same 1-based index into the local copy); we use the new name.
 */
#if PG_VERSION_NUM < 160000
#define pgstat_get_local_beentry_by_index(idx) pgstat_fetch_stat_local_beentry(idx)
#endif

/*
 * A WaitEventSet belongs to a resource owner from 17 on (NULL: to nobody, freed
 * by its creator, in TopMemoryContext), to a memory context before.
 */
#if PG_VERSION_NUM >= 170000
#define ks_create_wait_event_set(nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define ks_create_wait_event_set(nevents) CreateWaitEventSet(TopMemoryContext, (nevents))
#endif

/*
 * pg_logical_emit_message() gained a fourth argument, flush, in 17, and with
 * it the names of its entries in fmgroids.h.
 */
#if PG_VERSION_NUM >= 170000
#define KS_F_PG_LOGICAL_EMIT_MESSAGE_TEXT F_PG_LOGICAL_EMIT_MESSAGE_BOOL_TEXT_TEXT_BOOL
#define KS_F_PG_LOGICAL_EMIT_MESSAGE_BYTEA F_PG_LOGICAL_EMIT_MESSAGE_BOOL_TEXT_BYTEA_BOOL
#else
#define KS_F_PG_LOGICAL_EMIT_MESSAGE_TEXT F_PG_LOGICAL_EMIT_MESSAGE_BOOL_TEXT_TEXT
#define KS_F_PG_LOGICAL_EMIT_MESSAGE_BYTEA F_PG_LOGICAL_EMIT_MESSAGE_BOOL_TEXT_BYTEA
#endif
/*
 * LogLogicalMessage() gained a last argument, flush, in 17 (the caller
 * flushes here: false).
 */
#if PG_VERSION_NUM >= 170000
#define ks_log_logical_message(prefix, message, size, transactional) \
	LogLogicalMessage((prefix), (message), (size), (transactional), false)
#else
#define ks_log_logical_message(prefix, message, size, transactional) \
	LogLogicalMessage((prefix), (message), (size), (transactional))
#endif

/*
 * A REVOKE of an option only (the membership stays): ADMIN OPTION FOR before
 * 16 (admin_opt); from 16 on any "<option> OPTION FOR", a list of options.
 */
#if PG_VERSION_NUM >= 160000
#define ks_revokes_option_only(stmt) ((stmt)->opt != NIL)
#else
#define ks_revokes_option_only(stmt) ((stmt)->admin_opt)
#endif

/*
 * A backend's index among the PGPROCs, for arrays with one slot per PGPROC
 * (MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts of them, known from
 * shmem_request_hook on): MyProcNumber and GetNumberFromPGProc() from 17 on,
 * the PGPROC's pgprocno before.
 */
#if PG_VERSION_NUM >= 170000
#define ks_my_proc_number() (MyProcNumber)
#define ks_proc_number(proc) ((int) GetNumberFromPGProc(proc))
#else
#define ks_my_proc_number() (MyProc->pgprocno)
#define ks_proc_number(proc) ((proc)->pgprocno)
#endif

/*
 * A wait event of our own name (pg_stat_activity: wait_event_type
 * "Extension", wait_event the name) from 17 on; before, every wait of an
 * extension is the one event "Extension".  The first call registers the name
 * in shared memory; *cache keeps the event for the next.
 */
#include "utils/wait_event.h"
#if PG_VERSION_NUM >= 170000
static inline uint32
ks_wait_event(uint32 *cache, const char *name)
{
	if (*cache == 0)
		*cache = WaitEventExtensionNew(name);
	return *cache;
}
#else
static inline uint32
ks_wait_event(uint32 *cache, const char *name)
{
	return PG_WAIT_EXTENSION;
}
#endif

/*
 * Injection points (17 on, in a server configured with
 * --enable-injection-points, as scripts/pg-builds builds 18): a test attaches
 * an action to a point by name (the injection_points module: wait here until
 * woken, raise an error) to force an interleaving.  Elsewhere, and before 17,
 * a point is nothing.  Name points "killswitch-what-happens-next".
 */
#if PG_VERSION_NUM >= 170000 && defined(USE_INJECTION_POINTS)
#include "utils/injection_point.h"
#if PG_VERSION_NUM >= 180000
#define KS_INJECTION_POINT(name) INJECTION_POINT(name, NULL)
#else
#define KS_INJECTION_POINT(name) INJECTION_POINT(name)
#endif
#else
#define KS_INJECTION_POINT(name) ((void) 0)
#endif

/*
 * The connection slots PostgreSQL keeps from ordinary roles (logins.c):
 * superuser_reserved_connections (ReservedBackends) up to 15; from 16 also
 * reserved_connections, and HaveNFreeProcs() reports how many it found.
 */
#include "postmaster/postmaster.h"
#include "storage/proc.h"
#if PG_VERSION_NUM >= 160000
#define KS_RESERVED_BACKENDS (SuperuserReservedConnections + ReservedConnections)
static inline bool
ks_have_free_procs(int n)
{
	int			nfree;

	return HaveNFreeProcs(n, &nfree);
}
#else
#define KS_RESERVED_BACKENDS ReservedBackends
#define ks_have_free_procs(n) HaveNFreeProcs(n)
#endif

/*
 * A GUC check hook's extra is freed by the GUC machinery: with free() up to
 * 15, with guc_free() (its memory context) from 16, where guc_malloc() is
 * exported to allocate it.  NULL when out of memory.
 */
#include "utils/guc.h"
#if PG_VERSION_NUM >= 160000
#define ks_guc_malloc(size) guc_malloc(LOG, (size))
#else
#define ks_guc_malloc(size) malloc(size)
#endif

/*
 * transaction_timeout came in 17: a wait no timeout may end (a raise in
 * force, scopemembers.c ks_waits_untimed()) turns it off for the rest of
 * the transaction; its assign hook ends the timeout under way.
 */
#if PG_VERSION_NUM >= 170000
#define ks_transaction_timeout_off() \
	((void) set_config_option("transaction_timeout", "0", PGC_USERSET, PGC_S_SESSION, \
							  GUC_ACTION_LOCAL, true, 0, false))
#else
#define ks_transaction_timeout_off() ((void) 0)
#endif

/*
 * random() took overloads in 17 (random(min, max)), which renamed the entry
 * of the one without arguments in fmgroids.h (allowlist.c).
 */
#if PG_VERSION_NUM >= 170000
#define KS_F_RANDOM F_RANDOM_
#else
#define KS_F_RANDOM F_RANDOM
#endif

/*
 * ConditionalLockSharedObject() came in 18; before, the same from
 * LockAcquire() with dontWait, as LockSharedObject() takes it
 * (scopemembers.c: a scope's raise never waits on a role's lock).
 */
#include "storage/lmgr.h"
#include "utils/inval.h"
#if PG_VERSION_NUM >= 180000
#define ks_conditional_lock_shared_object(classid, objid, objsubid, lockmode) \
	ConditionalLockSharedObject((classid), (objid), (objsubid), (lockmode))
#else
static inline bool
ks_conditional_lock_shared_object(Oid classid, Oid objid, uint16 objsubid, LOCKMODE lockmode)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, classid, objid, objsubid);
	if (LockAcquire(&tag, lockmode, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	AcceptInvalidationMessages();
	return true;
}
#endif
#endif							/* !FRONTEND */

#endif							/* KS_COMPAT_H */
