#!/usr/bin/env node
// An agent that obeys the kill switch: node-postgres (`pg` from npm).
//
//   node agent.js --dsn postgresql://agent_7@localhost/postgres
//   node agent.js --dsn postgresql://agent_7@localhost:6432/postgres --pooled --wake wait
//
// Each action is one row in a task table guarded by ks_guard().  The agent
//  * asks ks_check_task() before every action;
//  * treats SQLSTATE KS001 (a guarded table or hard enforcement refusing it)
//    as "halted", not as a crash;
//  * stops sooner than its next check: directly it LISTENs on channel
//    killswitch (client.on('notification')); behind a transaction pooler,
//    where LISTEN cannot work, it waits between actions in ks_wait(), which
//    returns the moment a change is published (--wake wait); --wake poll
//    reads ks_mode() every --poll-ms instead, for comparison;
//  * re-reads the mode after every (re)connect: NOTIFY is never replayed;
//  * survives every mode: in emergency every statement it sends is refused
//    with KS001 (LISTEN and the reads of a reconnect too) and a busy session
//    is ended: it keeps trying, slowly, and reconnects;
//  * resumes by itself once an administrator has released the switch.
// It prints one JSON object per line on stdout (what it did and when, on the
// epoch clock) so that `make examples` can check it; a real agent would log.
'use strict';

const { Client } = require('pg');
const { performance } = require('perf_hooks');

const KS_REFUSED = 'KS001'; // the kill switch's SQLSTATE

// The command line: --dsn and the knobs the harness turns.
function parseArgs(argv) {
  const a = { name: 'node-agent', task: 'data_export', pooled: false, wake: 'listen',
    pollMs: 50, thinkMs: 50, seconds: 60, verbose: false, skipCheck: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const next = () => argv[++i];
    if (k === '--dsn') a.dsn = next();
    else if (k === '--name') a.name = next();
    else if (k === '--task') a.task = next();
    else if (k === '--pooled') a.pooled = true;
    else if (k === '--wake') a.wake = next();
    else if (k === '--poll-ms') a.pollMs = Number(next());
    else if (k === '--think-ms') a.thinkMs = Number(next());
    else if (k === '--seconds') a.seconds = Number(next());
    else if (k === '--verbose') a.verbose = true;
    else if (k === '--skip-check') a.skipCheck = true; // for tests: the server must stop it
    else throw new Error(`unknown argument ${k}`);
  }
  if (!a.dsn) throw new Error('--dsn is required');
  if (!['listen', 'wait', 'poll'].includes(a.wake)) throw new Error('--wake is listen, wait or poll');
  if (a.pooled && a.wake === 'listen') {
    throw new Error('LISTEN does not work behind a transaction pooler: use --wake wait');
  }
  return a;
}

