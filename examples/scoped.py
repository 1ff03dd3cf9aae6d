#!/usr/bin/python3
"""Scoped halts with real agents: three Python agents work the task table
as agent_7, agent_8 and agent_9 (agent_9 in the team role etl_agents).
Stopping the scope agent_7 halts agent_7 alone while the others keep
writing; stopping the team etl_agents halts agent_9; each release lets its
agents resume.  Prints `ok` / `not ok` lines and `N passed, M failed`, as
fleet.py does (examples/run sets up the server and the roles).
"""
import argparse
import sys
import time

import psycopg

from fleet import PY, AgentProc, Tap, finish, wait_until

ROLES = ("agent_7", "agent_8", "agent_9")


def start(a):
    """One Python agent per role, directly, woken by LISTEN."""
    agents = {}
    for role in ROLES:
        dsn = f"host={a.host} port={a.port} dbname=postgres user={role} password={role}"
        agents[role] = AgentProc(f"scoped-{role}", "py scoped", [
            PY, "python/agent.py", "--dsn", dsn, "--name", f"scoped-{role}", "--wake", "listen",
            "--seconds", "600", "--think-ms", "50"])
    return agents


def rows_since(admin, t):
    """Task rows per agent inserted after t (epoch seconds)."""
    return dict(admin.execute("SELECT agent, count(*) FROM tasks WHERE ins_at > to_timestamp(%s) "
                              "GROUP BY agent", [t]).fetchall())


def change(admin, sql, params):
    """One scope change in an explicit transaction: (COMMIT sent, COMMIT returned)."""
    admin.execute("BEGIN")
    admin.execute(sql, params)
    t0 = time.time()
    admin.execute("COMMIT")
    return t0, time.time()


def check_stop(tap, admin, agents, t_sent, t_committed, stopped, working, what):
    """The agents of the scope halt and write nothing after the commit; those working keep working."""
    wait_until(lambda: all(agents[r].first("halted", t_sent - 1) for r in stopped), 15)
    for r in stopped:
        ev = agents[r].first("halted", t_sent - 1)
        tap.ok(ev is not None, f"{r} halts when {what} is stopped"
               + (f" ({ev['how']}, {(ev['t'] - t_sent) * 1000:.1f} ms after its COMMIT was sent)" if ev else ""))
    time.sleep(1.0)
    done = rows_since(admin, t_committed)
    for r in stopped:
        tap.ok(done.get(f"scoped-{r}", 0) == 0, f"{r} wrote no task row after {what}'s halt committed",
               f"{done.get(f'scoped-{r}')} rows")
    for r in working:
        tap.ok(done.get(f"scoped-{r}", 0) > 0 and agents[r].first("halted", t_sent - 1) is None,
               f"{r}, outside {what}, keeps working", f"rows: {done.get(f'scoped-{r}')}")


def check_resume(tap, admin, agents, t_rel, resumed, what):
    """The released agents resume by themselves and write again."""
    wait_until(lambda: all(agents[r].first("resumed", t_rel - 1) for r in resumed), 15)
    time.sleep(0.5)
    done = rows_since(admin, t_rel)
    for r in resumed:
        tap.ok(agents[r].first("resumed", t_rel - 1) is not None and done.get(f"scoped-{r}", 0) > 0,
               f"{r} resumes after {what} is released")


def main():
    """Start the agents, stop and release one agent, then a team."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin-dsn", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    a = ap.parse_args()
    tap = Tap()
    admin = psycopg.connect(a.admin_dsn, autocommit=True)
    agents = start(a)
    try:
        tap.ok(wait_until(lambda: all(ag.first("did") for ag in agents.values()), 30),
               "agent_7, agent_8 and agent_9 are working")

        # one agent that loops
        t_sent, t_committed = change(
            admin, "SELECT ks_engage('halt_all', 'agent_7 loops', 'examples', scope => 'agent_7')", [])
        tap.ok(admin.execute("SELECT ks_mode()::text").fetchone()[0] == "disengaged",
               "the fleet's mode stays disengaged")
        check_stop(tap, admin, agents, t_sent, t_committed, ["agent_7"], ["agent_8", "agent_9"], "agent_7")

        # a team: agent_9 is a member of etl_agents
        t_sent, t_committed = change(
            admin, "SELECT ks_engage('halt_all', 'ETL job misbehaves', 'examples', scope => 'etl_agents')", [])
        check_stop(tap, admin, agents, t_sent, t_committed, ["agent_9"], ["agent_8"], "etl_agents")
        done = rows_since(admin, t_committed)
        tap.ok(agents["agent_7"].first("resumed", t_sent - 1) is None and not done.get("scoped-agent_7"),
               "agent_7 stays halted by its own scope meanwhile")
        scopes = admin.execute("SELECT string_agg(scope::text || ' ' || mode, ', ' ORDER BY scope::text) "
                               "FROM ks_scopes()").fetchone()[0]
        tap.ok(scopes == "agent_7 halt_all, etl_agents halt_all", f"ks_scopes(): {scopes}")

        # the releases, one by one
        admin.execute("SELECT ks_disengage('agent_7 fixed', 'examples', scope => 'agent_7')")
        t_rel = time.time()
        check_resume(tap, admin, agents, t_rel, ["agent_7"], "agent_7")
        tap.ok(agents["agent_9"].first("resumed", t_rel - 1) is None, "agent_9 stays halted with its team")
        admin.execute("SELECT ks_disengage('ETL job fixed', 'examples', scope => 'etl_agents')")
        check_resume(tap, admin, agents, time.time(), ["agent_9"], "etl_agents")
        crashed = [ag.name for ag in agents.values() if not ag.alive()]
        tap.ok(not crashed, "no agent crashed", ", ".join(crashed))
    finally:
        for ag in agents.values():
            ag.stop()
        for ag in agents.values():
            if ag.err:
                print(f"# {ag.name} stderr: " + " | ".join(ag.err[-5:]))
    return finish(tap)


if __name__ == "__main__":
    sys.exit(main())
