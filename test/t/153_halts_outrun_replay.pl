# Halts outrun replay (ARCHITECTURE §11): a streaming standby and a
# cascading standby behind it hear a halt from their upstream while their
# replay is held up by a recovery conflict — an agent holding a snapshot in
# ks_wait() against a VACUUM on the primary, an agent idle in a transaction
# against a TRUNCATE, busy agents against a pgbench write load — and a
# delayed standby (recovery_min_apply_delay) and its cascade halt at once.
# A lower mode never arrives that way: only by replay.
#
# Every standby runs with max_standby_streaming_delay = -1, so a conflict
# holds replay for good: a halt that reaches a standby here can only have
# come past replay, and no session is ever cancelled by a conflict.  Each
# case first checks that replay is indeed held (the startup process's wait
# event), so it cannot pass by accident.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

# A guarantee that holds is seen within seconds; without it, never (or
# only after the 30 s a delayed standby waits).
# a bound for what must come (replay is held, it does not race): generous,
# for a loaded machine; it costs nothing when the effect comes
my $BOUND = 60;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub within { my ($node, $sql, $secs) = @_; return ks_within($node, $sql, $secs // $BOUND); }

# Does the log say this (after offset) within the bound?  Never dies.
sub log_within
{
	my ($node, $re, $offset) = @_;
	my $deadline = time + $BOUND;
	while (time < $deadline)
	{
		return 1 if $node->log_contains($re, $offset);
		usleep(50_000);
	}
	return 0;
}

# Is this node's replay held by a recovery conflict: with a snapshot, a lock,
# or any (a busy scan's buffer pin counts too)?
sub replay_held
{
	my ($node, $what) = @_;
	my %cond = (
		snapshot => "wait_event = 'RecoveryConflictSnapshot'",
		lock => "wait_event_type = 'Lock'",
		any => "(wait_event IN ('RecoveryConflictSnapshot', 'BufferPin') OR wait_event_type = 'Lock')");
	my $cond = $cond{$what};
	return 1 if within($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'startup' AND $cond");
	diag($node->name . ': the startup process: '
		  . q1($node, "SELECT wait_event_type || ' ' || wait_event FROM pg_stat_activity WHERE backend_type = 'startup'")
		  . '; replayed up to ' . q1($node, 'SELECT pg_last_wal_replay_lsn()'));
	return 0;
}

# psql as the agent bot, in the background, running $sql.
sub agent
{
	my ($node, $sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-U', 'bot', '-c', $sql ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# (max_connections: the standbys' agents, beside the superusers' 3 slots and
# the 3 that killswitch.reserved_connections keeps from agents)
my $conf = "max_standby_streaming_delay = -1\nhot_standby_feedback = off\nmax_connections = 20\n";
my $primary = ks_node('outrun_primary', init => { allows_streaming => 1 }, no_extension => 1);
q1($primary, q(
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE TABLE held (id int PRIMARY KEY, v int);
INSERT INTO held SELECT g, 0 FROM generate_series(1, 100) g;
CREATE TABLE locked (id int);
INSERT INTO locked VALUES (1);
GRANT SELECT ON held, locked TO bot;
));
$primary->command_ok([ 'pgbench', '-i', '-s', '1', '-q', $primary->connstr('postgres') ], 'pgbench tables');
q1($primary, 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO bot');
$primary->backup('b');

my $standby = PostgreSQL::Test::Cluster->new('outrun_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', $conf);
$standby->start;
$standby->backup('bs');
my $cascade = PostgreSQL::Test::Cluster->new('outrun_cascade');
ks_init_from_backup($cascade, $standby, 'bs', has_streaming => 1);
$cascade->append_conf('postgresql.conf', $conf);
$cascade->start;
my @followers = ($standby, $cascade);

# Wait until both standbys have replayed everything the primary wrote.
sub caught_up
{
	my $lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
	for my $node (@followers)
	{
		ok(within($node, "SELECT pg_last_wal_replay_lsn() >= '$lsn'"), $node->name . ': replay caught up');
	}
}

# Make dead rows on the primary, and a VACUUM that removes them: once no
# transaction there is as old as the update (a pgbench transaction may be),
# so that the cleanup record conflicts with every older snapshot on a standby.
sub update_and_vacuum
{
	my $xid = q1($primary, 'BEGIN; UPDATE held SET v = v + 1; SELECT txid_current(); COMMIT;');
	ok(within($primary, "SELECT count(*) = 0 FROM pg_stat_activity WHERE age(backend_xmin) >= age('$xid'::xid)"),
		'no transaction on the primary older than the update');
	q1($primary, 'VACUUM held');
}

sub release_all
{
	q1($primary, "SELECT ks_disengage('next case', 'ops')");
	caught_up();
	is(q1($_, 'SELECT ks_mode()'), 'disengaged', $_->name . ': disengaged again') for @followers;
}

# ---- 1. an agent holding a snapshot in ks_wait(), and a conflicting VACUUM ----
my $gen = q1($primary, "SELECT ks_status()->>'generation'");
caught_up();
my (%wait, %pin);
for my $node (@followers)
{
	# a second snapshot, not an agent's, keeps replay held after the waiter returns
	$pin{ $node->name } = $node->background_psql('postgres');
	$pin{ $node->name }->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
	$pin{ $node->name }->query_safe('SELECT count(*) FROM held');
	$wait{ $node->name } = agent($node, "SELECT ks_wait($gen, 60000)");
	# the wait's type: its name is KillswitchWait from 17 on, Extension before (TAP 180)
	ok(within($node, "SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'bot' AND wait_event_type = 'Extension'"),
		$node->name . ': an agent waits in ks_wait()');
}
update_and_vacuum();
ok(replay_held($_, 'snapshot'), $_->name . ": replay waits for the waiter's snapshot (VACUUM)") for @followers;
my $engaged = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'behind a conflict', 'ops')");
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'bot'"),
		"$name: the waiter returns at once");
	$wait{$name}{h}->finish;
	is(${ $wait{$name}{out} }, "$engaged\n", "$name: ks_wait() returned the engage's generation, not the old one");
	is(q1($node, 'SELECT ks_mode()'), 'halt_all', "$name: halted");
	ok(replay_held($node, 'snapshot'), "$name: while replay still waits");
	is(q1($node, "SELECT coalesce((ks_status()->>'replayed_generation')::bigint, -1) < $engaged"), 't',
		"$name: before replaying the engage");
	$pin{$name}->quit;
}
release_all();

# ---- 2. an agent idle in a transaction, and a TRUNCATE ----
my %idle;
for my $node (@followers)
{
	my $bot = $node->background_psql('postgres', extra_params => [ '-U', 'bot' ]);
	$bot->query_safe('BEGIN');
	$bot->query_safe('SELECT count(*) FROM locked');
	$idle{ $node->name } = $bot;
}
q1($primary, 'TRUNCATE locked');
ok(replay_held($_, 'lock'), $_->name . ': replay waits for the idle transaction\'s lock (TRUNCATE)') for @followers;
$engaged = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'behind a lock', 'ops')");
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT NOT (ks_check_task('nightly_report')->>'allowed')::boolean"),
		"$name: tasks are refused at once");
	ok(replay_held($node, 'lock'), "$name: while replay still waits for the lock");
	is(q1($node, "SELECT ks_status()->>'generation'"), $engaged, "$name: at the engage's generation");
	$idle{$name}->quit;
}
release_all();

