# Issue 19, items 1 and 4, the file side: a release names the state it
# releases (ARCHITECTURE §3) — a file that lowers the mode, or clears a
# tamper verdict, needs a valid release_signature AND "replaces" naming the
# state the server holds — so a saved release can never be replayed, and the
# signing secret alone never clears a verdict.
#
# 1. The README's administrators' subclass of the reference library (the
#    block after "Releasing through the library", run as written against
#    the library stand-in test/python/hummbl_governance/): the library's own
#    verification accepts its file, and the server applies it, at start and
#    while running.
# 2. A saved release replayed: an administrators' tool whose clock runs an
#    hour ahead writes a release without a generation (the library writes
#    none); the server orders such files by engaged_at, so after a later
#    engage the saved copy still looks newer — only "replaces" tells it is
#    a release of a state that is gone.  Forced by the file's own engaged_at.
# 3. killswitch -D writes "replaces"; releases without it, or naming another
#    state, are tampering.
# 4. A same-mode signed write after a tamper verdict keeps "tampered"; a
#    raise keeps it too; a release naming the held state clears it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;

my $src = $ENV{KS_SRCDIR};
my $cli = "$src/src/cli/killswitch";
my $node = ks_node('replaces');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";
my $secret = ks_secret($node);
my $release_key = ks_release_key($node);

sub sql { return $node->safe_psql('postgres', shift); }
sub status { return sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"); }
sub events { return sql('SELECT count(*) FROM killswitch.events'); }

sub judged
{
	my ($n, $what) = @_;
	ok($node->poll_query_until('postgres', "SELECT count(*) > $n FROM killswitch.events"),
		"$what: judged");
	is(events(), $n + 1, "$what: one event");
}

sub put_file
{
	my ($text) = @_;
	open my $fh, '>', "$file.new" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.new", $file or die $!;
}

sub iso
{
	my ($offset) = @_;
	my ($s, $us) = Time::HiRes::gettimeofday();
	my @t = gmtime($s + $offset);
	return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00',
		$t[5] + 1900, $t[4] + 1, @t[3, 2, 1, 0], $us);
}

# The README's block, run as written, with the names it leaves to the reader.
my $readme = slurp_file("$src/README.md");
my $marker = index($readme, '**Releasing through the library.**');
my $start = index($readme, '```python', $marker);
my $end = index($readme, '```', $start + 9);
ok($marker > 0 && $start > $marker, 'the README has the administrators\' subclass');
my $block = substr($readme, $start + 9, $end - $start - 9);
$block =~ s/^  //mg;
my $prelude = <<'PY';
import sys
from pathlib import Path
def key(path):
    k = open(path, "rb").read()
    return k[:-1] if k.endswith(b"\n") else k
state_dir = Path(sys.argv[1])
secret = key(sys.argv[1] + "/signing.key")
release_key = key(sys.argv[1] + "/release.key")
PY
my $verify = <<'PY';
import sys
from pathlib import Path
from hummbl_governance import KillSwitch
k = open(sys.argv[1] + "/signing.key", "rb").read().rstrip(b"\n")
print(KillSwitch.load_from_file(Path(sys.argv[1]), signing_secret=k).mode.name)
PY

sub python
{
	my ($code) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PYTHONPATH} = "$src/test/python";
	IPC::Run::run([ $python, '-c', $code, $dir ], '>', \$out, '2>', \$err);
	diag($err) if $err;
	chomp $out;
	return $? >> 8;
}

# 1. The README's subclass: with the server down, then running.
sql("SELECT ks_engage('halt_all', 'incident', 'ops')");
ks_held_signature($node);
$node->stop;
is(python($prelude . $block), 0, 'the README\'s block runs');
my $written = decode_json(slurp_file($file));
is($written->{replaces}, decode_json(slurp_file("$dir/last_applied.json"))->{signature},
	'its file names the state it replaces');
ok($written->{release_signature}, 'and carries a release signature');
{
	my ($out, $err) = ('', '');
	local $ENV{PYTHONPATH} = "$src/test/python";
	IPC::Run::run([ $python, '-c', $verify, $dir ], '>', \$out, '2>', \$err);
	is($out, "DISENGAGED\n", 'the library\'s own verification accepts it') or diag($err);
}
$node->start;
is(status(), 'disengaged ok', 'at start, the server applies it');
ok($node->poll_query_until('postgres',
	"SELECT source || '|' || reason FROM killswitch.events ORDER BY id DESC LIMIT 1",
	'file|root cause fixed: INC-1234'), 'and records it');

