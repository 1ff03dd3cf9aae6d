/*
 * worker.c — the watcher (DESIGN §5 "From outside"): one background worker
 * per cluster, connected to killswitch.database, that notices a state file
 * changed by another program (the CLI, the Python library, a hand edit)
 * within killswitch.poll_interval and applies it — or, if it cannot be
 * trusted, assumes the halt (DESIGN §4).  Each change goes through the same
 * path as ks_engage(): an event, the file rewritten with its generation,
 * shared memory published at commit, NOTIFY.
 *
 * When nothing changed, a tick is one stat() of the file.
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "killswitch.h"

PGDLLEXPORT void ks_worker_main(Datum arg);

/* After a failed look, wait this long before trying to record again. */
#define KS_RETRY_MS 5000

/* What the last look at the file saw; a change in any of it means "read it". */
typedef struct KsFileStamp
{
	bool		exists;
	struct timespec mtime;
	struct timespec ctime;
	off_t		size;
	ino_t		ino;
} KsFileStamp;

/* Register the watcher; from _PG_init while preloading. */
void
ks_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;	/* seconds: a dead watcher comes back fast */
	strlcpy(worker.bgw_library_name, "killswitch", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "ks_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "killswitch watcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "killswitch watcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* stat() the state file. */
static KsFileStamp
file_stamp(const char *path)
{
	KsFileStamp stamp;
	struct stat sb;

	memset(&stamp, 0, sizeof(stamp));
	if (lstat(path, &sb) == 0)
	{
		stamp.exists = true;
		stamp.mtime = sb.st_mtim;
		stamp.ctime = sb.st_ctim;
		stamp.size = sb.st_size;
		stamp.ino = sb.st_ino;
	}
	return stamp;
}

/* Did the file change since the last look? */
static bool
stamp_changed(const KsFileStamp *a, const KsFileStamp *b)
{
	return a->exists != b->exists || a->size != b->size || a->ino != b->ino ||
		a->mtime.tv_sec != b->mtime.tv_sec || a->mtime.tv_nsec != b->mtime.tv_nsec ||
		a->ctime.tv_sec != b->ctime.tv_sec || a->ctime.tv_nsec != b->ctime.tv_nsec;
}

/* Note in shared memory that the watcher looked, for ks_status(). */
static void
note_liveness(void)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->watcher_checked_at = now;
	SpinLockRelease(&ks_shared->mutex);
}

/* Is the extension installed in this database (is there a history)? */
static bool
extension_present(void)
{
	Oid			nsp = get_namespace_oid(KS_SCHEMA, true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid(KS_EVENTS_TABLE, nsp));
}

/* Did the last look find the extension, and so a history to record into? */
static bool had_history = false;

/*
 * Look at the file and act on it, in one transaction holding the lock that
 * orders changes — so that a change committing through SQL (whose file is
 * written just before its commit) is never mistaken for an outside one.
 */
static void
examine_file(void)
{
	char		path[MAXPGPATH];
	bool		history;

	ks_state_file_path(path, sizeof(path));
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "examining the kill switch state file");

	history = extension_present();
	if (history)
	{
		LockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
		if (!had_history)
			ks_reconcile_history();
		ks_judge_file(path);
	}
	else
		ks_judge_file_without_history(path);

	PopActiveSnapshot();
	CommitTransactionCommand();
	had_history = history;
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * examine_file(), surviving its errors: an error (a file that cannot be
 * rewritten, a full disk) is logged, the transaction rolled back, and the
 * halt already raised in shared memory stays.  Returns false on error.
 */
static bool
examine_file_safely(void)
{
	MemoryContext ctx = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		examine_file();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(ctx);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		ks_watch_failed();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * The watcher's other duties, in a transaction of their own: keep the
 * shared copy of the critical tasks, and act on an emergency.
 */
static void
run_duties(void)
{
	bool		history;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	history = extension_present();
	if (history && ks_critical_list_due())
		ks_load_critical_list(!ks_list_loaded(KS_LIST_CRITICAL));
	else if (!history && ks_list_loaded(KS_LIST_CRITICAL))
		ks_list_unload(KS_LIST_CRITICAL);
	ks_emergency_tick(history);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Are there duties to run this tick? */
static bool
duties_due(void)
{
	return (had_history && ks_critical_list_due()) ||
		(!had_history && ks_list_loaded(KS_LIST_CRITICAL)) ||
		ks_current_mode() == KS_EMERGENCY;
}

/* run_duties(), surviving its errors like examine_file_safely(). */
static void
run_duties_safely(void)
{
	MemoryContext ctx = CurrentMemoryContext;

	PG_TRY();
	{
		run_duties();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(ctx);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	/* each in a transaction of its own, as ROLLBACK PREPARED */
	ks_emergency_finish_prepared();
}

/* At exit: nobody should set a latch that is no longer ours. */
static void
forget_latch(int code, Datum arg)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (ks_shared->watcher_latch == MyLatch)
		ks_shared->watcher_latch = NULL;
	SpinLockRelease(&ks_shared->mutex);
}

/* The worker's entry point. */
void
ks_worker_main(Datum arg)
{
	char		path[MAXPGPATH];
	KsFileStamp seen;
	bool		first = true;
	TimestampTz retry_at = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(ks_database, NULL, 0);
	pgstat_report_appname("killswitch watcher");
	memset(&seen, 0, sizeof(seen));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->watcher_latch = MyLatch;
	SpinLockRelease(&ks_shared->mutex);
	before_shmem_exit(forget_latch, (Datum) 0);

	for (;;)
	{
		KsFileStamp now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		ks_state_file_path(path, sizeof(path));
		now = file_stamp(path);
		/* an unrecorded change is recorded as soon as there is a history for it */
		if (first || stamp_changed(&now, &seen) ||
			(((ks_shared->unrecorded && had_history) || ks_shared->unconfirmed) &&
			 GetCurrentTimestamp() >= retry_at))
		{
			/*
			 * "seen" stays the stamp from before the look: a file written
			 * while we looked (the CLI writes as soon as our commit has
			 * updated the private copy) is news at the next tick, and our
			 * own rewrite costs one more look that finds nothing to do.
			 */
			if (!examine_file_safely())
				retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   KS_RETRY_MS);
			first = false;
		}
		seen = now;
		if (duties_due())
			run_duties_safely();
		ks_audit_watch();
		ks_alert_poll();
		note_liveness();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ks_poll_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
