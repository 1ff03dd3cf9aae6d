/*
 * ks_probe — latency probes for the benchmark suite (bench/run), libpq only.
 *
 *   ks_probe push CONNINFO LISTENERS TRIALS ks|notify
 *       LISTENERS connections LISTEN on channel killswitch; another
 *       connection commits ks_engage()/ks_disengage() (ks) or a plain
 *       NOTIFY (notify, the baseline).  Prints, per receipt, milliseconds
 *       from the commit's acknowledgement to the receipt.
 *   ks_probe file CONNINFO TRIALS KILLSWITCH_BIN PGDATA
 *       Runs "killswitch -D PGDATA engage|disengage" (which renames a signed
 *       file into place) while a session polls ks_mode(); prints, per trial,
 *       milliseconds from starting the command to the session seeing it,
 *       and from the rename (seen by inotify on PGDATA/pg_killswitch) to the
 *       session seeing it.
 *   ks_probe inplace CONNINFO TRIALS PYTHON WRITER PGDATA
 *       Runs WRITER (test/python/write_state.py: engages HALT_ALL the way the
 *       reference library writes, in place: truncate, write, close, chmod)
 *       while a session polls ks_mode(); prints, per trial, milliseconds
 *       from the writer's truncate of the file (IN_MODIFY, seen by inotify
 *       on PGDATA/pg_killswitch; its write and close follow within
 *       microseconds) to the session seeing halt_all.  Between trials the
 *       switch is released from SQL.
 *   ks_probe wait CONNINFO WAITERS TRIALS
 *       WAITERS connections sleep in ks_wait(generation); another commits
 *       ks_engage()/ks_disengage() alternately.  Prints, per waiter,
 *       milliseconds from the commit's acknowledgement to its ks_wait()
 *       returning the new generation (the result read on its socket).
 *   ks_probe emergency AGENT_CONNINFO ADMIN_CONNINFO AGENTS TRIALS
 *       AGENTS agent sessions run pg_sleep(); the admin engages emergency;
 *       prints, per trial, milliseconds from the commit's acknowledgement to
 *       the last agent session being gone.
 *
 *   ks_probe engage CONNINFO TRIALS held|plain
 *       The engage's own latency: milliseconds from sending "SELECT
 *       ks_engage('halt_all', ...)" (autocommit) to its commit acknowledged,
 *       per trial; a release follows each (not timed).  With held, another
 *       connection holds an engage in an open transaction, idle, during
 *       each engage (its event then follows, ARCHITECTURE §5.3); with
 *       plain, whatever else runs (the suite's 40 busy agents) is the load.
 *
 * The clock starts late rather than early wherever there is a choice, so
 * every figure is an upper bound on the true latency.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

#define WAIT_LIMIT_MS 5000.0

/* Monotonic milliseconds. */
static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void fail(const char *fmt,...) __attribute__((format(printf, 1, 2), noreturn));

/* Print a message and exit with failure. */
static void
fail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "ks_probe: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* A count from the command line: a whole number from 1 to 100000, or exit. */
static int
count_arg(const char *text, const char *what)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || v < 1 || v > 100000)
		fail("%s must be a whole number from 1 to 100000, not \"%s\"", what, text);
	return (int) v;
}

/* Connect or exit. */
static PGconn *
connect_or_die(const char *conninfo)
{
	PGconn	   *conn = PQconnectdb(conninfo);

	if (PQstatus(conn) != CONNECTION_OK)
		fail("could not connect: %s", PQerrorMessage(conn));
	return conn;
}

/* Run a statement that must succeed; return its first value (or ""), copied. */
static char *
exec_or_die(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);
	char	   *value;

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		fail("\"%s\" failed: %s", sql, PQerrorMessage(conn));
	value = strdup(PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
	PQclear(res);
	return value;
}

