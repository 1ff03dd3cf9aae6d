# What the killswitch command says when something is wrong, and that it
# never reports success for a write the server will judge tampered:
#  - a signing secret that is not the server's: status and verify say the
#    secret is probably wrong (the key_id the files name is not its key),
#    exit 1, rather than calling the file tampered; engage refuses to write
#    with it, also with --force (nothing written, no tamper verdict);
#  - a secret rotated with the old key kept beside it is no false alarm, and
#    a file really changed is still called tampered (exit 3);
#  - -D on a directory that is not a data directory says so;
#  - online and offline status name the mode the same way;
#  - online, --by defaults to the database role; offline, to the OS user.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(sha256_hex);
use File::Copy qw(copy);
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('climsg');
my $pgdata = $node->data_dir;
my $state = "$pgdata/pg_killswitch/kill_switch_state.json";
my $conn = $node->connstr('postgres');
$node->safe_psql('postgres', q{
CREATE ROLE oncall LOGIN IN ROLE killswitch_operator;
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
});

sub sql { return $node->safe_psql('postgres', shift); }

# Run the command; return (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

sub key_id { return substr(sha256_hex($_[0]), 0, 16); }

my $dir = PostgreSQL::Test::Utils::tempdir;
my $right = ks_secret($node);
my $wrong_file = "$dir/wrong.key";
my $wrong = 'ab' x 32;
append_to_file($wrong_file, "$wrong\n");
chmod 0600, $wrong_file;
my ($ours, $theirs) = (key_id($wrong), key_id($right));

# ---------------------------------------------------------------- a wrong secret
sql("SELECT ks_engage('halt_noncritical', 'before the wrong secret', 'tester')");
my $before = slurp_file($state);
my $events = sql('SELECT count(*) FROM killswitch.events');

my ($rc, $out, $err) = ks('-D', $pgdata, '--secret-file', $wrong_file, 'status');
is($rc, 1, 'status with a secret that is not the server\'s: exit 1, an error, not 3 (tampered)');
like($err, qr/could not verify the state file: the signing secret "\Q$wrong_file\E" is probably not the server's/,
	'it says the secret is probably wrong');
like($err, qr/was signed with key $theirs \(its key_id\); this secret is key $ours/,
	'and names both keys');
