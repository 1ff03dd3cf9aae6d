# killswitch --scope ROLE (ARCHITECTURE §13): the CLI's online path engages
# and releases a scoped halt through SQL, on one cluster and on several; the
# offline path (-D) refuses it, as do the commands it does not apply to.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('scope_cli');
my $other = ks_node('scope_cli_other');
sub sql { return $node->safe_psql('postgres', shift); }
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}
for my $n ($node, $other)
{
	$n->safe_psql('postgres', q{
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});
}
my $conn = $node->connstr('postgres');

my ($rc, $out, $err) = ks('--help');
like($out, qr/--scope=ROLE/, '--help documents --scope');

# engage a scope: in force for the agent, not for the fleet
($rc, $out, $err) = ks('-d', $conn, 'engage', 'halt_all', '--reason', 'agent_7 loops', '--by', 'pager', '--scope', 'agent_7');
is($rc, 0, 'killswitch --scope engage exits 0') or diag($err);
like($out, qr/^scope agent_7: halt_all \(event \d+, its generation 1\)$/, 'and says what it did');
is(sql("SELECT mode || ',' || reason || ',' || triggered_by FROM ks_scopes() WHERE scope = 'agent_7'::regrole"),
	'halt_all,agent_7 loops,pager', 'the scope is active, as asked');
is(sql('SELECT ks_mode()'), 'disengaged', 'the fleet is not halted');
($rc, $out, $err) = ks('-d', $conn, 'status');
is($rc, 0, 'status: the fleet is disengaged (exit 0)');

# --json names the scope
($rc, $out, $err) = ks('-d', $conn, '--json', 'engage', 'emergency', '--reason', 'worse', '--scope', 'agent_7');
my $j = decode_json($out);
is($j->{scope}, 'agent_7', '--json names the scope');
is($j->{generation}, 2, 'with the scope\'s generation');

# bad input: a clear error, nothing changed
($rc, $out, $err) = ks('-d', $conn, 'engage', 'halt_all', '--reason', 'x', '--scope', 'no_such_role');
is($rc, 1, 'an unknown role: exit 1');
like($err, qr/role "no_such_role" does not exist/, 'the server says why');
($rc, $out, $err) = ks('-D', $node->data_dir, 'engage', 'halt_all', '--reason', 'x', '--scope', 'agent_7');
is($rc, 1, 'offline, --scope is refused');
like($err, qr/--scope needs a connection \(-d\)/, 'with its reason');
($rc, $out, $err) = ks('-d', $conn, 'status', '--scope', 'agent_7');
like($err, qr/--scope applies to engage and disengage only/, 'status refuses --scope');
is(sql('SELECT count(*) FROM killswitch.events WHERE scope IS NOT NULL'), '2', 'nothing more was recorded');

# release (the test's connection is a superuser's)
($rc, $out, $err) = ks('-d', $conn, 'disengage', '--reason', 'fixed', '--scope', 'agent_7');
is($rc, 0, 'killswitch --scope disengage exits 0') or diag($err);
is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'released');

# several clusters at once
($rc, $out, $err) = ks('-d', $conn, '-d', $other->connstr('postgres'), 'engage', 'halt_all',
	'--reason', 'fleet-wide scope', '--scope', 'agent_8');
is($rc, 0, 'a scope on two clusters at once') or diag($err);
for my $n ($node, $other)
{
	is($n->safe_psql('postgres', "SELECT mode FROM ks_scopes() WHERE scope = 'agent_8'::regrole"), 'halt_all',
		$n->name . ': the scope is active');
	is($n->safe_psql('postgres', 'SELECT ks_mode()'), 'disengaged', $n->name . ': the fleet is not halted');
}
($rc, $out, $err) = ks('-d', $conn, '-d', $other->connstr('postgres'), 'disengage',
	'--reason', 'done', '--scope', 'agent_8');
is($rc, 0, 'released on both') or diag($err);
is($other->safe_psql('postgres', 'SELECT count(*) FROM ks_scopes()'), '0', 'the other cluster has no scope left');

done_testing();
