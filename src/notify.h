/*
 * notify.h — announcing changes, from the watcher (notify.c, ARCHITECTURE §5.6).
 */
#ifndef KS_NOTIFY_H
#define KS_NOTIFY_H

extern void ks_notify_pending(void);
extern void ks_notify_alert_later(int64 generation, int sessions_ended);
extern void ks_notify_scope_alert_later(const char *scope, int64 generation, int sessions_ended);

#endif							/* KS_NOTIFY_H */
