/*
 * killswitch.h — what the server-side files share: settings, the shared
 * memory copy of the state, and the entry points between files.
 */
#ifndef KILLSWITCH_H
#define KILLSWITCH_H

#include "postgres.h"

#include "access/xact.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/dsa.h"
#include "utils/guc.h"

#include "compat.h"
#include "store.h"

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
#define KS_SNAPSHOT_FILE_NAME "kill_switch_snapshot.json"
#define KS_WATCHER_PROBLEM_LEN 256

/* killswitch.c: the settings */
extern char *ks_state_dir;
extern char *ks_secret_file;
extern bool ks_require_hmac;
extern char *ks_database;
extern int	ks_recheck_delay;
extern int	ks_poll_interval;
extern char *ks_alert_command;
extern int	ks_alert_timeout;
extern bool ks_refuse_agent_logins;
extern int	ks_reserved_connections;
extern char *ks_allowed_functions;
extern int	ks_release_approvals;
extern int	ks_approval_timeout;

/*
 * The fast copy (ARCHITECTURE §2, §5.1).  word packs what every check
 * reads, so that a reader gets mode and generation from one atomic load:
 *   bits 0-3 mode, bits 4-7 flags, bits 8-63 generation.
 * Its mode is the highest of the state in force, every raise in flight,
 * a standby's heard overlay and its floor; its flags are the newest
 * committed state's (and a verdict raised above it), its generation the
 * newest committed state's — on a standby, replay's, never a heard one.  Only recompute_word() (state.c) writes it, holding
 * mutex.
 *
 * Who guards what is said field by field: "mutex" is the spinlock (read
 * and written only while holding it); "watcher" means only the watcher
 * writes it (others may read a torn or stale value only where said); the
 * postmaster writes everything once at start, before any other process
 * exists.
 */
#define KS_FLAG_TAMPERED 0x1	/* the state file could not be trusted */
#define KS_FLAG_UNSIGNED 0x2	/* applied without a signature check */

/*
 * What a standby knows of its upstream (upstream.c), under KsShared.mutex:
 * for ks_status(), and for the floor.  Times are this server's clock.
 */
typedef struct KsUpstreamStatus
{
	bool		configured;		/* this server is in recovery with an upstream to hear */
	TimestampTz heard_at;		/* the upstream's last verified answer; 0: none yet */
	/*
	 * How fresh the newest word from the primary is: the moment it was said,
	 * through every standby of a cascade (each adds how long it had not
	 * heard its own upstream).  Set when the watcher first starts.
	 */
	TimestampTz fresh_at;
	XLogRecPtr	upstream_lsn;	/* the primary's WAL position, as last heard */
	TimestampTz behind_since;	/* replay has been behind a position heard since then; 0: not */
	bool		lost;			/* silent longer than killswitch.standby_max_silence: held at halt_all */
	char		problem[KS_WATCHER_PROBLEM_LEN];	/* why it is not heard; "" when it is */
} KsUpstreamStatus;

/* One per PGPROC (ARCHITECTURE §5.1, §5.2), indexed by ks_my_proc_number(). */
typedef struct KsProcSlot
{
	int8		raising;		/* mutex; written by its backend only: the highest
								 * mode of its raise not yet committed, or
								 * KS_NO_MODE */
	pg_atomic_uint32 committing;	/* lock-free; written by its backend only:
									 * the agent transaction committing now, or
									 * InvalidTransactionId (interlock.c) */
} KsProcSlot;

