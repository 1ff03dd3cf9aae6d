-- The fleet's escape routes (ARCHITECTURE §6): ks_audit() lists every agent role
-- (a member of killswitch_agent, directly or through other roles) holding a
-- power that gets around the kill switch, and ks_status() counts them.

-- nothing to report yet
SELECT * FROM ks_audit();
SELECT ks_status()->'audit_findings' AS audit_findings;

-- one agent per power, and roles that are not agents holding the same powers
CREATE ROLE audit_reader IN ROLE killswitch_agent;
GRANT pg_read_server_files TO audit_reader;
CREATE ROLE audit_writer IN ROLE killswitch_agent, pg_write_server_files;
CREATE ROLE audit_exec NOINHERIT IN ROLE killswitch_agent, pg_execute_server_program;
CREATE ROLE audit_rls BYPASSRLS IN ROLE killswitch_agent;
CREATE ROLE audit_roles CREATEROLE IN ROLE killswitch_agent;
CREATE ROLE audit_repl REPLICATION IN ROLE killswitch_agent;
CREATE ROLE audit_super SUPERUSER IN ROLE killswitch_agent;
CREATE ROLE audit_all_data IN ROLE killswitch_agent, pg_write_all_data;
CREATE ROLE audit_admin IN ROLE killswitch_agent, killswitch_admin;
CREATE ROLE not_an_agent BYPASSRLS CREATEROLE REPLICATION IN ROLE pg_read_server_files;
-- nested: a team inside the fleet, a bot inside the team, and the file
-- powers reaching the bot through another role
CREATE ROLE audit_team IN ROLE killswitch_agent;
CREATE ROLE file_access IN ROLE pg_read_server_files;
CREATE ROLE audit_nested IN ROLE audit_team, file_access;

