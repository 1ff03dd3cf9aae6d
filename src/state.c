/*
 * state.c — the fast copy of the state in shared memory (ARCHITECTURE §2,
 * §5.1): reserving it, creating it, and the one word every check reads,
 * recomputed under the spinlock from its parts whenever one changes — the
 * newest committed state (the chain), the raises the chain lacks yet,
 * every backend's raise in flight, and a standby's heard overlay and
 * floor.  Each publish
 * wakes the sessions waiting in ks_wait() (wait.c), and one that raises the
 * mode cancels the built-ins agents set up before it (running.c).
 */
#include "postgres.h"

#include "access/twophase.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "encoding.h"
#include "interlock.h"
#include "lists.h"
#include "running.h"
#include "startup.h"
#include "state.h"
#include "store.h"

KsShared   *ks_shared = NULL;

/*
 * One slot per PGPROC: every backend, auxiliary process and prepared
 * transaction (known from the shared memory request on).  Every per-PGPROC
 * array is this long, indexed by ks_my_proc_number() (compat.h).
 */
int
ks_proc_slot_count(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

static Size
shared_size(void)
{
	return add_size(offsetof(KsShared, slots),
					mul_size(ks_proc_slot_count(), sizeof(KsProcSlot)));
}

/* Reserve our shared memory (from shmem_request_hook, or _PG_init before 15). */
void
ks_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(shared_size()));
	ks_lists_shmem_request();
}

/*
 * Create the shared state, or attach to it.  The postmaster creates it
 * while starting, and after every crash restart, and fills it from the
 * state file before any client can connect.
 */
void
ks_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ks_shared = ShmemInitStruct("killswitch", shared_size(), &found);
	if (!found)
	{
		memset(ks_shared, 0, shared_size());
		SpinLockInit(&ks_shared->mutex);
		ConditionVariableInit(&ks_shared->published);
		ks_shared->nslots = ks_proc_slot_count();
		for (int i = 0; i < ks_shared->nslots; i++)
		{
			ks_shared->slots[i].raising = KS_NO_MODE;
			pg_atomic_init_u32(&ks_shared->slots[i].committing, InvalidTransactionId);
		}
		ks_shared->inplace_mode = KS_NO_MODE;
		ks_shared->floor_mode = KS_DISENGAGED;
		ks_shared->heard_mode = KS_NO_MODE;
		ks_shared->heard_generation = -1;
		ks_shared->replayed_generation = -1;
		/* until the file is read, assume the stop (ARCHITECTURE §4) */
		ks_shared->chain_mode = KS_HALT_ALL;
		ks_shared->chain_flags = KS_FLAG_TAMPERED;
		pg_atomic_init_u64(&ks_shared->word, KS_WORD(KS_HALT_ALL, KS_FLAG_TAMPERED, 0));
	}
	ks_lists_shmem_startup();
	LWLockRelease(AddinShmemInitLock);

	if (!found && !IsUnderPostmaster)
		ks_load_at_startup();
}

