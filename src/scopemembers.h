/*
 * scopemembers.h — memberships inside a halted scope are frozen
 * (scopemembers.c, ARCHITECTURE §13).
 */
#ifndef KS_SCOPEMEMBERS_H
#define KS_SCOPEMEMBERS_H

extern void ks_waits_untimed(void);
extern bool ks_scope_raise_lock_role(Oid role);
extern void ks_scopemembers_init(void);

#endif							/* KS_SCOPEMEMBERS_H */
