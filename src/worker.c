/*
 * worker.c — the watcher (ARCHITECTURE §5 "From outside"): one background
 * worker per cluster, connected to killswitch.database, that notices a
 * state file changed by another program (the CLI, the Python library, a
 * hand edit) and applies it — or, if it cannot be trusted, assumes the halt
 * (ARCHITECTURE §4).  Each change goes through the same path as ks_engage(): an event,
 * the file rewritten with its generation, shared memory published at
 * commit, NOTIFY.
 *
 * It sees a change at once through inotify on the state directory
 * (dirwatch.c), and polls as a fallback: when nothing changed, a tick is one
 * stat() of the file.
 *
 * Without a usable killswitch.database (missing, or the connection fails)
 * the watcher still works, connected to no database: it judges the file
 * into shared memory, fail-closed, and acts on an emergency with what needs
 * no table (agent sessions ended, the snapshot file, the WARNING and the
 * alert command); it records nothing.  It says so in ks_status()
 * (watcher_problem) and in one WARNING a minute, and once the database is
 * usable it exits, to be started again connected to it, and records what
 * the history lacks.
 */
#include "postgres.h"

#include <dirent.h>
#include <sys/stat.h>

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "alert.h"
#include "audit.h"
#include "compat.h"
#include "dirwatch.h"
#include "emergency.h"
#include "ending.h"
#include "guc.h"
#include "lists.h"
#include "names.h"
#include "notify.h"
#include "owner.h"
#include "persist.h"
#include "scopechange.h"
#include "scopefile.h"
#include "standby.h"
#include "state.h"
#include "store.h"
#include "tasks.h"
#include "upstream.h"
#include "wal.h"
#include "watch.h"
#include "worker.h"

#ifdef KS_HAVE_CUSTOM_RMGR
#include "access/xlogrecovery.h"	/* the recovery API's own header from 15 on */
#endif

PGDLLEXPORT void ks_worker_main(Datum arg);

/* After a failed look, wait this long before trying to record again. */
#define KS_RETRY_MS 5000
/* How often a watcher without its database looks whether it is there now. */
#define KS_DATABASE_RECHECK_MS 1000
/* Retry a database that looks usable but whose connection failed this often. */
#define KS_CONNECT_RETRY_MS 60000
/* Repeat the WARNING about a standing problem this often. */
#define KS_PROBLEM_WARN_MS 60000
/*
 * A file is judged once its writer has finished (ARCHITECTURE §5.7): closed
 * it (IN_CLOSE_WRITE), renamed it into place, or left it unchanged this
 * long — a writer that keeps it open, a writer stalled between its truncate
 * and its write, or any change where inotify cannot see (the poll).  A file
 * that is a valid state is judged at once, whoever is still at it; only a
 * file that is not (empty, half-written, missing) waits for its writer.
 */
#define KS_WRITER_QUIET_MS 1000
/* A server's own change found in the file without a history: look again this soon. */
#define KS_WRITING_SETTLE_MS 20
/*
 * Another writer holds the writers' lock (the CLI, a backend's pre-commit
 * write): wait for it before judging — at most this long, since anyone who
 * can write the state directory can hold the lock — looking again this often.
 */
#define KS_LOCK_DEFER_MS 250
#define KS_LOCK_RECHECK_MS 5
/* On a standby whose upstream has nothing newer, look at the history this often at most. */
#define KS_HISTORY_LOOK_MS 1000
/* How soon to look again for the lock that orders changes, with a change waiting for it. */
#define KS_WAITING_RETRY_MS 10
/* Wait at most this long for a server's own change, written but not committed. */
#define KS_IN_FLIGHT_MS 1000

/* What the last look at the file saw; a change in any of it means "read it". */
typedef struct KsFileStamp
{
	bool		exists;
	struct timespec mtime;
	struct timespec ctime;
	off_t		size;
	ino_t		ino;
} KsFileStamp;

/*
 * The watcher's loop (ks_worker_main()): what it remembers from one round
 * to the next.  Each timer is a deadline, 0 while none is set; the wait
 * until the next round is computed from them in one place (next_wait_ms()).
 */
typedef struct KsWatcher
{
	char		path[MAXPGPATH];	/* the state file */
	KsFileStamp seen;			/* the state file at the last look */
	bool		first;			/* no look at the state file yet */
	bool		failed;			/* the last look failed: made again at retry_at */
	bool		raced_due;		/* look for raced files, whatever inotify says */
	TimestampTz started;		/* when the watcher started */
	WaitEventSet *wait_set;		/* a primary's: latch, postmaster, directory */

	/* deadlines */
	TimestampTz retry_at;		/* a failed look, or a change not recorded, again */
	TimestampTz database_at;	/* look for the database, or its history, again */
	TimestampTz rewatch_at;		/* try inotify again (0: it works) */
	TimestampTz again_at;		/* the state file, left to its writer, again */
	TimestampTz raced_again_at; /* the raced files again */
	TimestampTz in_flight_until;	/* wait this long for the server's own change */
	TimestampTz busy_until;		/* wait this long for another writer's lock */

	/* on a standby */
	bool		in_recovery;
	bool		socket_ready;	/* the upstream's socket woke the last wait */
	WaitEventSet *standby_wait; /* with the upstream's socket */
} KsWatcher;

/* Has a deadline (0: none) come? */
static inline bool
deadline_passed(TimestampTz deadline, TimestampTz now)
{
	return deadline != 0 && now >= deadline;
}

/*
 * In a watcher's PG_CATCH: log the error being handled and abort its
 * transaction, so that the watcher goes on (what it already raised in
 * shared memory stays).  ctx is the memory context from before PG_TRY.
 */
