# A standby that follows a change through the replicated history — its
# record never replayed — says where in the WAL that state came from
# (ARCHITECTURE §11): state_lsn is the replay position at which the watcher
# took it, on a streaming and a cascading standby.  Both are held at the
# release's commit by a recovery target (recovery_target_xid, paused), so
# the release's record lies beyond replay for good, and the release is a
# lower mode, which the upstream cannot bring either.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

my $primary = ks_node('hist_primary', init => { allows_streaming => 1 });
q1($primary, "SELECT ks_engage('halt_all', 'before the backup', 'ops')");
$primary->backup('b');
my $gen = q1($primary, "SELECT generation FROM ks_disengage('released', 'ops')");
my $xid = q1($primary, "SELECT xid FROM killswitch.events WHERE generation = $gen");

my $target = "recovery_target_xid = '$xid'\nrecovery_target_action = 'pause'\n";
my $standby = PostgreSQL::Test::Cluster->new('hist_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', $target);
$standby->start;
my $cascade = PostgreSQL::Test::Cluster->new('hist_cascade');
ks_init_from_backup($cascade, $primary, 'b', has_streaming => 1);
$cascade->append_conf('postgresql.conf', $target . "primary_conninfo = '" . $standby->connstr . "'\n");
$cascade->start;

for my $node ($standby, $cascade)
{
	my $name = $node->name;
	ok($node->poll_query_until('postgres', "SELECT pg_get_wal_replay_pause_state() = 'paused'"),
		"$name: replay is paused at the release's commit");
	ok($node->poll_query_until('postgres', "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$gen'"),
		"$name: follows the release");
	# the watcher publishes the state, then logs it (standby.c): wait for the line
	ok($node->wait_for_log(qr/the standby follows the replicated kill switch history: mode disengaged \(generation/),
		"$name: through the history");
	is(q1($node, "SELECT ks_status()->>'state_lsn' = pg_last_wal_replay_lsn()::text"), 't',
		"$name: state_lsn is the replay position where it took the state");
	is(q1($node, "SELECT ks_status()->>'replayed_generation'"), $gen, "$name: replayed_generation says so too");
}

$cascade->stop;
$standby->stop;
$primary->stop;
done_testing();
