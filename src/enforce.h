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
/* What an agent was refused, for the message of its KS001 (enforce.c). */
typedef enum KsRefused
{
	KS_REFUSED_STATEMENT,		/* any statement, in emergency */
	KS_REFUSED_WRITE,			/* a statement that writes */
	KS_REFUSED_COMMAND,			/* a utility statement, by its name */
	KS_REFUSED_COPY_FROM_FILE,
	KS_REFUSED_COPY_TO_FILE,
	KS_REFUSED_CALL,			/* a call of a function, by its name */
	KS_REFUSED_COMMIT,			/* the commit of a transaction that wrote */
	KS_REFUSED_PREPARE,			/* PREPARE TRANSACTION of one */
	KS_REFUSED_AFTER_BUILTIN,	/* the rest of a transaction that called a
								 * denied built-in before the halt, by its name */
} KsRefused;
pg_noreturn extern void ks_refuse_agent(KsMode mode, KsRefused what, const char *name);
extern const char *ks_agent_name(void);
extern void ks_agent_notifies(void);

#endif							/* KS_ENFORCE_H */
