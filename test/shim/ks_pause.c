/*
 * ks_pause.c — an LD_PRELOAD shim for the TAP tests, never built into the
 * extension: it stops a server process just before it replaces the state
 * file, so that a test can make an outside write land between the
 * server's compare and its replace — deterministically
 * (test/t/171_outside_writes.pl).
 *
 * Before any rename (rename, renameat, renameat2) whose target is a path
 * ending in "/kill_switch_state.json": if "pause_replace" exists in the
 * target's directory, the process creates "replace_paused" there and waits
 * until "pause_replace" is gone (at most 60 s), removes "replace_paused",
 * and goes on with the rename.  Without "pause_replace" it does nothing.
 *
 * Build: make test/shim/ks_pause.so (test-tap builds it).
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

#include "ks_shim_pause.h"

#define TARGET "/kill_switch_state.json"

/* Wait while <dir of path>/pause_replace exists, if path is the state file. */
static void
pause_if_asked(const char *path)
{
	if (ks_shim_is_target(path, TARGET))
		ks_shim_pause(path, "pause_replace", "replace_paused");
}

KS_SHIM_EXPORT int
rename(const char *from, const char *to)
{
	static int (*next) (const char *, const char *);

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "rename");
	pause_if_asked(to);
	return next(from, to);
}

KS_SHIM_EXPORT int
renameat(int fromfd, const char *from, int tofd, const char *to)
{
	static int (*next) (int, const char *, int, const char *);

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "renameat");
	pause_if_asked(to);
	return next(fromfd, from, tofd, to);
}

KS_SHIM_EXPORT int
renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags)
{
	static int (*next) (int, const char *, int, const char *, unsigned int);

	if (next == NULL)
		next = dlsym(RTLD_NEXT, "renameat2");
	pause_if_asked(to);
	return next(fromfd, from, tofd, to, flags);
}