void
ks_watcher_survive_error(MemoryContext ctx)
{
	MemoryContextSwitchTo(ctx);
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
}

/* Register the watcher; from _PG_init while preloading. */
void
ks_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* on a hot standby too: it follows its primary there (standby.c) */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
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
	Oid			nsp;

	/* a long-lived worker takes no lock first: see CREATE EXTENSION now */
	AcceptInvalidationMessages();
	nsp = get_namespace_oid(KS_SCHEMA, true);
	return OidIsValid(nsp) && OidIsValid(get_relname_relid(KS_EVENTS_TABLE, nsp));
}

/* Did the last look find the extension, and so a history to record into? */
static bool had_history = false;
static void record_scope_file_outside(void);

/* Has the extension been created since the last look?  (Its own transaction.) */
static bool
extension_appeared(void)
{
	bool		present;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = extension_present();
	CommitTransactionCommand();
	return present;
}

/* Connected to no database: killswitch.database could not be used. */
static bool without_database = false;

/*
 * What the watcher knows of the writers in the state directory, kept
 * between its looks and brought up to date in the middle of one
 * (writer_done()): the directory's events not yet acted on, whether a
 * writer is at the state file (and since when), whether a raced file's
 * writer has closed it.
 */
static struct
{
	int			fd;				/* inotify, or -1: the poll */
	KsDirEvents events;
	bool		writing;
	TimestampTz writing_at;
	bool		raced_closed;
} dir = {.fd = -1};

/*
 * Read the directory's pending events: who is writing, and what to look at.
 * Returns them too (nothing under the poll).
 */
static KsDirEvents
take_events(void)
{
	KsDirEvents fresh;

	memset(&fresh, 0, sizeof(fresh));
	if (dir.fd < 0)
		return fresh;
	ks_dirwatch_drain(dir.fd, KS_STATE_FILE_NAME, &fresh);
	if (fresh.state != KS_DIR_NOTHING && fresh.state != KS_DIR_LOST)
	{
		dir.writing = fresh.state_writing;
		if (dir.writing)
			dir.writing_at = GetCurrentTimestamp();
	}
	if (fresh.raced_closed)
		dir.raced_closed = true;
	else if (fresh.raced)
		dir.raced_closed = false;
	dir.events.state = Max(dir.events.state, fresh.state);
	dir.events.raced |= fresh.raced;
	return fresh;
}

/*
 * Is another writer between its read and its replace of the state file
 * (holding the writers' lock)?  A judgment in between would apply an outside
 * write that the writer's replace then keeps as a raced file, and the
 * writer's own file, computed from what it read, would look older than the
 * state held.  Errors (a lock file that is a link) are no reason to wait.
 */
static bool
writers_busy(void)
{
	char		problem[KS_PROBLEM_LEN];
	int			fd = ks_lock_dir_within(ks_state_dir, 0, problem, sizeof(problem));

	if (fd >= 0)
	{
		ks_unlock_dir(fd);
		return false;
	}
	return errno == EWOULDBLOCK;
}

/* When a file last changed, by its time stamps (a rename sets its ctime). */
static TimestampTz
changed_at(const struct stat *sb)
{
	const struct timespec *t = &sb->st_mtim;

	if (sb->st_ctim.tv_sec > t->tv_sec ||
		(sb->st_ctim.tv_sec == t->tv_sec && sb->st_ctim.tv_nsec > t->tv_nsec))
		t = &sb->st_ctim;
	return ks_unix_usec_to_timestamptz((int64) t->tv_sec * 1000000 + t->tv_nsec / 1000);
}

/*
 * When a file's writer will have left it alone for KS_WRITER_QUIET_MS: by
 * inotify's word for the state file, by the file's own time stamps for a
 * raced file and under the poll.
 */
static TimestampTz
quiet_at(const char *path, bool raced)
{
	struct stat sb;

	if (!raced && dir.fd >= 0)
		return TimestampTzPlusMilliseconds(dir.writing_at, KS_WRITER_QUIET_MS);
	if (lstat(path, &sb) != 0)
		return 0;
	return TimestampTzPlusMilliseconds(changed_at(&sb), KS_WRITER_QUIET_MS);
}

/*
 * Had the writer of a file finished when the judge read it (ARCHITECTURE
 * §5.7)?  Asked after the read: an event about the file that inotify
 * reports now came during or after the read (a writer that began, or
 * finished, meanwhile), and the file is looked at again at once.
 * Otherwise: closed (IN_CLOSE_WRITE) or renamed into place since its last
 * write, or quiet for KS_WRITER_QUIET_MS.  A raced file was put in place
 * by a replace, not by its writer: only the writer's close, or quiet,
 * finishes it.
 */
static bool
writer_done(const char *path)
{
	char		state_path[MAXPGPATH];
	bool		raced;
	KsDirEvents fresh = take_events();

	ks_state_file_path(state_path, sizeof(state_path));
	raced = strcmp(path, state_path) != 0;
	if (raced ? fresh.raced : fresh.state != KS_DIR_NOTHING)
		return false;
	if (raced && dir.raced_closed)
		return true;
	if (!raced && dir.fd >= 0 && !dir.writing)
		return true;
	return GetCurrentTimestamp() >= quiet_at(path, raced);
}

/*
 * Look at a file — the state file, or a raced one — and act on it, in one
 * transaction.  The lock that orders changes is taken only if it is free
 * (ARCHITECTURE §5.7): a raise or a verdict is in force at once either way
 * and recorded by the first look that holds it; the server's own writes
 * are known by their bytes; the bytes judged are known, and a raise
 * recorded leaves its place, by the time the commit lets go of the lock
 * (watch.c look_ended()).  After the commit the notifications of what
 * committed go out (notify.c).
 */
