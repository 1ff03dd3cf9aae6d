/*
 * alert.h — NOTIFY, WARNING and killswitch.alert_command (alert.c).
 */
#ifndef KS_ALERT_H
#define KS_ALERT_H

extern int64 ks_alert_event_id(int64 generation);
extern void ks_alert_emergency(int64 generation, int64 event_id, int ended, bool database);
extern void ks_alert_scope_emergency(Oid role, int64 generation, int ended);
extern void ks_alert_poll(void);

#endif							/* KS_ALERT_H */
