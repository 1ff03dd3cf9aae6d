# The killswitch command: offline on the state directory (database down),
# online through libpq; exit codes a script can branch on; no SQL splicing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('cli');
my $pgdata = $node->data_dir;

sub sql { return $node->safe_psql('postgres', shift); }

# Run the command; return (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

my ($rc, $out, $err) = ks('--help');
is($rc, 0, '--help exits 0');
like($out, qr/Exit status: 0 disengaged or done, 2 engaged, 3 tampered, 1 error/, '--help documents the exit codes');

# 1. Offline, with the server down.
$node->stop;
($rc, $out) = ks('-D', $pgdata, 'status');
is($rc, 0, 'offline status of a fresh cluster: exit 0 (disengaged)');
like($out, qr/mode:\s+disengaged/, 'and says so');
($rc, $out) = ks('-D', $pgdata, '--json', 'status');
is(decode_json($out)->{mode}, 'DISENGAGED', '--json gives a JSON object');

($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'disengaged', '--reason', 'x');
is($rc, 1, 'engaging disengaged is refused') or diag($err);
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all');
is($rc, 1, 'engage without --reason is refused');

($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'HALT_ALL', '--reason', 'db is down', '--by', 'night-shift');
is($rc, 0, 'offline engage with the server down') or diag($err);
($rc) = ks('-D', $pgdata, 'status');
is($rc, 2, 'offline status now exits 2 (engaged)');
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_noncritical', '--reason', 'lower');
is($rc, 1, 'engaging a lower mode is refused');
like($err, qr/would lower it/, 'with a reason');

# An independent Python check verifies the file the command wrote.
my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
SKIP:
{
	skip 'python3 is not installed', 1 unless $python;
	my $check = q{
import hashlib, hmac, json, sys
d = sys.argv[1] + "/pg_killswitch/"
s = open(d + "signing.key").read().rstrip("\n").encode()
o = json.load(open(d + "kill_switch_state.json"))
sig = o.pop("signature")
print(hmac.compare_digest(hmac.new(s, json.dumps(o, separators=(",", ":"), sort_keys=True).encode(), hashlib.sha256).hexdigest(), sig))
};
	my ($pout, $perr);
	IPC::Run::run([ $python, '-c', $check, $pgdata ], '>', \$pout, '2>', \$perr);
	is($pout, "True\n", 'Python verifies the file the command wrote');
}

# 2. Start: the command's change is in force and recorded with source cli.
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'the change made while the server was down is in force');
ok($node->poll_query_until('postgres',
	"SELECT source || ':' || triggered_by FROM killswitch.events ORDER BY id DESC LIMIT 1", 'cli:night-shift'),
	'and recorded with source cli');

# 3. Offline while the server runs: the watcher applies it.
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'emergency', '--reason', 'offline write, server up');
is($rc, 0, 'offline engage with the server up') or diag($err);
ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'emergency'), 'the watcher applies it');
ok($node->poll_query_until('postgres',
	"SELECT source FROM killswitch.events ORDER BY id DESC LIMIT 1", 'cli'), 'recorded with source cli');

# 4. Online.
my $conn = $node->connstr('postgres');
($rc, $out) = ks('-d', $conn, 'status');
is($rc, 2, 'online status exits 2 while engaged');
($rc, $out, $err) = ks('-d', $conn, 'disengage', '--reason', 'online release', '--by', 'alice');
is($rc, 0, 'online disengage') or diag($err);
is(sql('SELECT ks_mode()'), 'disengaged', 'released');
my $nasty = q{it's "quoted"; '); DROP TABLE killswitch.events; -- \\ done};
($rc, $out, $err) = ks('-d', $conn, 'engage', 'halt_all', '--reason', $nasty);
is($rc, 0, 'online engage with a hostile reason') or diag($err);
is(sql('SELECT reason FROM killswitch.events ORDER BY id DESC LIMIT 1'), $nasty,
	'the reason arrives verbatim: parameters, never spliced into SQL');
($rc, $out) = ks('-d', $conn, 'verify');
is($rc, 0, 'online verify exits 0 on an intact history');
($rc, $out) = ks('-d', $conn, 'history', '--limit', '3');
is($rc, 0, 'online history');
is(scalar(split /\n/, $out), 3, 'prints the last 3 events');
($rc, $out) = ks('-d', $conn, '--json', 'history');
is(scalar @{ decode_json($out) }, sql('SELECT count(*) FROM killswitch.events'), '--json history lists every event');
($rc, $out, $err) = ks('-d', 'host=/nonexistent dbname=x', 'status');
is($rc, 1, 'a connection failure exits 1');

# 5. A file that cannot be trusted: status 3; an engage is written on top of
#    it (nothing about the file stops an engage), the untrusted file kept
#    beside it for the server to judge; a release is not, without --force.
$node->stop;
open my $fh, '>', "$pgdata/pg_killswitch/kill_switch_state.json" or die $!;
print $fh '{"mode": "DISENGAGED"}';
close $fh;
($rc, $out) = ks('-D', $pgdata, 'status');
is($rc, 3, 'an unsigned file: status exits 3 (tampered)');
($rc) = ks('-D', $pgdata, 'verify');
is($rc, 3, 'and verify exits 3');
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'on top');
is($rc, 0, 'an engage is written over it') or diag($err);
like($err, qr/cannot be trusted.*\n.*kept beside it/, 'saying the untrusted file is kept for the server');
my @kept = glob("$pgdata/pg_killswitch/kill_switch_state.json.raced.*");
is(scalar(@kept), 1, 'kept as a raced file');
is(slurp_file($kept[0]), '{"mode": "DISENGAGED"}', 'holding the untrusted bytes');
unlink @kept;
open $fh, '>', "$pgdata/pg_killswitch/kill_switch_state.json" or die $!;
print $fh '{"mode": "DISENGAGED"}';
close $fh;
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'on top');
is($rc, 3, 'a release refuses to build on it');
like($err, qr/cannot be trusted/, 'saying why');
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'forced', '--force');
is($rc, 0, '--force writes a trusted file over it') or diag($err);
($rc) = ks('-D', $pgdata, 'verify');
is($rc, 0, 'which verifies');
($rc, $out, $err) = ks('-D', $pgdata, 'history');
is($rc, 1, 'history needs a connection');

# 6. A tamper verdict the server wrote stands, offline and across a restart,
# until someone changes the state.
open $fh, '>', "$pgdata/pg_killswitch/kill_switch_state.json" or die $!;
print $fh '{"mode": "DISENGAGED"}';
close $fh;
$node->start;
ok($node->poll_query_until('postgres',
	"SELECT source = 'tamper' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'the server records its verdict on the unsigned file');
$node->stop;
($rc, $out) = ks('-D', $pgdata, 'status');
is($rc, 3, 'offline status of the verdict exits 3 (tampered)');
like($out, qr/source:\s+tamper.*\n.*integrity:\s+tampered/s, 'and says why');
($rc) = ks('-D', $pgdata, 'verify');
is($rc, 0, 'though the file the server wrote verifies');
$node->start;
($rc, $out) = ks('-d', $conn, 'status');
is($rc, 3, 'after a restart, online status still exits 3');
($rc, $out, $err) = ks('-d', $conn, 'disengage', '--reason', 'investigated', '--by', 'admin');
is($rc, 0, 'an admin releases') or diag($err);
($rc) = ks('-d', $conn, 'status');
is($rc, 0, 'and the verdict is gone');
$node->stop;

done_testing();
