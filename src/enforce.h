/*
 * enforce.h — the hooks that stop agents (enforce.c).
 */
#ifndef KS_ENFORCE_H
#define KS_ENFORCE_H

#include "compat.h"
#include "store.h"

extern char *ks_session_task;
extern void ks_check_commit_tail(void);
extern void ks_enforce_init(void);
extern bool ks_agent_may_write(KsMode mode);
pg_noreturn extern void ks_refuse_agent(KsMode mode, const char *what);
extern const char *ks_agent_name(void);
extern void ks_agent_notifies(void);

#endif							/* KS_ENFORCE_H */
