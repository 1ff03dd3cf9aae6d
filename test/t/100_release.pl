# Holding what agents hold is never enough to release (ARCHITECTURE §3, §4).
# Agents hold the shared secret to verify the state file, so they can sign
# any file with it; a file that lowers the mode must also carry a
# release_signature made with the release key, which agents never hold.
# Without it the file is tampering — at start and while running — and the
# mode becomes at least halt_all.  Raising needs only the signature.  The
# writers here are Python (standard library only), written the reference
# library's way: in place, indent=2, no generation.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use Digest::SHA qw(sha256_hex);
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('release');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }
sub mode { return sql('SELECT ks_mode()'); }
sub integrity { return sql("SELECT ks_status()->>'integrity'"); }
sub tampers { return sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"); }

# Run a Python snippet with the state directory as argv[1].
sub python
{
	my ($code, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $python, '-c', $code, $dir, @args ], '>', \$out, '2>', \$err);
	diag($err) if $err;
	chomp $out;
	return $out;
}

# Write the file as the library does, with the shared secret; argv: mode,
# how ('' plain; 'release' with the release key at argv[3], naming the
# state it replaces; 'forge' a release_signature made with the shared
# secret; 'alter' a genuine release_signature, then the reason changed and
# only signature redone).
my $write = <<'PY';
import hashlib, hmac, json, sys
from datetime import datetime, timezone
d, mode, how = sys.argv[1], sys.argv[2], sys.argv[3]
def key(path):
    k = open(path).read()
    return (k[:-1] if k.endswith("\n") else k).encode("utf-8")
def canon(o, *skip):
    return json.dumps({k: v for k, v in o.items() if k not in skip},
                      separators=(",", ":"), sort_keys=True).encode("utf-8")
secret = key(d + "/signing.key")
data = {"mode": mode, "engaged_at": datetime.now(timezone.utc).isoformat(),
        "reason": "written by a python agent (" + (how or "plain") + ")", "triggered_by": "agent-7"}
if how in ("release", "alter"):
    # a release names the state it replaces: the signature of the file it reads
    data["replaces"] = json.load(open(d + "/kill_switch_state.json", encoding="utf-8"))["signature"]
    rk = key(sys.argv[4])
    data["release_key_id"] = hashlib.sha256(rk).hexdigest()[:16]
    data["release_signature"] = hmac.new(rk, canon(data), hashlib.sha256).hexdigest()
if how == "forge":
    data["release_signature"] = hmac.new(secret, canon(data), hashlib.sha256).hexdigest()
if how == "alter":
    data["reason"] = "altered after the release was signed"
data["signature"] = hmac.new(secret, canon(data, "signature"), hashlib.sha256).hexdigest()
with open(d + "/kill_switch_state.json", "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
PY

# Check a file the way the reference library does (signature over every
# member but itself), and its release_signature with the release key.
my $verify = <<'PY';
import hashlib, hmac, json, sys
d = sys.argv[1]
def key(path):
    k = open(path).read()
    return (k[:-1] if k.endswith("\n") else k).encode("utf-8")
o = json.load(open(d + "/kill_switch_state.json", encoding="utf-8"))
sig = o.pop("signature")
good = hmac.compare_digest(hmac.new(key(d + "/signing.key"), json.dumps(o, separators=(",", ":"), sort_keys=True).encode(), hashlib.sha256).hexdigest(), sig)
rsig = o.pop("release_signature", "")
rgood = hmac.compare_digest(hmac.new(key(d + "/release.key"), json.dumps(o, separators=(",", ":"), sort_keys=True).encode(), hashlib.sha256).hexdigest(), rsig)
print("signature %s, release_signature %s" % (good, rgood))
PY

# Run the killswitch command; (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# Wait until the watcher has judged a write: the newest event changed.
sub newest { return sql('SELECT max(id) FROM killswitch.events'); }
sub wait_judged
{
	my ($after, $what) = @_;
	ok($node->poll_query_until('postgres', "SELECT max(id) > $after FROM killswitch.events"),
		"$what: judged");
}

# 0. The release key: made at first start beside the secret, owner-only,
#    hidden from non-superusers.
ok(-f "$dir/release.key", 'the release key is created at first start');
is(sprintf('%04o', (stat "$dir/release.key")[2] & 07777), '0600', 'mode 0600');
like(slurp_file("$dir/release.key"), qr/^[0-9a-f]{64}\n\z/, '64 random hex characters');
isnt(ks_release_key($node), ks_secret($node), 'and not the signing secret');
sql('CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent');
my ($rc, $out, $err) = $node->psql('postgres', 'SHOW killswitch.release_key_file',
	extra_params => [ '-U', 'agent_7' ]);
isnt($rc, 0, 'an agent cannot SHOW killswitch.release_key_file');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_settings WHERE name = 'killswitch.release_key_file'",
	extra_params => [ '-U', 'agent_7' ]), 0, 'nor see it in pg_settings');