-- SECURITY DEFINER functions: owned by an agent and able to write (volatile,
-- or in a language whose volatility is not enforced) are findings; stable
-- SQL, or a definer function owned by a role outside the fleet, are not
CREATE FUNCTION audit_writes(int) RETURNS int LANGUAGE sql VOLATILE SECURITY DEFINER AS 'SELECT $1';
ALTER FUNCTION audit_writes(int) OWNER TO audit_team;
CREATE FUNCTION audit_reads(int) RETURNS int LANGUAGE sql STABLE SECURITY DEFINER AS 'SELECT $1';
ALTER FUNCTION audit_reads(int) OWNER TO audit_team;
CREATE FUNCTION audit_invoker(int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT $1';
ALTER FUNCTION audit_invoker(int) OWNER TO audit_team;
CREATE FUNCTION audit_not_an_agent(int) RETURNS int LANGUAGE sql VOLATILE SECURITY DEFINER AS 'SELECT $1';
ALTER FUNCTION audit_not_an_agent(int) OWNER TO not_an_agent;

SELECT * FROM ks_audit();
SELECT ks_status()->'audit_findings' AS audit_findings;

-- everyone may run the audit: it shows what the catalogs already show
CREATE ROLE audit_plain;
SET ROLE audit_plain;
SELECT count(*) AS findings_seen_by_anyone FROM ks_audit();
RESET ROLE;

-- revoking a power removes its finding
REVOKE pg_read_server_files FROM audit_reader;
ALTER ROLE audit_rls NOBYPASSRLS;
SELECT role, power FROM ks_audit() WHERE role IN ('audit_reader', 'audit_rls');

DROP FUNCTION audit_writes(int), audit_reads(int), audit_invoker(int), audit_not_an_agent(int);
DROP ROLE audit_reader, audit_writer, audit_exec, audit_rls, audit_roles, audit_repl, audit_super,
    audit_all_data, audit_admin, not_an_agent, audit_nested, file_access, audit_team, audit_plain;
SELECT count(*) AS findings_left FROM ks_audit();

-- Footholds in the sessions of those who operate the switch (issue 21 case 5),
-- each shown, then taken away.  The superuser running the tests is SU.
CREATE ROLE foot_agent IN ROLE killswitch_agent;
CREATE ROLE foot_team IN ROLE killswitch_agent;
CREATE ROLE foot_member IN ROLE foot_team;
CREATE ROLE alice IN ROLE killswitch_admin;
CREATE ROLE oncall IN ROLE killswitch_operator;
CREATE FUNCTION audit_rows() RETURNS TABLE (role name, power text, detail text)
LANGUAGE sql AS $$
    SELECT role, power, replace(detail, current_user, 'SU') FROM ks_audit()
    WHERE role IN ('foot_agent', 'foot_team', 'foot_member')
$$;

-- (a) a search_path naming a schema an agent owns or may create in: set for
-- the role, for the database, for the role in the database, and "$user"
CREATE SCHEMA foot_owned AUTHORIZATION foot_agent;
CREATE SCHEMA foot_open;
GRANT CREATE ON SCHEMA foot_open TO foot_team;
CREATE SCHEMA oncall AUTHORIZATION foot_agent;
CREATE SCHEMA safe;
ALTER ROLE alice SET search_path = foot_owned, public;
ALTER ROLE oncall SET search_path = "$user", public;
SELECT * FROM audit_rows();
ALTER ROLE alice IN DATABASE contrib_regression SET search_path = safe, public;
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = "Foot_Quoted", "foot_open"', current_database()); END $$;
CREATE SCHEMA "Foot_Quoted" AUTHORIZATION foot_agent;
SELECT * FROM audit_rows();
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET search_path', current_database()); END $$;
ALTER ROLE alice IN DATABASE contrib_regression RESET search_path;
ALTER ROLE alice RESET search_path;
ALTER ROLE oncall RESET search_path;
-- PostgreSQL's default path still names "$user": oncall's schema is the agent's
SELECT count(*) AS search_path_findings_left FROM audit_rows() WHERE power = 'search_path';

-- the schema holding the switch's functions: an overload there wins even a
-- schema-qualified call
GRANT CREATE ON SCHEMA public TO foot_team;
SELECT * FROM audit_rows();
REVOKE CREATE ON SCHEMA public FROM foot_team;

-- (b) triggers and rules on tables an agent owns or may add triggers to;
-- the switch's own ks_guard and PostgreSQL's internal triggers are not
CREATE FUNCTION foot_grant() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'foot_agent'); RETURN NEW; END $$;
CREATE TABLE foot_tasks (id int PRIMARY KEY, task_type text);
CREATE TRIGGER plant AFTER INSERT ON foot_tasks FOR EACH ROW EXECUTE FUNCTION foot_grant();
CREATE TRIGGER kill_switch BEFORE INSERT ON foot_tasks FOR EACH ROW EXECUTE FUNCTION ks_guard('task_type');
ALTER TABLE foot_tasks OWNER TO foot_agent;
CREATE TABLE foot_shared (x int REFERENCES foot_tasks (id));
CREATE TRIGGER plant_too BEFORE UPDATE ON foot_shared FOR EACH ROW EXECUTE FUNCTION foot_grant();
GRANT TRIGGER ON foot_shared TO foot_team;
CREATE TABLE foot_plain (x int);
CREATE RULE log_it AS ON INSERT TO foot_plain DO ALSO NOTIFY foot;
ALTER TABLE foot_plain OWNER TO foot_agent;
CREATE TABLE not_theirs (x int);
CREATE TRIGGER elsewhere BEFORE INSERT ON not_theirs FOR EACH ROW EXECUTE FUNCTION foot_grant();
SELECT * FROM audit_rows();
DROP TABLE foot_shared, foot_tasks, foot_plain, not_theirs;
DROP FUNCTION foot_grant();

-- (c) SECURITY DEFINER functions of a superuser or an administrator that
-- agents may execute (PUBLIC may, unless revoked); one of a plain role is not
CREATE FUNCTION foot_read(path text) RETURNS text LANGUAGE sql SECURITY DEFINER
  AS 'SELECT pg_read_file(path)';
CREATE FUNCTION foot_admins() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
ALTER FUNCTION foot_admins() OWNER TO alice;
CREATE ROLE foot_plain_role;
CREATE FUNCTION foot_plain_definer() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
ALTER FUNCTION foot_plain_definer() OWNER TO foot_plain_role;
REVOKE EXECUTE ON FUNCTION foot_admins() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION foot_admins() TO foot_team;
SELECT * FROM audit_rows() WHERE role = 'foot_agent' OR detail LIKE '%foot_admins%';
REVOKE EXECUTE ON FUNCTION foot_read(text) FROM PUBLIC;
DROP FUNCTION foot_admins(), foot_plain_definer();
SELECT count(*) AS definer_findings_left FROM audit_rows() WHERE power = 'definer_function';

-- an agent owning a function in an untrusted language can mark it stable,
-- which deny by default lets run
CREATE FUNCTION foot_c() RETURNS text LANGUAGE internal AS 'timeofday';
ALTER FUNCTION foot_c() OWNER TO foot_agent;
SELECT * FROM audit_rows();

DROP FUNCTION foot_c(), foot_read(text), audit_rows();
DROP SCHEMA foot_owned, foot_open, oncall, safe, "Foot_Quoted";
DROP ROLE foot_agent, foot_member, foot_team, alice, oncall, foot_plain_role;
SELECT count(*) AS findings_left FROM ks_audit();
