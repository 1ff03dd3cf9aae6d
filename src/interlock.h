/*
 * interlock.h — no agent commit after a raise (interlock.c, ARCHITECTURE §5.2).
 */
#ifndef KS_INTERLOCK_H
#define KS_INTERLOCK_H

#include "store.h"

extern void ks_interlock_init(void);
extern void ks_slots_clear_at_exit(void);
extern KsMode ks_commit_mode(void);
extern KsMode ks_commit_prepared_mode(void);
extern bool ks_in_commit_tail(void);
extern void ks_interlock_wait(void);

#endif							/* KS_INTERLOCK_H */
