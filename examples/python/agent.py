#!/usr/bin/env python3
"""An agent that obeys the kill switch: psycopg 3.1, as Debian 12 ships it
(python3-psycopg), and nothing else.

    python3 agent.py --dsn "host=/run/postgresql dbname=postgres user=agent_7"
    python3 agent.py --dsn "host=127.0.0.1 port=6432 ..." --pooled --wake wait   # behind PgBouncer

Each action is one row in a task table guarded by ks_guard().  The agent

  * asks ks_check_task() before every action;
  * treats SQLSTATE KS001 (a guarded table or hard enforcement refusing it)
    as "halted", not as a crash;
  * stops sooner than its next check: directly it LISTENs on channel
    killswitch; behind a transaction pooler, where LISTEN cannot work, it
    waits between actions in ks_wait(), which returns the moment a change
    is published (--wake wait); --wake poll reads ks_mode() every --poll-ms
    instead, for comparison;
  * re-reads the mode after every (re)connect: NOTIFY is never replayed;
  * survives every mode: in emergency every statement it sends is refused
    with KS001 (LISTEN and the reads of a reconnect too) and a busy session
    is ended: it keeps trying, slowly, and reconnects;
  * resumes by itself once an administrator has released the switch.

It prints one JSON object per line on stdout (what it did and when, on the
epoch clock) so that `make examples` can check it; a real agent would log.
"""
import argparse
import json
import random
import select
import sys
import time

import psycopg

KS_REFUSED = "KS001"    # the kill switch's SQLSTATE


def say(event, **fields):
    """One line of the agent's account of itself, for the harness."""
    fields.update(event=event, t=time.time())
    print(json.dumps(fields), flush=True)


