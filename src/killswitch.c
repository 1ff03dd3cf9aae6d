/*
 * killswitch.c — module entry: settings, shared memory hooks, transaction
 * callbacks.  Everything works only when preloaded
 * (shared_preload_libraries = 'killswitch'); otherwise every function
 * fails with a clear error and a hint.
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "utils/guc.h"

#include "agents.h"
#include "allowlist.h"
#include "change.h"
#include "compat.h"
#include "enforce.h"
#include "guc.h"
#include "interlock.h"
#include "logins.h"
#include "names.h"
#include "release.h"
#include "running.h"
#include "scope.h"
#include "scopechange.h"
#include "scopemembers.h"
#include "state.h"
#include "tasks.h"
#include "upstream.h"
#include "wal.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *ks_state_dir = NULL;
char	   *ks_secret_file = NULL;
bool		ks_require_hmac = true;
char	   *ks_database = NULL;
int			ks_recheck_delay = 50;
int			ks_poll_interval = 100;
char	   *ks_alert_command = NULL;
int			ks_alert_timeout = 10000;
bool		ks_refuse_agent_logins = false;
int			ks_release_approvals = 1;
int			ks_approval_timeout = 900;

#ifdef KS_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#ifdef KS_HAVE_SHMEM_REQUEST_HOOK
/* shmem_request_hook: reserve our shared memory. */
static void
ks_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	ks_shmem_request();
	ks_running_shmem_request();
	ks_scopes_shmem_request();
}
#endif

/* shmem_startup_hook: create (and, in the postmaster, load) the state. */
static void
ks_shmem_startup_hook(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	/* before the state, whose loading may publish a raise (running.c) */
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ks_running_shmem_startup();
	ks_scopes_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
	ks_shmem_startup();
}

/* Define the killswitch.* settings. */
static void
define_settings(void)
{
	DefineCustomStringVariable("killswitch.state_dir",
							   "Directory of the state file kill_switch_state.json.",
							   "Relative paths are relative to the data directory. Share it with agents outside the database.",
							   &ks_state_dir, KS_PRIVATE_DIR,
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.signing_secret_file",
							   "File holding the secret that signs the state file and the events.",
							   "Created with a random secret at first start. Relative paths are relative to the data directory.",
							   &ks_secret_file, KS_PRIVATE_DIR "/signing.key",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.release_key_file",
							   "File holding the release key, which a state file needs to lower the mode.",
							   "Created with a random key at first start. Give it to administrators' tools only, never to agents. Relative paths are relative to the data directory.",
							   &ks_release_key_file, KS_PRIVATE_DIR "/release.key",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomBoolVariable("killswitch.require_hmac",
							 "Treat an unsigned or wrongly signed state file as tampered.",
							 "Turn off only for setups without a secret; the choice shows in ks_status() and in every event.",
							 &ks_require_hmac, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.database",
							   "The one database that holds the kill switch's history.",
							   NULL,
							   &ks_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.recheck_delay",
							"Pause before reading a bad-looking state file again.",
							"A writer that rewrites the file in place may be caught mid-write; only a second bad read counts.",
							&ks_recheck_delay, 50, 0, 5000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.poll_interval",
							"How often the watcher looks at the state file.",
							"A look is one stat() when nothing changed.",
							&ks_poll_interval, 100, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.task",
							   "The task this session claims to be doing.",
							   "An agent session may write in halt_noncritical and halt_all when its task is in killswitch.critical_tasks and granted to its role in killswitch.task_grants.",
							   &ks_session_task, "",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.alert_command",
							   "Shell command run when the kill switch enters emergency.",
							   "The details are in environment variables KS_MODE, KS_REASON, KS_EVENT_ID, KS_TRIGGERED_BY, ...; never in the command text.",
							   &ks_alert_command, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.alert_timeout",
							"How long alert_command may run before it is killed.",
							NULL,
							&ks_alert_timeout, 10000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("killswitch.refuse_agent_logins",
							 "In emergency, refuse the logins of agent roles.",
							 "Off by default: logged-in agents can do nothing in emergency (every statement is refused with KS001), and a pooler whose server logins are refused leaves its clients hanging and turns them away after the release. Turn on only when agents never connect through a pooler.",
							 &ks_refuse_agent_logins, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.reserved_connections",
							"Connection slots agents may not take, kept for the roles that operate the kill switch.",
							"An agent login is refused when fewer than superuser_reserved_connections plus this many slots would remain, so that members of killswitch_operator and killswitch_admin can always connect and engage.",
							&ks_reserved_connections, 3, 0, MAX_BACKENDS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("killswitch.allowed_functions",
							   "Volatile functions a halted agent may still call, besides the reviewed built-ins.",
							   "Schema-qualified names, comma-separated (every overload of each); for functions known to change nothing.",
							   &ks_allowed_functions, "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   ks_check_allowed_functions, ks_assign_allowed_functions, NULL);
	DefineCustomIntVariable("killswitch.release_approvals",
							"How many different administrators a release needs.",
							"With 2, a release by one administrator is recorded as a request and takes effect when a second confirms it.",
							&ks_release_approvals, 1, 1, 2,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("killswitch.approval_timeout",
							"How long a release request waits for its second administrator.",
							NULL,
							&ks_approval_timeout, 900, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	/* a standby's link to its upstream (upstream.c) */
	ks_upstream_define_settings();
	MarkGUCPrefixReserved("killswitch");
}

/* Module load. */
void
_PG_init(void)
{
	/*
	 * Without preloading there is no shared state to read; the functions
	 * say so when called (ks_require_loaded), and nothing is half set up.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	define_settings();
	/* standbys replay our records: see wal.c */
	ks_wal_register();

#ifdef KS_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ks_shmem_request_hook;
#else
	ks_shmem_request();
	ks_running_shmem_request();
	ks_scopes_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ks_shmem_startup_hook;

	ks_worker_register();
	ks_agents_init();
	RegisterXactCallback(ks_xact_callback, NULL);
	RegisterSubXactCallback(ks_subxact_callback, NULL);
	ks_scopechange_init();
	ks_scopemembers_init();
	ks_interlock_init();
	/* after ks_xact_callback: callbacks run newest first, the backstop first */
	ks_enforce_init();
	ks_tasks_init();
}