/* Bring the switch to a mode from SQL (as a superuser), with a reason. */
static void
set_mode_why(PGconn *admin, bool engage, const char *mode, const char *reason)
{
	char		sql[300];

	if (engage)
		snprintf(sql, sizeof(sql), "SELECT ks_engage('%s', '%s', 'ks_probe')", mode, reason);
	else
		snprintf(sql, sizeof(sql), "SELECT ks_disengage('%s', 'ks_probe')", reason);
	free(exec_or_die(admin, sql));
}

/* Bring the switch to a mode from SQL (as a superuser). */
static void
set_mode(PGconn *admin, bool engage, const char *mode)
{
	set_mode_why(admin, engage, mode, "benchmark");
}

/* push: fan-out latency of the NOTIFY that a change sends at commit. */
static int
probe_push(const char *conninfo, int nlisten, int trials, bool baseline)
{
	PGconn	   *admin = connect_or_die(conninfo);
	PGconn	  **conns = calloc(nlisten, sizeof(PGconn *));
	struct pollfd *fds = calloc(nlisten, sizeof(struct pollfd));
	bool	   *heard = calloc(nlisten, sizeof(bool));

	for (int i = 0; i < nlisten; i++)
	{
		conns[i] = connect_or_die(conninfo);
		free(exec_or_die(conns[i], "LISTEN killswitch"));
		fds[i].fd = PQsocket(conns[i]);
		fds[i].events = POLLIN;
	}
	set_mode(admin, false, NULL);

	for (int t = 0; t < trials; t++)
	{
		int			received = 0;
		double		acked;
		char		marker[40];
		char		sql[100];

		/*
		 * Each trial's notification carries a marker of its own (in the
		 * reason, which the payload repeats), and each listener counts once:
		 * a late notification of the previous change must not stand in for
		 * the slowest receipt of this one.
		 */
		snprintf(marker, sizeof(marker), "[trial %d]", t);
		memset(heard, 0, nlisten * sizeof(bool));
		if (baseline)
		{
			snprintf(sql, sizeof(sql), "NOTIFY killswitch, 'baseline %s'", marker);
			free(exec_or_die(admin, sql));
		}
		else
			set_mode_why(admin, t % 2 == 0, "halt_all", marker);
		acked = now_ms();

		while (received < nlisten && now_ms() - acked < WAIT_LIMIT_MS)
		{
			if (poll(fds, nlisten, 100) < 0 && errno != EINTR)
				fail("poll: %s", strerror(errno));
			for (int i = 0; i < nlisten; i++)
			{
				PGnotify   *n;

				if (!(fds[i].revents & POLLIN))
					continue;
				if (!PQconsumeInput(conns[i]))
					fail("listener lost: %s", PQerrorMessage(conns[i]));
				while ((n = PQnotifies(conns[i])) != NULL)
				{
					if (!heard[i] && strstr(n->extra, marker) != NULL)
					{
						printf("%.3f\n", now_ms() - acked);
						heard[i] = true;
						received++;
					}
					PQfreemem(n);
				}
			}
		}
		if (received < nlisten)
			fail("trial %d: %d of %d listeners heard nothing within %.0f ms",
				 t, nlisten - received, nlisten, WAIT_LIMIT_MS);
	}
	set_mode(admin, false, NULL);
	for (int i = 0; i < nlisten; i++)
		PQfinish(conns[i]);
	PQfinish(admin);
	free(heard);
	free(fds);
	free(conns);
	return 0;
}

