/*
 * startup.c — fill shared memory from the state file while the server
 * starts, before any client connects (ARCHITECTURE §2, §4).  Runs in the
 * postmaster, at first start and after every crash restart.
 *
 * Besides the state file (which other programs share), the server keeps a
 * private signed copy of the last state it applied, pg_killswitch/
 * last_applied.json.  It is what "the state the server holds" means at
 * start: it tells a first start from a file deleted while the server was
 * down, and a new out-of-band change from an old file put back.
 *
 * The changes in flight at a crash (their marks, pg_killswitch/in_flight/
 * <xid>.json, marks.c) cannot be settled here: the postmaster cannot read
 * the commit log.  The server starts at the newest committed state raised
 * in place by every mark — never lower than what committed — and the
 * watcher settles each mark by the commit log as soon as it runs
 * (ks_settle_marks()).
 *
 * Nothing here may throw an error: an error in the postmaster is fatal, and
 * a kill switch that cannot read its state must assume the stop, not crash.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "claim.h"
#include "follow.h"
#include "guc.h"
#include "marks.h"
#include "names.h"
#include "persist.h"
#include "release.h"
#include "scopefile.h"
#include "standby.h"
#include "startup.h"
#include "state.h"
#include "store.h"

/* What the start decided. */
typedef struct KsDecision
{
	KsState		state;			/* to apply and, if write, to write */
	int			flags;
	bool		write;			/* rewrite the state file and the copy */
	bool		record;			/* a change killswitch.events lacks */
	int			previous;		/* KsMode, or KS_NO_MODE */
	bool		unconfirmed;	/* marks of changes in flight: the watcher settles them */
	int			inplace_mode;	/* the highest of their modes, in force until then */
	bool		inplace_tampered;
	uint64		marks_xid;		/* the newest transaction among them */
	char	   *held_signature;	/* the private copy's, for "replaces" (ARCHITECTURE §3) */
} KsDecision;

/* Fill a fresh file state for a change made at start. */
static void
start_state(KsDecision *d, KsMode mode, int64 generation, const char *source,
			const char *reason)
{
	char		now[40];

	ks_format_iso_utc(ks_timestamptz_to_unix_usec(GetCurrentTimestamp()), now, sizeof(now));
	ks_state_init(&d->state);
	d->state.mode = mode;
	d->state.engaged_at = pstrdup(now);
	d->state.reason = reason ? pstrdup(reason) : NULL;
	d->state.triggered_by = reason ? "killswitch" : NULL;
	d->state.generation = generation;
	d->state.source = (char *) source;
	d->state.previous_mode = d->previous;
	d->write = true;
}

/* The file cannot be trusted: at least halt_all, never lower than held. */
static void
decide_tampered(KsDecision *d, const KsState *held, bool held_ok,
				const char *what, const char *problem)
{
	KsMode		mode = held_ok ? Max(held->mode, KS_HALT_ALL) : KS_HALT_ALL;
	int64		gen = (held_ok ? held->generation : 0) + 1;
	char		reason[KS_PROBLEM_LEN + 64];

	/* source "tamper" is the verdict: ks_publish() raises the flag from it */
	snprintf(reason, sizeof(reason), "state file rejected at startup: %s: %s", what, problem);
	d->previous = held_ok ? (int) held->mode : KS_NO_MODE;
	start_state(d, mode, gen, "tamper", reason);
	d->record = true;
}

