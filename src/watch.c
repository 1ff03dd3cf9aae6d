/*
 * watch.c — judging the state file while the server runs (ARCHITECTURE §4,
 * §5.7): a validly signed newer file is applied; anything else that differs
 * from the state the server holds is tampering and can only raise the mode:
 *
 *   bytes the server wrote or judged     nothing to do (or write it, if behind)
 *   not valid, its writer still at it     nothing yet: judged once it finished
 *   valid, same state                     our own write: nothing to do
 *   valid, newer                          applied (source cli or file)
 *   valid, more than 1000 generations on  tamper, file set aside
 *   valid, older                          a replay: at least halt_all, tamper
 *   lowers or clears a verdict, without   tamper, file set aside
 *     the release credential naming
 *     the state held (release.c)
 *   bad (unsigned, garbage, ...)          at least halt_all, tamper, file set aside
 *   deleted or emptied                    state kept, file rewritten, tamper
 *
 * A raced file — an outside write that raced a replace of the state file,
 * kept beside it (files.c) — is judged the same way, except that it came
 * with the replace (never a replay for want of a generation), one that was
 * never written (missing, empty) asks for nothing, and one that would lower
 * the state now in force without naming it is superseded by the change it
 * raced: not applied, and no verdict.
 *
 * Called by the watcher inside a transaction.  It never waits for the lock
 * that orders the history (ARCHITECTURE §5.7): a raise or a verdict is in
 * force at once (in place, state.c) and recorded on the first look that
 * takes the lock (ConditionalLockAcquire); an outside release is applied
 * only when it can be recorded, against the state the chain holds.  Its
 * own writes, and files it judged, are recognised by their bytes
 * (KsShared.file_hash, follow.c), not by holding a lock.
 *
 * What a look leaves to others is settled before it lets go of that lock:
 * the bytes it judged are noted before its commit (taken back if it
 * aborts), and its raise in place ends at its commit, once the chain holds
 * it (look_ended()) — so a change made after the look's event is visible
 * never finds that event's file or raise still unseen (ARCHITECTURE §5.7).
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/transam.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "change.h"
#include "claim.h"
#include "events.h"
#include "follow.h"
#include "guc.h"
#include "interlock.h"
#include "marks.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "scopechange.h"
#include "scopefile.h"
#include "standby.h"
#include "state.h"
#include "store.h"
#include "wal.h"
#include "watch.h"

/* What to do about the file. */
typedef struct KsVerdictAction
{
	bool		act;			/* make change */
	bool		wait;			/* its writer may be at it: judge once it has finished */
	bool		after_lock;		/* look again soon: a release, once the raises in force are
								 * the chain's; a file read while another writer held the
								 * writers' lock, once it is free */
	bool		rewrite;		/* bytes the server knows, lagging the state in force */
	bool		recheck;		/* not a valid state, its writer done: read again later */
	const KsState *file;		/* the valid state judged, or NULL */
	char		hash[KS_HEX_DIGEST_LEN + 1];	/* of the bytes judged */
	const char *untrusted;		/* a tamper verdict: why the file is not trusted */
	KsChange	change;
} KsVerdictAction;

static bool kept_waiting(const char *hash);

/*
 * The bytes of the state file this look judged, and what the server knew
 * the file held when it began: known from before the look commits
 * (note_judged()), the note taken back if it aborts (look_ended()).  Raced
 * files are never the state file's bytes.
 */
static char judged_hash[KS_HEX_DIGEST_LEN + 1];
static char hash_before[KS_HEX_DIGEST_LEN + 1];
static bool judged_noted = false;

/* A look is under way (its transaction not ended), and whether it holds the lock that orders changes. */
static bool look_open = false;
static bool look_locked = false;

/*
 * The state file's bytes the last looks judged, whatever file_hash says
 * now: a server write that replaced them while a look judged them keeps
 * them as a raced file (files.c), which must not be judged a second time.
 */
#define KS_RECENTLY_JUDGED 8
static char recently_judged[KS_RECENTLY_JUDGED][KS_HEX_DIGEST_LEN + 1];
static int	recently_next = 0;

/* Did a recent look judge these bytes of the state file? */
static bool
judged_recently(const char *hash)
{
	for (int i = 0; i < KS_RECENTLY_JUDGED; i++)
		if (hash[0] != '\0' && strcmp(recently_judged[i], hash) == 0)
			return true;
	return false;
}

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
	a->untrusted = what;
	a->change.mode = mode;
	a->change.reason = psprintf("state file rejected: %s", what);
	a->change.triggered_by = "killswitch";
	a->change.affected_tasks = 0;
	a->change.source = "tamper";
	a->change.flags = KS_FLAG_TAMPERED;
}

/* Say so in the log when the verdict is that the file cannot be trusted. */
static void
report_tamper(const KsVerdictAction *a)
{
	if (a->untrusted == NULL)
		return;
	ereport(WARNING,
			(errmsg("the kill switch state file could not be trusted; mode is now %s: %s",
					ks_mode_sql_names[a->change.mode], a->untrusted),
			 errhint("An administrator can inspect the state with ks_status() and release it with ks_disengage().")));
}

