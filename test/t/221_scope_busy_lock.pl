# A scope's engage never waits on a lock another session holds
# (ARCHITECTURE §13, §5.3 "Busy"): with the lock that orders the history
# held by an idle transaction, ks_engage(..., scope => ...) returns at once
# (with lock_timeout and statement_timeout low, which a wait would hit and
# which would roll the raise back), the scope is in force at once, other
# agents write; its event follows the commit, recorded by the watcher as
# its caller's once the lock is free, announced with its scope; the chain
# verifies.  A raise whose event follows survives a kill -9 taken while it
# is only a mark (settled as committed, then recorded); one whose
# transaction never committed is settled away; a savepoint's abort or a
# rollback takes it back.  Forced: the holder is a session the test keeps
# open; the uncommitted mark is made by test/hooks/ks_test_hooks.so's
# ks_test.commit_delay_ms, which holds the raiser between its mark and its
# commit record while the test kills the server.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $node = ks_node('scope_busy_lock', conf => "shared_preload_libraries = '$hooks, killswitch'\n");
my $in_flight = $node->data_dir . '/pg_killswitch/in_flight';
sub sql { return $node->safe_psql('postgres', shift); }

# A write as role: 'ok', 'KS001' or the error.
sub refused { return ks_refused($node, shift); }

# A scope's engage as op with low timeouts and a client timeout: (returned, output, error).
sub engage_scope
{
	my ($mode, $reason, $scope) = @_;
	my ($out, $err, $timed_out) = ('', '');
	$node->psql('postgres',
		"SET lock_timeout = '200ms'; SET statement_timeout = '2s';\n"
		  . "SELECT mode, id IS NULL, generation IS NULL, scope_name, session_role "
		  . "FROM ks_engage('$mode', '$reason', 'pager', scope => '$scope')",
		stdout => \$out, stderr => \$err, timeout => 10, timed_out => \$timed_out,
		on_error_stop => 1, extra_params => [ '-U', 'op' ]);
	return (!$timed_out && $err eq '', $out, $err);
}

sub marks
{
	opendir(my $d, $in_flight) or return ();
	my @m = sort grep { /^\d+_\d+\.json$/ } readdir($d);
	return @m;
}

sub events_of { return sql("SELECT count(*) FROM killswitch.events WHERE reason = '$_[0]'"); }

sql(q{
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE both_ways LOGIN IN ROLE killswitch_operator, killswitch_agent;
CREATE ROLE boss LOGIN IN ROLE killswitch_admin;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});
my $oid7 = sql("SELECT 'agent_7'::regrole::oid");

# 1. An agent-operator idle in a transaction that changed the fleet holds the lock.
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'both_ways' ]);
$holder->query_safe("BEGIN; SELECT ks_engage('halt_noncritical', 'fleet held open')");
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN killswitch');
my ($done, $out, $err) = engage_scope('halt_all', 'agent_7 loops', 'agent_7');
ok($done, 'a scope\'s engage returns while an idle transaction holds the ordering lock') or diag($err);
is($out, 'halt_all|t|t|agent_7|op', 'its row: the scope, id and generation null (the event follows), its caller');
is(refused('agent_7'), 'KS001', 'agent_7 is refused at once');
is(events_of('agent_7 loops'), '0', 'the event is not recorded while the lock is held');
my @m = marks();
is(scalar(@m), 1, 'one mark of the scope\'s raise') && like($m[0], qr/^\d+_${oid7}\.json$/, 'named by transaction and scope');
$holder->query_safe('ROLLBACK');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'agent_7 loops'"),
	'once the lock is free, the watcher records the event');
is(sql("SELECT mode || '<-' || previous_mode || ' ' || scope_name || ' ' || session_role || ' ' || generation "
	  . "FROM killswitch.events WHERE reason = 'agent_7 loops'"),
	'halt_all<-disengaged agent_7 op 1', 'as op\'s raise of agent_7, on the scope\'s generation line');
