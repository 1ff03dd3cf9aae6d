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
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/timestamp.h"
#endif

#include "store.h"

#ifdef FRONTEND
#define ks_durable_rename(from, to) durable_rename((from), (to))
#else
#define ks_durable_rename(from, to) durable_rename((from), (to), LOG)
#endif

/*
 * Open a file for reading and say what it is, from the descriptor itself:
 * an lstat() before the open() would let a FIFO or a link be swapped in
 * between the two, and a FIFO would block the reader (the postmaster, the
 * watcher) until someone wrote to it.  O_NONBLOCK makes the open of a FIFO
 * return at once; anything that is not a regular file is refused.
 */
static int
open_regular(const char *path, struct stat *sb, char *problem, size_t problemlen)
{
	int			fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | PG_BINARY, 0);

	if (fd < 0)
	{
		if (errno == ELOOP)
			snprintf(problem, problemlen, "is a symbolic link");
		else
			snprintf(problem, problemlen, "cannot open: %s", strerror(errno));
		return -1;
	}
	if (fstat(fd, sb) != 0)
	{
		snprintf(problem, problemlen, "cannot stat: %s", strerror(errno));
		close(fd);
		return -1;
	}
	if (!S_ISREG(sb->st_mode))
	{
		snprintf(problem, problemlen, S_ISDIR(sb->st_mode) ? "is a directory" :
				 S_ISFIFO(sb->st_mode) ? "is a FIFO, not a regular file" :
				 "is not a regular file");
		close(fd);
		return -1;
	}
	return fd;
}

