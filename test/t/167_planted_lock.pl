# The review's finding 1: an agent with write access to a shared
# killswitch.state_dir (absolute, group-writable, as the README's group
# setup gives agents) unlinks the writers' lock file
# kill_switch_state.lock, creates its own (0666) and holds flock on it.
# Every wait for that lock is bounded, and nothing that must go on waits on
# it (ARCHITECTURE §5.7, §11):
#
# 1. an SQL engage to emergency commits and is in force at once, the file
#    marked behind and written by the watcher once the lock is free;
# 2. the watcher applying an outside release (it must check the file
#    under the lock) does not wait for the lock while it holds the lock that
#    orders changes: it fails the look and applies the release at a later
#    one, once the lock is free;
# 3. an SQL release gives up after a bounded wait (10 s) with an error,
#    nothing changed, even without statement_timeout;
# 4. a standby whose shared state directory holds the planted lock (and
#    whose state file the agent touched, so that the watcher looks at it):
#    its watcher hears the primary's emergency ahead of held replay and ends
#    the agent that holds replay back (the review's check 7);
# 5. its redo waits for the lock at most KS_LOCK_REDO_WAIT_MS per record,
#    and not at all once the files are behind: every redo line of the log
#    says how long it waited and the bound it asked for;
# 6. once the agent lets go, the standby's files catch up.
#
# Nothing depends on timing: the lock is held for as long as each check
# needs.  Before the fix: 1 held; 2 the watcher waited holding the ordering
# lock for as long as the lock was held; 3 waited until cancelled; 4 the
# standby's watcher hung in its put-back; 5 redo waited 2 s per record.
use strict;
use warnings;
use Fcntl qw(:flock);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time usleep);
use KsTest;

sub within { return ks_within(@_); }

