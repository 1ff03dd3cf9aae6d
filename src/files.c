/*
 * files.c — plain-file primitives under the state file: bounded reads that
 * refuse links and special files, atomic durable writes that never open
 * the file they replace, the replace that keeps a write that raced it, the
 * signing secret, the writers' lock.  Frontend-safe, like store.c.
 */
#ifndef FRONTEND
#include "postgres.h"
#else
#include "postgres_fe.h"
#endif

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#ifdef FRONTEND
#include "common/logging.h"
#else
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#endif

#include "store.h"

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
			explicit_bzero(buf, got);	/* a secret file's, maybe */
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

#ifdef FRONTEND
#define ks_fsync(fd) fsync(fd)
#else
#define ks_fsync(fd) pg_fsync(fd)	/* honours fsync = off, as durable_rename() did */
#endif

/*
 * Write data to a new file tmp (which must not be in use: it is removed
 * first) with the given mode, and make it durable.
 */
static bool
write_new_file(const char *tmp, const char *data, size_t len, mode_t mode,
			   char *problem, size_t problemlen)
{
	int			fd;
	size_t		done = 0;

	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | PG_BINARY, mode);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not create \"%s\": %s", tmp, strerror(errno));
		return false;
	}
	/* the umask (0077 in the server unless the data directory has group access) must not narrow it */
	if (fchmod(fd, mode) != 0)
	{
		snprintf(problem, problemlen, "could not set the mode of \"%s\": %s", tmp, strerror(errno));
		goto fail;
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
			goto fail;
		}
		done += n;
	}
	if (ks_fsync(fd) != 0)
	{
		snprintf(problem, problemlen, "could not fsync \"%s\": %s", tmp, strerror(errno));
		goto fail;
	}
	if (close(fd) != 0)
	{
		snprintf(problem, problemlen, "could not close \"%s\": %s", tmp, strerror(errno));
		unlink(tmp);
		return false;
	}
	return true;

fail:
	close(fd);
	unlink(tmp);
	return false;
}

/*
 * fsync the directory that holds path, so that a rename in it survives a
 * crash.  Some file systems cannot fsync a directory (EBADF, EINVAL): as
 * core's fsync_fname_ext(), that is no error.
 */
