# Scoped halts on standbys (ARCHITECTURE §13): a standby's watcher takes the
# scopes the replayed history holds, after each replayed commit — so a scope
# raised or released on the primary is in force or gone on the standby once
# replay has brought it; the standby's agents in the scope see its mode and,
# in emergency, are refused every statement; a promotion keeps the scopes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $primary = ks_node('scope_primary', init => { allows_streaming => 1 });
$primary->safe_psql('postgres', q(
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
));
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('scope_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->start;

sub as_role
{
	my ($node, $role, $q) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? $out : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

$primary->safe_psql('postgres', "SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7')");
ok(ks_within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'halt_all'", 30),
	'the standby takes the scope replay brought');
is(as_role($standby, 'agent_7', 'SELECT ks_mode()'), 'halt_all', 'the agent in the scope sees its mode on the standby');
is(as_role($standby, 'agent_8', 'SELECT ks_mode()'), 'disengaged', 'an agent outside sees the fleet\'s');
is($standby->safe_psql('postgres', 'SELECT ks_mode()'), 'disengaged', 'the standby\'s fleet is not halted');

$primary->safe_psql('postgres', "SELECT ks_engage('emergency', 'worse', 'pager', scope => 'agent_7')");
ok(ks_within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'emergency'", 30),
	'the raise to emergency reaches the standby');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), 'KS001', 'in emergency the agent\'s reads are refused on the standby');
is(as_role($standby, 'agent_8', 'SELECT count(*) FROM t'), '0', 'an agent outside reads');

$primary->safe_psql('postgres', "SELECT ks_disengage('fixed', scope => 'agent_7')");
ok(ks_within($standby, "SELECT count(*) = 0 FROM ks_scopes()", 30), 'the release reaches the standby once replayed');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), '0', 'the agent reads again');

# a promotion keeps the scopes
$primary->safe_psql('postgres', "SELECT ks_engage('halt_all', 'before the failover', 'pager', scope => 'agent_8')");
ok(ks_within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_8'::regrole", 30), 'replayed');
$primary->stop('immediate');
$standby->promote;
ok(ks_within($standby, 'SELECT NOT pg_is_in_recovery()', 30), 'promoted');
is(as_role($standby, 'agent_8', 'INSERT INTO t VALUES (1)'), 'KS001', 'the promoted server keeps the scope');
is(as_role($standby, 'agent_7', 'INSERT INTO t VALUES (1)'), '', 'an agent outside writes');
$standby->safe_psql('postgres', "SELECT ks_disengage('after the failover', scope => 'agent_8')");
is(as_role($standby, 'agent_8', 'INSERT INTO t VALUES (2)'), '', 'and releases it');
is($standby->safe_psql('postgres', 'SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

done_testing();
