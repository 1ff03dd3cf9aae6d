-- ks_wait(generation, timeout_ms): the generation once it differs from the
-- one given, at once if it already does, or at the timeout the current one.
-- Waking a waiter from another session is TAP 130 (test/t/130_wait.pl).
SELECT (ks_status()->>'generation')::bigint AS g \gset
\set VERBOSITY default

-- the declaration: STRICT, VOLATILE, PARALLEL RESTRICTED, open to everyone
SELECT p.proisstrict, p.provolatile, p.proparallel, pg_get_function_arguments(p.oid) AS args,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call
FROM pg_proc p WHERE p.proname = 'ks_wait';

-- a generation that differs from the current one returns the current one at once
SELECT ks_wait(:g + 1) = :g AS ahead_returns_current, ks_wait(:g + 1000000, 2147483647) = :g AS longest_timeout_accepted;
-- timeout 0 returns the current generation, whatever was given
SELECT ks_wait(:g, 0) = :g AS zero_timeout, ks_wait(0, 0) = :g AS zero_zero;
-- a short timeout with nothing changing returns the same generation
SELECT ks_wait(:g, 20) = :g AS same_after_timeout;
-- after a change, waiting on the old generation returns the new one at once
SELECT mode FROM ks_engage('halt_noncritical', 'wait test', 'regress');
SELECT ks_wait(:g, 600000) = :g + 1 AS new_generation;
SELECT ks_wait(:g + 1, 0) = :g + 1 AS current;

-- an agent may wait in every mode that lets it read ...
CREATE ROLE wait_agent IN ROLE killswitch_agent;
SET ROLE wait_agent;
SELECT ks_mode(), ks_wait(:g, 0) = :g + 1 AS agent_waits;
RESET ROLE;
SELECT mode FROM ks_engage('halt_all', 'wait test', 'regress');
SET ROLE wait_agent;
SELECT ks_mode(), ks_wait(:g + 1, 600000) = :g + 2 AS agent_waits;
RESET ROLE;
SELECT mode FROM ks_disengage('wait test', 'regress');
SET ROLE wait_agent;
SELECT ks_mode(), ks_wait(:g + 2, 600000) = :g + 3 AS agent_waits;
RESET ROLE;
-- ... and in emergency is refused like every statement: KS001 is how it learns
SELECT mode FROM ks_engage('emergency', 'wait test', 'regress');
SET ROLE wait_agent;
SELECT ks_wait(:g + 3, 0);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT ks_wait(:g + 3, 0) = :g + 4 AS others_still_wait;
SELECT mode FROM ks_disengage('wait test done', 'regress');
DROP ROLE wait_agent;
SELECT (ks_status()->>'generation')::bigint AS g \gset

-- statement_timeout ends a wait with its usual error
SET statement_timeout = '100ms';
SELECT ks_wait(:g, 600000);
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;

-- bad input: a clear error, nothing changed
SELECT ks_wait(:g, -1);
\echo :LAST_ERROR_SQLSTATE
SELECT ks_wait(-1, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT ks_wait(:g, -2147483648);
SELECT ks_wait(0, 2147483648::bigint::integer);   -- the type bounds it: INT_MAX ms (24.8 days) is the longest
-- NULL in, NULL out (STRICT), at once
SELECT ks_wait(NULL) IS NULL AS null_generation, ks_wait(:g, NULL) IS NULL AS null_timeout;
SELECT ks_mode(), (ks_status()->>'generation')::bigint = :g AS nothing_changed;
