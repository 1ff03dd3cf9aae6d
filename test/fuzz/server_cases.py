"""State files for the server-side run of the parser (test/t/041): the
fuzzing corpus, the test vectors' texts and members, and hostile non-ASCII
and escape inputs.  Each case is written as the state file of a running
server or of a postmaster about to start, and says what must come of it:

  apply   validly signed and newer: applied exactly (its texts checked)
  tamper  anything else — a generation beyond 2^53 - 1 or more than 1000
          past the state held included: the server stays up and fails closed

Usage: server_cases.py STATE_DIR SRC_DIR GENERATION list
       server_cases.py STATE_DIR SRC_DIR GENERATION write INDEX
'list' prints the cases' names and expectations (JSON); 'write' writes
one and prints {"name", "expect", "reason", "triggered_by"}.
Standard library only, signing as the reference library does.
"""
import glob
import hashlib
import hmac
import json
import os
import sys
from datetime import datetime, timezone


def main():
    state_dir, src, generation, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    secret = ""
    if os.path.exists(state_dir + "/signing.key"):
        secret = open(state_dir + "/signing.key").read()
        if secret.endswith("\n"):
            secret = secret[:-1]

    def canonical(obj):
        return json.dumps({k: v for k, v in obj.items() if k != "signature"},
                          separators=(",", ":"), sort_keys=True)

    def signed(obj, ensure_ascii=True):
        obj = dict(obj)
        obj["signature"] = hmac.new(secret.encode(), canonical(obj).encode("utf-8", "surrogatepass"),
                                    hashlib.sha256).hexdigest()
        # as the library writes it (indent=2); ensure_ascii=False puts raw
        # UTF-8 on disk, which JSON allows and the signature does not see
        return json.dumps(obj, indent=2, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")

    def state(reason, by="fuzz", **extra):
        obj = {"mode": "HALT_ALL", "engaged_at": datetime.now(timezone.utc).isoformat(),
               "generation": generation, "reason": reason, "triggered_by": by}
        obj.update(extra)
        return obj

    cases = []  # (name, expect, bytes, reason, triggered_by)

    def apply(name, obj, ensure_ascii=True):
        cases.append((name, "apply", signed(obj, ensure_ascii), obj.get("reason"), obj.get("triggered_by")))

    def tamper(name, data):
        cases.append((name, "tamper", data, None, None))

    # the vectors' objects, raised to HALT_ALL at the next generation
    vectors = json.load(open(src + "/test/vectors/vectors.json"))["vectors"]
    for v in vectors:
        obj = dict(v["object"])
        for key in ("key_id", "source", "previous_mode", "event_id"):
            obj.pop(key, None)
        obj.update(mode="HALT_ALL", generation=generation,
                   engaged_at=datetime.now(timezone.utc).isoformat())
        apply("vector: " + v["name"], obj)

    # hostile but valid text, escaped and as raw UTF-8
    hard = ("C1 \x80\x85\x9f nbsp\xa0 \xff BOM\ufeff \ufffe\uffff max\U0010ffff "
            "zwj \U0001F468\u200d\U0001F469\u200d\U0001F467 rtl \u05e9\u05dc\u05d5\u05dd "
            "combining e\u0301 \u2028\u2029 ctl\x01\x1b del\x7f \\u00e9 \"q\"")
    apply("hard text, escaped", state(hard, "\U0001F916 \u00e9"))
    apply("hard text, raw UTF-8 on disk", state(hard, "\u4eba \u00e9"), ensure_ascii=False)
    apply("long astral text (shared memory keeps a whole-character prefix)",
          state("\U0001F6A8\u00e9" * 700, "x" * 40 + "\u6771"))
    apply("an escaped backslash before u00e9 is text, not an escape", state("caf\\u00e9 \\\\ud83d \\"))
    apply("non-ASCII member names", state("keys", **{"\u00e9t\u00e9": "\U0001F600", "\U0001F600": [1]}))

    # generations: at most 1000 past the state held (the generation given is
    # the next one, held + 1), never beyond 2^53 - 1; "replaces" is a string
    # a raise may carry naming anything
    apply("generation 1000 past the state held", state("a long step", generation=generation + 999))
    apply("a raise naming some state in replaces", state("replaces", replaces="ab" * 32))

    # what must fail closed
    tamper("signed, generation 1001 past the state held",
           signed(state("too long a step", generation=generation + 1000)))
    tamper("signed, generation 2^53", signed(state("past the bound", generation=2 ** 53)))
    tamper("signed, generation 2^56", signed(state("wraps shared memory", generation=2 ** 56)))
    tamper("signed, generation 2^63 - 1", signed(state("int64 max", generation=2 ** 63 - 1)))
    tamper("signed, generation 2^64", signed(state("past int64", generation=2 ** 64)))
    tamper("signed, replaces not a string", signed(state("replaces", replaces=7)))
    for path in sorted(glob.glob(src + "/test/fuzz/corpus/*")):
        tamper("corpus: " + os.path.basename(path), open(path, "rb").read())
    tamper("signed, lone high surrogate", signed(state("x \ud800 y")))
    tamper("signed, lone low surrogate", signed(state("\udc00x")))
    tamper("signed, high surrogate then ASCII", signed(state("\ud800A")))
    tamper("signed, reversed pair", signed(state("\ude80\ud83d")))
    tamper("signed, \\u0000", signed(state("nul \x00 here")))
    tamper("signed, lone surrogate in a member name", signed(state("ok", **{"\ud800": 1})))
    good = signed(state("caf\u00e9"))
    tamper("UTF-8 BOM before the object", b"\xef\xbb\xbf" + good)
    tamper("LATIN1 byte in a string", good.replace(b"caf\\u00e9", b"caf\xe9"))
    tamper("overlong UTF-8", good.replace(b"caf\\u00e9", b"caf\xc0\xaf"))
    tamper("UTF-8-encoded surrogate", good.replace(b"caf\\u00e9", b"caf\xed\xa0\x80"))
    tamper("UTF-8 cut short", good.replace(b"caf\\u00e9", b"caf\xe6\x9d"))
    tamper("beyond U+10FFFF in UTF-8", good.replace(b"caf\\u00e9", b"caf\xf4\x90\x80\x80"))
    tamper("short escape", good.replace(b"caf\\u00e9", b"caf\\u00e"))
    tamper("non-hex escape", good.replace(b"caf\\u00e9", b"caf\\uZZZZ"))
    tamper("unknown escape", good.replace(b"caf\\u00e9", b"caf\\x41"))
    tamper("NUL byte", good.replace(b"caf\\u00e9", b"caf\x00"))
    tamper("deep nesting", b"[" * 2000 + b"]" * 2000)
    tamper("an escape at the very end", b'{"mode": "HALT_ALL", "reason": "\\u00')
    tamper("a surrogate pair cut in half at the end", b'{"reason": "\\ud83d\\ude')

    if command == "list":
        print(json.dumps([{"name": c[0], "expect": c[1]} for c in cases]))
        return
    name, expect, data, reason, by = cases[int(sys.argv[5])]
    with open(state_dir + "/kill_switch_state.json", "wb") as f:
        f.write(data)
    print(json.dumps({"name": name, "expect": expect, "reason": reason, "triggered_by": by}))


main()
