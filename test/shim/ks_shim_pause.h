/*
 * ks_shim_pause.h — what the pausing LD_PRELOAD shims (ks_pause.c,
 * ks_stat_pause.c) share: which path is theirs, and holding the calling
 * process while a flag file exists beside it.  Each shim is its own
 * library, so the helpers are static here.
 */
#ifndef KS_SHIM_PAUSE_H
#define KS_SHIM_PAUSE_H

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Does path end in target (a "/name"), and fit the buffers below? */
static int
ks_shim_is_target(const char *path, const char *target)
{
	size_t		len = path ? strlen(path) : 0;

	return len >= strlen(target) && strcmp(path + len - strlen(target), target) == 0 &&
		len < 4000;
}

/*
 * If flag_name exists in path's directory: create paused_name there, wait
 * until flag_name is gone (at most 60 s), remove paused_name.  path is one
 * ks_shim_is_target() accepted.
 */
static void
ks_shim_pause(const char *path, const char *flag_name, const char *paused_name)
{
	char		dir[4096];
	char		flag[4200];
	char		paused[4200];
	char	   *slash;
	int			fd;

	strcpy(dir, path);
	slash = strrchr(dir, '/');
	*slash = '\0';
	snprintf(flag, sizeof(flag), "%s/%s", dir[0] ? dir : "/", flag_name);
	snprintf(paused, sizeof(paused), "%s/%s", dir[0] ? dir : "/", paused_name);
	if (access(flag, F_OK) != 0)
		return;
	fd = open(paused, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0)
		close(fd);
	for (int i = 0; i < 6000 && access(flag, F_OK) == 0; i++)
		usleep(10000);
	unlink(paused);
}

#endif							/* KS_SHIM_PAUSE_H */
