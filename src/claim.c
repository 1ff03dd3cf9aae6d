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
 */
#include "postgres.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"

#include "killswitch.h"

#define KS_OWNER_FILE_NAME "owner"

/* Is the server of another data directory running (its postmaster.pid names a live process)? */
static bool
other_server_running(const char *datadir)
{
	char		path[MAXPGPATH];
	char	   *text;
	size_t		len;
	char		problem[KS_PROBLEM_LEN];
	long		pid;

	snprintf(path, sizeof(path), "%s/postmaster.pid", datadir);
	if (!ks_read_file(path, 4096, &text, &len, problem, sizeof(problem)))
		return false;
	pid = strtol(text, NULL, 10);
	return pid > 0 && (kill((pid_t) pid, 0) == 0 || errno == EPERM);
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
	char	   *owner;
	size_t		len;
	char		ignored[KS_PROBLEM_LEN];

	if (!is_absolute_path(ks_state_dir))
		return true;
	snprintf(path, sizeof(path), "%s/%s", ks_state_dir, KS_OWNER_FILE_NAME);
	if (ks_read_file(path, MAXPGPATH, &owner, &len, ignored, sizeof(ignored)) &&
		len > 0 && strcmp(owner, DataDir) != 0 && other_server_running(owner))
	{
		snprintf(problem, problemlen,
				 "killswitch.state_dir \"%s\" is in use by the server whose data directory is \"%s\"; every server needs its own",
				 ks_state_dir, owner);
		ks_shared->state_dir_foreign = true;
		return false;
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
