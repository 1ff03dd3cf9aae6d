# The bypass matrix (ARCHITECTURE §8.3): every way out an agent might try, run as
# a direct and as a nested member of killswitch_agent, disengaged (where
# each one works, so that every refusal below is the switch's doing) and in
# halt_noncritical, halt_all and emergency, each with its exact outcome:
# done, refused with SQLSTATE KS001, or PostgreSQL's own error.
#
# Issue 21's cases are in it: functions no list named (deny by default,
# with a contrib module's function and a C function this suite builds,
# test/ks_test_funcs.c), agent code the planner would fold in emergency and
# the fast path (test/ks_fastpath.c), statements that began before the halt
# (each held at a known row by an advisory lock the test holds, so that the
# halt lands at a known call), the commit backstop across savepoints, the
# audit's footholds, and agents ending their peers.  And what the first
# review found: a handler that catches the halt's cancel and goes on, a
# notification queued before the halt, an agent's temporary tables at exit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;
use KsMatrix;

my $node = ks_node('matrix', conf => "max_prepared_transactions = 10\nlo_compat_privileges = on\n");
my $m = ks_matrix_setup($node);
my ($tmp, $file, $key) = @$m{qw(tmp file key)};
my ($host, $port) = ($node->host, $node->port);
my $srcdir = $ENV{KS_SRCDIR} // '.';
my @roles = @{ $m->{roles} };
# one case as a role (KsMatrix): ('ok', 'KS001' or another SQLSTATE, stderr)
sub outcome { return KsMatrix::outcome($m, @_); }

# the fleet's halt in each mode
ks_matrix_run($m, halt => sub {
	my ($mode) = @_;
	if ($mode eq 'disengaged')
	{
		$node->safe_psql('postgres', "SELECT ks_disengage('matrix', 'tester')")
		  unless $node->safe_psql('postgres', 'SELECT ks_mode()') eq 'disengaged';
	}
	else
	{
		$node->safe_psql('postgres', "SELECT ks_engage('$mode', 'matrix', 'tester')");
	}
});
$node->safe_psql('postgres', "SELECT ks_disengage('matrix done', 'tester')");
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
	'the transactions the agents prepared while disengaged were rolled back in the emergency');