/*
 * Files found not a valid state once their writer had finished, and when
 * each may be judged (TopMemoryContext): killswitch.recheck_delay after the
 * look that first found it so.  inotify reports a writer's truncate a
 * moment after the truncate shows, so a writer that has just begun may not
 * be known yet at the first read; the look does not sleep for it (it may
 * hold the lock that orders changes, which every ks_engage() takes): it
 * ends, and the watcher reads the file again then, or at once when the
 * writer's events come (the file is then left to its writer).
 */
typedef struct KsRecheck
{
	char	   *path;
	TimestampTz until;
} KsRecheck;

static List *rechecks = NIL;

/* The pending recheck of a file, or NULL. */
static KsRecheck *
find_recheck(const char *path)
{
	ListCell   *lc;

	foreach(lc, rechecks)
	{
		KsRecheck  *r = (KsRecheck *) lfirst(lc);

		if (strcmp(r->path, path) == 0)
			return r;
	}
	return NULL;
}

/*
 * May a file found not a valid state, its writer done, be judged now?  The
 * first time it is found so, not before killswitch.recheck_delay.
 */
static bool
recheck_over(const char *path)
{
	KsRecheck  *r;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext old;

	if (ks_recheck_delay <= 0)
		return true;
	r = find_recheck(path);
	if (r != NULL)
		return now >= r->until;
	old = MemoryContextSwitchTo(TopMemoryContext);
	r = palloc(sizeof(KsRecheck));
	r->path = pstrdup(path);
	r->until = TimestampTzPlusMilliseconds(now, ks_recheck_delay);
	rechecks = lappend(rechecks, r);
	MemoryContextSwitchTo(old);
	return false;
}

/* The file was judged, or its writer is at it again: a later recheck starts afresh. */
static void
forget_recheck(const char *path)
{
	KsRecheck  *r = find_recheck(path);

	if (r == NULL)
		return;
	rechecks = list_delete_ptr(rechecks, r);
	pfree(r->path);
	pfree(r);
}

/* When a file that waits for its recheck (KS_JUDGE_AFTER_RECHECK) is read again. */
TimestampTz
ks_judge_recheck_at(const char *path)
{
	KsRecheck  *r = find_recheck(path);

	return r != NULL ? r->until : GetCurrentTimestamp();
}

/*
 * Keep a rejected file (the state file, or a raced one) as evidence, as
 * <state file>.rejected (replacing an older one), and clear the way for a
 * trusted file.
 */
static void
set_aside(const char *path)
{
	char		aside[MAXPGPATH];

	ks_state_file_path(aside, sizeof(aside));
	strlcat(aside, ".rejected", sizeof(aside));
	if (unlink(aside) != 0 && errno == EISDIR)
		(void) rmdir(aside);
	if (rename(path, aside) != 0)
		ereport(LOG,
				(errmsg("could not move the rejected kill switch state file aside: %m")));
}

/*
 * The state the server holds: its private copy when that is what the
 * chain carries (it keeps an engaged_at of null as null, and the signature
 * a release must name), else shared memory itself (a verdict not yet
 * written: no signature, so nothing can name it).  The chain's mode, not
 * the word's: a raise in flight is nobody's file yet.
 */
static void
held_state(KsState *held, uint64 word, TimestampTz since)
{
	char		problem[KS_PROBLEM_LEN];
	char		at[40];
	int			flags;
	KsMode		chain = ks_chain_state(&flags);

	if (ks_read_held(held, problem, sizeof(problem)) &&
		held->generation == KS_WORD_GENERATION(word) && held->mode == chain)
		return;
	ks_state_init(held);
	held->mode = chain;
	held->generation = KS_WORD_GENERATION(word);
	ks_format_iso_utc(ks_timestamptz_to_unix_usec(since), at, sizeof(at));
	held->engaged_at = pstrdup(at);
}

/*
 * A file that cannot be trusted: set aside as evidence, and a tamper
 * verdict at mode.  Judged, the state file is missing now (it is rewritten
 * when the verdict is recorded).
 */
static void
reject(KsVerdictAction *a, const char *path, bool raced, KsMode mode, const char *problem)
{
	set_aside(path);
	tamper(a, mode, problem);
	a->change.expect.judged = NULL;
	a->change.expect.untrusted = !raced;	/* set aside: no file now */
	if (!raced)
		ks_file_hash_of(NULL, 0, judged_hash);
}

/* Read a file once: its verdict and state, the hash of its bytes, whether it is empty. */
static KsVerdict
read_once(const char *path, const char *secret, size_t secretlen, KsState *st,
		  char *hash, bool *empty, char *problem, size_t problemlen)
{
	char	   *bytes;
	size_t		len;
	struct stat sb;

	ks_state_init(st);
	hash[0] = '\0';
	*empty = false;
	if (lstat(path, &sb) != 0 && errno == ENOENT)
	{
		snprintf(problem, problemlen, "the file does not exist");
		ks_file_hash_of(NULL, 0, hash);
		return KS_FILE_MISSING;
	}
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &bytes, &len, problem, problemlen))
		return KS_FILE_BAD;
	ks_file_hash_of(bytes, len, hash);
	*empty = len == 0;
	return ks_state_from_text(bytes, len, secret, secretlen, ks_secret_file,
							  ks_require_hmac, st, problem, problemlen);
}