/* A readable file and the copy of what we held: apply, or call it a replay. */
static void
decide_readable(KsDecision *d, const KsState *file, const KsState *held, bool held_ok)
{
	KsOrder		order = held_ok ? ks_compare_to_held(file, held) : KS_NEWER;
	bool		same = order == KS_SAME;
	bool		held_tampered = held_ok && (held->tampered || ks_is_tamper_source(held->source));
	char		problem[KS_PROBLEM_LEN];

	if (order == KS_OLDER)
	{
		decide_tampered(d, held, true, "replay",
						"the state file is older than the state the server last applied");
		return;
	}
	if (!same && held_ok &&
		(!ks_generation_step_ok(file, held, problem, sizeof(problem)) ||
		 !ks_release_authorized(file, held, held_tampered, problem, sizeof(problem))))
	{
		char		path[MAXPGPATH];
		char		aside[MAXPGPATH];
		KsState		raised = *held;

		/*
		 * a release without the release credential, or a generation pushed
		 * far: keep the evidence, assume the halt (and any higher mode the
		 * file asked for: raising needs nothing)
		 */
		ks_state_file_path(path, sizeof(path));
		snprintf(aside, sizeof(aside), "%s.rejected", path);
		(void) rename(path, aside);
		raised.mode = Max(held->mode, file->mode);
		decide_tampered(d, &raised, true, "state file", problem);
		return;
	}
	d->state = *file;
	d->previous = held_ok ? (int) held->mode : (int) KS_DISENGAGED;
	/* a raise keeps the verdict; only an authorized release clears it */
	if (held_tampered &&
		ks_change_kind(held->mode, true, file->mode, file->tampered) == KS_CHANGE_RAISE)
		d->state.tampered = true;
	if (same)
	{
		d->state.generation = held->generation;
		return;
	}
	/* an out-of-band change made while the server was down */
	if (file->generation < 0)
		d->state.generation = (held_ok ? held->generation : 0) + (held_ok || file->mode != KS_DISENGAGED ? 1 : 0);
	d->record = d->state.generation > 0;
	d->state.previous_mode = d->previous;
	if (!ks_is_tamper_source(file->source) && (file->source == NULL || strcmp(file->source, "cli") != 0))
		d->state.source = "file";
	/* our copy must learn the generation we gave it; the shared file keeps its bytes */
	d->write = false;
}

/* Does the file hold exactly the state of a recorded change's mark (written before its commit)? */
static bool
file_is_in_flight(const char *path, List *marks)
{
	char	   *bytes;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	ListCell   *lc;

	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &bytes, &len, problem, sizeof(problem)))
		return false;
	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);

		if (!m->deferred && m->state_len == len && memcmp(m->state, bytes, len) == 0)
			return true;
	}
	return false;
}

/* Raise the decision in place by every mark, until the watcher has settled them. */
static void
raise_by_marks(KsDecision *d, List *marks)
{
	ListCell   *lc;

	foreach(lc, marks)
	{
		KsMark	   *m = (KsMark *) lfirst(lc);

		d->unconfirmed = true;
		d->inplace_mode = Max(d->inplace_mode, (int) m->mode);
		d->inplace_tampered |= m->tampered;
		d->marks_xid = Max(d->marks_xid, m->xid);
	}
}

/* Decide the state to start in from the file, the private copy and the marks. */
static void
decide(KsDecision *d, const char *secret, size_t secretlen)
{
	char		path[MAXPGPATH];
	KsState		file,
				held;
	KsVerdict	fv,
				hv;
	char		fproblem[KS_PROBLEM_LEN],
				hproblem[KS_PROBLEM_LEN],
				mproblem[KS_PROBLEM_LEN];
	bool		held_ok;
	bool		marks_bad;
	List	   *marks;

	ks_state_file_path(path, sizeof(path));
	hv = ks_read_private_copy(secret, secretlen, &held, hproblem, sizeof(hproblem));
	marks = ks_marks_read(&marks_bad, mproblem, sizeof(mproblem));
	fv = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac,
					   ks_recheck_delay, &file, fproblem, sizeof(fproblem));
	held_ok = (hv == KS_FILE_VALID && held.generation >= 0);
	if (held_ok && held.signature)
		d->held_signature = pstrdup(held.signature);

	if (hv == KS_FILE_BAD || (hv == KS_FILE_VALID && !held_ok))
		decide_tampered(d, &held, false, KS_LAST_APPLIED_FILE, hproblem);
	else if (marks_bad)
		decide_tampered(d, &held, held_ok, "a mark of a change in flight", mproblem);
	else if (held_ok && fv != KS_FILE_BAD && fv != KS_FILE_MISSING &&
			 file_is_in_flight(path, marks))
	{
		/*
		 * The state file holds a change in flight at the crash (a raise
		 * writes it before its commit); whether it committed is for the
		 * watcher to tell.  Until then the committed state, raised in place
		 * by the marks; the copy stays.
		 */
		d->state = held;
		d->previous = held.mode;
		d->flags |= held.tampered ? KS_FLAG_TAMPERED : 0;
		if (fv == KS_FILE_UNSIGNED)
			d->flags |= KS_FLAG_UNSIGNED;
	}
	else if (fv == KS_FILE_BAD)
	{
		char		aside[MAXPGPATH];

		/* keep the evidence beside the file, then write a trusted state */
		snprintf(aside, sizeof(aside), "%s.rejected", path);
		(void) rename(path, aside);
		decide_tampered(d, &held, held_ok, "state file", fproblem);
	}
	else if (fv == KS_FILE_MISSING && held_ok)
	{
		/* deleting never releases: keep the mode, rewrite */
		d->previous = held.mode;
		start_state(d, held.mode, held.generation + 1, "tamper",
					"the state file was deleted while the server was down");
		d->record = true;
	}
	else if (fv == KS_FILE_MISSING)
	{
		/* first start: disengaged, as the Python library starts */
		d->previous = KS_NO_MODE;
		start_state(d, KS_DISENGAGED, 0, "startup", NULL);
		d->state.engaged_at = NULL;
	}
	else
	{
		decide_readable(d, &file, &held, held_ok);
		if (fv == KS_FILE_UNSIGNED)
			d->flags |= KS_FLAG_UNSIGNED;
	}
	/* a change in flight may have committed: never below it until the watcher knows */
	if (!marks_bad)
		raise_by_marks(d, marks);
	if (d->state.tampered)
		d->flags |= KS_FLAG_TAMPERED;
}

