# A change takes effect if and only if its transaction commits, across a
# crash at any instant: after a restart the server runs at the mode of the
# newest committed change, or higher until the watcher has settled the
# marks of the changes in flight by the commit log — never lower.  An
# uncommitted release never takes effect.  Cases 1-3b make the crash's
# leftovers by hand: a mark (pg_killswitch/in_flight/<xid>.json, signed)
# naming a transaction that committed or one that rolled back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use POSIX ();
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('crash_commit', conf => "restart_after_crash = on\n");
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";
my $copy = "$dir/last_applied.json";
my $marks = "$dir/in_flight";
my $secret = ks_secret($node);

sub sql { return $node->safe_psql('postgres', shift); }

sub put
{
	my ($path, $text) = @_;
	open my $fh, '>', $path or die "$path: $!";
	print $fh $text;
	close $fh;
}

# Wait until the watcher has settled what the crash left: no mark, nothing
# unrecorded, and the file, shared memory and history on one generation.
sub settled
{
	return $node->poll_query_until('postgres', q{
		SELECT (SELECT count(*) FROM pg_ls_dir('pg_killswitch/in_flight', true, false)) = 0
		   AND NOT (ks_status()->>'unrecorded_change')::boolean
		   AND (ks_status()->>'generation')::bigint = (SELECT max(generation) FROM killswitch.events)
		   AND (ks_status()->>'generation')::bigint =
		       (pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'generation')::bigint});
}

my $newest_mode = 'SELECT mode FROM killswitch.events ORDER BY id DESC LIMIT 1';

# A transaction that rolled back: its id is in the commit log as aborted.
sub aborted_xid
{
	return sql('BEGIN; SELECT txid_current(); ROLLBACK;');
}

# The mark of a recorded change of transaction $xid whose state file text is $text.
sub put_mark
{
	my ($xid, $text) = @_;
	my $st = decode_json($text);
	mkdir $marks;
	put("$marks/$xid.json", ks_signed_text($secret, kind => 'recorded', xid => 0 + $xid,
		mode => $st->{mode}, generation => $st->{generation}, state => $text,
		tampered => JSON::PP::false));
}

# 1. A release written to the file before a crash that never committed:
#    the server starts engaged and stays so; the file goes back.
sql("SELECT ks_engage('halt_all', 'committed engage', 'tester')");
my $events = sql('SELECT count(*) FROM killswitch.events');
my $committed = decode_json(slurp_file($file));
my %m = %$committed;
delete @m{qw(signature event_id)};
%m = (%m, mode => 'DISENGAGED', previous_mode => 'HALT_ALL', generation => $committed->{generation} + 1,
	reason => 'never committed', source => 'sql');
my $release = ks_signed_text($secret, %m);
my $rolled_back = aborted_xid();
$node->stop('immediate');
put($file, $release);
put_mark($rolled_back, $release);
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'an uncommitted release in the file: the server starts engaged');
ok(settled(), 'the watcher settles the change in flight');
is(sql('SELECT ks_mode()'), 'halt_all', 'and the release never takes effect');
is(decode_json(slurp_file($file))->{generation}, $committed->{generation},
	'the state file is back at the committed generation');
is(sql('SELECT count(*) FROM killswitch.events'), $events, 'nothing was recorded');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'and nothing is judged tampered');
like(slurp_file($node->logfile), qr/generation \d+ written before the crash never committed/,
	'the log says what happened');

# 2. A release that committed, but the crash came before the private copy
#    learned it: the server starts at the higher mode, then confirms it.
my $old_copy = slurp_file($copy);
my $release_xid = sql("SELECT xid FROM ks_disengage('committed release', 'tester')");
$events = sql('SELECT count(*) FROM killswitch.events');
my $written = slurp_file($file);
$node->stop('immediate');
put($copy, $old_copy);
put_mark($release_xid, $written);
$node->start;
cmp_ok(sql("SELECT ks_mode() >= 'disengaged'::ks_mode"), 'eq', 't', 'a committed release in flight: never lower');
ok(settled(), 'the watcher confirms the change');
is(sql('SELECT ks_mode()'), 'disengaged', 'the committed release is in force');
is(sql('SELECT count(*) FROM killswitch.events'), $events, 'and nothing more was recorded');
is(slurp_file($copy), $written, 'the private copy learned it');
like(slurp_file($node->logfile), qr/generation \d+ written before the crash had committed/,
	'the log says so');

# 3. A crash while an aborted change was being undone: the file is back,
#    the mark still there.  Neither a replay nor a change.
sql("SELECT ks_engage('halt_noncritical', 'before the undo', 'tester')");
$events = sql('SELECT count(*) FROM killswitch.events');
$committed = decode_json(slurp_file($file));
$rolled_back = aborted_xid();
$node->stop('immediate');
%m = %$committed;
delete @m{qw(signature event_id)};
%m = (%m, mode => 'EMERGENCY', generation => $committed->{generation} + 1, reason => 'undone');
put_mark($rolled_back, ks_signed_text($secret, %m));
$node->start;
ok(settled(), 'a crash during an undo is settled');
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the mode is the committed one');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'not judged a replay');
is(sql('SELECT count(*) FROM killswitch.events'), $events, 'and nothing recorded');

