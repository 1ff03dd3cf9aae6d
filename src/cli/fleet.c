/*
 * fleet.c — the killswitch command on several clusters at once: every -d
 * and every line of --dbname-file gets the same command, in parallel; each
 * cluster's result is printed labelled by the cluster, and the exit status
 * is the worst of theirs.  See README "The killswitch command".
 *
 * Each cluster is worked on by a child process of its own that runs exactly
 * what one -d runs (online.c), while the parent only collects the children's
 * output with poll() and waits for them.  Why processes and not libpq's
 * asynchronous API in one loop: PQconnectPoll ignores connect_timeout (the
 * caller would have to re-implement it, per host as libpq does) and resolves
 * host names with a blocking getaddrinfo(), so one cluster whose name server
 * hangs would stall all the others; PQsetClientEncoding is synchronous too.
 * A process per cluster keeps libpq's own timeout, multi-host and service
 * file handling, isolates the clusters from each other completely, and keeps
 * one code path for one cluster and for many (pg_dump -j does the same on
 * Unix).  A fleet is tens or hundreds of clusters: a process each is cheap.
 */
#include "postgres_fe.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/jsonapi.h"
#include "common/logging.h"
#include "common/string.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"

#include "cli.h"
#include "compat.h"

/*
 * How many clusters are worked on at once, at most (fewer if the open-file
 * limit is low: the parent holds two pipes a child); the others start as
 * these finish.
 */
#define KS_FLEET_MAX_PARALLEL 128

/* One cluster's child process and what it printed. */
typedef struct KsChild
{
	pid_t		pid;			/* 0 until started */
	int			fd[2];			/* read ends of its stdout, stderr; -1: closed */
	StringInfoData text[2];		/* what it printed on each */
	int			rc;				/* its exit status; -1 until known */
	bool		reported;		/* its result has been printed */
} KsChild;

/* Add one connection string to the command's list of clusters. */
void
ks_cli_add_target(KsOptions *opt, const char *conninfo, const char *origin)
{
	KsTarget   *t;

	opt->targets = pg_realloc(opt->targets, (opt->ntargets + 1) * sizeof(KsTarget));
	t = &opt->targets[opt->ntargets++];
	t->conninfo = conninfo;
	t->origin = origin;
	t->label = NULL;
}

/*
 * Add every connection string in a file (or standard input for "-"): one a
 * line, surrounding blanks ignored, blank lines and lines starting with "#"
 * skipped.  A "#" later in a line is part of the connection string (a
 * password may hold one).  Exits if the file cannot be read.
 */
void
ks_cli_add_target_file(KsOptions *opt, const char *path)
{
	bool		is_stdin = strcmp(path, "-") == 0;
	FILE	   *f = is_stdin ? stdin : fopen(path, "r");
	StringInfoData line;
	int			lineno = 0;

	if (f == NULL)
	{
		pg_log_error("could not open connection file \"%s\": %m", path);
		exit(KS_EXIT_ERROR);
	}
	initStringInfo(&line);
	while (pg_get_line_buf(f, &line))
	{
		char	   *p = line.data;
		char	   *end = line.data + line.len;

		lineno++;
		while (*p && isspace((unsigned char) *p))
			p++;
		while (end > p && isspace((unsigned char) end[-1]))
			*--end = '\0';
		if (*p == '\0' || *p == '#')
			continue;
		ks_cli_add_target(opt, pg_strdup(p),
						  psprintf("%s:%d", is_stdin ? "stdin" : path, lineno));
	}
	if (ferror(f))
	{
		pg_log_error("could not read connection file \"%s\": %m", path);
		exit(KS_EXIT_ERROR);
	}
	if (!is_stdin)
		fclose(f);
	pfree(line.data);
}

/* Append a label's value, control characters as "?" (a label is one line). */
static void
append_clean(StringInfo s, const char *value)
{
	for (const char *p = value; *p; p++)
		appendStringInfoChar(s, (unsigned char) *p < 0x20 || *p == 0x7F ? '?' : *p);
}

