-- The governance table (ARCHITECTURE §2): hash-chained, HMAC-signed, checked
-- by ks_verify_events(), and re-checkable in plain SQL with pgcrypto.
SELECT (ks_engage('halt_noncritical', 'chain one', 'auditor-test')).mode;
SELECT (ks_engage('halt_all', 'chain two', 'auditor-test')).mode;
SELECT (ks_disengage('chain three', 'auditor-test')).mode;

SELECT ok, checked = (SELECT count(*) FROM killswitch.events) AS checked_all, first_bad_id
FROM ks_verify_events();

-- the chain: ids gapless, each prev_hash the previous row's hash, the first 64 zeros
SELECT bool_and(id = rn) AS gapless,
       bool_and(prev_hash = coalesce(lag_hash, repeat('0', 64))) AS linked,
       bool_and(hash ~ '^[0-9a-f]{64}$' AND signature ~ '^[0-9a-f]{64}$') AS hex
FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn, prev_hash, hash, signature,
             lag(hash) OVER (ORDER BY id) AS lag_hash FROM killswitch.events) e;

-- an auditor needs no C: the signature is HMAC-SHA256 of the hash under the secret
SELECT bool_and(signature = encode(hmac(hash, rtrim(pg_read_file(current_setting('killswitch.signing_secret_file')), E'\n'), 'sha256'), 'hex'))
       AS signatures_check_with_pgcrypto
FROM killswitch.events;
-- and the hash is SHA-256 of prev_hash and the row's canonical JSON
SELECT bool_and(hash = encode(digest(prev_hash || killswitch.event_canonical(e), 'sha256'), 'hex'))
       AS hashes_check_with_pgcrypto
FROM killswitch.events e;
SELECT killswitch.event_canonical(e) ~ '^\{"affected_tasks":0,"at":"[^"]+","backend_pid":\d+,"client_addr":null,"generation":\d+,"id":\d+,"key_id":"[0-9a-f]{16}","mode":"halt_noncritical","previous_mode":"disengaged","reason":"chain one","release_target":null,"require_hmac":true,"session_role":"[^"]+","source":"sql","triggered_by":"auditor-test","xid":\d+\}$'
       AS canonical_form
FROM killswitch.events e WHERE reason = 'chain one';
-- every row names the key that signed it
SELECT count(DISTINCT key_id) AS keys FROM killswitch.events;

-- a superuser who disables the guard and edits a row is caught, and the row named
SELECT id AS tampered_id FROM killswitch.events WHERE reason = 'chain two' \gset
ALTER TABLE killswitch.events DISABLE TRIGGER events_append_only;
UPDATE killswitch.events SET reason = 'forged' WHERE id = :tampered_id;
ALTER TABLE killswitch.events ENABLE TRIGGER events_append_only;
SELECT ok, first_bad_id = :tampered_id AS names_the_row FROM ks_verify_events();
SELECT signature = encode(hmac(hash, rtrim(pg_read_file(current_setting('killswitch.signing_secret_file')), E'\n'), 'sha256'), 'hex') AS signature_still_matches_hash,
       hash = encode(digest(prev_hash || killswitch.event_canonical(e), 'sha256'), 'hex') AS hash_matches_content
FROM killswitch.events e WHERE id = :tampered_id;
-- a deleted row breaks the chain at the next one
ALTER TABLE killswitch.events DISABLE TRIGGER events_append_only;
UPDATE killswitch.events SET reason = 'chain two' WHERE id = :tampered_id;
SELECT ok AS restored FROM ks_verify_events();
DELETE FROM killswitch.events WHERE id = :tampered_id;
ALTER TABLE killswitch.events ENABLE TRIGGER events_append_only;
SELECT ok, first_bad_id = :tampered_id + 1 AS names_the_next_row FROM ks_verify_events();
