# review5: attacks on the handshake between a scope's raise and a membership
# change (scopemembers.c, bb1d45c).  Every interleaving is forced: the
# sessions are kept open with background_psql and each step waits for the
# lock state it needs in pg_locks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $node = PostgreSQL::Test::Cluster->new('review5_role_lock');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$hooks, killswitch'
});
$node->start;
sub sql { return $node->safe_psql('postgres', shift); }

# team_b is made before team_a: its OID is lower, so a change over both
# takes team_b's second lock first.
sql(q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE rolemaker LOGIN CREATEROLE IN ROLE killswitch_agent;
CREATE ROLE team_b NOLOGIN;
CREATE ROLE team_a NOLOGIN;
CREATE ROLE crew NOLOGIN IN ROLE team_a, team_b;
CREATE ROLE agent_c LOGIN IN ROLE killswitch_agent, crew;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});

sub until_locks
{
	my ($where, $name) = @_;
	ok($node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_locks l JOIN pg_roles r ON r.oid = l.objid WHERE l.locktype = 'object' AND $where"),
		$name);
}

# 1. A deadlock that loses an operator's raises.  The change's second look
# takes the second locks one by one, waiting for each: while it waits for
# one held by a raise, it already holds another exclusively, and a raise
# that finds that one busy takes it for "committing" and waits for it.
# One transaction of the operator that raises team_a, then team_b, closes
# the cycle; the deadlock detector ends whichever waited its
# deadlock_timeout while the cycle stood — here the operator's (the
# rolemaker's check ran before the cycle was closed, as it does when the
# operator's second raise comes more than deadlock_timeout later).
sql(q{ALTER ROLE rolemaker SET deadlock_timeout = '10min'});
my $agent = $node->background_psql('postgres', extra_params => [ '-U', 'agent_c' ], on_error_stop => 0);
$agent->query_safe('SELECT 1');
my $revoker = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$revoker->query_safe('BEGIN; REVOKE crew FROM agent_c');
my $op = $node->background_psql('postgres', extra_params => [ '-U', 'op' ], on_error_stop => 0);
$op->query_safe("SET client_min_messages = warning; BEGIN");
$op->query_safe("SELECT mode FROM ks_engage('halt_all', 'stop team a', 'pager', scope => 'team_a')");
until_locks(q{l.objsubid = 1 AND l.mode = 'AccessShareLock' AND l.granted AND r.rolname = 'team_a'},
	'the raise of team_a went on without its role\'s lock (it holds the second lock shared)');
$revoker->{stderr} = '';
$revoker->{stdin} .= "COMMIT;\n";
$revoker->{run}->pump_nb;
ok($node->poll_query_until('postgres', q{SELECT state = 'idle' OR wait_event_type = 'Lock'
  FROM pg_stat_activity WHERE usename = 'rolemaker'}),
	'the REVOKE\'s commit has ended or waits for a lock');
is(sql(q{SELECT count(*) FROM pg_locks l JOIN pg_roles r ON r.oid = l.objid WHERE l.locktype = 'object'
  AND l.objsubid = 1 AND NOT l.granted}), '0',
	'the REVOKE\'s second look does not wait for the raise of team_a (holding team_b\'s second lock)');
$op->{stderr} = '';
$op->query("SELECT mode FROM ks_engage('halt_all', 'stop team b', 'pager', scope => 'team_b')");
unlike($op->{stderr}, qr/deadlock/, 'the raise of team_b is not ended by a deadlock');
$op->{stderr} = '';
$op->query('COMMIT');
is($op->{stderr}, '', 'the operator\'s transaction commits');
is(sql(q{SELECT string_agg(scope::text || '=' || mode, ',' ORDER BY scope::text) FROM ks_scopes() WHERE reason LIKE 'stop team%'}),
	'team_a=halt_all,team_b=halt_all', 'both scopes are halted');
$revoker->query('SELECT 1');
like($revoker->{stderr}, qr/cannot revoke membership in role "crew" while a scope that holds it is being raised/, 'the REVOKE is refused at its second look, without waiting');
is(sql(q{SELECT pg_has_role('agent_c', 'crew', 'MEMBER')}), 't', 'agent_c is still in crew');
$agent->{stderr} = '';
$agent->query('INSERT INTO t VALUES (1)');
like($agent->{stderr}, qr/kill switch engaged/, 'agent_c is refused');
$agent->quit;
$op->quit;
$revoker->quit;

is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
done_testing();