/*
 * How the output names a cluster: the service, host, address, port and
 * database its connection string gives — never its password or any other
 * member — or, when it gives none of them, where it was given.  Exits on a
 * connection string libpq cannot parse, before any cluster is touched.
 */
static char *
target_label(const KsTarget *t)
{
	static const char *const shown[] = {"service", "host", "hostaddr", "port", "dbname"};
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(t->conninfo, &err);
	StringInfoData s;

	if (opts == NULL)
	{
		pg_log_error("invalid connection string (%s): %s", t->origin,
					 err ? err : "out of memory");
		pg_log_error_detail("No cluster was changed.");
		exit(KS_EXIT_ERROR);
	}
	initStringInfo(&s);
	for (size_t i = 0; i < lengthof(shown); i++)
		for (PQconninfoOption *o = opts; o->keyword; o++)
			if (strcmp(o->keyword, shown[i]) == 0 && o->val && o->val[0])
			{
				appendStringInfo(&s, "%s%s=", s.len ? " " : "", o->keyword);
				append_clean(&s, o->val);
			}
	PQconninfoFree(opts);
	if (s.len == 0)
		appendStringInfoString(&s, t->origin);
	return s.data;
}

/* Label every cluster; two with the same label also say where they were given. */
static void
label_targets(KsTarget *targets, int n)
{
	bool	   *dup = pg_malloc0(n * sizeof(bool));

	for (int i = 0; i < n; i++)
		targets[i].label = target_label(&targets[i]);
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (strcmp(targets[i].label, targets[j].label) == 0)
				dup[i] = dup[j] = true;
	for (int i = 0; i < n; i++)
		if (dup[i])
			targets[i].label = psprintf("%s (%s)", targets[i].label, targets[i].origin);
	pg_free(dup);
}

/* How many children may run at once, within the open-file limit. */
static int
max_parallel(int n)
{
	struct rlimit rl;
	int			limit = KS_FLEET_MAX_PARALLEL;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
	{
		/* stdio and a few spare for libpq in the parent; two a child */
		rlim_t		room = rl.rlim_cur > 18 ? (rl.rlim_cur - 16) / 2 : 1;

		if (room < (rlim_t) limit)
			limit = (int) room;
	}
	return Min(limit, n);
}

/*
 * Start the child for cluster i: its stdout and stderr go into two pipes;
 * it runs the one-cluster command and exits with its status.  If the child
 * cannot be started, the cluster has failed (the others go on).
 */
static void
start_child(const KsOptions *opt, KsChild *children, int i)
{
	KsChild    *c = &children[i];
	int			out[2] = {-1, -1};
	int			err[2] = {-1, -1};

	if (pipe(out) != 0 || pipe(err) != 0)
	{
		appendStringInfo(&c->text[1], "error: could not create a pipe: %m\n");
		goto fail;
	}
	fflush(stdout);
	fflush(stderr);
	c->pid = fork();
	if (c->pid < 0)
	{
		appendStringInfo(&c->text[1], "error: could not start a process: %m\n");
		goto fail;
	}
	if (c->pid == 0)
	{
		KsOptions	one = *opt;

		for (int j = 0; j < opt->ntargets; j++)
			for (int k = 0; k < 2; k++)
				if (children[j].fd[k] >= 0)
					close(children[j].fd[k]);
		close(out[0]);
		close(err[0]);
		if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(err[1], STDERR_FILENO) < 0)
			_exit(KS_EXIT_ERROR);
		if (out[1] > STDERR_FILENO)
			close(out[1]);
		if (err[1] > STDERR_FILENO)
			close(err[1]);
		one.conninfo = opt->targets[i].conninfo;
		one.fleet = false;
		exit(ks_cli_online(&one));
	}
	close(out[1]);
	close(err[1]);
	c->fd[0] = out[0];
	c->fd[1] = err[0];
	return;