sql("SELECT ks_engage('halt_all', 'incident 2', 'ops')");
ks_held_signature($node);
my $n = events();
is(python($prelude . $block), 0, 'the README\'s block runs while the server runs');
judged($n, 'the subclass\'s release');
is(status(), 'disengaged ok', 'it is applied');

# 2. A saved release of an administrators' tool whose clock runs ahead.
sql("SELECT ks_engage('halt_all', 'incident 3', 'ops')");
my $saved = ks_release_signed_text($secret, $release_key, mode => 'DISENGAGED',
	engaged_at => iso(3600), reason => 'released from a clock an hour ahead',
	triggered_by => 'alice', replaces => ks_held_signature($node));
$n = events();
put_file($saved);
judged($n, 'the release');
is(status(), 'disengaged ok', 'the release is applied');
sql("SELECT ks_engage('halt_all', 'incident 4', 'ops')");
ks_held_signature($node);
$n = events();
put_file($saved);
judged($n, 'the saved release put back after a later engage');
is(status(), 'halt_all tampered', 'it does not release: halt_all, tampered');
like(sql("SELECT ks_status()->>'problem'"), qr/names another state than the one held/,
	'the problem says it names another state');
sql("SELECT ks_disengage('reset', 'admin')");

# 3. The command writes replaces; releases without it, or naming another state.
#    (With the server down, so that its file is seen before the server's.)
sql("SELECT ks_engage('halt_all', 'incident 5', 'ops')");
my $held = ks_held_signature($node);
my ($out, $err) = ('', '');
$node->stop;
IPC::Run::run([ $cli, '-D', $pgdata, 'disengage', '--reason', 'cli release', '--by', 'alice' ],
	'>', \$out, '2>', \$err);
is($? >> 8, 0, 'killswitch -D disengage') or diag($err);
is(decode_json(slurp_file($file))->{replaces}, $held, 'the command names the state the server holds');
$node->start;
is(status(), 'disengaged ok', 'and its release is applied');

for my $case ([ 'without replaces', undef, qr/does not name the state it replaces/ ],
	[ 'naming another state', 'ab' x 32, qr/names another state than the one held/ ])
{
	sql("SELECT ks_engage('halt_all', 'incident: $case->[0]', 'ops')");
	ks_held_signature($node);
	$n = events();
	put_file(ks_release_signed_text($secret, $release_key, mode => 'DISENGAGED', engaged_at => iso(0),
		reason => "release $case->[0]", triggered_by => 'alice',
		defined $case->[1] ? (replaces => $case->[1]) : ()));
	judged($n, "a release $case->[0]");
	is(status(), 'halt_all tampered', "a release $case->[0] is tampering");
	like(sql("SELECT ks_status()->>'problem'"), $case->[2], 'saying why');
	sql("SELECT ks_disengage('reset', 'admin')");
}

# 4. A tamper verdict stands until a release.
$n = events();
put_file('{"mode": "DISENGAGED"}');
judged($n, 'an unsigned file');
is(status(), 'halt_all tampered', 'a tamper verdict');
my $gen = sql("SELECT ks_status()->>'generation'");
$n = events();
put_file(ks_signed_text($secret, mode => 'HALT_ALL', engaged_at => iso(0), reason => 'all fine, honest',
	triggered_by => 'agent-7', generation => $gen + 1));
judged($n, 'a same-mode signed write (the signing secret alone)');
is(status(), 'halt_all tampered', 'a same-mode signed write after a verdict keeps tampered');
like(sql("SELECT ks_status()->>'problem'"), qr/would clear the tamper verdict/, 'saying why');
$gen = sql("SELECT ks_status()->>'generation'");
$n = events();
put_file(ks_signed_text($secret, mode => 'EMERGENCY', engaged_at => iso(0), reason => 'worse',
	triggered_by => 'agent-7', generation => $gen + 1));
judged($n, 'a raising signed write');
is(status(), 'emergency tampered', 'a raise stands, and keeps tampered');
$node->restart;
is(status(), 'emergency tampered', 'across a restart');
$n = events();
put_file(ks_release_signed_text($secret, $release_key, mode => 'EMERGENCY', engaged_at => iso(0),
	reason => 'checked: the verdict is cleared', triggered_by => 'alice',
	generation => sql("SELECT ks_status()->>'generation'") + 1, replaces => ks_held_signature($node)));
judged($n, 'a release-signed same-mode write naming the held state');
is(status(), 'emergency ok', 'clearing a verdict with the release credential works');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
