# Crash safety (ARCHITECTURE §2, §5): after a crash at any point of a change, the
# state after restart is the last committed one, and the file, shared memory
# and the newest event carry the same generation.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes;
use KsTest;

my $node = ks_node('crash', conf => "restart_after_crash = on\n");

my $dir = $node->data_dir . '/pg_killswitch';
my $file = "$dir/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }

# The three copies agree: file, shared memory, newest event (once the
# watcher has recorded anything pending).
sub copies_agree
{
	my ($what) = @_;
	$node->poll_query_until('postgres',
		"SELECT NOT (ks_status()->>'unrecorded_change')::boolean")
	  or diag('an unrecorded change stayed unrecorded');
	my $shm = sql("SELECT ks_status()->>'generation'");
	my $event = sql('SELECT max(generation) FROM killswitch.events');
	my $on_disk = decode_json(slurp_file($file))->{generation};
	ok($shm == $event && $event == $on_disk, "$what: file, shared memory and history agree")
	  or diag("shared memory $shm, history $event, file $on_disk");
	is(sql('SELECT ok FROM ks_verify_events()'), 't', "$what: the history verifies");
}

# 1. Twenty cycles: a committed change, then kill -9 of the postmaster.
my @modes = ('halt_noncritical', 'halt_all', 'emergency');
for my $i (1 .. 20)
{
	my $want;
	if ($i % 4 == 0)
	{
		sql("SELECT ks_disengage('cycle $i', 'tester')");
		$want = 'disengaged';
	}
	else
	{
		$want = $modes[$i % 3];
		# lowering needs the release right: the test runs as superuser
		sql("SELECT ks_engage('$want', 'cycle $i', 'tester')");
	}
	ks_kill9_and_start($node);
	is(sql('SELECT ks_mode()'), $want, "cycle $i: the last committed mode survives kill -9");
}
copies_agree('after 20 kill -9 cycles');

# 2. A backend killed in the middle of a change, before its commit: the
#    change never happened, the server's crash restart reloads the state.
sql("SELECT ks_engage('halt_noncritical', 'committed before the crash')");
my $before = sql('SELECT count(*) FROM killswitch.events');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_safe('BEGIN');
$bg->query_safe("SELECT ks_engage('emergency', 'in flight')");
my $offset = -s $node->logfile;
kill 'KILL', $pid;
eval { $bg->quit; };
# the crash restart, not a connection made before it
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
ks_wait_ready($node) or die 'server did not come back after the crash';
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'a change killed before commit never happened');
is(sql('SELECT count(*) FROM killswitch.events'), $before, 'and left no event');
copies_agree('after a backend was killed mid-change');

# 3. Both the state file and the server's private copy one generation ahead
#    of the history, with no change marked in flight (a crash between the
#    pre-commit write and the commit leaves the mark: 051_crash_commit.pl):
#    the files hold a change the history lacks.  Simulated with the server down.
$node->stop('immediate');
my $cur = decode_json(slurp_file($file));
delete $cur->{signature};
delete $cur->{event_id};
my %ahead = (%$cur, mode => 'HALT_ALL', previous_mode => $cur->{mode},
	generation => $cur->{generation} + 1, reason => 'in flight at the crash', source => 'sql');
for my $f ($file, "$dir/last_applied.json")
{
	open my $fh, '>', $f or die $!;
	print $fh ks_signed_text(ks_secret($node), %ahead);
	close $fh;
}
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'the file wins: the change it holds is in force');
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM killswitch.events WHERE reason LIKE 'recorded at start:%in flight at the crash%'")
  or diag('the missing change was not recorded');
is(sql("SELECT generation FROM killswitch.events ORDER BY id DESC LIMIT 1"), $ahead{generation},
	'the change the history lacked is recorded with its own generation');
copies_agree('after reconciling the history');

# 4. Both files put back from an older copy while the server was down: the
#    history is ahead of the state — a replay, so the halt is assumed.
my $old_state = slurp_file($file);
my $old_copy = slurp_file("$dir/last_applied.json");
sql("SELECT ks_disengage('newer than the copy', 'tester')");
$node->stop;
for ([$file, $old_state], ["$dir/last_applied.json", $old_copy])
{
	open my $fh, '>', $_->[0] or die $!;
	print $fh $_->[1];
	close $fh;
}
$node->start;
$node->poll_query_until('postgres', "SELECT ks_status()->>'integrity'", 'tampered')
  or diag('the replay was not detected');
cmp_ok(sql("SELECT ks_mode() >= 'halt_all'"), 'eq', 't',
	'a history newer than both state files is a replay: at least halt_all');
copies_agree('after a replay of both files');

$node->stop;
done_testing();
