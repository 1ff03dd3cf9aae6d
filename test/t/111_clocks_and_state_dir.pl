# What the README's "Python library notes" promise about clocks and about
# moving killswitch.state_dir, held by tests:
#  - a file written the library's way (no generation) is judged by its
#    engaged_at: from a writer whose clock is in step it is applied; from a
#    writer 5 s behind it is an old file put back -- a replay, tampering --
#    though an EMERGENCY it asked for stands (raising needs nothing);
#  - pointing state_dir at a new, empty directory is tampering at start
#    (the state file is missing while the server has applied a state), and
#    pointing it back at the old directory is a replay; moving the file along
#    with the setting is not.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX qw(strftime);
use Time::HiRes qw(time);
use KsTest;

my $node = ks_node('clocks');
my $pgdata = $node->data_dir;
my $secret = ks_secret($node);

sub sql { return $node->safe_psql('postgres', shift); }

# A library-style file (no generation), its engaged_at offset from our clock.
sub library_write
{
	my ($dir, $mode, $offset) = @_;
	my $t = time + $offset;
	my $at = strftime('%Y-%m-%dT%H:%M:%S', gmtime(int $t))
	  . sprintf('.%06d+00:00', ($t - int $t) * 1e6);
	open my $fh, '>', "$dir/kill_switch_state.json" or die;
	print $fh ks_signed_text($secret, mode => $mode, engaged_at => $at,
		reason => "library, clock $offset s", triggered_by => 'library');
	close $fh;
}

my $dir = "$pgdata/pg_killswitch";

# 1. Clocks in step: applied.
my $gen = sql("SELECT ks_status()->>'generation'");
library_write($dir, 'HALT_ALL', 0);
ok($node->poll_query_until('postgres', "SELECT (ks_status()->>'generation')::bigint > $gen"),
	'a library write is taken in');
is(sql('SELECT ks_mode()'), 'halt_all', 'from a writer whose clock is in step: applied');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'and trusted');

# 2. A writer 5 s behind asks for an emergency after a later change.
sql("SELECT ks_disengage('released', 'tester')");
$gen = sql("SELECT ks_status()->>'generation'");
library_write($dir, 'EMERGENCY', -5);
ok($node->poll_query_until('postgres', "SELECT (ks_status()->>'generation')::bigint > $gen"),
	'a write from a clock 5 s behind is taken in');
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'judged tampering');
like(sql("SELECT ks_status()->>'problem'"), qr/replay|older|earlier/i, 'as a replay of an old file');
is(sql('SELECT ks_mode()'), 'emergency', 'the emergency it asked for stands: a verdict never lowers what a file asks');
sql("SELECT ks_disengage('released', 'tester')");

# 3. state_dir pointed at a new, empty directory: tampering at start.
my $new = PostgreSQL::Test::Utils::tempdir . '/moved';
mkdir $new, 0700 or die;
sql("SELECT ks_engage('halt_noncritical', 'before the move', 'tester')");
$node->stop;
$node->append_conf('postgresql.conf', "killswitch.state_dir = '$new'\n");
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'a new, empty state_dir: tampered at start');
like(sql("SELECT ks_status()->>'problem'"), qr/missing|no such file|deleted/i, 'the file is missing');
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the mode last applied is kept (never lower)');
sql("SELECT ks_disengage('moved on purpose', 'tester')");

# 4. ... and pointed back at the old directory, whose file is now old: a replay.
$node->stop;
$node->append_conf('postgresql.conf', "killswitch.state_dir = '$dir'\n");
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'back to the old state_dir: tampered at start');
like(sql("SELECT ks_status()->>'problem'"), qr/replay|older|earlier/i, 'as a replay');
is(sql('SELECT ks_mode()'), 'halt_all', 'and halted');
sql("SELECT ks_disengage('moved back on purpose', 'tester')");

# 5. Moving the file along with the setting, while the server is down: trusted.
$node->stop;
rename "$dir/kill_switch_state.json", "$new/kill_switch_state.json" or die;
$node->append_conf('postgresql.conf', "killswitch.state_dir = '$new'\n");
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'the file moved along with the setting: trusted');
is(sql('SELECT ks_mode()'), 'disengaged', 'in the mode it held');

$node->stop;
done_testing();
