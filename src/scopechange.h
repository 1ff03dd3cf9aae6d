/*
 * scopechange.h — a scope's change through SQL (scopechange.c,
 * ARCHITECTURE §13).
 */
#ifndef KS_SCOPECHANGE_H
#define KS_SCOPECHANGE_H

#include "fmgr.h"

#include "store.h"

extern Datum ks_scope_change(const char *scope, KsMode mode, const char *reason,
							 const char *by, int32 affected, bool release);
extern void ks_scopes_from_history(bool settle);
extern KsMode ks_scope_chain_mode(Oid role);
extern bool ks_scope_record_outside(Oid role, KsMode mode, KsMode previous,
									const char *reason, const char *by);
extern void ks_record_scope_marks(bool all);
extern void ks_scope_look(void);
extern void ks_scopechange_init(void);

#endif							/* KS_SCOPECHANGE_H */