/* Fail clearly when the library was not preloaded. */
void
ks_require_loaded(void)
{
	if (ks_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("killswitch must be loaded via shared_preload_libraries"),
				 errhint("Add 'killswitch' to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * Copy UTF-8 text into a fixed buffer, cut on a character boundary and
 * before anything that is not UTF-8, so that shared memory holds UTF-8
 * only whatever a caller passed.
 */
void
ks_clip_utf8(char *dst, const char *src, size_t size)
{
	int			len;

	if (src == NULL)
	{
		dst[0] = '\0';
		return;
	}
	len = strnlen(src, size);
	len = pg_encoding_verifymbstr(PG_UTF8, src, len);
	len = pg_encoding_mbcliplen(PG_UTF8, src, len, size - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

/*
 * What a change is, decided in one place (ARCHITECTURE §5): a raise leaves
 * the mode at least where it was and keeps a tamper verdict; everything
 * else — a lower mode, or the same mode without the verdict — is a lower,
 * which only a committed release may do.
 */
KsChangeKind
ks_change_kind(KsMode from, bool from_tampered, KsMode to, bool to_tampered)
{
	if (to < from || (from_tampered && !to_tampered))
		return KS_CHANGE_LOWER;
	return KS_CHANGE_RAISE;
}

/* The highest mode with a count above zero, or KS_NO_MODE. */
static int
highest_counted(const int *count)
{
	for (int m = KS_MODE_COUNT - 1; m >= 0; m--)
		if (count[m] > 0)
			return m;
	return KS_NO_MODE;
}

/*
 * The state in force without the floor: the chain's mode raised by what
 * the chain lacks yet and by what a standby heard ahead of replay
 * (with_raising: and by the raises in flight).  Caller holds the mutex.
 */
static int
parts_mode(bool with_raising)
{
	int			mode = ks_shared->chain_mode;

	mode = Max(mode, highest_counted(ks_shared->deferred_count));
	mode = Max(mode, ks_shared->inplace_mode);
	mode = Max(mode, ks_shared->heard_mode);
	if (with_raising)
		mode = Max(mode, highest_counted(ks_shared->raising_count));
	return mode;
}

/*
 * Write the word from its parts, with this generation: the mode is the
 * highest of the chain's, the raises the chain lacks yet, the raises in
 * flight and the floor; flags are the chain's (and a verdict in place).
 * Caller holds the mutex; now is read before it was taken (no system call
 * under a spinlock).  Constant time: the slots are counted per mode.
 * Returns true if the mode in force rose (the caller then calls
 * announce(), outside the spinlock).
 */
static bool
recompute_word(TimestampTz now, int64 generation)
{
	uint64		old = pg_atomic_read_u64(&ks_shared->word);
	int			mode = Max(parts_mode(true), (int) ks_shared->floor_mode);
	int			flags = ks_shared->chain_flags;

	if (ks_shared->inplace_mode != KS_NO_MODE)
		flags |= ks_shared->inplace_flags;
	if (ks_shared->heard_mode != KS_NO_MODE)
		flags |= ks_shared->heard_flags;
	if (KS_WORD_MODE(old) != (KsMode) mode || ks_shared->published_at == 0)
	{
		ks_shared->published_at = now;
		if (mode == KS_EMERGENCY && KS_WORD_MODE(old) != KS_EMERGENCY)
			ks_shared->emergency_episode++;
	}
	/* the descriptive fields before the word: a reader who sees it sees them */
	pg_write_barrier();
	pg_atomic_write_u64(&ks_shared->word, KS_WORD(mode, flags, generation) |
						(ks_shared->scopes_active ? KS_WORD_SCOPES : 0));
	return mode > (int) KS_WORD_MODE(old);
}

/*
 * After the word changed, outside the spinlock: wake the sessions waiting
 * in ks_wait() (the broadcast takes other locks and sets latches), and if
 * the mode in force rose, cancel the statements of agents that set up a
 * denied built-in before it (running.c).  Not in the postmaster, which
 * publishes at start with no PGPROC (the broadcast needs one, and there is
 * nobody to wake yet); the startup process replaying a change on a standby
 * has one, so waiters on a standby are woken too.
 */
static void
announce(bool rose)
{
	if (MyProc != NULL)
		ConditionVariableBroadcast(&ks_shared->published);
	if (rose)
		ks_cancel_running_builtins();
}

/*
 * A part of the word changed (caller holds the mutex, which this
 * releases): recompute_word() keeping the word's generation, then
 * announce() outside the spinlock.  Returns true if the mode in force rose.
 */
static bool
recompute_and_announce(TimestampTz now)
{
	bool		rose;

	rose = recompute_word(now, KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)));
	SpinLockRelease(&ks_shared->mutex);
	announce(rose);
	return rose;
}

/* The kinds of publishing the chain's state. */
typedef enum KsPublishKind
{
	KS_PUBLISH_ANY,				/* whatever it is (a committed release, the start) */
	KS_PUBLISH_IF_NEWER,		/* not over a newer generation */
	KS_PUBLISH_RAISE			/* a committed raise: never lower, the verdict kept */
} KsPublishKind;

/*
 * Would publishing this state at this generation be refused (caller holds
 * the mutex)?  KS_PUBLISH_IF_NEWER: a newer generation is in force.
 */
static bool
refused(KsPublishKind kind, int64 generation, uint64 word)
{
	if (kind == KS_PUBLISH_IF_NEWER)
		return KS_WORD_GENERATION(word) > generation;
	return false;
}

/*
 * The text of a raise shown above the chain, clipped outside the spinlock
 * (clip_raise_text()) and copied whole under it (note_raise_text()), so it
 * starts zeroed: no byte of shared memory is left uninitialised.
 */
typedef struct RaiseText
{
	char		why[sizeof(((KsShared *) NULL)->raise_reason)];
	char		by[sizeof(((KsShared *) NULL)->raise_by)];
} RaiseText;

static void
clip_raise_text(RaiseText *text, const char *reason, const char *triggered_by)
{
	memset(text, 0, sizeof(*text));
	ks_clip_utf8(text->why, reason, sizeof(text->why));
	ks_clip_utf8(text->by, triggered_by, sizeof(text->by));
}

/* Note the text of a raise shown above the chain (caller holds the mutex). */
static void
note_raise_text(const RaiseText *text)
{
	memcpy(ks_shared->raise_reason, text->why, sizeof(ks_shared->raise_reason));
	memcpy(ks_shared->raise_by, text->by, sizeof(ks_shared->raise_by));
}

/* No heard overlay any more (caller holds the mutex, and recomputes the word). */
static void
forget_heard(void)
{
	ks_shared->heard_mode = KS_NO_MODE;
	ks_shared->heard_flags = 0;
	ks_shared->heard_generation = -1;
	ks_shared->heard_timeline = 0;
}

/*
 * Make a new committed state the chain's, and recompute the word.  The
 * tamper flag follows a verdict (source tamper) wherever the state came
 * from, and is otherwise what the caller passes: an engage keeps it, only
 * a release clears it.  published_at keeps the moment the mode first
 * showed (recompute_word()).  With KS_PUBLISH_IF_NEWER the check
 * (refused()) and the write are one step under the spinlock, for
 * publishers that share no other lock (WAL redo and a standby's watcher).
 * A committed state at or past a standby's heard generation ends the heard
 * overlay in the same step: replay has brought what was heard, or what
 * came after it, so the word never shows less than either meanwhile.  The
 * text buffers are copied whole into shared memory, so they start zeroed:
 * no byte of it is left uninitialised.
 */
static bool
publish(KsMode mode, int flags, int64 generation, TimestampTz since,
		const char *source, const char *reason, const char *triggered_by,
		KsPublishKind kind)
{
	char		src[sizeof(ks_shared->source)] = {0};
	char		why[sizeof(ks_shared->reason)] = {0};
	char		by[sizeof(ks_shared->triggered_by)] = {0};
	TimestampTz now = GetCurrentTimestamp();
	uint64		word;
	bool		rose;

	if (ks_is_tamper_source(source))
		flags |= KS_FLAG_TAMPERED;
	/* prepared outside the spinlock, which guards only the copy */
	strlcpy(src, source, sizeof(src));
	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	word = pg_atomic_read_u64(&ks_shared->word);
	if (refused(kind, generation, word))
	{
		SpinLockRelease(&ks_shared->mutex);
		return false;
	}
	if (kind == KS_PUBLISH_RAISE)
	{
		flags |= ks_shared->chain_flags & KS_FLAG_TAMPERED;
		mode = Max(mode, ks_shared->chain_mode);
	}
	ks_shared->chain_mode = mode;
	ks_shared->chain_flags = flags;
	ks_shared->since = since;
	memcpy(ks_shared->source, src, sizeof(src));
	memcpy(ks_shared->reason, why, sizeof(why));
	memcpy(ks_shared->triggered_by, by, sizeof(by));
	if (ks_shared->heard_generation >= 0 && generation >= ks_shared->heard_generation)
		forget_heard();
	/* the generation goes into the word with the recomputed mode */
	rose = recompute_word(now, generation);
	SpinLockRelease(&ks_shared->mutex);
	announce(rose);
	return true;
}

/* Publish a committed state, whatever its mode (see publish()). */
void
ks_publish(KsMode mode, int flags, int64 generation, TimestampTz since,
		   const char *source, const char *reason, const char *triggered_by)
{
	(void) publish(mode, flags, generation, since, source, reason, triggered_by,
				   KS_PUBLISH_ANY);
}

/* Publish a state unless a newer generation is published; false if it was not. */
bool
ks_publish_if_newer(KsMode mode, int flags, int64 generation, TimestampTz since,
					const char *source, const char *reason, const char *triggered_by)
{
	return publish(mode, flags, generation, since, source, reason, triggered_by,
				   KS_PUBLISH_IF_NEWER);
}

/*
 * Publish a committed raise: the chain never goes lower for it and keeps
 * its verdict, whatever a concurrent change left (ARCHITECTURE §5.3).
 */
void
ks_publish_raise(KsMode mode, int flags, int64 generation, TimestampTz since,
				 const char *source, const char *reason, const char *triggered_by)
{
	(void) publish(mode, flags, generation, since, source, reason, triggered_by,
				   KS_PUBLISH_RAISE);
}

/*
 * Does a state heard at this generation and timeline tell of another
 * history than the heard overlay's (caller holds the mutex)?  A lower
 * generation than the overlay's — a failover's new primary goes on from
 * where its own replay was — or another timeline.
 */
static bool
heard_other_history(int64 generation, TimeLineID timeline)
{
	if (ks_shared->heard_generation < 0)
		return false;
	return generation < ks_shared->heard_generation ||
		(ks_shared->heard_timeline != 0 && timeline != ks_shared->heard_timeline);
}

/*
 * A state a standby's watcher heard from its upstream (standby.c), verified
 * with the signing secret and of this standby's own system (upstream.c),
 * into the heard overlay beside the chain (ARCHITECTURE §11).  The chain
 * and the word's generation stay replay's: so every record replay brings
 * is taken in its order, whatever was heard.
 *
 * Word of another history first ends the overlay — but never the chain:
 * the mode in force stays at least what replay brought.  Then a state
 * that is not disengaged, at a generation past both replay's and the
 * overlay's, is taken: the overlay's mode is the highest heard, its
 * generation the newest, so that what was heard is lowered only by replay
 * of a state at or past that generation (publish()), never by what is
 * heard — a release heard ahead of replay changes nothing.  Returns what
 * became of the overlay; in one step under the spinlock, so no reader
 * sees less than replay's mode or the overlay's in between.
 */
KsHeard
ks_publish_heard(KsMode mode, int flags, int64 generation, TimeLineID timeline,
				 TimestampTz since, const char *source,
				 const char *reason, const char *triggered_by)
{
	char		src[sizeof(ks_shared->heard_source)] = {0};
	RaiseText	text;
	TimestampTz now = GetCurrentTimestamp();
	KsHeard		result = KS_HEARD_KEPT;

	strlcpy(src, source, sizeof(src));
	clip_raise_text(&text, reason, triggered_by);
	SpinLockAcquire(&ks_shared->mutex);
	if (heard_other_history(generation, timeline))
	{
		forget_heard();
		result = KS_HEARD_DROPPED;
	}
	else if (ks_shared->heard_generation >= 0 && ks_shared->heard_timeline == 0)
		ks_shared->heard_timeline = timeline;	/* an overlay kept over a restart */
	if (mode != KS_DISENGAGED &&
		generation > KS_WORD_GENERATION(pg_atomic_read_u64(&ks_shared->word)) &&
		generation > ks_shared->heard_generation)
	{
		ks_shared->heard_mode = Max(ks_shared->heard_mode, (int) mode);
		ks_shared->heard_flags |= flags;
		ks_shared->heard_generation = generation;
		ks_shared->heard_timeline = timeline;
		memcpy(ks_shared->heard_source, src, sizeof(src));
		ks_shared->heard_since = since;
		note_raise_text(&text);
		result = KS_HEARD_TAKEN;
	}
	(void) recompute_and_announce(now);
	return result;
}

/*
 * The standby is promoted: what it heard from its old upstream and never
 * replayed is dropped, like any change it never received (ARCHITECTURE
 * §11); its history decides.
 */
void
ks_drop_heard(void)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	forget_heard();
	(void) recompute_and_announce(now);
}

/* The heard overlay's generation, or -1 when there is none. */
int64
ks_heard_generation(void)
{
	int64		generation;

	SpinLockAcquire(&ks_shared->mutex);
	generation = ks_shared->heard_generation;
	SpinLockRelease(&ks_shared->mutex);
	return generation;
}

/*
 * The generation of the state in force, as shown to callers (ks_status(),
 * ks_wait(), a standby's feed): the word's, or on a standby the heard
 * overlay's when it is ahead of replay.  Not for the checks, which read
 * the word's mode alone.
 */
int64
ks_generation_in_force(uint64 word)
{
	return Max(KS_WORD_GENERATION(word), ks_heard_generation());
}

/*
 * Hold the word at least at floor (KS_DISENGAGED: no floor), whatever is
 * published meanwhile; lifting it shows the state in force again.  The
 * generation does not move: the floor is no change of state, but what this
 * server assumes while it cannot tell (ARCHITECTURE §11).  Waiters are
 * woken like at a publish.
 */
void
ks_set_floor(KsMode floor)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->floor_mode = floor;
	(void) recompute_and_announce(now);
}

/*
 * Whether some scope is active (scope.c): the word's KS_WORD_SCOPES bit,
 * so that a check reads nothing more while none is.  The fleet's mode does
 * not move; the waiters in ks_wait() are woken (a scope's mode may have
 * risen for some of them).
 */
void
ks_set_scopes_active(bool active)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->scopes_active = active;
	(void) recompute_and_announce(now);
}

