/*
 * release.c — what an outside file may change (ARCHITECTURE §3, §4): a
 * release from outside the database needs a key agents never hold and must
 * name the state it releases; no file moves the generation far.
 *
 * The shared secret signs the state file so that agents can verify it and
 * engage through it; whoever can check an HMAC can forge one, so the secret
 * cannot also authorize a release.  A second, release-only key
 * (killswitch.release_key_file, created at first start like the secret)
 * signs a file's release_signature.  A file that lowers the mode below the
 * state the server holds (or clears its tamper verdict) is applied only
 * with a valid release_signature and "replaces" naming the state held;
 * otherwise it is tampering.  The server and the killswitch command (which
 * run as the data directory's owner) hold the key; agents do not.
 *
 * Called from the postmaster at start (startup.c) as well as from the
 * watcher: nothing here may throw an error.
 */
#include "postgres.h"

#include "release.h"
#include "state.h"
#include "store.h"

char	   *ks_release_key_file = NULL;

/*
 * Create the release key if it is missing (at start, beside the secret) and
 * say in the log if it cannot be read: the server still runs, but no file
 * can release until it can.
 */
void
ks_release_key_prepare(void)
{
	char	   *key;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];

	if (!ks_secret_load(ks_release_key_file, true, &key, &len, problem, sizeof(problem)))
		ereport(WARNING,
				(errmsg("the kill switch release key cannot be read: %s", problem),
				 errdetail("A state file that lowers the mode will be judged tampering until it can."),
				 errhint("Check the file named by killswitch.release_key_file.")));
}

/*
 * The release key, for the server's own writes: every file the server
 * writes carries a release_signature, so that a release it wrote is never
 * mistaken for a forged one (e.g. after a crash between writing the file
 * and the private copy).  NULL when the key cannot be read: the file is then
 * written without one, which can only make a later judgment stricter.
 */
void
ks_release_key_for_writing(char **key, size_t *len)
{
	char		problem[KS_PROBLEM_LEN];

	if (!ks_secret_load(ks_release_key_file, false, key, len, problem, sizeof(problem)))
	{
		*key = NULL;
		*len = 0;
	}
}

/*
 * Does the file name the state held as the one it replaces?  A release is
 * bound to the state it releases: a saved release names a state that is
 * gone, so it can never be replayed, whatever happens to generations.
 */
static bool
names_held(const KsState *file, const KsState *held, char *why, size_t whylen)
{
	if (file->replaces == NULL)
	{
		snprintf(why, whylen, "it does not name the state it replaces (no \"replaces\")");
		return false;
	}
	if (held->signature == NULL)
	{
		snprintf(why, whylen, "the state held carries no signature for it to name");
		return false;
	}
	if (!ks_hex_equal(file->replaces, held->signature))
	{
		snprintf(why, whylen, "it names another state than the one held in \"replaces\" "
				 "(a release written for an earlier state)");
		return false;
	}
	return true;
}

/*
 * May a file that was read (validly signed, newer than the state held) take
 * effect?  Raising or keeping the mode needs nothing more.  Lowering it, or
 * clearing a tamper verdict the state held (a same-mode file that is no
 * verdict itself), is a release (ARCHITECTURE §3, §5): it needs a valid
 * release_signature, and "replaces" naming the state held.  On false,
 * problem says why, for the tamper verdict.
 */
bool
ks_release_authorized(const KsState *file, const KsState *held, bool held_tampered,
					  char *problem, size_t problemlen)
{
	char	   *key;
	size_t		len;
	char		why[KS_PROBLEM_LEN];
	bool		lowers = file->mode < held->mode;
	const char *what;

	/* a raise (a verdict kept: the file's own, or one from its source) needs nothing */
	if (ks_change_kind(held->mode, held_tampered, file->mode,
					   file->tampered || ks_is_tamper_source(file->source)) == KS_CHANGE_RAISE)
		return true;
	what = lowers ? psprintf("a release (%s to %s)", ks_mode_sql_names[held->mode],
							 ks_mode_sql_names[file->mode])
		: psprintf("a change that would clear the tamper verdict (%s)", ks_mode_sql_names[held->mode]);
	if (!ks_secret_load(ks_release_key_file, false, &key, &len, why, sizeof(why)))
	{
		snprintf(problem, problemlen,
				 "%s that cannot be verified: the release key cannot be read: %s", what, why);
		return false;
	}
	if (!ks_state_release_signed(file, key, len, ks_release_key_file, why, sizeof(why)) ||
		!names_held(file, held, why, sizeof(why)))
	{
		snprintf(problem, problemlen, "%s without the release credential: %s", what, why);
		return false;
	}
	return true;
}

/*
 * How far may an outside file move the generation?  At most
 * KS_GENERATION_STEP_MAX past the state held: a writer holding only the
 * signing secret must not push the generation to the bound (where no
 * change could follow), nor far enough that a file it saved could look
 * newer later.  On false, problem says why, for the tamper verdict.
 */
bool
ks_generation_step_ok(const KsState *file, const KsState *held, char *problem, size_t problemlen)
{
	if (file->generation < 0 || held->generation < 0 ||
		file->generation - held->generation <= KS_GENERATION_STEP_MAX)
		return true;
	snprintf(problem, problemlen,
			 "the file moves the generation from " INT64_FORMAT " to " INT64_FORMAT
			 ", more than %d past the state held",
			 held->generation, file->generation, KS_GENERATION_STEP_MAX);
	return false;
}
