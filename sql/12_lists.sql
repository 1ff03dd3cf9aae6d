-- The critical tasks and their grants: one shared list, names of any
-- length, changed only by committed transactions; a claim to a critical
-- task exempts an agent from hard enforcement only when granted to its
-- session user (directly or through a role it is a member of).
CREATE ROLE lists_admin IN ROLE killswitch_admin;
CREATE ROLE lists_bot IN ROLE killswitch_agent;
CREATE ROLE lists_granted_bot IN ROLE killswitch_agent;
CREATE ROLE lists_team;
GRANT lists_team TO lists_granted_bot;
CREATE TABLE lists_t (x int);
GRANT ALL ON lists_t TO PUBLIC;

-- the defaults are critical and granted to nobody
SELECT task FROM killswitch.critical_tasks ORDER BY task;
SELECT count(*) AS grants FROM killswitch.task_grants;

-- names of any length PostgreSQL allows; no prefix stands in for a name
INSERT INTO killswitch.critical_tasks (task)
    VALUES (repeat('a', 200)), (repeat('p', 63) || '_real'), (repeat('z', 2000));
SELECT (ks_engage('halt_all', 'lists test', 'tester')).mode;
SELECT octet_length(t) AS bytes, ks_check_task(t)->>'allowed' AS allowed
    FROM (VALUES (repeat('a', 200)), (repeat('a', 199)), (repeat('a', 201)),
                 (repeat('p', 63) || '_real'), (repeat('p', 63) || '_fake'), (repeat('p', 63)),
                 (repeat('z', 2000))) v(t);

-- a change takes effect when its transaction commits, not before, not on rollback
BEGIN;
INSERT INTO killswitch.critical_tasks (task) VALUES ('lists_nightly');
SELECT ks_check_task('lists_nightly')->>'allowed' AS before_commit;
COMMIT;
SELECT ks_check_task('lists_nightly')->>'allowed' AS after_commit;
BEGIN;
DELETE FROM killswitch.critical_tasks WHERE task = 'lists_nightly';
ROLLBACK;
SELECT ks_check_task('lists_nightly')->>'allowed' AS after_rollback;
BEGIN;
SAVEPOINT s;
DELETE FROM killswitch.critical_tasks WHERE task = 'lists_nightly';
ROLLBACK TO s;
COMMIT;
SELECT ks_check_task('lists_nightly')->>'allowed' AS after_savepoint_rollback;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) > 0 AS snapshot_taken FROM killswitch.critical_tasks;
INSERT INTO killswitch.critical_tasks (task) VALUES ('lists_in_rr');
COMMIT;
SELECT ks_check_task('lists_in_rr')->>'allowed' AS after_repeatable_read_commit;

-- the ks_guard trigger reads the same list
CREATE TABLE lists_tasks (task_type text);
CREATE TRIGGER guard BEFORE INSERT ON lists_tasks
    FOR EACH ROW EXECUTE FUNCTION ks_guard('task_type');
INSERT INTO lists_tasks VALUES (repeat('p', 63) || '_real') RETURNING octet_length(task_type);
INSERT INTO lists_tasks VALUES (repeat('p', 63) || '_fake');

-- grants: of critical tasks only, to existing roles, by administrators
SET ROLE lists_admin;
INSERT INTO killswitch.task_grants (task, grantee) VALUES ('not_critical', 'lists_bot');
INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'no_such_role');
INSERT INTO killswitch.task_grants (task, grantee)
    VALUES ('audit_logging', 'lists_team'), ('lists_nightly', 'lists_bot');
SELECT task, grantee, granted_by FROM killswitch.task_grants ORDER BY task, grantee::text;
RESET ROLE;
SET ROLE lists_bot;
INSERT INTO killswitch.task_grants (task, grantee) VALUES ('cost_tracking', 'lists_bot');
RESET ROLE;

-- claims, as agent sessions (the session user is what is judged)
\set VERBOSITY terse
SET SESSION AUTHORIZATION lists_bot;
SET killswitch.task = 'audit_logging';
INSERT INTO lists_t VALUES (1);
SET killswitch.task = 'lists_nightly';
INSERT INTO lists_t VALUES (2);
SET killswitch.task = 'not_critical';
INSERT INTO lists_t VALUES (3);
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION lists_granted_bot;
SET killswitch.task = 'audit_logging';
INSERT INTO lists_t VALUES (4);
SET killswitch.task = 'lists_nightly';
INSERT INTO lists_t VALUES (5);
RESET SESSION AUTHORIZATION;
-- emergency: nothing is critical (agent sessions end: 030_enforce.pl)
SELECT (ks_engage('emergency', 'lists test', 'tester')).mode;
SELECT ks_check_task('audit_logging')->>'allowed' AS critical_in_emergency;
SELECT (ks_disengage('lists test over', 'tester')).mode;
SELECT x FROM lists_t ORDER BY x;
SELECT (ks_status()->>'refused_claims')::int >= 2 AS refused_claims_counted;
\set VERBOSITY default

-- deleting a critical task takes its grants along
DELETE FROM killswitch.critical_tasks WHERE task = 'lists_nightly';
SELECT task, grantee FROM killswitch.task_grants ORDER BY task, grantee::text;

DELETE FROM killswitch.task_grants;
DELETE FROM killswitch.critical_tasks WHERE added_by <> 'killswitch';
DROP TABLE lists_t, lists_tasks;
DROP ROLE lists_admin, lists_bot, lists_granted_bot, lists_team;
