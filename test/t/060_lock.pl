# The writers' lock (kill_switch_state.lock) held by an outside process.
# A release waits for it before its commit, and every such wait can be
# interrupted: statement_timeout (57014), lock_timeout (55P03),
# pg_cancel_backend (57014) and pg_terminate_backend, shown in
# pg_stat_activity; nothing changes.  An engage waits a bounded time and
# commits without the file (a WARNING, file_problem), in force; the watcher
# writes the file once the lock is free (test/t/170_file_blocks_engage.pl
# has more).  The postmaster gives up after a bounded wait and starts
# fail-closed without writing; the command-line tool's release gives up
# with a message, its engage writes without the lock.  A lock file replaced
# by a symbolic link is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use JSON::PP;
use KsTest;

my $node = ks_node('lock');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $lock = "$dir/kill_switch_state.lock";
my $file = "$dir/kill_switch_state.json";
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";

sub sql { return $node->safe_psql('postgres', shift); }

# What must not change while a writer cannot get the lock.
sub snapshot
{
	return join '|', slurp_file($file),
	  sql("SELECT ks_mode() || ' ' || (ks_status()->>'generation') || ' ' || "
		  . "(SELECT count(*) FROM killswitch.events)");
}

# Is the lock free right now?  (flock -n fails while someone holds it.)
sub lock_free { return system('flock', '-n', $lock, 'true') == 0; }

# An outside process holding the lock, as `flock FILE sleep N` does (one
# process, so that killing it lets the lock go: flock(1)'s child would keep it).
sub hold_lock
{
	my ($seconds) = @_;
	my $h = IPC::Run::start([ $^X, '-e',
		'use Fcntl ":flock"; open my $f, ">>", $ARGV[0] or die $!; flock $f, LOCK_EX or die $!; sleep $ARGV[1]',
		$lock, $seconds ]);
	for (1 .. 300)
	{
		last unless lock_free();
		usleep(50_000);
	}
	ok(!lock_free(), 'an outside process holds the writers\' lock');
	return $h;
}

sub let_go
{
	my ($h) = @_;
	$h->kill_kill;
	$h->finish;
}

# Start a session that releases and so waits for the lock at commit.
sub start_release
{
	my ($reason) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', '\\set VERBOSITY verbose',
		  '-c', "SELECT mode FROM ks_disengage('$reason')" ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($h, \$out, \$err);
}

# The pid of the session waiting on the lock, seen with its wait event.
sub waiting_pid
{
	my ($reason) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' "
			  . "AND query LIKE '%$reason%' AND pid <> pg_backend_pid()", '1'),
		"the waiting change shows wait event Extension ($reason)");
	return sql("SELECT pid FROM pg_stat_activity WHERE query LIKE '%$reason%' "
		  . "AND pid <> pg_backend_pid()");
}

sql("SELECT ks_engage('halt_all', 'to be released')");
my $before = snapshot();
my $log_offset = -s $node->logfile;
my $holder = hold_lock(300);
my ($ret, $out, $err);

# 1. statement_timeout and lock_timeout end the wait at commit.
($ret, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSET statement_timeout = '1s';\nSELECT ks_disengage('timeout');",
	on_error_stop => 0);
like($err, qr/ERROR:  57014: canceling statement due to statement timeout/,
	'statement_timeout ends the wait for the lock (57014)');
like($err, qr/writers' lock/, 'and the detail names the lock');
is(snapshot(), $before, 'nothing changed');

($ret, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSET lock_timeout = '500ms';\nBEGIN;\nSELECT 1 FROM ks_disengage('lock timeout');\nCOMMIT;",
	on_error_stop => 0);
like($err, qr/ERROR:  55P03: canceling statement due to lock timeout/,
	'lock_timeout ends the wait at COMMIT (55P03)');
is(snapshot(), $before, 'nothing changed');

# 2. pg_cancel_backend ends the wait.
my ($h, $hout, $herr) = start_release('to be cancelled');
my $pid = waiting_pid('to be cancelled');
sql("SELECT pg_cancel_backend($pid)");
$h->finish;
like($$herr, qr/ERROR:  57014: canceling statement due to user request/,
	'pg_cancel_backend ends the wait for the lock (57014)');
is(snapshot(), $before, 'nothing changed');

# 3. pg_terminate_backend ends the session.
($h, $hout, $herr) = start_release('to be terminated');
$pid = waiting_pid('to be terminated');
sql("SELECT pg_terminate_backend($pid)");
$h->finish;
like($$herr, qr/terminating connection due to administrator command/,
	'pg_terminate_backend ends the waiting session');
ok($node->poll_query_until('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0'),
	'the session is gone');
is(snapshot(), $before, 'nothing changed');
unlike(slurp_file($node->logfile, $log_offset), qr/could not restore/,
	'no warning about restoring files that were never written');

# 4. The command-line tool's release waits a bounded time, says why, writes nothing.
my ($cout, $cerr) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'disengage', '--reason', 'cli while held' ],
	'>', \$cout, '2>', \$cerr);
