# Every CLI write is its own event with the generation the CLI printed, and
# a write made offline while the server is down keeps every field when it
# is applied at start.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('cli_events');
my $pgdata = $node->data_dir;

sub sql { return $node->safe_psql('postgres', shift); }

sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, '-D', $pgdata, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# 1. Writes one after the other: every one is an event with the generation
#    it printed.  Each waits for the one before to be recorded: the CLI
#    itself waits for the server's judgement of the previous write only so
#    long (KS_JUDGED_WAIT_RAISE_MS, 1 s) before it writes anyway, and a
#    watcher on a loaded machine may take longer — then two writes may be
#    recorded as one event, by design, and the CLI says so.
my @printed;
my @modes = ('halt_noncritical', 'halt_all', 'emergency', 'emergency', 'emergency');
for my $i (0 .. 5)
{
	my ($rc, $out, $err) = $i == 5
	  ? ks('disengage', '--reason', "quick $i", '--by', 'ops')
	  : ks('engage', $modes[$i], '--reason', "quick $i", '--by', 'ops');
	is($rc, 0, "CLI write $i") or diag($err);
	unlike($err, qr/writing anyway/, "CLI write $i did not have to give up waiting");
	my ($gen) = $out =~ /generation (\d+)/;
	push @printed, "quick $i $gen";
	$node->poll_query_until('postgres',
		"SELECT count(*) = $i + 1 FROM killswitch.events WHERE reason LIKE 'quick %'")
	  or diag("CLI write $i was not recorded");
}
$node->poll_query_until('postgres',
	"SELECT count(*) = 6 FROM killswitch.events WHERE reason LIKE 'quick %'")
  or diag('not every CLI write was recorded');
is(sql("SELECT string_agg(reason || ' ' || generation, ',' ORDER BY id) FROM killswitch.events WHERE reason LIKE 'quick %'"),
	join(',', @printed), 'six quick CLI writes: six events, each with the printed generation, in order');
is(sql("SELECT count(DISTINCT source) || ' ' || min(source) FROM killswitch.events WHERE reason LIKE 'quick %'"),
	'1 cli', 'all recorded with source cli');

# 2. Offline while the server is down: every field survives the start.
$node->stop;
my ($rc, $out, $err) = ks('engage', 'halt_all', '--reason', 'offline maintenance',
	'--by', 'night-shift', '--affected', '7');
is($rc, 0, 'offline engage with --affected 7') or diag($err);
my ($gen) = $out =~ /generation (\d+)/;
$node->start;
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'offline maintenance'")
  or diag('the offline write was not recorded');
is(sql("SELECT mode || ' ' || affected_tasks || ' ' || triggered_by || ' ' || source || ' ' || generation "
	  . "FROM killswitch.events WHERE reason = 'offline maintenance'"),
	"halt_all 7 night-shift cli $gen",
	'the event keeps mode, affected_tasks, triggered_by, source and the printed generation');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
