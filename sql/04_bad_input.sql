-- Bad input gets a clear error and changes nothing; valid input round-trips
-- exactly, through the returned row, the history and the state file.
SELECT (ks_status()->>'generation')::bigint AS g0 \gset

SELECT ks_engage('stop', 'unknown mode');
SELECT ks_engage(NULL, 'null mode');
SELECT ks_engage('halt_all', NULL);
SELECT ks_engage('halt_all', '');
SELECT ks_engage('halt_all', E' \t\n ');
SELECT ks_engage('disengaged', 'engaging disengaged');
SELECT ks_engage('halt_all', 'negative', 'x', -1);
SELECT ks_engage('halt_all', 'empty triggered_by', '');
SELECT ks_disengage(NULL);
SELECT ks_disengage('');
-- 1 MB is far past the 64 KiB limit; 65537 bytes is just past it
SELECT ks_engage('halt_all', repeat('x', 1024 * 1024));
SELECT ks_engage('halt_all', repeat('x', 65537));
SELECT ks_engage('halt_all', 'long name', repeat('y', 65537));
-- the limit is on UTF-8 bytes: 21846 three-byte characters are 65538 bytes
SELECT ks_engage('halt_all', repeat('€', 21846));
-- nothing above changed anything
SELECT ks_mode(), (ks_status()->>'generation')::bigint = :g0 AS generation_unchanged;

-- exactly 64 KiB is accepted and round-trips
SELECT length(reason), md5(reason) = md5(repeat('z', 65536)) AS same
FROM ks_engage('halt_all', repeat('z', 65536), 'limit');
SELECT length(reason) FROM ks_history(1);

-- every hard character round-trips: quotes, backslashes, newlines, tabs,
-- every control character, DEL, non-ASCII, astral
CREATE TEMP TABLE hard AS
SELECT E'it''s "quoted" \\ back\\slash /slash\nnew line\ttab' ||
       string_agg(chr(c), '' ORDER BY c) || chr(127) ||
       ' café 東京 ' || U&'\+01F680' || ' end' AS txt
FROM generate_series(1, 31) c;
SELECT (SELECT txt FROM hard) AS txt \gset
SELECT reason = :'txt' AS reason_exact, triggered_by = :'txt' AS by_exact, generation > :g0 AS newer
FROM ks_engage('emergency', :'txt', :'txt');
SELECT reason = :'txt' AS history_exact FROM ks_history(1);
-- the state file says the same (the server writes Python-style \u escapes; jsonb decodes them)
SELECT f->>'reason' = :'txt' AS file_reason_exact, f->>'triggered_by' = :'txt' AS file_by_exact,
       f->>'mode' AS file_mode, (f->>'generation')::bigint = (ks_status()->>'generation')::bigint AS file_generation,
       f->>'signature' ~ '^[0-9a-f]{64}$' AS signed
FROM (SELECT pg_read_file(current_setting('killswitch.state_dir') || '/kill_switch_state.json')::jsonb AS f) s;
-- and in pure ASCII, as Python's ensure_ascii writes it
SELECT pg_read_file(current_setting('killswitch.state_dir') || '/kill_switch_state.json') ~ '^[\x0a\x20-\x7e]*$' AS ascii_only;
SELECT position('\ud83d\ude80' in pg_read_file(current_setting('killswitch.state_dir') || '/kill_switch_state.json')) > 0 AS surrogate_pair,
       position('\u007f' in pg_read_file(current_setting('killswitch.state_dir') || '/kill_switch_state.json')) > 0 AS del_escaped;

SELECT (ks_disengage('end of 04_bad_input', 'tester')).mode;