/*
 * A server starting as a standby, or for a point-in-time recovery, starts
 * in the state it last replayed — the private copy, which redo writes with
 * the primary's bytes — and writes nothing but the state file put back
 * from that copy: replay and then the history decide (standby.c).  Without
 * the copy, or without the secret to check it, the halt, at generation 0
 * so that the first replayed record replaces it (the shared state file is
 * no substitute: anyone may have written it, with any generation).
 */
static void
decide_in_recovery(KsDecision *d, const char *secret, size_t secretlen)
{
	KsState		st;
	char		problem[KS_PROBLEM_LEN];

	d->write = false;
	d->previous = KS_NO_MODE;
	ks_marks_clear();			/* the primary's, copied with a base backup: not ours */
	if (secret == NULL)
		strlcpy(problem, "this standby has no signing secret; copy the primary's", sizeof(problem));
	else if (ks_read_private_copy(secret, secretlen, &st, problem, sizeof(problem)) == KS_FILE_VALID)
	{
		d->state = st;
		d->state.generation = Max(st.generation, 0);
		return;
	}
	decide_tampered(d, &st, false, "recovery", problem);
	d->state.generation = 0;
	d->record = false;			/* a standby records nothing */
	d->write = false;
}

/* Write the decided state: the file (if asked) and always our copy. */
static bool
write_decision(const KsDecision *d, const char *secret, size_t secretlen,
			   char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *release_key;
	size_t		release_keylen;
	int			lockfd = ks_lock_dir(ks_state_dir, problem, problemlen);
	bool		ok = true;
	KsState		st = d->state;

	if (lockfd < 0)
		return false;
	/* a state decided here names the state it replaces, like every file the server writes */
	if (d->write)
		st.replaces = d->held_signature;
	ks_release_key_for_writing(&release_key, &release_keylen);
	ks_state_file_path(path, sizeof(path));
	if (d->write)
		ok = ks_state_write(path, &st, secret, secretlen,
							release_key, release_keylen, problem, problemlen);
	/* changes in flight keep their marks, and the copy its committed state */
	if (ok && !d->unconfirmed)
		ok = ks_state_write(KS_LAST_APPLIED_FILE, &st, secret, secretlen,
							release_key, release_keylen, problem, problemlen);
	/* the single mark of servers before the marks by transaction */
	(void) unlink(KS_IN_FLIGHT_FILE);
	ks_unlock_dir(lockfd);
	return ok;
}

/* Make a directory and its parents, owner-only; true if it exists after. */
static bool
make_dir(const char *dir, char *problem, size_t problemlen)
{
	char	   *copy = pstrdup(dir);

	if (pg_mkdir_p(copy, pg_dir_create_mode) != 0 && errno != EEXIST)
	{
		snprintf(problem, problemlen, "could not create directory \"%s\": %m", dir);
		return false;
	}
	return true;
}