static bool
fsync_parent(const char *path, char *problem, size_t problemlen)
{
	char		dir[MAXPGPATH];
	int			fd;

	strlcpy(dir, path, sizeof(dir));
	get_parent_directory(dir);
	fd = open(dir[0] ? dir : ".", O_RDONLY | O_CLOEXEC | PG_BINARY, 0);
	if (fd < 0)
	{
		snprintf(problem, problemlen, "could not open directory \"%s\": %s",
				 dir[0] ? dir : ".", strerror(errno));
		return false;
	}
	if (ks_fsync(fd) != 0 && errno != EBADF && errno != EINVAL)
	{
		snprintf(problem, problemlen, "could not fsync directory \"%s\": %s",
				 dir[0] ? dir : ".", strerror(errno));
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* This process's temporary file beside path. */
static void
temp_name(const char *path, char *tmp, size_t tmplen)
{
	snprintf(tmp, tmplen, "%s.tmp.%d", path, (int) getpid());
}

/*
 * Remove the temporary files that writers killed mid-write left in dir
 * (<name>.tmp.<pid>, temp_name()), as PostgreSQL removes its own temporary
 * files at start: a crash at any instant must leave nothing that piles up
 * or that a reader takes for something.  Only a file whose writer is gone
 * is removed — one of a process still running (a CLI writing while the
 * server starts) is its writer's.  For the server's private directories
 * only: in a shared directory another host's process IDs mean nothing
 * here.
 */
void
ks_remove_dead_temp_files(const char *dir)
{
	DIR		   *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL)
	{
		const char *tail = strstr(de->d_name, ".tmp.");
		char		path[MAXPGPATH];
		char	   *end;
		long		pid;

		if (tail == NULL || tail == de->d_name)
			continue;
		errno = 0;
		pid = strtol(tail + 5, &end, 10);
		if (errno != 0 || end == tail + 5 || *end != '\0' || pid <= 0)
			continue;
		if (pid != (long) getpid() && (kill((pid_t) pid, 0) == 0 || errno != ESRCH))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		(void) unlink(path);
	}
	closedir(d);
}

/*
 * Write data to path atomically and durably: a temporary file in the same
 * directory with the given mode, fsync, rename, fsync of the directory.
 * The file replaced is never opened (core's durable_rename() opens it for
 * writing to fsync it, which fails for a copy owned by someone else or left
 * read-only, mode 0400): nothing about the old file can stop a write.
 */
static bool
write_durably(const char *path, const char *data, size_t len, mode_t mode,
			  char *problem, size_t problemlen)
{
	char		tmp[MAXPGPATH];

	temp_name(path, tmp, sizeof(tmp));
	if (!write_new_file(tmp, data, len, mode, problem, problemlen))
		return false;
	if (rename(tmp, path) != 0)
	{
		snprintf(problem, problemlen, "could not rename \"%s\" to \"%s\": %s",
				 tmp, path, strerror(errno));
		unlink(tmp);
		return false;
	}
	return fsync_parent(path, problem, problemlen);
}

/* Write a file only its owner may read (the secret, the snapshot, the private files): 0600. */
bool
ks_write_file_durably(const char *path, const char *data, size_t len,
					  char *problem, size_t problemlen)
{
	return write_durably(path, data, len, S_IRUSR | S_IWUSR, problem, problemlen);
}

/*
 * The mode of the state file, which agents outside the server may read:
 * 0600, or 0640 when its directory grants its group read and search
 * access, so that agents in that group can read the state (as core's
 * pg_file_create_mode follows the data directory's group access).  Never
 * wider: others get nothing.
 */
mode_t
ks_shared_file_mode(const char *path)
{
	char		dir[MAXPGPATH];
	struct stat sb;
	mode_t		mode = S_IRUSR | S_IWUSR;

	strlcpy(dir, path, sizeof(dir));
	get_parent_directory(dir);
	if (stat(dir[0] ? dir : ".", &sb) == 0 &&
		(sb.st_mode & (S_IRGRP | S_IXGRP)) == (S_IRGRP | S_IXGRP))
		mode |= S_IRGRP;
	return mode;
}

/* Write the state file (see ks_shared_file_mode()) atomically and durably. */
bool
ks_write_shared_file_durably(const char *path, const char *data, size_t len,
							 char *problem, size_t problemlen)
{
	return write_durably(path, data, len, ks_shared_file_mode(path), problem, problemlen);
}

/* Swap two names in one step; false with errno ENOSYS where that cannot be done. */
static bool
exchange_names(const char *a, const char *b)
{
#if defined(__linux__) && defined(RENAME_EXCHANGE)
	return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0;
#else
	errno = ENOSYS;
	return false;
#endif
}

/* Rename unless the target exists; false with EEXIST if it does. */
static bool
rename_noreplace(const char *from, const char *to)
{
#if defined(__linux__) && defined(RENAME_NOREPLACE)
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return true;
	if (errno != EINVAL && errno != ENOSYS)
		return false;
#endif
	/* no such rename here: a link fails the same way if the target exists */
	if (link(from, to) != 0)
		return false;
	(void) unlink(from);
	return true;
}

/* Does the file at path hold exactly expect (NULL: no file was expected)? */
static bool
holds(const char *path, const char *expect, size_t expect_len)
{
	char	   *bytes;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];

	if (expect == NULL ||
		!ks_read_file(path, KS_MAX_FILE_SIZE, &bytes, &len, problem, sizeof(problem)))
		return false;
	return len == expect_len && memcmp(bytes, expect, len) == 0;
}

/*
 * Keep the file at from (a write that raced a replace) for the watcher, as
 * <state file>.raced.<n>: n grows with time, so that several are judged in
 * the order they were found, and an existing one is never overwritten.
 */