is($? >> 8, 1, 'killswitch disengage gives up on a held lock (exit 1)');
like($cerr, qr/waiting for the writers' lock/, 'it said it was waiting');
like($cerr, qr/another writer held it for \d+ s; nothing was written/, 'and why it gave up');
is(snapshot(), $before, 'nothing changed');

# 4b. An engage does not wait for the lock beyond a bound: it commits
#     without the file, in force, and says so.
($ret, $out, $err) = $node->psql('postgres', "SELECT mode FROM ks_engage('emergency', 'lock held')");
is($out, 'emergency', 'an engage commits while an outside process holds the writers\' lock');
like($err, qr/WARNING:  could not write the kill switch state file; the change is in force without it/,
	'with a WARNING');
is(sql('SELECT ks_mode()'), 'emergency', 'and is in force');
like(sql("SELECT ks_status()->>'file_problem'"), qr/could not lock/, 'ks_status() says why the file is behind');

# 5. Once the lock is free, the file catches up, and changes work again.
let_go($holder);
ok($node->poll_query_until('postgres',
		"SELECT pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'mode' = 'EMERGENCY' "
		  . "AND ks_status()->>'file_problem' IS NULL"),
	'the watcher writes the file once the lock is free');
is(sql("SELECT mode FROM ks_engage('emergency', 'lock free again')"), 'emergency', 'with the lock free, an engage commits');
is(sql("SELECT mode FROM ks_disengage('lock free again')"), 'disengaged', 'and a release');

# 6. The postmaster does not wait unbounded: it starts fail-closed.
$node->stop;
$holder = hold_lock(60);
$log_offset = -s $node->logfile;
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'started with the lock held: halt_all');
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'integrity tampered');
like(slurp_file($node->logfile, $log_offset),
	qr/writing the state: could not lock "[^"]*kill_switch_state.lock": another process held it for more than \d+ ms/,
	'the log says the lock could not be taken');
let_go($holder);
sql("SELECT ks_disengage('test reset')");
is(sql('SELECT ks_mode()'), 'disengaged', 'an administrator releases it once the lock is free');

# 7. A lock file replaced by a symbolic link is not followed: a release
#    fails and changes nothing; an engage commits, the file follows later.
sql("SELECT ks_engage('halt_all', 'before the link')");
$before = snapshot();
# renamed over the lock file in one step: the watcher may create the lock
# file again at any moment, so an unlink then a symlink can find it back
symlink "$pgdata/planted_by_agent", "$lock.planted" or die $!;
rename "$lock.planted", $lock or die $!;
($ret, $out, $err) = $node->psql('postgres', "SELECT ks_disengage('symlinked lock')");
like($err, qr/could not write the kill switch state file/, 'a symlinked lock file: a release fails');
like($err, qr/symbolic link/, 'saying why');
ok(!-e "$pgdata/planted_by_agent", 'the link\'s target was not created');
is(snapshot(), $before, 'nothing changed');
($ret, $out, $err) = $node->psql('postgres', "SELECT mode FROM ks_engage('emergency', 'symlinked lock')");
is($out, 'emergency', 'an engage commits all the same');
like($err, qr/WARNING:  could not write the kill switch state file; the change is in force without it/,
	'with a WARNING');
like($err, qr/symbolic link/, 'saying why');
ok(!-e "$pgdata/planted_by_agent", 'the link\'s target was not created');
unlink $lock;
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'file_problem' IS NULL"),
	'with the link gone, the watcher writes the file');
is(decode_json(slurp_file($file))->{mode}, 'EMERGENCY', 'which says emergency');

$node->stop;
done_testing();
