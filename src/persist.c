/*
 * persist.c — the server's side of the state file: where it is, the secret
 * that signs it, and writing it (with the server's private copy of the last
 * state it applied) under the writers' lock.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "killswitch.h"

/* Absolute or data-directory-relative path of the state file. */
void
ks_state_file_path(char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", ks_state_dir, KS_STATE_FILE_NAME);
}

/*
 * Read the signing secret.  Read on every use rather than cached, so that
 * a rotated secret takes effect without a restart; changes are rare.
 */
bool
ks_backend_secret(char **secret, size_t *len, char *problem, size_t problemlen)
{
	return ks_secret_load(ks_secret_file, false, secret, len, problem, problemlen);
}

/* Which secret signed: the first 16 hex digits of its SHA-256. */
void
ks_key_id(const char *secret, size_t len, char *buf)
{
	char		hex[KS_HEX_DIGEST_LEN + 1];

	if (!ks_sha256_hex(secret, len, hex))
		strlcpy(hex, "unknown", sizeof(hex));
	strlcpy(buf, hex, 17);
}

/* Read a file's bytes if it exists; NULL otherwise. */
static char *
read_if_present(const char *path, size_t *len)
{
	char	   *data;
	char		problem[KS_PROBLEM_LEN];

	if (!ks_read_file(path, KS_MAX_FILE_SIZE, &data, len, problem, sizeof(problem)))
		return NULL;
	return data;
}

/*
 * Write the state file and the private copy, signed, under the writers'
 * lock.  *saved receives what was there before, for
 * ks_restore_state_file().
 */
bool
ks_persist_state(const KsState *state, KsSaved *saved,
				 char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char	   *secret;
	size_t		secretlen;
	char	   *release_key;
	size_t		release_keylen;
	int			lockfd;
	bool		ok;

	memset(saved, 0, sizeof(KsSaved));

	if (!ks_backend_secret(&secret, &secretlen, problem, problemlen))
		return false;
	ks_release_key_for_writing(&release_key, &release_keylen);
	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_dir(ks_state_dir, problem, problemlen);
	if (lockfd < 0)
		return false;
	saved->state = read_if_present(path, &saved->state_len);
	saved->copy = read_if_present(KS_LAST_APPLIED_FILE, &saved->copy_len);
	ok = ks_state_write(path, state, secret, secretlen, release_key, release_keylen,
						problem, problemlen) &&
		ks_state_write(KS_LAST_APPLIED_FILE, state, secret, secretlen,
					   release_key, release_keylen, problem, problemlen);
	ks_unlock_dir(lockfd);
	return ok;
}

/* Put back both files as ks_persist_state() found them. */
bool
ks_restore_state_file(const KsSaved *saved, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	int			lockfd;
	bool		ok = true;

	ks_state_file_path(path, sizeof(path));
	lockfd = ks_lock_dir(ks_state_dir, problem, problemlen);
	if (lockfd < 0)
		return false;
	if (saved->state)
		ok = ks_write_file_durably(path, saved->state, saved->state_len,
								   problem, problemlen);
	if (ok && saved->copy)
		ok = ks_write_file_durably(KS_LAST_APPLIED_FILE, saved->copy,
								   saved->copy_len, problem, problemlen);
	ks_unlock_dir(lockfd);
	return ok;
}
