/*
 * startup.h — loading the state at server start (startup.c).
 */
#ifndef KS_STARTUP_H
#define KS_STARTUP_H

extern void ks_load_at_startup(void);

#endif							/* KS_STARTUP_H */
