/*
 * ks_oom.c — an LD_PRELOAD shim for the TAP tests, never built into the
 * extension: one realloc() that fails, in one process, on demand — what a
 * server process meets when memory runs out as it grows an array.  TAP 121
 * makes GetLockStatusData() fail so while it holds every lock-manager
 * partition LWLock, in the watcher's emergency snapshot.
 *
 * While the file named by $KS_OOM_FILE holds "PID MINSIZE", process PID
 * fails its next realloc() of at least MINSIZE bytes (ENOMEM, as malloc
 * does) and renames the file to $KS_OOM_FILE.done: one failure, and the
 * test can see that it came.  Without the file, or in any other process,
 * realloc() is the C library's.
 *
 * Build: make test/shim/ks_oom.so (test-tap builds it).
 */
#define _GNU_SOURCE

/*
 * What the shim puts in front of the C library must be exported: the
 * Makefile compiles it with PGXS's CFLAGS, which from PostgreSQL 16 on hide
 * every symbol not marked (-fvisibility=hidden), and a hidden function
 * interposes nothing.
 */
#define KS_SHIM_EXPORT __attribute__((visibility("default")))

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Below this no realloc() looks at the file: the server makes many small ones. */
#define KS_OOM_FLOOR 4096

/* Is this realloc() of size bytes the one to fail?  If so, say it came. */
static int
fail_this_one(size_t size)
{
	const char *control = getenv("KS_OOM_FILE");
	char		buf[64];
	char		done[4200];
	long		pid;
	unsigned long minsize;
	ssize_t		n;
	int			fd;

	if (size < KS_OOM_FLOOR || control == NULL)
		return 0;
	fd = open(control, O_RDONLY);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	if (sscanf(buf, "%ld %lu", &pid, &minsize) != 2 ||
		pid != (long) getpid() || size < minsize)
		return 0;
	snprintf(done, sizeof(done), "%s.done", control);
	return rename(control, done) == 0;
}

KS_SHIM_EXPORT void *
realloc(void *ptr, size_t size)
{
	static void *(*real_realloc) (void *, size_t) = NULL;
	int			saved = errno;

	if (fail_this_one(size))
	{
		errno = ENOMEM;
		return NULL;
	}
	errno = saved;
	if (real_realloc == NULL)
		real_realloc = dlsym(RTLD_NEXT, "realloc");
	return real_realloc(ptr, size);
}