typedef struct KsShared
{
	pg_atomic_uint64 word;		/* written under mutex, read lock-free */
	slock_t		mutex;
	/*
	 * The newest committed state (the "chain"): mode and flags, with the
	 * generation in word.  mutex.
	 */
	KsMode		chain_mode;
	int			chain_flags;
	/*
	 * Raises in force that the chain does not hold yet (all mutex): the
	 * committed raises whose event follows (a count per mode: their marks,
	 * marks.c), the watcher's raise judged but not yet recorded, and at
	 * start a change in flight whose commit the watcher must confirm; the
	 * raises in flight, a count per mode of the PGPROC slots.
	 */
	int			deferred_count[KS_MODE_COUNT];
	int			inplace_mode;	/* KsMode or KS_NO_MODE */
	int			inplace_flags;
	int			raising_count[KS_MODE_COUNT];
	/*
	 * A floor under the word (mutex; KS_DISENGAGED: none): a standby that
	 * has not heard its upstream for longer than
	 * killswitch.standby_max_silence holds at least halt_all (upstream.c,
	 * ks_set_floor()).  No change of state: the generation does not move.
	 */
	KsMode		floor_mode;
	/*
	 * A standby's heard overlay (mutex; ARCHITECTURE §11): what its watcher
	 * heard from its upstream ahead of replay — the highest mode
	 * (KS_NO_MODE: none) and its flags, the newest generation it was heard
	 * at (-1: none), and the upstream's timeline then (0: not known yet,
	 * after a restart); the source and since of the state it took last,
	 * which ks_status() shows while it is in force.  In force beside the chain, whose generation in word
	 * stays replay's: dropped when replay reaches heard_generation, when the
	 * upstream tells of another history, and at promotion.
	 */
	int			heard_mode;
	int			heard_flags;
	int64		heard_generation;
	TimeLineID	heard_timeline;
	char		heard_source[16];
	TimestampTz heard_since;
	TimestampTz since;			/* mutex: when the chain's mode was set */
	/*
	 * When this server first showed the current mode of word (mutex); a
	 * new generation of the same mode keeps it.  The emergency ends agent
	 * sessions busy since before it: one that began later is refused
	 * statement by statement.
	 */
	TimestampTz published_at;
	uint64		emergency_episode;	/* mutex: +1 whenever word enters emergency */
	char		source[16];		/* mutex: what set the chain's state: sql, file, cli, startup, tamper */
	char		reason[256];	/* mutex: the chain's reason, shortened, UTF-8 */
	char		triggered_by[64];	/* mutex: and who set it */
	/* mutex: the newest raise shown above the chain, for refusals */
	char		raise_reason[256];
	char		raise_by[64];
	/* mutex: a change made while starting that killswitch.events lacks yet */
	bool		unrecorded;
	KsMode		unrecorded_previous;
	char		unrecorded_reason[KS_PROBLEM_LEN + 64];
	/* mutex: marks at start whose commit the watcher must confirm (inplace_mode holds their raise) */
	bool		unconfirmed;
	bool		marks_due;		/* mutex: the watcher has marks to look at (marks.c) */
	uint64		marks_before_start;	/* postmaster at start: the newest transaction of a mark found then */
	int64		notified_generation;	/* watcher (mutex to read): events announced up to here */
	TimestampTz watcher_checked_at;	/* mutex: when the watcher last looked at the file */
	Latch	   *watcher_latch;	/* mutex: to wake the watcher at once */
	uint64		emergency_handled;	/* watcher: the emergency episode whose actions ran */
	uint64		emergency_alerted;	/* watcher: and whose alert went out */
	/* the watcher's own state (worker.c), for ks_status(); all mutex */
	bool		watcher_connecting; /* a connection to killswitch.database under way */
	int			watcher_usable_retries; /* failed connections to a database that looked usable */
	bool		watcher_inotify;	/* sees changes through inotify (else: the poll) */
	char		watcher_problem[KS_WATCHER_PROBLEM_LEN];	/* why it cannot do all its work; "" when fine */
	/*
	 * What the state file holds, as the server knows it (follow.c,
	 * ARCHITECTURE §5.7), all mutex: the SHA-256 of the bytes it last wrote
	 * there or last judged there ("-": judged missing; "": unknown, after a
	 * standby's redo wrote it — the private copy stands in), so that its
	 * own writes are recognised by their bytes and an outside write is
	 * judged once; whether the file lags behind the state in force (a
	 * write that failed or found the writers' lock busy, an undo that could
	 * not complete), which the watcher then writes; and why, for
	 * ks_status().  A server write notes its bytes before it lets go of the
	 * writers' lock.
	 */
	char		file_hash[KS_HEX_DIGEST_LEN + 1];
	bool		file_behind;
	char		file_problem[KS_PROBLEM_LEN];
	/* the fleet (wal.c, standby.c) */
	XLogRecPtr	state_lsn;		/* mutex: the WAL record of the state: written, or replayed */
	bool		from_recovery;	/* postmaster at start; the watcher clears it when the history is adopted */
	bool		files_behind;	/* the startup process (redo) sets it, the watcher clears it */
	bool		state_dir_foreign;	/* postmaster at start (claim.c) */
	int64		replayed_generation;	/* mutex: the newest generation replay or the history brought */
	KsUpstreamStatus upstream;	/* mutex: a standby's link to its upstream (upstream.c) */
	/* broadcast after every publish: wakes the sessions in ks_wait() (wait.c) */
	ConditionVariable published;
	int			nslots;			/* postmaster at start */
	KsProcSlot	slots[FLEXIBLE_ARRAY_MEMBER];	/* indexed by ks_my_proc_number() */
} KsShared;