static KsJudged
examine_file(const char *path, bool raced)
{
	bool		history;
	bool		locked = false;
	KsJudged	judged;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "examining the kill switch state file");

	history = !without_database && extension_present();
	if (history)
	{
		locked = ConditionalLockRelationOid(ks_events_relid(), ShareRowExclusiveLock);
		if (locked && !had_history)
		{
			ks_reconcile_history();
			/* an outside write of the scope file first: the settling must not lower it (§13) */
			record_scope_file_outside();
			ks_scopes_from_history(true);	/* the committed scopes are the chain's (§13) */
		}
		else if (locked && ks_scope_file_pending())
			record_scope_file_outside();
		judged = ks_judge_file(path, raced, locked, writer_done);
	}
	else
		judged = ks_judge_file_without_history(path, raced, writer_done);

	PopActiveSnapshot();
	CommitTransactionCommand();
	had_history = history && (locked || had_history);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (had_history)
		ks_notify_pending();
	return judged;
}

/*
 * Is the state file a change made through SQL (source sql or
 * release_request, validly signed)?  Without a history to lock, the watcher
 * cannot wait for a change committing through SQL in some database the way
 * examine_file() does; such a file is written just before its commit and
 * published by its own backend at commit (or put back at abort), so the
 * watcher waits (at most KS_IN_FLIGHT_MS) rather than apply it a second
 * time.
 */
static bool
sql_write(const char *path)
{
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	KsState		st;
	KsVerdict	v = KS_FILE_BAD;
	bool		result;

	/* in a transaction: the HMAC needs a resource owner */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
	{
		v = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac, 0,
						  &st, problem, sizeof(problem));
		ks_secret_forget(secret, secretlen);
	}
	result = (v == KS_FILE_VALID || v == KS_FILE_UNSIGNED) && st.source != NULL &&
		(strcmp(st.source, "sql") == 0 || strcmp(st.source, "release_request") == 0);
	CommitTransactionCommand();
	return result;
}

/*
 * examine_file(), surviving its errors: an error (a file that cannot be
 * rewritten, a full disk) is logged, the transaction rolled back, and the
 * halt already raised in shared memory stays.  Returns false on error;
 * *judged says what came of the look (KS_JUDGED after an error: tried
 * again after KS_RETRY_MS).
 */
static bool
examine_file_safely(const char *path, bool raced, KsJudged *judged)
{
	MemoryContext ctx = CurrentMemoryContext;
	volatile bool ok = true;

	*judged = KS_JUDGED;
	PG_TRY();
	{
		*judged = examine_file(path, raced);
	}
	PG_CATCH();
	{
		ks_watcher_survive_error(ctx);
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
	history = !without_database && extension_present();
	/*
	 * Without a database the table cannot be read: the list stays as the
	 * backends of a database with the extension load it (unloading it each
	 * tick would only make them load it again).
	 */
	if (history && ks_critical_list_due())
		ks_load_critical_list(!ks_list_loaded(KS_LIST_CRITICAL));
	else if (!history && !without_database && ks_list_loaded(KS_LIST_CRITICAL))
		ks_list_unload(KS_LIST_CRITICAL);
	if (without_database)
		ks_emergency_tick_without_database();
	else
		ks_emergency_tick(history);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Are there duties to run this tick? */
static bool
duties_due(void)
{
	return (had_history && ks_critical_list_due()) ||
		(!had_history && !without_database && ks_list_loaded(KS_LIST_CRITICAL)) ||
		ks_current_mode() == KS_EMERGENCY ||
		(pg_atomic_read_u64(&ks_shared->word) & KS_WORD_SCOPES) != 0;	/* a scope may be in emergency (§13) */
}

/*
 * On a standby (or during a point-in-time recovery) the watcher follows
 * (ARCHITECTURE §11): it hears its upstream (upstream.c), acts on an
 * emergency, follows the replicated history where a record is missing,
 * and puts back outside writes to the state file.  A pass when nothing
 * changed costs no transaction and no snapshot — replay never waits for
 * the watcher, and a recovery conflict has nothing of it to cancel — and
 * the watcher sleeps until its latch, the state directory, its upstream's
 * socket or the next of its deadlines wakes it.
 */
static struct
{
	bool		looked;			/* the history was looked at since the start */
	TimestampTz looked_commit;	/* the newest replayed commit's time then */
	TimestampTz looked_at;
	KsFileStamp seen;			/* the state file when last compared with the copy */
	bool		compared;		/* at least once since the start */
	pgsocket	sock;			/* the upstream's socket in the wait set */
	int			sock_events;
	int			sock_pos;
	uint64		sock_epoch;		/* the connection it belongs to */
	bool		in_emergency;	/* at the last pass */
} standby;

/*
 * Is a look at the replicated history due?  At the first pass; then only
 * when replay has brought a commit since the last look (the history changes
 * by commits only: the WAL an idle primary still writes, a checkpoint or a
 * snapshot of running transactions, costs no look) or the files are behind.
 * Within a poll interval when the upstream's state is newer than the one
 * held, or unknown: a record may be missing.  Otherwise replay brings the
 * records themselves, and a look a second is enough (a row nobody
 * announced, which a standby does not follow, still gets its WARNING).
 */
static bool
history_due(TimestampTz now)
{
	int64		upstream = ks_upstream_generation();
	int64		held = KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word));
	bool		pending = upstream < 0 || upstream > held || ks_shared->files_behind;

	if (!standby.looked)
		return true;
	if (!ks_shared->files_behind && GetLatestXTime() == standby.looked_commit)
		return false;
	return TimestampDifferenceExceeds(standby.looked_at, now,
									  pending ? ks_poll_interval : KS_HISTORY_LOOK_MS);
}

