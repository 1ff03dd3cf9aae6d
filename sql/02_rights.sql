-- Who may do what (ARCHITECTURE §6): operators engage, admins release, agents
-- never release; the history is append-only; the secret stays hidden.
CREATE ROLE plain_user;
CREATE ROLE on_call IN ROLE killswitch_operator;
CREATE ROLE boss IN ROLE killswitch_admin;
CREATE ROLE rogue IN ROLE killswitch_agent, killswitch_admin;
CREATE ROLE fleet_bot IN ROLE killswitch_agent;
GRANT killswitch_admin TO fleet_bot;

-- the three roles exist, NOLOGIN; an admin has the operator's rights
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'killswitch\_%' ORDER BY 1;
SELECT pg_has_role('killswitch_admin', 'killswitch_operator', 'MEMBER') AS admin_is_operator;

-- PUBLIC may only read
SET ROLE plain_user;
SELECT ks_mode(), ks_engaged(), ks_task_allowed('x'), ks_status()->>'mode' AS status_mode;
SELECT count(*) >= 0 AS can_read_history FROM ks_history();
SELECT ks_engage('halt_all', 'plain user tries');
SELECT ks_disengage('plain user tries');
INSERT INTO killswitch.events (id) VALUES (999);
INSERT INTO killswitch.critical_tasks (task) VALUES ('mine');
-- the secret's path is hidden; the secret never shows (42501: PostgreSQL's
-- wording of the refusal changed in 16)
\set VERBOSITY sqlstate
SHOW killswitch.signing_secret_file;
\set VERBOSITY default
SELECT count(*) AS visible FROM pg_settings WHERE name = 'killswitch.signing_secret_file';
RESET ROLE;

-- an operator engages, repeats and raises, but cannot lower or release
SET ROLE on_call;
SELECT mode, triggered_by, session_role FROM ks_engage('halt_noncritical', 'on call sees smoke');
SELECT mode FROM ks_engage('halt_noncritical', 'still smoke', 'pager');
SELECT mode FROM ks_engage('halt_all', 'fire');
SELECT ks_engage('halt_noncritical', 'lowering is a release');
SELECT ks_disengage('operator tries to release');
SELECT ks_mode();
RESET ROLE;

-- session_role is the authenticated session user, whatever triggered_by says
SELECT triggered_by, session_role FROM ks_history(3);

-- an admin releases, and may lower with ks_engage too
SET ROLE boss;
SELECT mode, previous_mode FROM ks_engage('halt_noncritical', 'step down');
SELECT mode, previous_mode, session_role FROM ks_disengage('all clear');
INSERT INTO killswitch.critical_tasks (task) VALUES ('boss_task');
DELETE FROM killswitch.critical_tasks WHERE task = 'boss_task';
RESET ROLE;

-- an agent can never release, even when granted admin, even via SET ROLE
SELECT (ks_engage('halt_all', 'agents must not undo this', 'tester')).mode;
SET ROLE rogue;
SELECT ks_disengage('rogue agent');
SELECT ks_engage('halt_noncritical', 'rogue lowers');
RESET ROLE;
SET SESSION AUTHORIZATION fleet_bot;
SET ROLE killswitch_admin;
SELECT current_user, session_user;
SELECT ks_disengage('agent with SET ROLE admin');
RESET SESSION AUTHORIZATION;
SELECT ks_mode();

-- the history is append-only, for its owner and superusers too
UPDATE killswitch.events SET reason = 'rewritten';
DELETE FROM killswitch.events;
TRUNCATE killswitch.events;
UPDATE killswitch.snapshots SET snapshot = '{}';
SELECT count(*) > 0 AS history_intact FROM killswitch.events WHERE reason = 'agents must not undo this';

-- functions that change the state are not executable by PUBLIC
SELECT p.proname, has_function_privilege('plain_user', p.oid, 'EXECUTE') AS plain_user_may
FROM pg_proc p WHERE p.proname IN ('ks_engage', 'ks_disengage', 'ks_mode', 'ks_status', 'ks_verify_events')
ORDER BY 1;
-- no SECURITY DEFINER functions; the SQL ones pin search_path
SELECT count(*) AS security_definer FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'killswitch' WHERE p.prosecdef;
SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'killswitch'
WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'sql') ORDER BY 1;

SELECT (ks_disengage('end of 02_rights', 'tester')).mode;
DROP ROLE plain_user, on_call, boss, rogue, fleet_bot;
