/*
 * watch.c — judging the state file while the server runs (DESIGN §4): a
 * validly signed newer file is applied; anything else that differs from
 * the state the server holds is tampering and can only raise the mode:
 *
 *   valid, same generation          our own write: nothing to do
 *   valid, newer                    applied (source cli or file)
 *   valid, older                    a replay: at least halt_all, tamper
 *   bad (unsigned, garbage, ...)    at least halt_all, tamper, file set aside
 *   deleted or emptied              state kept, file rewritten, tamper
 *
 * Called by the watcher inside a transaction that holds the lock ordering
 * all changes.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "killswitch.h"

/* What to do about the file. */
typedef struct KsVerdictAction
{
	bool		act;
	KsChange	change;
} KsVerdictAction;

/* Text from the file, kept in UTF-8 like every change's, or a stand-in. */
static const char *
file_text(const char *utf8, const char *fallback)
{
	if (utf8 == NULL || utf8[0] == '\0')
		return fallback;
	return utf8;
}

/* Fill a tamper action: never lower than held, at least halt_all unless kept. */
static void
tamper(KsVerdictAction *a, KsMode mode, const char *what)
{
	a->act = true;
	a->change.mode = mode;
	a->change.reason = psprintf("state file rejected: %s", what);
	a->change.triggered_by = "killswitch";
	a->change.affected_tasks = 0;
	a->change.source = "tamper";
	a->change.flags = KS_FLAG_TAMPERED;
	ereport(WARNING,
			(errmsg("killswitch: the state file could not be trusted; mode is now %s",
					ks_mode_sql_names[mode]),
			 errdetail("%s", what),
			 errhint("An administrator can inspect the state with ks_status() and release it with ks_disengage().")));
}

/*
 * Keep a rejected file as evidence, as <path>.rejected (replacing an older
 * one), and clear the way for a trusted file.
 */
static void
set_aside(const char *path)
{
	char		aside[MAXPGPATH];

	snprintf(aside, sizeof(aside), "%s.rejected", path);
	if (unlink(aside) != 0 && errno == EISDIR)
		(void) rmdir(aside);
	if (rename(path, aside) != 0)
		ereport(LOG,
				(errmsg("killswitch: could not move the rejected state file aside: %m")));
}

/* Is a file without a generation the state we hold (same mode, same time)? */
static bool
same_as_held(const KsState *st, KsMode mode, TimestampTz since)
{
	int64		usec;

	return st->mode == mode && st->engaged_at != NULL &&
		ks_parse_iso(st->engaged_at, &usec) &&
		ks_unix_usec_to_timestamptz(usec) == since;
}

/* Is a file without a generation older than the state we hold? */
static bool
older_than_held(const KsState *st, TimestampTz since)
{
	int64		usec;

	return st->engaged_at == NULL ||
		(ks_parse_iso(st->engaged_at, &usec) && ks_unix_usec_to_timestamptz(usec) < since);
}

/* Decide what the file asks for, compared with the state held. */
static KsVerdictAction
judge(const char *path)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	KsMode		held = KS_WORD_MODE(word);
	int64		generation = KS_WORD_GENERATION(word);
	KsMode		raised = Max(held, KS_HALT_ALL);
	TimestampTz since;
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	KsState		st;
	KsVerdict	v;
	struct stat sb;

	memset(&a, 0, sizeof(a));
	SpinLockAcquire(&ks_shared->mutex);
	since = ks_shared->since;
	SpinLockRelease(&ks_shared->mutex);

	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
	{
		tamper(&a, raised, psprintf("signing secret: %s", problem));
		return a;
	}
	v = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac,
					  ks_settle_ms, &st, problem, sizeof(problem));
	if (v == KS_FILE_MISSING ||
		(v == KS_FILE_BAD && lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0))
	{
		/* deleting or emptying never releases: keep the mode, rewrite */
		tamper(&a, held, v == KS_FILE_MISSING ? "the state file was deleted"
			   : "the state file was emptied");
		return a;
	}
	if (v == KS_FILE_BAD)
	{
		set_aside(path);
		tamper(&a, raised, problem);
		return a;
	}

	/* readable: ours, newer, or a replay */
	if (st.generation >= 0 ? st.generation == generation : same_as_held(&st, held, since))
		return a;
	if (st.generation >= 0 ? st.generation < generation : older_than_held(&st, since))
	{
		tamper(&a, raised, "replay: the state file is older than the state the server holds");
		return a;
	}
	if (!ks_release_authorized(&st, held, problem, sizeof(problem)))
	{
		set_aside(path);
		tamper(&a, raised, problem);
		return a;
	}
	a.act = true;
	a.change.mode = st.mode;
	a.change.reason = file_text(st.reason, "(no reason given in the state file)");
	a.change.triggered_by = file_text(st.triggered_by, "(unknown)");
	a.change.affected_tasks = st.affected_tasks >= 0 && st.affected_tasks <= PG_INT32_MAX
		? (int32) st.affected_tasks : 0;
	a.change.source = (st.source && strcmp(st.source, "cli") == 0) ? "cli" : "file";
	a.change.flags = v == KS_FILE_UNSIGNED ? KS_FLAG_UNSIGNED : 0;
	return a;
}