/* wait: from a change's commit to each session in ks_wait() returning. */
static int
probe_wait(const char *conninfo, int nwait, int trials)
{
	PGconn	   *admin = connect_or_die(conninfo);
	PGconn	  **conns = calloc(nwait, sizeof(PGconn *));
	struct pollfd *fds = calloc(nwait, sizeof(struct pollfd));

	for (int i = 0; i < nwait; i++)
		conns[i] = connect_or_die(conninfo);
	set_mode(admin, false, NULL);

	for (int t = 0; t < trials; t++)
	{
		int			returned = 0;
		long long	generation;
		double		acked;
		double		started;
		char		marker[40];
		char		sql[200];
		char	   *v;

		v = exec_or_die(admin, "SELECT ks_wait(0, 0)");		/* the current generation */
		generation = atoll(v);
		free(v);
		snprintf(sql, sizeof(sql), "SELECT ks_wait(%lld, %d)", generation, (int) WAIT_LIMIT_MS * 2);
		for (int i = 0; i < nwait; i++)
		{
			if (!PQsendQuery(conns[i], sql))
				fail("could not start a wait: %s", PQerrorMessage(conns[i]));
			fds[i].fd = PQsocket(conns[i]);
			fds[i].events = POLLIN;
		}

		/*
		 * Every waiter asleep on the condition variable before the change:
		 * one still on its way would see the new generation at once and
		 * measure nothing of the wake-up.
		 */
		snprintf(sql, sizeof(sql),
				 "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' "
				 "AND state = 'active' AND query = 'SELECT ks_wait(%lld, %d)'",
				 generation, (int) WAIT_LIMIT_MS * 2);
		started = now_ms();
		for (;;)
		{
			v = exec_or_die(admin, sql);
			if (atoi(v) == nwait)
				break;
			free(v);
			if (now_ms() - started > WAIT_LIMIT_MS)
				fail("trial %d: not all %d sessions are waiting in ks_wait()", t, nwait);
			usleep(5 * 1000);
		}
		free(v);

		snprintf(marker, sizeof(marker), "[trial %d]", t);
		set_mode_why(admin, t % 2 == 0, "halt_all", marker);
		acked = now_ms();

		while (returned < nwait && now_ms() - acked < WAIT_LIMIT_MS)
		{
			if (poll(fds, nwait, 100) < 0 && errno != EINTR)
				fail("poll: %s", strerror(errno));
			for (int i = 0; i < nwait; i++)
			{
				PGresult   *res;
				double		at;

				if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
					continue;
				if (!PQconsumeInput(conns[i]))
					fail("waiter lost: %s", PQerrorMessage(conns[i]));
				if (PQisBusy(conns[i]))
					continue;
				at = now_ms();
				res = PQgetResult(conns[i]);
				if (PQresultStatus(res) != PGRES_TUPLES_OK)
					fail("trial %d: ks_wait() failed: %s", t, PQerrorMessage(conns[i]));
				if (atoll(PQgetvalue(res, 0, 0)) != generation + 1)
					fail("trial %d: ks_wait() returned %s, not the new generation %lld",
						 t, PQgetvalue(res, 0, 0), generation + 1);
				PQclear(res);
				while ((res = PQgetResult(conns[i])) != NULL)
					PQclear(res);
				printf("%.3f\n", at - acked);
				fds[i].fd = -1;
				returned++;
			}
		}
		if (returned < nwait)
			fail("trial %d: %d of %d waiters still waiting after %.0f ms",
				 t, nwait - returned, nwait, WAIT_LIMIT_MS);
	}
	set_mode(admin, false, NULL);
	for (int i = 0; i < nwait; i++)
		PQfinish(conns[i]);
	PQfinish(admin);
	free(fds);
	free(conns);
	return 0;
}

/* Start the killswitch command; return its pid. */
static pid_t
start_command(const char *bin, const char *pgdata, bool engage)
{
	pid_t		pid = fork();

	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0)
	{
		if (freopen("/dev/null", "w", stdout) == NULL)
			_exit(126);
		if (engage)
			execl(bin, bin, "-D", pgdata, "engage", "halt_all",
				  "--reason", "benchmark", "--by", "ks_probe", (char *) NULL);
		else
			execl(bin, bin, "-D", pgdata, "disengage",
				  "--reason", "benchmark", "--by", "ks_probe", (char *) NULL);
		_exit(127);
	}
	return pid;
}

/* Has the state file been renamed into place since the last call?  (Drains the queue.) */
static bool
renamed_into_place(int ifd)
{
	char		buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool		renamed = false;
	ssize_t		len;

	while ((len = read(ifd, buf, sizeof(buf))) > 0)
	{
		for (char *p = buf; p < buf + len;)
		{
			const struct inotify_event *ev = (const struct inotify_event *) p;

			p += sizeof(struct inotify_event) + ev->len;
			if (ev->len > 0 && strcmp(ev->name, "kill_switch_state.json") == 0)
				renamed = true;
		}
	}
	return renamed;
}