/* Follow the history, in a read-only transaction, surviving its errors. */
static void
follow_history_safely(TimestampTz now)
{
	MemoryContext ctx = CurrentMemoryContext;

	standby.looked = true;
	standby.looked_commit = GetLatestXTime();
	standby.looked_at = now;
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "following the primary's kill switch history");
		if (!without_database && extension_present())
		{
			ks_standby_follow_history();
			ks_scopes_from_history(false);	/* the scopes replay brought (§13) */
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		ks_watcher_survive_error(ctx);
	}
	PG_END_TRY();
}

/* The emergency's actions on a standby (what needs no table), surviving errors. */
static void
standby_emergency_safely(void)
{
	MemoryContext ctx = CurrentMemoryContext;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		ks_emergency_tick_without_database();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ks_watcher_survive_error(ctx);
	}
	PG_END_TRY();
}

/*
 * What the watcher waits on, in place of old: its latch, the postmaster's
 * death, the directory, and room for more events (a standby's upstream).
 */
static WaitEventSet *
make_wait_set(WaitEventSet *old, int watch_fd, int more)
{
	WaitEventSet *set;

	if (old)
		FreeWaitEventSet(old);
	set = ks_create_wait_event_set(3 + more);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (watch_fd >= 0)
		AddWaitEventToSet(set, WL_SOCKET_READABLE, watch_fd, NULL, NULL);
	return set;
}

/*
 * What the standby's watcher waits on: its latch, the postmaster's death,
 * the state directory, and the upstream's socket when its link waits for it.
 */
static WaitEventSet *
standby_wait_set(WaitEventSet *old, int watch_fd)
{
	int			events;
	uint64		epoch;
	pgsocket	sock = ks_upstream_socket(&events, &epoch);

	if (old && sock == standby.sock && epoch == standby.sock_epoch)
	{
		if (sock != PGINVALID_SOCKET && events != standby.sock_events)
			ModifyWaitEvent(old, standby.sock_pos, events, NULL);
		standby.sock_events = events;
		return old;
	}
	old = make_wait_set(old, watch_fd, 1);
	if (sock != PGINVALID_SOCKET)
		standby.sock_pos = AddWaitEventToSet(old, events, sock, NULL, NULL);
	standby.sock = sock;
	standby.sock_events = events;
	standby.sock_epoch = epoch;
	return old;
}

/*
 * One pass of the watcher on a standby; its wait set is brought up to date
 * (rebuilt when the upstream's socket changed) for the wait that follows.
 */
static void
standby_pass(KsWatcher *w)
{
	TimestampTz now = GetCurrentTimestamp();
	KsFileStamp stamp;

	ks_upstream_work(w->socket_ready);
	/* what cannot wait for the files: sessions to end (and once after, to drop the agent list) */
	if (ks_current_mode() == KS_EMERGENCY || standby.in_emergency)
		standby_emergency_safely();
	standby.in_emergency = ks_current_mode() == KS_EMERGENCY;
	ks_upstream_write_files();
	if (history_due(now))
		follow_history_safely(now);
	stamp = file_stamp(w->path);
	if (stamp_changed(&stamp, &standby.seen) || !standby.compared)
	{
		standby.compared = ks_standby_put_back();
		standby.seen = file_stamp(w->path);
	}
	ks_alert_poll();
	note_liveness();
	w->standby_wait = standby_wait_set(w->standby_wait, dir.fd);
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
		ks_watcher_survive_error(ctx);
	}
	PG_END_TRY();
	/* each in a transaction of its own, as ROLLBACK PREPARED */
	ks_emergency_finish_prepared();
}


/* Why the watcher cannot record the history, for the hint of its WARNING. */
typedef enum KsWatcherProblem
{
	KS_PROBLEM_NONE,
	KS_PROBLEM_DB_MISSING,
	KS_PROBLEM_DB_INVALID,
	KS_PROBLEM_DB_UNREACHABLE,
	KS_PROBLEM_NO_EXTENSION
} KsWatcherProblem;

/* The hint for a watcher's problem: what an administrator can do. */
static int
problem_hint(KsWatcherProblem why)
{
	switch (why)
	{
		case KS_PROBLEM_NONE:
			break;
		case KS_PROBLEM_DB_MISSING:
			return errhint("Create it and run CREATE EXTENSION killswitch in it, or set killswitch.database "
						   "to the database that holds the kill switch and restart the server.");
		case KS_PROBLEM_DB_INVALID:
			return errhint("Drop it and create it again with CREATE EXTENSION killswitch in it, or set "
						   "killswitch.database to another database and restart the server.");
		case KS_PROBLEM_DB_UNREACHABLE:
			return errhint("See the earlier errors of the \"killswitch watcher\" in the server log; "
						   "the watcher tries again every %d seconds.", KS_CONNECT_RETRY_MS / 1000);
		case KS_PROBLEM_NO_EXTENSION:
			return errhint("Run CREATE EXTENSION killswitch in database \"%s\".", ks_database);
	}
	return 0;
}

/*
 * The watcher's problem, or "" when it can do all its work: into shared
 * memory for ks_status(), and into the log as a WARNING when it appears,
 * changes, and once a minute while it stands, so that nobody learns of it
 * in an incident.
 */
