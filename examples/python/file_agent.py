#!/usr/bin/env python3
"""An agent that shares the halt with the reference Python library
(hummbl-governance) through the state file, and writes to the database.

    HUMMBL_SIGNING_SECRET=... python3 file_agent.py --state-dir /srv/killswitch \
        --dsn "dbname=postgres user=agent_7"

Before every action it loads the state file with the library,
KillSwitch.load_from_file(state_dir, signing_secret=..., critical_tasks=...):
a KillSwitch instance is a snapshot of the file when it was loaded, so the
agent loads it again each time.  critical_tasks comes from the database's
killswitch.critical_tasks table: the library knows only its five defaults --
and falls back to them when given an empty set (critical_tasks or
DEFAULT_CRITICAL_TASKS), so an empty table becomes a set holding only "\0",
a task nobody can have (PostgreSQL text cannot hold a NUL).
A file it cannot trust (KillSwitchTamperError) counts as halted.

With hummbl-governance installed it uses the library; otherwise (as in
`make examples`, which has no PyPI) ks_standin.py, which reads the file the
same documented way.  The database stays the last word: a row refused with
KS001 (ks_guard, hard enforcement) halts the agent too.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import psycopg

try:
    from hummbl_governance import KillSwitch
    from hummbl_governance.kill_switch import KillSwitchTamperError
    LIBRARY = "hummbl-governance"
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ks_standin import KillSwitch, KillSwitchTamperError
    LIBRARY = "ks_standin"


def say(event, **fields):
    """One line of the agent's account of itself, for the harness."""
    fields.update(event=event, t=time.time())
    print(json.dumps(fields), flush=True)


def main():
    """Check the file before every action, act through the database, until --seconds are up."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsn", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name", default="file-agent")
    p.add_argument("--task", default="data_export")
    p.add_argument("--poll-ms", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60)
    args = p.parse_args()

    # the secret the server signs with: killswitch.signing_secret_file, one
    # trailing newline stripped -- the library's HUMMBL_SIGNING_SECRET
    secret = os.environ["HUMMBL_SIGNING_SECRET"].encode("utf-8")
    conn = psycopg.connect(args.dsn, autocommit=True, application_name=args.name)
    rows = [r[0] for r in conn.execute("SELECT task FROM killswitch.critical_tasks")]
    critical = frozenset(rows) or frozenset(["\0"])     # never empty: the library's defaults
    say("connected", library=LIBRARY, critical=sorted(rows))

    halted = False
    done = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        try:
            ks = KillSwitch.load_from_file(Path(args.state_dir), signing_secret=secret,
                                           critical_tasks=critical)
            verdict = ks.check_task_allowed(args.task)
        except KillSwitchTamperError as e:
            verdict = {"allowed": False, "reason": f"state file not trusted: {e}"}
        if verdict["allowed"]:
            try:
                conn.execute("INSERT INTO tasks (agent, task_type) VALUES (%s, %s)",
                             [args.name, args.task])
                if halted:
                    halted = False
                    say("resumed")
                done += 1
                if done == 1:
                    say("did")
            except psycopg.Error as e:
                if e.sqlstate != "KS001":
                    raise
                # the file allowed it, the database did not (the guard, hard enforcement)
                verdict = {"allowed": False, "reason": e.diag.message_primary, "how": "ks001"}
        if not verdict["allowed"] and not halted:
            halted = True
            say("halted", how=verdict.get("how", "file"), reason=verdict.get("reason"))
        time.sleep(args.poll_ms / 1000)
    say("finished", done=done)


if __name__ == "__main__":
    sys.exit(main())
