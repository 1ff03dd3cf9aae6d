/*
 * main.c — the killswitch command: arguments, help, dispatch.  Works on
 * the state directory with the database down (offline), or through a
 * database connection (-d), or through several at once (fleet.c).  See
 * README "The killswitch command".
 */
#include "postgres_fe.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/logging.h"
#include "getopt_long.h"
#include "mb/pg_wchar.h"

#include "cli.h"

/*
 * Is a text argument UTF-8?  The state file holds UTF-8, and so does what
 * -d sends (client_encoding UTF8): other bytes are refused, not mangled.
 */
static bool
utf8_arg(const char *s, const char *name)
{
	int			len;

	if (s == NULL)
		return true;
	len = strlen(s);
	if (pg_encoding_verifymbstr(PG_UTF8, s, len) == len)
		return true;
	pg_log_error("%s is not valid UTF-8", name);
	return false;
}

/* Print usage. */
static void
usage(const char *progname)
{
	printf("%s changes and inspects the killswitch state.\n\n", progname);
	printf("Usage:\n"
		   "  %s [OPTION]... status [--scope ROLE]\n"
		   "  %s [OPTION]... engage MODE --reason TEXT [--by NAME] [--affected N] [--scope ROLE]\n"
		   "  %s [OPTION]... disengage --reason TEXT [--by NAME] [--scope ROLE]\n"
		   "  %s [OPTION]... verify\n"
		   "  %s [OPTION]... history [--limit N]      (needs -d)\n\n",
		   progname, progname, progname, progname, progname);
	printf("MODE is halt_noncritical, halt_all or emergency.\n\n"
		   "Options:\n"
		   "  -d, --dbname=CONNINFO     work through a database connection; repeat it to\n"
		   "                            apply the command to several clusters in parallel\n"
		   "      --dbname-file=FILE    one CONNINFO a line, as more -d (\"-\": standard input)\n"
		   "  -D, --pgdata=DATADIR      the data directory (default: $PGDATA)\n"
		   "      --state-dir=DIR       the state directory (default: DATADIR/pg_killswitch)\n"
		   "      --secret-file=FILE    the signing secret (default: DATADIR/pg_killswitch/signing.key)\n"
		   "      --release-key-file=FILE  the release key, which disengage needs offline\n"
		   "                            (default: DATADIR/pg_killswitch/release.key)\n"
		   "  -r, --reason=TEXT         why (engage, disengage)\n"
		   "  -b, --by=NAME             who (default: the database role with -d,\n"
		   "                            your user name without)\n"
		   "      --affected=N          how many tasks are affected (engage)\n"
		   "      --scope=ROLE          the scoped halt of ROLE and its members, not the\n"
		   "                            fleet's (status, engage, disengage); offline (-D)\n"
		   "                            ROLE is the role's OID, and status needs -d\n"
		   "  -n, --limit=N             how many events (history)\n"
		   "      --json                print JSON for scripts\n"
		   "      --force               write over a state file that cannot be trusted\n"
		   "      --no-require-hmac     accept an unsigned state file (status, verify)\n"
		   "  -V, --version             print the version\n"
		   "  -?, --help                show this help\n\n"
		   "Exit status: 0 disengaged or done, 2 engaged, 3 tampered, 1 error.\n"
		   "With several clusters, the worst of theirs: 1, then 3, then 2, then 0.\n");
}

/*
 * -D must name a data directory (PG_VERSION is there, as pg_ctl checks):
 * every path the command derives from it would be wrong otherwise, and the
 * first of them found missing (the secret) would be blamed.
 */
static void
require_data_directory(const char *pgdata, bool given)
{
	char		path[MAXPGPATH];
	struct stat sb;

	if (pgdata == NULL || stat(pgdata, &sb) != 0)
		return;					/* require_owner() says it cannot be accessed */
	snprintf(path, sizeof(path), "%s/PG_VERSION", pgdata);
	if (S_ISDIR(sb.st_mode) && stat(path, &sb) == 0)
		return;
	pg_log_error("\"%s\" is not a database cluster directory", pgdata);
	if (given)
		pg_log_error_detail("It has no PG_VERSION file.");
	else
		pg_log_error_detail("It has no PG_VERSION file; the directory comes from the environment variable PGDATA.");
	pg_log_error_hint("Give -D the data directory of the server, or --state-dir and --secret-file "
					  "for a state directory kept elsewhere.");
	exit(KS_EXIT_ERROR);
}

/* The OS user's name, for --by. */
static const char *
os_user(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw ? pw->pw_name : "unknown";
}

/* A user's name for a message, or the number. */
static const char *
user_name(uid_t uid)
{
	struct passwd *pw = getpwuid(uid);

	return pw ? pg_strdup(pw->pw_name) : psprintf("uid %u", (unsigned) uid);
}

