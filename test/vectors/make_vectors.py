#!/usr/bin/env python3
"""Generate the cross-language test vectors in vectors.json.

Standard library only.  Each vector is an object, the bytes Python's
json.dumps(obj, separators=(",", ":"), sort_keys=True) prints for it, and the
HMAC-SHA256 of those bytes under SECRET: exactly what the reference library
(hummbl-governance KillSwitch._compute_signature) signs.  The C side
(test/store_vectors.c) must reproduce every canonical form and signature.

Run:  python3 test/vectors/make_vectors.py > test/vectors/vectors.json
"""
import hashlib
import hmac
import json

SECRET = "3f1c0c9e8f2b4a7d9e6b5c4d3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f"

CONTROL = "".join(chr(c) for c in range(1, 0x20))  # NUL cannot live in PostgreSQL text

OBJECTS = [
    ("reference engage", {"mode": "HALT_ALL", "engaged_at": "2026-11-24T09:05:10.123456+00:00",
                          "reason": "anomaly detected in prod", "triggered_by": "ops-agent-1"}),
    ("reference fresh state", {"mode": "DISENGAGED", "engaged_at": None, "reason": None,
                               "triggered_by": None}),
    ("full state", {"mode": "EMERGENCY", "engaged_at": "2026-11-24T09:05:10.000001+00:00",
                    "reason": "cost burn", "triggered_by": "cost_governor", "generation": 42,
                    "key_id": "0123456789abcdef", "previous_mode": "HALT_ALL",
                    "affected_tasks": 7, "event_id": 41, "source": "sql"}),
    ("every control character", {"mode": "HALT_ALL", "reason": CONTROL}),
    ("quotes backslashes slash DEL", {"mode": "HALT_ALL",
                                      "reason": "say \"stop\" \\ now / later \x7f end"}),
    ("latin-1 and BMP", {"mode": "HALT_ALL", "reason": "café – naïve – Zürich – 東京 – \u2028\ufeff\uffff"}),
    ("astral", {"mode": "HALT_ALL", "reason": "rocket \U0001F680 and \U00010000 and \U0010FFFF"}),
    ("non-ASCII key order", {"é": 1, "z": 2, "a": 3, "Z": 4, "\U0001F600": 5, "\uffff": 6, "mode": "HALT_ALL"}),
    ("nested and typed", {"mode": "HALT_ALL", "failure_class": "BUDGET",
                          "extra": {"b": [1, -2, True, False, None, "x"], "a": {}}, "list": []}),
    ("big integers", {"mode": "HALT_ALL", "generation": 9223372036854775807,
                      "affected_tasks": 0, "neg": -9223372036854775808}),
    ("empty strings", {"mode": "HALT_ALL", "reason": "", "triggered_by": ""}),
    ("a release naming the state it replaces, at the generation bound",
     {"mode": "DISENGAGED", "engaged_at": "2026-11-24T09:05:10.000001+00:00",
      "reason": "root cause fixed", "triggered_by": "alice", "generation": 9007199254740991,
      "replaces": "3b1c0c9e8f2b4a7d9e6b5c4d3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f",
      "release_key_id": "0123456789abcdef",
      "release_signature": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}),
]


def canonical(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def main():
    vectors = []
    for name, obj in OBJECTS:
        canon = canonical(obj)
        sig = hmac.new(SECRET.encode("utf-8"), canon.encode("utf-8"), hashlib.sha256).hexdigest()
        vectors.append({"name": name, "object": obj, "canonical": canon, "signature": sig})
    print(json.dumps({"secret": SECRET, "vectors": vectors}, indent=2))


if __name__ == "__main__":
    main()