/* Read all of an open regular file, at most maxlen bytes; closes fd. */
static bool
read_all(int fd, const struct stat *sb, size_t maxlen, char **contents,
		 size_t *len, char *problem, size_t problemlen)
{
	char	   *buf;
	size_t		got = 0;

	if ((size_t) sb->st_size > maxlen)
	{
		snprintf(problem, problemlen, "is too large (%lld bytes; the limit is %zu)",
				 (long long) sb->st_size, maxlen);
		close(fd);
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
 * Read a whole regular file of at most maxlen bytes.  Symbolic links,
 * directories, FIFOs and other non-regular files are refused: the state
 * file is only ever a plain file we or a library renamed into place.
 */
bool
ks_read_file(const char *path, size_t maxlen, char **contents, size_t *len,
			 char *problem, size_t problemlen)
{
	struct stat sb;
	int			fd;

	*contents = NULL;
	*len = 0;
	fd = open_regular(path, &sb, problem, problemlen);
	if (fd < 0)
		return false;
	return read_all(fd, &sb, maxlen, contents, len, problem, problemlen);
}

/*
 * Write data to path atomically and durably: a temporary file in the same
 * directory with the given mode, then durable_rename() (which fsyncs the
 * file, renames it and fsyncs the directory).
 */
static bool
write_durably(const char *path, const char *data, size_t len, mode_t mode,
			  char *problem, size_t problemlen)
{
	char		tmp[MAXPGPATH];
	int			fd;
	size_t		done = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid());
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, mode);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not create \"%s\": %s", tmp, strerror(errno));
		return false;
	}
	/* the umask (0077 in the server unless the data directory has group access) must not narrow it */
	if (fchmod(fd, mode) != 0)
	{
		snprintf(problem, problemlen, "could not set the mode of \"%s\": %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
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

/* Write a file only its owner may read (the secret, the snapshot, the private files): 0600. */
bool
ks_write_file_durably(const char *path, const char *data, size_t len,
					  char *problem, size_t problemlen)
{
	return write_durably(path, data, len, S_IRUSR | S_IWUSR, problem, problemlen);
}

/*
 * Write the state file, which agents outside the server may read: 0600, or
 * 0640 when its directory grants its group read and search access, so that
 * agents in that group can read the state (as core's pg_file_create_mode
 * follows the data directory's group access).  Never wider: others get nothing.
 */
bool
ks_write_shared_file_durably(const char *path, const char *data, size_t len,
							 char *problem, size_t problemlen)
{
	char		dir[MAXPGPATH];
	struct stat sb;
	mode_t		mode = S_IRUSR | S_IWUSR;

	strlcpy(dir, path, sizeof(dir));
	get_parent_directory(dir);
	if (stat(dir[0] ? dir : ".", &sb) == 0 &&
		(sb.st_mode & (S_IRGRP | S_IXGRP)) == (S_IRGRP | S_IXGRP))
		mode |= S_IRGRP;
	return write_durably(path, data, len, mode, problem, problemlen);
}

/*
 * May a secret file with these owner and permissions be trusted?  The rule
 * is core's for ssl_key_file (be-secure-common.c): owned by us or by root;
 * no access for others; group read only when root owns it (a root-managed
 * key shared with the server's group).  A secret others can read lets them
 * sign states, so it is refused rather than used.
 */
static bool
secret_mode_ok(const struct stat *sb, char *problem, size_t problemlen)
{
	if (sb->st_uid != geteuid() && sb->st_uid != 0)
	{
		snprintf(problem, problemlen,
				 "the secret file must be owned by the database user or root (it is owned by uid %u)",
				 (unsigned) sb->st_uid);
		return false;
	}
	if ((sb->st_uid == geteuid() && (sb->st_mode & (S_IRWXG | S_IRWXO))) ||
		(sb->st_uid == 0 && (sb->st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))))
	{
		snprintf(problem, problemlen,
				 "the secret file has group or world access (mode %04o): it must be u=rw (0600) or less "
				 "if owned by the database user, or u=rw,g=r (0640) or less if owned by root",
				 (unsigned) (sb->st_mode & 07777));
		return false;
	}
	return true;
}

/*
 * Load the signing secret: the file's bytes less one trailing newline.
 * With create, a missing file is made from 32 strong random bytes as 64 hex
 * characters, mode 0600.  A secret that others could read is refused (see
 * secret_mode_ok).  The secret's value is never put in a message.
 */
bool
ks_secret_load(const char *path, bool create, char **secret, size_t *len,
			   char *problem, size_t problemlen)
{
	struct stat sb;
	char	   *text;
	size_t		n;
	int			fd;

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
	fd = open_regular(path, &sb, problem, problemlen);
	if (fd < 0)
		return false;
	if (!secret_mode_ok(&sb, problem, problemlen))
	{
		close(fd);
		return false;
	}
	if (!read_all(fd, &sb, 4096, &text, &n, problem, problemlen))
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

/* How often a waiter tries the writers' lock again. */
#define KS_LOCK_POLL_MS 10

/*
 * How long a writer that cannot be interrupted waits for the lock before it
 * gives up: the postmaster at start (its caller then fails closed without
 * writing), a backend with interrupts held (the undo at abort).
 */
#define KS_LOCK_BOUNDED_MS 2000

/* How long the command-line tool waits before it gives up, with a message. */
#define KS_LOCK_FRONTEND_MS 10000

/* Try the lock once: 1 taken, 0 held by another, -1 error (errno set). */
static int
try_lock(int fd)
{
	for (;;)
	{
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 1;
		if (errno == EWOULDBLOCK)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

#ifdef FRONTEND

/* The command-line tool waits a bounded time and says why it waits. */
static bool
wait_for_lock(int fd, const char *path, char *problem, size_t problemlen)
{
	int			r;

	for (int waited = 0;; waited += KS_LOCK_POLL_MS)
	{
		r = try_lock(fd);
		if (r != 0)
			break;
		if (waited == 0)
			fprintf(stderr, "killswitch: waiting for the writers' lock \"%s\", held by another writer\n", path);
		if (waited >= KS_LOCK_FRONTEND_MS)
		{
			snprintf(problem, problemlen,
					 "could not lock \"%s\": another writer held it for %d s; nothing was written",
					 path, KS_LOCK_FRONTEND_MS / 1000);
			return false;
		}
		pg_usleep(KS_LOCK_POLL_MS * 1000L);
	}
	if (r < 0)
	{
		snprintf(problem, problemlen, "could not lock \"%s\": %s", path, strerror(errno));
		return false;
	}
	return true;
}

#else

/*
 * A session's statement_timeout and lock_timeout apply to this wait too.
 * The server takes the lock at commit, and PostgreSQL disarms the
 * statement timeout before a commit (finish_xact_command): without this a
 * commit would wait for an outside holder however short the session asked
 * its statements to be.  The wait raises what the timeout itself would.
 */
static void
check_session_timeouts(TimestampTz start, const char *path)
{
	TimestampTz now;

	if (MyBackendType != B_BACKEND || (StatementTimeout <= 0 && LockTimeout <= 0))
		return;
	now = GetCurrentTimestamp();
	if (LockTimeout > 0 && TimestampDifferenceExceeds(start, now, LockTimeout))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("canceling statement due to lock timeout"),
				 errdetail("Another process held the kill switch writers' lock \"%s\"; nothing was changed.", path)));
	if (StatementTimeout > 0 && TimestampDifferenceExceeds(start, now, StatementTimeout))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling statement due to statement timeout"),
				 errdetail("Another process held the kill switch writers' lock \"%s\"; nothing was changed.", path)));
}

