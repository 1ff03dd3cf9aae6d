-- Scoped halts (ARCHITECTURE §13): ks_engage/ks_disengage(..., scope => role),
-- ks_scopes(), the session's effective mode, the chain, bad input.
CREATE ROLE sc_agent_7 IN ROLE killswitch_agent;
CREATE ROLE sc_agent_8 IN ROLE killswitch_agent;
CREATE ROLE sc_etl_agents;
CREATE ROLE sc_etl_a IN ROLE killswitch_agent, sc_etl_agents;
CREATE ROLE sc_nobody;
CREATE ROLE sc_on_call IN ROLE killswitch_operator;
CREATE ROLE sc_boss IN ROLE killswitch_admin;
SELECT ks_mode() AS fleet_mode, (ks_status()->>'generation')::bigint AS g0 \gset
SELECT :'fleet_mode' AS fleet_mode, ks_status()->'scopes_active' AS scopes_active;

-- bad input: a clear error, nothing changed
SELECT ks_engage('halt_all', 'x', 't', 0, scope => '');
SELECT ks_engage('halt_all', 'x', 't', 0, scope => '   ');
SELECT ks_engage('halt_all', 'x', 't', 0, scope => 'sc_no_such_role');
SELECT ks_engage('halt_all', repeat('x', 1048577), 't', scope => 'sc_agent_7');
SELECT ks_engage('halt_all', NULL, 't', scope => 'sc_agent_7');
SELECT ks_engage('disengaged', 'x', 't', scope => 'sc_agent_7');
SELECT ks_disengage('not halted', 't', scope => 'sc_agent_7');
SELECT ks_disengage('x', 't', scope => 'sc_no_such_role');
SELECT count(*) AS scopes FROM ks_scopes();
SELECT count(*) AS scope_events FROM killswitch.events WHERE scope IS NOT NULL;

-- an operator halts one agent: in force for it, not for its sibling nor the fleet
SET ROLE sc_on_call;
SELECT mode, previous_mode, generation, scope::regrole, scope_name, reason
FROM ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'sc_agent_7');
-- an operator cannot release it
SELECT ks_disengage('operator tries', scope => 'sc_agent_7');
RESET ROLE;
SELECT scope, mode, reason, triggered_by, generation, since <= now() AS since_ok FROM ks_scopes();
SELECT ks_status()->'scopes_active' AS scopes_active,
       (ks_status()->>'generation')::bigint = :g0 AS fleet_generation_unchanged,
       ks_mode() AS my_mode;
SET ROLE sc_agent_7;
SELECT ks_mode(), ks_engaged(), ks_task_allowed('any'), ks_check_task('any')->>'allowed' AS allowed;
-- an agent in scope never releases it
SELECT ks_disengage('agent tries', scope => 'sc_agent_7');
RESET ROLE;
SET ROLE sc_agent_8;
SELECT ks_mode() AS sibling_mode, ks_engaged() AS sibling_engaged;
RESET ROLE;

-- raising to a mode at or below the scope's is a no-op
SELECT generation FROM ks_engage('halt_noncritical', 'lower', scope => 'sc_agent_7');
-- raising it again moves its own generation line
SELECT mode, previous_mode, generation FROM ks_engage('emergency', 'worse', scope => 'sc_agent_7');
SELECT scope, mode, generation FROM ks_scopes();

-- a team through a group role: the member agent is halted, others are not
SELECT mode, generation, scope_name FROM ks_engage('halt_all', 'etl team', scope => 'sc_etl_agents');
SET ROLE sc_etl_a;
SELECT ks_mode() AS etl_member_mode;
RESET ROLE;
SET ROLE sc_agent_8;
SELECT ks_mode() AS outsider_mode;
RESET ROLE;

-- a scope on a role no agent is in: recorded, with a notice; it latches
SELECT mode FROM ks_engage('halt_noncritical', 'just in case', scope => 'sc_nobody');
-- a membership granted afterwards puts the agent in the scope at once
CREATE ROLE sc_agent_9 IN ROLE killswitch_agent;
GRANT sc_nobody TO sc_agent_9;
SET ROLE sc_agent_9;
SELECT ks_mode() AS granted_member_mode;
RESET ROLE;
-- and no REVOKE takes it out while the scope is halted (TAP 231 has the matrix)
REVOKE sc_nobody FROM sc_agent_9;
SET ROLE sc_agent_9;
SELECT ks_mode() AS still_member_mode;
RESET ROLE;

-- a role with an active scope cannot be dropped; a rename keeps its scope
DROP ROLE sc_nobody;
ALTER ROLE sc_nobody RENAME TO sc_nobody_renamed;
SELECT scope, mode FROM ks_scopes() WHERE scope::text LIKE 'sc_nobody%';
ALTER ROLE sc_nobody_renamed RENAME TO sc_nobody;