extern KsShared *ks_shared;

/* Unpack the word. */
#define KS_WORD_MODE(w) ((KsMode) ((w) & 0xF))
#define KS_WORD_FLAGS(w) ((int) (((w) >> 4) & 0xF))
#define KS_WORD_GENERATION(w) ((int64) ((w) >> 8))
#define KS_WORD(mode, flags, gen) \
	(((uint64) (gen) << 8) | ((uint64) ((flags) & 0xF) << 4) | (uint64) (mode))

/* The current mode: one atomic read, no lock, no syscall, no allocation. */
static inline KsMode
ks_current_mode(void)
{
	return KS_WORD_MODE(pg_atomic_read_u64(&ks_shared->word));
}

/* state.c */
extern void ks_shmem_request(void);
extern void ks_shmem_startup(void);
extern void ks_require_loaded(void);
extern void ks_publish(KsMode mode, int flags, int64 generation,
					   TimestampTz since, const char *source,
					   const char *reason, const char *triggered_by);
extern bool ks_publish_if_newer(KsMode mode, int flags, int64 generation,
								TimestampTz since, const char *source,
								const char *reason, const char *triggered_by);
/* What a state heard from the upstream did to the heard overlay (ks_publish_heard()). */
typedef enum KsHeard
{
	KS_HEARD_KEPT,				/* nothing changed */
	KS_HEARD_TAKEN,				/* the overlay holds this state now */
	KS_HEARD_DROPPED			/* another history: the overlay is gone */
} KsHeard;
extern KsHeard ks_publish_heard(KsMode mode, int flags, int64 generation, TimeLineID timeline,
								TimestampTz since, const char *source,
								const char *reason, const char *triggered_by);
extern void ks_drop_heard(void);
extern int64 ks_heard_generation(void);
extern int64 ks_generation_in_force(uint64 word);
extern void ks_set_floor(KsMode floor);
extern int	ks_proc_slot_count(void);
extern void ks_publish_raise(KsMode mode, int flags, int64 generation,
							 TimestampTz since, const char *source,
							 const char *reason, const char *triggered_by);
extern bool ks_raise_in_place(KsMode mode, int flags, const char *reason,
							  const char *triggered_by);
extern void ks_clear_in_place(void);
extern bool ks_raising_set(int mode, const char *reason, const char *triggered_by);
extern void ks_deferred_count_add(KsMode mode, int delta, const char *reason,
								  const char *triggered_by);
extern KsMode ks_base_mode(int *flags);
extern KsMode ks_chain_state(int *flags);
/* What a change is (ARCHITECTURE §5): a raise is unconditional, a lower is a release. */
typedef enum KsChangeKind
{
	KS_CHANGE_RAISE,			/* the mode at least where it was, a verdict kept */
	KS_CHANGE_LOWER				/* a lower mode, or a verdict cleared */
} KsChangeKind;
extern KsChangeKind ks_change_kind(KsMode from, bool from_tampered, KsMode to, bool to_tampered);
extern void ks_refusal_detail(char *buf, size_t len);
extern void ks_clip_utf8(char *dst, const char *src, size_t size);
extern void ks_wake_watcher(void);
/* time stamps between PostgreSQL's epoch and the file's */
extern int64 ks_timestamptz_to_unix_usec(TimestampTz ts);
extern TimestampTz ks_unix_usec_to_timestamptz(int64 usec);

/* lists.c: shared lists of any length, under an LWLock */
typedef enum KsListId
{
	KS_LIST_CRITICAL,			/* critical tasks, each with its granted roles */
	KS_LIST_AGENTS,				/* agent role names, while in emergency */
	KS_NLISTS
} KsListId;
typedef enum KsListAnswer
{
	KS_LIST_ABSENT,
	KS_LIST_PRESENT,
	KS_LIST_UNKNOWN				/* not loaded or stale: fail closed */
} KsListAnswer;
typedef struct KsListItem
{
	char	   *name;
	int			nroles;
	Oid		   *roles;
} KsListItem;
extern void ks_lists_shmem_request(void);
extern void ks_lists_shmem_startup(void);
extern dsa_pointer ks_list_build(KsListItem *items, int n, int elevel);
extern void ks_list_discard(dsa_pointer block);
extern uint64 ks_list_version(KsListId which);
extern bool ks_list_swap(KsListId which, dsa_pointer block, const uint64 *expect_version,
						 const TransactionId *resolved, int nresolved);
