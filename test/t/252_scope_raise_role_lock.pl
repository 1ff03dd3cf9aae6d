# A scope's raise never waits for its role's lock (found by review4): a
# session with CREATEROLE that begins DROP ROLE of an agent, or REVOKE of a
# member from a team, holds the role's lock exclusively to its end.  The
# raise used to take that lock before it was in force, so it waited — not
# in force meanwhile, the agents writing — and with lock_timeout it failed.
# Now the raise is in force first and goes on without the lock; the open
# change looks at the scopes again at its pre-commit and is refused
# (scopemembers.c).  Only a change already past that look — committing —
# is waited for, untimed, and its commit seen.  Each interleaving is forced:
# the open changes are sessions the test keeps open, and the committing one
# sleeps at pre-commit after the kill switch's look (ks_test.commit_delay_ms,
# test/hooks/ks_test_hooks.so, loaded before killswitch).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $node = PostgreSQL::Test::Cluster->new('scope_raise_role_lock');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$hooks, killswitch'
max_prepared_transactions = 2
});
$node->start;
sub sql { return $node->safe_psql('postgres', shift); }

sql(q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE rolemaker LOGIN CREATEROLE IN ROLE killswitch_agent;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE etl_agents NOLOGIN;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent, etl_agents;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE ROLE team_s NOLOGIN;
CREATE ROLE agent_s LOGIN IN ROLE killswitch_agent, team_s;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});

# The operator's raise, with the timeouts a pager script sets: never waits
# on the role's lock, so neither timeout ends it.
sub raise
{
	my ($scope, $reason) = @_;
	my ($out, $err, $timed_out) = ('', '', 0);
	my $rc = $node->psql('postgres',
		"SET lock_timeout = '500ms'; SET statement_timeout = '3s'; SET client_min_messages = warning;\n"
		  . "SELECT mode FROM ks_engage('halt_all', '$reason', 'pager', scope => '$scope')",
		stdout => \$out, stderr => \$err, timeout => 20, timed_out => \$timed_out, extra_params => [ '-U', 'op' ]);
	return ($rc, $out, $err, $timed_out);
}

# A session of the agent, at work.
sub agent_session
{
	my ($role) = @_;
	my $s = $node->background_psql('postgres', extra_params => [ '-U', $role ], on_error_stop => 0);
	$s->query_safe('SELECT 1');
	return $s;
}

sub refused
{
	my ($s, $name) = @_;
	$s->{stderr} = '';
	$s->query('INSERT INTO t VALUES (1)');
	like($s->{stderr}, qr/kill switch engaged/, $name);
}

# 1. An open DROP ROLE of the scope's role.
my $agent = agent_session('agent_7');
my $dropper = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$dropper->query_safe('BEGIN; DROP ROLE agent_7');
my ($rc, $out, $err, $timed_out) = raise('agent_7', 'stop agent_7');
ok(!$timed_out && $rc == 0 && $out eq 'halt_all',
	'a scope\'s engage does not wait for an open DROP ROLE of its role (lock_timeout 500 ms)')
  or diag("rc $rc: $err");
refused($agent, 'agent_7\'s open session is refused');
$dropper->{stderr} = '';
$dropper->query('COMMIT');
like($dropper->{stderr}, qr/cannot drop role "agent_7" while a scope that holds it is halted/,
	'the DROP ROLE is refused at its commit (its second look sees the scope)');
is(sql(q{SELECT count(*) FROM pg_roles WHERE rolname = 'agent_7'}), '1', 'agent_7 still exists');
is(sql(q{SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole}), 'halt_all', 'and its scope is halted');
refused($agent, 'agent_7 stays refused');
$agent->quit;

# 2. An open REVOKE of a member from the scope's role.
$agent = agent_session('agent_8');
my $revoker = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$revoker->query_safe('BEGIN; REVOKE etl_agents FROM agent_8');
($rc, $out, $err, $timed_out) = raise('etl_agents', 'stop the etl team');
ok(!$timed_out && $rc == 0 && $out eq 'halt_all',
	'a team\'s engage does not wait for an open REVOKE from the team')
  or diag("rc $rc: $err");
refused($agent, 'agent_8, still in the team as committed, is refused');
$revoker->{stderr} = '';
$revoker->query('COMMIT');
like($revoker->{stderr}, qr/cannot revoke membership in role "etl_agents" while a scope that holds it is halted/,
	'the REVOKE is refused at its commit');