static bool
keep_raced(const char *from, const char *path, char *problem, size_t problemlen)
{
	char		raced[MAXPGPATH];
	struct timeval tv;
	int64		n;

	gettimeofday(&tv, NULL);
	n = (int64) tv.tv_sec * 1000000 + tv.tv_usec;
	for (int tries = 0; tries < 1000; tries++, n++)
	{
		snprintf(raced, sizeof(raced), "%s%s" INT64_FORMAT, path, KS_RACED_SUFFIX, n);
		if (rename_noreplace(from, raced))
			return true;
		if (errno != EEXIST)
			break;
	}
	snprintf(problem, problemlen, "could not keep the write that raced the replace of \"%s\": %s",
			 path, strerror(errno));
	return false;
}

/*
 * Where the file system cannot exchange two names: keep the file to be
 * replaced open across the rename and read it after, so that an in-place
 * write that raced the replace is still found (though a writer that stalls
 * past that read is not).  What it held is kept as a raced file if it is
 * not what the caller expected.
 */
static KsReplaceResult
replace_keeping_open(const char *tmp, const char *path,
					 const char *expect, size_t expect_len,
					 char *problem, size_t problemlen)
{
	struct stat sb;
	char		kept[MAXPGPATH];
	char	   *bytes = NULL;
	size_t		len = 0;
	int			oldfd = open_regular(path, &sb, problem, problemlen);
	bool		raced;

	if (rename(tmp, path) != 0)
	{
		snprintf(problem, problemlen, "could not rename \"%s\" to \"%s\": %s",
				 tmp, path, strerror(errno));
		if (oldfd >= 0)
			close(oldfd);
		unlink(tmp);
		return KS_REPLACE_FAILED;
	}
	if (oldfd < 0)
		return KS_REPLACED;		/* nothing there, or nothing a writer could have written to */
	if (fstat(oldfd, &sb) != 0)
		sb.st_size = 0;
	raced = !read_all(oldfd, &sb, KS_MAX_FILE_SIZE, &bytes, &len, problem, problemlen) ||
		expect == NULL || len != expect_len || memcmp(bytes, expect, len) != 0;
	if (!raced)
		return KS_REPLACED;
	snprintf(kept, sizeof(kept), "%s.kept.%d", path, (int) getpid());
	if (bytes == NULL ||
		!write_new_file(kept, bytes, len, S_IRUSR | S_IWUSR, problem, problemlen) ||
		!keep_raced(kept, path, problem, problemlen))
	{
		unlink(kept);
		return KS_REPLACED_LOST;
	}
	return KS_REPLACED_RACED;
}

/*
 * Replace the state file by one holding data — durably, without ever
 * opening the file replaced for writing (see write_durably()) — and say
 * whether what it replaced was what the caller judged it to hold (expect;
 * NULL: no file).  The two names are exchanged in one step (renameat2
 * RENAME_EXCHANGE), which leaves the exact file replaced under the
 * temporary name: a writer that rewrites in place (the reference library
 * opens with truncate, writes, closes) and opened it before the exchange
 * wrote to that file, not to ours.  So it is read after the exchange, and
 * if it is not what the caller expected it is kept as
 * <path>.raced.<n> — where that writer, still at it or stalled, finishes
 * its write — for the watcher to judge once the writer has finished
 * (ARCHITECTURE §5.7).  Nothing written is lost and nothing is judged here.
 *
 * The caller holds the writers' lock.  Returns KS_REPLACED,
 * KS_REPLACED_RACED (replaced; a raced write kept), KS_REPLACED_LOST
 * (replaced; a raced write could not be kept: *problem says why) or
 * KS_REPLACE_FAILED (nothing replaced: *problem says why).
 */
