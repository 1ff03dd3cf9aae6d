/*
 * files.c — plain-file primitives under the state file: bounded reads that
 * refuse links and special files, atomic durable writes, the signing
 * secret, the writers' lock.  Frontend-safe, like store.c.
 */
#include "ks_base.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef FRONTEND
#include "common/file_utils.h"
#else
#include "storage/fd.h"
#endif

#include "store.h"

#ifdef FRONTEND
#define ks_durable_rename(from, to) durable_rename((from), (to))
#else
#define ks_durable_rename(from, to) durable_rename((from), (to), LOG)
#endif

/*
 * Read a whole regular file of at most maxlen bytes.  Symbolic links,
 * directories and other non-regular files are refused: the state file is
 * only ever a plain file we or a library renamed into place.
 */
bool
ks_read_file(const char *path, size_t maxlen, char **contents, size_t *len,
			 char *problem, size_t problemlen)
{
	struct stat sb;
	int			fd;
	char	   *buf;
	size_t		got = 0;

	*contents = NULL;
	*len = 0;
	if (lstat(path, &sb) != 0)
	{
		snprintf(problem, problemlen, "cannot stat: %s", strerror(errno));
		return false;
	}
	if (S_ISLNK(sb.st_mode))
	{
		snprintf(problem, problemlen, "is a symbolic link");
		return false;
	}
	if (S_ISDIR(sb.st_mode))
	{
		snprintf(problem, problemlen, "is a directory");
		return false;
	}
	if (!S_ISREG(sb.st_mode))
	{
		snprintf(problem, problemlen, "is not a regular file");
		return false;
	}
	if ((size_t) sb.st_size > maxlen)
	{
		snprintf(problem, problemlen, "is too large (%lld bytes; the limit is %zu)",
				 (long long) sb.st_size, maxlen);
		return false;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | PG_BINARY, 0);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "cannot open: %s", strerror(errno));
		return false;
	}
	buf = palloc(maxlen + 1);
	for (;;)
	{
		ssize_t		n = read(fd, buf + got, maxlen + 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			snprintf(problem, problemlen, "cannot read: %s", strerror(errno));
			close(fd);
			pfree(buf);
			return false;
		}
		if (n == 0)
			break;
		got += n;
		if (got > maxlen)
		{
			snprintf(problem, problemlen, "grew past %zu bytes while being read", maxlen);
			close(fd);
			pfree(buf);
			return false;
		}
	}
	close(fd);
	buf[got] = '\0';
	*contents = buf;
	*len = got;
	return true;
}

/*
 * Write data to path atomically and durably: a temporary file in the same
 * directory, created 0600, then durable_rename() (which fsyncs the file,
 * renames it and fsyncs the directory).
 */
bool
ks_write_file_durably(const char *path, const char *data, size_t len,
					  char *problem, size_t problemlen)
{
	char		tmp[MAXPGPATH];
	int			fd;
	size_t		done = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid());
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not create \"%s\": %s", tmp, strerror(errno));
		return false;
	}
	while (done < len)
	{
		ssize_t		n = write(fd, data + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			snprintf(problem, problemlen, "could not write \"%s\": %s", tmp,
					 n < 0 ? strerror(errno) : "no space left");
			close(fd);
			unlink(tmp);
			return false;
		}
		done += n;
	}
	if (close(fd) != 0)
	{
		snprintf(problem, problemlen, "could not close \"%s\": %s", tmp, strerror(errno));
		unlink(tmp);
		return false;
	}
	if (ks_durable_rename(tmp, path) != 0)
	{
		snprintf(problem, problemlen, "could not rename \"%s\" to \"%s\": %s",
				 tmp, path, strerror(errno));
		unlink(tmp);
		return false;
	}
	return true;
}

/*
 * Load the signing secret: the file's bytes less one trailing newline.
 * With create, a missing file is made from 32 strong random bytes as 64 hex
 * characters, mode 0600.  The secret's value is never put in a message.
 */
bool
ks_secret_load(const char *path, bool create, char **secret, size_t *len,
			   char *problem, size_t problemlen)
{
	struct stat sb;
	char	   *text;
	size_t		n;

	*secret = NULL;
	*len = 0;
	if (create && lstat(path, &sb) != 0 && errno == ENOENT)
	{
		uint8		raw[32];
		char		hex[65];

		if (!pg_strong_random(raw, sizeof(raw)))
		{
			snprintf(problem, problemlen, "could not generate a random secret");
			return false;
		}
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", raw[i]);
		hex[64] = '\n';
		if (!ks_write_file_durably(path, hex, 65, problem, problemlen))
			return false;
	}
	if (!ks_read_file(path, 4096, &text, &n, problem, problemlen))
		return false;
	if (n > 0 && text[n - 1] == '\n')
		text[--n] = '\0';
	if (n == 0)
	{
		snprintf(problem, problemlen, "the secret file is empty");
		return false;
	}
	*secret = text;
	*len = n;
	return true;
}

/*
 * A retired secret, kept beside the current one as <secret_file>.<key_id>
 * after a rotation, so that what it signed still verifies.  key_id must be
 * 16 lower-case hex digits: it comes from files we are judging and must not
 * name any other path.
 */
bool
ks_retired_secret(const char *secret_file, const char *key_id,
				  char **secret, size_t *len)
{
	char		path[MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];

	if (strlen(key_id) != 16 || strspn(key_id, "0123456789abcdef") != 16)
		return false;
	snprintf(path, sizeof(path), "%s.%s", secret_file, key_id);
	return ks_secret_load(path, false, secret, len, problem, sizeof(problem));
}

/*
 * Take the writers' lock of a state directory (a lock file, flock()), so
 * that the server and the command-line tool never interleave their
 * read-modify-write cycles.  Returns the descriptor to pass to
 * ks_unlock_dir(), or -1.
 */
int
ks_lock_dir(const char *dir, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	int			fd;

	snprintf(path, sizeof(path), "%s/%s", dir, KS_LOCK_FILE_NAME);
	fd = open(path, O_RDWR | O_CREAT | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not open \"%s\": %s", path, strerror(errno));
		return -1;
	}
	while (flock(fd, LOCK_EX) != 0)
	{
		if (errno == EINTR)
			continue;
		snprintf(problem, problemlen, "could not lock \"%s\": %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Release the writers' lock. */
void
ks_unlock_dir(int fd)
{
	if (fd >= 0)
		close(fd);
}
