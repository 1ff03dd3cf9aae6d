# Issue 18, case 2: nothing about the state file can make an engage fail or
# wait more than a short bound (ARCHITECTURE §5.3, §5.7).  Every condition is
# real and held for as long as the test needs, so nothing depends on timing:
#
# - an outside process holds flock on kill_switch_state.lock (any OS user
#   who can write the state directory can): an SQL engage commits at once,
#   with a WARNING, ks_status() says why the file lags, and the watcher
#   writes the file once the lock is free; killswitch -D engage writes
#   without the lock after a bounded wait;
# - the state file left read-only (0400): core's durable_rename() opened the
#   file it replaces for writing and failed, and so did every engage; the
#   file is now replaced without being opened;
# - the lock file read-only (0400): it is opened read-only (flock needs no
#   more), so that its close raises no IN_CLOSE_WRITE in the watched
#   directory — checked with inotify itself.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('fileblocks');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $lock = "$dir/kill_switch_state.lock";
my $file = "$dir/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }
sub file_mode { return decode_json(slurp_file($file))->{mode}; }
sub lock_free { return system('flock', '-n', $lock, 'true') == 0; }

# An outside process holding the writers' lock until killed.
sub hold_lock
{
	my $h = IPC::Run::start([ $^X, '-e',
		'use Fcntl ":flock"; open my $f, "<", $ARGV[0] or die $!; flock $f, LOCK_EX or die $!; sleep 600',
		$lock ]);
	for (1 .. 300)
	{
		last unless lock_free();
		usleep(50_000);
	}
	ok(!lock_free(), 'an outside process holds the writers\' lock');
	return $h;
}

# Run SQL in a session of its own; on main's code this could hang for good,
# so it is bounded (the failure is then the timeout, not a stuck run).
sub sql_bounded
{
	my ($query) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-c', '\\set VERBOSITY verbose', '-c', $query ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
	my $ok = eval { $h->finish; 1 };
	$h->kill_kill unless $ok;
	chomp $out;
	return ($ok ? $? >> 8 : -1, $out, $err);
}

# 1. The lock held: an SQL engage commits at once; the file follows later.
my $holder = hold_lock();
my $events = sql('SELECT count(*) FROM killswitch.events');
my ($rc, $out, $err) = sql_bounded("SELECT mode FROM ks_engage('emergency', 'lock held', 'ops')");
is($rc, 0, 'with the writers\' lock held elsewhere, ks_engage(emergency) returns') or diag($err);
is($out, 'emergency', 'and commits');
like($err, qr/WARNING:  01000: could not write the kill switch state file; the change is in force without it/,
	'a WARNING says the file could not be written');
like($err, qr/could not lock "[^"]*kill_switch_state.lock": another process holds it/, 'naming the lock');
is(sql('SELECT ks_mode()'), 'emergency', 'the engage is in force');
is(sql('SELECT count(*) FROM killswitch.events') - $events, 1, 'and recorded');
like(sql("SELECT ks_status()->>'file_problem'"), qr/kill_switch_state.lock/,
	'ks_status() shows why the state file lags');
isnt(file_mode(), 'EMERGENCY', 'the state file lags while the lock is held');

# the command-line tool: an engage writes without the lock after a short wait
my ($cout, $cerr) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'emergency', '--reason', 'cli while held', '--by', 'ops' ],
	'>', \$cout, '2>', \$cerr, IPC::Run::timeout(120));
is($? >> 8, 0, 'killswitch -D engage with the lock held elsewhere exits 0') or diag($cerr);
like($cerr, qr/writing without the writers' lock/, 'and says it wrote without the lock');
ok($node->poll_query_until('postgres',
	"SELECT count(*) FROM killswitch.events WHERE reason = 'cli while held' AND source = 'cli'", '1'),
	'the watcher applies and records the command\'s engage');

# the lock let go: the watcher writes the file
$holder->kill_kill;
$holder->finish;
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'file_problem' IS NULL"),
	'once the lock is free, the file follows: no file problem');
is(file_mode(), 'EMERGENCY', 'the state file says emergency');
is(decode_json(slurp_file($file))->{generation}, sql("SELECT ks_status()->>'generation'"),
	'with the generation in force');
sql("SELECT ks_disengage('reset', 'admin')");

# 2. The state file read-only (0400): an engage replaces it without opening it.
chmod 0400, $file or die $!;
($rc, $out, $err) = sql_bounded("SELECT mode FROM ks_engage('halt_all', 'read-only file', 'ops')");
is($rc, 0, 'with the state file at mode 0400, ks_engage commits') or diag($err);
unlike($err, qr/WARNING|ERROR/, 'without a warning: the file was replaced');
is(file_mode(), 'HALT_ALL', 'the file says halt_all');
is(sprintf('%04o', (stat $file)[2] & 07777), '0600', 'and is the server\'s again (0600)');
chmod 0400, $file or die $!;
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'emergency', '--reason', 'cli over read-only', '--by', 'ops' ],
	'>', \$cout, '2>', \$cerr, IPC::Run::timeout(120));
is($? >> 8, 0, 'killswitch -D engage replaces a read-only file too') or diag($cerr);
ok($node->poll_query_until('postgres', "SELECT ks_mode() = 'emergency'"), 'and it is applied');
sql("SELECT ks_disengage('reset', 'admin')");

# 3. The lock file read-only (0400), and never opened for writing: no
#    IN_CLOSE_WRITE on it while changes and the watcher's looks take it.
my $inotify = <<'PY';
import ctypes, os, struct, sys, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
if fd < 0 or libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x8) < 0:   # IN_CLOSE_WRITE
    sys.exit("inotify failed")
print("watching", flush=True)
sys.stdin.readline()          # until the test is done
seen = 0
try:
    buf = os.read(fd, 65536)
except BlockingIOError:
    buf = b""
i = 0
while i < len(buf):
    wd, mask, cookie, ln = struct.unpack_from("iIII", buf, i)
    name = buf[i + 16:i + 16 + ln].rstrip(b"\0").decode()
    i += 16 + ln
    seen += name == "kill_switch_state.lock"
print("lock closes after writing: %d" % seen, flush=True)
PY
my ($in, $wout, $werr) = ('', '', '');
my $watch = IPC::Run::start([ $python, '-c', $inotify, $dir ], '<', \$in, '>', \$wout, '2>', \$werr);
$watch->pump until $wout =~ /watching/;
chmod 0400, $lock or die $!;
for my $i (1 .. 3)
{
	($rc, $out, $err) = sql_bounded("SELECT mode FROM ks_engage('halt_all', 'lock read-only $i', 'ops')");
	is($rc, 0, "engage $i with the lock file at mode 0400") or diag($err);
	unlike($err, qr/WARNING/, 'the file is written: the lock was taken');
	sql("SELECT ks_disengage('reset $i', 'admin')");
}
is(file_mode(), 'DISENGAGED', 'the state file follows every change');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'halt_all', '--reason', 'cli, lock read-only' ],
	'>', \$cout, '2>', \$cerr, IPC::Run::timeout(120));
unlike($cerr, qr/without the writers' lock/, 'the command takes the read-only lock file too');
ok($node->poll_query_until('postgres', "SELECT ks_mode() = 'halt_all'"), 'and its engage is applied');
$in = "done\n";
$watch->finish;
like($wout, qr/lock closes after writing: 0$/, 'the lock file is never closed after writing (no IN_CLOSE_WRITE)');

$node->stop;
done_testing();
