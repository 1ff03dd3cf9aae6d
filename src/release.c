/*
 * release.c — the release credential (ARCHITECTURE §3, §4): a release from
 * outside the database needs a key agents never hold.
 *
 * The shared secret signs the state file so that agents can verify it and
 * engage through it; whoever can check an HMAC can forge one, so the secret
 * cannot also authorize a release.  A second, release-only key
 * (killswitch.release_key_file, created at first start like the secret)
 * signs a file's release_signature.  A file that lowers the mode below the
 * state the server holds is applied only with a valid release_signature;
 * otherwise it is tampering.  The server and the killswitch command (which
 * run as the data directory's owner) hold the key; agents do not.
 *
 * Called from the postmaster at start (startup.c) as well as from the
 * watcher: nothing here may throw an error.
 */
#include "postgres.h"

#include "killswitch.h"

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
				(errmsg("killswitch: the release key cannot be read: %s", problem),
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
 * May a file that was read (validly signed, newer than the state held) take
 * effect?  Raising or keeping the mode needs nothing more; lowering it below
 * held is a release, and needs a valid release_signature.  On false,
 * problem says why, for the tamper verdict.
 */
bool
ks_release_authorized(const KsState *file, KsMode held, char *problem, size_t problemlen)
{
	char	   *key;
	size_t		len;
	char		why[KS_PROBLEM_LEN];

	if (file->mode >= held)
		return true;
	if (!ks_secret_load(ks_release_key_file, false, &key, &len, why, sizeof(why)))
	{
		snprintf(problem, problemlen,
				 "a release (%s to %s) that cannot be verified: the release key cannot be read: %s",
				 ks_mode_sql_names[held], ks_mode_sql_names[file->mode], why);
		return false;
	}
	if (ks_state_release_signed(file, key, len, ks_release_key_file, why, sizeof(why)))
		return true;
	snprintf(problem, problemlen,
			 "a release (%s to %s) without the release credential: %s",
			 ks_mode_sql_names[held], ks_mode_sql_names[file->mode], why);
	return false;
}
