# Issue 18 case 1: a held lock does not freeze the switch (ARCHITECTURE §5.3,
# §5.7).  An open transaction that engaged holds the lock that orders the
# history, and sits idle; so does a superuser's LOCK killswitch.events.  An
# engage (emergency too) still returns at once, in force for every session,
# its row with id and generation null: its event follows, recorded by the
# watcher as its caller's once the lock is free.  The watcher applies an
# outside engage (killswitch -D) while the lock is held.  Forced: the
# holder is a session kept open by the test; each engage runs with a 10 s
# client timeout, so a wait behind the lock (what main did) fails the test.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my $node = ks_node('held_lock');
my $pgdata = $node->data_dir;
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
$node->safe_psql('postgres', q{
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE both_ways LOGIN IN ROLE killswitch_operator, killswitch_agent;
});

sub sql { return $node->safe_psql('postgres', shift); }

# An engage with a client timeout: (finished in time, output, error).
sub engage
{
	my ($mode, $reason, $user) = @_;
	my ($out, $err, $timed_out) = ('', '');
	$node->psql('postgres',
		"SELECT mode, id IS NULL, generation IS NULL, session_role FROM ks_engage('$mode', '$reason')",
		stdout => \$out, stderr => \$err, timeout => 10, timed_out => \$timed_out,
		extra_params => [ '-U', $user // 'op' ]);
	return (!$timed_out, $out, $err);
}

# Wait (5 s at most) until the watcher has recorded everything in force.
sub recorded
{
	return $node->poll_query_until('postgres',
		"SELECT NOT (ks_status()->>'unrecorded_change')::boolean");
}

# 1. An open transaction holds an engage, idle — an agent that is also an
#    operator can do this (halt_all here: in emergency the watcher would end
#    that agent's busy session, and free the lock).
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'both_ways' ]);
$holder->query_safe("BEGIN; SELECT ks_engage('halt_noncritical', 'held open')");
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the open raise is in force at once');
# a session asleep in ks_wait() wakes for the raise, before its generation moves
my $gen = sql("SELECT ks_status()->>'generation'");
my ($wout, $werr) = ('', '');
my $waiter = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c',
	"SELECT ks_wait($gen, 60000), ks_mode()" ], '>', \$wout, '2>', \$werr);
$node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT ks_wait($gen%'", '1');
my ($done, $out, $err) = engage('halt_all', 'behind an idle holder');
ok($done, 'an engage returns while an idle transaction holds the lock') or diag($err);
is($out, 'halt_all|t|t|op', 'its row: id and generation null (the event follows), its caller');
is(sql('SELECT ks_mode()'), 'halt_all', 'every session sees halt_all at once');
$waiter->finish;
is($wout, "$gen|halt_all\n", 'ks_wait() returned for the raise, with the same generation') or diag($werr);
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'behind an idle holder'"), '0',
	'the event is not recorded while the lock is held');
is(sql("SELECT ks_status()->>'unrecorded_change'"), 'true', 'ks_status() says a change awaits its event');

# 2. The holder commits: the events follow, in commit order, as their callers'.
$holder->query_safe('COMMIT');
$holder->quit;
ok(recorded(), 'once the lock is free, the watcher records the deferred event');
my $rows = sql("SELECT mode, previous_mode, source, session_role, backend_pid <> pg_backend_pid() "
	  . "FROM killswitch.events WHERE reason IN ('held open', 'behind an idle holder') ORDER BY id");
is($rows, "halt_noncritical|disengaged|sql|both_ways|t\nhalt_all|halt_noncritical|sql|op|t",
	'the holder\'s event first, then the deferred engage, as op\'s');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
is(sql("SELECT (ks_status()->>'generation')::bigint = max(generation) FROM killswitch.events"), 't',
	'shared memory and the history agree on the generation');
is(sql('SELECT ks_mode()'), 'halt_all', 'halt_all stays');
sql("SELECT ks_disengage('reset')");

# An emergency behind a holder that is no agent.
$holder = $node->background_psql('postgres', extra_params => [ '-U', 'op' ]);
$holder->query_safe("BEGIN; SELECT ks_engage('halt_noncritical', 'held open by op')");
($done, $out, $err) = engage('emergency', 'emergency behind a holder');
ok($done, 'an emergency engage returns while an idle transaction holds the lock') or diag($err);
is(sql('SELECT ks_mode()'), 'emergency', 'in force at once');
$holder->query_safe('ROLLBACK');
$holder->quit;
ok(recorded(), 'recorded once the holder rolled back');
is(sql("SELECT mode || '<-' || previous_mode FROM killswitch.events WHERE reason = 'emergency behind a holder'"),
	'emergency<-disengaged', 'as if the rolled-back holder never was');
