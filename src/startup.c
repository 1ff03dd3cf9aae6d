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
 * A change written to the state file whose commit was not known at the
 * crash (the mark pg_killswitch/in_flight.json, persist.c) cannot be
 * settled here: the postmaster cannot read the commit log.  The server
 * starts at the higher of that change and the newest committed state —
 * never lower than what committed — and the watcher settles it against the
 * history as soon as it connects (ks_confirm_in_flight()).
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

#include "killswitch.h"

/* What the start decided. */
typedef struct KsDecision
{
	KsState		state;			/* to apply and, if write, to write */
	int			flags;
	bool		write;			/* rewrite the state file and the copy */
	bool		record;			/* a change killswitch.events lacks */
	int			previous;		/* KsMode, or KS_NO_MODE */
	bool		unconfirmed;	/* the state file holds a change in flight */
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
	char		problem[KS_PROBLEM_LEN];

	if (order == KS_OLDER)
	{
		decide_tampered(d, held, true, "replay",
						"the state file is older than the state the server last applied");
		return;
	}
	if (!same && held_ok &&
		(!ks_generation_step_ok(file, held, problem, sizeof(problem)) ||
		 !ks_release_authorized(file, held, ks_is_tamper_source(held->source),
								problem, sizeof(problem))))
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

/* Decide the state to start in from the file and the private copy. */
static void
decide(KsDecision *d, const char *secret, size_t secretlen)
{
	char		path[MAXPGPATH];
	KsState		file,
				held,
				mark;
	KsVerdict	fv,
				hv,
				mv;
	char		fproblem[KS_PROBLEM_LEN],
				hproblem[KS_PROBLEM_LEN],
				mproblem[KS_PROBLEM_LEN];
	bool		held_ok;
	bool		in_flight;

	ks_state_file_path(path, sizeof(path));
	hv = ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file,
					   true, 0, &held, hproblem, sizeof(hproblem));
	mv = ks_state_read(KS_IN_FLIGHT_FILE, secret, secretlen, ks_secret_file,
					   true, 0, &mark, mproblem, sizeof(mproblem));
	fv = ks_state_read(path, secret, secretlen, ks_secret_file, ks_require_hmac,
					   ks_recheck_delay, &file, fproblem, sizeof(fproblem));
	held_ok = (hv == KS_FILE_VALID && held.generation >= 0);
	in_flight = held_ok && mv == KS_FILE_VALID && mark.generation > held.generation;

	if (hv == KS_FILE_BAD || (hv == KS_FILE_VALID && !held_ok))
		decide_tampered(d, &held, false, KS_LAST_APPLIED_FILE, hproblem);
	else if (mv == KS_FILE_BAD)
		decide_tampered(d, &held, held_ok, KS_IN_FLIGHT_FILE, mproblem);
	else if (in_flight && fv != KS_FILE_BAD && fv != KS_FILE_MISSING &&
			 ks_compare_to_held(&file, &mark) == KS_SAME)
	{
		/*
		 * The change in flight reached the state file; whether it committed
		 * is for the watcher to tell.  Until then, the higher of it and the
		 * newest committed state, with its generation; the copy stays.
		 */
		d->state = mark.mode >= held.mode ? mark : held;
		d->state.generation = mark.generation;
		d->previous = held.mode;
		d->unconfirmed = true;
		if (fv == KS_FILE_UNSIGNED)
			d->flags |= KS_FLAG_UNSIGNED;
	}
	else if (fv == KS_FILE_BAD)
	{
		char		aside[MAXPGPATH];

		/* keep the evidence beside the file, then write a trusted state */
		snprintf(aside, sizeof(aside), "%s.rejected", path);
		(void) rename(path, aside);
		/* a change in flight may have committed: never below it */
		if (in_flight)
		{
			held.mode = Max(held.mode, mark.mode);
			held.generation = mark.generation;
		}
		decide_tampered(d, &held, held_ok, "state file", fproblem);
	}
	else if (fv == KS_FILE_MISSING && held_ok)
	{
		/* deleting never releases: keep the mode (or the change in flight's), rewrite */
		if (in_flight)
		{
			held.mode = Max(held.mode, mark.mode);
			held.generation = mark.generation;
		}
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
	if (secret == NULL)
		strlcpy(problem, "this standby has no signing secret; copy the primary's", sizeof(problem));
	else if (ks_state_read(KS_LAST_APPLIED_FILE, secret, secretlen, ks_secret_file, true, 0,
						   &st, problem, sizeof(problem)) == KS_FILE_VALID)
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

	if (lockfd < 0)
		return false;
	ks_release_key_for_writing(&release_key, &release_keylen);
	ks_state_file_path(path, sizeof(path));
	if (d->write)
		ok = ks_state_write(path, &d->state, secret, secretlen,
							release_key, release_keylen, problem, problemlen);
	/* a change in flight keeps its mark and the copy its committed state */
	if (ok && !d->unconfirmed)
		ok = ks_state_write(KS_LAST_APPLIED_FILE, &d->state, secret, secretlen,
							release_key, release_keylen, problem, problemlen);
	if (ok && !d->unconfirmed && unlink(KS_IN_FLIGHT_FILE) != 0 && errno != ENOENT)
		ereport(LOG,
				(errmsg("killswitch: could not remove \"%s\": %m", KS_IN_FLIGHT_FILE)));
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
	ks_shared->unrecorded_previous = d->previous == KS_NO_MODE ? KS_DISENGAGED : (KsMode) d->previous;
	strlcpy(ks_shared->unrecorded_reason, reason, sizeof(ks_shared->unrecorded_reason));
	SpinLockRelease(&ks_shared->mutex);
	ks_publish(d->state.mode, d->flags, d->state.generation, at,
			   d->state.source ? d->state.source : "startup",
			   d->state.reason, d->state.triggered_by);

	if (KS_WORD_FLAGS(pg_atomic_read_u64(&ks_shared->word)) & KS_FLAG_TAMPERED)
		ereport(WARNING,
				(errmsg("killswitch: the state could not be trusted; starting in %s",
						ks_mode_sql_names[d->state.mode]),
				 errdetail("%s", d->state.reason),
				 errhint("An administrator can inspect the state and release it with ks_disengage().")));
	else if (d->unconfirmed)
		ereport(LOG,
				(errmsg("killswitch: starting in mode %s until the change of generation " INT64_FORMAT " written before the crash is confirmed",
						ks_mode_sql_names[d->state.mode], d->state.generation)));
	else
		ereport(LOG,
				(errmsg("killswitch: starting in mode %s (generation " INT64_FORMAT ")",
						ks_mode_sql_names[d->state.mode], d->state.generation)));
}

/* Read the state at start and publish it; on any failure, assume the stop. */
void
ks_load_at_startup(void)
{
	MemoryContext ctx = AllocSetContextCreate(TopMemoryContext, "killswitch startup",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldctx = MemoryContextSwitchTo(ctx);
	ResourceOwner oldowner = CurrentResourceOwner;
	KsDecision	d;
	char	   *secret = NULL;
	size_t		secretlen = 0;
	char		problem[KS_PROBLEM_LEN];

	/* the crypto functions register with a resource owner */
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "killswitch startup");
	memset(&d, 0, sizeof(d));

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
	}
	else if (ks_shared->from_recovery)
	{
		/* a standby never creates a key nor writes: it follows (standby.c) */
		if (!ks_secret_load(ks_secret_file, false, &secret, &secretlen,
							problem, sizeof(problem)))
			secret = NULL;
		decide_in_recovery(&d, secret, secretlen);
		ks_standby_put_back();
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
		decide(&d, secret, secretlen);
		if (!write_decision(&d, secret, secretlen, problem, sizeof(problem)))
		{
			KsState		held = d.state;

			decide_tampered(&d, &held, true, "writing the state", problem);
			d.unconfirmed = false;
		}
	}
	apply(&d);

	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_BEFORE_LOCKS, false, true);
	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_LOCKS, false, true);
	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_AFTER_LOCKS, false, true);
	ResourceOwnerDelete(CurrentResourceOwner);
	CurrentResourceOwner = oldowner;
	MemoryContextSwitchTo(oldctx);
	MemoryContextDelete(ctx);
}