class Agent:
    """One agent: a connection, what it knows of the switch, and its loop."""

    def __init__(self, args):
        self.args = args
        self.conn = None
        self.mode = "unknown"        # what we last learnt, from a query or a NOTIFY
        self.halted = False
        self.ready = False           # LISTENing (if we do) and the mode read since connecting
        self.gen = 0                 # the generation seen before the last check (--wake wait)
        self.done = 0

    # ---------------------------------------------------------------- connection
    def connect(self):
        """(Re)connect; prepare() then LISTENs and reads the mode."""
        self.ready = False
        while True:
            try:
                # Behind PgBouncer (transaction pooling) a statement may run on
                # another server connection than the one that prepared it, so
                # psycopg's automatic prepared statements must be off.
                self.conn = psycopg.connect(
                    self.args.dsn, autocommit=True,
                    prepare_threshold=None if self.args.pooled else 5,
                    application_name=self.args.name)
                break
            except psycopg.OperationalError as e:
                say("connect_failed", error=str(e).strip()[:200])
                time.sleep(0.2)
        if self.args.wake == "listen" and not self.args.skip_check:
            # psycopg 3.1: a notification that arrives while a query runs is
            # handed to these callbacks and to nothing else -- conn.notifies()
            # would never see it.  So the handler is where we learn of a halt.
            self.conn.add_notify_handler(self.on_notify)

    def prepare(self):
        """LISTEN and read the mode: never trust what we knew.  In emergency
        these are refused (KS001) like any statement: run() tries again."""
        if self.args.wake == "listen" and not self.args.skip_check:
            self.conn.execute("LISTEN killswitch")
        self.gen, self.mode = self.conn.execute("SELECT g, ks_mode()::text FROM ks_wait(0, 0) AS g").fetchone()
        self.ready = True
        say("connected", mode=self.mode)

    def on_notify(self, n):
        """A change was committed: note the new mode at once.  A scope's
        change may not be ours: pause() reads ks_mode(), our effective mode,
        when the socket wakes it, and every action asks first anyway."""
        if n.channel == "killswitch":
            payload = json.loads(n.payload)
            if payload.get("scope") is not None:
                return
            self.mode = payload["mode"]
            if self.mode != "disengaged" and not self.halted:
                self.halt("notify")

    # -------------------------------------------------------------------- states
    def halt(self, how, reason=None):
        """Stop taking actions; say how we learnt of the halt."""
        if not self.halted:
            self.halted = True
            say("halted", how=how, mode=self.mode, reason=reason)

    def resume(self):
        """Work again: the switch was released (an action was allowed, or succeeded)."""
        if self.halted:
            self.halted = False
            say("resumed", mode=self.mode)

    # ------------------------------------------------------------------- waiting
    def pause(self, seconds):
        """Idle between actions, but wake at once when the switch changes."""
        if self.args.skip_check:
            time.sleep(seconds)             # a careless agent does not look
            return
        deadline = time.monotonic() + seconds
        while not self.halted:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.args.wake == "listen":
                # The socket becomes readable when a NOTIFY arrives; a cheap
                # query then lets psycopg read it and call on_notify().
                if select.select([self.conn.fileno()], [], [], left)[0]:
                    self.mode = self.conn.execute("SELECT ks_mode()::text").fetchone()[0]
                    if self.mode != "disengaged":
                        self.halt("notify")
            elif self.args.wake == "wait":
                # one statement that returns the moment a change is published
                # (or when the pause is over): what a pooled agent can do
                if self.wait(max(1, int(left * 1000))) and self.mode != "disengaged":
                    self.halt("wait")
            else:
                time.sleep(min(left, self.args.poll_ms / 1000))
                self.mode = self.conn.execute("SELECT ks_mode()::text").fetchone()[0]
                if self.mode != "disengaged":
                    self.halt("poll")

    def wait(self, ms):
        """ks_wait() from the generation seen before the last check: true
        (and the new mode noted) if a change came, false after ms."""
        gen, mode = self.conn.execute("SELECT g, ks_mode()::text FROM ks_wait(%s, %s) AS g",
                                      [self.gen, ms]).fetchone()
        if gen == self.gen:
            return False
        self.gen, self.mode = gen, mode
        return True

    def wait_for_release(self):
        """Halted: wait until the mode changes, then look again."""
        if self.args.skip_check:
            time.sleep(self.args.poll_ms / 1000)
        elif self.args.wake == "listen":
            # on_notify() updates self.mode; the timeout is only a safety net
            select.select([self.conn.fileno()], [], [], 1.0)
            self.mode = self.conn.execute("SELECT ks_mode()::text").fetchone()[0]
        elif self.args.wake == "wait":
            self.wait(1000)
        else:
            time.sleep(self.args.poll_ms / 1000)

    # -------------------------------------------------------------------- acting
    def act(self):
        """One action: ask, then do.  The guard refuses the row if a halt came between."""
        was_halted = self.halted
        if self.args.skip_check:
            verdict = {"allowed": True}     # a careless agent: the server must stop it
        else:
            verdict = self.conn.execute("SELECT ks_check_task(%s)", [self.args.task]).fetchone()[0]
            if self.halted and not was_halted:
                # a NOTIFY came in with the answer: the halt is newer than the check
                return
        if not verdict["allowed"]:
            self.halt("check", verdict.get("reason"))
            self.wait_for_release()
            return
        if not self.args.skip_check:
            self.resume()       # (a NOTIFY during the INSERT below halts us again)
        row = self.conn.execute(
            "INSERT INTO tasks (agent, task_type) VALUES (%s, %s) RETURNING id",
            [self.args.name, self.args.task]).fetchone()
        if self.args.skip_check:
            self.resume()       # the careless learn only from a refusal, and its absence
        self.done += 1
        if self.done == 1 or self.args.verbose:
            say("did", id=row[0])
        self.pause(random.uniform(0.5, 1.5) * self.args.think_ms / 1000)

    def run(self):
        """Act until --seconds are up; a refusal halts us, a lost connection is made again."""
        self.connect()
        end = time.monotonic() + self.args.seconds
        refused = 0                 # refusals in a row
        while time.monotonic() < end:
            try:
                if not self.ready:
                    self.prepare()
                if refused:
                    self.wait_for_release()
                self.act()
                refused = 0
            except psycopg.Error as e:
                if e.sqlstate == KS_REFUSED:
                    # refused by the kill switch: halted, not broken.  In
                    # emergency every statement is refused, the waits too:
                    # from the second refusal in a row, pause before trying again
                    self.halt("ks001", e.diag.message_primary)
                    refused += 1
                    if refused > 1:
                        time.sleep(0.2)
                    continue
                if self.conn.broken or isinstance(e, psycopg.OperationalError):
                    say("disconnected", error=str(e).strip()[:200])
                    self.conn.close()
                    time.sleep(0.1)
                    self.connect()
                    continue
                raise
        say("finished", done=self.done)


def main():
    """Parse the options and run one agent."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsn", required=True)
    p.add_argument("--name", default="py-agent")
    p.add_argument("--task", default="data_export")
    p.add_argument("--pooled", action="store_true",
                   help="behind a transaction pooler: no prepared statements")
    p.add_argument("--wake", choices=["listen", "wait", "poll"], default="listen",
                   help="how to learn of a change between checks (wait behind a pooler)")
    p.add_argument("--poll-ms", type=int, default=50)
    p.add_argument("--think-ms", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--skip-check", action="store_true",
                   help="for tests: never ask first (ks_guard and hard enforcement must stop it)")
    args = p.parse_args()
    if args.pooled and args.wake == "listen":
        p.error("LISTEN does not work behind a transaction pooler: use --wake wait")
    Agent(args).run()


if __name__ == "__main__":
    sys.exit(main())