KsReplaceResult
ks_replace_shared_file(const char *path, const char *data, size_t len,
					   const char *expect, size_t expect_len,
					   char *problem, size_t problemlen)
{
	char		tmp[MAXPGPATH];
	KsReplaceResult result = KS_REPLACED;

	temp_name(path, tmp, sizeof(tmp));
	if (!write_new_file(tmp, data, len, ks_shared_file_mode(path), problem, problemlen))
		return KS_REPLACE_FAILED;
	for (int tries = 0;; tries++)
	{
		if (exchange_names(tmp, path))
		{
			/* tmp now names what path held until this instant */
			if (holds(tmp, expect, expect_len))
				(void) unlink(tmp);
			else if (keep_raced(tmp, path, problem, problemlen))
				result = KS_REPLACED_RACED;
			else
			{
				(void) unlink(tmp);
				result = KS_REPLACED_LOST;
			}
			break;
		}
		if (errno == ENOENT && rename_noreplace(tmp, path))
			break;				/* there was no file to replace */
		if (errno == EEXIST && tries < 3)
			continue;			/* one appeared meanwhile: exchange with it */
		if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
		{
			result = replace_keeping_open(tmp, path, expect, expect_len, problem, problemlen);
			if (result == KS_REPLACE_FAILED)
				return result;
			break;
		}
		snprintf(problem, problemlen, "could not rename \"%s\" to \"%s\": %s",
				 tmp, path, strerror(errno));
		unlink(tmp);
		return KS_REPLACE_FAILED;
	}
	if (!fsync_parent(path, problem, problemlen))
		return KS_REPLACE_FAILED;
	return result;
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

#ifndef FRONTEND
/* A secret's bytes, zeroed when the memory context that holds them goes. */
typedef struct KsSecretBytes
{
	MemoryContextCallback cb;
	char	   *data;
	size_t		len;
} KsSecretBytes;

static void
zero_secret_bytes(void *arg)
{
	KsSecretBytes *s = (KsSecretBytes *) arg;

	explicit_bzero(s->data, s->len);
}

/*
 * The secret, copied into a memory context of its own under the caller's,
 * which zeroes it when it is reset or deleted with its parent (the end of
 * the transaction, of an answer, of a call — after an error too): a server
 * reads the secret on every use and keeps no copy.  A context of its own,
 * with blocks large enough that the copy is a chunk and never a block, so
 * that a caller's pfree() leaves the memory to the context until it goes,
 * and nobody else's allocation can take it before it is zeroed.
 */
static char *
keep_secret(const char *text, size_t len)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "killswitch secret",
											  0, 1024, 64 * 1024);
	KsSecretBytes *s = MemoryContextAlloc(cxt, sizeof(KsSecretBytes));

	s->len = len + 1;
	s->data = MemoryContextAlloc(cxt, s->len);
	memcpy(s->data, text, len);
	s->data[len] = '\0';
	s->cb.func = zero_secret_bytes;
	s->cb.arg = s;
	MemoryContextRegisterResetCallback(cxt, &s->cb);
	return s->data;
}
#endif

/*
 * Done with a secret ks_secret_load() gave: zero its bytes now.  The
 * command also frees them; in the server they stay with their memory
 * context, which zeroes them again when it goes.
 */
void
ks_secret_forget(char *secret, size_t len)
{
	if (secret == NULL)
		return;
	explicit_bzero(secret, len);
#ifdef FRONTEND
	pfree(secret);
#endif
}

/*
 * Load the signing secret: the file's bytes less one trailing newline.
 * With create, a missing file is made from 32 strong random bytes as 64 hex
 * characters, mode 0600.  A secret that others could read is refused (see
 * secret_mode_ok).  The secret's value is never put in a message, and its
 * bytes are zeroed after use (ks_secret_forget(); in the server also when
 * the memory context that holds them goes).
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

		bool		written;

		if (!pg_strong_random(raw, sizeof(raw)))
		{
			snprintf(problem, problemlen, "could not generate a random secret");
			return false;
		}
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", raw[i]);
		hex[64] = '\n';
		written = ks_write_file_durably(path, hex, 65, problem, problemlen);
		explicit_bzero(raw, sizeof(raw));
		explicit_bzero(hex, sizeof(hex));
		if (!written)
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
		pfree(text);
		snprintf(problem, problemlen, "the secret file is empty");
		return false;
	}
#ifndef FRONTEND
	*secret = keep_secret(text, n);
	explicit_bzero(text, n);
	pfree(text);
#else
	*secret = text;
#endif
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

/* How often a waiter tries the writers' lock again; a raise, more often. */
#define KS_LOCK_POLL_MS 10
#define KS_LOCK_RAISE_POLL_MS 2

/*
 * How long a writer that cannot be interrupted waits for the lock before it
 * gives up: the postmaster at start (its caller then fails closed without
 * writing), a backend with interrupts held (the undo at abort).
 */