sql("SELECT ks_disengage('reset')");

# 3. LOCK killswitch.events by a superuser, held open.  In EXCLUSIVE mode
#    (every writer and the ordering lock wait): an engage from a new session
#    returns at once.  In ACCESS EXCLUSIVE mode (LOCK's default) a new
#    session cannot even read the table's row type, which ks_engage()
#    returns (PostgreSQL's type cache locks the table): a session that has
#    read it before engages at once, and the watcher applies an outside
#    engage at once.
my $warm = $node->background_psql('postgres', extra_params => [ '-U', 'op' ]);
$warm->query_safe('SELECT (NULL::killswitch.events).id');
$holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK killswitch.events IN EXCLUSIVE MODE');
($done, $out, $err) = engage('halt_all', 'behind LOCK');
ok($done, 'an engage returns while a superuser holds LOCK killswitch.events IN EXCLUSIVE MODE') or diag($err);
is(sql('SELECT ks_mode()'), 'halt_all', 'and is in force');
$holder->query_safe('ROLLBACK');
$holder->query_safe('BEGIN; LOCK killswitch.events');
my $t0 = time;
is($warm->query_safe("SELECT mode || ' ' || (id IS NULL) FROM ks_engage('halt_all', 'behind ACCESS EXCLUSIVE')"),
	'halt_all true', 'under ACCESS EXCLUSIVE, a session that knows the row type engages at once');
is($node->safe_psql('postgres', 'SELECT ks_mode()'), 'halt_all', 'and it is in force');
# the outside engage is applied while the lock is held
my ($cout, $cerr) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'emergency', '--reason', 'CLI behind LOCK', '--by', 'ops' ],
	'>', \$cout, '2>', \$cerr);
# (only what needs no table: ACCESS EXCLUSIVE keeps every reader of it waiting)
ok($node->poll_query_until('postgres', "SELECT ks_mode() = 'emergency'"),
	'the watcher applies an outside engage while LOCK is held') or diag($cerr);
$holder->query_safe('ROLLBACK');
ok(recorded(), 'the LOCK gone, everything is recorded');
is(sql("SELECT string_agg(source || ':' || mode, ',' ORDER BY id) FROM killswitch.events "
	  . "WHERE reason IN ('behind LOCK', 'behind ACCESS EXCLUSIVE', 'CLI behind LOCK')"),
	'sql:halt_all,sql:halt_all,cli:emergency', 'all three events, in the order they took effect');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
$holder->quit;
$warm->quit;

# 4. A deferred engage that rolls back leaves no mode and no event.
sql("SELECT ks_disengage('reset')");
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT ks_engage('halt_noncritical', 'holder 2')");
my $other = $node->background_psql('postgres');
$other->query_safe("BEGIN; SELECT ks_engage('emergency', 'rolled back while deferred')");
is(sql('SELECT ks_mode()'), 'emergency', 'in force while in flight');
$other->query_safe('ROLLBACK');
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'back to the holder\'s raise after the rollback');
$holder->query_safe('ROLLBACK');
is(sql('SELECT ks_mode()'), 'disengaged', 'and to the committed state after the holder\'s');
ok(recorded(), 'nothing waits to be recorded');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason IN ('holder 2', 'rolled back while deferred')"),
	'0', 'no event of either');
is(sql(q{SELECT count(*) FROM pg_ls_dir('pg_killswitch/in_flight') f}), '0', 'no mark left');
$holder->quit;
$other->quit;

# 5. A deferred engage survives a crash right after its commit: recorded at the restart.
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT ks_engage('halt_noncritical', 'holder 3')");
($done, $out, $err) = engage('halt_all', 'deferred, then the crash');
ok($done, 'a deferred engage returns');
ks_kill9_and_start($node);
is(sql('SELECT ks_mode()'), 'halt_all', 'after kill -9 the committed deferred raise is in force');
ok(recorded(), 'and the watcher records it');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'deferred, then the crash'"), '1',
	'once');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'holder 3'"), '0',
	'the holder\'s uncommitted engage never happened');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

$node->stop;
done_testing();
