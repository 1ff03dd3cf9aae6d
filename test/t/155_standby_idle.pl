# An idle standby's watcher costs what the primary's does (ARCHITECTURE
# §11): on a streaming and a cascading standby, over ten quiet seconds,
# each watcher uses at most 1 % of a core, and runs no transaction — it
# never reports the history look it would run one for — while it keeps
# hearing its upstream; the cascade's long poll on the standby holds no
# snapshot.
use strict;
use warnings;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

# CPU seconds a process has used (user and system), from /proc.
sub cpu_seconds
{
	my ($pid) = @_;
	my $stat = slurp_file("/proc/$pid/stat");
	$stat =~ s/^.*\) //s;		# past the command name, which may hold spaces
	my @f = split ' ', $stat;
	# utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
	return ($f[11] + $f[12]) / POSIX::sysconf(POSIX::_SC_CLK_TCK);
}

my $primary = ks_node('idle_primary', init => { allows_streaming => 1 });
q1($primary, "SELECT ks_engage('halt_noncritical', 'something to follow', 'ops')");
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('idle_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->start;
$standby->backup('bs');
my $cascade = PostgreSQL::Test::Cluster->new('idle_cascade');
ks_init_from_backup($cascade, $standby, 'bs', has_streaming => 1);
$cascade->start;

# a change to follow, then quiet
my $gen = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'then quiet', 'ops')");
my $lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
my %watcher;
for my $node ($primary, $standby, $cascade)
{
	my $name = $node->name;
	ok($node->poll_query_until('postgres', "SELECT ks_status()->>'generation' = '$gen'"), "$name: at the change");
	ok($node->poll_query_until('postgres',
		"SELECT pg_is_in_recovery() = false OR (pg_last_wal_replay_lsn() >= '$lsn' AND ks_status()->>'upstream_problem' IS NULL)"),
		"$name: caught up, hearing its upstream");
	$watcher{$name} = q1($node, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'");
	like($watcher{$name}, qr/^\d+$/, "$name: its watcher runs");
}
# let the watchers settle (their first looks), then measure
sleep 2;
my (%cpu, %looked);
for my $node ($primary, $standby, $cascade)
{
	my $name = $node->name;
	$cpu{$name} = cpu_seconds($watcher{$name});
	$looked{$name} = q1($node, "SELECT query_start FROM pg_stat_activity WHERE pid = $watcher{$name}");
}
my $t0 = time;
sleep 10;
my $elapsed = time - $t0;
for my $node ($primary, $standby, $cascade)
{
	my $name = $node->name;
	my $share = (cpu_seconds($watcher{$name}) - $cpu{$name}) / $elapsed;
	cmp_ok($share, '<=', 0.01, sprintf('%s: the idle watcher used %.2f %% of a core', $name, $share * 100));
	next if $node == $primary;
	is(q1($node, "SELECT query_start FROM pg_stat_activity WHERE pid = $watcher{$name}"), $looked{$name},
		"$name: and ran no transaction");
	# the age is as old as the last answer of a 1 s poll, through a cascade two
	# of them: one look after ten seconds can find a slow answer; one that
	# never comes keeps the age growing and fails here
	ok(ks_within($node, "SELECT (ks_status()->>'upstream_age_ms')::bigint < 3000", 60),
		"$name: while it hears its upstream");
}

# the cascade's long poll on the standby holds no snapshot that replay would wait for
ok($standby->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'killswitch standby watcher'"
	  . " AND query LIKE 'CALL killswitch.await_state%' AND wait_event = 'Extension' AND backend_xmin IS NULL"),
	'the cascade waits on the standby in killswitch.await_state(), holding no snapshot');

$cascade->stop;
$standby->stop;
$primary->stop;
done_testing();