extern void ks_list_unload(KsListId which);
extern KsListAnswer ks_list_lookup(KsListId which, const char *name, Oid **roles, int *nroles);
extern bool ks_list_loaded(KsListId which);
extern void ks_list_register_prepared(TransactionId xid);
extern TransactionId *ks_list_prepared_over(int *nover);
extern void ks_count_refused_claim(void);
extern uint64 ks_refused_claims(void);

/* encoding.c: the kill switch's text is UTF-8; these cross to a database */
extern char *ks_text_to_utf8(const char *s, const char *name);
extern char *ks_utf8_to_db(const char *utf8);

/* worker.c: the watcher */
extern void ks_worker_register(void);
extern void ks_watcher_survive_error(MemoryContext ctx);

/* watch.c: judging the file while running */
/* Has the writer of a file finished?  Asked after the file was read (worker.c). */
typedef bool (*KsWriterDone) (const char *path);
/* What a look at a file came to. */
typedef enum KsJudged
{
	KS_JUDGED,					/* judged: applied, kept to be recorded, or nothing to do */
	KS_JUDGE_AFTER_WRITER,		/* its writer may still be at it: once it has finished */
	KS_JUDGE_AFTER_LOCK			/* a release waiting for the lock that orders changes */
} KsJudged;
extern KsJudged ks_judge_file(const char *path, bool raced, bool locked, KsWriterDone writer_done);
extern KsJudged ks_judge_file_without_history(const char *path, bool raced, KsWriterDone writer_done);
extern void ks_judge_settled(void);
extern void ks_watch_committed(void);

/* follow.c: the state file follows the state in force */
#define KS_FILE_MISSING_HASH "-"	/* file_hash of a file judged missing */
extern void ks_file_hash_of(const char *data, size_t len, char *hash);
extern void ks_file_written(const char *data, size_t len);
extern void ks_file_unknown(void);
extern void ks_file_behind(const char *problem);
extern bool ks_file_known(const char *hash, bool *behind);
extern void ks_file_hash(char *hash);
extern void ks_file_judged(const char *hash, const char *before);
extern bool ks_write_behind_file(bool history);
extern void ks_reconcile_history(void);
extern void ks_watch_failed(void);
extern void ks_settle_marks(void);
extern bool ks_watch_writers_stuck;
extern bool ks_watch_due(void);

/* dirwatch.c: inotify on the state directory */
typedef enum KsDirEvent
{
	KS_DIR_NOTHING,				/* nothing about the state file */
	KS_DIR_WRITING,				/* written to, still open: judge once it settles */
	KS_DIR_CHANGED,				/* replaced, moved, deleted: judge if it looks changed */
	KS_DIR_WRITTEN,				/* written in place and closed: judge now */
	KS_DIR_LOST					/* the watch is gone (directory moved, queue lost) */
} KsDirEvent;
/* What one drain of the directory's events says. */
typedef struct KsDirEvents
{
	KsDirEvent	state;			/* the strongest event about the state file */
	bool		state_writing;	/* its last event: written to and not closed since */
	bool		raced;			/* something happened to a raced file (files.c) */
	bool		raced_closed;	/* a raced file's writer closed it, and wrote nothing since */
} KsDirEvents;
extern int	ks_dirwatch_start(const char *dir, char *problem, size_t problemlen);
extern void ks_dirwatch_drain(int fd, const char *name, KsDirEvents *events);
extern void ks_dirwatch_stop(int fd);

/* interlock.c: no agent commit after a raise (ARCHITECTURE §5.2) */
extern void ks_interlock_init(void);
extern void ks_slots_clear_at_exit(void);
extern KsMode ks_commit_mode(void);
extern KsMode ks_commit_prepared_mode(void);
extern bool ks_in_commit_tail(void);
extern void ks_check_commit_tail(void);
extern void ks_interlock_wait(void);