// One line of the agent's account of itself, for the harness.
function say(event, fields = {}) {
  const t = (performance.timeOrigin + performance.now()) / 1000;
  process.stdout.write(JSON.stringify({ ...fields, event, t }) + '\n');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One agent: a connection, what it knows of the switch, and its loop.
class Agent {
  constructor(args) {
    this.args = args;
    this.client = null;
    this.mode = 'unknown'; // what we last learnt, from a query or a NOTIFY
    this.halted = false;
    this.ready = false; // LISTENing (if we do) and the mode read since connecting
    this.gen = 0; // the generation seen before the last check (--wake wait)
    this.done = 0;
    this.wakeUp = null; // resolves the current pause early
  }

  // (Re)connect; prepare() then LISTENs and reads the mode.
  async connect() {
    this.ready = false;
    for (;;) {
      const client = new Client({ connectionString: this.args.dsn, application_name: this.args.name });
      // A dropped connection is reported here; the next query then fails and
      // run() reconnects.  Without a listener, 'error' would crash the process.
      client.on('error', (e) => say('connection_error', { error: e.message }));
      try {
        await client.connect();
        this.client = client;
        break;
      } catch (e) {
        say('connect_failed', { error: e.message });
        await sleep(200);
      }
    }
    if (this.args.wake === 'listen' && !this.args.skipCheck) {
      this.client.on('notification', (msg) => this.onNotify(msg));
    }
  }

  // LISTEN and read the mode: never trust what we knew.  In emergency these
  // are refused (KS001) like any statement: run() tries again.
  async prepare() {
    if (this.args.wake === 'listen' && !this.args.skipCheck) await this.client.query('LISTEN killswitch');
    const r = await this.client.query('SELECT g, ks_mode()::text AS mode FROM ks_wait(0, 0) AS g');
    this.gen = r.rows[0].g;
    this.mode = r.rows[0].mode;
    this.ready = true;
    say('connected', { mode: this.mode });
  }

  // A change was committed: note the new mode and cut any pause short.  A
  // scope's change may not be ours: the next check asks for our effective
  // mode.
  onNotify(msg) {
    if (msg.channel !== 'killswitch') return;
    const payload = JSON.parse(msg.payload);
    if (payload.scope == null) {
      this.mode = payload.mode;
      if (this.mode !== 'disengaged') this.halt('notify');
    }
    if (this.wakeUp) this.wakeUp();
  }

  // Stop taking actions; say how we learnt of the halt.
  halt(how, reason) {
    if (!this.halted) {
      this.halted = true;
      say('halted', { how, mode: this.mode, reason });
    }
  }

  // Work again: the switch was released (an action was allowed, or succeeded).
  resume() {
    if (this.halted) {
      this.halted = false;
      say('resumed', { mode: this.mode });
    }
  }

  // Sleep up to ms, or less if a notification arrives.
  nap(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.wakeUp = null; resolve(); }, ms);
      this.wakeUp = () => { clearTimeout(timer); this.wakeUp = null; resolve(); };
    });
  }

  // What the server enforces now.
  async readMode() {
    this.mode = (await this.client.query('SELECT ks_mode()::text AS mode')).rows[0].mode;
    return this.mode;
  }

  // Idle between actions, but wake at once when the switch changes.
  async pause(ms) {
    if (this.args.skipCheck) {
      await sleep(ms); // a careless agent does not look
      return;
    }
    if (this.args.wake === 'listen') {
      await this.nap(ms); // onNotify() halts us and wakes us
      return;
    }
    if (this.args.wake === 'wait') {
      // one statement that returns the moment a change is published (or
      // when the pause is over): what a pooled agent can do
      if ((await this.wait(Math.max(1, Math.round(ms)))) && this.mode !== 'disengaged') this.halt('wait');
      return;
    }
    const deadline = Date.now() + ms;
    while (!this.halted && Date.now() < deadline) {
      await sleep(Math.min(this.args.pollMs, deadline - Date.now()));
      if ((await this.readMode()) !== 'disengaged') this.halt('poll');
    }
  }

  // ks_wait() from the generation seen before the last check: true (and the
  // new mode noted) if a change came, false after ms.
  async wait(ms) {
    const r = await this.client.query('SELECT g, ks_mode()::text AS mode FROM ks_wait($1, $2) AS g', [this.gen, ms]);
    if (r.rows[0].g === this.gen) return false;
    this.gen = r.rows[0].g;
    this.mode = r.rows[0].mode;
    return true;
  }

  // Halted: wait until the mode changes, then look again.
  async waitForRelease() {
    if (this.args.skipCheck) {
      await sleep(this.args.pollMs);
    } else if (this.args.wake === 'listen') {
      await this.nap(1000); // the timeout is only a safety net
    } else if (this.args.wake === 'wait') {
      await this.wait(1000);
    } else {
      await sleep(this.args.pollMs);
    }
  }

  // One action: ask, then do.  The guard refuses the row if a halt came between.
  async act() {
    const wasHalted = this.halted;
    const v = this.args.skipCheck ? { allowed: true } // a careless agent
      : (await this.client.query('SELECT ks_check_task($1) AS v', [this.args.task])).rows[0].v;
    // a NOTIFY that came in with the answer is newer than the check
    if (!this.args.skipCheck && this.halted && !wasHalted) return;
    if (!v.allowed) {
      this.halt('check', v.reason);
      await this.waitForRelease();
      return;
    }
    if (!this.args.skipCheck) this.resume(); // (a NOTIFY during the INSERT below halts us again)
    const r = await this.client.query(
      'INSERT INTO tasks (agent, task_type) VALUES ($1, $2) RETURNING id', [this.args.name, this.args.task]);
    if (this.args.skipCheck) this.resume(); // the careless learn only from a refusal, and its absence
    this.done += 1;
    if (this.done === 1 || this.args.verbose) say('did', { id: Number(r.rows[0].id) });
    await this.pause((0.5 + Math.random()) * this.args.thinkMs);
  }

  // Act until --seconds are up; a refusal halts us, a lost connection is made again.
  async run() {
    await this.connect();
    const end = Date.now() + this.args.seconds * 1000;
    let refused = 0; // refusals in a row
    while (Date.now() < end) {
      try {
        if (!this.ready) await this.prepare();
        if (refused) await this.waitForRelease();
        await this.act();
        refused = 0;
      } catch (e) {
        if (e.code === KS_REFUSED) {
          // refused by the kill switch: halted, not broken.  In emergency
          // every statement is refused, the waits too: from the second
          // refusal in a row, pause before trying again
          this.halt('ks001', e.message);
          refused += 1;
          if (refused > 1) await sleep(200);
          continue;
        }
        if (e.code === undefined || e.code.startsWith('08') || e.code.startsWith('57P')) {
          // connection lost (or ended by the server): reconnect and re-read
          say('disconnected', { error: e.message });
          this.client.end().catch(() => {});
          await sleep(100);
          await this.connect();
          continue;
        }
        throw e;
      }
    }
    say('finished', { done: this.done });
    await this.client.end();
  }
}

new Agent(parseArgs(process.argv.slice(2))).run().catch((e) => {
  say('crashed', { error: e.message, code: e.code });
  process.exit(1);
});
