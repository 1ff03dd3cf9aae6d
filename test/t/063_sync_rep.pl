# Synchronous replication with the synchronous standby down: an engage
# takes effect locally at once (its transaction commits with
# synchronous_commit = local); a release waits for the standby as usual,
# and cancelling that wait leaves it committed locally, as PostgreSQL warns.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

# sync rep needs WAL senders (the test default is wal_level minimal)
my $node = ks_node('syncrep', conf => "wal_level = replica\nmax_wal_senders = 2\n");

sub sql { return $node->safe_psql('postgres', shift); }

sql('CREATE TABLE work(x int)');
$node->append_conf('postgresql.conf', "synchronous_standby_names = 'no_such_standby'\n");
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW synchronous_standby_names', 'no_such_standby'),
	'a synchronous standby is named, and it does not exist');

# A table write waits for the missing standby: the setting is in force.
my ($ret, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '1s'; SET synchronous_commit = on; INSERT INTO work VALUES (1)",
	timeout => 5, timed_out => \my $timed_out);
ok($timed_out, 'an ordinary commit waits for the missing synchronous standby');
sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");

# 1. An engage returns, and every session sees it at once.
($ret, $out, $err) = $node->psql('postgres',
	"SELECT mode FROM ks_engage('halt_all', 'standby down', 'tester')",
	timeout => 60, timed_out => \$timed_out);
ok(!$timed_out, 'ks_engage returns with the synchronous standby down');
is($out, 'halt_all', 'and reports the new mode');
is(sql('SELECT ks_mode()'), 'halt_all', 'another session sees halt_all');
is(sql('SHOW synchronous_commit'), 'on', 'the session\'s own synchronous_commit is untouched');

# In an explicit transaction, with other work: the same, one commit.
($ret, $out, $err) = $node->psql('postgres',
	"BEGIN; INSERT INTO work VALUES (2); SELECT mode FROM ks_engage('halt_all', 'still down'); "
	  . "COMMIT; SHOW synchronous_commit;",
	timeout => 60, timed_out => \$timed_out);
ok(!$timed_out, 'a transaction that engages commits with the standby down');
is(sql("SELECT reason FROM killswitch.events ORDER BY id DESC LIMIT 1"), 'still down', 'its engage is in force');
is(sql('SELECT count(*) FROM work WHERE x = 2'), '1', 'its other work committed with it');
like($out, qr/^on$/m, 'synchronous_commit is back to on after that transaction');

# 2. A release waits for the standby.
my ($dout, $derr) = ('', '');
my $h = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  "SELECT mode FROM ks_disengage('release while standby down')" ],
	'<', \undef, '>', \$dout, '2>', \$derr, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
ok( $node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
		  . "AND query LIKE '%ks_disengage%'", '1'),
	'ks_disengage waits for the synchronous standby');
is(sql('SELECT ks_mode()'), 'halt_all', 'meanwhile the mode stays halt_all');

# Cancelling the wait: PostgreSQL has committed locally; the release is in
# force here (and not yet on the missing standby).
sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
	  . "AND query LIKE '%ks_disengage%'");
$h->finish;
like($derr, qr/canceling wait for synchronous replication due to user request/,
	'cancelling the release\'s wait warns that it committed locally');
is(sql('SELECT ks_mode()'), 'disengaged', 'the release is in force locally');
is(sql("SELECT mode FROM killswitch.events ORDER BY id DESC LIMIT 1"), 'disengaged',
	'and recorded');

# 3. An emergency from outside: the watcher applies and records it, and
# its own transactions (the event, the snapshot) commit locally, so it
# never holds the lock that orders changes while it waits for the standby.
my ($cout, $cerr) = ('', '');
IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-D', $node->data_dir, 'engage',
	'emergency', '--reason', 'fire, standby down', '--by', 'ops' ], '>', \$cout, '2>', \$cerr);
ok( $node->poll_query_until('postgres',
		"SELECT count(*) FROM killswitch.events WHERE reason = 'fire, standby down' AND source = 'cli'", '1'),
	'the watcher records an outside emergency with the standby down');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) FROM killswitch.snapshots", '1'),
	'and takes its snapshot');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT mode FROM ks_engage('emergency', 'again, standby down', 'tester')",
	timeout => 60, timed_out => \$timed_out);
ok(!$timed_out, 'an SQL engage after it is not held behind the watcher');
is(sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"), '0',
	'nothing of the kill switch waits for the missing standby');

$node->append_conf('postgresql.conf', "synchronous_standby_names = ''\n");
$node->reload;
$node->stop;
done_testing();