sub file_state { my ($f) = @_; return eval { decode_json(slurp_file($f)) } // {}; }

my $shared = PostgreSQL::Test::Utils::tempdir;
chmod 0770, $shared;
my $node = ks_node('planted', init => { allows_streaming => 1 },
	conf => "killswitch.state_dir = '$shared'\n");
sub sql { return $node->safe_psql('postgres', shift); }
my $watcher = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'";
my $events = 'SELECT count(*) FROM killswitch.events';

# ---------------------------------------------------------------------------
# 1. An SQL engage with the planted lock held.
{
	my $fh = ks_plant_lock($shared);
	my $n = sql($events);
	my ($out, $err) = ('', '');
	my $rc = IPC::Run::run([ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c',
		"SELECT mode FROM ks_engage('emergency', 'planted 1', 'tester')" ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	ok($rc, 'with a planted lock held, ks_engage(emergency) returns') or diag($err);
	like($out, qr/^emergency$/m, 'and commits');
	is(sql('SELECT ks_mode()'), 'emergency', 'the engage is in force');
	is(sql($events) - $n, 1, 'and recorded');
	like(sql("SELECT ks_status()->>'file_problem'"), qr/kill_switch_state.lock/,
		'ks_status() says the file is behind, naming the lock');
	flock($fh, LOCK_UN);
	close $fh;
	ok(within($node, "SELECT ks_status()->>'file_problem' IS NULL", 30),
		'once the agent lets go, the watcher writes the file');
	is(file_state("$shared/kill_switch_state.json")->{mode}, 'EMERGENCY', 'the file says emergency');
}

# ---------------------------------------------------------------------------
# 2. The watcher applying an outside release, with the planted lock held.
{
	my $secret = ks_secret($node);
	my $release_key = ks_release_key($node);
	my $held = file_state($node->data_dir . '/pg_killswitch/last_applied.json')->{signature};
	my $fh = ks_plant_lock($shared);
	my $file = "$shared/kill_switch_state.json";
	open my $out, '>', "$file.new" or die $!;
	print $out ks_release_signed_text($secret, $release_key, mode => 'DISENGAGED',
		engaged_at => '2030-01-01T00:00:00.000000+00:00', reason => 'planted 2',
		triggered_by => 'admin tool', replaces => $held);
	close $out;
	rename "$file.new", $file or die $!;
	# the watcher defers a look while another writer holds the lock (250 ms), then looks
	sleep 2;
	my $wpid = sql($watcher);
	my $held_samples = 0;
	for (1 .. 10)
	{
		$held_samples += sql("SELECT count(*) > 0 FROM pg_locks WHERE pid = $wpid "
			  . "AND relation = 'killswitch.events'::regclass AND granted") eq 't';
		usleep(100_000);
	}
	cmp_ok($held_samples, '<=', 3,
		"the watcher does not hold the ordering lock while the planted lock is held (held in $held_samples of 10 samples)");
	is(sql('SELECT ks_mode()'), 'emergency', 'the release is not applied while its check cannot be made');
	flock($fh, LOCK_UN);
	close $fh;
	ok(within($node, "SELECT ks_mode() = 'disengaged'", 30),
		'once the agent lets go, the watcher applies the outside release');
}

# ---------------------------------------------------------------------------
# 3. An SQL release with the planted lock held, no statement_timeout.
{
	sql("SELECT ks_engage('halt_all', 'planted 3', 'tester')");
	my $fh = ks_plant_lock($shared);
	my ($out, $err) = ('', '');
	# before the fix this waited until cancelled: the harness's timeout ends it
	my $rc = eval {
		IPC::Run::run([ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c',
			"SET statement_timeout = 0; SELECT ks_disengage('planted 3', 'tester')" ],
			'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	};
	ok(!$rc, 'with a planted lock held, a release gives up') or diag($out);
	like($err, qr/could not lock "[^"]*kill_switch_state.lock": another process held it for more than 10000 ms/,
		'after a bounded wait, saying why');
	is(sql('SELECT ks_mode()'), 'halt_all', 'nothing changed');
	flock($fh, LOCK_UN);
	close $fh;
	sql("SELECT ks_disengage('after 3', 'tester')");
}

# ---------------------------------------------------------------------------
# 4–6. A standby with its own shared state directory.
{
	sql(q{
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
INSERT INTO t SELECT generate_series(1, 1000);
GRANT SELECT ON t TO bot;
});
	$node->backup('b');
	my $sdir = PostgreSQL::Test::Utils::tempdir;
	chmod 0770, $sdir;
	my $standby = PostgreSQL::Test::Cluster->new('planted_standby');
	ks_init_from_backup($standby, $node, 'b', has_streaming => 1);
	$standby->append_conf('postgresql.conf',
		"killswitch.state_dir = '$sdir'\nmax_standby_streaming_delay = -1\nhot_standby_feedback = off\n");
	$standby->start;
	$node->wait_for_catchup($standby);
	ok(within($standby, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL", 30),
		'the standby hears its upstream');

	my $fh = ks_plant_lock($sdir);
	utime undef, undef, "$sdir/kill_switch_state.json";
	sleep 1;

	# 4. the agent holds replay back with a snapshot a cleanup conflicts with
	my $reader = $standby->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	my $rpid = $reader->query_safe('SELECT pg_backend_pid()');
	$reader->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t;');
	sql('DELETE FROM t; VACUUM t;');
	sql("SELECT ks_engage('emergency', 'planted 4', 'tester')");
	ok(within($standby, "SELECT ks_mode() = 'emergency'", 60),
		'the standby hears the emergency while an agent holds a lock it planted');
	ok(within($standby, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $rpid", 60),
		'and ends the agent that holds its replay back');
	$reader->quit;

	# 5. redo with the planted lock held
	$node->wait_for_catchup($standby);
	my $startup = $standby->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'");
	my $logstart = -s $standby->logfile;
	for my $i (1 .. 10)
	{
		sql("SELECT ks_disengage('planted 5.$i', 'tester')");
		sql("SELECT ks_engage('halt_all', 'planted 5.$i', 'tester')");
	}
	$node->wait_for_catchup($standby);
	my $generation = sql("SELECT ks_status()->>'generation'");
	ok(within($standby, "SELECT ks_status()->>'replayed_generation' = '$generation'", 30),
		'the standby replays every change with the lock held');
	my $log = substr(slurp_file($standby->logfile), $logstart);
	# each line: "(waited N ms of at most B)" — B is the bound redo asked
	# for (deterministic); N is wall time, which a loaded machine stretches
	my @bounds = $log =~ /\[$startup\] LOG:  could not write the state of generation \d+ into the files: could not lock "[^"]*": another process holds it \(waited \d+ ms of at most (\d+)\)/g;
	my @all = $log =~ /\[$startup\] LOG:  could not write the state of generation/g;
	cmp_ok(scalar(@all), '>=', 20, 'redo could not write the files (' . scalar(@all) . ' records)');
	is(scalar(@bounds), scalar(@all), 'every redo line says how long it waited for the lock, and its bound');
	is(scalar(grep { $_ > 10 } @bounds), 0, 'redo waited at most KS_LOCK_REDO_WAIT_MS (10 ms) per record');
	is(scalar(grep { $_ > 0 } @bounds[1 .. $#bounds]), 0,
		'and not at all once the files were behind');

	# 6. the agent lets go: the files catch up
	flock($fh, LOCK_UN);
	close $fh;
	my $caught = 0;
	for (1 .. 300)
	{
		my $f = file_state("$sdir/kill_switch_state.json");
		if (($f->{generation} // -1) == $generation) { $caught = 1; last; }
		usleep(100_000);
	}
	ok($caught, "the standby's state file catches up (generation $generation)");
	is(file_state("$sdir/kill_switch_state.json")->{mode}, 'HALT_ALL', 'and says halt_all');
	$standby->stop('immediate');
}

$node->stop('immediate');
done_testing();
