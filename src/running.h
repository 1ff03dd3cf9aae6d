/*
 * running.h — built-ins that run across the halt (running.c).
 */
#ifndef KS_RUNNING_H
#define KS_RUNNING_H

#include "compat.h"
#include "store.h"

extern void ks_running_shmem_request(void);
extern void ks_running_shmem_startup(void);
extern Oid	ks_noted_builtin;
extern void ks_note_running_builtin(Oid fn);
extern void ks_running_xact_end(void);
pg_noreturn extern void ks_refuse_running_builtin(KsMode mode);
extern void ks_cancel_running_builtins(void);
extern void ks_rethrow_halt_cancel(void);
extern void ks_running_init(void);

/* Has this transaction set up a denied built-in (while disengaged)?  One load. */
static inline bool
ks_noted_running_builtin(void)
{
	return OidIsValid(ks_noted_builtin);
}

#endif							/* KS_RUNNING_H */
