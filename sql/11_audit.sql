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
