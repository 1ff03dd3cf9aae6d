# killswitch -D disengage --scope builds its release on the server's copy
# (pg_killswitch/scopes.json), never on the scope file in the state
# directory as it finds it (src/cli/offscope.c base_set(): of that file
# only a verified newer outside raise's raises are taken, never its
# lowers), and signs nothing that lowers more than the scope named.  A
# hostile agent holding only the signing secret and write access to the
# state directory plants, while the server is down, a scope file that
# drops another scope; an administrator's release of one scope releases
# that one only — the planted lower is not laundered through the release
# key, and the agent's scope stays in force after the start.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_cli_release_base');
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_scopes.json";

my $oid7 = agents(q{
SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7');
SELECT ks_engage('halt_all', 'agent_8 loops', 'pager', scope => 'agent_8');
});
my $oid8 = sql("SELECT 'agent_8'::regrole::oid");
is(refused('agent_8'), 'KS001', 'agent_8 is halted by its scope');
$node->stop;

# the agent (agent_8): the signing secret, the state directory; its own scope dropped
my $held = decode_json(slurp_file($file));
my %scopes = %{ $held->{scopes} };
delete $scopes{$oid8};
put(signed({ key_id => $held->{key_id}, scopes => \%scopes, version => $held->{version} + 1 }));

# an administrator releases agent_7's scope, and only that one
my ($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'agent_7 fixed', '--by', 'boss', '--scope', $oid7);
is($rc, 0, 'the administrator\'s release of agent_7 is written') or diag($err);
my $written = decode_json(slurp_file($file));
ok(exists $written->{scopes}{$oid8},
	'the release the administrator signed still holds agent_8\'s scope');

$node->start;
ok($node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)"),
	'agent_7\'s scope is released');
is(refused('agent_8'), 'KS001', 'agent_8 is still halted');
is(sql("SELECT count(*) FROM killswitch.events WHERE scope = $oid8 AND mode = 'disengaged'"), '0',
	'no release of agent_8\'s scope is recorded');

done_testing();