static void
report_problem(const char *problem, KsWatcherProblem why)
{
	static TimestampTz warned_at = 0;
	char		last[KS_WATCHER_PROBLEM_LEN];
	TimestampTz now = GetCurrentTimestamp();
	bool		same;

	/* what is shown now, maybe by the watcher before this one */
	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(last, ks_shared->watcher_problem, sizeof(last));
	SpinLockRelease(&ks_shared->mutex);
	same = strncmp(last, problem, sizeof(last) - 1) == 0;

	if (same && (problem[0] == '\0' ||
				 !TimestampDifferenceExceeds(warned_at, now, KS_PROBLEM_WARN_MS)))
		return;
	if (problem[0] == '\0')
		ereport(LOG, (errmsg("the kill switch watcher's problem is solved: %s", last)));
	else
	{
		ereport(WARNING,
				(errmsg("the kill switch watcher cannot record the history: %s", problem),
				 errdetail("The watcher still judges the state file and acts on an emergency, "
						   "but records nothing in killswitch.events: no events, no NOTIFY, no snapshot rows."),
				 problem_hint(why)));
		warned_at = now;
	}
	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(ks_shared->watcher_problem, problem, sizeof(ks_shared->watcher_problem));
	SpinLockRelease(&ks_shared->mutex);
}

/* What the shared catalog says about killswitch.database. */
typedef enum KsDatabaseState
{
	KS_DB_USABLE,
	KS_DB_MISSING,
	KS_DB_INVALID				/* left behind by an interrupted DROP DATABASE */
} KsDatabaseState;

/* Look killswitch.database up in pg_database (a shared catalog: no database needed). */
static KsDatabaseState
database_state(void)
{
	KsDatabaseState state = KS_DB_MISSING;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_database_datname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(ks_database));
	/* a heap scan: with no database, only the shared catalogs' heaps are safe to open */
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		state = KS_DB_USABLE;
#ifdef DATCONNLIMIT_INVALID_DB
		if (((Form_pg_database) GETSTRUCT(tup))->datconnlimit == DATCONNLIMIT_INVALID_DB)
			state = KS_DB_INVALID;
#endif
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return state;
}

/* Say why the database cannot be used, for the state found. */
static void
report_database_state(KsDatabaseState state)
{
	char		problem[KS_WATCHER_PROBLEM_LEN];

	if (state == KS_DB_MISSING)
	{
		snprintf(problem, sizeof(problem),
				 "database \"%s\" named by killswitch.database does not exist; "
				 "the watcher runs without it and records nothing", ks_database);
		report_problem(problem, KS_PROBLEM_DB_MISSING);
	}
	else if (state == KS_DB_INVALID)
	{
		snprintf(problem, sizeof(problem),
				 "database \"%s\" named by killswitch.database is invalid (an interrupted DROP DATABASE); "
				 "the watcher runs without it and records nothing", ks_database);
		report_problem(problem, KS_PROBLEM_DB_INVALID);
	}
	else
	{
		snprintf(problem, sizeof(problem),
				 "the watcher could not connect to database \"%s\" named by killswitch.database; "
				 "it runs without it and records nothing", ks_database);
		report_problem(problem, KS_PROBLEM_DB_UNREACHABLE);
	}
}

/* Say whether the history can be recorded in the database we are in. */
static void
report_history_state(void)
{
	char		problem[KS_WATCHER_PROBLEM_LEN];

	if (had_history)
	{
		report_problem("", KS_PROBLEM_NONE);
		return;
	}
	snprintf(problem, sizeof(problem),
			 "the killswitch extension is not installed in database \"%s\" (killswitch.database); "
			 "changes are applied but not recorded", ks_database);
	report_problem(problem, KS_PROBLEM_NO_EXTENSION);
}

/*
 * Connect to killswitch.database, or to no database when the last attempt
 * died trying: a missing database is a FATAL error at connection, which no
 * code of ours survives, so a flag in shared memory carries the lesson to
 * the next start.
 */
static void
connect_to_database(void)
{
	bool		failed_before;

	SpinLockAcquire(&ks_shared->mutex);
	failed_before = ks_shared->watcher_connecting;
	ks_shared->watcher_connecting = true;
	SpinLockRelease(&ks_shared->mutex);

	if (!failed_before)
	{
		/* a kill switch keeps working where logins are switched off */
		BackgroundWorkerInitializeConnection(ks_database, NULL, BGWORKER_BYPASS_ALLOWCONN);
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->watcher_connecting = false;
		ks_shared->watcher_usable_retries = 0;
		SpinLockRelease(&ks_shared->mutex);
		return;
	}
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	without_database = true;
}

/*
 * Without a database: is it time to exit and be started again connected to
 * it?  Yes as soon as it exists, the first time; when it looked usable and
 * the connection still failed, once every KS_CONNECT_RETRY_MS.  Reports the
 * problem otherwise.
 */
static void
recheck_database(TimestampTz started)
{
	KsDatabaseState state = database_state();
	bool		retry = false;

	SpinLockAcquire(&ks_shared->mutex);
	if (state != KS_DB_USABLE)
		ks_shared->watcher_usable_retries = 0;
	else if (ks_shared->watcher_usable_retries == 0 ||
			 TimestampDifferenceExceeds(started, GetCurrentTimestamp(), KS_CONNECT_RETRY_MS))
	{
		ks_shared->watcher_usable_retries++;
		ks_shared->watcher_connecting = false;
		retry = true;
	}
	SpinLockRelease(&ks_shared->mutex);

	if (retry)
	{
		ereport(LOG,
				(errmsg("database \"%s\" is there now; the kill switch watcher restarts to connect to it",
						ks_database)));
		proc_exit(1);			/* the postmaster starts us again */
	}
	report_database_state(state);
}

