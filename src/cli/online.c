/*
 * online.c — the killswitch command through a database connection: the
 * same SQL functions an operator would call, with parameters (never text
 * spliced into SQL), and the server's rights and commit semantics, found
 * through a pinned search_path.
 */
#include "postgres_fe.h"

#include "common/logging.h"
#include "libpq-fe.h"

#include "cli.h"

/* Run a query with text parameters; on error print it and return NULL. */
static PGresult *
run(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		/* the server's message, after its SQLSTATE as psql's verbose form has it */
		if (primary == NULL)
			pg_log_error("%s", PQerrorMessage(conn));
		else if (state != NULL)
			pg_log_error("%s: %s", state, primary);
		else
			pg_log_error("%s", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		if (PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL))
			pg_log_error_detail("%s", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
		if (PQresultErrorField(res, PG_DIAG_MESSAGE_HINT))
			pg_log_error_hint("%s", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
		PQclear(res);
		return NULL;
	}
	return res;
}

/*
 * A standby's word on its upstream: a line for people, and a warning (on
 * stderr, with --json too) when it cannot hear it or holds the halt for it.
 * The columns of status()'s query from 10 on; 17, a halt heard ahead of
 * replay (ARCHITECTURE §11).
 */
static void
standby_lines(const KsOptions *opt, const PGresult *res)
{
	bool		lost = strcmp(PQgetvalue(res, 0, 11), "true") == 0;

	if (strcmp(PQgetvalue(res, 0, 9), "standby") != 0 || PQgetisnull(res, 0, 10))
		return;
	if (!opt->json)
	{
		printf("upstream:     last word from the primary %s ms ago%s%s\n",
			   PQgetvalue(res, 0, 10), PQgetisnull(res, 0, 13) ? " (not heard since the start)" : "",
			   lost ? ", holding halt_all for it" : "");
		if (!PQgetisnull(res, 0, 14))
			printf("replay:       %s bytes behind, for %s ms (generation %s replayed)\n",
				   PQgetvalue(res, 0, 14), PQgetvalue(res, 0, 15),
				   PQgetisnull(res, 0, 16) ? "none yet" : PQgetvalue(res, 0, 16));
		if (!PQgetisnull(res, 0, 17))
			printf("heard:        generation %s from the upstream, ahead of replay\n",
				   PQgetvalue(res, 0, 17));
	}
	if (lost)
		pg_log_warning("this standby has had no word from its primary for %s ms and holds halt_all until it does",
					   PQgetvalue(res, 0, 10));
	if (!PQgetisnull(res, 0, 12))
		pg_log_warning("this standby cannot hear its upstream: %s", PQgetvalue(res, 0, 12));
}

/*
 * status: ks_status(); exit by mode and integrity.  --json prints a fixed
 * set of its members, the set offline.c prints from the file, so that the
 * shape does not depend on how the command reached the state; the text
 * names the mode as offline.c does, by its SQL name.
 */
static int
status(const KsOptions *opt, PGconn *conn)
{
	PGresult   *res = run(conn,
						  "SELECT jsonb_build_object("
						  " 'mode', s->'mode', 'engaged', s->'engaged', 'generation', s->'generation',"
						  " 'since', s->'since', 'source', s->'source', 'integrity', s->'integrity',"
						  " 'problem', s->'problem', 'require_hmac', s->'require_hmac',"
						  " 'last_engagement', s->'last_engagement', 'engagement_count', s->'engagement_count',"
						  " 'total_events', s->'total_events', 'unrecorded_change', s->'unrecorded_change',"
						  " 'watcher_checked_at', s->'watcher_checked_at', 'watcher_age_ms', s->'watcher_age_ms',"
						  " 'role', s->'role', 'replayed_generation', s->'replayed_generation',"
						  " 'heard_generation', s->'heard_generation',"
						  " 'upstream_heard_at', s->'upstream_heard_at', 'upstream_age_ms', s->'upstream_age_ms',"
						  " 'upstream_lost', s->'upstream_lost', 'upstream_problem', s->'upstream_problem',"
						  " 'replay_behind_bytes', s->'replay_behind_bytes', 'replay_behind_ms', s->'replay_behind_ms')::text,"
						  " lower(s->>'mode'), s->>'integrity', s->>'generation', s->>'since',"
						  " s->'last_engagement'->>'reason', s->'last_engagement'->>'triggered_by',"
						  " s->>'source', s->>'watcher_age_ms', s->>'role',"
						  " s->>'upstream_age_ms', s->>'upstream_lost', s->>'upstream_problem',"
						  " s->>'upstream_heard_at', s->>'replay_behind_bytes', s->>'replay_behind_ms',"
						  " s->>'replayed_generation', s->>'heard_generation' FROM ks_status() s", 0, NULL);
	int			rc;

	if (res == NULL)
		return KS_EXIT_ERROR;
	if (opt->json)
		puts(PQgetvalue(res, 0, 0));
	else
	{
		printf("mode:         %s\n", PQgetvalue(res, 0, 1));
		printf("generation:   %s\n", PQgetvalue(res, 0, 3));
		printf("since:        %s\n", PQgetvalue(res, 0, 4));
		printf("source:       %s\n", PQgetvalue(res, 0, 7));
		printf("integrity:    %s\n", PQgetvalue(res, 0, 2));
		printf("last engaged: %s (by %s)\n", PQgetvalue(res, 0, 5), PQgetvalue(res, 0, 6));
		printf("watcher:      looked %s ms ago\n", PQgetvalue(res, 0, 8));
		printf("role:         %s\n", PQgetvalue(res, 0, 9));
	}
	standby_lines(opt, res);
	rc = strcmp(PQgetvalue(res, 0, 2), "tampered") == 0 ? KS_EXIT_TAMPERED
		: strcmp(PQgetvalue(res, 0, 1), "disengaged") == 0 ? KS_EXIT_OK : KS_EXIT_ENGAGED;
	PQclear(res);
	return rc;
}

/*
 * status --scope ROLE: that role's scoped halt, from ks_scopes() — its mode,
 * or disengaged when it has none.  ROLE is the role's name as it is, as
 * ks_engage()'s scope takes it.
 * Exit by its mode: the fleet's state is what status without --scope says.
 */
static int
scope_status(const KsOptions *opt, PGconn *conn)
{
	const char *params[1] = {opt->scope};
	PGresult   *res = run(conn,
						  "SELECT pg_catalog.jsonb_build_object("
						  " 'scope', r.rolname, 'mode', COALESCE(s.mode::text, 'disengaged'),"
						  " 'since', s.since, 'reason', s.reason, 'triggered_by', s.triggered_by,"
						  " 'generation', s.generation)::text,"
						  " r.rolname, COALESCE(s.mode::text, 'disengaged'), s.since, s.reason,"
						  " s.triggered_by, s.generation"
						  " FROM pg_catalog.pg_roles r LEFT JOIN ks_scopes() s ON s.scope OPERATOR(pg_catalog.=) r.oid"
						  " WHERE r.rolname OPERATOR(pg_catalog.=) $1", 1, params);
	bool		engaged;

	if (res == NULL)
		return KS_EXIT_ERROR;
	if (PQntuples(res) == 0)
	{
		pg_log_error("role \"%s\" does not exist", opt->scope);
		PQclear(res);
		return KS_EXIT_ERROR;
	}
	engaged = strcmp(PQgetvalue(res, 0, 2), "disengaged") != 0;
	if (opt->json)
		puts(PQgetvalue(res, 0, 0));
	else
	{
		printf("scope:        %s\n", PQgetvalue(res, 0, 1));
		printf("mode:         %s\n", PQgetvalue(res, 0, 2));
		if (engaged)
		{
			printf("generation:   %s\n", PQgetvalue(res, 0, 6));
			printf("since:        %s\n", PQgetvalue(res, 0, 3));
			printf("engaged:      %s (by %s)\n", PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 5));
		}
	}
	PQclear(res);
	return engaged ? KS_EXIT_ENGAGED : KS_EXIT_OK;
}