/* marks.c: changes in flight, one mark per transaction (ARCHITECTURE §5.3-5.5) */
typedef struct KsMark
{
	bool		deferred;		/* a raise whose event follows, else a recorded change */
	uint64		xid;			/* the transaction's FullTransactionId */
	KsMode		mode;
	int			previous;		/* KsMode or KS_NO_MODE */
	bool		tampered;		/* the change keeps a tamper verdict */
	int64		generation;		/* recorded: the change's generation */
	char	   *state;			/* recorded: the state file's text */
	size_t		state_len;
	/* deferred: the change whole, and who asked (UTF-8) */
	char	   *reason;
	char	   *triggered_by;
	char	   *source;
	int32		affected_tasks;
	char	   *session_role;
	char	   *client_addr;	/* NULL for a local connection */
	int32		backend_pid;
	int64		at_usec;		/* microseconds since 1970 */
} KsMark;
extern bool ks_mark_write(const KsMark *m, char *problem, size_t problemlen);
extern bool ks_mark_remove(uint64 xid);
extern List *ks_marks_read(bool *bad, char *problem, size_t problemlen);
extern void ks_marks_clear(void);
extern void ks_marks_remove_leftovers(void);

/* startup.c */
extern void ks_load_at_startup(void);

/* persist.c */
/*
 * The single mark of a change in flight that servers before the marks by
 * transaction (marks.c) kept; removed where found.
 */
#define KS_IN_FLIGHT_FILE KS_PRIVATE_DIR "/in_flight.json"
extern void ks_state_file_path(char *buf, size_t len);
extern bool ks_backend_secret(char **secret, size_t *len, char *problem, size_t problemlen);
extern void ks_key_id(const char *secret, size_t len, char *buf);
/* A readable file against the state held. */
typedef enum KsOrder
{
	KS_OLDER,					/* a replay */
	KS_SAME,					/* what the server holds */
	KS_NEWER					/* a change to judge */
} KsOrder;
extern KsOrder ks_compare_to_held(const KsState *file, const KsState *held);
extern bool ks_read_held(KsState *held, char *problem, size_t problemlen);
/* What a writer last judged the state file to hold (compare-and-swap). */
typedef struct KsExpect
{
	const KsState *judged;		/* the file as the watcher judged it, or NULL */
	bool		untrusted;		/* a verdict on a missing or untrusted file */
} KsExpect;
/* What a write before commit did, for the undo. */
typedef struct KsWritten
{
	char	   *before;			/* the state file's bytes before, or NULL */
	size_t		before_len;
	char	   *text;			/* what this change wrote */
	size_t		text_len;
	bool		file_written;
} KsWritten;
typedef enum KsWriteResult
{
	KS_WRITE_OK,
	KS_WRITE_CONFLICT,			/* an outside change nobody has judged yet */
	KS_WRITE_FAILED
} KsWriteResult;
/* Which write of the state file (ks_persist_file()). */
typedef enum KsPersistWhen
{
	KS_PERSIST_CHECK,			/* a release before its commit: the compare only */
	KS_PERSIST_RAISE,			/* a raise before its commit: never waits long, never fails it */
	KS_PERSIST_COMMITTED		/* after a commit (a release's): bounded */
} KsPersistWhen;
extern bool ks_persist_text(const KsState *state, StringInfo out, char *problem, size_t problemlen);
extern KsWriteResult ks_persist_file(const char *text, size_t len, const KsExpect *expect,
									 KsPersistWhen when, KsWritten *w,
									 char *problem, size_t problemlen);
extern bool ks_persist_copy(const char *text, size_t len, char *problem, size_t problemlen);
extern bool ks_held_signature(char **signature);
extern bool ks_persist_undo(const KsWritten *w, char *problem, size_t problemlen);
extern bool ks_am_watcher;
extern int	ks_lock_state_dir(int wait_ms, char *problem, size_t problemlen);
extern bool ks_persist_applied(const KsState *state, bool state_file,
							   char *problem, size_t problemlen);

/* release.c: the release credential */
extern char *ks_release_key_file;
extern void ks_release_key_prepare(void);
extern void ks_release_key_for_writing(char **key, size_t *len);
extern bool ks_release_authorized(const KsState *file, const KsState *held,
								  bool held_tampered, char *problem, size_t problemlen);
extern bool ks_generation_step_ok(const KsState *file, const KsState *held,
								  char *problem, size_t problemlen);