/*
 * A raise the chain does not hold yet, in force at once with the same
 * generation: the watcher's verdict or outside engage before its event is
 * recorded, a change in flight at start until the watcher has confirmed
 * it.  Several add up to the highest; ks_clear_in_place() ends them all
 * (their changes recorded, or settled).  Returns true if the mode in force
 * rose (the caller then waits at the interlock, interlock.c).
 */
bool
ks_raise_in_place(KsMode mode, int flags, const char *reason, const char *triggered_by)
{
	RaiseText	text;
	TimestampTz now = GetCurrentTimestamp();

	clip_raise_text(&text, reason, triggered_by);
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->inplace_mode = Max(ks_shared->inplace_mode, (int) mode);
	ks_shared->inplace_flags |= flags;
	note_raise_text(&text);
	return recompute_and_announce(now);
}

/* The raises in place are recorded (or were never committed): the chain alone. */
void
ks_clear_in_place(void)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->inplace_mode = KS_NO_MODE;
	ks_shared->inplace_flags = 0;
	(void) recompute_and_announce(now);
}

/*
 * This backend's raise in flight (ARCHITECTURE §5.1): the highest mode its
 * transaction raises to and has not committed, or KS_NO_MODE.  In force at
 * once; put back at commit (after the chain holds it) and at abort.
 * Returns true if the mode in force rose.
 */
