# Issue 18, case 6: outside writes are judged only once their writer has
# finished, and none is lost to a replace by the server (ARCHITECTURE §5.7).
# The outside writer writes as the reference library does — open with
# truncate, write, close, chmod 0600, no lock — through the library
# stand-in (test/python/write_state.py, test/python/hummbl_governance/).
#
# 1. A write that stalls between its truncate and its write, 80 ms and
#    400 ms — the writer itself sleeps there, so the stall is certain — is
#    applied once it is closed: no "emptied" verdict, no tamper event.
# 2. A write that lands between the server's compare and its replace of the
#    file: an LD_PRELOAD shim (test/shim/ks_pause.c) holds the server at its
#    rename of the state file until the test has written (or truncated and
#    stalled), so the interleaving is forced.  The write is kept and judged
#    after the server's change — complete when the replace came, or still
#    stalled then and finished after it.
# 3. The same race with the replace of killswitch -D (preloaded the same
#    way): the command keeps the write for the server, which applies it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;

my $src = $ENV{KS_SRCDIR};
my $cli = "$src/src/cli/killswitch";
my $shim = "$src/test/shim/ks_pause.so";
my $writer = "$src/test/python/write_state.py";
my $node = ks_node('outside');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }
sub tampers { return sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"); }

# Wait (20 s at most) until a query is true; a lost write fails, not stalls.
sub soon
{
	my ($query) = @_;
	for (1 .. 200)
	{
		return 1 if sql($query) eq 't';
		usleep(100_000);
	}
	return 0;
}

# Start the library-like writer; returns its harness.
sub start_writer
{
	my ($mode, $reason, @stall) = @_;
	return IPC::Run::start([ $python, $writer, $dir, "$dir/signing.key", $mode, $reason, @stall ],
		'>', \my $out, '2>', \my $err);
}

sub wait_for_path
{
	my ($path) = @_;
	for (1 .. 600)
	{
		return 1 if -e $path;
		usleep(10_000);
	}
	return 0;
}

sub reset_state
{
	sql("SELECT ks_disengage('reset', 'tester')");
	ks_held_signature($node);	# the file holds the server's bytes again
}

# 1. Stalled in-place writes.
my $before = tampers();
for my $stall (80, 400)
{
	my $applied = 0;
	for my $i (1 .. 5)
	{
		my $mode = $i % 2 ? 'HALT_ALL' : 'EMERGENCY';
		my $w = start_writer($mode, "stalled $stall ms $i", '--stall-ms', $stall);
		$w->finish;
		$applied++ if soon("SELECT ks_mode() = '" . lc($mode) . "' AND "
			  . "(SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'stalled $stall ms $i')");
		reset_state();
	}
	is($applied, 5, "5 writes that stall $stall ms between truncate and write: each applied");
}
is(tampers(), $before, 'none was judged half-written (no tamper event)');

# 2. A write that races the server's replace.
$node->stop;
{
	local $ENV{LD_PRELOAD} = $shim;
	$node->start;
}
reset_state();

# An SQL engage held at its replace; what $meanwhile does lands before it.
sub sql_engage_held_at_replace
{
	my ($i, $meanwhile, $after) = @_;
	open my $f, '>', "$dir/pause_replace" or die $!;
	close $f;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres'),
		  '-c', "SELECT mode FROM ks_engage('halt_noncritical', 'sql $i', 'tester')" ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
	ok(wait_for_path("$dir/replace_paused"), "trial $i: the server is held at its replace");
	$meanwhile->();
	unlink "$dir/pause_replace";
	$h->finish;
	is($out, "halt_noncritical\n", "trial $i: the SQL engage commits") or diag($err);
	$after->() if $after;
}

for my $i (1 .. 3)
{
	# complete before the replace
	sql_engage_held_at_replace("complete $i",
		sub { start_writer('EMERGENCY', "raced complete $i")->finish; });
	ok(soon("SELECT ks_mode() = 'emergency'"), "trial complete $i: the raced write is applied");
	# the raced raise is in force at once, its event follows at a look (watch.c)
	my $events_complete = "SELECT string_agg(mode || ' ' || source, ',' ORDER BY id) FROM killswitch.events "
	  . "WHERE reason IN ('sql complete $i', 'raced complete $i')";
	ok(soon("SELECT coalesce(($events_complete), '') = 'halt_noncritical sql,emergency file'"),
		"trial complete $i: after the SQL change") or diag(sql($events_complete));
	reset_state();

	# truncated before the replace, written after it
	my $w;
	sql_engage_held_at_replace("stalled $i",
		sub {
			$w = start_writer('EMERGENCY', "raced stalled $i", '--stall-until', "$dir/go");
			for (1 .. 600) { last if -z $file; usleep(10_000); }
			ok(-z $file, "trial stalled $i: the writer has truncated the file");
		},
		sub {
			open my $f, '>', "$dir/go" or die $!;
			close $f;
			$w->finish;
			unlink "$dir/go";
		});
	ok(soon("SELECT ks_mode() = 'emergency'"), "trial stalled $i: the write that finished after the replace is applied");
	# the raced raise is in force at once, its event follows at a look (watch.c)
	my $events_stalled = "SELECT string_agg(mode || ' ' || source, ',' ORDER BY id) FROM killswitch.events "
	  . "WHERE reason IN ('sql stalled $i', 'raced stalled $i')";
	ok(soon("SELECT coalesce(($events_stalled), '') = 'halt_noncritical sql,emergency file'"),
		"trial stalled $i: after the SQL change") or diag(sql($events_stalled));
	reset_state();
}
is(tampers(), $before, 'no tamper event: a raced write is judged once complete');
my @left = glob("$file.raced.*");
is(scalar(@left), 0, 'every raced write was judged and removed');

# 3. A write that races the replace of killswitch -D: truncated before it,
#    written after it (the command holds no lock the watcher waits on for
#    long, so a write complete before the replace may be judged first).
for my $i (1 .. 2)
{
	open my $f, '>', "$dir/pause_replace" or die $!;
	close $f;
	my ($cout, $cerr) = ('', '');
	my $h = do
	{
		local $ENV{LD_PRELOAD} = $shim;
		IPC::Run::start([ $cli, '-D', $pgdata, 'engage', 'halt_noncritical', '--reason', "cli $i" ],
			'>', \$cout, '2>', \$cerr, IPC::Run::timeout(120));
	};
	ok(wait_for_path("$dir/replace_paused"), "CLI trial $i: the command is held at its replace");
	my $w = start_writer('EMERGENCY', "raced cli $i", '--stall-until', "$dir/go");
	for (1 .. 600) { last if -z $file; usleep(10_000); }
	ok(-z $file, "CLI trial $i: the writer has truncated the file");
	unlink "$dir/pause_replace";
	$h->finish;
	my $cli_rc = $? >> 8;    # the command's, before the writer's finish sets $?
	open $f, '>', "$dir/go" or die $!;
	close $f;
	$w->finish;
	unlink "$dir/go";
	is($cli_rc, 0, "CLI trial $i: the command succeeds") or diag($cerr);
	like($cerr, qr/another program wrote the state file while this command replaced it/,
		"CLI trial $i: and says a write raced it");
	ok(soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'raced cli $i'")
		  && soon("SELECT ks_mode() = 'emergency'"),
		"CLI trial $i: the raced write is applied");
	reset_state();
}
is(tampers(), $before, 'still no tamper event');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