/* audit.c: the watcher's look at the agent roles' powers */
extern void ks_audit_watch(void);

/* rights.c */
extern Oid	ks_role_oid(const char *name);
extern bool ks_role_is_agent(Oid roleid);
extern void ks_check_engage_right(void);
extern void ks_check_release_right(void);

/* owner.c: run SPI as the extension's owner with a safe search_path */
typedef struct KsOwnerContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	TransactionId next_xid;		/* the next id to be assigned when the region began */
} KsOwnerContext;
extern Oid	ks_events_relid(void);
extern void ks_owner_begin(KsOwnerContext *ctx);
extern void ks_owner_end(KsOwnerContext *ctx);
extern bool ks_in_owner_region(void);
extern bool ks_commit_is_own_work(void);
struct QueryDesc;				/* executor/execdesc.h */
extern void ks_agent_writing_began(const struct QueryDesc *queryDesc);
extern void ks_agent_writing_ended(const struct QueryDesc *queryDesc);
extern void ks_owner_xact_end(void);
extern void ks_owner_init(void);

/* modetype.c */
extern Oid	ks_mode_type_oid(void);
extern Datum ks_mode_to_datum(KsMode mode, Oid typoid);
extern KsMode ks_mode_from_datum(Datum value);

/* events.c */
/* Who asked for a change recorded after its commit (a raise whose event followed). */
typedef struct KsEventIdentity
{
	const char *session_role;	/* UTF-8 */
	const char *client_addr;	/* NULL for a local connection */
	int32		backend_pid;
	uint64		xid;			/* FullTransactionId */
	TimestampTz at;
} KsEventIdentity;
/* What a new event says; the rest (who, where, when, chain) is filled in. */
typedef struct KsEventInput
{
	KsMode		mode;
	int			previous;		/* KS_NO_MODE for none */
	const char *reason;			/* UTF-8 */
	const char *triggered_by;
	int32		affected_tasks;
	const char *source;
	int64		floor_generation;	/* the generation is at least this */
	bool		request;		/* a release request (approval.c) */
	KsMode		release_target; /* and the mode it asks for */
	bool		tampered;		/* the state after it keeps a tamper verdict */
	const KsEventIdentity *identity;	/* NULL: this session, now */
} KsEventInput;
extern Datum ks_record_event(const KsEventInput *in, KsState *file_state);
extern Datum ks_event_row_pending(const KsEventInput *in);
extern bool ks_events_hold(uint64 xid, TimestampTz at);
extern char *ks_client_address(void);
extern int64 ks_events_last_generation(void);
typedef enum KsHistory
{
	KS_HISTORY_EMPTY,
	KS_HISTORY_OK,
	KS_HISTORY_BAD				/* the newest row does not verify */
} KsHistory;
extern KsHistory ks_events_newest_state(KsState *st);

/* notify.c: announcing changes, from the watcher (ARCHITECTURE §5.6) */
extern void ks_notify_pending(void);
extern void ks_notify_alert_later(int64 generation, int sessions_ended);

/* change.c */
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
extern void ks_xact_callback(XactEvent event, void *arg);
extern void ks_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);

/* approval.c */
extern Datum ks_release_with_approval(const KsChange *release, KsMode current);

/* agents.c */
extern uint64 ks_agent_roles_epoch;
extern void ks_agents_init(void);
extern bool ks_session_is_agent(void);

/* enforce.c */
extern char *ks_session_task;
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

/* functions.c: deny by default */
extern bool ks_function_denied(Oid fn);
extern void ks_forget_function_verdicts(void);
extern void ks_functions_init(void);

/* allowlist.c: the volatile functions a halted agent may call */
extern bool ks_allowlisted(Oid fn, HeapTuple proc);
extern bool ks_check_allowed_functions(char **newval, void **extra, GucSource source);
extern void ks_assign_allowed_functions(const char *newval, void *extra);

/* running.c: built-ins that run across the halt */
extern void ks_running_shmem_request(void);
extern void ks_running_shmem_startup(void);
extern Oid	ks_noted_builtin;
extern void ks_note_running_builtin(Oid fn);
extern void ks_running_xact_end(void);
pg_noreturn extern void ks_refuse_running_builtin(KsMode mode);
extern void ks_cancel_running_builtins(void);
extern void ks_rethrow_halt_cancel(void);
extern void ks_running_init(void);