/*
 * engage and disengage: the SQL functions, committed in autocommit.  Under
 * two-person release a release may only be recorded as a request: the mode
 * stays, and the exit status says so.
 */
static int
change(const KsOptions *opt, PGconn *conn)
{
	char		affected[16];
	const char *params[5];
	PGresult   *res;
	bool		requested;

	snprintf(affected, sizeof(affected), "%d", opt->affected);
	if (opt->command == CMD_ENGAGE)
	{
		params[0] = ks_mode_sql_names[opt->mode];
		params[1] = opt->reason;
		params[2] = opt->by;
		params[3] = affected;
		params[4] = opt->scope;
		res = opt->scope == NULL
			? run(conn, "SELECT id, generation, mode, source FROM ks_engage($1::ks_mode, $2, $3, $4::int)", 4, params)
			: run(conn, "SELECT id, generation, mode, source FROM ks_engage($1::ks_mode, $2, $3, $4::int, scope => $5)", 5, params);
	}
	else
	{
		params[0] = opt->reason;
		params[1] = opt->by;
		params[2] = opt->scope;
		res = opt->scope == NULL
			? run(conn, "SELECT id, generation, mode, source FROM ks_disengage($1, $2)", 2, params)
			: run(conn, "SELECT id, generation, mode, source FROM ks_disengage($1, $2, scope => $3)", 3, params);
	}
	if (res == NULL)
		return KS_EXIT_ERROR;
	requested = strcmp(PQgetvalue(res, 0, 3), "release_request") == 0;
	/* an engage whose event follows (the history was held): in force, not numbered yet */
	if (PQgetisnull(res, 0, 0))
	{
		if (opt->json)
			printf("{\"event_id\":null,\"generation\":null,\"mode\":\"%s\",\"release_requested\":false}\n",
				   PQgetvalue(res, 0, 2));
		else
			printf("%s (in force; its event follows)\n", PQgetvalue(res, 0, 2));
	}
	else if (opt->json && opt->scope)
	{
		StringInfoData name;

		initStringInfo(&name);
		ks_json_append_string(&name, opt->scope);
		printf("{\"event_id\":%s,\"generation\":%s,\"mode\":\"%s\",\"release_requested\":false,\"scope\":%s}\n",
			   PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), name.data);
	}
	else if (opt->json)
		printf("{\"event_id\":%s,\"generation\":%s,\"mode\":\"%s\",\"release_requested\":%s}\n",
			   PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
			   requested ? "true" : "false");
	else if (opt->scope)
		printf("scope %s: %s (event %s, its generation %s)\n", opt->scope,
			   PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
	else
		printf("%s%s (event %s, generation %s)\n",
			   requested ? "release requested, awaiting a second administrator; mode stays " : "",
			   PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
	PQclear(res);
	return requested ? KS_EXIT_ENGAGED : KS_EXIT_OK;
}

/* verify: ks_verify_events(). */
static int
verify(const KsOptions *opt, PGconn *conn)
{
	PGresult   *res = run(conn, "SELECT ok, checked, first_bad_id FROM ks_verify_events()", 0, NULL);
	bool		ok;

	if (res == NULL)
		return KS_EXIT_ERROR;
	ok = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	if (opt->json)
		printf("{\"ok\":%s,\"checked\":%s,\"first_bad_id\":%s}\n", ok ? "true" : "false",
			   PQgetvalue(res, 0, 1), PQgetisnull(res, 0, 2) ? "null" : PQgetvalue(res, 0, 2));
	else if (ok)
		printf("history verified: %s events, chain and signatures intact\n", PQgetvalue(res, 0, 1));
	else
		printf("history NOT intact: first bad event is %s\n", PQgetvalue(res, 0, 2));
	PQclear(res);
	return ok ? KS_EXIT_OK : KS_EXIT_TAMPERED;
}

/* history: ks_history(). */
static int
history(const KsOptions *opt, PGconn *conn)
{
	char		limit[16];
	const char *params[1] = {limit};
	PGresult   *res;

	snprintf(limit, sizeof(limit), "%d", opt->limit);
	res = opt->json
		? run(conn, "SELECT coalesce(json_agg(h ORDER BY h.id), '[]')::text FROM ks_history(nullif($1::int, 0)) h",
			  1, params)
		: run(conn, "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), mode,"
			  " coalesce(previous_mode::text, '-'), source, triggered_by, reason"
			  " FROM ks_history(nullif($1::int, 0))", 1, params);
	if (res == NULL)
		return KS_EXIT_ERROR;
	if (opt->json)
		puts(PQgetvalue(res, 0, 0));
	else
		for (int i = 0; i < PQntuples(res); i++)
			printf("%s  %s UTC  %-16s <- %-16s %-7s %s: %s\n",
				   PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
				   PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
				   PQgetvalue(res, i, 6));
	PQclear(res);
	return KS_EXIT_OK;
}

/*
 * Pin the session's search_path to pg_catalog, then the schema the
 * extension was created in.  The role's or the database's own setting may
 * name a schema an agent can create in (ks_audit() says so), where a
 * planted ks_engage() or operator would run as the operator.  pg_catalog
 * alone first, so that the lookup of the schema resolves nothing elsewhere.
 */
static bool
pin_search_path(PGconn *conn)
{
	PGresult   *res = PQexec(conn, "SET search_path = pg_catalog, pg_temp");
	bool		ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		pg_log_error("%s", PQerrorMessage(conn));
	PQclear(res);
	if (!ok)
		return false;
	res = run(conn, "SELECT pg_catalog.set_config('search_path',"
			  " 'pg_catalog, ' || pg_catalog.quote_ident(n.nspname) || ', pg_temp', false)"
			  " FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
			  " WHERE e.extname = 'killswitch'", 0, NULL);
	if (res == NULL)
		return false;
	PQclear(res);
	return true;
}

/* The online commands. */
int
ks_cli_online(const KsOptions *opt)
{
	PGconn	   *conn;
	int			rc;

	/*
	 * A default connect_timeout at the lowest precedence libpq has: the
	 * connection string and a service file still win over the environment.
	 */
	setenv("PGCONNECT_TIMEOUT", KS_CONNECT_TIMEOUT, 0);
	conn = PQconnectdb(opt->conninfo);

	/* our text is UTF-8 whatever the database's encoding: let it convert */
	if (PQstatus(conn) != CONNECTION_OK || PQsetClientEncoding(conn, "UTF8") != 0)
	{
		pg_log_error("%s", PQerrorMessage(conn));
		PQfinish(conn);
		return KS_EXIT_ERROR;
	}
	if (!pin_search_path(conn))
	{
		PQfinish(conn);
		return KS_EXIT_ERROR;
	}
	switch (opt->command)
	{
		case CMD_STATUS:
			rc = opt->scope ? scope_status(opt, conn) : status(opt, conn);
			break;
		case CMD_VERIFY:
			rc = verify(opt, conn);
			break;
		case CMD_HISTORY:
			rc = history(opt, conn);
			break;
		default:
			rc = change(opt, conn);
			break;
	}
	PQfinish(conn);
	return rc;
}
