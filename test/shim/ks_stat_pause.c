/*
 * ks_stat_pause.c — an LD_PRELOAD shim for test/t/242_scope_outside_stat_race.pl
 * only, never built into the extension: it stops the watcher between a read
 * of the scope file and its next stat() of it (scopefile.c
 * ks_scope_file_is_ours(), whose stat is remembered as "the server's own
 * file"), so that a test can make an outside write land there —
 * deterministically.
 *
 * A process that has opened a path ending in "/kill_switch_scopes.json"
 * and then calls stat() on that path waits, if "pause_stat" exists in its
 * directory: it creates "stat_paused" there and waits until "pause_stat"
 * is gone (at most 60 s), then removes "stat_paused" and goes on.
 */
#define _GNU_SOURCE

#define KS_SHIM_EXPORT __attribute__((visibility("default")))

#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TARGET "/kill_switch_scopes.json"

static int	read_since_stat = 0;

static int
is_target(const char *path)
{
	size_t		len = path ? strlen(path) : 0;

	return len >= strlen(TARGET) && strcmp(path + len - strlen(TARGET), TARGET) == 0 &&
		len < 4000;
}

static void
pause_here(const char *path)
{
	char		dir[4096];
	char		flag[4200];
	char		paused[4200];
	char	   *slash;
	int			fd;

	strcpy(dir, path);
	slash = strrchr(dir, '/');
	*slash = '\0';
	snprintf(flag, sizeof(flag), "%s/pause_stat", dir[0] ? dir : "/");
	snprintf(paused, sizeof(paused), "%s/stat_paused", dir[0] ? dir : "/");
	if (access(flag, F_OK) != 0)
		return;
	fd = open(paused, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0)
		close(fd);
	for (int i = 0; i < 6000 && access(flag, F_OK) == 0; i++)
		usleep(10000);
	unlink(paused);
}

KS_SHIM_EXPORT int
open(const char *path, int flags, ...)
{
	static int (*next) (const char *, int, ...);
	mode_t		mode = 0;

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "open");
	if (flags & O_CREAT)
	{
		va_list		ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (is_target(path) && (flags & O_ACCMODE) == O_RDONLY)
		read_since_stat = 1;
	return next(path, flags, mode);
}

KS_SHIM_EXPORT int
stat(const char *path, struct stat *buf)
{
	static int (*next) (const char *, struct stat *);

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "stat");
	if (is_target(path))
	{
		if (read_since_stat)
			pause_here(path);
		read_since_stat = 0;
	}
	return next(path, buf);
}
