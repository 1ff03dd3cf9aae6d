# The state file is shared with the reference Python library
# (hummbl-governance): an independent Python check — standard library only,
# exactly the library's json.dumps(..., separators=(",", ":"),
# sort_keys=True) + HMAC-SHA256 — verifies files the server writes, and
# files written the library's way are accepted by the server.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;

my $node = ks_node('interop');
my $dir = $node->data_dir . '/pg_killswitch';
my $src = $ENV{KS_SRCDIR} or die 'KS_SRCDIR is not set';

sub sql { return $node->safe_psql('postgres', shift); }

# Run a Python snippet with the state directory as argv[1]; return stdout.
sub python
{
	my ($code, @args) = @_;
	my ($out, $err);
	IPC::Run::run([ $python, '-c', $code, $dir, @args ], '>', \$out, '2>', \$err);
	diag($err) if $err;
	chomp $out if defined $out;
	return $out;
}

my $verify = <<'PY';
import hashlib, hmac, json, sys
d = sys.argv[1]
secret = open(d + "/signing.key").read()
if secret.endswith("\n"):
    secret = secret[:-1]
data = json.load(open(d + "/kill_switch_state.json", encoding="utf-8"))
sig = data.pop("signature")
canon = json.dumps(data, separators=(",", ":"), sort_keys=True)
good = hmac.compare_digest(hmac.new(secret.encode(), canon.encode(), hashlib.sha256).hexdigest(), sig)
print(json.dumps({"valid": good, "mode": data["mode"], "reason": data["reason"]}))
PY

# 1. Python verifies a file the server wrote, hard characters included.
my $reason = "quotes \" ' backslash \\ newline\n tab\t ctl\x01\x1f del\x7f caf\x{e9} \x{6771}\x{4eac} \x{1F680} /slash";
my $by = "by \\ \"x\"";
{
	my $lit = $reason;
	$lit =~ s/'/''/g;
	my $bylit = $by;
	$bylit =~ s/'/''/g;
	# E'' is not needed: the text goes in verbatim through a dollar-quoted literal
	$node->safe_psql('postgres', "SELECT ks_engage('halt_all', \$r\$$reason\$r\$, \$b\$$by\$b\$)");
}
my $res = JSON::PP->new->decode(python($verify));
ok($res->{valid}, 'Python verifies the signature of a file the server wrote');
is($res->{mode}, 'HALT_ALL', 'Python reads the mode the server enforces');
is($res->{reason}, $reason, 'Python reads the reason exactly, every hard character included');

# 2. A file written the library's way (in place, indent=2, no generation)
#    while the server is down is applied at the next start.
my $write = <<'PY';
import hashlib, hmac, json, sys
from datetime import datetime, timezone
d, mode, extra = sys.argv[1], sys.argv[2], sys.argv[3]
secret = open(d + "/signing.key").read()
if secret.endswith("\n"):
    secret = secret[:-1]
data = {"mode": mode, "engaged_at": datetime.now(timezone.utc).isoformat(),
        "reason": "written by the python library", "triggered_by": "cost_governor"}
if extra:
    data["failure_class"] = extra
canon = json.dumps({k: v for k, v in data.items() if k != "signature"}, separators=(",", ":"), sort_keys=True)
data["signature"] = hmac.new(secret.encode("utf-8"), canon.encode("utf-8"), hashlib.sha256).hexdigest()
with open(d + "/kill_switch_state.json", "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
PY
sql("SELECT ks_disengage('before the python write', 'tester')");
$node->stop;
python($write, 'HALT_ALL', '');
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'a file the library wrote while the server was down is applied at start');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'and trusted');
ok($node->poll_query_until('postgres',
	"SELECT reason = 'written by the python library' AND source = 'file' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'and recorded as a change from the file');

# 3. With the library's optional failure_class (signed too), while running.
python($write, 'EMERGENCY', 'BUDGET');
ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'emergency'),
	'a file with failure_class written while running is applied');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'extra members are covered by the signature');
$res = JSON::PP->new->decode(python($verify));
ok($res->{valid}, 'Python verifies the file the server rewrote after applying it');

# 4. The shipped vectors are exactly Python's output, and C reproduces them.
my $rederive = <<'PY';
import hashlib, hmac, json, sys
v = json.load(open(sys.argv[2]))
bad = [x["name"] for x in v["vectors"]
       if json.dumps(x["object"], separators=(",", ":"), sort_keys=True) != x["canonical"]
       or hmac.new(v["secret"].encode(), x["canonical"].encode(), hashlib.sha256).hexdigest() != x["signature"]]
print(len(v["vectors"]), "vectors;", "mismatches: " + ", ".join(bad) if bad else "all match")
PY
like(python($rederive, "$src/test/vectors/vectors.json"), qr/^\d+ vectors; all match$/,
	'Python re-derives every shipped vector');
my ($out, $err);
IPC::Run::run([ "$src/test/store_vectors", "$src/test/vectors/vectors.json" ], '>', \$out, '2>', \$err);
like($out, qr/^(\d+) passed, 0 failed$/m, 'the C implementation reproduces every vector');

$node->stop;
done_testing();