# What an agent started before the halt and finishes after it.
sub sql { return $node->safe_psql('postgres', shift); }
sub agent_session
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', shift ]);
	$bg->query_safe('\set VERBOSITY verbose');
	return $bg;
}
# Run SQL in a background session; return its stderr.
sub bg_err
{
	my ($bg, $sql) = @_;
	$bg->{stderr} = '';
	$bg->query($sql);
	return $bg->{stderr};
}
sql('TRUNCATE t; INSERT INTO t VALUES (100)');
for my $mode ('halt_noncritical', 'halt_all', 'emergency')
{
	for my $role (@roles)
	{
		my $cur = agent_session($role);
		$cur->query_safe('BEGIN; DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE');
		my $wrote = agent_session($role);
		$wrote->query_safe('BEGIN; INSERT INTO t VALUES (1)');
		my $prep = agent_session($role);
		$prep->query_safe("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'before_$role'");
		my $log_offset = -s $node->logfile;
		if ($mode eq 'emergency')
		{
			# and one in a database other than the watcher's
			$node->psql('other', "BEGIN; INSERT INTO o VALUES (3); PREPARE TRANSACTION 'other_$role'",
				extra_params => [ '-U', $role ]);
		}
		my $curpid = $cur->query_safe('SELECT pg_backend_pid()');
		my $wrotepid = $wrote->query_safe('SELECT pg_backend_pid()');
		sql("SELECT ks_engage('$mode', 'started before', 'tester')");

		if ($mode eq 'emergency')
		{
			# sessions in a transaction begun before the emergency are ended
			ok($node->poll_query_until('postgres',
				"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid IN ($curpid, $wrotepid)"),
				"$mode, $role: the sessions in a transaction are ended");
		}
		else
		{
			like(bg_err($cur, 'FETCH c;'), qr/KS001: kill switch engaged \(\w+\): a write by agent/,
				"$mode, $role: FETCH from a FOR UPDATE cursor declared before the halt");
			is(sql("SELECT count(*) FROM pg_locks WHERE pid = $curpid AND locktype = 'transactionid'"),
				'0', "$mode, $role: and no row lock taken");
			like(bg_err($wrote, 'COMMIT;'), qr/KS001: kill switch engaged \(\w+\): the commit of a transaction that wrote/,
				"$mode, $role: COMMIT of writes made before the halt (the backstop)");
		}
		if ($mode eq 'emergency')
		{
			# the watcher rolls the agent's prepared transaction back
			ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_prepared_xacts WHERE gid = 'before_$role'"),
				"$mode, $role: the agent's prepared transaction is rolled back");
			like(sql("SELECT snapshot->>'prepared' FROM killswitch.snapshots ORDER BY id DESC LIMIT 1"),
				qr/"gid": "before_$role"/, "$mode, $role: and it is in the snapshot");
			ok($node->wait_for_log(qr/WARNING:  prepared transaction "other_$role" of an agent in database "other" was not rolled back/,
				$log_offset), "$mode, $role: one in another database is named in a WARNING");
			like(sql("SELECT snapshot->>'prepared' FROM killswitch.snapshots ORDER BY id DESC LIMIT 1"),
				qr/"gid": "other_$role"/, "$mode, $role: and is in the snapshot");
			$node->safe_psql('other', "ROLLBACK PREPARED 'other_$role'");
		}
		else
		{
			like(bg_err($prep, "COMMIT PREPARED 'before_$role';"), qr/KS001: kill switch engaged \(\w+\): COMMIT PREPARED/,
				"$mode, $role: COMMIT PREPARED of a transaction prepared before the halt");
			is(bg_err($prep, "ROLLBACK PREPARED 'before_$role';"), '', "$mode, $role: ROLLBACK PREPARED is allowed");
		}
		is(sql('SELECT pg_catalog.string_agg(x::text, \',\') FROM t'), '100', "$mode, $role: nothing written");
		eval { $_->quit } for ($cur, $wrote, $prep);
		sql("SELECT ks_disengage('next', 'tester')");
	}
}

# ---- issue 21: what began before the halt, savepoints, the audit, peers ----