/* Start watching the state directory; the poll goes on either way. */
static int
start_dirwatch(void)
{
	static bool warned = false;
	char		problem[KS_PROBLEM_LEN];
	int			fd = ks_dirwatch_start(ks_state_dir, problem, sizeof(problem));

	if (fd < 0 && !warned)
	{
		ereport(LOG,
				(errmsg("the kill switch watcher polls the state file every %d ms: %s",
						ks_poll_interval, problem)));
		warned = true;
	}
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->watcher_inotify = fd >= 0;
	SpinLockRelease(&ks_shared->mutex);
	return fd;
}

/* At exit: nobody should set a latch that is no longer ours. */
static void
forget_latch(int code, Datum arg)
{
	SpinLockAcquire(&ks_shared->mutex);
	if (ks_shared->watcher_latch == MyLatch)
		ks_shared->watcher_latch = NULL;
	ks_shared->watcher_inotify = false;
	SpinLockRelease(&ks_shared->mutex);
}

/* list_sort() order of path names. */
static int
path_cmp(const ListCell *a, const ListCell *b)
{
	return strcmp(lfirst(a), lfirst(b));
}

/* The raced files beside the state file (files.c), oldest first. */
static List *
raced_files(void)
{
	char		prefix[MAXPGPATH];
	List	   *names = NIL;
	DIR		   *dir;
	struct dirent *de;

	snprintf(prefix, sizeof(prefix), "%s%s", KS_STATE_FILE_NAME, KS_RACED_SUFFIX);
	dir = AllocateDir(ks_state_dir);
	while ((de = ReadDirExtended(dir, ks_state_dir, LOG)) != NULL)
		if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
			names = lappend(names, psprintf("%s/%s", ks_state_dir, de->d_name));
	FreeDir(dir);
	list_sort(names, path_cmp);
	return names;
}

/*
 * Judge the raced files: each once its writer has finished (closed it, or
 * left it unchanged for KS_WRITER_QUIET_MS) or at once if it holds a valid
 * state; a judged one goes (a raise it asked for is in force, kept until it
 * is recorded).  Returns when to look again for one whose writer may still
 * be at it, that waits for its recheck, or that waits for the lock that
 * orders changes (0: none waits); *failed if a look failed.
 */
static TimestampTz
examine_raced(bool *failed)
{
	TimestampTz again = 0;
	ListCell   *lc;

	foreach(lc, raced_files())
	{
		const char *path = lfirst(lc);
		TimestampTz when = 0;
		KsJudged	judged;

		if (!examine_file_safely(path, true, &judged))
			*failed = true;
		else if (judged == KS_JUDGED)
			(void) unlink(path);	/* gone already if set aside */
		else if (judged == KS_JUDGE_AFTER_LOCK)
			when = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_WAITING_RETRY_MS);
		else if (judged == KS_JUDGE_AFTER_RECHECK)
			when = ks_judge_recheck_at(path);
		else
			when = quiet_at(path, true);
		if (when != 0 && (again == 0 || when < again))
			again = when;
	}
	return again;
}

/* Milliseconds from now until a moment (at least 1: never a busy loop on 0). */
static long
ms_until(TimestampTz when)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), when, &secs, &usecs);
	return secs * 1000 + usecs / 1000 + 1;
}

/* Milliseconds until a deadline (0: none), at most limit. */
static long
ms_until_at_most(TimestampTz when, long limit)
{
	return when == 0 ? limit : Min(limit, ms_until(when));
}

/* Read the configuration again if SIGHUP asked for it. */
static void
reload_config_if_asked(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * Without a database: is it there now (recheck_database() exits then)?
 * Connected but without a history: has CREATE EXTENSION made one?  It does
 * not touch the state file, so its appearance counts as a write.  Once
 * every KS_DATABASE_RECHECK_MS.
 */
static void
look_for_database(KsWatcher *w, TimestampTz tick)
{
	if (tick < w->database_at)
		return;
	if (without_database)
		recheck_database(w->started);
	else if (!had_history && !w->first)
	{
		if (extension_appeared())
			dir.events.state = Max(dir.events.state, KS_DIR_WRITTEN);
	}
	else
		return;
	w->database_at = TimestampTzPlusMilliseconds(tick, KS_DATABASE_RECHECK_MS);
}

/* Promoted: no upstream any more, and the primary's wait set from now on. */
static void
leave_recovery(KsWatcher *w)
{
	ks_upstream_write_files();
	ks_upstream_stop();
	if (w->standby_wait)
		FreeWaitEventSet(w->standby_wait);
	w->standby_wait = NULL;
	w->in_recovery = false;
	w->raced_due = true;
}

/*
 * What the directory said until now, for this round; what it says during
 * the round's looks is for the next one.
 */
static KsDirEvents
take_round_events(void)
{
	KsDirEvents ev = dir.events;

	memset(&dir.events, 0, sizeof(dir.events));
	return ev;
}

/*
 * The directory was moved or the kernel dropped the watch, or the poll's
 * time to try inotify again has come: watch it anew, and look at
 * everything, since events may have been lost.
 */
static void
rewatch_if_lost(KsWatcher *w, KsDirEvents *ev, TimestampTz tick)
{
	if (ev->state != KS_DIR_LOST && !(dir.fd < 0 && deadline_passed(w->rewatch_at, tick)))
		return;
	ks_dirwatch_stop(dir.fd);
	dir.fd = start_dirwatch();
	w->wait_set = make_wait_set(w->wait_set, dir.fd, 0);
	w->rewatch_at = dir.fd < 0 ? TimestampTzPlusMilliseconds(tick, KS_PROBLEM_WARN_MS) : 0;
	ev->state = KS_DIR_CHANGED;
	dir.writing = false;
	w->raced_due = true;
}

/*
 * Is a look at the state file due?  Changed in any way, or written in
 * place and closed (judge even when the stamp looks the same: time stamps
 * are coarse); the file left to its writer, once the writer may be done; a
 * change in force in place or a release waiting for the lock that orders
 * changes; marks to settle or record; a file that lags the state in force;
 * committed changes not yet announced; an unrecorded change as soon as
 * there is a history for it, an unconfirmed one; a look that failed (the
 * event or the rewrite), after KS_RETRY_MS.
 */
static bool
state_file_due(const KsWatcher *w, const KsFileStamp *now, const KsDirEvents *ev,
			   TimestampTz tick)
{
	return w->first || stamp_changed(now, &w->seen) ||
		ev->state == KS_DIR_WRITTEN || ev->state == KS_DIR_CHANGED ||
		deadline_passed(w->again_at, tick) ||
		ks_watch_due() || ks_shared->marks_due || ks_shared->file_behind ||
		(had_history && ks_shared->notified_generation <
		 KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word))) ||
		((w->failed || (ks_shared->unrecorded && had_history) || ks_shared->unconfirmed) &&
		 tick >= w->retry_at);
}

