# Scoped halts across restarts and crashes (ARCHITECTURE §13): the scope
# file kill_switch_scopes.json beside the state file and the server's copy
# pg_killswitch/scopes.json, signed; a committed scope survives a restart
# and a kill -9, a committed release too; a raise the file kept unconfirmed
# is in force from the start and gone once the watcher has settled it by
# the chain if it did not commit; a scope file that does not verify is a
# tamper verdict (halt_all), a missing one is put back; the fleet's state
# file is untouched by scopes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256_hex);
use JSON::PP;
use KsTest;

my $node = ks_node('scope_restart');
sub sql { return $node->safe_psql('postgres', shift); }
sub refused { return ks_refused($node, shift); }

sql(q{
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE ROLE etl_agents NOLOGIN;
GRANT etl_agents TO agent_9;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});
my $dir = sql('SHOW killswitch.state_dir');
$dir = $node->data_dir . "/$dir" unless $dir =~ m{^/};
my $file = "$dir/kill_switch_scopes.json";
my $copy = $node->data_dir . '/pg_killswitch/scopes.json';
my $state_file = "$dir/kill_switch_state.json";
my $secret = ks_secret($node);
my $oid7 = sql("SELECT 'agent_7'::regrole::oid");
my $oid8 = sql("SELECT 'agent_8'::regrole::oid");

# 1. The file: every scope in force, signed; the fleet's file untouched.
my $state_before = slurp_file($state_file);
sql("SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7')");
sql("SELECT ks_engage('emergency', 'etl bad data', 'pager', scope => 'etl_agents')");
is(slurp_file($state_file), $state_before, 'the fleet\'s state file is not touched by scopes');
my $text = slurp_file($file);
is($text, slurp_file($copy), 'the scope file and the server\'s copy hold the same bytes');
my $obj = decode_json($text);
my $sig = delete $obj->{signature};
is($sig, hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($obj), $secret),
	'signed: HMAC-SHA256 under the secret over the canonical form of the rest');
is_deeply([ sort keys %{ $obj->{scopes} } ], [ sort($oid7, sql("SELECT 'etl_agents'::regrole::oid")) ],
	'it holds both scopes, by role OID');
is($obj->{scopes}{$oid7}{mode}, 'HALT_ALL', 'with their modes');
is($obj->{scopes}{$oid7}{unconfirmed}, JSON::PP::false, 'committed');
my $version = $obj->{version};

# 2. A restart keeps them; a committed release is kept too.
$node->restart;
is(refused('agent_7'), 'KS001', 'after a restart agent_7 is still halted');
is(refused('agent_9'), 'KS001', 'and the team');
is(refused('agent_8'), 'ok', 'an agent outside writes');
is(sql("SELECT string_agg(scope::text || '=' || mode || ':' || generation, ',' ORDER BY scope::text) FROM ks_scopes()"),
	'agent_7=halt_all:1,etl_agents=emergency:1', 'ks_scopes() after the restart');
sql("SELECT ks_disengage('etl fixed', 'boss', scope => 'etl_agents')");
$node->restart;
is(refused('agent_9'), 'ok', 'a committed release survives a restart');
is(refused('agent_7'), 'KS001', 'the other scope stays');

# 3. kill -9: a committed scope survives, a raise not yet committed does not.
sql("SELECT ks_engage('halt_noncritical', 'agent_8 too', 'pager', scope => 'agent_8')");
my $open = $node->background_psql('postgres');
$open->query_safe("BEGIN; SELECT ks_engage('emergency', 'never committed', 'pager', scope => 'agent_7')");
ks_kill9_and_start($node);
is(refused('agent_8'), 'KS001', 'after kill -9, a committed scope is in force');
ok(ks_within($node, "SELECT mode = 'halt_all' FROM ks_scopes() WHERE scope = 'agent_7'::regrole", 30),
	'a raise whose transaction never committed is not (agent_7 at its committed halt_all)');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

# 4. A raise the file kept unconfirmed (its transaction wrote the file at
# pre-commit, then the server crashed before the commit record) is in force
# from the start, and goes once the watcher has settled it by the chain.
sub write_scopes
{
	my (%scopes) = @_;
	my $o = { key_id => decode_json(slurp_file($copy))->{key_id}, scopes => \%scopes,
		version => decode_json(slurp_file($copy))->{version} + 1 };
	$o->{signature} = hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($o), $secret);
	my $t = JSON::PP->new->canonical->ascii->encode($o) . "\n";
	for my $f ($copy, $file)
	{
		open(my $fh, '>', $f) or die "$f: $!";
		print $fh $t;
		close $fh;
	}
}
my $gen7 = sql("SELECT generation FROM ks_scopes() WHERE scope = 'agent_7'::regrole");
my $gen8 = sql("SELECT generation FROM ks_scopes() WHERE scope = 'agent_8'::regrole");
$node->stop('immediate');
write_scopes(
	$oid7 => { generation => $gen7 + 0, mode => 'HALT_ALL', since => '2026-01-01T00:00:00.000000+00:00', unconfirmed => JSON::PP::false },
	$oid8 => { generation => $gen8 + 1, mode => 'EMERGENCY', since => '2026-01-01T00:00:00.000000+00:00', unconfirmed => JSON::PP::true });
