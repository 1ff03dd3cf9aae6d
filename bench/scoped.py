#!/usr/bin/python3
"""A scoped halt's stop latency (bench/run, figure 9).

IN agents in the scope (roles bench_in_1..IN, members of the group role
bench_team and of killswitch_agent) and OTHERS agents outside it (role
bench_agent) insert into bench_scoped as fast as they can, each on its own
connection.  Per trial the admin engages halt_all on scope bench_team (in
autocommit) and releases it again.  Prints one line per agent in scope per
trial: milliseconds from sending the engage to that agent's first statement
refused (an upper bound of how long its work went on); and, on
stderr, the outside agents' refusals during the halts (the bar: none) and
the rows an agent in scope committed after the engage returned (none).
"""
import argparse
import sys
import threading
import time

import psycopg

KS_REFUSED = ("KS001", "57014")   # a refusal, or the raise's cancel of a running statement


class Agent(threading.Thread):
    """One connection inserting in a loop; notes its refusals' times."""

    def __init__(self, dsn, name, stop):
        super().__init__(daemon=True)
        self.dsn, self.name, self.stop = dsn, name, stop
        self.refused = []       # times of KS001 refusals
        self.failed = None

    def run(self):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    try:
                        conn.execute("INSERT INTO bench_scoped (agent, at) VALUES (%s, clock_timestamp())",
                                     [self.name])
                    except psycopg.Error as e:
                        if e.sqlstate not in KS_REFUSED:
                            raise
                        self.refused.append(time.time())
                        time.sleep(0.001)
        except Exception as e:          # reported by main(): a figure must not hide a crash
            self.failed = repr(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conninfo", required=True, help="without user")
    ap.add_argument("--in", dest="n_in", type=int, required=True)
    ap.add_argument("--others", type=int, required=True)
    ap.add_argument("--trials", type=int, required=True)
    a = ap.parse_args()
    admin = psycopg.connect(a.conninfo + " user=postgres", autocommit=True)
    stop = threading.Event()
    ins = [Agent(f"{a.conninfo} user=bench_in_{i}", f"bench_in_{i}", stop) for i in range(1, a.n_in + 1)]
    others = [Agent(f"{a.conninfo} user=bench_agent", f"other_{i}", stop) for i in range(a.others)]
    for ag in ins + others:
        ag.start()
    time.sleep(1.0)
    outside_refused = late_rows = 0
    for trial in range(a.trials):
        t_sent = time.time()
        admin.execute("SELECT ks_engage('halt_all', 'bench: scoped trial', 'bench', scope => 'bench_team')")
        t_ack = time.time()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(any(t >= t_sent for t in ag.refused) for ag in ins):
            time.sleep(0.005)
        time.sleep(0.2)     # the others keep working meanwhile
        for ag in ins:
            first = min((t for t in ag.refused if t >= t_sent), default=None)
            if first is None:
                print(f"bench/scoped.py: {ag.name} was not stopped in trial {trial}", file=sys.stderr)
                return 1
            print(f"{(first - t_sent) * 1000:.3f}")
        outside_refused += sum(1 for ag in others for t in ag.refused if t >= t_sent)
        late_rows += admin.execute("SELECT count(*) FROM bench_scoped WHERE agent LIKE 'bench_in_%%' "
                                   "AND at > to_timestamp(%s)", [t_ack]).fetchone()[0]
        admin.execute("SELECT ks_disengage('bench: scoped trial over', 'bench', scope => 'bench_team')")
        time.sleep(0.3)
    stop.set()
    for ag in ins + others:
        ag.join(10)
    crashed = [f"{ag.name}: {ag.failed}" for ag in ins + others if ag.failed]
    if crashed:
        print("bench/scoped.py: agents failed: " + "; ".join(crashed), file=sys.stderr)
        return 1
    worked = admin.execute("SELECT count(DISTINCT agent) FROM bench_scoped WHERE agent LIKE 'other_%%'").fetchone()[0]
    print(f"outside_refused={outside_refused} late_rows={late_rows} others_worked={worked}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
