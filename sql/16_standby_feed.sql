-- killswitch.await_state() and killswitch.committed_state(): what a server
-- tells the watchers of its standbys (ARCHITECTURE §11).  The watchers
-- themselves, across servers, are TAP 153-156.
SELECT (ks_status()->>'generation')::bigint AS g \gset
\set VERBOSITY default

-- the declarations: a procedure that waits, a function that reads, open to everyone
SELECT p.proname, p.prokind, pg_get_function_arguments(p.oid) AS args,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'killswitch' AND p.proname IN ('await_state', 'committed_state', 'committed_scopes') ORDER BY 1;

-- on a primary: the private copy's signed bytes, no silence, its WAL position
SELECT convert_from(state, 'UTF8')::jsonb->>'generation' = :'g' AS the_copy,
       convert_from(state, 'UTF8')::jsonb ? 'signature' AS signed,
       silent_ms, wal_lsn IS NOT NULL AS has_position
FROM killswitch.committed_state();

-- and the history it is on: this server's system identifier and timeline
SELECT system_identifier = (SELECT system_identifier FROM pg_control_system()) AS this_system,
       timeline_id = (SELECT timeline_id FROM pg_control_checkpoint()) AS this_timeline
FROM killswitch.committed_state();

-- a generation other than the copy's returns at once; the copy's waits for the timeout
CALL killswitch.await_state(:g + 1, 600000);
CALL killswitch.await_state(:g, 20);

-- in a transaction block it may not wait (it would hold a snapshot), only read
BEGIN;
CALL killswitch.await_state(:g, 20);
ROLLBACK;
BEGIN;
CALL killswitch.await_state(:g, 0);
COMMIT;

-- bad input: a clear error
CALL killswitch.await_state(NULL, 20);
CALL killswitch.await_state(:g, NULL);
CALL killswitch.await_state(:g, -1);

-- a change moves the copy: a wait on the old generation returns at once
SELECT mode FROM ks_engage('halt_noncritical', 'feed test', 'regress');
CALL killswitch.await_state(:g, 600000);
SELECT convert_from(state, 'UTF8')::jsonb->>'generation' = (:g + 1)::text AS moved,
       convert_from(state, 'UTF8')::jsonb->>'mode' AS mode
FROM killswitch.committed_state();
SELECT mode FROM ks_disengage('feed test done', 'regress');

-- on a primary the standby's fields of ks_status() are null
SELECT ks_status()->'upstream_age_ms' AS age, ks_status()->'upstream_lost' AS lost,
       ks_status()->'replayed_generation' AS replayed, ks_status()->'heard_generation' AS heard,
       ks_status()->'replay_behind_bytes' AS behind;