/*
 * Offline, the command writes files the server must read and takes the lock
 * the server takes: run by root or by anyone but the directory's owner, it
 * would leave root-owned 0600 files the server cannot read (a tamper
 * verdict, an emergency lost) and a lock file that blocks the server's
 * changes.  So, like pg_ctl and pg_resetwal, it runs only as the owner of
 * the data directory (and of the state directory), or exits.
 */
static void
require_owner(const char *what, const char *dir)
{
	struct stat sb;

	if (dir == NULL)
		return;
	if (stat(dir, &sb) != 0)
	{
		pg_log_error("could not access %s \"%s\": %m", what, dir);
		exit(KS_EXIT_ERROR);
	}
	if (sb.st_uid != geteuid())
	{
		pg_log_error("must be run as the owner of the %s \"%s\" (%s), not as %s",
					 what, dir, user_name(sb.st_uid), user_name(geteuid()));
		pg_log_error_hint("Run it as that user, e.g. \"sudo -u %s killswitch ...\", or use -d to go through the database.",
						  user_name(sb.st_uid));
		exit(KS_EXIT_ERROR);
	}
}

/* Refuse to work on the files as root or as another user than their owner. */
static void
require_owner_offline(const KsOptions *opt, const char *progname)
{
	const char *dir = opt->pgdata ? opt->pgdata : opt->state_dir;
	struct stat sb;

	if (geteuid() == 0)
	{
		pg_log_error("cannot be run as root without -d");
		pg_log_error_hint("Run %s as the operating system user that owns the data directory "
						  "(\"sudo -u %s %s ...\"): files written by root cannot be read by the server.",
						  progname, dir && stat(dir, &sb) == 0 ? user_name(sb.st_uid) : "postgres",
						  progname);
		exit(KS_EXIT_ERROR);
	}
	require_owner("data directory", opt->pgdata);
	require_owner("state directory", opt->state_dir);
}

/* Parse a non-negative integer option or exit. */
static int
count_arg(const char *name, const char *value)
{
	char	   *end;
	long		v = strtol(value, &end, 10);

	if (*value == '\0' || *end != '\0' || v < 0 || v > PG_INT32_MAX)
	{
		pg_log_error("invalid value for %s: \"%s\"", name, value);
		exit(KS_EXIT_ERROR);
	}
	return (int) v;
}

/* The mode an engage asks for, in any case, or exit. */
static int
mode_arg(const char *name)
{
	char	   *lower = pg_strdup(name);
	int			mode;

	for (char *p = lower; *p; p++)
		*p = pg_tolower((unsigned char) *p);
	mode = ks_mode_from_sql_name(lower);
	if (mode == KS_NO_MODE)
	{
		pg_log_error("unknown mode \"%s\"", name);
		pg_log_error_hint("Use halt_noncritical, halt_all or emergency.");
		exit(KS_EXIT_ERROR);
	}
	if (mode == KS_DISENGAGED)
	{
		pg_log_error("cannot engage mode \"disengaged\"");
		pg_log_error_hint("Use \"killswitch disengage\" to release the kill switch.");
		exit(KS_EXIT_ERROR);
	}
	return mode;
}

/*
 * --scope names a role's scoped halt: online for status, engage and
 * disengage; offline (offscope.c) for engage and disengage, which write the
 * scope file for the server to judge.
 */
static void
require_scope_usable(const KsOptions *opt, const char *command)
{
	if (opt->scope == NULL)
		return;
	if (opt->scope[0] == '\0')
	{
		pg_log_error("--scope needs a role name");
		exit(KS_EXIT_ERROR);
	}
	if (opt->command == CMD_VERIFY || opt->command == CMD_HISTORY)
	{
		pg_log_error("cannot use --scope with %s", command);
		pg_log_error_hint("--scope applies to status, engage and disengage; %s covers every scope.", command);
		exit(KS_EXIT_ERROR);
	}
	if (opt->ntargets == 0 && opt->command == CMD_STATUS)
	{
		pg_log_error("status --scope needs a database connection");
		pg_log_error_detail("Offline (-D) the command writes a scope's change to the scope file; the server keeps the scopes in force.");
		pg_log_error_hint("Give -d the server's connection string.");
		exit(KS_EXIT_ERROR);
	}
}