fail:
	for (int k = 0; k < 2; k++)
	{
		if (out[k] >= 0)
			close(out[k]);
		if (err[k] >= 0)
			close(err[k]);
	}
	c->pid = 0;
	c->rc = KS_EXIT_ERROR;
}

/* Read what a child printed on one pipe; close it at its end. */
static void
read_pipe(KsChild *c, int k)
{
	char		buf[8192];
	ssize_t		r = read(c->fd[k], buf, sizeof(buf));

	if (r > 0)
		appendBinaryStringInfo(&c->text[k], buf, r);
	else if (r == 0 || (errno != EINTR && errno != EAGAIN))
	{
		close(c->fd[k]);
		c->fd[k] = -1;
	}
}

/*
 * Drop the program's name from the start of each line of a child's errors:
 * the parent puts the cluster's label there instead.
 */
static void
strip_progname(StringInfo err, const char *progname)
{
	StringInfoData s;
	size_t		plen = strlen(progname);
	const char *p = err->data;

	initStringInfo(&s);
	while (*p)
	{
		size_t		len = strcspn(p, "\n");

		if (len > plen + 1 && strncmp(p, progname, plen) == 0 && strncmp(p + plen, ": ", 2) == 0)
			appendBinaryStringInfo(&s, p + plen + 2, len - plen - 2);
		else
			appendBinaryStringInfo(&s, p, len);
		appendStringInfoChar(&s, '\n');
		p += len;
		if (*p == '\n')
			p++;
	}
	pfree(err->data);
	*err = s;
}

/* Collect the exit status of a child that has closed both pipes. */
static void
reap_child(KsChild *c)
{
	int			status;

	while (waitpid(c->pid, &status, 0) < 0)
	{
		if (errno != EINTR)
		{
			appendStringInfo(&c->text[1], "error: could not wait for its process: %m\n");
			c->rc = KS_EXIT_ERROR;
			return;
		}
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) <= KS_EXIT_TAMPERED)
		c->rc = WEXITSTATUS(status);
	else
	{
		if (WIFSIGNALED(status))
			appendStringInfo(&c->text[1], "error: its process was terminated by signal %d\n",
							 WTERMSIG(status));
		c->rc = KS_EXIT_ERROR;
	}
}

/* Print text line by line, each after the cluster's label. */
static void
print_labelled(FILE *f, const char *label, const char *text)
{
	while (*text)
	{
		size_t		len = strcspn(text, "\n");

		fprintf(f, "[%s] %.*s\n", label, (int) len, text);
		text += len;
		if (*text == '\n')
			text++;
	}
	fflush(f);
}

/*
 * The order of exit statuses from best to worst: 0 (disengaged, done), 2
 * (engaged, or a release only requested), 3 (tampered), 1 (an error: on
 * that cluster the change did not happen, or the state could not be read).
 * An error is worst: a script must never mistake a cluster the command did
 * not reach for one it did, whatever the others say.
 */
static int
badness(int rc)
{
	switch (rc)
	{
		case KS_EXIT_OK:
			return 0;
		case KS_EXIT_ENGAGED:
			return 1;
		case KS_EXIT_TAMPERED:
			return 2;
		default:
			return 3;
	}
}