is(sql("SELECT mode || ':' || generation FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all:1',
	'the committed scope takes the event\'s generation');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_ls_dir('pg_killswitch/in_flight') f WHERE f LIKE '%\\_%'"),
	'its mark is gone');
is(refused('agent_7'), 'KS001', 'agent_7 stays halted');
{
	my $all = '';
	for (1 .. 200)
	{
		my ($o) = $listener->query('SELECT 1');
		$all .= $o;
		last if $all =~ /"reason": "agent_7 loops"/;
		select(undef, undef, undef, 0.05);
	}
	my ($n) = grep { $_->{reason} eq 'agent_7 loops' }
	  map { decode_json($_) } ($all =~ /Asynchronous notification "killswitch" with payload "(.*)" received/g);
	ok($n, 'the recorded event is announced') or diag($all);
	is($n && $n->{scope}, 'agent_7', 'its payload names the scope');
}
$listener->quit;
sql("SELECT ks_disengage('agent_7 fixed', 'boss', scope => 'agent_7')");

# 2. LOCK killswitch.events, held open; other agents keep writing.
$holder->quit;
$holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
($done, $out, $err) = engage_scope('halt_all', 'behind LOCK', 'agent_7');
ok($done, 'a scope\'s engage returns while LOCK killswitch.events is held') or diag($err);
is(refused('agent_7'), 'KS001', 'agent_7 is refused');
is(refused('agent_8'), 'ok', 'another agent writes');
is(refused('both_ways'), 'ok', 'so does the holder\'s role elsewhere');
# a release waits for the lock (lowering only by a committed release)
my ($rout, $rerr, $rto) = ('', '', 0);
$node->psql('postgres', "SET lock_timeout = '300ms'; SELECT ks_disengage('too early', 'boss', scope => 'agent_7')",
	stdout => \$rout, stderr => \$rerr, extra_params => [ '-U', 'boss' ]);
like($rerr, qr/lock timeout/, 'a release of the scope still waits for the lock');
is(refused('agent_7'), 'KS001', 'and lowered nothing');
$holder->query_safe('COMMIT');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'behind LOCK'"),
	'recorded after the holder ends');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
sql("SELECT ks_disengage('agent_7 fixed', 'boss', scope => 'agent_7')");
is(refused('agent_7'), 'ok', 'released');

# 3. A savepoint's abort, and a rollback, take such a raise back.
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
my $raiser = $node->background_psql('postgres', extra_params => [ '-U', 'op' ]);
$raiser->query_safe("BEGIN; SAVEPOINT s; SELECT ks_engage('halt_all', 'savepoint raise', scope => 'agent_8')");
is(refused('agent_8'), 'KS001', 'in force while in flight');
$raiser->query_safe('ROLLBACK TO s');
is(refused('agent_8'), 'ok', 'the savepoint\'s abort takes it back');
$raiser->query_safe('COMMIT');
$raiser->query_safe("BEGIN; SELECT ks_engage('halt_all', 'rolled back raise', scope => 'agent_8')");
is(refused('agent_8'), 'KS001', 'in force again while in flight');
$raiser->query_safe('ROLLBACK');
is(refused('agent_8'), 'ok', 'a rollback takes it back');
is(scalar(marks()), 0, 'no mark is left');
$holder->query_safe('COMMIT');
sleep 1;
is(sql("SELECT count(*) FROM killswitch.events WHERE reason IN ('savepoint raise', 'rolled back raise')"), '0',
	'neither is ever recorded');
is(refused('agent_8'), 'ok', 'agent_8 writes');
$raiser->quit;

