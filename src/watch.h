/*
 * watch.h — judging the state file while running (watch.c).
 */
#ifndef KS_WATCH_H
#define KS_WATCH_H

#include "datatype/timestamp.h"

#include "store.h"

/* Has the writer of a file finished?  Asked after the file was read (worker.c). */
typedef bool (*KsWriterDone) (const char *path);
/* What a look at a file came to. */
typedef enum KsJudged
{
	KS_JUDGED,					/* judged: applied, kept to be recorded, or nothing to do */
	KS_JUDGE_AFTER_WRITER,		/* its writer may still be at it: once it has finished */
	KS_JUDGE_AFTER_LOCK,		/* a release waiting for the lock that orders changes */
	KS_JUDGE_AFTER_RECHECK		/* not a valid state: read again at ks_judge_recheck_at() */
} KsJudged;
extern KsJudged ks_judge_file(const char *path, bool raced, bool locked, KsWriterDone writer_done);
extern KsJudged ks_judge_file_without_history(const char *path, bool raced, KsWriterDone writer_done);
extern TimestampTz ks_judge_recheck_at(const char *path);
extern void ks_reconcile_history(void);
extern void ks_watch_failed(void);
extern void ks_watch_tamper(const char *what);
extern void ks_settle_marks(void);
extern bool ks_watch_writers_stuck;
extern bool ks_watch_due(void);

#endif							/* KS_WATCH_H */