/* Has this transaction set up a denied built-in (while disengaged)?  One load. */
static inline bool
ks_noted_running_builtin(void)
{
	return OidIsValid(ks_noted_builtin);
}

/* logins.c: the operators' reserve, agent logins in emergency */
extern void ks_logins_init(void);

/* emergency.c: entering emergency, once per episode */
extern void ks_emergency_tick(bool history);
extern void ks_emergency_tick_without_database(void);

/* agentlist.c: the agent roles of an emergency, published for logins */
extern List *ks_agent_roles(void);
extern void ks_agent_roles_forget(void);
extern bool ks_emergency_lists_role(const char *name);
extern Datum ks_oid_array(List *oids);

/* snapshot.c: the emergency snapshot */
extern void ks_emergency_snapshot(List *roles, int64 generation, bool database, bool history,
								  bool recorded);
extern void ks_emergency_record_snapshot(int64 generation);

/* ending.c: the busy agent sessions ended, the agents' prepared transactions rolled back */
extern int	ks_end_busy_agent_sessions(List *roles, TimestampTz published_at);
extern void ks_note_agents_prepared(List *roles);
extern void ks_emergency_finish_prepared(void);

/* alert.c: NOTIFY, WARNING and killswitch.alert_command */
extern int64 ks_alert_event_id(int64 generation);
extern void ks_alert_emergency(int64 generation, int64 event_id, int ended, bool database);
extern void ks_alert_poll(void);

/* sessions.c: agent sessions and their locks, from shared memory */
extern List *ks_sessions_of_roles(List *roles, TimestampTz before);
extern char *ks_sessions_snapshot_json(List *roles, int64 generation);

/* api.c */
/* What a task's refusal says (api.c). */
typedef enum KsTaskRefused
{
	KS_TASK_QUEUED,				/* ks_assert_task() in halt_noncritical */
	KS_TASK_BLOCKED,			/* ks_assert_task() above */
	KS_TASK_ROW_REFUSED,		/* ks_guard(): a row of a task */
	KS_TASK_TABLE_ROW_REFUSED,	/* ks_guard(): a row of no task, by its table */
} KsTaskRefused;
pg_noreturn extern void ks_refuse_task(KsMode mode, KsTaskRefused what, const char *name);

/* tasks.c */
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

/* wal.c: the state in the WAL */
#define KS_RMGR_ID 177			/* in the range left to extensions, 128-255 */
extern void ks_wal_register(void);
extern void ks_wal_log_state(const char *text, size_t len, KsMode mode, int64 generation);
extern void ks_wal_log_file(const char *path);

/* claim.c: one state directory, one server */
extern bool ks_claim_state_dir(char *problem, size_t problemlen);
extern bool ks_state_dir_ours(char *problem, size_t problemlen);

/* standby.c: a server in recovery follows its primary */
/* marks a start from another server's WAL until the history is adopted */
#define KS_RECOVERED_FILE KS_PRIVATE_DIR "/from_recovery"
extern bool ks_recovery_requested(void);
extern bool ks_publish_state(const KsState *st, int flags, bool only_newer);
extern void ks_standby_apply(const char *text, size_t len, XLogRecPtr lsn);
extern void ks_adopt_history_after_recovery(void);
extern void ks_standby_follow_history(void);
extern bool ks_standby_put_back(void);
/* the bytes of the state a standby heard and holds ahead of replay (the heard overlay) */
#define KS_HEARD_FILE KS_PRIVATE_DIR "/heard.json"
extern KsHeard ks_standby_take_heard(const KsState *st, TimeLineID timeline);
extern bool ks_standby_write_files(const char *text, size_t len, int64 generation);
extern bool ks_standby_write_heard(const char *text, size_t len, int64 generation);
extern bool ks_standby_heard_dropped(void);
extern void ks_standby_load_heard(const char *secret, size_t secretlen);

/* upstream.c: a standby hears its upstream, whatever replay does */
extern char *ks_upstream_conninfo;
extern int	ks_standby_max_silence;
extern void ks_upstream_define_settings(void);
extern void ks_upstream_start(void);
extern void ks_upstream_stop(void);
extern pgsocket ks_upstream_socket(int *events, uint64 *epoch);
extern void ks_upstream_work(bool socket_ready);
extern long ks_upstream_timeout(long timeout);
extern int64 ks_upstream_generation(void);
extern void ks_upstream_write_files(void);

#endif							/* KILLSWITCH_H */
