/*
 * emergency.h — entering emergency, once per episode (emergency.c).
 */
#ifndef KS_EMERGENCY_H
#define KS_EMERGENCY_H

extern void ks_emergency_tick(bool history);
extern void ks_emergency_tick_without_database(void);

#endif							/* KS_EMERGENCY_H */
