/*
 * state.c — the fast copy of the state in shared memory (ARCHITECTURE §2,
 * §5.1): reserving it, creating it, and the one word every check reads,
 * recomputed under the spinlock from its parts whenever one changes — the
 * newest committed state (the chain), the raises the chain lacks yet, and
 * every backend's raise in flight.  Each publish wakes the sessions
 * waiting in ks_wait() (wait.c).
 */
#include "postgres.h"

#include "access/twophase.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "killswitch.h"

KsShared   *ks_shared = NULL;

/* One slot per PGPROC: every backend, auxiliary process and prepared transaction. */
static int
slot_count(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

static Size
shared_size(void)
{
	return add_size(offsetof(KsShared, slots),
					mul_size(slot_count(), sizeof(KsProcSlot)));
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
		ks_shared->nslots = slot_count();
		for (int i = 0; i < ks_shared->nslots; i++)
		{
			ks_shared->slots[i].raising = KS_NO_MODE;
			pg_atomic_init_u32(&ks_shared->slots[i].committing, InvalidTransactionId);
		}
		ks_shared->inplace_mode = KS_NO_MODE;
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
 * Write the word from its parts: the mode is the highest of the chain's,
 * the raises the chain lacks yet and the raises in flight; flags and
 * generation are the chain's (and a verdict in place).  Caller holds the
 * mutex; now is read before it was taken (no system call under a
 * spinlock).  Constant time: the slots are counted per mode.
 */
static void
recompute_word(TimestampTz now)
{
	uint64		old = pg_atomic_read_u64(&ks_shared->word);
	int			mode = ks_shared->chain_mode;
	int			flags = ks_shared->chain_flags;

	mode = Max(mode, highest_counted(ks_shared->deferred_count));
	mode = Max(mode, highest_counted(ks_shared->raising_count));
	if (ks_shared->inplace_mode != KS_NO_MODE)
	{
		mode = Max(mode, ks_shared->inplace_mode);
		flags |= ks_shared->inplace_flags;
	}
	if (KS_WORD_MODE(old) != (KsMode) mode || ks_shared->published_at == 0)
	{
		ks_shared->published_at = now;
		if (mode == KS_EMERGENCY && KS_WORD_MODE(old) != KS_EMERGENCY)
			ks_shared->emergency_episode++;
	}
	/* the descriptive fields before the word: a reader who sees it sees them */
	pg_write_barrier();
	pg_atomic_write_u64(&ks_shared->word,
						KS_WORD(mode, flags, KS_WORD_GENERATION(old)));
}

/*
 * Wake the sessions waiting in ks_wait() (outside the spinlock: the
 * broadcast takes others and sets latches).  Not in the postmaster, which
 * publishes at start with no PGPROC (the broadcast needs one, and there is
 * nobody to wake yet); the startup process replaying a change on a standby
 * has one, so waiters on a standby are woken too.
 */
static void
broadcast(void)
{
	if (MyProc != NULL)
		ConditionVariableBroadcast(&ks_shared->published);
}

/* The kinds of publishing the chain's state. */
typedef enum KsPublishKind
{
	KS_PUBLISH_ANY,				/* whatever it is (a committed release, the start) */
	KS_PUBLISH_IF_NEWER,		/* not over a newer generation */
	KS_PUBLISH_RAISE			/* a committed raise: never lower, the verdict kept */
} KsPublishKind;

/*
 * Make a new committed state the chain's, and recompute the word.  The
 * tamper flag follows a verdict (source tamper) wherever the state came
 * from, and is otherwise what the caller passes: an engage keeps it, only
 * a release clears it.  published_at keeps the moment the mode first
 * showed (recompute_word()).  With KS_PUBLISH_IF_NEWER nothing is
 * published if a newer generation already is: the check and the write are
 * one step under the spinlock, for publishers that share no other lock
 * (WAL redo and a standby's watcher).
 */
static bool
publish(KsMode mode, int flags, int64 generation, TimestampTz since,
		const char *source, const char *reason, const char *triggered_by,
		KsPublishKind kind)
{
	char		src[sizeof(ks_shared->source)];
	char		why[sizeof(ks_shared->reason)];
	char		by[sizeof(ks_shared->triggered_by)];
	TimestampTz now = GetCurrentTimestamp();
	uint64		word;

	if (ks_is_tamper_source(source))
		flags |= KS_FLAG_TAMPERED;
	/* prepared outside the spinlock, which guards only the copy */
	strlcpy(src, source, sizeof(src));
	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	word = pg_atomic_read_u64(&ks_shared->word);
	if (kind == KS_PUBLISH_IF_NEWER && KS_WORD_GENERATION(word) > generation)
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
	/* the generation goes into the word with the recomputed mode */
	pg_atomic_write_u64(&ks_shared->word,
						KS_WORD(KS_WORD_MODE(word), KS_WORD_FLAGS(word), generation));
	recompute_word(now);
	SpinLockRelease(&ks_shared->mutex);
	broadcast();
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

/* Note the text of a raise shown above the chain (caller holds the mutex). */
static void
note_raise_text(const char *why, const char *by)
{
	memcpy(ks_shared->raise_reason, why, sizeof(ks_shared->raise_reason));
	memcpy(ks_shared->raise_by, by, sizeof(ks_shared->raise_by));
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
	char		why[sizeof(ks_shared->raise_reason)];
	char		by[sizeof(ks_shared->raise_by)];
	TimestampTz now = GetCurrentTimestamp();
	KsMode		before;

	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	before = KS_WORD_MODE(pg_atomic_read_u64(&ks_shared->word));
	ks_shared->inplace_mode = Max(ks_shared->inplace_mode, (int) mode);
	ks_shared->inplace_flags |= flags;
	note_raise_text(why, by);
	recompute_word(now);
	SpinLockRelease(&ks_shared->mutex);
	broadcast();
	return mode > before;
}

/* The raises in place are recorded (or were never committed): the chain alone. */
void
ks_clear_in_place(void)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->inplace_mode = KS_NO_MODE;
	ks_shared->inplace_flags = 0;
	recompute_word(now);
	SpinLockRelease(&ks_shared->mutex);
	broadcast();
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
	KsProcSlot *slot = &ks_shared->slots[KS_MY_PROCNO];
	char		why[sizeof(ks_shared->raise_reason)];
	char		by[sizeof(ks_shared->raise_by)];
	TimestampTz now = GetCurrentTimestamp();
	KsMode		before;

	if (slot->raising == mode)
		return false;
	ks_slots_clear_at_exit();
	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	before = KS_WORD_MODE(pg_atomic_read_u64(&ks_shared->word));
	if (slot->raising != KS_NO_MODE)
		ks_shared->raising_count[slot->raising]--;
	slot->raising = mode;
	if (mode != KS_NO_MODE)
	{
		ks_shared->raising_count[mode]++;
		if (reason)
			note_raise_text(why, by);
	}
	recompute_word(now);
	SpinLockRelease(&ks_shared->mutex);
	broadcast();
	return mode != KS_NO_MODE && mode > (int) before;
}

/*
 * Committed raises whose event follows (+1 at their commit) and those
 * recorded since (-1 at the recorder's commit), per mode.
 */
void
ks_deferred_count_add(KsMode mode, int delta, const char *reason, const char *triggered_by)
{
	char		why[sizeof(ks_shared->raise_reason)];
	char		by[sizeof(ks_shared->raise_by)];
	TimestampTz now = GetCurrentTimestamp();

	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->deferred_count[mode] = Max(ks_shared->deferred_count[mode] + delta, 0);
	if (delta > 0 && reason)
		note_raise_text(why, by);
	recompute_word(now);
	SpinLockRelease(&ks_shared->mutex);
	broadcast();
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
	mode = Max((int) ks_shared->chain_mode, highest_counted(ks_shared->deferred_count));
	mode = Max(mode, ks_shared->inplace_mode);
	if (flags)
		*flags = ks_shared->chain_flags |
			(ks_shared->inplace_mode != KS_NO_MODE ? ks_shared->inplace_flags : 0);
	SpinLockRelease(&ks_shared->mutex);
	return (KsMode) mode;
}

/* Say why the state file is behind ("" when it is not), for ks_status(). */
void
ks_note_file_problem(const char *problem)
{
	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(ks_shared->file_problem, problem, sizeof(ks_shared->file_problem));
	SpinLockRelease(&ks_shared->mutex);
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
 * "Set by X: reason" for refusals, as this database shows it: a character
 * its encoding cannot hold is escaped, so the refusal stays KS001 (and an
 * emergency's FATAL stays FATAL) in every database.
 */
void
ks_refusal_detail(char *buf, size_t len)
{
	char		reason[sizeof(ks_shared->reason)];
	char		by[sizeof(ks_shared->triggered_by)];
	char	   *full;
	int			cut;

	SpinLockAcquire(&ks_shared->mutex);
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
	full = psprintf("Set by %s: %s",
					by[0] ? ks_utf8_to_db(by) : "(unknown)",
					reason[0] ? ks_utf8_to_db(reason) : "(no reason given)");
	/* escapes lengthen it: cut whole characters of the database encoding */
	cut = pg_mbcliplen(full, strlen(full), len - 1);
	memcpy(buf, full, cut);
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