/*
 * Does this round wait for another writer in the middle of its
 * compare-and-swap (holding the writers' lock)?  A write in place, or
 * whatever the poll saw, is judged once it has finished — for at most
 * KS_LOCK_DEFER_MS, since anyone who can write the state directory can hold
 * the lock.  A file renamed into place is complete: judged at once.
 */
static bool
defer_to_writer(KsWatcher *w, bool look, const KsDirEvents *ev, TimestampTz tick)
{
	if ((look || ev->raced || w->raced_due || dir.fd < 0) &&
		(ev->state != KS_DIR_CHANGED || dir.fd < 0) && writers_busy())
	{
		if (w->busy_until == 0)
			w->busy_until = TimestampTzPlusMilliseconds(tick, KS_LOCK_DEFER_MS);
		return tick < w->busy_until;
	}
	w->busy_until = 0;
	return false;
}

/* What this round was to look at waits for the next one, soon. */
static void
postpone_round(KsWatcher *w, const KsDirEvents *ev, TimestampTz tick)
{
	dir.events.state = Max(dir.events.state, ev->state);
	dir.events.raced |= ev->raced;
	w->again_at = TimestampTzPlusMilliseconds(tick, KS_LOCK_RECHECK_MS);
}

/*
 * Without a history to lock: is the file the server's own change,
 * committing through SQL somewhere (sql_write())?  Then it is left to its
 * backend for at most KS_IN_FLIGHT_MS, looked at again shortly.
 */
static bool
own_change_in_flight(KsWatcher *w, TimestampTz tick)
{
	if (w->first || had_history || !sql_write(w->path))
		return false;
	if (w->in_flight_until == 0)
		w->in_flight_until = TimestampTzPlusMilliseconds(tick, KS_IN_FLIGHT_MS);
	if (tick >= w->in_flight_until)
		return false;
	w->again_at = TimestampTzPlusMilliseconds(tick, KS_WRITING_SETTLE_MS);
	return true;
}

/* A look that failed is made again after KS_RETRY_MS, unless the file changed. */
static bool
retry_not_yet(const KsWatcher *w, const KsFileStamp *now, const KsDirEvents *ev,
			  TimestampTz tick)
{
	return w->failed && tick < w->retry_at && !w->first &&
		!stamp_changed(now, &w->seen) && ev->state == KS_DIR_NOTHING;
}

/*
 * Look at the state file and act on it; set the deadlines its outcome
 * asks for.  *now becomes the stamp the next round compares with: what we
 * saw before acting, so that a change landing while we act (a writer
 * racing our rewrite) is judged then, and our own rewrite costs one more
 * look that finds the state we hold.  Without a history nothing is
 * rewritten, but a rejected file is moved aside: that is not a new
 * deletion, so the stamp is taken again.
 */
static void
look_at_state_file(KsWatcher *w, KsFileStamp *now)
{
	KsJudged	judged;

	w->in_flight_until = 0;
	w->again_at = 0;
	ks_watch_writers_stuck = w->busy_until != 0;
	w->failed = !examine_file_safely(w->path, false, &judged);
	if (w->failed)
		w->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_RETRY_MS);
	else if (judged == KS_JUDGE_AFTER_WRITER)
		w->again_at = Max(quiet_at(w->path, false), GetCurrentTimestamp());
	else if (judged == KS_JUDGE_AFTER_RECHECK)
		w->again_at = ks_judge_recheck_at(w->path);
	if (!had_history)
		*now = file_stamp(w->path);
	/* standbys learn the state now: a crash may have come between a commit and its record */
	if (w->first)
		ks_wal_log_file(KS_LAST_APPLIED_FILE);
	w->first = false;
}

/*
 * Are the writes that raced a replace of the state file (files.c) to be
 * looked for?  When inotify saw one, when one waits for its writer or the
 * lock, and at every tick of the poll.
 */
static bool
raced_files_due(const KsWatcher *w, const KsDirEvents *ev, TimestampTz tick)
{
	return w->raced_due || ev->raced || dir.fd < 0 ||
		deadline_passed(w->raced_again_at, tick);
}

/* Look at the raced files; the next look at them when one is left waiting. */
static void
look_at_raced_files(KsWatcher *w)
{
	bool		failed = false;

	w->raced_again_at = examine_raced(&failed);
	if (failed)
		w->raced_again_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KS_RETRY_MS);
	w->raced_due = false;
}

/*
 * In a look that holds the ordering lock: record an outside write of the
 * scope file the round accepted (scopefile.c), or the verdict on it.
 */
static void
record_scope_file_outside(void)
{
	char		problem[KS_PROBLEM_LEN];

	if (!ks_scope_file_record_outside(problem, sizeof(problem)))
		ks_watch_tamper(problem);
}

