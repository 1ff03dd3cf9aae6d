#!/usr/bin/python3
"""The examples' harness: runs Python and Node agents against a server,
directly and through PgBouncer, pulls the switch to halt_noncritical, then
halt_all, then emergency, checks at each step that every agent halts (the
critical one only in emergency), that no task row was written after the
engage committed and that no agent crashed; releases, checks that every
agent resumes.  Prints TAP-like `ok` / `not ok` lines and ends with
`N passed, M failed` (exit 1 on any failure).

With --bench it only measures: the stop latency of each agent, from the
moment the engage is sent (its raise is in force from then, before its
commit) to the agent's own "halted" line (same host, same clock), and
prints p50/p99/max per group.

examples/run sets up the server and PgBouncer and calls this.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"     # Debian's, with python3-psycopg
# examples/run adds this task to killswitch.critical_tasks: the file agent
# doing it must keep working in halt_all (it reads critical_tasks= from the table)
CRITICAL_TASK = "nightly_backup"
CRITICAL_AGENT = "py-file-agent-critical"


class AgentProc:
    """One agent process and what it has said so far."""

    def __init__(self, name, group, argv):
        self.name, self.group = name, group
        self.events = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=HERE)
        self.err = []
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_out):
        """Collect the agent's JSON lines (stdout) and anything else it prints."""
        for line in stream:
            if not is_out:
                self.err.append(line.rstrip())
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                self.err.append(line.rstrip())
                continue
            with self.lock:
                self.events.append(ev)

    def first(self, event, after=0.0, **match):
        """The first event of that kind at or after a time, or None."""
        with self.lock:
            for ev in self.events:
                if ev["event"] == event and ev["t"] >= after and \
                        all(ev.get(k) == v for k, v in match.items()):
                    return ev
        return None

    def alive(self):
        """Still running (an agent never exits by itself within a run)."""
        return self.proc.poll() is None

    def stop(self):
        """End the agent: SIGTERM, then SIGKILL if it lingers."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Tap:
    """ok / not ok lines and their count."""

    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, cond, what, detail=None):
        """Print one check's line; detail says what was wrong."""
        if cond:
            self.passed += 1
            print(f"ok - {what}", flush=True)
        else:
            self.failed += 1
            print(f"not ok - {what}" + (f": {detail}" if detail else ""), flush=True)
        return cond


def wait_until(pred, timeout):
    """Poll pred every 20 ms until it holds or timeout seconds pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def start_agents(a):
    """N Python and N Node agents per path; half of them members of killswitch_agent."""
    agents = []
    paths = [] if a.no_direct else [("direct", a.direct_host, a.direct_port, False, a.direct_wake)]
    if a.bouncer_port:
        # LISTEN cannot work behind a transaction pooler: they wait in ks_wait()
        paths.append(("pgbouncer", "127.0.0.1", a.bouncer_port, True, "wait"))
    for path, host, port, pooled, wake in paths:
        for lang in ("py", "node"):
            for i in range(a.n + (2 if a.careless else 0)):
                # two careless ones (--skip-check) never ask: the server must
                # stop them -- hard enforcement and the guard ("fleet"), the
                # guard alone ("worker")
                careless = i >= a.n
                role = "fleet" if i % 2 == 0 else "worker"
                name = f"{lang}-{path}-{wake}-{i}-{role}{'-careless' if careless else ''}"
                dsn = f"host={host} port={port} dbname=postgres user={role} password={role}"
                common = ["--dsn", dsn, "--name", name, "--wake", wake, "--seconds", "600",
                          "--think-ms", str(a.think_ms), "--poll-ms", str(a.poll_ms)]
                if pooled:
                    common.append("--pooled")
                if careless:
                    common.append("--skip-check")
                if lang == "py":
                    argv = [PY, "python/agent.py"] + common
                else:
                    common[1] = f"postgresql://{role}:{role}@{host}:{port}/postgres"
                    argv = ["node", "node/agent.js"] + common
                agents.append(AgentProc(name, f"{lang} {path} {wake}", argv))
    if a.state_dir:
        dsn = f"host={a.direct_host} port={a.direct_port} dbname=postgres user=worker password=worker"
        for name, task in (("py-file-agent", "data_export"), (CRITICAL_AGENT, CRITICAL_TASK)):
            agents.append(AgentProc(name, "py file", [
                PY, "python/file_agent.py", "--dsn", dsn, "--state-dir", a.state_dir,
                "--name", name, "--task", task, "--seconds", "600", "--poll-ms", "100"]))
    return agents


def rows_after(admin, t, column="ins_at", critical_too=False):
    """How many non-critical (or any) task rows carry a time stamp after t (epoch seconds)."""
    return admin.execute(f"SELECT count(*) FROM tasks WHERE {column} > to_timestamp(%s) "
                         "AND (%s OR task_type <> %s)", [t, critical_too, CRITICAL_TASK]).fetchone()[0]


def engage(admin, mode, reason, asked=None):
    """Engage in an explicit transaction: (time COMMIT was sent, time it returned).
    The raise is in force from the moment ks_engage() is asked, before its
    commit (ARCHITECTURE §5.3): asked, a list, gets that moment."""
    admin.execute("BEGIN")
    if asked is not None:
        asked.append(time.time())
    admin.execute("SELECT ks_engage(%s, %s, 'examples')", [mode, reason])
    t0 = time.time()
    admin.execute("COMMIT")
    return t0, time.time()


def main():
    """Start the agents, run the checks (or the bench), stop the agents."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin-dsn", required=True)
    ap.add_argument("--direct-host", required=True)
    ap.add_argument("--direct-port", required=True)
    ap.add_argument("--direct-wake", default="listen", choices=["listen", "poll"])
    ap.add_argument("--bouncer-port")
    ap.add_argument("--state-dir", help="also run the file agent on this state directory")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--think-ms", type=int, default=50)
    ap.add_argument("--poll-ms", type=int, default=50)
    ap.add_argument("--careless", action="store_true", help="one agent of each kind never asks")
    ap.add_argument("--no-direct", action="store_true", help="only the agents behind PgBouncer")
    ap.add_argument("--bench", metavar="OUT", help="only measure stop latency; append ms per group to OUT")
    ap.add_argument("--trials", type=int, default=1, help="with --bench: engage and release this often")
    a = ap.parse_args()

    tap = Tap()
    admin = psycopg.connect(a.admin_dsn, autocommit=True)
    admin.execute("TRUNCATE tasks")
    if admin.execute("SELECT ks_engaged()").fetchone()[0]:
        admin.execute("SELECT ks_disengage('examples: a clean start', 'examples')")
    agents = start_agents(a)
    try:
        return run(a, tap, admin, agents)
    finally:
        for ag in agents:
            ag.stop()
        with open("agents.log", "w") as log:      # every agent's account, for a post-mortem
            for ag in agents:
                for ev in ag.events:
                    log.write(f"{ag.name}\t{json.dumps(ev)}\n")
        for ag in agents:
            if ag.err and not a.bench:
                print(f"# {ag.name} stderr: " + " | ".join(ag.err[-5:]))


