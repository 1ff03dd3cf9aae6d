-- killswitch 1.0: the SQL surface (ARCHITECTURE §7).  Tables live in schema
-- killswitch; the ks_* functions and the ks_mode type in the schema the
-- extension is created in (public by default), so agents call them bare.

\echo Use "CREATE EXTENSION killswitch" to load this file. \quit

CREATE SCHEMA killswitch;
COMMENT ON SCHEMA killswitch IS 'Kill switch history and configuration';

-- Refuse to install unless preloaded and in killswitch.database.
CREATE FUNCTION killswitch.check_install() RETURNS void
    AS 'MODULE_PATHNAME', 'ks_check_install' LANGUAGE C;
SELECT killswitch.check_install();
REVOKE ALL ON FUNCTION killswitch.check_install() FROM PUBLIC;

-- The three roles (cluster-wide, so created only if missing).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'killswitch_operator') THEN
        CREATE ROLE killswitch_operator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'killswitch_admin') THEN
        CREATE ROLE killswitch_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'killswitch_agent') THEN
        CREATE ROLE killswitch_agent NOLOGIN;
    END IF;
    -- an admin may do everything an operator may
    IF NOT pg_catalog.pg_has_role('killswitch_admin', 'killswitch_operator', 'MEMBER') THEN
        GRANT killswitch_operator TO killswitch_admin;
    END IF;
    -- From PostgreSQL 16 on, the connection slots of reserved_connections
    -- are kept for pg_use_reserved_connections: operators and admins may
    -- take them, agents that are neither may not (README "Versions").
    IF pg_catalog.current_setting('server_version_num')::int >= 160000
       AND NOT pg_catalog.pg_has_role('killswitch_operator', 'pg_use_reserved_connections', 'MEMBER') THEN
        EXECUTE 'GRANT pg_use_reserved_connections TO killswitch_operator';
    END IF;
END
$roles$;

CREATE TYPE @extschema@.ks_mode AS ENUM ('disengaged', 'halt_noncritical', 'halt_all', 'emergency');
COMMENT ON TYPE @extschema@.ks_mode IS 'Kill switch modes, ordered: >= means at least this halted';

CREATE TABLE killswitch.events (
    id              bigint PRIMARY KEY,
    at              timestamptz NOT NULL,
    mode            @extschema@.ks_mode NOT NULL,
    previous_mode   @extschema@.ks_mode,
    reason          text NOT NULL,
    triggered_by    text NOT NULL,
    affected_tasks  integer NOT NULL,
    source          text NOT NULL,
    release_target  @extschema@.ks_mode,       -- a release request (source release_request) asks for this mode
    session_role    text NOT NULL,
    client_addr     inet,
    backend_pid     integer NOT NULL,
    xid             xid8 NOT NULL,
    generation      bigint NOT NULL,
    key_id          text NOT NULL,
    require_hmac    boolean NOT NULL,
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    signature       text NOT NULL,
    -- a scope's event (ARCHITECTURE §13): the role by OID, which survives a
    -- RENAME, and its name at the time, which stays readable after a DROP;
    -- both NULL for the fleet's events, whose canonical form has neither
    scope           oid,
    scope_name      text,
    CHECK ((scope IS NULL) = (scope_name IS NULL)),
    -- each scope has its own generation line; the fleet's is scope NULL
    UNIQUE NULLS NOT DISTINCT (scope, generation)
);
COMMENT ON TABLE killswitch.events IS
    'Append-only, hash-chained, HMAC-signed history of every kill switch change; check with ks_verify_events()';

-- Append-only, for the owner too.
CREATE FUNCTION killswitch.refuse_history_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% on %.% is not allowed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = 'The kill switch history and snapshots are append-only.',
              HINT = 'Changes are recorded by ks_engage() and ks_disengage(); check the chain with ks_verify_events().';
END
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON killswitch.events
    FOR EACH STATEMENT EXECUTE FUNCTION killswitch.refuse_history_change();

CREATE TABLE killswitch.snapshots (
    id          bigserial PRIMARY KEY,
    generation  bigint NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    snapshot    jsonb NOT NULL
);
COMMENT ON TABLE killswitch.snapshots IS
    'What the agents were doing when the kill switch entered emergency: status, sessions, locks';