/*
 * Has another writer held the writers' lock for longer than the watcher
 * waits for it (worker.c, KS_LOCK_DEFER_MS)?  Then a look reads the file
 * without it.  Set by the watcher before each look.
 */
bool		ks_watch_writers_stuck = false;

/*
 * read_once() again while holding the writers' lock: a server write that
 * replaced the file has noted its bytes by the time the lock is free, so
 * bytes still unknown then are someone else's.  The look holds a snapshot
 * and perhaps the lock that orders changes, so it does not wait for the
 * writers' lock (persist.c): busy, the look is given up (*busy) and made
 * again once the lock is free — or, once another writer has held it past
 * the watcher's patience (anyone who can write the state directory can
 * hold it), without it.
 */
static KsVerdict
read_settled(const char *path, const char *secret, size_t secretlen, KsState *st,
			 char *hash, bool *empty, bool *busy, char *problem, size_t problemlen)
{
	char		why[KS_PROBLEM_LEN];
	int			lockfd = ks_lock_state_dir(0, why, sizeof(why));
	KsVerdict	v;

	*busy = lockfd < 0 && errno == EWOULDBLOCK && !ks_watch_writers_stuck;
	v = read_once(path, secret, secretlen, st, hash, empty, problem, problemlen);
	ks_unlock_dir(lockfd);
	return v;
}

/*
 * Decide what a file asks for, compared with the state held: the state
 * file, or a raced file (a write that raced a replace of it, files.c).
 * writer_done: has its writer finished (closed it, renamed it into place,
 * or left it unchanged for a while, worker.c)?  Asked after the read, so
 * that a writer that began just before it counts.  Until then a file that
 * is not a valid state is no verdict, only a write in progress (a valid one
 * is complete whoever is still at it, and is judged at once).
 */