$node->safe_psql('postgres', q{
CREATE ROLE opbot LOGIN IN ROLE killswitch_agent, killswitch_operator;
CREATE ROLE opnested LOGIN IN ROLE mid, killswitch_operator;
GRANT ALL ON t TO opbot, opnested;
CREATE SEQUENCE s2;
GRANT ALL ON s2 TO owners;
-- a PL/pgSQL simple expression: prepared once per transaction
CREATE FUNCTION bump() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v bigint; BEGIN v := nextval('s2'); RETURN v; END $$;
-- a loop that catches the halt's cancel (and every refusal) and goes on; it
-- waits for advisory lock 4244 at the fifth value
CREATE FUNCTION catch_loop() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v bigint := 0;
BEGIN
    LOOP
        BEGIN
            v := nextval('s2');
            IF v = 5 THEN PERFORM pg_advisory_lock(4244); END IF;
        EXCEPTION WHEN OTHERS OR query_canceled THEN NULL;
        END;
        EXIT WHEN v >= 100;
    END LOOP;
    RETURN v;
END $$;
-- a handler that catches the halt's cancel and goes on with no new
-- subtransaction, calling what a rehearsal (disengaged, the first pass)
-- prepared: nextval() a thousand times, pg_terminate_backend() of a peer;
-- the second pass waits for advisory lock 4246
CREATE FUNCTION go_on_after_cancel(peer int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE pass int := 0; v bigint; ended bool;
BEGIN
    LOOP
        pass := pass + 1;
        BEGIN
            IF pass = 1 THEN RAISE query_canceled; END IF;
            PERFORM pg_advisory_lock(4246);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            FOR i IN 1 .. CASE WHEN pass = 1 THEN 1 ELSE 1000 END LOOP
                v := nextval('s2');
            END LOOP;
            ended := pg_terminate_backend(CASE WHEN pass = 1 THEN 0 ELSE peer END);
            EXIT WHEN pass > 1;
        END;
    END LOOP;
    RETURN 'went on';
END $$;
});

# Poll a query as the superuser until it returns true, for at most $secs.
sub wait_for
{
	my ($query, $secs) = @_;
	for (1 .. ($secs // 30) * 10)
	{
		return 1 if sql($query) eq 't';
		usleep(100_000);
	}
	return 0;
}

# A superuser session holding an advisory lock, and a way to let go of it.
sub hold_lock
{
	my ($lock) = @_;
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("SELECT pg_advisory_lock($lock)");
	return $holder;
}

# Start a statement in an agent's session without waiting for it.
sub start_statement
{
	my ($bg, $sql) = @_;
	$bg->{stderr} = '';
	$bg->query_until(qr/started/, "\\echo started\n$sql\n");
}

# Is the backend busy with a statement?  Gone counts as not.
sub busy_sql { return "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $_[0] AND state = 'active'"; }
sub idle_sql { return "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $_[0] AND state = 'active'"; }
sub waits_sql
{
	my ($pid, $lock) = @_;
	return "SELECT count(*) = 1 FROM pg_locks WHERE pid = $pid AND locktype = 'advisory' AND objid = $lock AND NOT granted";
}

# What a session printed, once its statement has ended; then close it.  A
# session the halt ended (FATAL) is not asked anything more.
sub finish_session
{
	my ($bg, $pid) = @_;
	my $alive = sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '1';
	$bg->query("SELECT 'after'") if $alive;
	eval { $bg->{run}->pump_nb };
	my $err = $bg->{stderr};
	eval { $bg->quit };
	return $err;
}

# In emergency the watcher ends the agent sessions that are busy, which
# would hide whether the halt itself stopped what they run: it is held back
# (stopped, SIGSTOP) until let go.  (Locking its snapshot table held it only
# when its first look came after the engage's commit: a raise is in force
# before, and the snapshot's row waits for the event.)
sub hold_watcher
{
	my ($mode) = @_;
	return undef unless $mode eq 'emergency';
	my $pid = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'");
	die "no watcher to hold" unless $pid =~ /^\d+$/;
	kill 'STOP', $pid or die "SIGSTOP $pid: $!";
	return $pid;
}
sub let_go
{
	my ($pid) = @_;
	return unless $pid;
	kill 'CONT', $pid;
}

sub engage { sql("SELECT ks_engage('$_[0]', 'issue 21', 'tester')"); }
sub release { sql("SELECT ks_disengage('next', 'tester')") unless sql('SELECT ks_mode()') eq 'disengaged'; }
sub last_value { return sql("SELECT last_value FROM s2"); }

sql('TRUNCATE t');
for my $mode ('halt_noncritical', 'halt_all', 'emergency')
{
	for my $role (@roles)
	{
		# Case 3: a built-in set up before the halt, stopped at a known call:
		# the statement waits for a lock at the fifth nextval when the halt
		# comes.  Without the halt's cancel it would go on to 100 once the
		# lock is let go (in emergency too: the watcher is held back).
		{
			sql("SELECT setval('s2', 1, false)");
			my $holder = hold_lock(4242);
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			my $log = -s $node->logfile;
			start_statement($agent, "SELECT nextval('s2'), CASE WHEN g = 5 THEN pg_advisory_lock(4242)::text END FROM generate_series(1, 100) g;");
			ok(wait_for(waits_sql($pid, 4242)), "$mode, $role: nextval running, held at the fifth call");
			my $watcher = hold_watcher($mode);
			engage($mode);
			my $stopped = wait_for(idle_sql($pid), 20);
			$holder->query_safe('SELECT pg_advisory_unlock(4242)');
			ok(wait_for(idle_sql($pid)), "$mode, $role: (the statement ended)");
			ok($stopped, "$mode, $role: a statement calling nextval() since before the halt is stopped by it");
			is(last_value(), '5', "$mode, $role: and the sequence stays where the halt found it");
			like(finish_session($agent, $pid),
				qr/KS001: kill switch engaged \(\w+\): a statement that called nextval\(\) before the halt by agent "$role" refused/,
				"$mode, $role: the statement was cancelled, with KS001");
			ok($node->log_contains(qr/cancelled the statement of agent process $pid, which called nextval\(\) before the halt/, $log),
				"$mode, $role: and the server log says why");
			let_go($watcher);
			$holder->quit;
			release();
		}

		# Case 3, busy: a statement that would call nextval() for hours.
		{
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			start_statement($agent, "SELECT count(nextval('s2')) FROM generate_series(1, 100000) a, generate_series(1, 100000) b;");
			wait_for("SELECT last_value > 1000 FROM s2");
			my $watcher = hold_watcher($mode);
			engage($mode);
			my $stopped = wait_for(idle_sql($pid), 20);
			sql("SELECT pg_cancel_backend($pid)") unless $stopped;
			ok($stopped, "$mode, $role: a busy nextval() loop begun before the halt is stopped by it");
			my $at = last_value();
			usleep(300_000);
			is(last_value(), $at, "$mode, $role: and the sequence no longer moves");
			let_go($watcher);
			finish_session($agent, $pid);
			release();
		}

		# Deny by default, per call: a C function of no extension, set up
		# before the halt, refused at its next call (the sixth).
		{
			my $file = "$tmp/across_${role}_$mode";
			my $holder = hold_lock(4243);
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			start_statement($agent, "SELECT ks_test_mark('$file'), CASE WHEN g = 5 THEN pg_advisory_lock(4243)::text END FROM generate_series(1, 10) g;");
			ok(wait_for(waits_sql($pid, 4243)), "$mode, $role: ks_test_mark() running, held after the fifth call");
			my $watcher = hold_watcher($mode);
			engage($mode);
			$holder->query_safe('SELECT pg_advisory_unlock(4243)');
			ok(wait_for(idle_sql($pid)), "$mode, $role: (the statement ended)");
			is(-s $file, 5, "$mode, $role: a C function set up before the halt is refused at its next call");
			like(finish_session($agent, $pid), qr/KS001: kill switch engaged \(\w+\): ks_test_mark\(\) by agent "$role" refused/,
				"$mode, $role: with KS001");
			let_go($watcher);
			$holder->quit;
			release();
		}

		# A cursor declared before the halt: its next FETCH calls nextval() no more.
		{
			sql("SELECT setval('s2', 1, false)");
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			$agent->query_safe("BEGIN; DECLARE c CURSOR FOR SELECT nextval('s2') FROM generate_series(1, 100); FETCH 3 FROM c");
			engage($mode);
			my $err = sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '1' ? bg_err($agent, 'FETCH 3 FROM c;') : 'ended';
			like($err, $mode eq 'emergency' ? qr/.+/ : qr/KS001: kill switch engaged \(\w+\): the rest of a transaction that called nextval\(\) before the halt by agent "$role" refused/,
				"$mode, $role: FETCH from a cursor calling nextval() declared before the halt");
			is(last_value(), '3', "$mode, $role: and the sequence stays");
			finish_session($agent, $pid);
			release();
		}

		# A PL/pgSQL simple expression prepared before the halt, in the same transaction.
		{
			sql("SELECT setval('s2', 1, false)");
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			$agent->query_safe('BEGIN; SELECT bump()');
			engage($mode);
			my $err = sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '1' ? bg_err($agent, 'SELECT bump();') : 'ended';
			like($err, $mode eq 'emergency' ? qr/.+/ : qr/KS001: kill switch engaged \(\w+\): the rest of a transaction that called nextval\(\) before the halt/,
				"$mode, $role: a PL/pgSQL function whose nextval() was prepared before the halt");
			is(last_value(), '1', "$mode, $role: and the sequence stays");
			finish_session($agent, $pid);
			release();
		}

		# A loop that catches the halt's cancel and goes on is cancelled
		# again: its handler stops at its first statement.
		{
			sql("SELECT setval('s2', 1, false)");
			my $holder = hold_lock(4244);
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			start_statement($agent, 'SELECT catch_loop();');
			ok(wait_for(waits_sql($pid, 4244)), "$mode, $role: catch_loop() held at the fifth value");
			my $watcher = hold_watcher($mode);
			engage($mode);
			my $stopped = wait_for(idle_sql($pid), 20);
			$holder->query_safe('SELECT pg_advisory_unlock(4244)');
			ok($stopped, "$mode, $role: a loop that caught the halt's cancel and went on is stopped");
			wait_for(idle_sql($pid));
			is(last_value(), '5', "$mode, $role: and the sequence stays where the halt found it");
			like(finish_session($agent, $pid), qr/ERROR:  57014: canceling statement due to user request/,
				"$mode, $role: by the cancel, thrown again");
			let_go($watcher);
			$holder->quit;
			release();
		}

		# A handler that catches the halt's cancel and goes on without a new
		# subtransaction, calling the built-ins it prepared before the halt.
		{
			sql("SELECT setval('s2', 1, false)");
			my $holder = hold_lock(4246);
			my $peer = agent_session($role);
			my $peerpid = $peer->query_safe('SELECT pg_backend_pid()');
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			start_statement($agent, "SELECT go_on_after_cancel($peerpid);");
			ok(wait_for(waits_sql($pid, 4246)), "$mode, $role: go_on_after_cancel() rehearsed, and held");
			is(last_value(), '1', "$mode, $role: (the rehearsal called nextval() once)");
			my $watcher = hold_watcher($mode);
			engage($mode);
			my $stopped = wait_for(idle_sql($pid), 20);
			$holder->query_safe('SELECT pg_advisory_unlock(4246)');
			ok($stopped, "$mode, $role: (the statement ended)");
			is(last_value(), '1', "$mode, $role: a handler that caught the halt's cancel calls nextval() no more");
			is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $peerpid"), '1',
				"$mode, $role: nor ends its peer");
			like(finish_session($agent, $pid), qr/ERROR:  57014: canceling statement due to user request/,
				"$mode, $role: the cancel was thrown again in the handler");
			let_go($watcher);
			$holder->quit;
			$peer->quit;
			release();
		}

		# A notification queued before the halt (NOTIFY, pg_notify()) is not
		# delivered by a commit after it: PostgreSQL gives such a
		# transaction its id after the backstop looks, unless the agent's
		# notification took one.
		{
			my $listener = $node->background_psql('postgres');
			$listener->query_safe('LISTEN workers');
			my %queued = (
				'NOTIFY' => "NOTIFY workers, 'NOTIFY by $role before $mode'",
				'pg_notify()' => "SELECT pg_notify('workers', 'pg_notify() by $role before $mode')");
			my %agent;
			for my $how (sort keys %queued)
			{
				$agent{$how} = agent_session($role);
				$agent{$how}->query_safe("BEGIN; $queued{$how}");
			}
			my $watcher = hold_watcher($mode);
			engage($mode);
			for my $how (sort keys %queued)
			{
				like(bg_err($agent{$how}, 'COMMIT;'),
					qr/KS001: kill switch engaged \(\w+\): the commit of a transaction that wrote by agent "$role" refused/,
					"$mode, $role: the commit of a transaction that queued a notification by $how before the halt");
			}
			let_go($watcher);
			# a notification is printed by psql after a statement's result
			my $heard = '';
			for (1 .. 3)
			{
				usleep(100_000);
				$heard .= $listener->query_safe('SELECT 1');
			}
			unlike($heard, qr/before $mode/, "$mode, $role: and the notifications are not delivered");
			eval { $_->quit } for (values %agent);
			$listener->quit;
			release();
		}

		# An agent's session with a temporary table ends while halted: it
		# quits, or in emergency the watcher ends it (busy in a transaction
		# begun before).  PostgreSQL drops the table at exit, in a
		# transaction of its own, which the backstop lets commit.
		{
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			$agent->query_safe("CREATE TEMP TABLE scratch_$role (x int); BEGIN; SELECT 1");
			my $log = -s $node->logfile;
			engage($mode);
			$agent->quit unless $mode eq 'emergency';
			ok(wait_for("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
				"$mode, $role: the session with a temporary table ended");
			eval { $agent->quit } if $mode eq 'emergency';
			unlike(slurp_file($node->logfile, $log), qr/\[$pid\] .*FATAL: .*the commit of a transaction that wrote/,
				"$mode, $role: without a FATAL at exit");
			is(sql("SELECT count(*) FROM pg_class WHERE relname = 'scratch_$role' AND relpersistence = 't'"), '0',
				"$mode, $role: and its temporary table is gone");
			release();
		}

		# Case 6: a halted agent does not end its peers (a peer of its own role).
		{
			my $peer = agent_session($role);
			my $peerpid = $peer->query_safe('SELECT pg_backend_pid()');
			engage($mode);
			for my $f ('pg_cancel_backend', 'pg_terminate_backend')
			{
				my ($got, $err) = outcome($role, "SELECT $f($peerpid)", undef,
					$mode eq 'emergency' ? undef : qr/\Q$f\E\(\)/);
				is($got, 'KS001', "$mode, $role: $f() of a peer") or diag($err);
			}
			my ($got, $err) = outcome($role, { fastpath => [ 2171, $peerpid ] }, undef,
				$mode eq 'emergency' ? undef : qr/pg_cancel_backend\(\)/);
			is($got, 'KS001', "$mode, $role: pg_cancel_backend() of a peer through the fast path") or diag($err);
			is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $peerpid"), '1', "$mode, $role: the peer is still there");
			$peer->quit;
			release();
		}
	}

	# Case 1: the commit backstop across savepoints, for agents that are also
	# operators.  In emergency the watcher would end the session at once: it
	# is held back (hold_watcher) so that the COMMIT comes first.
	for my $role ('opbot', 'opnested')
	{
		my $rolled_back = "SAVEPOINT s; SELECT ks_engage('halt_noncritical', 'inside a savepoint', '$role'); ROLLBACK TO s";

		{
			my $agent = agent_session($role);
			$agent->query_safe("BEGIN; $rolled_back; INSERT INTO t VALUES (901)");
			my $locker = hold_watcher($mode);
			engage($mode);
			like(bg_err($agent, 'COMMIT;'), qr/KS001: kill switch engaged \(\w+\): the commit of a transaction that wrote by agent "$role" refused/,
				"$mode, $role: a write after an engage rolled back to a savepoint does not commit");
			let_go($locker);
			is(sql('SELECT count(*) FROM t WHERE x = 901'), '0', "$mode, $role: nothing written");
			$agent->quit;
			release();
		}
		{
			my $holder = hold_lock(4245);
			my $agent = agent_session($role);
			my $pid = $agent->query_safe('SELECT pg_backend_pid()');
			$agent->query_safe("BEGIN; $rolled_back");
			start_statement($agent, 'INSERT INTO t SELECT 910 + g FROM generate_series(1, 5) g WHERE g < 3 OR pg_advisory_lock(4245) IS NOT NULL;');
			ok(wait_for(waits_sql($pid, 4245)), "$mode, $role: a 5-row INSERT running when the halt comes");
			my $locker = hold_watcher($mode);
			engage($mode);
			$holder->query_safe('SELECT pg_advisory_unlock(4245)');
			ok(wait_for(idle_sql($pid)), "$mode, $role: (the INSERT finished)");
			like(bg_err($agent, 'COMMIT;'), qr/KS001: kill switch engaged \(\w+\): the commit of a transaction that wrote by agent "$role" refused/,
				"$mode, $role: it does not commit");
			let_go($locker);
			is(sql('SELECT count(*) FROM t WHERE x > 910'), '0', "$mode, $role: nothing written");
			$holder->quit;
			$agent->quit;
			release();
		}
		next if $mode eq 'emergency';
		{
			# the extension's own write inside a released savepoint still commits
			my $gen = sql("SELECT ks_status()->>'generation'");
			engage($mode);
			my $agent = agent_session($role);
			is(bg_err($agent, "BEGIN; SAVEPOINT s; SELECT ks_engage('$mode', 'repeat in a savepoint', '$role'); RELEASE s; COMMIT;"), '',
				"$mode, $role: an agent operator's engage inside a savepoint commits while halted");
			is(sql("SELECT ks_status()->>'generation'"), $gen + 2, "$mode, $role: and is recorded");
			$agent->quit;
			release();
		}
	}
}

# Case 5: the audit sees the footholds, whatever the mode: a schema the agent
# owns on an administrator's search_path, a trigger on its table that
# administrators write, a superuser's SECURITY DEFINER function it may call.
$node->safe_psql('postgres', q{
CREATE SCHEMA bot_schema AUTHORIZATION bot;
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
ALTER ROLE alice SET search_path = bot_schema, public;
CREATE TABLE bot_tasks (x int);
CREATE FUNCTION grant_bot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'bot') ON CONFLICT DO NOTHING; RETURN NEW; END $$;
CREATE TRIGGER plant AFTER INSERT ON bot_tasks FOR EACH ROW EXECUTE FUNCTION grant_bot();
ALTER TABLE bot_tasks OWNER TO bot;
});
for my $mode ('disengaged', 'halt_noncritical', 'halt_all', 'emergency')
{
	engage($mode) unless $mode eq 'disengaged';
	my $found = sql("SELECT string_agg(power || ': ' || detail, E'\\n') FROM ks_audit() WHERE role = 'bot'");
	like($found, qr/search_path: administrator "alice" has schema bot_schema on its search_path \(set for the role\), which the agent owns/,
		"$mode: the audit sees the agent's schema on an administrator's search_path");
	like($found, qr/trigger: trigger plant on public.bot_tasks, a table it owns/, "$mode: and the trigger on its table");
	like($found, qr/definer_function: may execute SECURITY DEFINER function public.su_read\(text\) of superuser/,
		"$mode: and a superuser's SECURITY DEFINER function it may execute");
	release();
}

# The allowlist is extended by killswitch.allowed_functions (a reload
# setting): the named functions run for a halted agent, every overload of
# each name; an unqualified name is refused.
{
	my ($rc, $out, $err) = $node->psql('postgres', "ALTER SYSTEM SET killswitch.allowed_functions = 'ks_test_mark'");
	like($err, qr/invalid value for parameter "killswitch.allowed_functions".*\n.*DETAIL:  "ks_test_mark" is not a schema-qualified function name/,
		'killswitch.allowed_functions: an unqualified name is refused');
	sql(q{ALTER SYSTEM SET killswitch.allowed_functions = 'public.ks_test_mark', '"public".pg_prewarm'});
	sql('SELECT pg_reload_conf()');
	engage('halt_all');
	for my $role (@roles)
	{
		my ($got, $err2);
		for (1 .. 50)
		{
			($got, $err2) = outcome($role, "SELECT ks_test_mark('$tmp/allowed_$role'), pg_prewarm('t')");
			last if $got eq 'ok';
			usleep(100_000);
		}
		is($got, 'ok', "halt_all, $role: functions named in killswitch.allowed_functions run") or diag($err2);
		($got, $err2) = outcome($role, "SELECT brin_summarize_new_values('bt_brin')", undef, qr/brin_summarize_new_values\(\)/);
		is($got, 'KS001', "halt_all, $role: the others are still refused") or diag($err2);
	}
	sql('ALTER SYSTEM RESET killswitch.allowed_functions');
	sql('SELECT pg_reload_conf()');
	release();
}

$node->stop;
done_testing();