bool
ks_raising_set(int mode, const char *reason, const char *triggered_by)
{
	KsProcSlot *slot = &ks_shared->slots[ks_my_proc_number()];
	RaiseText	text;
	TimestampTz now = GetCurrentTimestamp();

	if (slot->raising == mode)
		return false;
	ks_slots_clear_at_exit();
	clip_raise_text(&text, reason, triggered_by);
	SpinLockAcquire(&ks_shared->mutex);
	if (slot->raising != KS_NO_MODE)
		ks_shared->raising_count[slot->raising]--;
	slot->raising = mode;
	if (mode != KS_NO_MODE)
	{
		ks_shared->raising_count[mode]++;
		if (reason)
			note_raise_text(&text);
	}
	return recompute_and_announce(now);
}

/*
 * Committed raises whose event follows (+1 at their commit) and those
 * recorded since (-1 at the recorder's commit), per mode.
 */
void
ks_deferred_count_add(KsMode mode, int delta, const char *reason, const char *triggered_by)
{
	RaiseText	text;
	TimestampTz now = GetCurrentTimestamp();

	clip_raise_text(&text, reason, triggered_by);
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->deferred_count[mode] = Max(ks_shared->deferred_count[mode] + delta, 0);
	if (delta > 0 && reason)
		note_raise_text(&text);
	(void) recompute_and_announce(now);
}