/*
 * file: from an out-of-band file write to a session seeing the new mode;
 * two clocks: from starting the command (its start, signing and fsync
 * included), and from the rename itself.  The rename is dated to the last
 * look at the inotify queue that found it empty: before the rename, so
 * both figures are upper bounds.
 */
static int
probe_file(const char *conninfo, int trials, const char *bin, const char *pgdata)
{
	PGconn	   *conn = connect_or_die(conninfo);
	char		dir[4096];
	int			ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);

	snprintf(dir, sizeof(dir), "%s/pg_killswitch", pgdata);
	if (ifd < 0 || inotify_add_watch(ifd, dir, IN_MOVED_TO) < 0)
		fail("cannot watch %s: %s", dir, strerror(errno));
	srandom((unsigned) getpid());
	set_mode(conn, false, NULL);
	for (int t = 0; t < trials; t++)
	{
		bool		engage = t % 2 == 0;
		const char *want = engage ? "halt_all" : "disengaged";
		double		started;
		double		renamed = -1;
		double		empty;
		pid_t		pid;
		int			status;
		bool		seen = false;
		double		at;

		/*
		 * Start at a random point of the watcher's poll cycle: right after
		 * the last trial was seen we would always be just past a look.
		 */
		usleep((useconds_t) (random() % 150000));
		(void) renamed_into_place(ifd);
		started = empty = now_ms();
		pid = start_command(bin, pgdata, engage);

		while (now_ms() - started < WAIT_LIMIT_MS)
		{
			char	   *mode;

			if (renamed < 0)
			{
				if (renamed_into_place(ifd))
					renamed = empty;
				else
					empty = now_ms();
			}
			mode = exec_or_die(conn, "SELECT ks_mode()");
			seen = strcmp(mode, want) == 0;
			free(mode);
			if (seen)
				break;
		}
		at = now_ms();
		if (!seen)
			fail("trial %d: the session did not see %s within %.0f ms", t, want, WAIT_LIMIT_MS);
		if (renamed < 0 && renamed_into_place(ifd))
			renamed = empty;
		if (renamed < 0)
			fail("trial %d: the session saw %s, but no rename of the state file was seen", t, want);
		printf("%.3f %.3f\n", at - started, at - renamed);
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail("trial %d: the killswitch command failed", t);
	}
	close(ifd);
	PQfinish(conn);
	return 0;
}

/* Start the library-like writer (an engage of HALT_ALL); return its pid. */
static pid_t
start_writer(const char *python, const char *writer, const char *pgdata)
{
	pid_t		pid = fork();

	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0)
	{
		char		dir[4096];
		char		key[4200];

		snprintf(dir, sizeof(dir), "%s/pg_killswitch", pgdata);
		snprintf(key, sizeof(key), "%s/signing.key", dir);
		if (freopen("/dev/null", "w", stdout) == NULL)
			_exit(126);
		execl(python, python, writer, dir, key, "HALT_ALL", "benchmark", (char *) NULL);
		_exit(127);
	}
	return pid;
}

/*
 * Has the state file been written to (its truncate, its write) or closed
 * after writing since the last call?  (Drains the queue.)
 */
static bool
written_in_place(int ifd)
{
	char		buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool		closed = false;
	ssize_t		len;

	while ((len = read(ifd, buf, sizeof(buf))) > 0)
	{
		for (char *p = buf; p < buf + len;)
		{
			const struct inotify_event *ev = (const struct inotify_event *) p;

			p += sizeof(struct inotify_event) + ev->len;
			if (ev->len > 0 && strcmp(ev->name, "kill_switch_state.json") == 0 &&
				(ev->mask & (IN_MODIFY | IN_CLOSE_WRITE)))
				closed = true;
		}
	}
	return closed;
}

