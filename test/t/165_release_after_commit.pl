# Issue 19 items 2 and 3: only a committed release lowers the switch, and
# nothing anyone reads shows the lower mode before the commit is durable
# (ARCHITECTURE §5.4).  A release writes only its private mark before its
# commit; shared memory, the state file and the private copy learn it after.
#
# 1. 50 releases doomed at commit (SERIALIZABLE, a write-skew partner
#    commits first), while a reader polls the state file and runs
#    `killswitch -D status` all along: neither ever sees DISENGAGED.
# 2. A doomed release whose undo would find the writers' lock held, and
# 3. one whose undo would find the disk full: still halted after the abort
#    and after a restart (before this change the undo gave up and the
#    watcher applied the release the server itself had signed).
#
# How it is forced: the releasing session sleeps at pre-commit, after the
# kill switch's pre-commit work and before PostgreSQL's serialization check
# (ks_test.commit_delay_ms, test/hooks/ks_test_hooks.so) — 30 ms in 1, so
# the reader has a window to see what the file says then; 1.5 s in 2 and 3,
# in which the test takes the writers' lock (a process holding flock) or
# fills the disk (test/faults/ks_faults.so, LD_PRELOAD: every file created
# in the state directory fails with ENOSPC while the control file names it).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $scratch = PostgreSQL::Test::Utils::tempdir();
my $fault = "$scratch/fault";
local $ENV{LD_PRELOAD} = "$ENV{KS_SRCDIR}/test/faults/ks_faults.so";
local $ENV{KS_FAULT_FILE} = $fault;

my $node = PostgreSQL::Test::Cluster->new('release_after_commit');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = '$hooks, killswitch'\n");
$node->start;
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_state.json";
sub sql { return $node->safe_psql('postgres', shift); }
sql('CREATE EXTENSION killswitch CASCADE; CREATE TABLE a (x int); CREATE TABLE b (x int)');
sql("SELECT ks_engage('halt_all', 'held through every doomed release', 'tester')");

# A release in a SERIALIZABLE transaction that a write-skew partner dooms:
# the partner commits after the release was asked and before its COMMIT.
sub doomed_release
{
	my ($bg, $n, $delay) = @_;
	$bg->query_safe("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM a; INSERT INTO b VALUES ($n)");
	$bg->query_safe("SELECT 1 FROM ks_disengage('doomed $n', 'tester')");
	sql("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM b; INSERT INTO a VALUES ($n); COMMIT");
	$bg->query_safe("SET LOCAL ks_test.commit_delay_ms = $delay");
}

# 1. The reader: the file every millisecond, the command-line tool's status
#    between; it writes what it saw lower than halt_all.
my $seen = "$scratch/seen";
my $stop = "$scratch/stop";
my $reader = IPC::Run::start([ $^X, '-e', q{
	use JSON::PP;
	my ($file, $cli, $pgdata, $seen, $stop) = @ARGV;
	my ($reads, $statuses) = (0, 0);
	open my $out, '>', $seen or die $!;
	until (-e $stop)
	{
		for (1 .. 20)
		{
			if (open my $fh, '<', $file) { local $/; my $t = <$fh>; close $fh;
				my $s = eval { decode_json($t) };
				print $out "file: $s->{mode}\n" if $s && $s->{mode} ne 'HALT_ALL';
				$reads++; }
			select(undef, undef, undef, 0.001);
		}
		my $st = `$cli -D $pgdata status 2>&1`;
		print $out "status: $1\n" if $st =~ /mode:\s*(\S+)/ && $1 !~ /halt_all/i;
		$statuses++;
	}
	print $out "reads $reads statuses $statuses\n";
	close $out;
	}, $file, $cli, $pgdata, $seen, $stop ]);

my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $failed = 0;
for my $n (1 .. 50)
{
	doomed_release($bg, $n, 30);
	$bg->{stderr} = '';
	$bg->query('COMMIT');
	$failed++ if $bg->{stderr} =~ /could not serialize access/;
	$bg->query('ROLLBACK');
	$bg->{stderr} = '';
}
open my $sf, '>', $stop or die $!;
close $sf;
$reader->finish;
is($failed, 50, 'all 50 releases were doomed at commit (40001)');
my $saw = slurp_file($seen);
note($saw =~ /(reads \d+ statuses \d+)/ ? $1 : 'no count');
like($saw, qr/reads [1-9]\d* statuses [1-9]/, 'the reader read the file and the status throughout');
unlike($saw, qr/^(file|status):/m, 'neither the file nor killswitch -D status ever showed a lower mode');
is(sql('SELECT ks_mode()'), 'halt_all', 'halt_all stays');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason LIKE 'doomed%'"), '0', 'no release recorded');

# Wait until the watcher has looked at the file a few times from now on.
sub watcher_looked
{
	my $t = sql('SELECT clock_timestamp()');
	return $node->poll_query_until('postgres',
		"SELECT (ks_status()->>'watcher_checked_at')::timestamptz > '$t'::timestamptz + interval '500 ms'");
}

# Start the COMMIT of a doomed release in the background: returns when it runs.
sub commit_in_background
{
	my ($bg) = @_;
	$bg->query_until(qr/committing/, "\\echo committing\nCOMMIT;\n\\echo committed\n");
}

# 2. The writers' lock held by an outside process while the abort undoes.
my $lock = "$pgdata/pg_killswitch/kill_switch_state.lock";
doomed_release($bg, 100, 1500);
commit_in_background($bg);
usleep(300_000);
my $holder = IPC::Run::start([ $^X, '-e',
	'use Fcntl ":flock"; open my $f, ">>", $ARGV[0] or die $!; flock $f, LOCK_EX or die $!; sleep $ARGV[1]',
	$lock, 5 ]);
$bg->query_until(qr/committed/, '');
$bg->query('ROLLBACK');
$bg->{stderr} = '';
$holder->finish;
ok(watcher_looked(), 'the watcher looked at the file again after the lock was let go');
is(sql('SELECT ks_mode()'), 'halt_all', 'the writers\' lock held during the abort: still halted');
is(decode_json(slurp_file($file))->{mode}, 'HALT_ALL', 'the file says HALT_ALL');

# 3. The disk full while the abort undoes.
doomed_release($bg, 200, 1500);
commit_in_background($bg);
usleep(300_000);
open my $ff, '>', $fault or die $!;
print $ff "pg_killswitch/";
close $ff;
$bg->query_until(qr/committed/, '');
$bg->query('ROLLBACK');
$bg->{stderr} = '';
unlink $fault;
ok(watcher_looked(), 'the watcher looked at the file again after the disk had room');
is(sql('SELECT ks_mode()'), 'halt_all', 'the disk full during the abort: still halted');
is(decode_json(slurp_file($file))->{mode}, 'HALT_ALL', 'the file says HALT_ALL');
$bg->quit;

$node->restart;
is(sql('SELECT ks_mode()'), 'halt_all', 'after a restart: still halted');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'integrity ok');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason LIKE 'doomed%'"), '0', 'no release ever recorded');

$node->stop;
done_testing();