def run(a, tap, admin, agents):
    """The checks: working, halted, no late rows, reconnect into the halt, resume."""
    # 1. every agent is working
    working = wait_until(lambda: all(ag.first("did") for ag in agents), 30)
    tap.ok(working, f"all {len(agents)} agents are working",
           ", ".join(ag.name for ag in agents if not ag.first("did")))
    if not working:
        return finish(tap)
    time.sleep(0.3)

    if a.bench:
        return bench(a, tap, admin, agents)

    # 2. pull the switch: halt_noncritical stops every agent but the critical one
    t_sent, t_committed = engage(admin, "halt_noncritical", "examples: the switch is pulled")
    wait_until(lambda: all(ag.first("halted", t_sent - 1) for ag in agents
                           if ag.name != CRITICAL_AGENT), 15)
    critical = [ag for ag in agents if ag.name == CRITICAL_AGENT]
    agents = [ag for ag in agents if ag.name != CRITICAL_AGENT]
    for ag in agents:
        ev = ag.first("halted", t_sent - 1)
        tap.ok(ev is not None, f"{ag.name} halts in halt_noncritical"
               + (f" ({ev['how']}, {(ev['t'] - t_sent) * 1000:.1f} ms after COMMIT was sent)" if ev else ""))
    # the guard and hard enforcement refuse every row whose trigger runs after
    # the commit published the mode; ins_at (clock_timestamp() as a default)
    # is taken before the BEFORE trigger runs, so a row with ins_at after the
    # COMMIT returned would be a row the server let through after the halt
    late = rows_after(admin, t_committed)
    late_stmt = rows_after(admin, t_committed, "stmt_at")
    tap.ok(late == 0 and late_stmt == 0,
           "no task row was written by a statement that started after the engage committed",
           f"{late} rows inserted, {late_stmt} from statements started, after the COMMIT returned")
    careless = [ag for ag in agents if ag.name.endswith("careless")]
    for ag in careless:
        tap.ok(ag.first("halted", t_sent - 1, how="ks001") is not None,
               f"{ag.name} (never asks) is stopped by the server and treats KS001 as halted")
    check_critical_works(tap, admin, critical, t_sent, t_committed, "halt_noncritical")

    # 3. halt_all: nobody resumes, no row; the critical one still works
    t_sent, t_committed = engage(admin, "halt_all", "examples: halt_all")
    check_still_halted(tap, admin, agents, t_sent, t_committed, "halt_all")
    check_critical_works(tap, admin, critical, t_sent, t_committed, "halt_all")

    # 4. connections lost while halted: each agent reconnects and stays halted
    t_kill = time.time()
    n = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                      "WHERE usename IN ('fleet', 'worker') AND application_name NOT LIKE 'py-file-agent%'").fetchone()[0]
    direct = [ag for ag in agents if " direct " in f" {ag.group} "]
    back = wait_until(lambda: all(ag.first("connected", t_kill) for ag in direct), 10)
    tap.ok(back, f"after {n} agent backends were terminated, every direct agent reconnected",
           ", ".join(ag.name for ag in direct if not ag.first("connected", t_kill)))
    for ag in direct:
        ev = ag.first("connected", t_kill)
        if ev:
            tap.ok(ev["mode"] == "halt_all", f"{ag.name} re-read the mode after reconnecting: {ev['mode']}")
    check_still_halted(tap, admin, agents, t_kill, t_committed, "halt_all, reconnected", pause=0.5)

    # 5. emergency: every statement of an agent is refused and busy sessions
    # are ended; every agent survives it, the critical one halts too
    t_sent, t_committed = engage(admin, "emergency", "examples: emergency")
    for ag in critical:
        tap.ok(wait_until(lambda: ag.first("halted", t_sent - 1) is not None, 10),
               f"{ag.name} ({CRITICAL_TASK}) halts in emergency")
    check_still_halted(tap, admin, agents + critical, t_sent, t_committed, "emergency",
                       critical_too=True, pause=1.5)

    # 6. release: every agent resumes by itself and works again
    admin.execute("SELECT ks_disengage('examples: released', 'examples')")
    t_rel = time.time()
    wait_until(lambda: all(ag.first("resumed", t_rel - 1) for ag in agents + critical), 15)
    for ag in agents + critical:
        tap.ok(ag.first("resumed", t_rel - 1) is not None, f"{ag.name} resumes after the release")
    time.sleep(0.5)
    worked = dict(admin.execute("SELECT agent, count(*) FROM tasks WHERE ins_at > to_timestamp(%s) "
                                "GROUP BY agent", [t_rel]).fetchall())
    idle = [ag.name for ag in agents + critical if not worked.get(ag.name)]
    tap.ok(not idle, "every agent wrote task rows again after the release", ", ".join(idle))
    crashed = [ag.name for ag in agents + critical if not ag.alive()]
    tap.ok(not crashed, "no agent crashed", ", ".join(crashed))
    return finish(tap)


