/*
 * dirwatch.h — inotify on the state directory (dirwatch.c).
 */
#ifndef KS_DIRWATCH_H
#define KS_DIRWATCH_H

typedef enum KsDirEvent
{
	KS_DIR_NOTHING,				/* nothing about the state file */
	KS_DIR_WRITING,				/* written to, still open: judge once it settles */
	KS_DIR_CHANGED,				/* replaced, moved, deleted: judge if it looks changed */
	KS_DIR_WRITTEN,				/* written in place and closed: judge now */
	KS_DIR_LOST					/* the watch is gone (directory moved, queue lost) */
} KsDirEvent;
/* What one drain of the directory's events says. */
typedef struct KsDirEvents
{
	KsDirEvent	state;			/* the strongest event about the state file */
	bool		state_writing;	/* its last event: written to and not closed since */
	bool		raced;			/* something happened to a raced file (files.c) */
	bool		raced_closed;	/* a raced file's writer closed it, and wrote nothing since */
} KsDirEvents;
extern int	ks_dirwatch_start(const char *dir, char *problem, size_t problemlen);
extern void ks_dirwatch_drain(int fd, const char *name, KsDirEvents *events);
extern void ks_dirwatch_stop(int fd);

#endif							/* KS_DIRWATCH_H */