like(python($verify), qr/^signature True, release_signature True$/,
	'the file the server wrote carries both signatures, and the library\'s check passes');

# 1. While running.
sql("SELECT ks_engage('halt_all', 'incident', 'ops')");
my $before = tampers();
my $last = newest();
python($write, 'DISENGAGED', '');
wait_judged($last, 'a DISENGAGED file signed with the shared secret alone');
is(mode(), 'halt_all', 'it is not applied: the mode stays halt_all');
is(integrity(), 'tampered', 'it is judged tampering');
cmp_ok(tampers(), '>', $before, 'a tamper event is recorded');
like(sql("SELECT ks_status()->>'problem'"),
	qr/a release \(halt_all to disengaged\) without the release credential: it carries no release_signature/,
	'the problem says why');
like(slurp_file("$file.rejected"), qr/written by a python agent \(plain\)/, 'the forged file is kept as evidence');

sql("SELECT ks_engage('emergency', 'worse', 'ops')");
$last = newest();
python($write, 'HALT_NONCRITICAL', '');
wait_judged($last, 'a file lowering emergency to halt_noncritical');
is(mode(), 'emergency', 'a lowering file never lowers: emergency stays');

sql("SELECT ks_disengage('reset', 'admin'); SELECT ks_engage('halt_all', 'again', 'ops')");
$last = newest();
python($write, 'DISENGAGED', 'forge');
wait_judged($last, 'a release_signature made with the shared secret');
is(mode(), 'halt_all', 'a forged release_signature does not release');
like(sql("SELECT ks_status()->>'problem'"), qr/release_signature does not match/, 'and is named');

sql("SELECT ks_disengage('reset', 'admin'); SELECT ks_engage('halt_all', 'again', 'ops')");
$last = newest();
python($write, 'DISENGAGED', 'alter', "$dir/release.key");
wait_judged($last, 'a genuine release_signature over other contents');
is(mode(), 'halt_all', 'a release_signature covers the other members: altering them voids it');

sql("SELECT ks_disengage('reset', 'admin'); SELECT ks_engage('halt_all', 'again', 'ops')");
$last = newest();
python($write, 'DISENGAGED', 'release', "$dir/release.key");
wait_judged($last, 'a release signed by a Python writer holding the release key');
is(mode(), 'disengaged', 'it is applied');
is(integrity(), 'ok', 'and trusted');
is(sql('SELECT source || ' . "'|'" . ' || reason FROM killswitch.events ORDER BY id DESC LIMIT 1'),
	'file|written by a python agent (release)', 'recorded as a change from the file');

$last = newest();
python($write, 'HALT_ALL', '');
wait_judged($last, 'a HALT_ALL file signed with the shared secret alone');
is(mode(), 'halt_all', 'raising needs only the signature');
is(integrity(), 'ok', 'and is no tampering');

($rc, $out, $err) = ks('-D', $pgdata, '--release-key-file', "$dir/nonexistent.key",
	'disengage', '--reason', 'no key', '--by', 'night-shift');
