-- NULL and hand-built inputs to the SQL functions get a clear error (or a
-- NULL), never an internal error (XX000), and change nothing.
SELECT (ks_status()->>'generation')::bigint AS g0 \gset
\set VERBOSITY default

-- event_canonical() of a row killswitch.events could not hold
SELECT killswitch.event_canonical(NULL::killswitch.events) IS NULL AS null_row_gives_null;
SELECT killswitch.event_canonical(row(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::killswitch.events);
SELECT killswitch.event_canonical(row(1, '2026-01-01 00:00:00+00', NULL, NULL, 'r', 't', 0, 'sql', NULL,
                                      'u', NULL, 1, '1', 1, 'k', true, '', '', '', NULL, NULL)::killswitch.events);
SELECT killswitch.event_canonical(row(1, '2026-01-01 00:00:00+00', 'halt_all', NULL, NULL, 't', 0, 'sql', NULL,
                                      'u', NULL, 1, '1', 1, 'k', true, '', '', '', NULL, NULL)::killswitch.events);
SELECT killswitch.event_canonical(row(1, '2026-01-01 00:00:00+00', 'halt_all', NULL, 'r', 't', 0, 'sql', NULL,
                                      'u', NULL, 1, '1', 1, NULL, true, '', '', '', NULL, NULL)::killswitch.events);
-- a complete row has one; the nullable columns may be NULL
SELECT killswitch.event_canonical(row(1, '2026-01-01 00:00:00+00', 'halt_all', NULL, 'r', 't', 0, 'sql', NULL,
                                      'u', NULL, 1, '1', 1, 'k', true, NULL, NULL, NULL, NULL, NULL)::killswitch.events);
-- a client address (a TCP client's row) is in it as written, IPv4 and IPv6
SELECT a, strpos(killswitch.event_canonical(row(1, '2026-01-01 00:00:00+00', 'halt_all', NULL, 'r', 't', 0, 'sql',
                                                NULL, 'u', a::inet, 1, '1', 1, 'k', true, NULL, NULL, NULL, NULL, NULL)::killswitch.events),
                 '"client_addr":"' || a || '"') > 0 AS canonical_has_address
FROM (VALUES ('127.0.0.1'), ('::1'), ('2001:db8::17')) v(a);
-- and a real row's is what its hash covers
SELECT mode FROM ks_engage('halt_noncritical', 'inputs test', 'regress');
SELECT encode(sha256(convert_to(e.prev_hash || killswitch.event_canonical(e), 'UTF8')), 'hex') = e.hash AS hash_matches
FROM killswitch.events e ORDER BY id DESC LIMIT 1;

-- the other functions, with NULL arguments
SELECT ks_check_task(NULL);
SELECT ks_task_allowed(NULL);
SELECT ks_assert_task(NULL);
SELECT ks_engage(NULL, 'null mode');
SELECT ks_engage('halt_all', NULL);
SELECT ks_disengage(NULL);
SELECT count(*) >= 0 AS ok FROM ks_history(NULL, NULL);
SELECT killswitch.iso_utc(NULL) IS NULL AS iso_null;

-- nothing above but the one engage changed anything
SELECT ks_mode(), (ks_status()->>'generation')::bigint = :g0 + 1 AS one_change;
SELECT mode FROM ks_disengage('inputs test done', 'regress');
