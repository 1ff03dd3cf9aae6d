/*
 * names.h — the names the extension gives things: its SQLSTATE, its schema,
 * tables, roles and channels, and the files of its private directory in the
 * data directory.
 */
#ifndef KS_NAMES_H
#define KS_NAMES_H

/* The dedicated SQLSTATE for "refused by the kill switch". */
#define ERRCODE_KILLSWITCH_ENGAGED MAKE_SQLSTATE('K','S','0','0','1')

#define KS_SCHEMA "killswitch"
#define KS_EVENTS_TABLE "events"
#define KS_CRITICAL_TABLE "critical_tasks"
#define KS_ROLE_OPERATOR "killswitch_operator"
#define KS_ROLE_ADMIN "killswitch_admin"
#define KS_ROLE_AGENT "killswitch_agent"
#define KS_CHANNEL "killswitch"
#define KS_ALERT_CHANNEL "killswitch_alert"
/* Private directory inside the data directory. */
#define KS_PRIVATE_DIR "pg_killswitch"
#define KS_LAST_APPLIED_FILE KS_PRIVATE_DIR "/last_applied.json"
#define KS_SCOPES_COPY_FILE KS_PRIVATE_DIR "/scopes.json"	/* the scope file as the server last wrote it */
#define KS_SNAPSHOT_FILE_NAME "kill_switch_snapshot.json"

#endif							/* KS_NAMES_H */
