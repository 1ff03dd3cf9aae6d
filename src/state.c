/*
 * state.c — the fast copy of the state in shared memory (ARCHITECTURE §2):
 * reserving it, creating it, and publishing a new state into it (which
 * wakes the sessions waiting in ks_wait(), wait.c).
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "killswitch.h"

KsShared   *ks_shared = NULL;

/* Reserve our shared memory (from shmem_request_hook, or _PG_init before 15). */
void
ks_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(KsShared)));
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
	ks_shared = ShmemInitStruct("killswitch", sizeof(KsShared), &found);
	if (!found)
	{
		memset(ks_shared, 0, sizeof(KsShared));
		SpinLockInit(&ks_shared->mutex);
		ConditionVariableInit(&ks_shared->published);
		ks_shared->emergency_handled = KS_NO_EMERGENCY;
		ks_shared->published_mode = KS_HALT_ALL;
		ks_shared->replayed_generation = -1;
		/* until the file is read, assume the stop (ARCHITECTURE §4) */
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
 * Would publishing (mode, flags) show at least the published state?  Under
 * the spinlock: the published mode, and its tamper verdict.
 */
static bool
raises(KsMode mode, int flags, uint64 word)
{
	KsMode		held = ks_shared->published_mode;

	if (mode != held)
		return mode > held;
	return (flags & KS_FLAG_TAMPERED) || !(KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED);
}

/*
 * Make a new state visible to every session.  The word is written last and
 * with a barrier, so that a reader who sees the new generation also sees the
 * descriptive fields that go with it.  The tamper flag follows the state's
 * source, wherever the state came from (a verdict, or a restart after one).
 * published_at keeps the moment the mode first showed: publishing the same
 * mode again (a repeated engage, the watcher's commit after its early halt)
 * is no new beginning for the sessions the emergency ends.  With
 * only_newer, nothing is published if a newer generation already is: the
 * check and the write are one step under the spinlock, for publishers that
 * share no other lock (WAL redo and a standby's watcher).  With
 * only_raise too, nothing is published that would show less than the
 * state published now: a lower mode, or the same mode without its tamper
 * verdict (a standby applies what it hears from its upstream that way).
 * The word shows at least the floor (ks_set_floor()).
 */
static bool
publish(KsMode mode, int flags, int64 generation, TimestampTz since,
		const char *source, const char *reason, const char *triggered_by,
		bool only_newer, bool only_raise)
{
	char		src[sizeof(ks_shared->source)];
	char		why[sizeof(ks_shared->reason)];
	char		by[sizeof(ks_shared->triggered_by)];
	TimestampTz now = GetCurrentTimestamp();
	uint64		word;
	KsMode		shown;

	if (ks_is_tamper_source(source))
		flags |= KS_FLAG_TAMPERED;
	else
		flags &= ~KS_FLAG_TAMPERED;
	/* prepared outside the spinlock, which guards only the copy */
	strlcpy(src, source, sizeof(src));
	ks_clip_utf8(why, reason, sizeof(why));
	ks_clip_utf8(by, triggered_by, sizeof(by));
	SpinLockAcquire(&ks_shared->mutex);
	word = pg_atomic_read_u64(&ks_shared->word);
	if ((only_newer && KS_WORD_GENERATION(word) > generation) ||
		(only_raise && (KS_WORD_GENERATION(word) == generation || !raises(mode, flags, word))))
	{
		SpinLockRelease(&ks_shared->mutex);
		return false;
	}
	ks_shared->published_mode = mode;
	shown = Max(mode, ks_shared->floor_mode);
	ks_shared->since = since;
	/* only a change of mode moves it: see KsShared.published_at */
	if (KS_WORD_MODE(word) != shown || ks_shared->published_at == 0)
		ks_shared->published_at = now;
	memcpy(ks_shared->source, src, sizeof(src));
	memcpy(ks_shared->reason, why, sizeof(why));
	memcpy(ks_shared->triggered_by, by, sizeof(by));
	/* the word last, still under the spinlock: one publisher's fields never go with another's word */
	pg_write_barrier();
	pg_atomic_write_u64(&ks_shared->word, KS_WORD(shown, flags, generation));
	SpinLockRelease(&ks_shared->mutex);

	/*
	 * Wake the sessions waiting in ks_wait() (outside the spinlock: the
	 * broadcast takes others and sets latches).  Not in the postmaster,
	 * which publishes at start with no PGPROC (the broadcast needs one, and
	 * there is nobody to wake yet); the startup process replaying a change
	 * on a standby has one, so waiters on a standby are woken too.
	 */
	if (MyProc != NULL)
		ConditionVariableBroadcast(&ks_shared->published);
	/* a raise stops the built-ins agents set up before it (running.c) */
	if (shown > KS_WORD_MODE(word))
		ks_cancel_running_builtins();
	return true;
}

/* Publish a state (see publish()). */
void
ks_publish(KsMode mode, int flags, int64 generation, TimestampTz since,
		   const char *source, const char *reason, const char *triggered_by)
{
	(void) publish(mode, flags, generation, since, source, reason, triggered_by, false, false);
}

/* Publish a state unless a newer generation is published; false if it was not. */
bool
ks_publish_if_newer(KsMode mode, int flags, int64 generation, TimestampTz since,
					const char *source, const char *reason, const char *triggered_by)
{
	return publish(mode, flags, generation, since, source, reason, triggered_by, true, false);
}

/*
 * Publish a state only if it is newer than the published one and shows at
 * least as much: a raise or a repeat, never a lower mode nor a cleared
 * verdict.  False if it was not published.
 */
bool
ks_publish_raise(KsMode mode, int flags, int64 generation, TimestampTz since,
				 const char *source, const char *reason, const char *triggered_by)
{
	return publish(mode, flags, generation, since, source, reason, triggered_by, true, true);
}

/*
 * Hold the word at least at floor (KS_DISENGAGED: no floor), whatever is
 * published meanwhile; lifting it shows the published state again.  The
 * generation does not move: the floor is no change of state, but what this
 * server assumes while it cannot tell (ARCHITECTURE §11).  Waiters are
 * woken like at a publish.
 */
void
ks_set_floor(KsMode floor)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		word;
	KsMode		shown;

	SpinLockAcquire(&ks_shared->mutex);
	word = pg_atomic_read_u64(&ks_shared->word);
	ks_shared->floor_mode = floor;
	shown = Max(ks_shared->published_mode, floor);
	if (shown != KS_WORD_MODE(word))
	{
		ks_shared->published_at = now;
		pg_write_barrier();
		pg_atomic_write_u64(&ks_shared->word,
							KS_WORD(shown, KS_WORD_FLAGS(word), KS_WORD_GENERATION(word)));
	}
	SpinLockRelease(&ks_shared->mutex);
	if (MyProc != NULL)
		ConditionVariableBroadcast(&ks_shared->published);
	/* a raise stops the built-ins agents set up before it (running.c) */
	if (shown > KS_WORD_MODE(word))
		ks_cancel_running_builtins();
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
	bool		floor;

	SpinLockAcquire(&ks_shared->mutex);
	strlcpy(reason, ks_shared->reason, sizeof(reason));
	strlcpy(by, ks_shared->triggered_by, sizeof(by));
	floor = ks_shared->floor_mode > ks_shared->published_mode;
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