is(sql(q{SELECT pg_has_role('agent_8', 'etl_agents', 'MEMBER')}), 't', 'agent_8 is still in etl_agents');
refused($agent, 'agent_8 stays refused');
$agent->quit;

# 3. A REVOKE rolled back to a savepoint is not looked at again: the
# transaction commits though a scope over it was raised meanwhile.
$revoker->{stderr} = '';
$revoker->query_safe('BEGIN; SAVEPOINT s; REVOKE team_s FROM agent_s; ROLLBACK TO SAVEPOINT s');
($rc, $out, $err, $timed_out) = raise('team_s', 'stop team s');
ok(!$timed_out && $rc == 0, 'a raise of the scope over a REVOKE rolled back to a savepoint');
$revoker->{stderr} = '';
$revoker->query('COMMIT');
is($revoker->{stderr}, '', 'the transaction of the rolled-back REVOKE commits');
is(sql(q{SELECT pg_has_role('agent_s', 'team_s', 'MEMBER')}), 't', 'agent_s is still in team_s');
$revoker->quit;

# 4. A DROP ROLE already committing (past its second look, asleep before
# its commit record): the raise, in force, waits for it untimed — its
# lock_timeout does not end it — and then finds the role gone.
$agent = agent_session('agent_9');
$dropper->{stderr} = '';
# (held 10 s: a background psql, two polls and a query must fit in the hold
# on a loaded machine; the DROP ROLE committing before the raise waits
# would fail the test though the product is right)
$dropper->query_safe("SET ks_test.commit_delay_ms = 10000; BEGIN; DROP ROLE agent_9;");
$dropper->{stderr} = '';
$dropper->{stdin} .= "COMMIT;\n";
$dropper->{run}->pump_nb;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks l JOIN pg_roles r ON r.oid = l.objid
  WHERE l.locktype = 'object' AND l.objsubid = 1 AND l.mode = 'AccessExclusiveLock' AND l.granted AND r.rolname = 'agent_9'}),
	'the DROP ROLE is committing (it holds the role\'s second lock)');
my $raiser = $node->background_psql('postgres', extra_params => [ '-U', 'op' ], on_error_stop => 0);
$raiser->query_safe("SET lock_timeout = '200ms'; SET client_min_messages = warning");
$raiser->{stderr} = '';
$raiser->{stdin} .= "SELECT mode FROM ks_engage('halt_all', 'stop agent_9', 'pager', scope => 'agent_9');\n";
$raiser->{run}->pump_nb;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks l
  WHERE l.locktype = 'object' AND l.objsubid = 1 AND l.mode = 'AccessShareLock' AND NOT l.granted}),
	'the raise waits for the committing DROP ROLE');
refused($agent, 'agent_9\'s open session is refused while the raise waits (it is in force)');
$dropper->query('SELECT 1');
is($dropper->{stderr}, '', 'the DROP ROLE commits (it looked before the raise)');
$raiser->query('SELECT 1');
like($raiser->{stderr}, qr/role "agent_9" does not exist/, 'the raise then fails: no scope outlives its role');
unlike($raiser->{stderr}, qr/lock timeout/, 'and not by its lock_timeout');
is(sql(q{SELECT count(*) FROM ks_scopes() WHERE reason = 'stop agent_9'}), '0', 'no scope of the dropped role');
is(sql(q{SELECT count(*) FROM killswitch.events WHERE reason = 'stop agent_9'}), '0', 'and no event');
$dropper->query_safe('RESET ks_test.commit_delay_ms');
$raiser->quit;
eval { $agent->quit };

# 5. A transaction that deleted a membership is not prepared (its look
# at commit would come at COMMIT PREPARED, in no session's pre-commit).
$dropper->{stderr} = '';
sql('CREATE ROLE team_p NOLOGIN; CREATE ROLE agent_p LOGIN IN ROLE killswitch_agent, team_p');
$dropper->query("BEGIN; REVOKE team_p FROM agent_p; PREPARE TRANSACTION 'revoke'");
like($dropper->{stderr}, qr/cannot prepare a transaction that revoked a role membership or dropped a role/,
	'PREPARE TRANSACTION of a REVOKE is refused');
is(sql('SELECT count(*) FROM pg_prepared_xacts'), '0', 'nothing is prepared');
is(sql(q{SELECT pg_has_role('agent_p', 'team_p', 'MEMBER')}), 't', 'and agent_p is still in team_p');
$dropper->quit;

is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
done_testing();