# A raise made behind the lock, recorded later in the transaction by a
# savepoint that took the lock and then rolled back: its event went with
# the savepoint, so it follows the commit again — never lost.
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
$raiser = $node->background_psql('postgres', extra_params => [ '-U', 'op' ]);
$raiser->query_safe("BEGIN; SELECT ks_engage('halt_all', 'before the savepoint', scope => 'agent_8')");
$holder->query_safe('COMMIT');
$raiser->query_safe("SAVEPOINT s; SELECT ks_engage('halt_all', 'in the savepoint', scope => 'agent_9')");
$raiser->query_safe('ROLLBACK TO s');
$raiser->query_safe('COMMIT');
$raiser->quit;
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'before the savepoint'"),
	'the raise before the savepoint is recorded after its commit');
is(sql("SELECT string_agg(scope::text || '=' || mode, ',') FROM ks_scopes()"), 'agent_8=halt_all',
	'agent_8 is halted, agent_9 (the savepoint\'s) is not');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'in the savepoint'"), '0', 'the savepoint\'s raise has no event');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
sql("SELECT ks_disengage('agent_8 fixed', 'boss', scope => 'agent_8')");

# 4. kill -9 of the postmaster while the committed raise is only a mark:
#    settled as committed, recorded; the history's settling does not lower it.
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
($done, $out, $err) = engage_scope('emergency', 'committed before the crash', 'agent_8');
ok($done, 'the raise commits behind the lock') or diag($err);
is(scalar(marks()), 1, 'its event is only a mark');
ks_kill9_and_start($node);
is(refused('agent_8'), 'KS001', 'after the crash agent_8 is halted');
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'committed before the crash'"),
	'the committed raise is recorded after the crash');
is(sql("SELECT mode || ' ' || scope_name || ' ' || session_role FROM killswitch.events WHERE reason = 'committed before the crash'"),
	'emergency agent_8 op', 'as op\'s raise of agent_8');
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'agent_8'::regrole"), 'emergency',
	'agent_8\'s scope is committed: the settling by the history did not lower it');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_ls_dir('pg_killswitch/in_flight') f WHERE f LIKE '%\\_%'"),
	'its mark is settled');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

# 5. A crash between a raise's mark and its commit record: settled away.
#    The raiser is held at pre-commit (its mark written) and killed with
#    SIGKILL: the crash of a backend, which takes the server down.
$holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
my ($uout, $uerr) = ('', '');
my $uncommitted = IPC::Run::start([ 'psql', '-XAtq', '-U', 'op', '-d', $node->connstr('postgres'), '-c',
	"SET ks_test.commit_delay_ms = 60000; SELECT ks_engage('halt_all', 'never committed', scope => 'agent_9')" ],
	'>', \$uout, '2>', \$uerr);
for (1 .. 200) { last if marks() == 1; select(undef, undef, undef, 0.05); }
is(scalar(marks()), 1, 'the raise wrote its mark and waits before its commit record');
is(refused('agent_9'), 'KS001', 'agent_9 is refused meanwhile');
my $pid = sql("SELECT pid FROM pg_stat_activity WHERE query LIKE '%never committed%' AND pid <> pg_backend_pid()");
kill 'KILL', $pid;
eval { $uncommitted->finish };
eval { $holder->quit };
# the tests' servers run with restart_after_crash = off: the crash stops it; start it again
for (1 .. 200) { last unless -e $node->data_dir . '/postmaster.pid'; select(undef, undef, undef, 0.05); }
$node->_update_pid(-1);
$node->start;
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_ls_dir('pg_killswitch/in_flight') f WHERE f LIKE '%\\_%'"),
	'after the crash its mark is settled');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'never committed'"), '0',
	'the raise that never committed is not recorded');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM ks_scopes() WHERE scope = 'agent_9'::regrole"),
	'and is not a scope');
is(refused('agent_9'), 'ok', 'agent_9 writes');
is(refused('agent_8'), 'KS001', 'agent_8 stays halted');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
# the mark goes, then the line is logged (scopechange.c): wait for it
ok($node->wait_for_log(qr/the raise of scope "agent_9" to halt_all of transaction \d+ never committed/),
	'the settling is logged');

done_testing();