is($rc, 1, 'an offline disengage without the release key is refused') or diag($err);
like($err, qr/a release needs the release key/, 'saying why');
$last = newest();
($rc, $out, $err) = ks('-D', $pgdata, '--release-key-file', "$dir/nonexistent.key",
	'engage', 'emergency', '--reason', 'no key needed', '--by', 'on-call');
is($rc, 0, 'an offline engage needs only the shared secret') or diag($err);
wait_judged($last, 'the engage the command wrote without the release key');
is(mode(), 'emergency', 'it is applied');
is(integrity(), 'ok', 'and trusted');
$last = newest();
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'cli release', '--by', 'night-shift');
is($rc, 0, 'an offline disengage with the release key') or diag($err);
wait_judged($last, 'the release the command wrote');
is(mode(), 'disengaged', 'it is applied while the server runs');
is(integrity(), 'ok', 'trusted');

# 2. At start.
sql("SELECT ks_engage('halt_all', 'before the restart', 'ops')");
$node->stop;
python($write, 'DISENGAGED', '');
$node->start;
is(mode(), 'halt_all', 'at start, a DISENGAGED file with the shared secret alone is not applied');
is(integrity(), 'tampered', 'it is judged tampering');
like(sql("SELECT ks_status()->>'problem'"), qr/without the release credential/, 'the problem says why');
ok($node->poll_query_until('postgres',
	"SELECT source = 'tamper' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'the verdict is recorded as a tamper event');

$node->stop;
python($write, 'DISENGAGED', 'forge');
$node->start;
is(mode(), 'halt_all', 'at start, a forged release_signature is not applied');

$node->stop;
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'released offline', '--by', 'night-shift');
is($rc, 0, 'an offline disengage with the server down') or diag($err);
like(python($verify), qr/^signature True, release_signature True$/,
	'the command\'s file carries both signatures, and the library\'s check passes');
$node->start;
is(mode(), 'disengaged', 'at start, the command\'s release is applied');
is(integrity(), 'ok', 'trusted');
ok($node->poll_query_until('postgres',
	"SELECT source || '|' || reason FROM killswitch.events ORDER BY id DESC LIMIT 1", 'cli|released offline'),
	'and recorded with source cli');

sql("SELECT ks_engage('halt_all', 'before the restart', 'ops')");
$node->stop;
python($write, 'DISENGAGED', 'release', "$dir/release.key");
$node->start;
is(mode(), 'disengaged', 'at start, a Python release with the release key is applied');
is(integrity(), 'ok', 'trusted');

# 3. Rotating the release key: a release signed with a retired key kept
#    beside the current one as release.key.<release_key_id> still counts.
sql("SELECT ks_engage('halt_all', 'before the rotation', 'ops')");
my $old_key = ks_release_key($node);
my $old_id = substr(sha256_hex($old_key), 0, 16);
rename "$dir/release.key", "$dir/release.key.$old_id" or die $!;
open my $fh, '>', "$dir/release.key" or die $!;
print $fh ('ab' x 32) . "\n";
close $fh;
chmod 0600, "$dir/release.key";
$last = newest();
python($write, 'DISENGAGED', 'release', "$dir/release.key.$old_id");
wait_judged($last, 'a release signed with the retired key');
is(mode(), 'disengaged', 'a retired release key kept beside the new one still releases');
sql("SELECT ks_engage('halt_all', 'after the rotation', 'ops')");
unlink "$dir/release.key.$old_id";
$last = newest();
{
	# the old key, gone from the directory: its signatures no longer count
	open my $k, '>', "$dir/old.key" or die $!;
	print $k "$old_key\n";
	close $k;
	python($write, 'DISENGAGED', 'release', "$dir/old.key");
	unlink "$dir/old.key";
}
wait_judged($last, 'a release signed with a key no longer kept');
is(mode(), 'halt_all', 'once the retired key is removed, its releases are tampering');

is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies after all of this');
$node->stop;
done_testing();
