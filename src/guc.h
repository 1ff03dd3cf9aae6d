/*
 * guc.h — the settings that killswitch.c defines (the killswitch.* GUCs).
 * A part that defines a setting of its own declares it in its own header
 * (allowlist.h, enforce.h, logins.h, release.h, upstream.h).
 */
#ifndef KS_GUC_H
#define KS_GUC_H

extern char *ks_state_dir;
extern char *ks_secret_file;
extern bool ks_require_hmac;
extern char *ks_database;
extern int	ks_recheck_delay;
extern int	ks_poll_interval;
extern char *ks_alert_command;
extern int	ks_alert_timeout;
extern bool ks_refuse_agent_logins;
extern int	ks_release_approvals;
extern int	ks_approval_timeout;

#endif							/* KS_GUC_H */
