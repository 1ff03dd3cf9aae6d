/*
 * emergency.h — the emergency's actions: snapshot, ending sessions, the alert
 * (emergency.c).
 */
#ifndef KS_EMERGENCY_H
#define KS_EMERGENCY_H

extern bool ks_emergency_lists_role(const char *name);
extern void ks_emergency_tick(bool history);
extern void ks_emergency_finish_prepared(void);
extern void ks_emergency_tick_without_database(void);
extern void ks_alert_poll(void);

#endif							/* KS_EMERGENCY_H */
