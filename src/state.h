/*
 * state.h — the fast copy of the state in shared memory (state.c): the word
 * every check reads, KsShared beside it, and publishing a state into them.
 */
#ifndef KS_STATE_H
#define KS_STATE_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

#include "store.h"

/* The watcher's and the upstream's problems shown by ks_status(), in bytes. */
#define KS_WATCHER_PROBLEM_LEN 256

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
	bool		scopes_active;	/* mutex: the word's KS_WORD_SCOPES bit (scope.c) */
	int			nslots;			/* postmaster at start */
	KsProcSlot	slots[FLEXIBLE_ARRAY_MEMBER];	/* indexed by ks_my_proc_number() */
} KsShared;

extern KsShared *ks_shared;

/* Unpack the word. */
#define KS_WORD_MODE(w) ((KsMode) ((w) & 0xF))
#define KS_WORD_FLAGS(w) ((int) (((w) >> 4) & 0x7))
#define KS_WORD_GENERATION(w) ((int64) ((w) >> 8))
#define KS_WORD(mode, flags, gen) \
	(((uint64) (gen) << 8) | ((uint64) ((flags) & 0x7) << 4) | (uint64) (mode))
/*
 * Some scope is active (scope.c, ARCHITECTURE §13): the one bit a check
 * reads to know that the fleet's mode may not be the session's.  Not a
 * flag of the state: KS_WORD_FLAGS() never shows it.
 */
#define KS_WORD_SCOPES ((uint64) 1 << 7)

/* The current mode: one atomic read, no lock, no syscall, no allocation. */
static inline KsMode
ks_current_mode(void)
{
	return KS_WORD_MODE(pg_atomic_read_u64(&ks_shared->word));
}

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
extern void ks_set_scopes_active(bool active);
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
extern void ks_note_unrecorded(KsMode previous, const char *reason);
extern void ks_wake_watcher(void);
/* time stamps between PostgreSQL's epoch and the file's */
extern int64 ks_timestamptz_to_unix_usec(TimestampTz ts);
extern TimestampTz ks_unix_usec_to_timestamptz(int64 usec);

#endif							/* KS_STATE_H */
