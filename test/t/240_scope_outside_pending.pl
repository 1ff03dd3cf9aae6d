# An outside raise of the scope file that a round has put in force, but
# that no look has recorded yet ("pending"), stays in force and is recorded
# even when a later outside file — signed with the secret alone, the copy's
# own scope set at a higher version — lands before the look: what is in
# force is the copy plus the pending raises, and a newer file is merged
# into them, never replacing them (scopefile.c merge_pending()).  Leaving a
# pending raise out lowers nothing: only a look drops it, once recorded —
# so an agent holding the signing secret cannot lower a scope that way.
# Forced: a session holds the lock that orders changes, so no look can
# record the first raise before the second file lands (an agent holding
# killswitch_operator holds it the same way with an open ks_engage()).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_outside_pending');
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_scopes.json";
my $copy = "$pgdata/pg_killswitch/scopes.json";

my $oid7 = agents(q{
SELECT ks_engage('halt_all', 'agent_8 loops', 'pager', scope => 'agent_8');
});
is(refused('agent_7'), 'ok', 'agent_7 works before');

my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK TABLE killswitch.events IN SHARE ROW EXCLUSIVE MODE');

# an operator's legitimate outside raise of agent_7's scope
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'outside raise', '--scope', $oid7);
is($rc, 0, 'the outside raise is written') or diag($err);
ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'the round puts it in force');
my $raised = decode_json(slurp_file($file));

# the agent: the copy's own set (no scope lowered against the copy), newer version
my $held = decode_json(slurp_file($copy));
ok(!exists $held->{scopes}{$oid7}, 'the copy does not hold the outside raise yet');
put(signed({ key_id => $held->{key_id}, scopes => $held->{scopes},
	version => $raised->{version} + 1, replaces => $held->{signature} }));
my $v = $raised->{version} + 1;
ok($node->wait_for_log(qr/scope file was changed outside the server \(version $v\)/),
	'the round accepts the agent\'s file (no verdict: it lowers nothing against the copy)');

$holder->query_safe('COMMIT');
$holder->quit;
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 30),
	'a look has settled the scope file');

# the raise is recorded (README: "recorded as that scope's event")
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file'", 60),
	'the outside raise is recorded in the chain');
$node->restart;
is(refused('agent_7'), 'KS001', 'the outside raise survives a restart (agent_7 still refused)');
is(sql("SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), '1',
	'ks_scopes() still shows agent_7 after the restart');

done_testing();