static KsVerdictAction
judge(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int			held_flags;
	int			chain_flags;
	/* the state in force without the raises in flight (ARCHITECTURE §5.1) */
	KsMode		held = ks_base_mode(&held_flags);
	bool		tampered = (held_flags & KS_FLAG_TAMPERED) != 0;
	KsMode		chain = ks_chain_state(&chain_flags);
	/* raises in force that the chain does not hold yet (recorded at a look that takes the lock) */
	bool		base_ahead = held != chain || tampered != ((chain_flags & KS_FLAG_TAMPERED) != 0);
	KsMode		raised = Max(held, KS_HALT_ALL);
	bool		releases;
	TimestampTz since;
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];
	char		hash[KS_HEX_DIGEST_LEN + 1];
	bool		empty;
	bool		behind;
	KsState		st,
				hst;
	KsState    *judged;
	KsVerdict	v;
	KsOrder		order;

	memset(&a, 0, sizeof(a));
	SpinLockAcquire(&ks_shared->mutex);
	since = ks_shared->since;
	SpinLockRelease(&ks_shared->mutex);

	if (!ks_backend_secret(&secret, &secretlen, problem, sizeof(problem)))
	{
		tamper(&a, raised, psprintf("signing secret: %s", problem));
		a.change.expect.untrusted = true;
		return a;
	}
	/*
	 * Read; a file that is no valid state is judged once its writer has
	 * finished, and not before killswitch.recheck_delay has passed since a
	 * look first found it so (recheck_over()).
	 */
	if (!raced)
		ks_file_hash(hash_before);
	v = read_once(path, secret, secretlen, &st, hash, &empty, problem, sizeof(problem));
	if (!raced && !ks_file_known(hash, &behind))
	{
		bool		busy;

		v = read_settled(path, secret, secretlen, &st, hash, &empty, &busy,
						 problem, sizeof(problem));
		if (busy)
		{
			a.after_lock = true;	/* looked at again soon */
			return a;
		}
	}
	/*
	 * The server's own bytes, or bytes already judged: nothing new — unless
	 * the file lags the state in force, or a writer made it narrower than
	 * the server writes it (the library chmods the file 0600 after writing
	 * it, by name: after the server's rewrite, that is the server's file) —
	 * then the server writes it again.  A raced file with such bytes (a
	 * write judged before the replace kept it) asks for nothing either.
	 */
	if (ks_file_known(hash, &behind) || kept_waiting(hash) ||
		(raced && judged_recently(hash)))
	{
		struct stat sb;

		a.rewrite = !raced && (behind ||
							   (lstat(path, &sb) == 0 &&
								(sb.st_mode & 07777) != ks_shared_file_mode(path)));
		return a;
	}
	if (v == KS_FILE_BAD || v == KS_FILE_MISSING)
	{
		if (raced && v == KS_FILE_MISSING)
			return a;			/* judged already, or removed: nothing to apply */
		if (!writer_done(path))
		{
			a.wait = true;
			return a;
		}
		if (!recheck_over(path))
		{
			a.recheck = true;
			return a;
		}
	}
	strlcpy(a.hash, hash, sizeof(a.hash));
	if (!raced)
		strlcpy(judged_hash, hash, sizeof(judged_hash));
	if (raced && (v == KS_FILE_MISSING || empty))
		return a;				/* truncated and never written: nothing to apply */
	if (v == KS_FILE_MISSING || empty)
	{
		/* deleting or emptying never releases: keep the mode, rewrite */
		tamper(&a, held, v == KS_FILE_MISSING ? "the state file was deleted"
			   : "the state file was emptied");
		a.change.expect.untrusted = true;
		return a;
	}
	if (v == KS_FILE_BAD)
	{
		reject(&a, path, raced, raised, problem);
		return a;
	}

	/* readable: ours, newer, or a replay */
	held_state(&hst, word, since);
	order = ks_compare_to_held(&st, &hst);
	/* a raced write without a generation came with the replace, not before it */
	if (raced && order == KS_OLDER && st.generation < 0)
		order = KS_NEWER;
	if (order == KS_SAME)
		return a;
	judged = palloc(sizeof(KsState));
	*judged = st;
	a.file = judged;
	/* the compare-and-swap of the rewrite expects the state file as judged */
	if (!raced)
		a.change.expect.judged = judged;
	if (!ks_generation_step_ok(&st, &hst, problem, sizeof(problem)))
	{
		reject(&a, path, raced, Max(raised, st.mode), problem);
		return a;
	}
	if (order == KS_OLDER)
	{
		tamper(&a, Max(raised, st.mode),
			   "replay: the state file is older than the state the server holds");
		return a;
	}
	/*
	 * A release (or a file that would clear the verdict) is weighed against
	 * the state the chain holds, the one it can name; while raises are in
	 * force that the chain lacks yet, it waits until a look has recorded
	 * them — by then the write of their state has made it a raced file
	 * (files.c), judged against the new state.
	 */
	releases = ks_change_kind(held, tampered, st.mode,
							  st.tampered || ks_is_tamper_source(st.source)) == KS_CHANGE_LOWER;
	if (releases && base_ahead)
	{
		a.after_lock = true;
		judged_hash[0] = '\0';
		return a;
	}
	if (raced && !ks_release_authorized(&st, &hst, tampered, problem, sizeof(problem)))
	{
		/*
		 * A raced write that would lower the mode (or clear a verdict) came
		 * with a change of the server's that supersedes it: it may have
		 * been a raise over the state it replaced, or a release of that
		 * state.  It is not applied, and is no verdict.
		 */
		ereport(WARNING,
				(errmsg("an outside write that raced a change of the kill switch state was superseded by it"),
				 errdetail("It asked for mode %s; the state in force is %s (%s).",
						   ks_mode_sql_names[st.mode], ks_mode_sql_names[hst.mode], problem),
				 errhint("A release must name the state it replaces; read the state file again and retry.")));
		return a;
	}
	if (!ks_release_authorized(&st, &hst, tampered, problem, sizeof(problem)))
	{
		reject(&a, path, raced, Max(raised, st.mode), problem);
		return a;
	}
	a.act = true;
	/* the generation the writer gave (the CLI printed it), if it is ahead */
	a.change.generation = st.generation > KS_WORD_GENERATION(word) ? st.generation : 0;
	a.change.mode = st.mode;
	a.change.reason = file_text(st.reason, "(no reason given in the state file)");
	a.change.triggered_by = file_text(st.triggered_by, "(unknown)");
	a.change.affected_tasks = st.affected_tasks >= 0 && st.affected_tasks <= PG_INT32_MAX
		? (int32) st.affected_tasks : 0;
	a.change.source = (st.source && strcmp(st.source, "cli") == 0) ? "cli" : "file";
	a.change.flags = v == KS_FILE_UNSIGNED ? KS_FLAG_UNSIGNED : 0;
	/* an authorized release clears the verdict; anything else keeps it */
	a.change.clears_verdict = releases;
	return a;
}

/*
 * judge(), and what follows from its verdict whatever is done with it: a
 * WARNING for a file that cannot be trusted; a recheck that starts afresh
 * next time, unless this look waits for one.
 */
static KsVerdictAction
judge_and_report(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a = judge(path, raced, writer_done);

	if (!a.recheck)
		forget_recheck(path);
	report_tamper(&a);
	return a;
}

/*
 * Outside changes and verdicts in force in place, waiting for the lock that
 * orders the history to be recorded (TopMemoryContext, oldest first).
 */
static List *waiting = NIL;
/*
 * The bytes (SHA-256) those changes were judged from: not judged again
 * while they wait, whatever becomes of the look that judged them (it may
 * fail, and its bytes are known only once a look commits).
 */
static List *waiting_hashes = NIL;
/* An outside release waits for the lock: look again soon. */
static bool retry_soon = false;
/* This look raised in place (halt_now()): its commit makes the chain hold it. */
static bool raised_in_place = false;

/* Were these bytes judged into a change that waits to be recorded? */
static bool
kept_waiting(const char *hash)
{
	ListCell   *lc;

	foreach(lc, waiting_hashes)
		if (hash[0] != '\0' && strcmp((const char *) lfirst(lc), hash) == 0)
			return true;
	return false;
}

