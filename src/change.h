/*
 * change.h — ks_engage/ks_disengage and what a commit or an abort does to a
 * change (change.c).
 */
#ifndef KS_CHANGE_H
#define KS_CHANGE_H

#include "access/xact.h"

#include "persist.h"
#include "store.h"

typedef struct KsChange
{
	KsMode		mode;
	const char *reason;			/* UTF-8 */
	const char *triggered_by;
	int32		affected_tasks;
	const char *source;			/* sql, file, cli, tamper, release_request */
	int			flags;			/* KS_FLAG_* to publish */
	bool		clears_verdict;	/* a release: the tamper verdict goes (else it is kept) */
	bool		request;		/* a release request: mode unchanged */
	KsMode		release_target; /* the mode the request asks for */
	int64		generation;		/* the file's own generation, or 0: the next */
	KsExpect	expect;			/* what the file held when judged (watcher) */
} KsChange;
extern Datum ks_apply_change(const KsChange *change);
extern void ks_record_marks(void);
extern void ks_flush_unrecorded(void);
extern bool ks_order_lock_briefly(void);
extern void ks_own_transaction_id(void);
extern void ks_xact_callback(XactEvent event, void *arg);
extern void ks_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);

#endif							/* KS_CHANGE_H */