int
main(int argc, char **argv)
{
	static struct option long_options[] = {
		{"dbname", required_argument, NULL, 'd'},
		{"pgdata", required_argument, NULL, 'D'},
		{"state-dir", required_argument, NULL, 1},
		{"secret-file", required_argument, NULL, 2},
		{"reason", required_argument, NULL, 'r'},
		{"by", required_argument, NULL, 'b'},
		{"affected", required_argument, NULL, 3},
		{"limit", required_argument, NULL, 'n'},
		{"json", no_argument, NULL, 4},
		{"force", no_argument, NULL, 5},
		{"no-require-hmac", no_argument, NULL, 6},
		{"release-key-file", required_argument, NULL, 7},
		{"dbname-file", required_argument, NULL, 8},
		{"scope", required_argument, NULL, 9},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, '?'},
		{NULL, 0, NULL, 0}
	};
	KsOptions	opt;
	const char *progname = get_progname(argv[0]);
	const char *command;
	int			c;
	int			ndbname = 0;
	bool		pgdata_given = false;
	bool		dbname_file_given = false;

	pg_logging_init(argv[0]);
	memset(&opt, 0, sizeof(opt));
	opt.require_hmac = true;
	opt.progname = progname;
	opt.pgdata = getenv("PGDATA");

	if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-?") == 0))
	{
		usage(progname);
		exit(KS_EXIT_OK);
	}
	if (argc > 1 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0))
	{
		puts("killswitch 1.0");
		exit(KS_EXIT_OK);
	}

	/* options may come before and after the command (and MODE) */
	while ((c = getopt_long(argc, argv, "d:D:r:b:n:V?", long_options, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				ks_cli_add_target(&opt, optarg, psprintf("-d #%d", ++ndbname));
				break;
			case 'D': opt.pgdata = optarg; pgdata_given = true; break;
			case 1: opt.state_dir = optarg; break;
			case 2: opt.secret_file = optarg; break;
			case 'r': opt.reason = optarg; break;
			case 'b': opt.by = optarg; break;
			case 3: opt.affected = count_arg("--affected", optarg); break;
			case 'n': opt.limit = count_arg("--limit", optarg); break;
			case 4: opt.json = true; break;
			case 5: opt.force = true; break;
			case 6: opt.require_hmac = false; break;
			case 7: opt.release_key_file = optarg; break;
			case 8:
				ks_cli_add_target_file(&opt, optarg);
				dbname_file_given = true;
				break;
			case 9: opt.scope = optarg; break;
			default:
				pg_log_error_hint("Try \"%s --help\" for more information.", progname);
				exit(KS_EXIT_ERROR);
		}
	}
	if (pgdata_given && (ndbname > 0 || dbname_file_given))
	{
		pg_log_error("cannot use -D together with -d or --dbname-file");
		pg_log_error_hint("-D works on one data directory's files; -d goes through a connection, to one or several clusters.");
		exit(KS_EXIT_ERROR);
	}
	if (dbname_file_given && opt.ntargets == 0)
	{
		pg_log_error("--dbname-file names no connection string");
		exit(KS_EXIT_ERROR);
	}
	/* one -d is today's command; a list (or a file, even of one line) is a fleet */
	opt.fleet = opt.ntargets > 1 || dbname_file_given;
	if (opt.ntargets == 1)
		opt.conninfo = opt.targets[0].conninfo;
	if (optind >= argc)
	{
		pg_log_error("no command given");
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
		exit(KS_EXIT_ERROR);
	}
	command = argv[optind++];
	if (strcmp(command, "status") == 0)
		opt.command = CMD_STATUS;
	else if (strcmp(command, "engage") == 0)
	{
		opt.command = CMD_ENGAGE;
		if (optind >= argc)
		{
			pg_log_error("engage needs a MODE");
			exit(KS_EXIT_ERROR);
		}
		opt.mode = mode_arg(argv[optind++]);
	}
	else if (strcmp(command, "disengage") == 0)
		opt.command = CMD_DISENGAGE;
	else if (strcmp(command, "verify") == 0)
		opt.command = CMD_VERIFY;
	else if (strcmp(command, "history") == 0)
		opt.command = CMD_HISTORY;
	else
	{
		pg_log_error("unknown command \"%s\"", command);
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
		exit(KS_EXIT_ERROR);
	}
	if (optind < argc)
	{
		pg_log_error("too many arguments, starting with \"%s\"", argv[optind]);
		exit(KS_EXIT_ERROR);
	}
	if ((opt.command == CMD_ENGAGE || opt.command == CMD_DISENGAGE) &&
		(opt.reason == NULL || opt.reason[0] == '\0'))
	{
		pg_log_error("%s needs --reason", command);
		exit(KS_EXIT_ERROR);
	}
	require_scope_usable(&opt, command);
	/* online, NULL: the server records the session's role (session_user) */
	if (opt.by == NULL && opt.ntargets == 0)
		opt.by = os_user();
	if (!utf8_arg(opt.reason, "--reason") || !utf8_arg(opt.by, "--by") ||
		!utf8_arg(opt.scope, "--scope"))
		exit(KS_EXIT_ERROR);
	if (opt.ntargets == 0)
	{
		require_owner_offline(&opt, progname);
		require_data_directory(opt.pgdata, pgdata_given);
	}

	if (opt.fleet)
		exit(ks_cli_fleet(&opt));
	exit(opt.conninfo ? ks_cli_online(&opt) : ks_cli_offline(&opt));
}
