/*
 * keycheck.c — is the signing secret the command holds the server's?
 *
 * A state file signed with another secret is judged tampering by the
 * server, and a file signed with another secret looks tampered to us.  Both
 * are far more often a wrong --secret-file (or a secret copied before a
 * rotation) than an attack, and the files say which it is: each names the
 * key that signed it in key_id, the first 16 hex digits of the secret's
 * SHA-256.  The server's private copy (pg_killswitch/last_applied.json) is
 * written by the server alone, so it is asked first; the state file only
 * when there is no such copy (a state directory given without -D).
 */
#include "postgres_fe.h"

#include "common/logging.h"

#include "cli.h"

/* The key_id a state file names, whether or not its signature holds; NULL if none. */
static char *
named_key_id(const char *path)
{
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	KsJson	   *root;
	const KsJson *kid;

	if (path == NULL || path[0] == '\0' ||
		!ks_read_file(path, KS_MAX_FILE_SIZE, &text, &len, problem, sizeof(problem)))
		return NULL;
	root = ks_json_parse(text, len, problem, sizeof(problem));
	if (root == NULL || root->kind != KSJ_OBJECT)
		return NULL;
	kid = ks_json_get(root, "key_id");
	if (kid == NULL || kid->kind != KSJ_STRING)
		return NULL;
	return pg_strdup(kid->str);
}

/*
 * Is a key named by a file other than ours, and not a retired key kept
 * beside our secret (after a rotation, what the old key signed still
 * verifies)?
 */
static bool
another_key(const char *named, const char *ours, const char *secret_file)
{
	char	   *old;
	size_t		oldlen;

	if (strcmp(named, ours) == 0)
		return false;
	if (!ks_retired_secret(secret_file, named, &old, &oldlen))
		return true;
	ks_secret_forget(old, oldlen);
	return false;
}

/*
 * Is our secret not the one the server signs with?  Fills m with both
 * key_ids and the file that told when it is not; false when it is, or when
 * nothing tells (no file names a key).
 */
bool
ks_cli_secret_mismatch(const char *secret, size_t secretlen, const char *secret_file,
					   const char *last_applied, const char *state_file,
					   KsKeyMismatch *m)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];
	char	   *named;

	memset(m, 0, sizeof(*m));
	if (secret == NULL || !ks_sha256_hex(secret, secretlen, hex))
		return false;
	strlcpy(m->ours, hex, sizeof(m->ours));
	m->secret_file = secret_file;

	if (last_applied != NULL && last_applied[0] != '\0')
	{
		KsState		held;
		char		problem[KS_PROBLEM_LEN];

		/* the server's own copy verifies: the secret is the server's */
		if (ks_state_read(last_applied, secret, secretlen, secret_file, true, 0,
						  &held, problem, sizeof(problem)) == KS_FILE_VALID)
			return false;
		named = named_key_id(last_applied);
		if (named != NULL)
		{
			strlcpy(m->signer, named, sizeof(m->signer));
			m->told_by = last_applied;
			return another_key(named, m->ours, secret_file);
		}
	}
	named = named_key_id(state_file);
	if (named == NULL)
		return false;
	strlcpy(m->signer, named, sizeof(m->signer));
	m->told_by = state_file;
	return another_key(named, m->ours, secret_file);
}

/* Say that the secret is probably not the server's, and what to do. */
void
ks_cli_report_mismatch(const KsKeyMismatch *m, bool writing)
{
	if (writing)
		pg_log_error("will not write the state file: the signing secret \"%s\" is probably not the server's",
					 m->secret_file);
	else
		pg_log_error("could not verify the state file: the signing secret \"%s\" is probably not the server's",
					 m->secret_file);
	pg_log_error_detail("\"%s\" was signed with key %s (its key_id); this secret is key %s.",
						m->told_by, m->signer, m->ours);
	if (writing)
		pg_log_error_hint("The server would judge a file signed with it tampering. Give --secret-file the server's "
						  "killswitch.signing_secret_file (DATADIR/pg_killswitch/signing.key by default).");
	else
		pg_log_error_hint("Give --secret-file the server's killswitch.signing_secret_file "
						  "(DATADIR/pg_killswitch/signing.key by default); after a rotation the old key "
						  "is kept beside it as signing.key.<key_id>.");
}
