/*
 * ks_faults.c — an LD_PRELOAD shim for the TAP tests only: a full disk on
 * demand.  While the file named by $KS_FAULT_FILE exists and holds a
 * string, every open() that would create a file whose path contains that
 * string fails with ENOSPC — what a writer sees when the disk is full.
 * The server is started with LD_PRELOAD pointing at this library; the test
 * writes and removes the control file to start and end the fault.
 *
 *   cc -shared -fPIC -o test/faults/ks_faults.so test/faults/ks_faults.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Does the control file name a pattern this path contains? */
static int
faulty(const char *path, int flags)
{
	const char *control = getenv("KS_FAULT_FILE");
	char		pattern[256];
	ssize_t		n;
	int			fd;
	int			saved = errno;
	static int	(*real_open) (const char *, int, ...) = NULL;

	if (control == NULL || path == NULL || !(flags & O_CREAT))
		return 0;
	if (real_open == NULL)
		real_open = dlsym(RTLD_NEXT, "open");
	fd = real_open(control, O_RDONLY);
	if (fd < 0)
	{
		errno = saved;
		return 0;
	}
	n = read(fd, pattern, sizeof(pattern) - 1);
	close(fd);
	errno = saved;
	if (n <= 0)
		return 0;
	pattern[n] = '\0';
	if (pattern[n - 1] == '\n')
		pattern[n - 1] = '\0';
	return pattern[0] != '\0' && strstr(path, pattern) != NULL;
}

#define SHIM(name) \
int \
name(const char *path, int flags, ...) \
{ \
	static int	(*real) (const char *, int, ...) = NULL; \
	mode_t		mode = 0; \
	if (flags & O_CREAT) \
	{ \
		va_list		ap; \
		va_start(ap, flags); \
		mode = va_arg(ap, int); \
		va_end(ap); \
	} \
	if (real == NULL) \
		real = dlsym(RTLD_NEXT, #name); \
	if (faulty(path, flags)) \
	{ \
		errno = ENOSPC; \
		return -1; \
	} \
	return real(path, flags, mode); \
}

SHIM(open)
SHIM(open64)