/* A change in TopMemoryContext, to outlive this look's transaction. */
static KsChange *
keep_change(const KsChange *c)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	KsChange   *k = palloc(sizeof(KsChange));

	*k = *c;
	k->reason = pstrdup(c->reason);
	k->triggered_by = pstrdup(c->triggered_by);
	k->source = pstrdup(c->source);
	if (c->expect.judged)
		k->expect.judged = ks_state_copy(c->expect.judged);
	MemoryContextSwitchTo(old);
	return k;
}

/*
 * Raise the mode in shared memory at once, before anything that can fail
 * or wait (writing the file, recording the event): the halt must not
 * depend on the disk or on a lock.  The generation moves when the change
 * commits; until then the raise is in place (state.c).
 */
static void
halt_now(const KsChange *c)
{
	raised_in_place = true;
	if (ks_raise_in_place(c->mode, c->flags & KS_FLAG_TAMPERED, c->reason, c->triggered_by))
		ks_interlock_wait();
}

/*
 * A raise (a verdict, or an outside engage) in force at once, and kept
 * with the bytes it was judged from (hash) until a look records it and
 * commits (chain_holds_waiting()): never lost.
 */
static void
halt_and_keep(const KsChange *c, const char *hash)
{
	MemoryContext old;

	halt_now(c);
	old = MemoryContextSwitchTo(TopMemoryContext);
	waiting = lappend(waiting, keep_change(c));
	waiting_hashes = lappend(waiting_hashes, pstrdup(hash));
	MemoryContextSwitchTo(old);
}

/*
 * A verdict on a file beside the state file (the scope file, scopefile.c,
 * ARCHITECTURE §13): in force at once, and kept, like a verdict on the state
 * file, until a look that holds the lock records it.
 */
void
ks_watch_tamper(const char *what)
{
	KsChange	c;
	int			flags;

	memset(&c, 0, sizeof(c));
	c.mode = Max(ks_base_mode(&flags), KS_HALT_ALL);
	c.reason = psprintf("scope file rejected: %s", what);
	c.triggered_by = "killswitch";
	c.source = "tamper";
	c.flags = KS_FLAG_TAMPERED;
	c.release_target = c.mode;
	ereport(WARNING,
			(errmsg("the kill switch scope file could not be trusted; mode is now %s: %s",
					ks_mode_sql_names[c.mode], what),
			 errhint("An administrator can inspect the state with ks_status() and release it with ks_disengage().")));
	halt_and_keep(&c, "");
	retry_soon = true;
}

/* Record the changes in force in place, oldest first (the lock is held). */
static void
record_waiting(void)
{
	ListCell   *lc;

	foreach(lc, waiting)
		(void) ks_apply_change((KsChange *) lfirst(lc));
}

/* Does the watcher have to look again soon, though the file did not change? */
bool
ks_watch_due(void)
{
	return waiting != NIL || retry_soon || ks_scope_file_pending();
}

/*
 * The look committed: what it recorded is the chain's now (published by
 * its commit, change.c), nothing stays in place.
 */
static void
chain_holds_waiting(void)
{
	if (waiting == NIL && !raised_in_place)
		return;
	list_free_deep(waiting);
	waiting = NIL;
	list_free_deep(waiting_hashes);
	waiting_hashes = NIL;
	raised_in_place = false;
	if (!ks_shared->unconfirmed)
		ks_clear_in_place();
}

/*
 * The end of a look's transaction, from the release of its resources:
 * PostgreSQL calls it after the transaction callbacks (so after change.c
 * has published what the look recorded) and before it lets go of the
 * look's locks — the lock that orders changes among them, which every
 * change made after the look waits for.  Committed: the bytes judged are
 * not judged again, even kept as a raced file (no change is recorded
 * twice, however often the file is read), and a look that held the lock
 * ends its raise in place.  Aborted: the bytes noted as judged are unseen
 * again, and judged at a later look; what halt_now() raised stays in
 * place, waiting to be recorded (ks_watch_failed()).  Nothing here can
 * fail: the commit record may be written.
 */
static void
look_ended(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	/* called for every resource owner of the transaction, in every phase */
	if (phase != RESOURCE_RELEASE_BEFORE_LOCKS || !isTopLevel || !look_open)
		return;
	look_open = false;
	if (isCommit && judged_hash[0] != '\0')
	{
		strlcpy(recently_judged[recently_next], judged_hash, sizeof(recently_judged[0]));
		recently_next = (recently_next + 1) % KS_RECENTLY_JUDGED;
	}
	if (isCommit && look_locked)
		chain_holds_waiting();
	if (!isCommit && judged_noted)
		ks_file_unjudged(judged_hash, hash_before);
	judged_hash[0] = '\0';
	judged_noted = false;
}

/* A look begins, in the watcher's transaction: its end is look_ended()'s. */
static void
look_begins(bool locked)
{
	static bool watching = false;

	if (!watching)
		RegisterResourceReleaseCallback(look_ended, NULL);
	watching = true;
	look_open = true;
	look_locked = locked;
	judged_noted = false;
}

/*
 * The state file's bytes this look judged are known from now on — before
 * the look commits, so that its event is never visible while they still
 * count as an unseen outside change (a release's compare-and-swap would
 * refuse it with 40001).  Safe before the commit (ARCHITECTURE §5.7): a
 * change that could commit meanwhile is one made while the look does not
 * hold the lock that orders changes, and then what the bytes asked for is
 * in force in place and waits in the watcher's list (which a release
 * checks after the bytes), or they asked for nothing, or for a release
 * that was not noted; an abort takes the note back before that lock goes.
 */
