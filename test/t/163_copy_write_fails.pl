# Issue 18 case 4: one failed write of the private copy does not block
# later changes.  The compare-and-swap compares the state file's bytes with
# what the server itself last put there (KsShared.file_hash, persist.c), not
# with the private copy: a copy left behind by a failed write no longer
# makes the server's own file look like an unseen outside change (40001 for
# every later change until a restart).  The watcher writes the copy from
# the change's mark.  Forced: a directory squatting on the temporary name
# of the copy that the changing backend (known pid) writes at commit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('copy_fails');
my $dir = $node->data_dir . '/pg_killswitch';
sub sql { return $node->safe_psql('postgres', shift); }

my $bg = $node->background_psql('postgres');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
mkdir "$dir/last_applied.json.tmp.$pid" or die $!;
my $log_at = -s $node->logfile;
$bg->query_safe("SELECT ks_engage('halt_all', 'copy write fails', 'tester')");
ok($node->wait_for_log(qr/could not update the private copy of the kill switch state after a commit/, $log_at),
	'the copy could not be written at commit');
is(sql('SELECT ks_mode()'), 'halt_all', 'the engage is in force');

# Later changes from other sessions are not refused.
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT mode FROM ks_engage('emergency', 'the next engage', 'tester')");
is($ret, 0, 'the next engage commits') or diag($err);
unlike($err, qr/40001|changed outside the database/, 'no serialization failure');
($ret, $out, $err) = $node->psql('postgres', "SELECT mode FROM ks_disengage('a release after it', 'tester')");
is($ret, 0, 'a release commits too') or diag($err);
is(sql('SELECT ks_mode()'), 'disengaged', 'and is in force');
# the failing session itself, again
rmdir "$dir/last_applied.json.tmp.$pid";
$bg->query_safe("SELECT ks_engage('halt_noncritical', 'from the same session', 'tester')");
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the session whose write failed engages again');
$bg->quit;

# The copy catches up; a restart starts where the history is.
ok($node->poll_query_until('postgres',
		"SELECT (pg_read_file('pg_killswitch/last_applied.json')::jsonb->>'generation')::bigint = "
		  . "(SELECT max(generation) FROM killswitch.events) AND "
		  . "(SELECT count(*) FROM pg_ls_dir('pg_killswitch/in_flight')) = 0"),
	'the private copy holds the newest change, no mark is left');
$node->restart;
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'after a restart: the newest committed mode');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'integrity ok');

$node->stop;
done_testing();
