# Emergency for a scope (ARCHITECTURE §13, §9): the watcher ends the busy
# sessions of the agents the scope holds — those in a transaction begun
# before the scope entered emergency — and rolls back their prepared
# transactions, and nothing else: an agent outside the scope keeps its
# busy session, its prepared transaction, and goes on working; an idle
# session in the scope stays, each of its statements refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('scope_emergency', conf => "max_prepared_transactions = 10\n");
sub sql { return $node->safe_psql('postgres', shift); }
sub session
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', shift ]);
	$bg->query_safe('\set VERBOSITY verbose');
	return $bg;
}
sub bg_err
{
	my ($bg, $q) = @_;
	$bg->{stderr} = '';
	$bg->query($q);
	return $bg->{stderr};
}

sql(q{
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE etl_agents NOLOGIN;
CREATE ROLE etl_a LOGIN IN ROLE killswitch_agent, etl_agents;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});

# prepared transactions, in the scope and outside it
for my $role ('agent_7', 'agent_8')
{
	my ($out, $err) = ('', '');
	$node->psql('postgres', "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'prep_$role'",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
}
is(sql('SELECT string_agg(gid, \',\' ORDER BY gid) FROM pg_prepared_xacts'), 'prep_agent_7,prep_agent_8',
	'two agents prepared a transaction');

# busy (in a transaction) and idle sessions, in the scope and outside it
my $busy7 = session('agent_7');
$busy7->query_safe('BEGIN; INSERT INTO t VALUES (7)');
my $pid7 = $busy7->query_safe('SELECT pg_backend_pid()');
my $idle7 = session('agent_7');
my $idlepid7 = $idle7->query_safe('SELECT pg_backend_pid()');
my $busy8 = session('agent_8');
$busy8->query_safe('BEGIN; INSERT INTO t VALUES (8)');
my $pid8 = $busy8->query_safe('SELECT pg_backend_pid()');
my $busyetl = session('etl_a');
$busyetl->query_safe('BEGIN; INSERT INTO t VALUES (9)');
my $pidetl = $busyetl->query_safe('SELECT pg_backend_pid()');

sql("SELECT ks_engage('emergency', 'agent_7 runs away', 'pager', scope => 'agent_7')");
ok(ks_within($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid7", 30),
	'the busy session of the agent in the scope is ended');
# (the tick that ended it looked at every busy session: the others were not its scope's)
ok(ks_within($node, "SELECT count(*) = 0 FROM pg_prepared_xacts WHERE gid = 'prep_agent_7'", 30),
	'the prepared transaction of the agent in the scope is rolled back');
is(sql('SELECT string_agg(gid, \',\') FROM pg_prepared_xacts'), 'prep_agent_8', 'the other agent\'s stays');
like(slurp_file($node->logfile), qr/WARNING:  scope "agent_7" is in emergency: \d+ busy agent sessions ended/,
	'a WARNING says the scope is in emergency');
is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid IN ($pid8, $pidetl, $idlepid7)"), '3',
	'the busy sessions outside the scope and the idle one inside stay');
is(bg_err($busy8, 'INSERT INTO t VALUES (80); COMMIT'), '', 'the agent outside the scope goes on and commits');
like(bg_err($idle7, 'SELECT 1'), qr/KS001: kill switch engaged \(emergency\): any statement by agent "agent_7" refused/,
	'the idle session in the scope stays, each statement refused');
like(bg_err($idle7, 'SELECT 1'), qr/A scoped halt holds this session's role/, 'and the refusal says a scope holds it');
is(sql('SELECT ks_mode()'), 'disengaged', 'the fleet is not in emergency');

# a team scope in emergency: its agent's busy session ended
sql("SELECT ks_engage('emergency', 'etl runs away', 'pager', scope => 'etl_agents')");
ok(ks_within($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pidetl", 30),
	'the busy session of a team member is ended');
is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $idlepid7"), '1', 'the idle one stays');

# released: the idle session works again
sql("SELECT ks_disengage('ok', scope => 'agent_7'); SELECT ks_disengage('ok', scope => 'etl_agents')");
is(bg_err($idle7, 'INSERT INTO t VALUES (70)'), '', 'released, the idle session in the scope writes again');
sql("ROLLBACK PREPARED 'prep_agent_8'");
$idle7->quit;
$busy8->quit;
eval { $busy7->quit };
eval { $busyetl->quit };

done_testing();
