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
#include <sys/stat.h>

#include "ks_shim_pause.h"

#define TARGET "/kill_switch_scopes.json"

static int	read_since_stat = 0;

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
	if (ks_shim_is_target(path, TARGET) && (flags & O_ACCMODE) == O_RDONLY)
		read_since_stat = 1;
	return next(path, flags, mode);
}

KS_SHIM_EXPORT int
stat(const char *path, struct stat *buf)
{
	static int (*next) (const char *, struct stat *);

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "stat");
	if (ks_shim_is_target(path, TARGET))
	{
		if (read_since_stat)
			ks_shim_pause(path, "pause_stat", "stat_paused");
		read_since_stat = 0;
	}
	return next(path, buf);
}
