# A release asked once an outside change's event is visible is not refused
# for that change (ARCHITECTURE §5.7): by the time the watcher's look
# commits, the state file's bytes it judged are known as the server's and
# its raise in place has ended — not a moment after, when the lock that
# orders changes is already free.  Before, a release in that moment was
# refused with 40001, "changed outside the database while this change was
# in flight", for a change already recorded (TAP 020's release helper
# retried; TAP 041 waited for it).
#
# How the moment is held open: the watcher, after the commit of a
# transaction of its own that holds an id, its locks released, waits
# while ks_test_pause_after_commit exists in the data directory
# (test/hooks/ks_test_hooks.so): what it does after its look's
# CommitTransactionCommand() has not happened yet.
#
# 1. An outside engage, recorded and written: the release comes while the
#    watcher is held after the look's commit.
# 2. The same while the writers' lock is held by an outside process during
#    the look: the look records the change but cannot write the file, which
#    keeps the outside bytes — only the note of them as judged makes the
#    release's compare-and-swap find the file as the server left it.
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
my $node = PostgreSQL::Test::Cluster->new('release_after_outside_change');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = '$hooks, killswitch'\n");
$node->start;
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_state.json";
my $lock = "$pgdata/pg_killswitch/kill_switch_state.lock";
my $pause = "$pgdata/ks_test_pause_after_commit";
my $paused = "$pgdata/ks_test_paused_after_commit";
sub sql { return $node->safe_psql('postgres', shift); }
sql('CREATE EXTENSION killswitch CASCADE');
my $secret = ks_secret($node);

sub generation { return sql("SELECT (ks_status()->>'generation')::bigint"); }

# Wait (bounded: a minute, for a loaded machine) until a condition holds.
sub within
{
	my ($cond) = @_;
	for (1 .. 6000)
	{
		return 1 if $cond->();
		usleep(10_000);
	}
	return 0;
}

# An outside engage, signed and renamed into place as careful writers do;
# returns its text.
sub outside_engage
{
	my ($reason, $gen) = @_;
	my ($s, $us) = Time::HiRes::gettimeofday();
	my @t = gmtime($s);
	my $at = sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00',
		$t[5] + 1900, $t[4] + 1, @t[3, 2, 1, 0], $us);
	my $text = ks_signed_text($secret, mode => 'HALT_ALL', engaged_at => $at, reason => $reason,
		triggered_by => 'an operator with the secret', generation => $gen);
	open my $fh, '>', "$file.new" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.new", $file or die $!;
	return $text;
}

# The release, with what it said.
sub release
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT ks_disengage('released at once', 'tester')");
	return $ret == 0 ? 'released' : $err;
}

# Let the watcher go on, and wait until it has.
sub let_go
{
	unlink $pause;
	ok(within(sub { !-e $paused }), 'the watcher goes on');
}

# The state settles: released, the file says so, nothing unrecorded.
sub settled
{
	my ($what) = @_;
	ok(within(sub { sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')") eq 'disengaged ok' }),
		"$what: disengaged, integrity ok");
	ok(within(sub { (eval { decode_json(slurp_file($file))->{mode} } // '') eq 'DISENGAGED' }),
		"$what: the file says DISENGAGED");
	is(sql("SELECT source || ' ' || reason FROM killswitch.events ORDER BY id DESC LIMIT 1"),
		'sql released at once', "$what: the release is the newest event");
	is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), '0',
		"$what: no tamper verdict");
}

# 1. Recorded and written.
my $gen = generation();
open my $f, '>', $pause or die $!;
close $f;
outside_engage('outside, recorded', $gen + 1);
ok(within(sub { -e $paused }), '1: the watcher is held after a commit');
is(sql("SELECT source || ' ' || reason || ' ' || generation FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'file outside, recorded ' . ($gen + 1), '1: the outside change is recorded and visible');
is(release(), 'released', '1: a release asked now is not refused');
is(sql('SELECT ks_mode()'), 'disengaged', '1: it is in force at once');
let_go();
settled('1');

# 2. Recorded, its file not written: the writers' lock held by an outside
#    process while the watcher looks (it reads without the lock once
#    another writer has held it for 250 ms).
$gen = generation();
my $holder = IPC::Run::start([ $^X, '-e',
	'use Fcntl ":flock"; $| = 1; open my $f, ">>", $ARGV[0] or die $!; flock $f, LOCK_EX or die $!; print "held\n"; sleep $ARGV[1]',
	$lock, 60 ], '>', \my $held);
ok(within(sub { $holder->pump_nb; $held =~ /held/ }), '2: the writers\' lock is held outside');
open $f, '>', $pause or die $!;
close $f;
my $outside = outside_engage('outside, file not written', $gen + 1);
ok(within(sub { -e $paused }), '2: the watcher is held after a commit');
is(sql("SELECT source || ' ' || reason || ' ' || generation FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'file outside, file not written ' . ($gen + 1), '2: the outside change is recorded and visible');
ok(slurp_file($file) eq $outside, '2: the file still holds the outside bytes');
$holder->kill_kill;
is(release(), 'released', '2: a release asked now is not refused');
is(sql('SELECT ks_mode()'), 'disengaged', '2: it is in force at once');
let_go();
settled('2');

$node->stop;
done_testing();