def check_still_halted(tap, admin, agents, t_sent, t_committed, what, critical_too=False, pause=1.0):
    """After an escalation (or a reconnect): no agent resumed, no row, none crashed."""
    time.sleep(pause)
    tap.ok(all(ag.first("resumed", t_sent) is None for ag in agents),
           f"{what}: no agent resumed",
           ", ".join(ag.name for ag in agents if ag.first("resumed", t_sent)))
    late = rows_after(admin, t_committed, critical_too=critical_too)
    tap.ok(late == 0, f"{what}: no {'' if critical_too else 'non-critical '}task row since the engage committed",
           f"{late} rows")
    crashed = [ag.name for ag in agents if not ag.alive()]
    tap.ok(not crashed, f"{what}: no agent crashed", ", ".join(crashed))


def check_critical_works(tap, admin, critical, t_sent, t_committed, mode):
    """The file agent doing the critical task (by the table) keeps working."""
    for ag in critical:
        q = "SELECT count(*) FROM tasks WHERE agent = %s AND ins_at > to_timestamp(%s)"
        kept = wait_until(lambda: admin.execute(q, [ag.name, t_committed]).fetchone()[0] > 0, 5)
        tap.ok(kept and ag.first("halted", t_sent - 1) is None,
               f"{ag.name} ({CRITICAL_TASK}, critical by the table) keeps working in {mode}",
               f"rows since the engage: {kept}, halted: {ag.first('halted', t_sent - 1)}")


def bench(a, tap, admin, agents):
    """Stop latency: from sending the engage to each agent's own "halted" line (the
    raise is in force before the engage commits: an agent may halt before its COMMIT)."""
    for trial in range(a.trials):
        asked = []
        engage(admin, "halt_all", f"examples: bench trial {trial}", asked)
        t_asked = asked[0]
        halted = wait_until(lambda: all(ag.first("halted", t_asked) for ag in agents), 15)
        with open(a.bench, "a") as out:
            for ag in agents:
                ev = ag.first("halted", t_asked)
                if ev:
                    out.write(f"{ag.group}\t{(ev['t'] - t_asked) * 1000:.3f}\n")
        tap.ok(halted, f"trial {trial}: every agent halted",
               "; ".join(f"{ag.name} (last said: {ag.events[-1] if ag.events else None}; "
                         f"stderr: {' | '.join(ag.err[-3:])})"
                         for ag in agents if not ag.first("halted", t_asked)))
        t_rel = time.time()
        admin.execute("SELECT ks_disengage('examples: bench trial over', 'examples')")
        # every agent working again, and a pause at a random point of their cycles
        wait_until(lambda: all(ag.first("resumed", t_rel) for ag in agents), 15)
        time.sleep(0.3 + random.random() * 0.2)
    return finish(tap)


def finish(tap):
    """The closing count; the exit status."""
    print(f"{tap.passed} passed, {tap.failed} failed", flush=True)
    return 1 if tap.failed else 0


if __name__ == "__main__":
    sys.exit(main())
