# Issue 18 case 3 at full size (make test-notify-full; not in the default
# suite: it writes the whole NOTIFY queue, 8 GB of SLRU pages, and takes
# minutes).  A listener sits idle in a transaction, so the queue's tail
# cannot move; sessions send distinct 7,900-byte notifications until
# PostgreSQL refuses with "too many notifications in the NOTIFY queue".
# Then an engage commits and is in force (before the change it failed with
# that error), an outside emergency too; the watcher drops their
# notifications with a WARNING; once the listener lets go, changes are
# announced again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my $node = ks_node('notify_full', conf => "max_wal_size = 1GB\n");
sub sql { return $node->safe_psql('postgres', shift); }

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN fill; BEGIN; SELECT 1 AS listening');

# Fill: batches of distinct payloads, each batch its own transaction.
my ($full, $batches) = (0, 0);
for my $batch (1 .. 100_000)
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT count(pg_notify('fill', lpad(($batch * 100000 + i)::text, 7900, 'x'))) "
		  . 'FROM generate_series(1, 20000) i');
	$batches++;
	if ($err =~ /too many notifications in the NOTIFY queue/)
	{
		$full = 1;
		last;
	}
	die $err if $ret != 0;
}
ok($full, "the queue is full after $batches batches");
note(sql('SELECT pg_notification_queue_usage()'));

my $log_at = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('postgres', "SELECT mode FROM ks_engage('halt_all', 'queue full', 'tester')");
is($ret, 0, 'an engage commits with the NOTIFY queue full') or diag($err);
is(sql('SELECT ks_mode()'), 'halt_all', 'and is in force');
ok($node->wait_for_log(qr/could not announce kill switch changes: too many notifications in the NOTIFY queue/, $log_at),
	'the watcher dropped its notification with a WARNING');
IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-d', $node->connstr('postgres'), 'engage', 'emergency',
	'--reason', 'CLI, queue full', '--by', 'ops' ], '>', \my $cout, '2>', \my $cerr);
is(sql('SELECT ks_mode()'), 'emergency', 'killswitch -d engages with the queue full') or diag($cerr);

# the listener would have 8 GB to read: it goes (its place in the queue with it)
sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN fill%'");
$listener->{run}->kill_kill;
my $bg = $node->background_psql('postgres');
$bg->query_safe('LISTEN killswitch');
sql("SELECT ks_engage('emergency', 'queue free', 'tester')");
my $seen = '';
for (1 .. 100)
{
	my ($o) = $bg->query('SELECT 1');
	$seen .= $o;
	last if $seen =~ /queue free/;
	select(undef, undef, undef, 0.05);
}
like($seen, qr/"reason": "queue free"/, 'changes are announced again');
$bg->quit;
$node->stop;
done_testing();
