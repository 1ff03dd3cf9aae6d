-- ks_guard (ARCHITECTURE §8.2): task rows refused (or held) while halted, with
-- critical tasks exempted where the reference rules allow.
CREATE TABLE tasks (id serial, task_type text, status text DEFAULT 'pending');
CREATE TRIGGER guard BEFORE INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION ks_guard('task_type', 'status', 'held');
CREATE TABLE strict_tasks (id serial, task_type text);
CREATE TRIGGER guard BEFORE INSERT OR UPDATE ON strict_tasks
    FOR EACH ROW EXECUTE FUNCTION ks_guard('task_type');
CREATE TABLE any_rows (x int);
CREATE TRIGGER guard BEFORE INSERT OR UPDATE ON any_rows
    FOR EACH ROW EXECUTE FUNCTION ks_guard();

-- disengaged: rows pass unchanged
INSERT INTO tasks (task_type) VALUES ('data_export') RETURNING task_type, status;
INSERT INTO strict_tasks (task_type) VALUES ('data_export') RETURNING task_type;
INSERT INTO any_rows VALUES (1) RETURNING x;

-- halt_noncritical: held, refused, or let through when critical
SELECT (ks_engage('halt_noncritical', 'guard test', 'tester')).mode;
INSERT INTO tasks (task_type) VALUES ('data_export'), ('audit_logging') RETURNING task_type, status;
INSERT INTO strict_tasks (task_type) VALUES ('data_export');
INSERT INTO strict_tasks (task_type) VALUES ('audit_logging') RETURNING task_type;
INSERT INTO any_rows VALUES (2);
UPDATE tasks SET status = 'running' WHERE id = 1 RETURNING id, status;

-- halt_all: non-critical refused, critical let through
SELECT (ks_engage('halt_all', 'guard test', 'tester')).mode;
INSERT INTO tasks (task_type) VALUES ('data_export');
INSERT INTO tasks (task_type) VALUES ('cost_tracking') RETURNING task_type, status;
UPDATE strict_tasks SET task_type = 'data_export';
INSERT INTO tasks (task_type) VALUES (NULL);

-- the refusal carries the dedicated SQLSTATE
DO $$
BEGIN
    INSERT INTO tasks (task_type) VALUES ('data_export');
EXCEPTION WHEN SQLSTATE 'KS001' THEN
    RAISE NOTICE 'caught %', SQLSTATE;
END $$;

-- emergency: everything refused, critical tasks too
SELECT (ks_engage('emergency', 'guard test', 'tester')).mode;
INSERT INTO tasks (task_type) VALUES ('audit_logging');
INSERT INTO strict_tasks (task_type) VALUES ('safety_monitoring');

-- released: rows pass again; held rows stay held until someone releases them
SELECT (ks_disengage('guard test over', 'tester')).mode;
INSERT INTO tasks (task_type) VALUES ('data_export') RETURNING task_type, status;
SELECT task_type, status, count(*) FROM tasks GROUP BY 1, 2 ORDER BY 1, 2;
UPDATE tasks SET status = 'pending' WHERE status = 'held';

-- a mistyped guard fails at its first row, also while disengaged
CREATE TABLE bad1 (x int);
CREATE TRIGGER guard BEFORE INSERT ON bad1 FOR EACH ROW EXECUTE FUNCTION ks_guard('no_such_column');
INSERT INTO bad1 VALUES (1);
CREATE TABLE bad2 (x int, s int);
CREATE TRIGGER guard BEFORE INSERT ON bad2 FOR EACH ROW EXECUTE FUNCTION ks_guard('x', 's', 'not a number');
INSERT INTO bad2 VALUES (1, 1);
CREATE TABLE bad3 (x int);
CREATE TRIGGER guard BEFORE INSERT ON bad3 FOR EACH ROW EXECUTE FUNCTION ks_guard('x', 'x');
INSERT INTO bad3 VALUES (1);
CREATE TABLE bad4 (x int);
CREATE TRIGGER guard AFTER INSERT ON bad4 FOR EACH ROW EXECUTE FUNCTION ks_guard();
INSERT INTO bad4 VALUES (1);
CREATE TABLE bad5 (x int);
CREATE TRIGGER guard BEFORE INSERT ON bad5 FOR EACH STATEMENT EXECUTE FUNCTION ks_guard();
INSERT INTO bad5 VALUES (1);
SELECT ks_guard();
-- a long reason in a refusal is cut on a character boundary, never inside one
SELECT (ks_engage('halt_all', repeat('é', 300), 'tester')).mode;
DO $$
DECLARE
    d text;
BEGIN
    INSERT INTO tasks (task_type) VALUES ('etl');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'detail: % bytes, % characters between "Set by tester: " and the final period, all é: %',
        octet_length(d), length(d) - 16,
        substr(d, 16, length(d) - 16) = repeat('é', length(d) - 16) AND right(d, 1) = '.';
END $$;
SELECT (ks_disengage('long reason over', 'tester')).mode;
DROP TABLE tasks, strict_tasks, any_rows, bad1, bad2, bad3, bad4, bad5;
