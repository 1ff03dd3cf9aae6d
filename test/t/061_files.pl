# Files that cannot be trusted: a FIFO swapped in for the state file or the
# secret blocks neither the watcher nor the postmaster (the file is bad:
# fail closed); a secret others can read is refused (core's rule for
# ssl_key_file); a validly signed file whose time stamp names a day that
# does not exist (February 31) is bad.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use POSIX qw(mkfifo);
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('files');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";
my $key = "$dir/signing.key";
my $secret = ks_secret($node);
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";

sub sql { return $node->safe_psql('postgres', shift); }
sub status { return sql("SELECT ks_status()->>'" . shift . "'"); }
sub generation { return status('generation'); }

sub release
{
	my ($what) = @_;
	sql("SELECT ks_disengage('test reset', 'tester')");
	is(sql('SELECT ks_mode()'), 'disengaged', "released after $what");
}

# Put text into place the way careful writers do: a temporary file renamed.
sub put_file
{
	my ($text) = @_;
	open my $fh, '>', "$file.new" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.new", $file or die $!;
}

# A FIFO put in place of path (what was there kept aside), in one rename:
# the watcher sees no moment without a file to rewrite.
sub fifo_in_place
{
	my ($path) = @_;
	link $path, "$path.aside" or die $!;
	mkfifo("$path.fifo", 0600) or die $!;
	rename "$path.fifo", $path or die $!;
}

sub fifo_gone
{
	my ($path) = @_;
	unlink $path if -p $path;
	rename "$path.aside", $path or die $! if -e "$path.aside";
}

# 1. A FIFO as the state file while the server runs: the watcher reads it
# without blocking, judges it bad (halt_all, tampered) and keeps watching.
fifo_in_place($file);
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'problem' LIKE '%FIFO%'"),
	'a FIFO as the state file is judged bad');
is(sql('SELECT ks_mode()'), 'halt_all', 'the state is halt_all');
is(status('integrity'), 'tampered', 'integrity tampered');
my $seen = status('watcher_checked_at');
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'watcher_checked_at' > '$seen'"),
	'the watcher is not blocked: it keeps looking');
unlink "$file.rejected" if -p "$file.rejected";
fifo_gone($file) unless -f $file;
unlink "$file.aside";
release('a FIFO state file');

# 2. A FIFO as the state file at start: the postmaster starts, fail-closed.
$node->stop;
fifo_in_place($file);
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'started with a FIFO as the state file: halt_all');
like(status('problem'), qr/FIFO/, 'the problem names the FIFO');
unlink "$file.rejected" if -p "$file.rejected";
unlink "$file.aside";
release('a FIFO at start');

# 3. A FIFO as the secret while running: a change fails at once, changes nothing.
my $gen = generation();
fifo_in_place($key);
my ($ret, $out, $err) = $node->psql('postgres', "SELECT ks_engage('halt_all', 'fifo secret')", timeout => 60);
isnt($ret, 0, 'with a FIFO as the secret, ks_engage fails');
like($err, qr/FIFO/, 'saying why');
is(generation(), $gen, 'nothing changed');
fifo_gone($key);

# 4. A FIFO as the secret at start: the postmaster starts, fail-closed.
$node->stop;
fifo_in_place($key);
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'started with a FIFO as the secret: halt_all');
is(status('integrity'), 'tampered', 'integrity tampered');
like(status('problem'), qr/signing secret: .*FIFO/, 'the problem names the secret');
$node->stop;
fifo_gone($key);
$node->start;
release('a FIFO secret at start');

# 5. A secret others can read is refused, by the server and by the CLI.
for my $mode (0640, 0604, 0660)
{
	my $m = sprintf('%04o', $mode);
	chmod $mode, $key or die $!;
	$gen = generation();
	($ret, $out, $err) = $node->psql('postgres', "SELECT ks_engage('halt_all', 'readable secret')");
	like($err, qr/group or world access \(mode $m\)/, "a secret of mode $m: ks_engage is refused");
	is(generation(), $gen, 'nothing changed');
	my ($cout, $cerr) = ('', '');
	IPC::Run::run([ $cli, '-D', $pgdata, 'status' ], '>', \$cout, '2>', \$cerr);
	is($? >> 8, 1, "the CLI refuses a secret of mode $m (exit 1)");
	like($cerr, qr/group or world access/, 'saying why');
}
chmod 0400, $key;
is(sql("SELECT mode FROM ks_engage('halt_noncritical', 'owner read-only secret')"), 'halt_noncritical',
	'a secret of mode 0400 is accepted');
chmod 0600, $key;
release('a readable secret');

$node->stop;
chmod 0640, $key;
my $log_offset = -s $node->logfile;
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'started with a group-readable secret: halt_all');
is(status('integrity'), 'tampered', 'integrity tampered');
like(slurp_file($node->logfile, $log_offset),
	qr/WARNING:  the kill switch state could not be trusted.*\n.*DETAIL:  Reason: .*signing secret: the secret file has group or world access/,
	'a WARNING in the log says why');
$node->stop;
chmod 0600, $key;
$node->start;
release('a group-readable secret at start');

# 6. Time stamps must name real days.  A validly signed file asking for
# halt_noncritical is applied as asked if its time stamp is good, and is
# bad (halt_all, tampered) if not.
my @bad = (
	'2026-02-31T10:00:00.000000+00:00', '2026-04-31T10:00:00.000000+00:00',
	'2025-02-29T10:00:00.000000+00:00', '2100-02-29T10:00:00.000000+00:00',
	'2026-06-31T10:00:00.000000+00:00', '2026-02-28T10:00:60.000000+00:00',
	'2026-+2-28T10:00:00.000000+00:00', '2026-02-28T10:00:00.000000+ 1:00');
my @good = ('2024-02-29T10:00:00.000000+00:00', '2000-02-29T10:00:00.000000+00:00',
	'2026-12-31T23:59:59.999999+00:00');
for my $at (@bad, @good)
{
	my $is_good = grep { $_ eq $at } @good;
	$gen = generation();
	put_file(ks_signed_text($secret, mode => 'HALT_NONCRITICAL', engaged_at => $at,
		reason => "time stamp $at", triggered_by => 'tester', generation => $gen + 1));
	ok($node->poll_query_until('postgres', "SELECT (ks_status()->>'generation')::bigint > $gen"),
		"the watcher judged the file stamped $at");
	if ($is_good)
	{
		is(sql('SELECT ks_mode()') . ' ' . status('integrity'), 'halt_noncritical ok',
			"$at is a real time: applied");
	}
	else
	{
		is(sql('SELECT ks_mode()') . ' ' . status('integrity'), 'halt_all tampered',
			"$at is not a real time: the file is bad");
		like(status('problem'), qr/engaged_at/, 'the problem names engaged_at');
		unlink "$file.rejected";
	}
	release("the file stamped $at");
}

$node->stop;
done_testing();