/*
 * The temporary files of writes a crash interrupted, in the directories
 * that are the server's alone: the private one, the marks', and a state
 * directory inside the data directory (never shared, ks_claim_state_dir()).
 */
static void
remove_leftovers(void)
{
	ks_remove_dead_temp_files(KS_PRIVATE_DIR);
	ks_marks_remove_leftovers();
	if (!is_absolute_path(ks_state_dir) && strcmp(ks_state_dir, KS_PRIVATE_DIR) != 0)
		ks_remove_dead_temp_files(ks_state_dir);
}

/*
 * A primary whose state directory is another server's still signs its own
 * changes: the key is in its data directory, not in the shared one.  A
 * raise there takes effect in shared memory and is recorded; only the
 * state file is left to its owner.  A failure shows at the first change.
 */
static void
make_own_secret(void)
{
	char	   *secret;
	size_t		secretlen;
	char		problem[KS_PROBLEM_LEN];

	if (make_dir(KS_PRIVATE_DIR, problem, sizeof(problem)) &&
		ks_secret_load(ks_secret_file, true, &secret, &secretlen, problem, sizeof(problem)))
		pfree(secret);
}

/* Apply a decision to shared memory and say what happened in the log. */
static void
apply(const KsDecision *d)
{
	int64		since = 0;
	TimestampTz at = GetCurrentTimestamp();
	char		reason[sizeof(ks_shared->unrecorded_reason)];

	if (d->state.engaged_at && ks_parse_iso(d->state.engaged_at, &since))
		at = ks_unix_usec_to_timestamptz(since);

	/* cut on a character boundary: a cut character would be recorded */
	ks_clip_utf8(reason, d->state.reason ? d->state.reason : "applied at startup", sizeof(reason));
	SpinLockAcquire(&ks_shared->mutex);
	ks_shared->unrecorded = d->record;
	ks_shared->unconfirmed = d->unconfirmed;
	ks_shared->marks_due = d->unconfirmed;
	ks_shared->marks_before_start = d->marks_xid;
	/* announced by the watcher: what is recorded at start, and nothing older */
	ks_shared->notified_generation = Max(d->state.generation - (d->record ? 1 : 0), 0);
	ks_shared->unrecorded_previous = d->previous == KS_NO_MODE ? KS_DISENGAGED : (KsMode) d->previous;
	strlcpy(ks_shared->unrecorded_reason, reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
	ks_publish(d->state.mode, d->flags, d->state.generation, at,
			   d->state.source ? d->state.source : "startup",
			   d->state.reason, d->state.triggered_by);
	if (d->unconfirmed)
		(void) ks_raise_in_place((KsMode) d->inplace_mode,
								 d->inplace_tampered ? KS_FLAG_TAMPERED : 0,
								 "a change in flight at the crash, not yet confirmed", "killswitch");

	if (KS_WORD_FLAGS(pg_atomic_read_u64(&ks_shared->word)) & KS_FLAG_TAMPERED)
		ereport(WARNING,
				(errmsg("the kill switch state could not be trusted; starting in %s",
						ks_mode_sql_names[d->state.mode]),
				 errdetail("Reason: %s.", d->state.reason),
				 errhint("An administrator can inspect the state and release it with ks_disengage().")));
	else if (d->unconfirmed)
		ereport(LOG,
				(errmsg("the kill switch starts in mode %s until the changes in flight at the crash are confirmed (committed: generation " INT64_FORMAT ", mode %s)",
						ks_mode_sql_names[Max((int) d->state.mode, d->inplace_mode)],
						d->state.generation, ks_mode_sql_names[d->state.mode])));
	else
		ereport(LOG,
				(errmsg("the kill switch starts in mode %s (generation " INT64_FORMAT ")",
						ks_mode_sql_names[d->state.mode], d->state.generation)));
}

/*
 * The state file as the start left it is the server's own (persist.c): it
 * judged or wrote those bytes.  A standby's redo writes without noting.
 */
static void
note_file(bool in_recovery)
{
	char		path[MAXPGPATH];
	char	   *bytes;
	size_t		len = 0;
	char		problem[KS_PROBLEM_LEN];

	if (in_recovery)
	{
		ks_file_unknown();
		return;
	}
	ks_state_file_path(path, sizeof(path));
	if (ks_read_file(path, KS_MAX_FILE_SIZE, &bytes, &len, problem, sizeof(problem)))
		ks_file_written(bytes, len);
	else
		ks_file_written(NULL, 0);	/* only an absent file counts as this */
}

/* Read the state at start and publish it; on any failure, assume the stop. */
void
ks_load_at_startup(void)
{
	MemoryContext ctx = AllocSetContextCreate(TopMemoryContext, "killswitch startup",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldctx = MemoryContextSwitchTo(ctx);
	ResourceOwner oldowner = CurrentResourceOwner;
	ResourceOwner owner;
	KsDecision	d;
	char	   *secret = NULL;
	size_t		secretlen = 0;
	char		problem[KS_PROBLEM_LEN];

	/* the crypto functions register with a resource owner */
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "killswitch startup");
	memset(&d, 0, sizeof(d));
	d.inplace_mode = KS_NO_MODE;

	/* from another server's WAL: marked until the history is adopted (standby.c) */
	ks_shared->from_recovery = ks_recovery_requested();
	if (ks_shared->from_recovery && make_dir(KS_PRIVATE_DIR, problem, sizeof(problem)))
		(void) ks_write_file_durably(KS_RECOVERED_FILE, "", 0, problem, sizeof(problem));

	if (!ks_claim_state_dir(problem, sizeof(problem)))
	{
		KsState		none;

		/* another server's file: neither read nor written; the halt (a standby's replay lifts it) */
		ks_state_init(&none);
		decide_tampered(&d, &none, false, "state directory", problem);
		d.write = false;
		d.record = false;		/* its change could not be written either */
		if (ks_shared->from_recovery)
			d.state.generation = 0;
		else
			make_own_secret();
	}
	else if (ks_shared->from_recovery)
	{
		/* a standby never creates a key nor writes: it follows (standby.c) */
		if (!ks_secret_load(ks_secret_file, false, &secret, &secretlen,
							problem, sizeof(problem)))
			secret = NULL;
		decide_in_recovery(&d, secret, secretlen);
	}
	else if (!make_dir(KS_PRIVATE_DIR, problem, sizeof(problem)) ||
		!make_dir(ks_state_dir, problem, sizeof(problem)) ||
		!ks_secret_load(ks_secret_file, true, &secret, &secretlen,
						problem, sizeof(problem)))
	{
		KsState		none;

		ks_state_init(&none);
		decide_tampered(&d, &none, false, "signing secret", problem);
		d.write = false;		/* nothing could be signed */
	}
	else
	{
		ks_release_key_prepare();
		remove_leftovers();
		decide(&d, secret, secretlen);
		/* the scoped halts (ARCHITECTURE §13): a scope file not to be trusted is tampering */
		if (!ks_scope_file_load(secret, secretlen, problem, sizeof(problem)))
		{
			KsState		held = d.state;

			decide_tampered(&d, &held, true, "scope file", problem);
		}
		if (!write_decision(&d, secret, secretlen, problem, sizeof(problem)))
		{
			KsState		held = d.state;

			decide_tampered(&d, &held, true, "writing the state", problem);
			d.unconfirmed = false;
		}
	}
	apply(&d);
	if (ks_shared->from_recovery && !ks_shared->state_dir_foreign)
	{
		/* beside what was replayed, what was heard ahead of it; then the file put back */
		ks_standby_load_heard(secret, secretlen);
		ks_standby_put_back();
		/* and the scopes it held, until replay brings them (§13 "Standbys") */
		ks_scope_file_load_heard(secret, secretlen);
	}
	note_file(ks_shared->from_recovery);

	owner = CurrentResourceOwner;
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_BEFORE_LOCKS, false, true);
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_LOCKS, false, true);
	ResourceOwnerRelease(owner, RESOURCE_RELEASE_AFTER_LOCKS, false, true);
	/* never delete the current owner (resowner.c asserts it) */
	CurrentResourceOwner = oldowner;
	ResourceOwnerDelete(owner);
	MemoryContextSwitchTo(oldctx);
	MemoryContextDelete(ctx);
}