/*
 * inplace: from an in-place write of the state file (the reference
 * library's way) to a session seeing the new mode.  The clock starts at the
 * writer's first touch of the file — its truncate (IN_MODIFY), dated to the
 * last look at the inotify queue that found it empty — which precedes its
 * write and close by the writer's own few microseconds: an upper bound on
 * the time from the writer finishing.  (Its close alone cannot be the
 * start: the watcher may apply and replace the file between the writer's
 * write and its close, which is then reported under another name.)
 */
static int
probe_inplace(const char *conninfo, int trials, const char *python, const char *writer,
			  const char *pgdata)
{
	PGconn	   *conn = connect_or_die(conninfo);
	char		dir[4096];
	int			ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);

	snprintf(dir, sizeof(dir), "%s/pg_killswitch", pgdata);
	if (ifd < 0 || inotify_add_watch(ifd, dir, IN_MODIFY | IN_CLOSE_WRITE) < 0)
		fail("cannot watch %s: %s", dir, strerror(errno));
	srandom((unsigned) getpid());
	for (int t = 0; t < trials; t++)
	{
		double		started;
		double		closed = -1;
		double		empty;
		pid_t		pid;
		int			status;
		bool		seen = false;
		double		at;

		set_mode(conn, false, NULL);
		/* the release's own rewrite is done, and a random point of the poll cycle */
		usleep((useconds_t) (100000 + random() % 150000));
		(void) written_in_place(ifd);
		started = empty = now_ms();
		pid = start_writer(python, writer, pgdata);
		while (now_ms() - started < WAIT_LIMIT_MS)
		{
			char	   *mode;

			if (closed < 0)
			{
				if (written_in_place(ifd))
					closed = empty;
				else
					empty = now_ms();
			}
			mode = exec_or_die(conn, "SELECT ks_mode()");
			seen = strcmp(mode, "halt_all") == 0;
			free(mode);
			if (seen)
				break;
		}
		at = now_ms();
		if (!seen)
			fail("trial %d: the session did not see halt_all within %.0f ms", t, WAIT_LIMIT_MS);
		if (closed < 0 && written_in_place(ifd))
			closed = empty;
		if (closed < 0)
			fail("trial %d: the session saw halt_all, but the writer's write was not seen", t);
		printf("%.3f\n", at - closed);
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail("trial %d: the writer failed", t);
	}
	set_mode(conn, false, NULL);
	close(ifd);
	PQfinish(conn);
	return 0;
}

/* Has a busy agent session been ended?  (Its pg_sleep() answered early.) */
static bool
session_gone(PGconn *conn)
{
	if (!PQconsumeInput(conn))
		return true;
	return !PQisBusy(conn);
}

