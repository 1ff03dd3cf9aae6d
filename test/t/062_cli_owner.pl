# The killswitch command works on the files only as the data directory's
# owner: run by root (here: root of a user namespace, `unshare -r`) or by
# another user it refuses, with a clear message and exit 1, and touches
# nothing.  Online (-d) is unaffected.  status --json has the same members
# online and offline.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('cliowner');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $conn = $node->connstr('postgres');

sub sql { return $node->safe_psql('postgres', shift); }

# Run a command; return (exit code, stdout, stderr).
sub run_cmd
{
	my ($out, $err) = ('', '');
	IPC::Run::run([@_], '<', \undef, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# Every file of the state directory: name, size, mode, owner, bytes.
sub files
{
	opendir my $dh, $dir or die $!;
	my @names = sort grep { !/^\.\.?$/ } readdir $dh;
	return join "\n", map {
		my @st = lstat "$dir/$_";
		"$_ $st[7] $st[2] $st[4] " . (-f "$dir/$_" ? slurp_file("$dir/$_") : '')
	} @names;
}

my ($rc, $out, $err);

# 1. Run by root: refused, nothing touched.
SKIP:
{
	my ($urc) = run_cmd('unshare', '-r', 'true');
	skip 'user namespaces are not available (unshare -r)', 6 if $urc != 0;
	$node->stop;
	my $before = files();
	($rc, $out, $err) = run_cmd('unshare', '-r', $cli, '-D', $pgdata, 'engage', 'emergency',
		'--reason', 'as root');
	is($rc, 1, 'run as root, killswitch -D engage exits 1');
	like($err, qr/cannot be run as root without -d/, 'saying it cannot run as root');
	like($err, qr/sudo -u \S+ killswitch/, 'and how to run it instead');
	is(files(), $before, 'no file was written, created or changed');
	($rc, $out, $err) = run_cmd('unshare', '-r', $cli, '-D', $pgdata, 'status');
	is($rc, 1, 'status as root is refused too');
	is(files(), $before, 'nothing touched');
	$node->start;
}

# 2. Run by a user who does not own the directory: refused.
($rc, $out, $err) = run_cmd($cli, '-D', '/', 'status');
is($rc, 1, 'a data directory owned by someone else: exit 1');
like($err, qr/must be run as the owner of the data directory "\/" \(root\)/, 'saying whose it is');
($rc, $out, $err) = run_cmd($cli, '--state-dir', '/', '--secret-file', "$dir/signing.key", 'status');
is($rc, 1, 'a state directory owned by someone else: exit 1');
like($err, qr/must be run as the owner of the state directory/, 'saying so');

# 3. The owner may; online is unaffected.
($rc) = run_cmd($cli, '-D', $pgdata, 'status');
is($rc, 0, 'the owner runs it offline');
($rc) = run_cmd($cli, '-d', $conn, 'status');
is($rc, 0, 'online works');

# 4. status --json: the same members online and offline, engaged or not.
sub keys_of { return join ',', sort keys %{ decode_json(shift) }; }
for my $state ('disengaged', 'engaged')
{
	sql("SELECT ks_engage('halt_all', 'json shape', 'tester')") if $state eq 'engaged';
	my ($orc, $online) = run_cmd($cli, '-d', $conn, '--json', 'status');
	my ($frc, $offline) = run_cmd($cli, '-D', $pgdata, '--json', 'status');
	is(keys_of($offline), keys_of($online), "status --json has the same members online and offline ($state)");
	is($frc, $orc, "and the same exit status ($state)");
	my ($on, $off) = (decode_json($online), decode_json($offline));
	is("$off->{mode} $off->{generation} $off->{integrity}", "$on->{mode} $on->{generation} $on->{integrity}",
		"and the same mode, generation and integrity ($state)");
	is(ref $off->{last_engagement}, ref $on->{last_engagement}, "last_engagement has the same type ($state)");
}
my ($orc, $online) = run_cmd($cli, '-d', $conn, '--json', 'engage', 'emergency', '--reason', 'x');
$node->stop;
my ($frc, $offline) = run_cmd($cli, '-D', $pgdata, '--json', 'engage', 'emergency', '--reason', 'y');
is(keys_of($offline), keys_of($online), 'engage --json has the same members online and offline');

done_testing();
