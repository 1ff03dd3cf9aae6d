/*
 * dirwatch.c — seeing the state file change at once (inotify on Linux), so
 * that a file written by the CLI or the Python library is judged within
 * milliseconds instead of at the next poll.  The watcher keeps polling as a
 * fallback: where inotify is missing or fails, or for changes it cannot see
 * (a directory on a network file system).
 *
 * The directory is watched, not the file: the CLI and the server replace
 * the file by rename, which a watch on the file itself would lose.
 */
#include "postgres.h"

#include <unistd.h>
#ifdef __linux__
#include <fcntl.h>
#include <sys/inotify.h>
#endif

#include "dirwatch.h"
#include "store.h"

#ifdef __linux__

/*
 * What the state file's events mean: written in place and closed; replaced,
 * moved away, deleted, its mode changed; or a writer still at it.
 */
#define KS_WRITTEN_MASK IN_CLOSE_WRITE
#define KS_CHANGED_MASK (IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB)
#define KS_WRITING_MASK (IN_CREATE | IN_MODIFY)
/* The directory itself went away, or the kernel dropped events. */
#define KS_LOST_MASK (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)

/* Watch dir; the inotify descriptor (non-blocking), or -1 with the problem. */
int
ks_dirwatch_start(const char *dir, char *problem, size_t problemlen)
{
	int			fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);

	if (fd < 0)
	{
		snprintf(problem, problemlen, "inotify_init1 failed: %m");
		return -1;
	}
	if (inotify_add_watch(fd, dir, KS_WRITTEN_MASK | KS_CHANGED_MASK | KS_WRITING_MASK |
						  IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) < 0)
	{
		snprintf(problem, problemlen, "could not watch directory \"%s\": %m", dir);
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Read every pending event and say what they mean for the file called name
 * and for the raced files beside it (files.c): the strongest event about
 * the file (lost > written > changed > writing > nothing), and whether its
 * last event leaves a writer at it — written to (IN_MODIFY, IN_CREATE) and
 * not closed or replaced since.  A writer that rewrites in place (the
 * Python library: open with truncate, write, close) shows as writing from
 * its truncate until it closes the file; a half-written file is judged only
 * once it is closed.  A raced file was put there by a replace, not by its
 * writer: only the writer's close says it has finished.  Events add to
 * *events, which the caller clears.
 */
void
ks_dirwatch_drain(int fd, const char *name, KsDirEvents *events)
{
	char		buf[4096] pg_attribute_aligned(__alignof__(struct inotify_event));
	char		raced[NAMEDATALEN + 32];

	snprintf(raced, sizeof(raced), "%s%s", name, KS_RACED_SUFFIX);
	for (;;)
	{
		ssize_t		len = read(fd, buf, sizeof(buf));

		if (len < 0 && errno == EINTR)
			continue;
		if (len <= 0)
			break;				/* EAGAIN: drained */
		for (char *p = buf; p < buf + len;)
		{
			const struct inotify_event *ev = (const struct inotify_event *) p;
			bool		writing = (ev->mask & KS_WRITING_MASK) &&
				!(ev->mask & (KS_WRITTEN_MASK | KS_CHANGED_MASK));

			p += sizeof(struct inotify_event) + ev->len;
			if (ev->mask & KS_LOST_MASK)
				events->state = KS_DIR_LOST;
			else if (ev->mask & IN_Q_OVERFLOW)
			{
				/* events lost: look at everything */
				events->state = Max(events->state, KS_DIR_WRITTEN);
				events->raced = true;
			}
			else if (ev->len == 0)
				continue;
			else if (strcmp(ev->name, name) == 0)
			{
				if (ev->mask & KS_WRITTEN_MASK)
					events->state = Max(events->state, KS_DIR_WRITTEN);
				else if (ev->mask & KS_CHANGED_MASK)
					events->state = Max(events->state, KS_DIR_CHANGED);
				else if (ev->mask & KS_WRITING_MASK)
					events->state = Max(events->state, KS_DIR_WRITING);
				events->state_writing = writing;
			}
			else if (strncmp(ev->name, raced, strlen(raced)) == 0)
			{
				/* kept there by a replace, not by its writer: only a close finishes it */
				events->raced = true;
				if (ev->mask & KS_WRITTEN_MASK)
					events->raced_closed = true;
				else if (ev->mask & IN_MODIFY)
					events->raced_closed = false;
			}
			/* anything else: the lock, a temporary file, the snapshot */
		}
	}
}

/* Stop watching. */
void
ks_dirwatch_stop(int fd)
{
	if (fd >= 0)
		close(fd);
}

#else							/* !__linux__ */

/* No inotify here: the watcher polls. */
int
ks_dirwatch_start(const char *dir, char *problem, size_t problemlen)
{
	snprintf(problem, problemlen, "inotify is not available on this platform");
	return -1;
}

/* Never called without a descriptor. */
void
ks_dirwatch_drain(int fd, const char *name, KsDirEvents *events)
{
}

/* Nothing to stop. */
void
ks_dirwatch_stop(int fd)
{
}

#endif							/* __linux__ */
