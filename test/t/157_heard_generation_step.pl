# A standby takes a state heard from its upstream ahead of replay only
# within KS_GENERATION_STEP_MAX (1000) generations of its own, as for an
# outside file (ARCHITECTURE §3, §11): a heard state far ahead would make
# every record replay brings older, so not even a committed release could
# lower the standby until it caught up.  Replay is held on the standby
# (pg_wal_replay_pause()); the primary commits 1000 changes in one
# transaction — the standby hears and halts at once, ahead of replay — then
# 1001 more, ending in emergency: the standby does not take that one, and
# says why in upstream_problem; once replay goes on, it follows.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub within { my ($node, $sql, $secs) = @_; return ks_within($node, $sql, $secs // 60); }

my $primary = ks_node('step_primary', init => { allows_streaming => 1 }, no_extension => 1);
q1($primary, q(
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE ops LOGIN IN ROLE killswitch_admin;
));
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('step_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);	# it hears the primary by primary_conninfo
$standby->start;
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
my $g0 = q1($primary, "SELECT ks_status()->>'generation'");
ok(within($standby, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL"), 'the standby hears its upstream');

q1($standby, 'SELECT pg_wal_replay_pause()');
ok(within($standby, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is held on the standby');

# 1000 changes in one transaction: exactly the step, taken at once.
q1($primary, "SELECT count(ks_engage('halt_all', 'step ' || i, 'ops')) FROM generate_series(1, 1000) i");
my $g1 = q1($primary, "SELECT ks_status()->>'generation'");
is($g1, $g0 + 1000, 'the primary moved 1000 generations');
ok(within($standby, "SELECT ks_mode() = 'halt_all' AND (ks_status()->>'generation')::bigint = $g1"),
	'the standby heard the halt 1000 generations ahead and took it, ahead of replay');
is(q1($standby, "SELECT coalesce((ks_status()->>'replayed_generation')::bigint, -1) < $g1"), 't', 'replay has not brought it');

# 1001 more, the last an emergency: past the step, not taken.
q1($primary, "SELECT count(ks_engage(CASE WHEN i = 1001 THEN 'emergency' ELSE 'halt_all' END::ks_mode, "
	  . "'far ' || i, 'ops')) FROM generate_series(1, 1001) i");
my $g2 = q1($primary, "SELECT ks_status()->>'generation'");
is($g2, $g1 + 1001, 'the primary moved 1001 generations more, to emergency');
ok(within($standby, "SELECT ks_status()->>'upstream_problem' LIKE '%too far ahead%'"),
	'the standby says the upstream\'s state is too far ahead to be taken');
like(q1($standby, "SELECT ks_status()->>'upstream_problem'"), qr/more than 1000 past the state held/,
	'and why');
is(q1($standby, "SELECT ks_mode() || ' ' || (ks_status()->>'generation')"), "halt_all $g1",
	'it keeps the state it held: the far state is not published');
is(q1($standby, "SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');

# Replay goes on: the standby follows the records.
q1($standby, 'SELECT pg_wal_replay_resume()');
ok(within($standby, "SELECT ks_mode() = 'emergency' AND (ks_status()->>'generation')::bigint = $g2", 60),
	'once replay goes on, the standby follows to emergency');
ok(within($standby, "SELECT ks_status()->>'upstream_problem' IS NULL"), 'and hears its upstream again');

$standby->stop;
$primary->stop;
done_testing();
