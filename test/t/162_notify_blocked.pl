# Issue 18 case 3: NOTIFY cannot make an engage fail or wait (ARCHITECTURE
# §5.6).  The engage queues no notification in its own transaction; the
# watcher announces it just after the commit, in a transaction of its own,
# and a queue that cannot take it costs a WARNING, never the change.
#
# How it is forced, fast and with PostgreSQL's own NOTIFY: a notification's
# commit holds the queue's lock from PreCommit_Notify until its commit
# record is confirmed, and this one waits for a synchronous standby that
# does not exist — so every other transaction that notifies waits at
# PreCommit_Notify behind it (with lock_timeout, it fails there: the same
# point where a full queue fails it, "too many notifications in the NOTIFY
# queue").  Before this change the engage queued its NOTIFY in its own
# transaction and hung, or failed with lock_timeout, and the mode did not
# move.  A real full queue (8 GB of notifications) is filled by
# `make test-notify-full` (test/long/notify_queue_full.pl), kept out of the
# default suite for its time and disk.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my $node = ks_node('notify_blocked', conf => "wal_level = replica\nmax_wal_senders = 2\n");
sub sql { return $node->safe_psql('postgres', shift); }
sql('CREATE TABLE work (x int)');

$node->append_conf('postgresql.conf', "synchronous_standby_names = 'no_such_standby'\n");
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW synchronous_standby_names', 'no_such_standby'),
	'a synchronous standby is named, and it does not exist');

# A listener, to see what is announced once the queue is free again.
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN killswitch');

# A session whose notification holds the queue's lock, waiting for the standby.
my ($nout, $nerr) = ('', '');
my $holder = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  "SET synchronous_commit = on; BEGIN; INSERT INTO work VALUES (1); "
	  . "SELECT pg_notify('elsewhere', 'holds the queue lock'); COMMIT;" ],
	'<', \undef, '>', \$nout, '2>', \$nerr);
ok($node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'", '1'),
	'a notifying transaction holds the queue\'s lock while it waits for the standby');

my $log_at = -s $node->logfile;
my ($out, $err, $timed_out) = ('', '');
$node->psql('postgres', "SET lock_timeout = '2s'; SELECT mode FROM ks_engage('halt_all', 'queue blocked', 'tester')",
	stdout => \$out, stderr => \$err, timeout => 20, timed_out => \$timed_out);
ok(!$timed_out, 'ks_engage returns');
is($out, 'halt_all', 'and succeeds') or diag($err);
unlike($err, qr/ERROR/, 'no error from the queue');
is(sql('SELECT ks_mode()'), 'halt_all', 'every session sees halt_all');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'queue blocked'"), '1', 'the event is recorded');
ok($node->wait_for_log(qr/WARNING:  could not announce kill switch changes: canceling statement due to lock timeout/, $log_at),
	'the watcher could not notify: a WARNING, and the notification is dropped');

# An emergency through the CLI and the watcher: the same.
IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-D', $node->data_dir, 'engage', 'emergency',
	'--reason', 'CLI, queue blocked', '--by', 'ops' ], '>', \my $cout, '2>', \my $cerr);
ok($node->poll_query_until('postgres',
		"SELECT count(*) FROM killswitch.events WHERE reason = 'CLI, queue blocked'", '1'),
	'an outside emergency is applied and recorded with the queue blocked');
is(sql('SELECT ks_mode()'), 'emergency', 'and in force');

# The queue free again: the next change is announced.
sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
$holder->finish;
$node->append_conf('postgresql.conf', "synchronous_standby_names = ''\n");
$node->reload;
sql("SELECT ks_engage('emergency', 'queue free again', 'tester')");
my $seen = '';
for (1 .. 600)
{
	my ($o) = $listener->query('SELECT 1');
	$seen .= $o;
	last if $seen =~ /queue free again/;
	select(undef, undef, undef, 0.05);
}
like($seen, qr/"reason": "queue free again"/, 'with the queue free, changes are announced again');
unlike($seen, qr/"reason": "queue blocked"/, 'the dropped notification is not sent late');
$listener->quit;

$node->stop;
done_testing();
