# Failover keeps the halt, without false alarms (ARCHITECTURE §11): a
# promoted standby has the mode of the newest replicated change, integrity
# ok, no tamper event, a history that verifies, its watcher, and can be
# released; its cascading standby and the old primary, re-attached as a
# standby, follow it.  A point-in-time recovery starts in the mode the
# history has at the target — also when the target is a change's commit and
# the record that announces it lies beyond.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

my $primary = ks_node('fo_primary', init => { allows_streaming => 1, has_archiving => 1 }, no_extension => 1);
q1($primary, q(
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE ops LOGIN IN ROLE killswitch_admin;
));
q1($primary, "SELECT ks_engage('halt_all', 'before the backup', 'ops')");
$primary->backup('b');

# ---- point-in-time recovery: the mode the history has at the target ----
my $gen_release = q1($primary, "SELECT generation FROM ks_disengage('released', 'ops')");
my $xid_release = q1($primary, "SELECT xid FROM killswitch.events WHERE generation = $gen_release");
my $lsn_released = q1($primary, 'SELECT pg_current_wal_lsn()');
q1($primary, "SELECT ks_engage('emergency', 'later', 'ops')");
my $lsn_emergency = q1($primary, 'SELECT pg_current_wal_lsn()');
q1($primary, 'SELECT pg_switch_wal()');
q1($primary, "SELECT ks_disengage('all clear', 'ops')");
# the file the switch completed (not the one the current position is in:
# autovacuum or a standby snapshot may have written into the next one since)
my $last_wal = q1($primary, 'SELECT pg_walfile_name(pg_switch_wal())');
ok($primary->poll_query_until('postgres',
	"SELECT last_archived_wal IS NOT NULL AND failed_count = 0 FROM pg_stat_archiver"),
	'WAL archived');
ok($primary->poll_query_until('postgres',
	"SELECT last_archived_wal >= '$last_wal' FROM pg_stat_archiver"),
	'all WAL archived');

my @targets = (
	[ 'the release commit (its record not replayed)', "recovery_target_xid = '$xid_release'", 'disengaged' ],
	[ 'after the release', "recovery_target_lsn = '$lsn_released'", 'disengaged' ],
	[ 'after the emergency', "recovery_target_lsn = '$lsn_emergency'", 'emergency' ]);
my $n = 0;
for my $t (@targets)
{
	my ($what, $conf, $mode) = @$t;
	my $node = PostgreSQL::Test::Cluster->new('fo_pitr' . ++$n);
	ks_init_from_backup($node, $primary, 'b', has_restoring => 1);
	# archive_mode off: a promoted copy must not put its timeline into the primary's archive
	$node->append_conf('postgresql.conf', "$conf\nrecovery_target_action = 'promote'\narchive_mode = off\n");
	$node->start;
	ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), "PITR to $what: promoted");
	ok($node->poll_query_until('postgres', "SELECT ks_mode() = '$mode'"), "PITR to $what: $mode");
	is(q1($node, "SELECT ks_status()->>'integrity' || ' ' || (SELECT count(*) FROM killswitch.events WHERE source = 'tamper') || ' ' || (SELECT ok FROM ks_verify_events())"),
		'ok 0 true', "PITR to $what: integrity ok, no tamper event, the history verifies");
	$node->stop;
}
# before the release: the state the backup was made in, replay decides the rest
{
	my $node = PostgreSQL::Test::Cluster->new('fo_pitr_before');
	ks_init_from_backup($node, $primary, 'b', has_restoring => 1);
	$node->append_conf('postgresql.conf',
		"recovery_target = 'immediate'\nrecovery_target_action = 'promote'\narchive_mode = off\n");
	$node->start;
	ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'PITR to the backup: promoted');
	is(q1($node, 'SELECT ks_mode()'), 'halt_all', 'PITR to before the release: halt_all');
	is(q1($node, "SELECT ks_status()->>'integrity'"), 'ok', 'integrity ok');
	$node->stop;
}

# ---- promotion ----
q1($primary, "SELECT ks_engage('halt_all', 'before the failover', 'ops')");
$primary->backup('b2');
my $standby = PostgreSQL::Test::Cluster->new('fo_standby');
ks_init_from_backup($standby, $primary, 'b2', has_streaming => 1);
$standby->start;
$standby->backup('b3');
my $cascade = PostgreSQL::Test::Cluster->new('fo_cascade');
ks_init_from_backup($cascade, $standby, 'b3', has_streaming => 1);
$cascade->start;
q1($primary, "SELECT ks_engage('halt_all', 'the newest change', 'ops')");
my $gen = q1($primary, "SELECT ks_status()->>'generation'");
ok($cascade->poll_query_until('postgres', "SELECT ks_status()->>'generation' = '$gen'"),
	'the cascade has the newest change');

$primary->stop;
$standby->promote;
ok($standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'promoted');
ok($standby->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'"),
	'the watcher runs on the new primary');
ok($standby->poll_query_until('postgres', "SELECT ks_status()->>'role' = 'primary'"), 'role primary');
is(q1($standby, "SELECT ks_mode() || ' ' || (ks_status()->>'generation') || ' ' || (ks_status()->>'integrity')"),
	"halt_all $gen ok", 'the new primary: the newest replicated change, integrity ok');
is(q1($standby, "SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), '0', 'no tamper event');
is(q1($standby, 'SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');
ok(!$standby->log_contains('replay: the history'), 'no replay verdict in the log');

my $rel = q1($standby, "SET ROLE ops; SELECT generation FROM ks_disengage('released after failover', 'ops')");
is(q1($standby, 'SELECT ks_mode()'), 'disengaged', 'an admin releases on the new primary');
ok($cascade->poll_query_until('postgres', "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$rel'"),
	'the cascading standby follows the new primary');

# the old primary re-attached as a standby follows the new one
$primary->enable_streaming($standby);
$primary->start;
ok($primary->poll_query_until('postgres', "SELECT ks_mode() = 'disengaged'"),
	'the old primary, re-attached, follows the release');
q1($standby, "SELECT ks_engage('emergency', 'after the rejoin', 'ops')");
ok($primary->poll_query_until('postgres', "SELECT ks_mode() = 'emergency'"),
	'and the next change');
is(q1($primary, "SELECT ks_status()->>'role' || ' ' || (ks_status()->>'integrity')"), 'standby ok',
	'as a standby with integrity ok');

$primary->stop;
$cascade->stop;
$standby->stop;
done_testing();
