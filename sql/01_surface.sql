-- The SQL surface (ARCHITECTURE §7) and the reference library's task rules.
CREATE EXTENSION killswitch CASCADE;

-- every function of the design, with those names
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS returns
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname LIKE 'ks\_%' ORDER BY 1, 2;

-- modes are an ordered enum: >= means "at least this halted"
SELECT enum_range(NULL::ks_mode);
SELECT 'halt_all'::ks_mode > 'halt_noncritical', 'emergency'::ks_mode >= 'halt_all', 'disengaged'::ks_mode < 'halt_noncritical';

-- a fresh cluster starts disengaged, with the five default critical tasks
SELECT ks_mode(), ks_engaged();
SELECT task FROM killswitch.critical_tasks ORDER BY task;

-- the reference result shapes and strings, mode by mode
SELECT ks_check_task('data_export'), ks_task_allowed('data_export');
SELECT id, mode, previous_mode, reason, triggered_by, affected_tasks, source, generation
FROM ks_engage('halt_noncritical', 'cost spike', 'cost_governor', 3);
SELECT ks_mode(), ks_engaged();
SELECT ks_check_task('data_export'), ks_check_task('audit_logging');
SELECT (ks_engage('halt_all', 'anomaly in prod', 'ops-agent-1')).mode;
SELECT ks_check_task('data_export'), ks_check_task('safety_monitoring');
SELECT ks_task_allowed('data_export'), ks_task_allowed('cost_tracking');
SELECT (ks_engage('emergency', 'runaway loop', 'ops')).mode;
SELECT ks_check_task('audit_logging'), ks_task_allowed('kill_switch_itself');

-- ks_assert_task raises the dedicated SQLSTATE KS001, naming mode and task
SELECT ks_assert_task('data_export');
DO $$
BEGIN
    PERFORM ks_assert_task('data_export');
EXCEPTION WHEN SQLSTATE 'KS001' THEN
    RAISE NOTICE 'caught % : %', SQLSTATE, SQLERRM;
END $$;

-- a task added to the table is critical at once (here in halt_all)
SELECT (ks_engage('halt_all', 'step down', 'ops')).mode;
SELECT ks_task_allowed('nightly_backup');
INSERT INTO killswitch.critical_tasks (task) VALUES ('nightly_backup');
SELECT ks_task_allowed('nightly_backup'), ks_check_task('nightly_backup');
DELETE FROM killswitch.critical_tasks WHERE task = 'nightly_backup';
SELECT ks_task_allowed('nightly_backup');

-- ks_status(): the reference library's get_status() shape plus our keys
SELECT s->>'mode' AS mode, s->'engaged' AS engaged, s->'engagement_count' AS engagements,
       s->'total_events' AS total, s->'generation' AS generation, s->>'source' AS source,
       s->>'integrity' AS integrity, s->'require_hmac' AS require_hmac,
       s->'last_engagement'->>'mode' AS last_mode, s->'last_engagement'->>'reason' AS last_reason,
       s->'last_engagement'->>'triggered_by' AS last_by,
       s->'last_engagement'->>'timestamp' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$' AS iso_timestamp
FROM ks_status() s;
SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(ks_status()) k;

-- ks_history(lim, engaged_only): the newest lim, oldest first
SELECT id, mode, reason FROM ks_history();
SELECT id, mode FROM ks_history(2);

-- release
SELECT mode, previous_mode, reason, triggered_by FROM ks_disengage('incident resolved', 'alice');
SELECT ks_mode(), ks_engaged(), ks_check_task('data_export');
SELECT id, mode, reason FROM ks_history(NULL, true);
SELECT id, mode, reason FROM ks_history(1, false);

-- commit semantics, seen from this session
BEGIN;
SELECT (ks_engage('halt_all', 'rolled back', 'x')).mode;
SELECT ks_mode();      -- a raise is in force at once (ARCHITECTURE §5.3)
ROLLBACK;
SELECT ks_mode(), (SELECT count(*) FROM killswitch.events WHERE reason = 'rolled back') AS events;

BEGIN;
SELECT (ks_engage('halt_noncritical', 'kept', 'x')).generation AS g1 \gset
SAVEPOINT s;
SELECT (ks_engage('emergency', 'rolled back with the savepoint', 'x')).mode;
ROLLBACK TO s;
SELECT (ks_engage('halt_all', 'kept too', 'x')).generation = :g1 + 1 AS consecutive;
COMMIT;
SELECT ks_mode(), (SELECT count(*) FROM killswitch.events WHERE reason LIKE 'rolled back%') AS rolled_back_events;
SELECT (ks_status()->>'generation')::bigint = (SELECT max(generation) FROM killswitch.events) AS agree;

-- PREPARE TRANSACTION of a change is refused
BEGIN;
SELECT (ks_engage('emergency', 'two-phase', 'x')).mode;
PREPARE TRANSACTION 'ks';
SELECT ks_mode();

SELECT (ks_disengage('end of 01_surface', 'tester')).mode;