/* The chain's mode and flags: what the newest committed event left. */
KsMode
ks_chain_state(int *flags)
{
	KsMode		mode;

	SpinLockAcquire(&ks_shared->mutex);
	mode = ks_shared->chain_mode;
	*flags = ks_shared->chain_flags;
	SpinLockRelease(&ks_shared->mutex);
	return mode;
}

/*
 * The state in force without the raises in flight (ARCHITECTURE §5.1's
 * base): the chain's mode, raised by what the chain lacks yet; and its
 * flags.  What a change is judged against.
 */
KsMode
ks_base_mode(int *flags)
{
	int			mode;

	SpinLockAcquire(&ks_shared->mutex);
	mode = parts_mode(false);
	if (flags)
		*flags = ks_shared->chain_flags |
			(ks_shared->inplace_mode != KS_NO_MODE ? ks_shared->inplace_flags : 0);
	SpinLockRelease(&ks_shared->mutex);
	return (KsMode) mode;
}

#define KS_EPOCH_SHIFT \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

/* PostgreSQL's microseconds since 2000 as microseconds since 1970. */
int64
ks_timestamptz_to_unix_usec(TimestampTz ts)
{
	return (int64) ts + KS_EPOCH_SHIFT;
}

/* The inverse of ks_timestamptz_to_unix_usec(). */
TimestampTz
ks_unix_usec_to_timestamptz(int64 usec)
{
	return (TimestampTz) (usec - KS_EPOCH_SHIFT);
}