static void
note_judged(void)
{
	if (judged_hash[0] != '\0')
		judged_noted = ks_file_judged(judged_hash, hash_before);
}

/*
 * A look at a file begins: the bytes it judges are not known yet, and a
 * look at the state file settles an earlier wish to look again soon.
 * False: the state directory is another server's (claim.c), nothing to
 * judge.
 */
static bool
judging_begins(bool raced)
{
	char		problem[KS_PROBLEM_LEN];

	judged_hash[0] = '\0';
	if (!raced)
		retry_soon = false;
	return ks_state_dir_ours(problem, sizeof(problem));
}

/*
 * What a verdict that applies nothing leaves to the next look: the
 * writer's end, the recheck, or the lock (read while another writer held
 * the writers' lock, or a release waiting for the lock that orders changes:
 * looked at again soon).
 */
static KsJudged
nothing_applied(const KsVerdictAction *a)
{
	if (a->after_lock)
		retry_soon = true;
	return a->wait ? KS_JUDGE_AFTER_WRITER : a->recheck ? KS_JUDGE_AFTER_RECHECK :
		a->after_lock ? KS_JUDGE_AFTER_LOCK : KS_JUDGED;
}

/*
 * Judge a file — the state file, or a raced one — and record what it calls
 * for (the history exists), inside the look's transaction; locked says
 * whether it holds the lock that orders changes.  The look that holds it
 * first settles the marks of changes in flight and records the raises
 * whose event followed.  A raise or a verdict is in force at once and kept
 * until a look that holds the lock records it; a release waits for such a
 * look.
 */
static KsJudged
judge_and_record(const char *path, bool raced, bool locked, KsWriterDone writer_done)
{
	KsVerdictAction a;
	int			flags;
	KsMode		held;
	KsChangeKind kind;

	if (!judging_begins(raced))
		return KS_JUDGED;		/* another server's file */
	if (locked && !raced)
	{
		ks_settle_marks();
		ks_record_marks();
		ks_scope_look();		/* scopes' raises whose event followed, raises in place (§13) */
	}
	a = judge_and_report(path, raced, writer_done);
	if (a.rewrite)
		(void) ks_write_behind_file(true);
	if (!a.act)
	{
		if (locked)
			record_waiting();
		if (locked && ks_shared->unrecorded)
			ks_flush_unrecorded();
		return nothing_applied(&a);
	}
	held = ks_base_mode(&flags);
	/* an outside raise keeps a verdict; a verdict is one */
	if (!(a.change.flags & KS_FLAG_TAMPERED) && a.change.mode >= held &&
		(flags & KS_FLAG_TAMPERED) && !a.change.clears_verdict)
		a.change.flags |= KS_FLAG_TAMPERED;
	kind = ks_change_kind(held, (flags & KS_FLAG_TAMPERED) != 0, a.change.mode,
						  (a.change.flags & KS_FLAG_TAMPERED) != 0);
	if (kind == KS_CHANGE_LOWER && !locked)
	{
		retry_soon = true;		/* applied only when it can be recorded */
		judged_hash[0] = '\0';	/* and judged again then */
		return KS_JUDGE_AFTER_LOCK;
	}
	if (kind == KS_CHANGE_LOWER)
	{
		record_waiting();		/* what was in force before it, first */
		(void) ks_apply_change(&a.change);
		return KS_JUDGED;
	}
	halt_and_keep(&a.change, a.hash);	/* a verdict, or an outside engage, halts at once */
	if (locked)
		record_waiting();
	else
		retry_soon = true;
	return KS_JUDGED;
}

/* judge_and_record(), a look: what it judged is known from before its commit. */
KsJudged
ks_judge_file(const char *path, bool raced, bool locked, KsWriterDone writer_done)
{
	KsJudged	judged;

	look_begins(locked);
	judged = judge_and_record(path, raced, locked, writer_done);
	note_judged();
	return judged;
}

/*
 * Judge a file where there is no history yet (the extension is not
 * created): shared memory still follows the file, so enforcement holds; the
 * change is recorded once the history exists (ks_flush_unrecorded()).  A
 * trusted change also goes into the private copy, as a change applied at
 * start does: the copy is the state held that the file is judged against,
 * so once the history exists the file is what we hold, not a newer change.
 * KS_JUDGE_AFTER_WRITER: a writer may still be at the file.
 */