#define KS_LOCK_BOUNDED_MS 2000

/* How long the command-line tool waits before it gives up, with a message. */
#define KS_LOCK_FRONTEND_MS 10000

/*
 * How long a backend that can be interrupted (a release before its commit)
 * waits at most: its session may end the wait sooner, but anyone who can
 * write the state directory can hold the lock, and a wait that only a
 * cancel ends is a session held by an agent.
 */
#define KS_LOCK_INTERRUPTIBLE_MS 10000

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
			pg_log_info("waiting for the writers' lock \"%s\", held by another writer", path);
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
 * up after KS_LOCK_BOUNDED_MS; one that can, after KS_LOCK_INTERRUPTIBLE_MS.
 * This may throw: the caller closes the descriptor.
 */
static bool
wait_for_lock(int fd, const char *path, char *problem, size_t problemlen)
{
	bool		latch = IsUnderPostmaster && MyLatch != NULL;
	bool		interruptible = latch && INTERRUPTS_CAN_BE_PROCESSED() && !AmStartupProcess();
	int			bound = interruptible ? KS_LOCK_INTERRUPTIBLE_MS : KS_LOCK_BOUNDED_MS;
	TimestampTz start = GetCurrentTimestamp();
	int			r;

	while ((r = try_lock(fd)) == 0)
	{
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), bound))
		{
			snprintf(problem, problemlen,
					 "could not lock \"%s\": another process held it for more than %d ms",
					 path, bound);
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
 * Open the writers' lock file of a state directory, creating it if need
 * be.  Read-only: flock() works on any descriptor, and a descriptor opened
 * for writing would signal IN_CLOSE_WRITE in the watched directory at every
 * close — the watcher of a standby, which takes the lock at every look,
 * would wake itself for ever.  A symbolic link or anything but a regular
 * file is refused.  Returns the descriptor, or -1 with *problem set.
 */
static int
open_lock_file(const char *dir, char *path, size_t pathlen, char *problem, size_t problemlen)
{
	struct stat sb;
	int			fd;

	snprintf(path, pathlen, "%s/%s", dir, KS_LOCK_FILE_NAME);
	fd = open(path, O_RDONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | PG_BINARY,
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
	return fd;
}

/*
 * Take the writers' lock of a state directory (a lock file, flock()), so
 * that the server and the command-line tool never interleave their
 * read-modify-write cycles.  Returns the descriptor to pass to
 * ks_unlock_dir(), or -1 with *problem set.  The wait is interruptible in
 * backends and bounded everywhere else (see wait_for_lock).  A raise does
 * not wait here: see ks_lock_dir_within().
 */
int
ks_lock_dir(const char *dir, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	int			fd;
	bool		ok;

	fd = open_lock_file(dir, path, sizeof(path), problem, problemlen);
	if (fd < 0)
		return -1;
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

/*
 * Take the writers' lock waiting at most wait_ms (0: one try), for a writer
 * that must not wait on whoever holds it — a raise, whose file follows
 * later if the lock is busy (any OS user who can write the state directory
 * can hold it).  Never an error and never interrupted: returns the
 * descriptor, or -1 with *problem set (and errno EWOULDBLOCK if another
 * process holds the lock).
 */
int
ks_lock_dir_within(const char *dir, int wait_ms, char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	struct timeval start,
				now;
	int			fd;
	int			r;

	fd = open_lock_file(dir, path, sizeof(path), problem, problemlen);
	if (fd < 0)
		return -1;
	gettimeofday(&start, NULL);
	while ((r = try_lock(fd)) == 0)
	{
		long		waited;

		gettimeofday(&now, NULL);
		waited = (now.tv_sec - start.tv_sec) * 1000L + (now.tv_usec - start.tv_usec) / 1000;
		if (waited >= wait_ms)
		{
			snprintf(problem, problemlen,
					 "could not lock \"%s\": another process holds it (waited %ld ms of at most %d)",
					 path, waited, wait_ms);
			close(fd);
			errno = EWOULDBLOCK;
			return -1;
		}
		pg_usleep(Min(KS_LOCK_RAISE_POLL_MS, wait_ms - waited) * 1000L);
	}
	if (r < 0)
	{
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