/*
 * "Set by X: reason." for the detail of refusals — a sentence, as a detail
 * is —, as this database shows it: a character its encoding cannot hold is
 * escaped, so the refusal stays KS001 (and an emergency's FATAL stays
 * FATAL) in every database.
 */
void
ks_refusal_detail(char *buf, size_t len)
{
	char		reason[sizeof(ks_shared->reason)];
	char		by[sizeof(ks_shared->triggered_by)];
	char	   *full;
	int			cut;
	bool		floor;

	SpinLockAcquire(&ks_shared->mutex);
	floor = (int) ks_shared->floor_mode > parts_mode(true);
	/* a raise in force above the chain (its event not committed yet) speaks for itself */
	if (KS_WORD_MODE(pg_atomic_read_u64(&ks_shared->word)) > ks_shared->chain_mode &&
		ks_shared->raise_reason[0])
	{
		strlcpy(reason, ks_shared->raise_reason, sizeof(reason));
		strlcpy(by, ks_shared->raise_by, sizeof(by));
	}
	else
	{
		strlcpy(reason, ks_shared->reason, sizeof(reason));
		strlcpy(by, ks_shared->triggered_by, sizeof(by));
	}
	SpinLockRelease(&ks_shared->mutex);
	if (floor)
	{
		strlcpy(buf, "This standby has not heard its upstream for longer than killswitch.standby_max_silence, "
				"and holds halt_all until it does.", len);
		return;
	}
	full = psprintf("Set by %s: %s",
					by[0] ? ks_utf8_to_db(by) : "(unknown)",
					reason[0] ? ks_utf8_to_db(reason) : "(no reason given)");
	/* escapes lengthen it: cut whole characters of the database encoding, room left for the period */
	cut = pg_mbcliplen(full, strlen(full), len - 2);
	memcpy(buf, full, cut);
	/* a reason that ends a sentence itself is not given a second period */
	if (cut == 0 || strchr(".!?", full[cut - 1]) == NULL)
		buf[cut++] = '.';
	buf[cut] = '\0';
}

/* Wake the watcher (an emergency to act on, a table to reload). */
void
ks_wake_watcher(void)
{
	Latch	   *latch;

	SpinLockAcquire(&ks_shared->mutex);
	latch = ks_shared->watcher_latch;
	SpinLockRelease(&ks_shared->mutex);
	if (latch)
		SetLatch(latch);
}

/*
 * A change in force that the history lacks (no history yet, or one that
 * could not be trusted): recorded with this previous mode and reason (cut
 * at whole characters) once a look holds the lock that orders changes
 * (ks_flush_unrecorded()).
 */
void
ks_note_unrecorded(KsMode previous, const char *reason)
{
	char		clipped[sizeof(ks_shared->unrecorded_reason)];

	ks_clip_utf8(clipped, reason, sizeof(clipped));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = previous;
	memcpy(ks_shared->unrecorded_reason, clipped, sizeof(clipped));
	SpinLockRelease(&ks_shared->mutex);
}