/* emergency: from the commit of emergency to the last agent session gone. */
static int
probe_emergency(const char *agent_conninfo, const char *admin_conninfo, int nagents, int trials)
{
	PGconn	   *admin = connect_or_die(admin_conninfo);
	PGconn	  **agents = calloc(nagents, sizeof(PGconn *));
	struct pollfd *fds = calloc(nagents, sizeof(struct pollfd));
	bool	   *gone = calloc(nagents, sizeof(bool));

	set_mode(admin, false, NULL);
	for (int t = 0; t < trials; t++)
	{
		int			ngone = 0;
		double		acked,
					last = 0;

		for (int i = 0; i < nagents; i++)
		{
			agents[i] = connect_or_die(agent_conninfo);
			if (!PQsendQuery(agents[i], "SELECT pg_sleep(60)"))
				fail("could not start an agent's work: %s", PQerrorMessage(agents[i]));
			fds[i].fd = PQsocket(agents[i]);
			fds[i].events = POLLIN;
			gone[i] = false;
		}
		usleep(100 * 1000);		/* every agent is inside pg_sleep() */
		set_mode(admin, true, "emergency");
		acked = now_ms();

		while (ngone < nagents && now_ms() - acked < WAIT_LIMIT_MS)
		{
			if (poll(fds, nagents, 100) < 0 && errno != EINTR)
				fail("poll: %s", strerror(errno));
			for (int i = 0; i < nagents; i++)
			{
				if (gone[i] || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
					continue;
				if (session_gone(agents[i]))
				{
					gone[i] = true;
					fds[i].fd = -1;
					ngone++;
					last = now_ms() - acked;
				}
			}
		}
		if (ngone < nagents)
			fail("trial %d: %d of %d agent sessions still there after %.0f ms",
				 t, nagents - ngone, nagents, WAIT_LIMIT_MS);
		printf("%.3f\n", last);
		for (int i = 0; i < nagents; i++)
			PQfinish(agents[i]);
		set_mode(admin, false, NULL);
	}
	PQfinish(admin);
	return 0;
}

/* engage: from sending an engage to its commit acknowledged, with or without a holder. */
static int
probe_engage(const char *conninfo, int trials, bool held)
{
	PGconn	   *admin = connect_or_die(conninfo);
	PGconn	   *holder = held ? connect_or_die(conninfo) : NULL;

	set_mode(admin, false, NULL);
	for (int t = 0; t < trials; t++)
	{
		double		sent;

		if (held)
		{
			free(exec_or_die(holder, "BEGIN"));
			free(exec_or_die(holder, "SELECT ks_engage('halt_noncritical', 'held open', 'ks_probe')"));
		}
		sent = now_ms();
		free(exec_or_die(admin, "SELECT ks_engage('halt_all', 'engage latency', 'ks_probe')"));
		printf("%.3f\n", now_ms() - sent);
		if (held)
			free(exec_or_die(holder, "ROLLBACK"));
		set_mode(admin, false, NULL);
		usleep((10 + rand() % 40) * 1000);	/* a random point of the load's cycle */
	}
	PQfinish(admin);
	if (holder)
		PQfinish(holder);
	return 0;
}

/* Dispatch on the probe's name. */
int
main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 6 && strcmp(argv[1], "push") == 0)
	{
		if (strcmp(argv[5], "ks") != 0 && strcmp(argv[5], "notify") != 0)
			fail("push measures \"ks\" or \"notify\", not \"%s\"", argv[5]);
		return probe_push(argv[2], count_arg(argv[3], "LISTENERS"),
						  count_arg(argv[4], "TRIALS"), strcmp(argv[5], "notify") == 0);
	}
	if (argc == 5 && strcmp(argv[1], "wait") == 0)
		return probe_wait(argv[2], count_arg(argv[3], "WAITERS"), count_arg(argv[4], "TRIALS"));
	if (argc == 6 && strcmp(argv[1], "file") == 0)
		return probe_file(argv[2], count_arg(argv[3], "TRIALS"), argv[4], argv[5]);
	if (argc == 7 && strcmp(argv[1], "inplace") == 0)
		return probe_inplace(argv[2], count_arg(argv[3], "TRIALS"), argv[4], argv[5], argv[6]);
	if (argc == 6 && strcmp(argv[1], "emergency") == 0)
		return probe_emergency(argv[2], argv[3], count_arg(argv[4], "AGENTS"),
							   count_arg(argv[5], "TRIALS"));
	if (argc == 5 && strcmp(argv[1], "engage") == 0)
	{
		if (strcmp(argv[4], "held") != 0 && strcmp(argv[4], "plain") != 0)
			fail("engage measures \"held\" or \"plain\", not \"%s\"", argv[4]);
		return probe_engage(argv[2], count_arg(argv[3], "TRIALS"), strcmp(argv[4], "held") == 0);
	}
	fprintf(stderr,
			"usage: ks_probe push CONNINFO LISTENERS TRIALS ks|notify\n"
			"       ks_probe wait CONNINFO WAITERS TRIALS\n"
			"       ks_probe file CONNINFO TRIALS KILLSWITCH_BIN PGDATA\n"
			"       ks_probe inplace CONNINFO TRIALS PYTHON WRITER PGDATA\n"
			"       ks_probe emergency AGENT_CONNINFO ADMIN_CONNINFO AGENTS TRIALS\n"
			"       ks_probe engage CONNINFO TRIALS held|plain\n");
	return 2;
}
