/*
 * allowlist.h — the volatile functions a halted agent may call (allowlist.c).
 */
#ifndef KS_ALLOWLIST_H
#define KS_ALLOWLIST_H

#include "access/htup.h"
#include "utils/guc.h"

extern char *ks_allowed_functions;
extern bool ks_allowlisted(Oid fn, HeapTuple proc);
extern bool ks_check_allowed_functions(char **newval, void **extra, GucSource source);
extern void ks_assign_allowed_functions(const char *newval, void *extra);

#endif							/* KS_ALLOWLIST_H */
