-- killswitch.committed_scopes() and await_state()'s known_scopes_version: what
-- a server tells the watchers of its standbys of its scopes (ARCHITECTURE §13
-- "Standbys"); after 17_scopes, whose counts of scope events it would move.
-- The watchers themselves, across servers, are TAP 225-227.
SELECT (ks_status()->>'generation')::bigint AS g \gset
\set VERBOSITY default

-- the scope copy: its signed bytes and version; given known_scopes_version, a wait ends when the copy moves past it
CREATE ROLE feed_agent;
SELECT version AS sv FROM killswitch.committed_scopes() \gset
CALL killswitch.await_state(:g, 20, :sv);
CALL killswitch.await_state(:g, 600000, :sv + 1);
SELECT mode FROM ks_engage('halt_all', 'feed scope', 'regress', scope => 'feed_agent');
CALL killswitch.await_state(:g, 600000, :sv);
SELECT version > :sv AS moved,
       convert_from(scopes, 'UTF8')::jsonb->'scopes'->((SELECT oid FROM pg_roles WHERE rolname = 'feed_agent')::text)->>'mode' AS mode,
       convert_from(scopes, 'UTF8')::jsonb->>'version' = version::text AS version_is_the_copys,
       convert_from(scopes, 'UTF8')::jsonb ? 'signature' AS signed
FROM killswitch.committed_scopes();
SELECT version AS sv FROM killswitch.committed_scopes() \gset
SELECT mode FROM ks_disengage('feed scope done', 'regress', scope => 'feed_agent');
CALL killswitch.await_state(:g, 600000, :sv);
SELECT version > :sv AS moved_again,
       convert_from(scopes, 'UTF8')::jsonb->'scopes' AS scopes_left
FROM killswitch.committed_scopes();
CALL killswitch.await_state(:g, 20, -1);
DROP ROLE feed_agent;