# ---- 3. emergency under a write load: busy agents ended by the switch ----
my ($pgb_out, $pgb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-T', '120', $primary->connstr('postgres') ],
	'>', \$pgb_out, '2>', \$pgb_err);
my %busy;
for my $node (@followers)
{
	$busy{ $node->name } = [ map { agent($node, 'SELECT pg_sleep(300) FROM pgbench_branches') } 1 .. 4 ];
	ok(within($node, "SELECT count(*) = 4 FROM pg_stat_activity WHERE usename = 'bot' AND state = 'active'"),
		$node->name . ': four agents are busy');
}
# the load's own pruning conflicts too; a VACUUM makes sure
update_and_vacuum();
ok(replay_held($_, 'any'), $_->name . ': replay waits for the busy agents') for @followers;
my %offset = map { $_->name => -s $_->logfile } @followers;
$engaged = q1($primary, "SELECT generation FROM ks_engage('emergency', 'under load', 'ops')");
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'bot'"),
		"$name: the busy agents are ended");
	ok(log_within($node, qr/kill switch emergency \(generation $engaged\): 4 agent sessions ended/, $offset{$name}),
		"$name: by the switch");
	for my $a (@{ $busy{$name} })
	{
		$a->{h}->finish;
		like(${ $a->{err} }, qr/terminating connection due to administrator command/, "$name: an agent's session was terminated");
	}
	is(q1($node, "SELECT confl_snapshot + confl_lock FROM pg_stat_database_conflicts WHERE datname = 'postgres'"),
		'0', "$name: and none was cancelled by a conflict");
}
$pgbench->kill_kill;
q1($primary, "SELECT ks_disengage('after the load', 'ops')");
caught_up();

