#!/usr/bin/python3
"""The README's agent loops, run as written: the psycopg block after
"**psycopg 3.1.**", the node-postgres block after "**node-postgres.**" and the
ks_wait() block after "**Waiting in `ks_wait()`.**" in "Writing an agent",
each wrapped with the names it leaves to the reader (dsn, task, do_one_task,
...).  Each runs as a member of killswitch_agent (role fleet): the three
directly, the ks_wait() loop and the node-postgres one (whose unnamed
queries a transaction pooler passes) also through PgBouncer.  The switch is
pulled to halt_noncritical, halt_all and emergency in turn, each time from
disengaged: no loop writes a row after the engage committed, none exits
(KS001 is caught around every call, and in emergency a session that was busy
is ended and connected again), none starts a second action while engaged,
and every one works again after each release.  Prints ok / not ok lines and
`N passed, M failed`.

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
MODES = ("halt_noncritical", "halt_all", "emergency")

PY_PRELUDE = '''import sys, time
dsn, agent, task, think_time = sys.argv[1], sys.argv[2], "data_export", 0.05
def do_one_task(conn):
    if conn.execute("SELECT ks_engaged()").fetchone()[0]:
        print("tried while engaged", flush=True)
    conn.execute("INSERT INTO tasks (agent, task_type) VALUES (%s, %s)", [agent, task])
'''

JS_PRELUDE = '''const { Client } = require(%s);
const dsn = process.argv[2], agent = process.argv[3], task = 'data_export', thinkMs = 50, log = () => {};
async function doOneTask(c) {
  if ((await c.query('SELECT ks_engaged() AS e')).rows[0].e) console.log('tried while engaged');
  await c.query('INSERT INTO tasks (agent, task_type) VALUES ($1, $2)', [agent, task]);
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
    direct = f"host={host} port={port} dbname=postgres user=fleet password=fleet"
    pooled = f"host={host} port={bport} dbname=postgres user=fleet password=fleet"
    url = {port: f"postgresql://fleet:fleet@{host}:{port}/postgres",
           bport: f"postgresql://fleet:fleet@{host}:{bport}/postgres"}
    argv = {
        "readme-py": ["/usr/bin/python3", py, direct],
        "readme-node": ["node", js, url[port]],
        "readme-py-wait": ["/usr/bin/python3", pywait, direct],
        # where the ks_wait() loop is meant for: behind PgBouncer
        "readme-py-wait-pgbouncer": ["/usr/bin/python3", pywait, pooled],
        "readme-node-pgbouncer": ["node", js, url[bport]],
    }
    procs = {a: subprocess.Popen(cmd + [a], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for a, cmd in argv.items()}
    admin = psycopg.connect(admin_dsn, autocommit=True)

    def rows(agent, after):
        return admin.execute("SELECT count(*) FROM tasks WHERE agent = %s AND ins_at > to_timestamp(%s)",
                             [agent, after]).fetchone()[0]

    def wait_rows(after, timeout=15):
        end = time.time() + timeout
        while time.time() < end and not all(rows(a, after) for a in procs):
            time.sleep(0.05)
        return {a: rows(a, after) for a in procs}

    try:
        for a, n in wait_rows(0).items():
            ok(n > 0, f"{a}: the README's loop works")
        for mode in MODES:
            admin.execute("BEGIN")
            admin.execute("SELECT ks_engage(%s, 'readme loops', 'examples')", [mode])
            admin.execute("COMMIT")
            t_committed = time.time()
            time.sleep(1.5)
            for a in procs:
                ok(rows(a, t_committed) == 0 and procs[a].poll() is None,
                   f"{a} in {mode}: no row after the engage committed, and still running (KS001 is not a crash)")
            t_rel = time.time()
            admin.execute("SELECT ks_disengage('readme loops: released', 'examples')")
            for a, n in wait_rows(t_rel).items():
                ok(n > 0, f"{a}: works again after the release from {mode}")
    finally:
        outs = {}
        for a, p in procs.items():
            p.kill()
            outs[a] = p.communicate()[0]
        shutil.rmtree(tmp)
    for a, out in outs.items():
        # a check that ran just before an engage published may let one action
        # start after it; a loop that asks before every action never starts a
        # second one while engaged (in emergency ks_engaged() itself is refused)
        tries = out.count("tried while engaged")
        ok(tries <= len(MODES), f"{a}: asks before every action "
           f"({tries} actions started while engaged, in {len(MODES)} engages)")
        if failed:
            print("# " + " | ".join(out.strip().splitlines()[-5:]))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
