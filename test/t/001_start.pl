# The state at server start (ARCHITECTURE §2, §4): a halt survives restarts and
# immediate shutdowns; a state file that cannot be trusted at start means at
# least halt_all, reported as tampered; without preloading, nothing
# half-works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('start');

my $dir = $node->data_dir . '/pg_killswitch';
my $file = "$dir/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }

# 1. Files created at first start, owner-only.
ok(-f $file, 'the state file exists after the first start');
is(sprintf('%o', (stat $file)[2] & 07777), '600', 'the state file is mode 0600');
is(sprintf('%o', (stat "$dir/signing.key")[2] & 07777), '600', 'the secret is mode 0600');
like(slurp_file("$dir/signing.key"), qr/^[0-9a-f]{64}\n\z/, 'the secret is 64 hex characters');
is(decode_json(slurp_file($file))->{mode}, 'DISENGAGED', 'a first start is disengaged');

# 2. A halt survives pg_ctl restart and an immediate shutdown.
sql("SELECT ks_engage('halt_all', 'survive a restart', 'tester')");
my $gen = sql("SELECT ks_status()->>'generation'");
$node->restart;
is(sql('SELECT ks_mode()'), 'halt_all', 'halt_all survives pg_ctl restart');
is(sql("SELECT ks_status()->>'generation'"), $gen, 'with the same generation');
sql("SELECT ks_engage('emergency', 'survive a crash', 'tester')");
$node->stop('immediate');
$node->start;
is(sql('SELECT ks_mode()'), 'emergency', 'emergency survives an immediate shutdown');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'and the file is trusted');
sql("SELECT ks_disengage('released', 'tester')");
$node->restart;
is(sql('SELECT ks_mode()'), 'disengaged', 'a release survives a restart too');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies after restarts');

# 3. Every bad file at start: at least halt_all, tampered, a warning, a tamper event.
my $secret = ks_secret($node);
sub signed { return ks_signed_text($secret, @_); }

sub put
{
	my ($text) = @_;
	unlink $file;
	open my $fh, '>', $file or die $!;
	print $fh $text;
	close $fh;
}

my $good_gen = sql("SELECT (ks_status()->>'generation')::bigint") + 1;
my %variants = (
	'unsigned, asking for DISENGAGED' => sub { put('{"mode": "DISENGAGED", "reason": "no signature"}') },
	'wrong signature' => sub {
		my $t = signed(mode => 'DISENGAGED', generation => $good_gen + 50);
		$t =~ s/"signature" : "(.)/"signature" : "@{[$1 eq 'a' ? 'b' : 'a']}/;
		put($t);
	},
	'truncated JSON' => sub { put('{"mode": "DISENGAGED", "reas') },
	'garbage bytes' => sub { put("\xde\xad\xbe\xef\x00 not json") },
	'unknown mode' => sub { put(signed(mode => 'STOP', generation => $good_gen + 50)) },
	'wrong types' => sub { put(signed(mode => 5, generation => $good_gen + 50)) },
	'an empty file' => sub { put('') },
	'a directory' => sub { unlink $file; mkdir $file or die $! },
	'a symlink to a signed file' => sub {
		open my $o, '>', "$dir/elsewhere.json" or die $!;
		print $o signed(mode => 'DISENGAGED', generation => $good_gen + 50);
		close $o;
		unlink $file;
		symlink "$dir/elsewhere.json", $file or die $!;
	},
	'a 2 MB file' => sub { put('{"mode": "DISENGAGED", "pad": "' . ('x' x (2 * 1024 * 1024)) . '"}') },
	'unreadable' => sub { put(signed(mode => 'DISENGAGED', generation => $good_gen + 50)); chmod 0000, $file },
);
for my $name (sort keys %variants)
{
	$node->stop;
	$variants{$name}->();
	my $log_offset = -s $node->logfile;
	$node->start;
	is(sql("SELECT ks_mode() >= 'halt_all'"), 't', "$name at start: at least halt_all");
	is(sql("SELECT ks_status()->>'integrity'"), 'tampered', "$name at start: tampered");
	ok($node->log_contains(qr/the kill switch state could not be trusted/, $log_offset), "$name at start: a warning in the log");
	ok($node->poll_query_until('postgres',
		"SELECT source = 'tamper' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
		"$name at start: recorded as a tamper event");
	# clean up what the variant left, and release as an admin would
	rmdir "$file.rejected" if -d "$file.rejected";
	unlink "$dir/elsewhere.json";
	chmod 0600, "$file.rejected" if -e "$file.rejected";
	sql("SELECT ks_disengage('after $name', 'admin')");
	is(sql('SELECT ks_mode()'), 'disengaged', "$name: an admin releases");
}

# 4. A validly signed but older file put back while the server was down: a replay.
my $old = slurp_file($file);
sql("SELECT ks_engage('halt_noncritical', 'newer', 'tester')");
sql("SELECT ks_disengage('newer still', 'tester')");
$node->stop;
put($old);
$node->start;
is(sql("SELECT ks_mode() >= 'halt_all'"), 't', 'an older signed file at start is a replay: halt_all');
like(sql("SELECT ks_status()->>'problem'"), qr/replay/, 'and the problem says so');
sql("SELECT ks_disengage('after the replay', 'admin')");

# 5. Deleted while the server was down: the state is kept, the file rewritten.
sql("SELECT ks_engage('halt_all', 'before the deletion', 'tester')");
$node->stop;
unlink $file;
$node->start;
is(sql('SELECT ks_mode()'), 'halt_all', 'a file deleted while down never releases');
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'and is reported as tampered');
ok(-f $file, 'the file is written again');
ok($node->poll_query_until('postgres',
	"SELECT source = 'tamper' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
	'the verdict is recorded');
my $events = sql('SELECT count(*) FROM killswitch.events');
$node->restart;
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'the verdict stands across a restart');
like(sql("SELECT ks_status()->>'problem'"), qr/deleted while the server was down/, 'with its problem');
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'watcher_checked_at' IS NOT NULL"),
	'the watcher looks again');
is(sql('SELECT count(*) FROM killswitch.events'), $events, 'and a restart records nothing new');
sql("SELECT ks_disengage('after the deletion', 'admin')");
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'a release ends the verdict');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies after all of this');
$node->stop;

# 6. Not preloaded: a clear error and a hint, never a crash.
my $plain = PostgreSQL::Test::Cluster->new('not_preloaded');
$plain->init;
$plain->start;
my ($out, $err) = ('', '');
$plain->psql('postgres', 'CREATE EXTENSION killswitch CASCADE', stdout => \$out, stderr => \$err);
like($err, qr/killswitch must be loaded via shared_preload_libraries/, 'CREATE EXTENSION without preloading fails clearly');
like($err, qr/HINT:  Add 'killswitch' to shared_preload_libraries/, 'with a hint');
is($plain->safe_psql('postgres', 'SELECT count(*) FROM pg_extension WHERE extname = \'killswitch\''), '0',
	'and nothing is installed');
is($plain->safe_psql('postgres', 'SELECT 1'), '1', 'the server keeps running');
$plain->stop;

# 7. The extension belongs in killswitch.database only.
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE elsewhere');
$node->psql('elsewhere', 'CREATE EXTENSION killswitch CASCADE', stderr => \$err);
like($err, qr/can only be created in database "postgres".*\n.*\n.*killswitch\.database/s,
	'another database is refused, naming killswitch.database');
$node->stop;
done_testing();