like($err, qr/hint: Give --secret-file the server's killswitch\.signing_secret_file/, 'and what to do');
unlike($out, qr/tampered/, 'it does not call the file tampered');

($rc, $out, $err) = ks('-D', $pgdata, '--secret-file', $wrong_file, 'verify');
is($rc, 1, 'verify with it: exit 1');
like($err, qr/probably not the server's/, 'with the same message');

# without -D (no private copy to ask) the state file's own key_id tells
($rc, $out, $err) = ks('--state-dir', "$pgdata/pg_killswitch", '--secret-file', $wrong_file, 'status');
is($rc, 1, 'status of a state directory without -D: exit 1');
like($err, qr/"\Q$state\E" was signed with key $theirs/, 'the state file\'s key_id tells');

($rc, $out, $err) = ks('-D', $pgdata, '--secret-file', $wrong_file, 'engage', 'halt_all', '--reason', 'x');
is($rc, 1, 'engage with it is refused (exit 1)');
like($err, qr/will not write the state file: the signing secret "\Q$wrong_file\E" is probably not the server's/,
	'saying the secret is probably wrong');
like($err, qr/The server would judge a file signed with it tampering/, 'and why it will not write');

($rc, $out, $err) = ks('-D', $pgdata, '--secret-file', $wrong_file, '--force', 'engage', 'emergency',
	'--reason', 'forced');
is($rc, 1, 'engage --force with it is refused too (exit 1)');
is($out, '', 'nothing on stdout: no "written"');
like($err, qr/will not write the state file/, 'with the same message');
is(slurp_file($state), $before, 'the state file is untouched');
is(sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'halt_noncritical ok',
	'the server keeps its mode, integrity ok');
is(sql('SELECT count(*) FROM killswitch.events'), $events, 'no event was recorded (no tamper verdict)');

# ---------------------------------------------------------------- no false alarms
# a rotation: the new secret, the old one kept beside it under its key_id
my $rot = "$dir/rotated";
mkdir $rot;
append_to_file("$rot/signing.key", ('cd' x 32) . "\n");
copy("$pgdata/pg_killswitch/signing.key", "$rot/signing.key.$theirs") or die "copy: $!";
chmod 0600, "$rot/signing.key", "$rot/signing.key.$theirs";
($rc, $out, $err) = ks('-D', $pgdata, '--secret-file', "$rot/signing.key", 'status');
is($rc, 2, 'status with a rotated secret, the old key kept beside it: exit 2 (engaged)') or diag($err);
unlike($err, qr/probably not the server's/, 'no wrong-secret alarm');

# the right secret, a file changed after it was signed: tampered, as before
$node->stop;
(my $changed = $before) =~ s/before the wrong secret/someone else's reason/ or die 'no reason in the file';
open my $fh, '>', $state or die $!;
print $fh $changed;
close $fh;
($rc, $out, $err) = ks('-D', $pgdata, 'status');
is($rc, 3, 'the right secret and a file changed after signing: exit 3 (tampered)');
like($out, qr/integrity:\s+tampered \(the signature does not match the contents\)/, 'called tampered');
unlike($err, qr/probably not the server's/, 'not blamed on the secret');
open $fh, '>', $state or die $!;
print $fh $before;
close $fh;
$node->start;

# ---------------------------------------------------------------- -D on another directory
my $notdata = "$dir/not-a-data-directory";
mkdir $notdata;
($rc, $out, $err) = ks('-D', $notdata, 'status');
is($rc, 1, '-D on a directory that is not a data directory: exit 1');
like($err, qr/"\Q$notdata\E" is not a database cluster directory/, 'it says so');
unlike($err, qr/signing\.key/, 'instead of complaining of a missing signing.key');
{
	local $ENV{PGDATA} = $notdata;
	($rc, $out, $err) = ks('engage', 'halt_all', '--reason', 'x');
	is($rc, 1, 'the same from PGDATA');
	like($err, qr/the directory comes from the environment variable PGDATA/, 'naming where it came from');
}

# ---------------------------------------------------------------- the mode, online and offline
my ($rc1, $online) = ks('-d', $conn, 'status');
my ($rc2, $offline) = ks('-D', $pgdata, 'status');
my ($mode_on) = $online =~ /^(mode:.*)$/m;
my ($mode_off) = $offline =~ /^(mode:.*)$/m;
is($mode_on, 'mode:         halt_noncritical', 'online status names the mode by its SQL name');
is($mode_off, $mode_on, 'offline status names it the same way');
is("$rc1 $rc2", '2 2', 'both exit 2 (engaged)');

# ---------------------------------------------------------------- --by
($rc, $out, $err) = ks('-d', "$conn user=oncall", 'engage', 'halt_all', '--reason', 'online, no --by');
is($rc, 0, 'online engage without --by') or diag($err);
is(sql("SELECT triggered_by || ' ' || session_role FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'oncall oncall', 'records the database role as triggered_by, not the OS user');
($rc, $out, $err) = ks('-d', "$conn user=alice", 'disengage', '--reason', 'online release, no --by');
is($rc, 0, 'online disengage without --by') or diag($err);
is(sql('SELECT triggered_by FROM killswitch.events ORDER BY id DESC LIMIT 1'), 'alice',
	'records the releasing role');
my $os_user = getpwuid($>);
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'offline, no --by');
is($rc, 0, 'offline engage without --by') or diag($err);
ok($node->poll_query_until('postgres',
	"SELECT triggered_by FROM killswitch.events WHERE reason = 'offline, no --by'", $os_user),
	"offline, the OS user ($os_user) is recorded");

done_testing();