CREATE TRIGGER snapshots_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON killswitch.snapshots
    FOR EACH STATEMENT EXECUTE FUNCTION killswitch.refuse_history_change();

CREATE TABLE killswitch.critical_tasks (
    task        text PRIMARY KEY CHECK (task <> ''),
    added_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    added_by    text NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE killswitch.critical_tasks IS
    'Tasks allowed in halt_noncritical and halt_all (never in emergency)';

-- Who may claim a critical task: a session's killswitch.task exempts an
-- agent from hard enforcement only when the task is granted here to its
-- session user or to a role that one is a member of.  Granted to nobody
-- by default: a claim alone exempts nothing.
CREATE TABLE killswitch.task_grants (
    task        text NOT NULL REFERENCES killswitch.critical_tasks (task)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    grantee     regrole NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    granted_by  text NOT NULL DEFAULT SESSION_USER,
    PRIMARY KEY (task, grantee)
);
COMMENT ON TABLE killswitch.task_grants IS
    'Roles whose sessions may claim a critical task (SET killswitch.task) to write while halted';

-- Either table changed: the transaction rebuilds the shared list at commit.
CREATE FUNCTION killswitch.critical_tasks_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'ks_critical_tasks_changed' LANGUAGE C;
CREATE TRIGGER critical_tasks_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON killswitch.critical_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION killswitch.critical_tasks_changed();
CREATE TRIGGER task_grants_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON killswitch.task_grants
    FOR EACH STATEMENT EXECUTE FUNCTION killswitch.critical_tasks_changed();

-- The defaults, after the triggers: this transaction publishes the list
-- (and so replaces any left in shared memory by an earlier installation).
INSERT INTO killswitch.critical_tasks (task, added_by) VALUES
    ('safety_monitoring', 'killswitch'),
    ('data_persistence', 'killswitch'),
    ('audit_logging', 'killswitch'),
    ('kill_switch_itself', 'killswitch'),
    ('cost_tracking', 'killswitch');

-- How many agent claims to ungranted critical tasks were refused since start.
CREATE FUNCTION killswitch.refused_claims() RETURNS bigint
    AS 'MODULE_PATHNAME', 'ks_refused_claims_sql' LANGUAGE C VOLATILE;

SELECT pg_catalog.pg_extension_config_dump('killswitch.events', '');
SELECT pg_catalog.pg_extension_config_dump('killswitch.snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('killswitch.snapshots_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('killswitch.critical_tasks', $$WHERE added_by <> 'killswitch'$$);
SELECT pg_catalog.pg_extension_config_dump('killswitch.task_grants', '');

-- Reading the state: open to everyone.
CREATE FUNCTION @extschema@.ks_mode() RETURNS @extschema@.ks_mode
    AS 'MODULE_PATHNAME', 'ks_mode' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ks_mode() IS 'The current kill switch mode (one atomic read of shared memory)';

CREATE FUNCTION @extschema@.ks_engaged() RETURNS boolean
    AS 'MODULE_PATHNAME', 'ks_engaged' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ks_engaged() IS 'True unless the mode is disengaged (one atomic read of shared memory)';

-- Waiting for a change in one statement, for agents that cannot LISTEN
-- (behind a transaction pooler, on a standby).  PARALLEL RESTRICTED: one
-- wait in the leader, not one in every worker.
CREATE FUNCTION @extschema@.ks_wait(generation bigint, timeout_ms integer DEFAULT 30000) RETURNS bigint
    AS 'MODULE_PATHNAME', 'ks_wait' LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.ks_wait(bigint, integer) IS 'Wait until the kill switch generation differs from the one given (or timeout_ms passes) and return the current generation';

CREATE FUNCTION @extschema@.ks_check_task(task text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'ks_check_task' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ks_check_task(text) IS 'May this task run now: {allowed, action, reason | note}';

CREATE FUNCTION @extschema@.ks_task_allowed(task text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'ks_task_allowed' LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION @extschema@.ks_assert_task(task text) RETURNS void
    AS 'MODULE_PATHNAME', 'ks_assert_task' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ks_assert_task(text) IS 'Raise SQLSTATE KS001 unless the task may run now';

CREATE FUNCTION killswitch.shared_state(
    OUT mode @extschema@.ks_mode, OUT generation bigint, OUT integrity text,
    OUT source text, OUT since timestamptz, OUT problem text,
    OUT require_hmac boolean, OUT unrecorded boolean,
    OUT watcher_checked_at timestamptz,
    OUT watcher_problem text, OUT watch text,
    OUT role text, OUT state_lsn pg_lsn,
    OUT replayed_generation bigint, OUT heard_generation bigint, OUT upstream_heard_at timestamptz,
    OUT upstream_age_ms bigint, OUT upstream_lost boolean, OUT upstream_problem text,
    OUT replay_behind_bytes numeric, OUT replay_behind_ms bigint,
    OUT file_problem text)
    AS 'MODULE_PATHNAME', 'ks_shared_state' LANGUAGE C VOLATILE;

-- A standby's watcher hears its upstream here (ARCHITECTURE §11 "Halts outrun
-- replay"): CALL await_state(), outside a transaction block, waits without a
-- snapshot until this server's committed state has another generation than the
-- one given (or timeout_ms); committed_state() returns its signed bytes, how old
-- this server's word from the primary is (0 on a primary), the primary's WAL
-- position, and the system identifier and timeline of this server's history
-- (a standby refuses word from another system, and learns of a failover).
-- Given known_scopes_version, the wait also ends when the scope copy's version
-- moves past it; committed_scopes() returns the signed scope copy (§13
-- "Standbys").  Without it, a watcher of an earlier build waits as before.
CREATE PROCEDURE killswitch.await_state(known_generation bigint, timeout_ms integer,
    known_scopes_version bigint DEFAULT NULL)
    AS 'MODULE_PATHNAME', 'ks_await_state' LANGUAGE C;
COMMENT ON PROCEDURE killswitch.await_state(bigint, integer, bigint) IS
    'For standbys'' watchers: wait, holding no snapshot, until the committed state has another generation than known_generation (or the scope copy another version than known_scopes_version)';
CREATE FUNCTION killswitch.committed_scopes(OUT scopes bytea, OUT version bigint)
    AS 'MODULE_PATHNAME', 'ks_committed_scopes' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION killswitch.committed_scopes() IS
    'For standbys'' watchers: the signed scope copy (every scope in force here, heard ones included on a standby) and its version';
CREATE FUNCTION killswitch.committed_state(OUT state bytea, OUT silent_ms bigint, OUT wal_lsn pg_lsn,
    OUT system_identifier bigint, OUT timeline_id integer)
    AS 'MODULE_PATHNAME', 'ks_committed_state' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION killswitch.committed_state() IS
    'For standbys'' watchers: the signed committed state, how old this server''s word from the primary is, the primary''s WAL position, this server''s system identifier and timeline';

CREATE FUNCTION killswitch.iso_utc(timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
$$;

-- The fleet's escape routes (ARCHITECTURE §6): every agent role (a member of
-- killswitch_agent, directly or through other roles) that holds a power
-- letting it around the switch — reading or writing the keys and the state
-- file, making roles outside the fleet — or a foothold where code it
-- controls runs with the rights of those who operate the switch: a schema
-- on their search_path, a trigger or rule on a table they write, a
-- SECURITY DEFINER function of theirs it may call.
-- Roles are cluster-wide; schemas, tables, functions and database settings
-- are those of this database (where the switch is operated).
CREATE FUNCTION killswitch.audit(OUT role name, OUT power text, OUT detail text)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE agents(oid) AS (
        SELECT m.member FROM pg_auth_members m JOIN pg_roles k ON k.oid = m.roleid
        WHERE k.rolname = 'killswitch_agent'
        UNION
        SELECT m.member FROM pg_auth_members m JOIN agents a ON m.roleid = a.oid
    ),
    -- every role an agent is a member of, and whether it inherits its privileges
    -- (in PostgreSQL 15 a member can always SET ROLE to it, so either counts)
    memberships(agent, roleid, inherits) AS (
        SELECT a.oid, m.roleid, r.rolinherit
        FROM agents a JOIN pg_auth_members m ON m.member = a.oid JOIN pg_roles r ON r.oid = a.oid
        UNION
        SELECT ms.agent, m.roleid, ms.inherits AND r.rolinherit
        FROM memberships ms JOIN pg_auth_members m ON m.member = ms.roleid
             JOIN pg_roles r ON r.oid = ms.roleid
    ),
    -- the roles each agent can act as: itself, and every role it is a member
    -- of (a superuser agent is reported as one, and nothing more)
    acts_as(agent, roleid) AS (
        SELECT a.oid, a.oid FROM agents a JOIN pg_roles r ON r.oid = a.oid WHERE NOT r.rolsuper
        UNION
        SELECT ms.agent, ms.roleid FROM memberships ms JOIN pg_roles r ON r.oid = ms.agent
        WHERE NOT r.rolsuper
    ),
    -- who operates the switch: superusers, and the members of
    -- killswitch_operator and killswitch_admin (agents among them are
    -- agents, found above)
    operators(oid, kind) AS (
        SELECT r.oid, CASE WHEN r.rolsuper THEN 'superuser'
                           WHEN pg_has_role(r.oid, 'killswitch_admin', 'MEMBER') THEN 'administrator'
                           ELSE 'operator' END
        FROM pg_roles r
        WHERE (r.rolsuper OR pg_has_role(r.oid, 'killswitch_operator', 'MEMBER'))
          AND r.rolname NOT IN ('killswitch_operator', 'killswitch_admin')
          AND r.oid NOT IN (SELECT oid FROM agents)
    ),
    -- each operator's search_path in this database: the first of its
    -- setting in this database, its own, the database's, PostgreSQL's
    -- default (a path set in postgresql.conf, at connection or by SET is not
    -- in the catalogs)
    path_settings(setrole, setdatabase, path) AS (
        SELECT s.setrole, s.setdatabase, substr(c, length('search_path=') + 1)
        FROM pg_db_role_setting s, unnest(s.setconfig) c
        WHERE c LIKE 'search_path=%'
          AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
    ),
    operator_paths(oid, kind, source, path) AS (
        SELECT o.oid, o.kind, p.source, p.path
        FROM operators o CROSS JOIN LATERAL (
            SELECT source, path FROM (
                SELECT CASE WHEN s.setrole = 0 THEN 3 WHEN s.setdatabase = 0 THEN 2 ELSE 1 END,
                       CASE WHEN s.setrole = 0 THEN 'set for the database'
                            WHEN s.setdatabase = 0 THEN 'set for the role'
                            ELSE 'set for the role in the database' END,
                       s.path
                FROM path_settings s
                WHERE s.setrole IN (0, o.oid)
                UNION ALL
                SELECT 4, 'PostgreSQL''s default', '"$user", public') c(rank, source, path)
            ORDER BY rank LIMIT 1) p
    ),
    -- the schemas each path names, "$user" resolved to the operator's own
    operator_schemas(oid, kind, source, nsp) AS (
        SELECT op.oid, op.kind, op.source, n.oid
        FROM operator_paths op
             CROSS JOIN LATERAL regexp_matches(op.path, '\s*("(?:[^"]|"")*"|[^,]*)\s*(,|$)', 'g') AS m(parts)
             CROSS JOIN LATERAL (SELECT CASE WHEN btrim(m.parts[1]) LIKE '"%'
                                             THEN replace(substr(btrim(m.parts[1]), 2, length(btrim(m.parts[1])) - 2), '""', '"')
                                             ELSE lower(btrim(m.parts[1])) END) AS e(name)
             JOIN pg_roles r ON r.oid = op.oid
             JOIN pg_namespace n ON n.nspname = CASE WHEN e.name = '$user' THEN r.rolname::text ELSE e.name END
    ),
    -- the schemas an agent owns or may create in
    agent_schemas(agent, nsp, how) AS (
        SELECT x.agent, n.oid,
               CASE WHEN bool_or(n.nspowner = x.roleid) THEN 'owns' ELSE 'may create in' END
        FROM pg_namespace n JOIN acts_as x
             ON n.nspowner = x.roleid OR has_schema_privilege(x.roleid, n.oid, 'CREATE')
        GROUP BY x.agent, n.oid
    ),
    -- the tables with triggers or rules that an agent owns or may add triggers to
    agent_tables(agent, rel, how) AS (
        SELECT x.agent, c.oid,
               CASE WHEN bool_or(c.relowner = x.roleid) THEN 'owns' ELSE 'may add triggers to' END
        FROM pg_class c JOIN acts_as x
             ON c.relowner = x.roleid OR has_table_privilege(x.roleid, c.oid, 'TRIGGER')
        WHERE c.relkind IN ('r', 'p', 'v', 'f') AND (c.relhastriggers OR c.relhasrules)
        GROUP BY x.agent, c.oid
    ),
    -- the switch's own functions (ks_guard, ...) in triggers are not agents' code
    switch_functions(oid) AS (
        SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
        WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
          AND d.deptype = 'e' AND e.extname = 'killswitch'
    ),
    powers(power, detail) AS (VALUES
        ('pg_read_server_files', 'reads any file the server can (COPY FROM, pg_read_file): the signing secret and the release key'),
        ('pg_write_server_files', 'writes any file the server can (COPY TO): the state file, the keys, postgresql.auto.conf'),
        ('pg_execute_server_program', 'runs programs as the server''s operating-system user: everything the server can do'),
        ('pg_write_all_data', 'writes every table, killswitch.critical_tasks included'),
        ('killswitch_admin', 'manages the critical tasks (a release stays refused to agents)')
    ),
    findings(role, power, detail) AS (
        SELECT r.oid, 'superuser', 'a superuser: every check is bypassed, every file readable, the keys included'
        FROM pg_roles r JOIN agents a ON a.oid = r.oid WHERE r.rolsuper
        UNION ALL
        SELECT r.oid, 'bypassrls', 'BYPASSRLS: row-level security policies do not apply to it'
        FROM pg_roles r JOIN agents a ON a.oid = r.oid WHERE r.rolbypassrls AND NOT r.rolsuper
        UNION ALL
        SELECT r.oid, 'createrole', 'CREATEROLE: can grant itself pg_write_server_files and the like, and make roles outside killswitch_agent'
        FROM pg_roles r JOIN agents a ON a.oid = r.oid WHERE r.rolcreaterole AND NOT r.rolsuper
        UNION ALL
        SELECT r.oid, 'replication', 'REPLICATION: a base backup copies every file of the data directory, the keys included'
        FROM pg_roles r JOIN agents a ON a.oid = r.oid WHERE r.rolreplication AND NOT r.rolsuper
        UNION ALL
        SELECT ms.agent, p.power,
               CASE WHEN bool_or(ms.inherits) THEN 'member, with its privileges: '
                    ELSE 'member, through SET ROLE: ' END || p.detail
        FROM memberships ms JOIN pg_roles g ON g.oid = ms.roleid JOIN powers p ON p.power = g.rolname
             JOIN pg_roles r ON r.oid = ms.agent
        WHERE NOT r.rolsuper
        GROUP BY ms.agent, p.power, p.detail
        UNION ALL
        -- not provably read-only: volatile, or in a language whose volatility is not enforced
        SELECT f.proowner, 'security_definer_function',
               format('owns SECURITY DEFINER function %s (%s, %s): code that runs with its rights in any session that calls it',
                      f.oid::regprocedure,
                      CASE f.provolatile WHEN 'v' THEN 'volatile' WHEN 's' THEN 'stable' ELSE 'immutable' END,
                      l.lanname)
        FROM pg_proc f JOIN agents a ON a.oid = f.proowner JOIN pg_language l ON l.oid = f.prolang
        WHERE f.prosecdef AND (f.provolatile = 'v' OR l.lanname NOT IN ('sql', 'plpgsql'))
        UNION ALL
        -- deny by default lets immutable and stable functions run: the owner
        -- of one in C (or another untrusted language) decides what it is
        SELECT f.proowner, 'untrusted_language_function',
               format('owns function %s in untrusted language %s: it can mark it immutable or stable, which a halted agent may call',
                      f.oid::regprocedure, l.lanname)
        FROM pg_proc f JOIN agents a ON a.oid = f.proowner JOIN pg_language l ON l.oid = f.prolang
        WHERE NOT l.lanpltrusted
        UNION ALL
        -- code of a superuser or an administrator that runs with its owner's rights
        SELECT x.agent, 'definer_function',
               format('may execute SECURITY DEFINER function %s of %s "%s": it runs with its owner''s rights (pg_read_file, the release key, ks_disengage) whenever the agent calls it',
                      f.oid::regprocedure, CASE WHEN o.rolsuper THEN 'superuser' ELSE 'administrator' END, o.rolname)
        FROM pg_proc f JOIN pg_roles o ON o.oid = f.proowner
             JOIN acts_as x ON has_function_privilege(x.roleid, f.oid, 'EXECUTE')
        WHERE f.prosecdef AND (o.rolsuper OR pg_has_role(o.oid, 'killswitch_admin', 'MEMBER'))
          AND o.oid NOT IN (SELECT oid FROM agents)
        GROUP BY x.agent, f.oid, o.rolsuper, o.rolname
        UNION ALL
        -- a schema searched before (or beside) the switch's own names
        SELECT s.agent, 'search_path',
               format('%s "%s" has schema %I on its search_path (%s), which the agent %s: what it plants there runs when "%s" calls the switch by a bare name',
                      op.kind, r.rolname, n.nspname, op.source, s.how, r.rolname)
        FROM operator_schemas op JOIN agent_schemas s ON s.nsp = op.nsp
             JOIN pg_roles r ON r.oid = op.oid JOIN pg_namespace n ON n.oid = op.nsp
        GROUP BY s.agent, op.kind, r.rolname, n.nspname, op.source, s.how
        UNION ALL
        -- an overload planted beside the switch's functions wins even a qualified call
        SELECT s.agent, 'switch_schema',
               format('%s schema %I, which holds the kill switch''s functions: an overload planted there is called instead of them, schema-qualified calls included',
                      CASE s.how WHEN 'owns' THEN 'Owns' ELSE 'May create in' END, n.nspname)
        FROM agent_schemas s JOIN pg_namespace n ON n.oid = s.nsp
             JOIN pg_extension e ON e.extnamespace = n.oid AND e.extname = 'killswitch'
        UNION ALL
        SELECT t.agent, 'trigger',
               format('trigger %I on %s, a table it %s: runs with the rights of whoever writes the table, administrators included',
                      tg.tgname, t.rel::regclass, t.how)
        FROM agent_tables t JOIN pg_trigger tg ON tg.tgrelid = t.rel
        WHERE NOT tg.tgisinternal AND tg.tgfoid NOT IN (SELECT oid FROM switch_functions)
        UNION ALL
        SELECT t.agent, 'rule',
               format('rule %I on %s, a table it %s: its action runs with the rights of whoever writes the table, administrators included',
                      rw.rulename, t.rel::regclass, t.how)
        FROM agent_tables t JOIN pg_rewrite rw ON rw.ev_class = t.rel
        WHERE rw.rulename <> '_RETURN'
    )
    SELECT r.rolname, f.power, f.detail
    FROM findings f JOIN pg_roles r ON r.oid = f.role
    ORDER BY r.rolname, f.power, f.detail
$$;
COMMENT ON FUNCTION killswitch.audit() IS
    'Agent roles holding powers that get around the kill switch (what ks_audit() shows)';

-- Its rows, counted for ks_status() (audit.c): kept in the session until a
-- change to roles, memberships, functions, schemas or tables, and at most
-- a minute.
CREATE FUNCTION killswitch.audit_findings() RETURNS bigint
    AS 'MODULE_PATHNAME', 'ks_audit_findings' LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.ks_audit(OUT role name, OUT power text, OUT detail text)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM killswitch.audit()
$$;
COMMENT ON FUNCTION @extschema@.ks_audit() IS
    'Agent roles holding powers that get around the kill switch: superuser, BYPASSRLS, CREATEROLE, REPLICATION, server-file roles, writing SECURITY DEFINER functions, and footholds in the sessions of those who operate it (search_path, triggers and rules, their SECURITY DEFINER functions)';

-- Does a committed scope find no slot in the set (ARCHITECTURE §13)?  Every
-- agent is then held at the highest mode of any scope, until the scopes fit.
CREATE FUNCTION killswitch.scopes_overflowed() RETURNS boolean
    AS 'MODULE_PATHNAME', 'ks_scopes_overflowed' LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.ks_status() RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'mode', upper(s.mode::text),
        'engaged', s.mode <> 'disengaged',
        'engagement_count', (SELECT count(*) FROM killswitch.events e
                             WHERE e.mode <> 'disengaged' AND e.source <> 'release_request'),
        'last_engagement', (
            SELECT jsonb_build_object('timestamp', killswitch.iso_utc(e.at),
                                      'mode', upper(e.mode::text),
                                      'reason', e.reason,
                                      'triggered_by', e.triggered_by)
            FROM killswitch.events e WHERE e.mode <> 'disengaged' AND e.source <> 'release_request'
            ORDER BY e.id DESC LIMIT 1),
        'total_events', (SELECT count(*) FROM killswitch.events),
        'generation', s.generation,
        'since', killswitch.iso_utc(s.since),
        'source', s.source,
        'integrity', s.integrity,
        'problem', s.problem,
        'require_hmac', s.require_hmac,
        'unrecorded_change', s.unrecorded,
        'refused_claims', killswitch.refused_claims(),
        'watcher_checked_at', killswitch.iso_utc(s.watcher_checked_at),
        'watcher_age_ms', round(extract(epoch FROM clock_timestamp() - s.watcher_checked_at) * 1000),
        'audit_findings', killswitch.audit_findings(),
        'watcher_problem', s.watcher_problem,
        'watch', s.watch,
        'role', s.role,
        'state_lsn', s.state_lsn::text,
        'replayed_generation', s.replayed_generation,
        'heard_generation', s.heard_generation,
        'upstream_heard_at', killswitch.iso_utc(s.upstream_heard_at),
        'upstream_age_ms', s.upstream_age_ms,
        'upstream_lost', s.upstream_lost,
        'upstream_problem', s.upstream_problem,
        'replay_behind_bytes', s.replay_behind_bytes,
        'replay_behind_ms', s.replay_behind_ms,
        'file_problem', s.file_problem,
        'scopes_active', (SELECT count(*) FROM killswitch.active_scopes()),
        'scopes_overflowed', killswitch.scopes_overflowed())
    FROM killswitch.shared_state() s
$$;
COMMENT ON FUNCTION @extschema@.ks_status() IS 'Kill switch status, shaped like the reference library''s get_status() plus generation and integrity';

CREATE FUNCTION @extschema@.ks_history(lim integer DEFAULT NULL, engaged_only boolean DEFAULT false)
RETURNS SETOF killswitch.events
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM (
        SELECT * FROM killswitch.events e
        WHERE NOT $2 OR e.mode <> 'disengaged'
        ORDER BY e.id DESC LIMIT $1) newest
    ORDER BY id
$$;
COMMENT ON FUNCTION @extschema@.ks_history(integer, boolean) IS 'The newest lim events (all if NULL), oldest first';

CREATE FUNCTION killswitch.event_canonical(killswitch.events) RETURNS text
    AS 'MODULE_PATHNAME', 'ks_event_canonical' LANGUAGE C IMMUTABLE STRICT;
COMMENT ON FUNCTION killswitch.event_canonical(killswitch.events) IS
    'The canonical JSON a row''s hash covers: hash = sha256(prev_hash || event_canonical(row))';

CREATE FUNCTION @extschema@.ks_verify_events(OUT ok boolean, OUT checked bigint, OUT first_bad_id bigint)
    AS 'MODULE_PATHNAME', 'ks_verify_events' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ks_verify_events() IS 'Verify the hash chain and signatures of killswitch.events; names the first bad row';

CREATE FUNCTION @extschema@.ks_guard() RETURNS trigger
    AS 'MODULE_PATHNAME', 'ks_guard' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.ks_guard() IS
    'BEFORE INSERT OR UPDATE row trigger refusing task rows while halted; args: [task_column [, status_column, hold_value]]';

-- Changing the state: operators engage, admins release.
CREATE FUNCTION @extschema@.ks_engage(mode @extschema@.ks_mode, reason text,
                                      triggered_by text DEFAULT NULL, affected_tasks integer DEFAULT 0,
                                      scope text DEFAULT NULL)
RETURNS killswitch.events
    AS 'MODULE_PATHNAME', 'ks_engage' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ks_engage(@extschema@.ks_mode, text, text, integer, text) IS
    'Raise or repeat the kill switch mode (of the fleet, or of the scope a role names); takes effect at commit';

CREATE FUNCTION @extschema@.ks_disengage(reason text, triggered_by text DEFAULT NULL,
                                         scope text DEFAULT NULL)
RETURNS killswitch.events
    AS 'MODULE_PATHNAME', 'ks_disengage' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ks_disengage(text, text, text) IS
    'Release the kill switch (of the fleet, or of the scope a role names; needs killswitch_admin); takes effect at commit';

-- The scoped halts in force (ARCHITECTURE §13): committed state from shared
-- memory, the reason and caller from the scope's event at that generation.
CREATE FUNCTION killswitch.active_scopes(OUT scope oid, OUT mode @extschema@.ks_mode,
                                         OUT generation bigint, OUT since timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'ks_active_scopes' LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@.ks_scopes(OUT scope regrole, OUT mode @extschema@.ks_mode,
                                      OUT since timestamptz, OUT reason text,
                                      OUT triggered_by text, OUT generation bigint)
RETURNS SETOF record
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.scope::regrole, a.mode, a.since, e.reason, e.triggered_by, a.generation
    FROM killswitch.active_scopes() a
    LEFT JOIN killswitch.events e ON e.scope = a.scope AND e.generation = a.generation
    ORDER BY a.scope::regrole::text
$$;
COMMENT ON FUNCTION @extschema@.ks_scopes() IS
    'One row per active scoped halt: the role, its mode, since, the reason and caller of its newest event, its generation';

-- Rights (ARCHITECTURE §6).
GRANT USAGE ON SCHEMA killswitch TO PUBLIC;
REVOKE ALL ON killswitch.events FROM PUBLIC;
GRANT SELECT ON killswitch.events TO PUBLIC;
REVOKE ALL ON killswitch.critical_tasks FROM PUBLIC;
GRANT SELECT ON killswitch.critical_tasks TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON killswitch.critical_tasks TO killswitch_admin;
REVOKE ALL ON killswitch.task_grants FROM PUBLIC;
GRANT SELECT ON killswitch.task_grants TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON killswitch.task_grants TO killswitch_admin;
-- snapshots hold the agents' queries: operators and admins only
REVOKE ALL ON killswitch.snapshots FROM PUBLIC;
GRANT SELECT ON killswitch.snapshots TO killswitch_operator;
REVOKE ALL ON FUNCTION @extschema@.ks_engage(@extschema@.ks_mode, text, text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.ks_engage(@extschema@.ks_mode, text, text, integer, text) TO killswitch_operator;
REVOKE ALL ON FUNCTION @extschema@.ks_disengage(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.ks_disengage(text, text, text) TO killswitch_admin;
REVOKE ALL ON FUNCTION killswitch.refuse_history_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION killswitch.critical_tasks_changed() FROM PUBLIC;

-- Say at once if agent roles already hold powers that get around the switch
-- (roles outlive the extension; the watcher warns about later ones).
DO $audit$
DECLARE
    n bigint;
    list text;
BEGIN
    SELECT count(*), string_agg(format('%s: %s', a.role, a.power), '; ' ORDER BY a.role, a.power)
    INTO n, list FROM killswitch.audit() a;
    IF n > 0 THEN
        RAISE WARNING '% power(s) held by agent roles get around the kill switch', n
            USING DETAIL = format('Agent roles and their powers: %s.', list),
                  HINT = 'SELECT * FROM ks_audit() says what each allows; revoke them from the fleet.';
    END IF;
END
$audit$;