static KsJudged
judge_and_publish(const char *path, bool raced, KsWriterDone writer_done)
{
	KsVerdictAction a;
	uint64		word = pg_atomic_read_u64(&ks_shared->word);
	int64		generation;
	char		problem[KS_PROBLEM_LEN];

	if (!judging_begins(raced))
		return KS_JUDGED;		/* another server's file */
	a = judge_and_report(path, raced, writer_done);
	if (a.rewrite)
		(void) ks_write_behind_file(false);
	if (!a.act)
		return nothing_applied(&a);
	/* the next generation, or the one the file's writer gave (the CLI printed it) */
	generation = Max(KS_WORD_GENERATION(word) + 1, a.change.generation);
	ks_note_unrecorded(KS_WORD_MODE(word), a.change.reason);
	ks_publish(a.change.mode, a.change.flags, generation,
			   GetCurrentTimestamp(), a.change.source,
			   a.change.reason, a.change.triggered_by);

	if (!(a.change.flags & KS_FLAG_TAMPERED))
	{
		KsState		held = *a.file;

		held.generation = generation;
		held.previous_mode = KS_WORD_MODE(word);
		held.source = (char *) a.change.source;
		held.replaces = NULL;
		if (!ks_persist_applied(&held, false, problem, sizeof(problem)))
			ereport(WARNING,
					(errmsg("could not keep the applied kill switch state in the private copy: %s", problem),
					 errdetail("The change is in force; once the history exists it may be recorded twice.")));
		else
			ks_wal_log_file(KS_LAST_APPLIED_FILE);	/* standbys follow */
	}
	return KS_JUDGED;
}

/* judge_and_publish(), a look without a history: what it judged is known from before its commit. */
KsJudged
ks_judge_file_without_history(const char *path, bool raced, KsWriterDone writer_done)
{
	KsJudged	judged;

	look_begins(false);
	judged = judge_and_publish(path, raced, writer_done);
	note_judged();
	return judged;
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
	int64		history_gen;

	/* out of recovery, the replicated history is the truth (standby.c) */
	if (ks_shared->from_recovery)
	{
		ks_adopt_history_after_recovery();
		/* redo wrote the file without noting its bytes: the private copy stands in */
		ks_file_unknown();
		return;
	}
	/* first settle the changes in flight at a crash, then compare */
	ks_settle_marks();
	word = pg_atomic_read_u64(&ks_shared->word);
	state_gen = KS_WORD_GENERATION(word);
	history_gen = ks_events_last_generation();
	if (history_gen == state_gen || ks_shared->unrecorded)
		return;
	if (history_gen > state_gen)
	{
		KsVerdictAction a;

		memset(&a, 0, sizeof(a));
		tamper(&a, Max(KS_WORD_MODE(word), KS_HALT_ALL),
			   psprintf("replay: the history has generation " INT64_FORMAT
						" but the state file only " INT64_FORMAT, history_gen, state_gen));
		report_tamper(&a);
		(void) ks_apply_change(&a.change);
		return;
	}
	/* copy out, format outside the spinlock */
	{
		char		held[sizeof(ks_shared->reason)];

		SpinLockAcquire(&ks_shared->mutex);
		memcpy(held, ks_shared->reason, sizeof(held));
		SpinLockRelease(&ks_shared->mutex);
		ks_note_unrecorded(KS_WORD_MODE(word),
						   psprintf("recorded at start: the state file holds a change the history lacks (%s)",
									held));
	}
	ks_flush_unrecorded();
}

/*
 * After a failed look (the event not recorded, the transaction aborted):
 * whatever halt_now() raised stays in place, and the changes waiting to be
 * recorded are tried again at the next look.
 */
void
ks_watch_failed(void)
{
	retry_soon = true;
}

/* Remove a mark nobody can read, keeping it as evidence. */
static void
set_mark_aside(const char *problem)
{
	ereport(WARNING,
			(errmsg("a mark of a kill switch change in flight could not be read: %s", problem),
			 errhint("The mode stays as it is; an administrator can release it.")));
}

/* The file still holds this mark's state (a change that never committed)? Put the copy back. */
static void
put_back_uncommitted(const KsMark *m)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *now;
	size_t		nowlen;
	char	   *copy;
	size_t		copylen;

	ks_state_file_path(path, sizeof(path));
	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &now, &nowlen, problem, sizeof(problem)) ||
		nowlen != m->state_len || memcmp(now, m->state, nowlen) != 0 ||
		!ks_read_file(KS_LAST_APPLIED_FILE, KS_MAX_FILE_SIZE, &copy, &copylen,
					  problem, sizeof(problem)))
		return;
	/* the file is ours (its bytes are the mark's), behind the state in force: the copy goes there */
	ks_file_written(now, nowlen);
	ks_file_behind("a change written before its commit never committed");
	(void) ks_write_behind_file(true);
}

/*
 * A committed change's state file may never have been written: a release
 * writes it after its commit, and a crash can come first.  The file still
 * holds the state before (the server's own bytes), behind the state in
 * force: the watcher writes it now, over bytes it knows only.
 */
static void
file_follows_mark(const KsMark *m)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *now;
	size_t		nowlen;

	ks_state_file_path(path, sizeof(path));
	if (ks_read_file(path, KS_MAX_FILE_SIZE, &now, &nowlen, problem, sizeof(problem)) &&
		nowlen == m->state_len && memcmp(now, m->state, nowlen) == 0)
		return;
	ks_file_behind("a change committed before a crash, its state file not yet written");
	(void) ks_write_behind_file(true);
}

/*
 * A recorded change whose transaction committed: the copy (and the chain)
 * learn it, unless they hold a newer one (marks come in no order).
 */
