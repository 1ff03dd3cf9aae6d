/*
 * audit.h — the watcher's look at the agent roles' powers (audit.c).
 */
#ifndef KS_AUDIT_H
#define KS_AUDIT_H

extern void ks_audit_watch(void);

#endif							/* KS_AUDIT_H */
