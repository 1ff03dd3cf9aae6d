/*
 * claim.c — one state directory, one server (ARCHITECTURE §11).
 *
 * A killswitch.state_dir outside the data directory can be shared by
 * mistake: a standby made with pg_basebackup on the same host inherits
 * postgresql.conf, and so does a copy restored there for a point-in-time
 * recovery.  Two servers writing one state file undo each other's changes
 * and call each other's writes tampering.  So the first server to start
 * names its data directory in the directory's "owner" file; a server that
 * finds it named by another that is running never writes the shared state
 * file, and starts in the halt (a standby's replay replaces that at once).
 * A state directory inside the data directory (the default, relative) is
 * never shared and never claimed.
 *
 * The directory may be one others write to — the agents, in the threat
 * model — so the claim is trusted only as far as it cannot be forged: an
 * owner file this server's OS user wrote and nobody else can read or
 * write, naming a data directory whose postmaster.pid (also ours) names
 * that same directory and a live process we may signal.  Anything else is
 * no claim: the server takes the directory, and says so in the log when
 * the file was there but not trusted.  A foreign directory costs only the
 * file: the state in shared memory is this server's all the same, and a
 * raise takes effect there (the writers hold back from the file,
 * ks_state_dir_ours()).
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"

#include "claim.h"
#include "guc.h"
#include "state.h"
#include "store.h"

#define KS_OWNER_FILE_NAME "owner"

/* What a file of ours holds: the text (NUL-terminated), or why it is not ours. */
typedef enum KsOwnRead
{
	KS_OWN_MISSING,				/* not there (or unreadable): no claim */
	KS_OWN_FOREIGN,				/* there, but not ours alone: no claim, said in the log */
	KS_OWN_READ
} KsOwnRead;

/*
 * Read a regular file of at most maxlen bytes, if this server's OS user
 * owns it and, with private, nobody else has any access to it (0600, as the
 * server writes its claim).  The checks are made on the file opened, so
 * that a rename in between cannot swap it; symbolic links are not
 * followed.
 */
static KsOwnRead
read_own_file(const char *path, bool private, size_t maxlen, char *buf,
			  char *problem, size_t problemlen)
{
	struct stat sb;
	size_t		got = 0;
	int			fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | PG_BINARY, 0);
	if (fd < 0 && errno == ELOOP)
	{
		snprintf(problem, problemlen, "\"%s\" is a symbolic link", path);
		return KS_OWN_FOREIGN;
	}
	if (fd < 0)
		return KS_OWN_MISSING;
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
	{
		snprintf(problem, problemlen, "\"%s\" is not a regular file", path);
		close(fd);
		return KS_OWN_FOREIGN;
	}
	if (sb.st_uid != geteuid())
	{
		snprintf(problem, problemlen, "\"%s\" is owned by user ID %u, not by the server's user",
				 path, (unsigned) sb.st_uid);
		close(fd);
		return KS_OWN_FOREIGN;
	}
	if (private && (sb.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		snprintf(problem, problemlen, "\"%s\" has group or world access (mode %04o)",
				 path, (unsigned) (sb.st_mode & 07777));
		close(fd);
		return KS_OWN_FOREIGN;
	}
	while (got < maxlen)
	{
		ssize_t		n = read(fd, buf + got, maxlen - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	buf[got] = '\0';
	return KS_OWN_READ;
}

/*
 * Is the server of another data directory running?  PostgreSQL's own test
 * of a lock file (CreateLockFile()), and more: its postmaster.pid is ours,
 * its second line names that very directory, and its first a process that
 * kill() can signal (0; EPERM is another user's process, which cannot be a
 * server of ours) and that is neither this postmaster nor its parent.
 */
static bool
other_server_running(const char *datadir)
{
	char		path[MAXPGPATH];
	char		text[2 * MAXPGPATH];
	char		problem[KS_PROBLEM_LEN];
	char	   *line;
	char	   *end;
	long		pid;

	snprintf(path, sizeof(path), "%s/postmaster.pid", datadir);
	if (read_own_file(path, false, sizeof(text) - 1, text, problem, sizeof(problem)) != KS_OWN_READ)
		return false;
	pid = strtol(text, &end, 10);
	if (end == text || *end != '\n')
		return false;
	/* the data directory: the next line (LOCK_FILE_LINE_DATA_DIR) */
	line = end + 1;
	end = strchr(line, '\n');
	if (end == NULL)
		return false;
	*end = '\0';
	if (strcmp(line, datadir) != 0)
		return false;
	return pid > 0 && pid != getpid() && pid != getppid() && kill((pid_t) pid, 0) == 0;
}

/*
 * At postmaster start: claim the state directory for this data directory,
 * unless another running server has.  Never an error; returns false, with
 * a problem, when the directory is another's (ks_shared->state_dir_foreign
 * is then set, and every writer of the shared file holds back).
 */
bool
ks_claim_state_dir(char *problem, size_t problemlen)
{
	char		path[MAXPGPATH];
	char		owner[MAXPGPATH];
	char		why[KS_PROBLEM_LEN];
	char		ignored[KS_PROBLEM_LEN];

	if (!is_absolute_path(ks_state_dir))
		return true;
	snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_OWNER_FILE_NAME);
	switch (read_own_file(path, true, sizeof(owner) - 1, owner, why, sizeof(why)))
	{
		case KS_OWN_READ:
			if (owner[0] != '\0' && strcmp(owner, DataDir) != 0 && other_server_running(owner))
			{
				snprintf(problem, problemlen,
						 "killswitch.state_dir \"%s\" is in use by the server whose data directory is \"%s\"; every server needs its own",
						 ks_state_dir, owner);
				ks_shared->state_dir_foreign = true;
				return false;
			}
			break;
		case KS_OWN_FOREIGN:
			ereport(LOG,
					(errmsg("ignored the claim file of killswitch.state_dir \"%s\": %s", ks_state_dir, why),
					 errdetail("Only a claim written by the server's operating system user, with mode 0600, is trusted; this server claims the directory.")));
			break;
		case KS_OWN_MISSING:
			break;
	}
	(void) ks_write_file_durably(path, DataDir, strlen(DataDir), ignored, sizeof(ignored));
	return true;
}

/* May this server write the shared state file?  If not, why (for an error or the log). */
bool
ks_state_dir_ours(char *problem, size_t problemlen)
{
	if (!ks_shared->state_dir_foreign)
		return true;
	snprintf(problem, problemlen,
			 "killswitch.state_dir \"%s\" is in use by another running server; every server needs its own",
			 ks_state_dir);
	return false;
}
