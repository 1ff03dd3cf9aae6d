/*
 * tasks.h — critical tasks, grants, task rules (tasks.c).
 */
#ifndef KS_TASKS_H
#define KS_TASKS_H

#include "store.h"

typedef struct KsTaskVerdict
{
	bool		allowed;
	const char *action;			/* allow, queue or block */
	const char *reason;			/* when refused */
	const char *note;			/* when a critical task is let through */
} KsTaskVerdict;
extern bool ks_task_is_critical(const char *task);
extern KsTaskVerdict ks_task_verdict(KsMode mode, const char *task);
extern void ks_tasks_init(void);
/* A session's claim to a task, judged for hard enforcement. */
typedef enum KsClaim
{
	KS_CLAIM_NONE,				/* no task, or not a critical one */
	KS_CLAIM_GRANTED,			/* critical and granted to the session's role */
	KS_CLAIM_UNGRANTED			/* critical, but not granted: refused, recorded */
} KsClaim;
extern KsClaim ks_judge_claim(const char *task);
extern bool ks_critical_list_due(void);
extern void ks_load_critical_list(bool first);

#endif							/* KS_TASKS_H */