/*
 * Raise the mode in shared memory at once, before anything that can fail
 * (writing the file, recording the event): the halt must not depend on the
 * disk.  The generation moves when the change commits; if it cannot, the
 * watcher marks the verdict unrecorded (ks_watch_failed).
 */
static void
halt_now(const KsChange *c)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	ks_publish(c->mode, c->flags, KS_WORD_GENERATION(word), GetCurrentTimestamp(),
			   c->source, c->reason, c->triggered_by);
}

/* Judge the file and record what it calls for (the history exists). */
void
ks_judge_file(const char *path)
{
	KsVerdictAction a = judge(path);

	if (a.act && (a.change.flags & KS_FLAG_TAMPERED))
		halt_now(&a.change);
	if (a.act)
		(void) ks_apply_change(&a.change);
	else if (ks_shared->unrecorded)
		ks_flush_unrecorded();
}

/*
 * Judge the file where there is no history yet (the extension is not
 * created): shared memory still follows the file, so enforcement holds; the
 * change is recorded once the history exists.
 */
void
ks_judge_file_without_history(const char *path)
{
	KsVerdictAction a = judge(path);
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	char		reason[sizeof(ks_shared->unrecorded_reason)];

	if (!a.act)
		return;
	ks_clip_utf8(reason, a.change.reason, sizeof(reason));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	strlcpy(ks_shared->unrecorded_reason, reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
	ks_publish(a.change.mode, a.change.flags, KS_WORD_GENERATION(word) + 1,
			   GetCurrentTimestamp(), a.change.source,
			   a.change.reason, a.change.triggered_by);
}

/*
 * Make the history agree with the state (at the watcher's start, once there
 * is a history).  The file is written just before a change commits, so a
 * crash in between leaves the file — and so the state — one change ahead of
 * killswitch.events: that change is recorded now, with its generation.  A
 * history ahead of the state means both state files were put back from an
 * older copy: a replay, and the halt is assumed.
 */
void
ks_reconcile_history(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		state_gen = KS_WORD_GENERATION(word);
	int64		history_gen = ks_events_last_generation();

	if (history_gen == state_gen || ks_shared->unrecorded)
		return;
	if (history_gen > state_gen)
	{
		KsVerdictAction a;

		memset(&a, 0, sizeof(a));
		tamper(&a, Max(KS_WORD_MODE(word), KS_HALT_ALL),
			   psprintf("replay: the history has generation " INT64_FORMAT
						" but the state file only " INT64_FORMAT, history_gen, state_gen));
		(void) ks_apply_change(&a.change);
		return;
	}
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	snprintf(ks_shared->unrecorded_reason, sizeof(ks_shared->unrecorded_reason),
			 "recorded at start: the state file holds a change the history lacks (%s)",
			 ks_shared->reason);
	SpinLockRelease(&ks_shared->mutex);
	ks_flush_unrecorded();
}

/*
 * After a failed look (the file could not be rewritten, the event not
 * recorded): whatever halt_now() raised stays, and the verdict waits to be
 * recorded.
 */
void
ks_watch_failed(void)
{
	uint64		word = pg_atomic_read_u64(&ks_shared->word);

	if (!(KS_WORD_FLAGS(word) & KS_FLAG_TAMPERED))
		return;
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = true;
	ks_shared->unrecorded_previous = KS_WORD_MODE(word);
	strlcpy(ks_shared->unrecorded_reason, ks_shared->reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
}