/*
 * The server waits on its latch between tries, so that pg_cancel_backend(),
 * pg_terminate_backend(), statement_timeout and lock_timeout end the wait
 * (the wait shows in pg_stat_activity as wait event "Extension").  A
 * process that cannot be interrupted — the postmaster, which has no latch
 * to wait on and must never hang, a backend holding interrupts (the undo
 * at abort), or the startup process replaying a change on a standby (its
 * interrupts never end this wait, and WAL replay waits behind it) — gives
 * up after KS_LOCK_BOUNDED_MS.  This may throw: the
 * caller closes the descriptor.
 */
static bool
wait_for_lock(int fd, const char *path, char *problem, size_t problemlen)
{
	bool		latch = IsUnderPostmaster && MyLatch != NULL;
	bool		interruptible = latch && INTERRUPTS_CAN_BE_PROCESSED() && !AmStartupProcess();
	TimestampTz start = GetCurrentTimestamp();
	int			r;

	while ((r = try_lock(fd)) == 0)
	{
		if (!interruptible &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), KS_LOCK_BOUNDED_MS))
		{
			snprintf(problem, problemlen,
					 "could not lock \"%s\": another process held it for more than %d ms",
					 path, KS_LOCK_BOUNDED_MS);
			return false;
		}
		if (latch)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 KS_LOCK_POLL_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		else
			pg_usleep(KS_LOCK_POLL_MS * 1000L);
		if (interruptible)
		{
			CHECK_FOR_INTERRUPTS();
			check_session_timeouts(start, path);
		}
	}
	if (r < 0)
	{
		snprintf(problem, problemlen, "could not lock \"%s\": %m", path);
		return false;
	}
	return true;
}

#endif

/*
 * Take the writers' lock of a state directory (a lock file, flock()), so
 * that the server and the command-line tool never interleave their
 * read-modify-write cycles.  Returns the descriptor to pass to
 * ks_unlock_dir(), or -1 with *problem set.  The wait is interruptible in
 * backends and bounded everywhere else (see wait_for_lock).
 */
int
ks_lock_dir(const char *dir, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	struct stat sb;
	int			fd;
	bool		ok;

	snprintf(path, sizeof(path), "%s/%s", dir, KS_LOCK_FILE_NAME);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | PG_BINARY,
			  S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not open \"%s\": %s", path,
				 errno == ELOOP ? "it is a symbolic link" : strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
	{
		snprintf(problem, problemlen, "could not use \"%s\": not a regular file", path);
		close(fd);
		return -1;
	}
#ifdef FRONTEND
	ok = wait_for_lock(fd, path, problem, problemlen);
#else
	PG_TRY();
	{
		ok = wait_for_lock(fd, path, problem, problemlen);
	}
	PG_CATCH();
	{
		close(fd);
		PG_RE_THROW();
	}
	PG_END_TRY();
#endif
	if (!ok)
	{
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
