#!/usr/bin/python3
"""The README's agent loops, run as written: the psycopg block after
"**psycopg 3.1.**", the node-postgres block after "**node-postgres.**" and the
ks_wait() block after "**Waiting in `ks_wait()`.**" (through PgBouncer) in
"Writing an agent", each wrapped with the names it leaves to the reader (dsn,
task, do_one_task, ...).  Each must work, halt when the switch is pulled
(no row of theirs after the engage committed, no second action started while
engaged) and work again after the release.  Prints ok / not ok lines and `N passed, M failed`.

    readme_loops.py README.md ADMIN_DSN HOST PORT BOUNCER_PORT
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))

PY_PRELUDE = '''import sys, time
dsn, agent, task, think_time = sys.argv[1], sys.argv[2], "data_export", 0.05
def do_one_task(conn):
    if conn.execute("SELECT ks_engaged()").fetchone()[0]:
        print("tried while engaged", flush=True)
    conn.execute("INSERT INTO tasks (agent, task_type) VALUES (%s, %s)", [agent, task])
'''

JS_PRELUDE = '''const { Client } = require(%s);
const dsn = process.argv[2], task = 'data_export', thinkMs = 50, log = () => {};
async function doOneTask(c) {
  if ((await c.query('SELECT ks_engaged() AS e')).rows[0].e) console.log('tried while engaged');
  await c.query("INSERT INTO tasks (agent, task_type) VALUES ('readme-node', $1)", [task]);
}
(async () => {
'''


def block(readme, marker, lang):
    """The first ```lang block after marker."""
    start = readme.index("```" + lang, readme.index(marker)) + len(lang) + 3
    return readme[start:readme.index("```", start)]


def main():
    readme_path, admin_dsn, host, port, bport = sys.argv[1:6]
    readme = open(readme_path, encoding="utf-8").read()
    passed = failed = 0

    def ok(cond, what):
        nonlocal passed, failed
        print(("ok - " if cond else "not ok - ") + what, flush=True)
        passed += bool(cond)
        failed += not cond

    tmp = tempfile.mkdtemp(prefix="readme-loops.")
    py = os.path.join(tmp, "loop.py")
    js = os.path.join(tmp, "loop.js")
    pywait = os.path.join(tmp, "wait_loop.py")
    with open(py, "w") as f:
        f.write(PY_PRELUDE + block(readme, "**psycopg 3.1.**", "python"))
    with open(pywait, "w") as f:
        f.write(PY_PRELUDE + block(readme, "**Waiting in `ks_wait()`.**", "python"))
    with open(js, "w") as f:
        f.write(JS_PRELUDE % json.dumps(os.path.join(HERE, "node", "node_modules", "pg"))
                + block(readme, "**node-postgres.**", "js") + "})();\n")
    dsn = f"host={host} port={port} dbname=postgres user=worker"
    procs = {
        "readme-py": subprocess.Popen(["/usr/bin/python3", py, dsn, "readme-py"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True),
        # the ks_wait() loop where it is meant for: behind PgBouncer
        "readme-py-wait": subprocess.Popen(
            ["/usr/bin/python3", pywait,
             f"host={host} port={bport} dbname=postgres user=worker password=worker", "readme-py-wait"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "readme-node": subprocess.Popen(["node", js, f"postgresql://worker@{host}:{port}/postgres"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    admin = psycopg.connect(admin_dsn, autocommit=True)

    def rows(agent, after):
        return admin.execute("SELECT count(*) FROM tasks WHERE agent = %s AND ins_at > to_timestamp(%s)",
                             [agent, after]).fetchone()[0]

    def wait_rows(after, timeout=10):
        end = time.time() + timeout
        while time.time() < end and not all(rows(a, after) for a in procs):
            time.sleep(0.05)
        return {a: rows(a, after) for a in procs}

    try:
        started = wait_rows(0)
        for a, n in started.items():
            ok(n > 0, f"{a}: the README's loop works")
        admin.execute("BEGIN")
        admin.execute("SELECT ks_engage('halt_all', 'readme loops', 'examples')")
        admin.execute("COMMIT")
        t_committed = time.time()
        time.sleep(1.0)
        for a in procs:
            ok(rows(a, t_committed) == 0 and procs[a].poll() is None,
               f"{a}: no row after the engage committed, and still running (KS001 is not a crash)")
        t_rel = time.time()
        admin.execute("SELECT ks_disengage('readme loops: released', 'examples')")
        again = wait_rows(t_rel)
        for a, n in again.items():
            ok(n > 0, f"{a}: works again after the release")
    finally:
        outs = {}
        for a, p in procs.items():
            p.kill()
            outs[a] = p.communicate()[0]
        shutil.rmtree(tmp)
    for a, out in outs.items():
        # a check that ran just before the engage published may let one
        # action start after it; a loop that asks before every action never
        # starts a second one while engaged
        tries = out.count("tried while engaged")
        ok(tries <= 1, f"{a}: asks before every action ({tries} actions started while engaged)")
        if failed:
            print("# " + " | ".join(out.strip().splitlines()[-5:]))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