/* What a round does whatever the file: duties, audit, alert, liveness, problems. */
static void
run_round_duties(void)
{
	char		problem[KS_PROBLEM_LEN];

	/* the scope file holds the server's own bytes, or it is tampering (§13) */
	if (!ks_scope_file_is_ours(problem, sizeof(problem)))
		ks_watch_tamper(problem);
	if (duties_due())
		run_duties_safely();
	if (!without_database)
		ks_audit_watch();		/* its catalogs are a database's */
	ks_alert_poll();
	note_liveness();
	if (!without_database)
		report_history_state();
}

/*
 * One round of the watcher on a primary: the state file, the raced files,
 * the duties.  Returns whether it waits for another writer (deferred).
 */
static bool
primary_pass(KsWatcher *w, TimestampTz tick)
{
	KsDirEvents ev = take_round_events();
	KsFileStamp now;
	bool		look;
	bool		deferred;

	rewatch_if_lost(w, &ev, tick);
	now = file_stamp(w->path);
	look = state_file_due(w, &now, &ev, tick);
	deferred = defer_to_writer(w, look, &ev, tick);
	if (deferred)
		postpone_round(w, &ev, tick);
	if (deferred || (look && own_change_in_flight(w, tick)))
	{
		look = false;
		now = w->seen;
	}
	if (look && !retry_not_yet(w, &now, &ev, tick))
		look_at_state_file(w, &now);
	if (!deferred && raced_files_due(w, &ev, tick))
		look_at_raced_files(w);
	w->seen = now;
	run_round_duties();
	return deferred;
}

/*
 * How long to sleep until the next round.  On a standby, until its
 * upstream needs it or the poll.  On a primary, the poll or sooner: a file
 * left to its writer, a failed look to retry; a change in force in place,
 * or marks, waiting for the lock that orders changes: soon again; events
 * read during the looks: at once (unless they wait for another writer).  A
 * file that lags the state in force is written at the next poll.
 */
static long
next_wait_ms(const KsWatcher *w, bool deferred)
{
	long		timeout = ks_poll_interval;

	if (w->in_recovery)
		return ks_upstream_timeout(ks_poll_interval);
	timeout = ms_until_at_most(w->again_at, timeout);
	timeout = ms_until_at_most(w->raced_again_at, timeout);
	if (w->failed)
		timeout = ms_until_at_most(w->retry_at, timeout);
	else if (ks_watch_due() || ks_shared->marks_due)
		timeout = Min(timeout, KS_WAITING_RETRY_MS);
	if (!deferred && (dir.events.state != KS_DIR_NOTHING || dir.events.raced))
		timeout = 0;
	return timeout;
}

/*
 * Sleep until the latch is set, the state directory changes, the
 * upstream's socket is ready (on a standby), or the timeout.  On a standby
 * the directory's events say nothing the stamp does not: drained.
 */
static void
wait_for_work(KsWatcher *w, long timeout)
{
	WaitEventSet *set = w->in_recovery ? w->standby_wait : w->wait_set;
	WaitEvent	occurred[4];
	int			n;

	n = WaitEventSetWait(set, timeout, occurred, lengthof(occurred), PG_WAIT_EXTENSION);
	w->socket_ready = false;
	for (int i = 0; i < n; i++)
	{
		if (occurred[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
		else if (w->in_recovery && standby.sock != PGINVALID_SOCKET &&
				 occurred[i].pos == standby.sock_pos)
			w->socket_ready = true;
		else if (occurred[i].events & WL_SOCKET_READABLE)
			(void) take_events();
	}
	if (w->in_recovery)
		memset(&dir.events, 0, sizeof(dir.events));
}

/* Set up the process: signals, the connection, fixed settings, the latch, inotify. */
static void
start_watcher(KsWatcher *w)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	ks_am_watcher = true;
	connect_to_database();

	/*
	 * The watcher's transactions (outside changes, tamper verdicts, the
	 * emergency's snapshot) commit locally: waiting for a synchronous
	 * standby that is down would hold the lock that orders every change,
	 * and so every ks_engage(), behind it.  The WAL still streams them.
	 */
	SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * Its queries name killswitch.* and pg_catalog.*, but operators and
	 * casts are looked up on the search_path too: a database's setting that
	 * put a schema agents may create in before pg_catalog would run their
	 * code as the watcher (ARCHITECTURE §7).
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname("killswitch watcher");

	memset(w, 0, sizeof(*w));
	w->first = true;
	w->raced_due = true;
	w->started = GetCurrentTimestamp();
	ks_state_file_path(w->path, sizeof(w->path));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->watcher_latch = MyLatch;
	SpinLockRelease(&ks_shared->mutex);
	before_shmem_exit(forget_latch, (Datum) 0);
	dir.fd = start_dirwatch();
	w->wait_set = make_wait_set(NULL, dir.fd, 0);
}

/*
 * The worker's entry point: rounds, each followed by its wait.  A standby
 * follows; its first look as a primary comes after promotion.
 */
void
ks_worker_main(Datum arg)
{
	KsWatcher	w;

	start_watcher(&w);
	for (;;)
	{
		TimestampTz tick;
		bool		deferred = false;

		CHECK_FOR_INTERRUPTS();
		reload_config_if_asked();
		tick = GetCurrentTimestamp();
		look_for_database(&w, tick);
		if (RecoveryInProgress())
		{
			if (!w.in_recovery)
				ks_upstream_start();
			w.in_recovery = true;
			standby_pass(&w);
		}
		else
		{
			if (w.in_recovery)
				leave_recovery(&w);
			deferred = primary_pass(&w, tick);
		}
		wait_for_work(&w, next_wait_ms(&w, deferred));
	}
}