-- a raise that rolls back leaves nothing; one under a savepoint rolled back neither
BEGIN;
SELECT mode FROM ks_engage('halt_all', 'rolled back', scope => 'sc_agent_8');
SET LOCAL ROLE sc_agent_8;
SELECT ks_mode() AS in_force_before_commit;
RESET ROLE;
ROLLBACK;
SET ROLE sc_agent_8;
SELECT ks_mode() AS after_rollback;
RESET ROLE;
BEGIN;
SAVEPOINT a;
SELECT mode FROM ks_engage('halt_all', 'savepoint', scope => 'sc_agent_8');
ROLLBACK TO SAVEPOINT a;
SET LOCAL ROLE sc_agent_8;
SELECT ks_mode() AS after_savepoint_rollback;
RESET ROLE;
COMMIT;
SELECT count(*) AS sc_agent_8_scopes FROM ks_scopes() WHERE scope = 'sc_agent_8'::regrole;

-- a release is not in force before its commit
SET ROLE sc_boss;
BEGIN;
SELECT mode, previous_mode FROM ks_disengage('fixed', 'boss', scope => 'sc_agent_7');
SELECT mode FROM ks_scopes() WHERE scope = 'sc_agent_7'::regrole;
COMMIT;
RESET ROLE;
SELECT count(*) AS agent_7_scopes FROM ks_scopes() WHERE scope = 'sc_agent_7'::regrole;
SET ROLE sc_agent_7;
SELECT ks_mode() AS released_mode;
RESET ROLE;

-- the chain: one line per scope, the fleet's untouched, every row verifies
SELECT scope_name, array_agg(generation ORDER BY id) AS generations,
       array_agg(mode::text ORDER BY id) AS modes
FROM killswitch.events WHERE scope IS NOT NULL GROUP BY scope_name ORDER BY 1;
SELECT (ks_status()->>'generation')::bigint = :g0 AS fleet_generation_unchanged;
-- (05_history leaves the chain broken on purpose: the scope rows are
-- checked here as ks_verify_events() checks each row, in plain SQL)
SELECT count(*) AS scope_rows,
       bool_and(e.hash = encode(digest(e.prev_hash || killswitch.event_canonical(e), 'sha256'), 'hex')) AS hashes_match,
       bool_and(e.signature = encode(hmac(e.hash, rtrim(pg_read_file(current_setting('killswitch.signing_secret_file')), E'\n'), 'sha256'), 'hex')) AS signed,
       bool_and(e.prev_hash = p.hash) AS chained
FROM killswitch.events e JOIN killswitch.events p ON p.id = e.id - 1
WHERE e.scope IS NOT NULL;
-- a scope row whose scope is altered no longer verifies (the same row unaltered does)
SELECT e.hash = encode(digest(e.prev_hash || killswitch.event_canonical(
           ROW(e.id, e.at, e.mode, e.previous_mode, e.reason, e.triggered_by, e.affected_tasks, e.source,
               e.release_target, e.session_role, e.client_addr, e.backend_pid, e.xid, e.generation, e.key_id,
               e.require_hmac, e.prev_hash, e.hash, e.signature, e.scope, e.scope_name)::killswitch.events),
           'sha256'), 'hex') AS unaltered_matches
FROM killswitch.events e WHERE e.scope_name = 'sc_agent_7' ORDER BY id LIMIT 1;
SELECT e.hash = encode(digest(e.prev_hash || killswitch.event_canonical(
           ROW(e.id, e.at, e.mode, e.previous_mode, e.reason, e.triggered_by, e.affected_tasks, e.source,
               e.release_target, e.session_role, e.client_addr, e.backend_pid, e.xid, e.generation, e.key_id,
               e.require_hmac, e.prev_hash, e.hash, e.signature, 'sc_agent_8'::regrole::oid, 'sc_agent_8')::killswitch.events),
           'sha256'), 'hex') AS altered_scope_still_matches
FROM killswitch.events e WHERE e.scope_name = 'sc_agent_7' ORDER BY id LIMIT 1;
-- a scope event's canonical form names its scope; a fleet event's does not
SELECT strpos(killswitch.event_canonical(e), '"scope":') > 0 AS names_scope,
       strpos(killswitch.event_canonical(e), '"scope_name":"sc_agent_7"') > 0 AS names_name
FROM killswitch.events e WHERE scope_name = 'sc_agent_7' ORDER BY id LIMIT 1;
SELECT bool_or(strpos(killswitch.event_canonical(e), '"scope') > 0) AS fleet_rows_name_a_scope
FROM killswitch.events e WHERE scope IS NULL;
-- (per scope, a generation is unique)
SELECT count(*) = count(DISTINCT (scope, generation)) AS unique_per_scope FROM killswitch.events;

-- end: release every scope, drop the roles
SELECT mode FROM ks_disengage('done', scope => 'sc_etl_agents');
SELECT mode FROM ks_disengage('done', scope => 'sc_nobody');
SELECT count(*) AS scopes, ks_status()->'scopes_active' AS scopes_active FROM ks_scopes();
DROP ROLE sc_agent_7, sc_agent_8, sc_agent_9, sc_etl_a, sc_etl_agents, sc_nobody, sc_on_call, sc_boss;