# 3b. The state file deleted while down, with a change in flight: the halt
#     is assumed at no less than that change's mode, on a generation after it.
$committed = decode_json(slurp_file($file));
$rolled_back = aborted_xid();
$node->stop('immediate');
%m = %$committed;
delete @m{qw(signature event_id)};
%m = (%m, mode => 'EMERGENCY', generation => $committed->{generation} + 1, reason => 'in flight, file gone');
put_mark($rolled_back, ks_signed_text($secret, %m));
unlink $file or die $!;
$node->start;
is(sql("SELECT ks_mode() >= 'halt_noncritical'"), 't',
	'a deleted file with an emergency in flight: at least the committed mode (emergency until settled)');
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'and the deletion is a tamper verdict');
ok(settled(), 'which the watcher records');
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the emergency in flight never committed: the committed mode, tampered');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');
sql("SELECT ks_disengage('after the deleted file', 'tester')");
my $tampers = sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'");

# 3c. A crash mid-write leaves temporary files behind (<name>.tmp.<pid>):
#     the next start removes those whose writer is gone, in the private
#     directory and the marks', and keeps one whose writer still runs.
my $gone = fork() // die "fork: $!";
POSIX::_exit(0) unless $gone;    # no END blocks: they would stop the node
waitpid($gone, 0);
$node->stop('immediate');
mkdir $marks;
put("$marks/4242.json.tmp.$gone", '');
put("$copy.tmp.$gone", '{"mode": "DISENGAGED"');
put("$file.tmp.$gone", '');
put("$marks/4243.json.tmp.$$", '');
$node->start;
ok(!-e "$marks/4242.json.tmp.$gone", 'a mark half written before the crash is removed at start');
ok(!-e "$copy.tmp.$gone", 'and so is a half-written private copy');
ok(!-e "$file.tmp.$gone", 'and a half-written state file in the private directory');
ok(-e "$marks/4243.json.tmp.$$", 'a temporary file whose writer still runs is kept');
unlink "$marks/4243.json.tmp.$$";
ok(settled(), 'nothing is left to settle');

# 4. The crash loop: engage and release through SQL, kill -9 at a random
#    moment — the postmaster 30 times, the backend making the changes 20
#    times.  After each restart the mode is never below the newest
#    committed change, and once settled it is exactly that.
my @script;
for my $i (1 .. 2000)
{
	push @script, "SELECT 1 FROM ks_engage('emergency', 'loop $i', 'loop');",
	  "SELECT 1 FROM ks_disengage('loop $i', 'loop');",
	  "SELECT 1 FROM ks_engage('halt_noncritical', 'loop $i', 'loop');";
}
put("$pgdata/../loop.sql", join("\n", @script) . "\n");
my ($below, $wrong, $unsettled, $unconfirmed_starts) = (0, 0, 0, 0);
my $log_at = -s $node->logfile;
for my $round (1 .. 50)
{
	my $postmaster = $round <= 30;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-d', $node->connstr('postgres') . ' application_name=ksloop',
		  '-f', "$pgdata/../loop.sql" ],
		'>', \$out, '2>', \$err);
	usleep(50_000 + int(rand(350_000)));
	if ($postmaster)
	{
		ks_kill9_and_start($node);
	}
	else
	{
		my $offset = -s $node->logfile;
		my $pid = sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'ksloop'");
		if ($pid)
		{
			kill 'KILL', $pid;
			# the crash restart, not a connection made before it
			$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
		}
		ks_wait_ready($node) or die 'the server did not come back';
	}
	eval { $h->finish; };
	# at once: never below the newest committed change
	my $r = sql("SELECT ks_mode() >= ($newest_mode)");
	$below++, diag("round $round: below the committed mode") unless $r eq 't';
	if (!settled())
	{
		$unsettled++;
		diag("round $round: not settled: " . sql(q{
			SELECT format('in_flight %s, unrecorded %s, generation %s, history %s, file %s',
				(SELECT string_agg(f, ' ') FROM pg_ls_dir('pg_killswitch/in_flight', true, false) f),
				ks_status()->>'unrecorded_change', ks_status()->>'generation',
				(SELECT max(generation) FROM killswitch.events),
				pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'generation')}));
		next;
	}
	my ($mode, $committed_mode) = split /\|/, sql("SELECT ks_mode(), ($newest_mode)");
	$wrong++, diag("round $round: mode $mode, committed $committed_mode")
	  unless $mode eq $committed_mode;
}
my $log = substr(slurp_file($node->logfile), $log_at);
$unconfirmed_starts = () = $log =~ /written before the crash (?:had|never) committed/g;
note("restarts that found a change in flight: $unconfirmed_starts");
is($below, 0, '50 crashes: never below the newest committed mode at restart');
is($unsettled, 0, 'every crash was settled by the watcher');
is($wrong, 0, 'once settled, the mode is the newest committed change');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');
is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), $tampers, 'no crash was judged tampering');

$node->stop;
done_testing();
