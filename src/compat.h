/*
 * compat.h — the only place that knows which PostgreSQL major version we
 * are built against.  Target is 15; 13–17 should need changes here only.
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

/* This process's index into the PGPROC array: MyProcNumber from 17 on. */
#if PG_VERSION_NUM >= 170000
#define KS_MY_PROCNO MyProcNumber
#else
#define KS_MY_PROCNO (MyProc->pgprocno)
#endif

/* MarkGUCPrefixReserved() replaced EmitWarningsOnPlaceholders() in 15. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif
#endif							/* !FRONTEND */

#endif							/* KS_COMPAT_H */