/* Is this text one JSON document? */
static bool
is_json(const char *text, int len)
{
	JsonLexContext *lex;

	if (len == 0)
		return false;
	lex = ks_make_json_lex(unconstify(char *, text), len);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * --json: one JSON array, in the order the clusters were given, of
 * {"cluster": label, "exit": status, "result": what one -d prints with
 * --json (null when it printed nothing), "error": its error text or null}.
 */
static void
print_json(const KsOptions *opt, KsChild *children)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "[");
	for (int i = 0; i < opt->ntargets; i++)
	{
		KsChild    *c = &children[i];
		StringInfo	out = &c->text[0];
		StringInfo	err = &c->text[1];

		while (out->len > 0 && isspace((unsigned char) out->data[out->len - 1]))
			out->data[--out->len] = '\0';
		while (err->len > 0 && err->data[err->len - 1] == '\n')
			err->data[--err->len] = '\0';
		appendStringInfoString(&s, i ? ",\n" : "\n");
		appendStringInfoString(&s, "{\"cluster\":");
		ks_json_append_string(&s, opt->targets[i].label);
		appendStringInfo(&s, ",\"exit\":%d,\"result\":", c->rc);
		if (is_json(out->data, out->len))
			appendBinaryStringInfo(&s, out->data, out->len);
		else
		{
			/* never happens unless a child died mid-write: keep what it said */
			if (out->len > 0)
				appendStringInfo(err, "%s%s", err->len ? "\n" : "", out->data);
			appendStringInfoString(&s, "null");
		}
		appendStringInfoString(&s, ",\"error\":");
		if (err->len > 0)
			ks_json_append_string(&s, err->data);
		else
			appendStringInfoString(&s, "null");
		appendStringInfoString(&s, "}");
	}
	appendStringInfoString(&s, "\n]\n");
	fputs(s.data, stdout);
	pfree(s.data);
}

/*
 * The online command on every cluster of the list, in parallel.  Without
 * --json, each cluster's result is printed as soon as it is known (so a
 * slow or unreachable cluster holds back no other's), every line after the
 * cluster's label; errors go to stderr the same way.  With --json, stdout
 * gets one array once all are known.  Returns the worst exit status.
 */
int
ks_cli_fleet(const KsOptions *opt)
{
	int			n = opt->ntargets;
	KsChild    *children = pg_malloc0(n * sizeof(KsChild));
	struct pollfd *fds = pg_malloc(2 * n * sizeof(struct pollfd));
	int		   *owner = pg_malloc(2 * n * sizeof(int));
	int			parallel = max_parallel(n);
	int			next = 0,
				running = 0,
				finished = 0,
				failed = 0,
				worst = KS_EXIT_OK;

	/* every connection string parses, or nothing is touched */
	label_targets(opt->targets, n);

	for (int i = 0; i < n; i++)
	{
		children[i].fd[0] = children[i].fd[1] = -1;
		children[i].rc = -1;
		initStringInfo(&children[i].text[0]);
		initStringInfo(&children[i].text[1]);
	}

	while (finished < n)
	{
		int			nfds = 0;

		while (running < parallel && next < n)
		{
			start_child(opt, children, next);
			if (children[next].pid > 0)
				running++;
			next++;
		}

		/* poll the pipes of the running children */
		for (int i = 0; i < n; i++)
			for (int k = 0; k < 2; k++)
				if (children[i].fd[k] >= 0)
				{
					fds[nfds].fd = children[i].fd[k];
					fds[nfds].events = POLLIN;
					owner[nfds++] = i * 2 + k;
				}
		if (nfds > 0 && poll(fds, nfds, -1) < 0)
		{
			if (errno == EINTR)
				continue;
			pg_log_error("poll() failed: %m");
			exit(KS_EXIT_ERROR);
		}
		for (int f = 0; f < nfds; f++)
			if (fds[f].revents != 0)
				read_pipe(&children[owner[f] / 2], owner[f] % 2);

		/* a child that closed both pipes has ended (or is ending): report it */
		for (int i = 0; i < next; i++)
		{
			KsChild    *c = &children[i];

			if (c->reported || c->fd[0] >= 0 || c->fd[1] >= 0)
				continue;
			if (c->rc < 0)
			{
				reap_child(c);
				running--;
			}
			strip_progname(&c->text[1], opt->progname);
			c->reported = true;
			finished++;
			if (badness(c->rc) > badness(worst))
				worst = c->rc;
			if (c->rc == KS_EXIT_ERROR)
				failed++;
			if (!opt->json)
				print_labelled(stdout, opt->targets[i].label, c->text[0].data);
			print_labelled(stderr, opt->targets[i].label, c->text[1].data);
		}
	}

	if (opt->json)
		print_json(opt, children);
	fflush(stdout);
	if (failed > 0)
		pg_log_error("the command failed on %d of %d clusters", failed, n);
	return worst;
}