# first without the history: the watcher cannot settle, the raise is held
$node->append_conf('postgresql.conf', "killswitch.database = 'no_such_db'\n");
$node->start;
is(refused('agent_8'), 'KS001', 'an unconfirmed raise from the file is in force at start');
like(sql("SELECT ks_mode() FROM (SELECT set_config('role', 'agent_8', true)) s"), qr/emergency/,
	'at the mode the file kept');
$node->stop;
$node->append_conf('postgresql.conf', "killswitch.database = 'postgres'\n");
$node->start;
ok(ks_within($node, "SELECT mode = 'halt_noncritical' FROM ks_scopes() WHERE scope = 'agent_8'::regrole", 30),
	'settled by the chain: the raise that never committed is gone, the committed mode stays');
ok(ks_within($node, "SELECT NOT (pg_read_file('$copy') ~ '\"unconfirmed\":true')", 30),
	'and the file was written again without it');

# 5. A scope file that does not verify is a tamper verdict; a missing one is put back.
$node->stop;
my $good = slurp_file($file);
(my $bad = $good) =~ s/"HALT_NONCRITICAL"/"DISENGAGED"/;
isnt($bad, $good, 'the test changes the file');
PostgreSQL::Test::Utils::append_to_file("$file.new", $bad);
rename("$file.new", $file) or die;
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'a scope file with a bad signature: the fleet is tampered');
is(sql('SELECT ks_mode()'), 'halt_all', 'at halt_all');
ok(ks_within($node, "SELECT count(*) > 0 FROM killswitch.events WHERE source = 'tamper' AND reason LIKE '%scope file%'", 30),
	'the verdict is recorded, naming the scope file');
is(refused('agent_8'), 'KS001', 'the scopes the copy holds are in force');
sql("SELECT ks_disengage('checked the scope file', 'boss')");
is(sql('SELECT ks_mode()'), 'disengaged', 'an administrator releases the fleet');
is(refused('agent_8'), 'KS001', 'the scope stays');

$node->stop;
unlink $file or die;
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'a missing scope file is no verdict');
is(slurp_file($file), slurp_file($copy), 'it is put back from the server\'s copy');
is(refused('agent_8'), 'KS001', 'and its scopes are in force');

$node->stop;
PostgreSQL::Test::Utils::append_to_file("$file.new", "{not json");
rename("$file.new", $file) or die;
$node->start;
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'an unparsable scope file is a tamper verdict');
ok(-e "$file.rejected", 'set aside as kill_switch_scopes.json.rejected');
is(slurp_file($file), slurp_file($copy), 'and the server\'s bytes put back');

# 6. While the server runs: a scope file that is not the server's own bytes
# is a tamper verdict too, and the server's bytes are put back.
sql("SELECT ks_disengage('checked again', 'boss')");
is(sql("SELECT ks_status()->>'integrity' || ' ' || ks_mode()"), 'ok disengaged', 'released');
my $ours = slurp_file($copy);
is(slurp_file($file), $ours, 'the scope file holds the server\'s bytes');
sql("SELECT ks_engage('halt_noncritical', 'a look', 'pager'); SELECT ks_disengage('a look', 'boss')");
ok(ks_within($node, "SELECT ks_status()->>'generation' = (SELECT max(generation)::text FROM killswitch.events WHERE scope IS NULL)", 30),
	'the watcher has looked');
is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper' AND reason LIKE 'scope file rejected%'"), '0',
	'no verdict of the running server yet');
(my $forged = $ours) =~ s/"version":/"version":1000/;
PostgreSQL::Test::Utils::append_to_file("$file.new", $forged);
rename("$file.new", $file) or die;
ok(ks_within($node, "SELECT ks_status()->>'integrity' = 'tampered' AND ks_mode() = 'halt_all'", 30),
	'an outside write of the scope file while running: the fleet is tampered, at halt_all');
ok(ks_within($node, "SELECT count(*) > 0 FROM killswitch.events WHERE source = 'tamper' AND reason LIKE 'scope file rejected%'", 30),
	'the verdict is recorded');
is(slurp_file($file), $ours, 'the server\'s bytes are put back');
is(refused('agent_8'), 'KS001', 'the scopes in force are unchanged');
# the server's own writes are no verdict
sql("SELECT ks_disengage('checked', 'boss')");
sql("SELECT ks_engage('halt_all', 'one more', 'pager', scope => 'agent_9')");
sql("SELECT ks_disengage('one more done', scope => 'agent_9')");
sql("SELECT ks_engage('halt_noncritical', 'marker', 'pager')");
ok(ks_within($node, "SELECT ks_status()->>'generation' = (SELECT max(generation)::text FROM killswitch.events WHERE scope IS NULL)", 30),
	'the watcher has looked again');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'the server\'s own writes of the scope file are no verdict');
is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper' AND reason LIKE 'scope file rejected%'"), '1',
	'one verdict only');

done_testing();
