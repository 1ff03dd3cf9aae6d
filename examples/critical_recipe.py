#!/usr/bin/python3
"""The README's recipe for the reference library's critical_tasks, with
killswitch.critical_tasks empty: the library takes an empty set as none
given and falls back to its five defaults (critical_tasks or
DEFAULT_CRITICAL_TASKS), so `frozenset(rows)` of an empty table would let
audit_logging run in halt_all while the server blocks it.  The recipe
(`frozenset(rows) or frozenset(["\\0"])`, what file_agent.py does) must not.

Empties the table (and puts its rows back), engages halt_all, shows that the
bare frozenset(rows) would allow audit_logging through the library, then runs
file_agent.py doing audit_logging: it must halt on the file's verdict (not
learn of the halt from a refusal by the database) and write nothing.
Prints ok / not ok lines and `N passed, M failed`.

    critical_recipe.py ADMIN_DSN AGENT_DSN STATE_DIR     (HUMMBL_SIGNING_SECRET set)
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "python"))
try:
    from hummbl_governance import KillSwitch
except ImportError:
    from ks_standin import KillSwitch


def main():
    admin_dsn, agent_dsn, state_dir = sys.argv[1:4]
    secret = os.environ["HUMMBL_SIGNING_SECRET"].encode()
    passed = failed = 0

    def ok(cond, what):
        nonlocal passed, failed
        print(("ok - " if cond else "not ok - ") + what, flush=True)
        passed += bool(cond)
        failed += not cond

    admin = psycopg.connect(admin_dsn, autocommit=True)
    saved = admin.execute("SELECT task FROM killswitch.critical_tasks").fetchall()
    admin.execute("DELETE FROM killswitch.critical_tasks")
    try:
        admin.execute("SELECT ks_engage('halt_all', 'critical_tasks recipe', 'examples')")
        server = admin.execute("SELECT ks_check_task('audit_logging')->>'allowed'").fetchone()[0]
        ok(server == "false", "with killswitch.critical_tasks empty the server blocks audit_logging in halt_all")
        bare = KillSwitch.load_from_file(Path(state_dir), signing_secret=secret, critical_tasks=frozenset())
        ok(bare.check_task_allowed("audit_logging")["allowed"],
           "the bare frozenset(rows) of the empty table would allow it (the library's five defaults)")

        t0 = time.time()
        p = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "python", "file_agent.py"),
                            "--dsn", agent_dsn, "--state-dir", state_dir, "--name", "recipe-agent",
                            "--task", "audit_logging", "--seconds", "2", "--poll-ms", "100"],
                           capture_output=True, text=True, timeout=60)
        events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        halted = [e for e in events if e["event"] == "halted"]
        ok(p.returncode == 0 and halted and halted[0]["how"] == "file",
           "file_agent.py with the recipe halts on the file's verdict, audit_logging not critical"
           + (f" (halted: {halted[0]})" if halted else f" (exit {p.returncode}: {p.stderr.strip()[-200:]})"))
        ok(not any(e["event"] == "did" for e in events), "and never tries the task")
        n = admin.execute("SELECT count(*) FROM tasks WHERE agent = 'recipe-agent' AND ins_at > to_timestamp(%s)",
                          [t0]).fetchone()[0]
        ok(n == 0, "no row of its task")
    finally:
        admin.execute("SELECT ks_disengage('critical_tasks recipe: done', 'examples')")
        with admin.transaction():
            for (task,) in saved:
                admin.execute("INSERT INTO killswitch.critical_tasks (task) VALUES (%s) ON CONFLICT DO NOTHING",
                              [task])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