static void
settle_committed(const KsMark *m, bool before_start)
{
	char		problem[KS_PROBLEM_LEN];
	KsState		st;
	KsState		held;

	if (!ks_read_held(&held, problem, sizeof(problem)) || m->generation > held.generation)
	{
		if (!ks_persist_copy(m->state, m->state_len, problem, sizeof(problem)))
		{
			ereport(WARNING,
					(errmsg("could not write the private copy of a committed kill switch change: %s", problem)));
			SpinLockAcquire(&ks_shared->mutex);
			ks_shared->marks_due = true;	/* tried again */
			SpinLockRelease(&ks_shared->mutex);
			return;
		}
		if (ks_state_from_text(m->state, m->state_len, NULL, 0, NULL, false, &st,
							   problem, sizeof(problem)) != KS_FILE_BAD)
			(void) ks_publish_state(&st, (ks_require_hmac ? 0 : KS_FLAG_UNSIGNED) |
									(st.tampered ? KS_FLAG_TAMPERED : 0), true);
		file_follows_mark(m);
		ereport(LOG,
				(before_start
				 ? errmsg("the kill switch change of generation " INT64_FORMAT " written before the crash had committed; mode %s",
						  m->generation, ks_mode_sql_names[m->mode])
				 : errmsg("the kill switch change of generation " INT64_FORMAT " written before a failed write of the private copy had committed; mode %s",
						  m->generation, ks_mode_sql_names[m->mode])));
	}
	(void) ks_mark_remove(m->xid);
}

/*
 * Settle the marks of changes in flight (ARCHITECTURE §5.5) by the commit
 * log: a transaction still running is its backend's business; one that
 * committed has its change in force (a recorded change's copy is written if
 * the commit could not; a raise whose event follows stays counted until it
 * is recorded, ks_record_marks()); one that never committed has its mark
 * removed and, if the state file still holds its state, the file put back.
 * After a crash, the raise the postmaster put in place for the marks ends
 * when all are settled: the state goes back to the newest committed one.
 * Nothing is recorded here.
 */
void
ks_settle_marks(void)
{
	List	   *marks;
	ListCell   *lc;
	bool		bad;
	bool		due;
	bool		unconfirmed;
	char		problem[KS_PROBLEM_LEN];
	KsState		held;
	bool		held_ok;

	SpinLockAcquire(&ks_shared->mutex);
	due = ks_shared->marks_due || ks_shared->unconfirmed;
	unconfirmed = ks_shared->unconfirmed;
	ks_shared->marks_due = false;
	SpinLockRelease(&ks_shared->mutex);
	if (!due)
		return;
	held_ok = ks_read_held(&held, problem, sizeof(problem));
	marks = ks_marks_read(&bad, problem, sizeof(problem));
	if (bad)
		set_mark_aside(problem);
	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);
		FullTransactionId fxid = FullTransactionIdFromU64(m->xid);
		TransactionId xid = XidFromFullTransactionId(fxid);
		bool		before_start = m->xid <= ks_shared->marks_before_start;

		/*
		 * A transaction not before the next id never wrote a commit record
		 * (that would have moved the counter past it): it did not commit.
		 */
		if (FullTransactionIdPrecedes(fxid, ReadNextFullTransactionId()) &&
			TransactionIdIsInProgress(xid))
		{
			SpinLockAcquire(&ks_shared->mutex);
			ks_shared->marks_due = true;
			SpinLockRelease(&ks_shared->mutex);
			continue;
		}
		if (FullTransactionIdPrecedes(fxid, ReadNextFullTransactionId()) &&
			TransactionIdDidCommit(xid))
		{
			if (!m->deferred)
				settle_committed(m, before_start);
			else
			{
				/* counted by its backend at commit, or here for one from before the start */
				if (unconfirmed && before_start)
					ks_deferred_count_add(m->mode, 1, m->reason, m->triggered_by);
				SpinLockAcquire(&ks_shared->mutex);
				ks_shared->marks_due = true;
				SpinLockRelease(&ks_shared->mutex);
			}
			continue;
		}
		if (!m->deferred)
			put_back_uncommitted(m);
		(void) ks_mark_remove(m->xid);
		if (m->deferred)
			ereport(LOG,
					(before_start
					 ? errmsg("the kill switch raise to %s of transaction %u, in force before the crash, never committed",
							  ks_mode_sql_names[m->mode], xid)
					 : errmsg("the kill switch raise to %s of transaction %u, in force before its backend ended, never committed",
							  ks_mode_sql_names[m->mode], xid)));
		else
			ereport(LOG,
					(before_start
					 ? errmsg("the kill switch change of generation " INT64_FORMAT " written before the crash never committed; mode %s stays",
							  m->generation, ks_mode_sql_names[held_ok ? held.mode : KS_HALT_ALL])
					 : errmsg("the kill switch change of generation " INT64_FORMAT " written before its backend ended never committed; mode %s stays",
							  m->generation, ks_mode_sql_names[held_ok ? held.mode : KS_HALT_ALL])));
	}
	if (unconfirmed)
	{
		SpinLockAcquire(&ks_shared->mutex);
		ks_shared->unconfirmed = false;
		SpinLockRelease(&ks_shared->mutex);
		if (waiting == NIL)
			ks_clear_in_place();
	}
}
