/*
 * api.h — the SQL functions that read the state and judge tasks (api.c).
 */
#ifndef KS_API_H
#define KS_API_H

#include "compat.h"
#include "store.h"

/* What a task's refusal says. */
typedef enum KsTaskRefused
{
	KS_TASK_QUEUED,				/* ks_assert_task() in halt_noncritical */
	KS_TASK_BLOCKED,			/* ks_assert_task() above */
	KS_TASK_ROW_REFUSED,		/* ks_guard(): a row of a task */
	KS_TASK_TABLE_ROW_REFUSED,	/* ks_guard(): a row of no task, by its table */
} KsTaskRefused;
pg_noreturn extern void ks_refuse_task(KsMode mode, KsTaskRefused what, const char *name);

#endif							/* KS_API_H */