# ---- 4. a delayed standby, and its cascade ----
$primary->backup('bd');
my $delayed = PostgreSQL::Test::Cluster->new('outrun_delayed');
ks_init_from_backup($delayed, $primary, 'bd', has_streaming => 1);
$delayed->append_conf('postgresql.conf', "recovery_min_apply_delay = '30s'\n");
$delayed->start;
$delayed->backup('bdd');
my $dcascade = PostgreSQL::Test::Cluster->new('outrun_delayed_cascade');
ks_init_from_backup($dcascade, $delayed, 'bdd', has_streaming => 1);
$dcascade->append_conf('postgresql.conf', "recovery_min_apply_delay = '30s'\n");
$dcascade->start;
for my $node ($delayed, $dcascade)
{
	ok(within($node, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL"), $node->name . ': hears its upstream');
}
my $before = q1($delayed, "SELECT ks_status()->>'replayed_generation'");
my $t0 = time;
$engaged = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'delayed standbys too', 'ops')");
for my $node ($delayed, $dcascade)
{
	my $name = $node->name;
	ok(within($node, "SELECT ks_mode() = 'halt_all'", 30), "$name: halted at once, not after the delay");
	is(q1($node, "SELECT ks_status()->>'replayed_generation'"), $before, "$name: before replaying it");
}
# the bound that matters is the delay (30 s from the commit): halted before
# replay could have brought it, whatever the load
cmp_ok(time - $t0, '<', 30, 'both before the delay let replay bring the change');
ok(within($delayed, "SELECT (ks_status()->>'replay_behind_bytes')::numeric > 0 AND (ks_status()->>'replay_behind_ms')::bigint > 1000"),
	'the delayed standby says how far its replay is behind, in bytes and time');
ok(within($standby, "SELECT ks_status()->>'replay_behind_bytes' || ' ' || (ks_status()->>'replay_behind_ms') = '0 0'"),
	'the caught-up standby is not behind');
# a release is no raise: it waits for replay
q1($primary, "SELECT ks_disengage('released', 'ops')");
my $released_at = q1($primary, 'SELECT clock_timestamp()');
for my $node ($delayed, $dcascade)
{
	my $name = $node->name;
	ok(within($node, "SELECT (ks_status()->>'upstream_heard_at')::timestamptz > '$released_at'::timestamptz + interval '100 ms'"),
		"$name: has heard its upstream since the release");
	is(q1($node, 'SELECT ks_mode()'), 'halt_all', "$name: still halted: a release comes only by replay");
}

$dcascade->stop;
$delayed->stop;
$cascade->stop;
$standby->stop;
$primary->stop;
done_testing();
