# Hostile review of the scoped halts (issue 23, ARCHITECTURE §13): each
# case reproduces a finding and is marked TODO until it is fixed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('review2_scope');
sub sql { return $node->safe_psql('postgres', shift); }
sub agent_session
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
CREATE ROLE team NOLOGIN;
CREATE ROLE agent_m LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});

# Finding 1 (stuck halt): a raise whose transaction ends before its event is
# recorded (its event was to follow: the ordering lock was busy — before
# TAP 221's change, it waited for the lock and lock_timeout ended it) must
# not leave its raise in flight in shared memory: in force though nothing
# committed, not shown by ks_scopes(), lowered by no release.
sql('CREATE ROLE agent_s LOGIN IN ROLE killswitch_agent; CREATE ROLE other_scope NOLOGIN');
my $holder = $node->background_psql('postgres');
$holder->query_safe("SET client_min_messages = warning; BEGIN; SELECT ks_engage('halt_all', 'holds the ordering lock', 'pager', scope => 'other_scope')");
my $raiser = $node->background_psql('postgres', on_error_stop => 0);
$raiser->query_safe("SET client_min_messages = warning; SET lock_timeout = '300ms'; BEGIN; SELECT ks_engage('halt_all', 'rolled back', 'pager', scope => 'agent_s')");
my ($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'agent_s' ]);
like($err, qr/kill switch engaged/, 'behind the busy lock, the raise of agent_s is in force at once');
$raiser->query_safe('ROLLBACK');
$holder->query_safe('ROLLBACK');
$holder->quit;
is(sql(q{SELECT count(*) FROM killswitch.events WHERE scope = 'agent_s'::regrole}), '0', 'no event of agent_s committed');
is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'ks_scopes() shows no scope');
{
	($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'agent_s' ]);
	is($err, '', 'agent_s, in no scope, writes');
	($rc, $out, $err) = $node->psql('postgres', "SELECT ks_mode()", extra_params => [ '-U', 'agent_s' ]);
	is($out, 'disengaged', 'and sees the fleet\'s mode');
}
($rc, $out, $err) = $node->psql('postgres', "SELECT ks_disengage('try', 'boss', scope => 'agent_s')");
like($err, qr/is not halted/, 'and no release can lower it: the scope "is not halted"');
sql('DELETE FROM t');

# The same raise, its session ended by a FATAL error (pg_terminate_backend)
# before its commit: its exit takes the raise in flight back.
$holder = $node->background_psql('postgres');
$holder->query_safe("SET client_min_messages = warning; BEGIN; SELECT ks_engage('halt_all', 'holds the ordering lock', 'pager', scope => 'other_scope')");
$raiser->query_safe("BEGIN; SELECT ks_engage('halt_all', 'terminated', 'pager', scope => 'agent_s')");
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'agent_s' ]);
like($err, qr/kill switch engaged/, 'while its transaction is open, the raise of agent_s is in force');
sql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%terminated%' AND pid <> pg_backend_pid()});
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE query LIKE '%terminated%' AND pid <> pg_backend_pid()})
  or die 'the raiser does not exit';
$raiser->{run}->finish;
$holder->query_safe('ROLLBACK');
$holder->quit;
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'agent_s' ]);
is($err, '', 'once its session was terminated, agent_s writes');
sql('DELETE FROM t');

# Finding 4 (lost halt, by a role manager): a team's scope was lowered for
# its members, without a release, an event or an administrator, by anyone
# with CREATEROLE (not a member of killswitch_admin): REVOKE of the team
# membership, or DROP ROLE of an intermediate group role.  Now both are
# refused while the scope is halted (scopemembers.c; the matrix is TAP 231).
sql(q{
CREATE ROLE role_manager LOGIN CREATEROLE;
CREATE ROLE etl_agents NOLOGIN;
CREATE ROLE etl_inner NOLOGIN IN ROLE etl_agents;
CREATE ROLE etl_a LOGIN IN ROLE killswitch_agent, etl_inner;
CREATE ROLE etl_b LOGIN IN ROLE killswitch_agent, etl_agents;
SET client_min_messages = warning;
SELECT ks_engage('halt_all', 'etl team loops', 'pager', scope => 'etl_agents');
});
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'etl_a' ]);
like($err, qr/KS001|kill switch engaged/, 'etl_a, in the team through etl_inner, is refused');
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'etl_b' ]);
like($err, qr/kill switch engaged/, 'etl_b, in the team directly, is refused');
my $events_before = sql(q{SELECT count(*) FROM killswitch.events WHERE scope = 'etl_agents'::regrole});
($rc, $out, $err) = $node->psql('postgres', 'DROP ROLE etl_inner', extra_params => [ '-U', 'role_manager' ]);
like($err, qr/cannot drop role "etl_inner" while a scope that holds it is halted/,
	'a CREATEROLE role, no killswitch administrator, cannot drop etl_inner');
($rc, $out, $err) = $node->psql('postgres', 'REVOKE etl_agents FROM etl_b', extra_params => [ '-U', 'role_manager' ]);
like($err, qr/cannot revoke membership in role "etl_agents" while a scope that holds it is halted/,
	'nor revoke etl_b\'s membership in the team');
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (2)', extra_params => [ '-U', 'etl_a' ]);
like($err, qr/kill switch engaged/, 'etl_a is still halted (only a committed release lowers a scope)');
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (3)', extra_params => [ '-U', 'etl_b' ]);
like($err, qr/kill switch engaged/, 'etl_b is still halted');
is(sql(q{SELECT count(*) FROM killswitch.events WHERE scope = 'etl_agents'::regrole}), $events_before,
	'and the chain recorded nothing: the scope still says halt_all');
is(sql(q{SELECT count(*) FROM ks_scopes() WHERE scope = 'etl_agents'::regrole AND mode = 'halt_all'}), '1',
	'ks_scopes() still shows the team halted');
sql('DELETE FROM t');

# Finding 5 (stuck scope): DROP ROLE's refusal (OAT_DROP) is decided
# before the drop commits, and a raise neither locks the role nor sees the
# uncommitted drop: a raise that commits between them leaves an active scope
# on a role that no longer exists.  It can never be released
# (ks_disengage(scope => name) says the role does not exist), and it holds
# a slot of the 10,000 for good.  Now DROP ROLE looks at the scopes again
# at its pre-commit (scopemembers.c): a raise that came while the drop was
# open — it does not wait for the drop (TAP 252) — refuses the drop.
sql('CREATE ROLE agent_z LOGIN IN ROLE killswitch_agent');
my $z = sql(q{SELECT 'agent_z'::regrole::oid});
my $dropper = $node->background_psql('postgres', on_error_stop => 0);
$dropper->query_safe('BEGIN; DROP ROLE agent_z');
$raiser = $node->background_psql('postgres', on_error_stop => 0);
$raiser->query_safe('SET client_min_messages = warning');
$raiser->{stderr} = '';
$raiser->query("SELECT (ks_engage('halt_all', 'racing the drop', 'pager', scope => 'agent_z')).mode");
is($raiser->{stderr}, '', 'a raise does not wait for an open DROP ROLE of its role');
$dropper->{stderr} = '';
$dropper->query('COMMIT');
like($dropper->{stderr}, qr/cannot drop role "agent_z" while a scope that holds it is halted/,
	'the DROP ROLE is refused at its commit');
is(sql(qq{SELECT count(*) FROM ks_scopes() WHERE scope::oid = $z}), '1', 'the scope is active and its role exists');
is(sql(qq{SELECT count(*) FROM pg_roles WHERE oid = $z}), '1', 'so no active scope outlives its role');
sql("SELECT ks_disengage('done', scope => 'agent_z')");

# The other order: a DROP ROLE waits for the raise under way, then is refused.
sql('CREATE ROLE agent_y LOGIN IN ROLE killswitch_agent');
$raiser->{stderr} = '';
$raiser->query_safe("BEGIN; SELECT ks_engage('halt_all', 'before the drop', 'pager', scope => 'agent_y')");
$dropper->{stderr} = '';
$dropper->{stdin} .= "DROP ROLE agent_y;\n";
$dropper->{run}->pump_nb;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DROP ROLE agent_y%'})
  or die 'the DROP ROLE does not wait for the raise';
$raiser->query_safe('COMMIT');
$dropper->query('SELECT 1');
like($dropper->{stderr}, qr/cannot drop role "agent_y" while its scope is halted/, 'a DROP ROLE racing a raise waits for it and is refused');
is(sql(q{SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_y'::regrole}), '1', 'the scope of agent_y is active, its role kept');
$raiser->quit;
$dropper->quit;

# Finding 2 (lost halt): KS_MAX_SCOPE_RAISES was not enforced on its own; one
# transaction could hold every one of the 11,000 slots with raises in flight,
# and at its commit ks_scope_set_committed() found no free slot and silently
# skipped a scope whose event committed.  Now a raise beyond the limits is
# refused before its event is recorded, and a commit keeps its raise in
# flight's slot.
# (a node of its own: the first has scopes of its own)
$node->stop;
$node = ks_node('review2_full');
sql(q{
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
CREATE ROLE agent_lost LOGIN IN ROLE killswitch_agent;
DO $$ BEGIN
  FOR g IN 1..10001 LOOP
    EXECUTE format('CREATE ROLE %I NOLOGIN', 's' || lpad(g::text, 5, '0'));
  END LOOP;
END $$;
GRANT s00001 TO agent_lost;
});
sub raise_range
{
	my ($from, $to) = @_;
	return $node->psql('postgres', qq{SET client_min_messages = warning;
SELECT count(ks_engage('halt_all', 'bulk', 'pager', scope => 's' || lpad(g::text, 5, '0')))
  FROM generate_series($from, $to) g}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
}
($rc, $out, $err) = raise_range(1, 1001);
like($err, qr/54000: too many raises of scopes in flight/, 'a transaction raising 1,001 new scopes is refused (program_limit_exceeded)');
is(sql(q{SELECT count(*) FROM killswitch.events WHERE scope IS NOT NULL}), '0', 'and no event of a scope was recorded');
is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'and no scope is active');
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (1)', extra_params => [ '-U', 'agent_lost' ]);
is($err, '', 'and agent_lost writes');
sql('DELETE FROM t');
for my $k (0 .. 9)
{
	($rc, $out, $err) = raise_range($k * 1000 + 1, $k * 1000 + 1000);
	is($out, '1000', "scopes " . ($k * 1000 + 1) . " to " . ($k * 1000 + 1000) . " are raised in one transaction") or diag($err);
}
is(sql('SELECT count(*) FROM ks_scopes()'), '10000', 'KS_MAX_SCOPES (10,000) scopes are active');
is(sql(q{SELECT count(*) FROM ks_scopes() WHERE scope = 's00001'::regrole}), '1', 'scope s00001 is active');
($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO t VALUES (3)', extra_params => [ '-U', 'agent_lost' ]);
like($err, qr/kill switch engaged/, 'agent_lost, in scope s00001, is refused a write');
($rc, $out, $err) = raise_range(10001, 10001);
like($err, qr/54000: too many active scopes/, 'a 10,001st scope is refused (program_limit_exceeded)');
is(sql(q{SELECT count(*) FROM killswitch.events WHERE scope = 's10001'::regrole}), '0', 'and its event was not recorded');

# Finding 3 (wrong error): with every scope the set holds active, a raise of
# an ACTIVE scope was refused as "too many active scopes".  The committed
# scopes can no longer take the slots beside them: a raise of an active
# scope has them, after a restart too.
$node->restart;
is(sql('SELECT count(*) FROM ks_scopes()'), '10000', 'after a restart the 10,000 scopes are active');
($rc, $out, $err) = $node->psql('postgres',
	"SET client_min_messages = warning; SELECT (ks_engage('emergency', 'escalate', 'pager', scope => 's00002')).mode");
# (a WARNING that the scope file could not be written within its bound may
# come: the watcher's first look writes the 10,000 scopes under the writers'
# lock — the raise is in force all the same)
ok($rc == 0 && $err !~ /ERROR/, 'an active scope is raised to emergency') or diag($err);
# (its event may follow its commit — the watcher's first look holds the
# ordering lock while it settles 10,000 scopes — and ks_scopes() shows it once recorded)
ok(ks_within($node, q{SELECT mode = 'emergency' FROM ks_scopes() WHERE scope = 's00002'::regrole}, 60),
	'and is in emergency');
($rc, $out, $err) = $node->psql('postgres', q{SET client_min_messages = warning;
SELECT count(ks_engage('emergency', 'escalate all', 'pager', scope => 's' || lpad(g::text, 5, '0')))
  FROM generate_series(3, 1002) g});
is($out, '1000', 'and 1,000 active scopes in one transaction');

# Finding 3, its remainder: while 1,000 raises are in flight at once (here
# one open transaction's, of active scopes) and every slot is in use, a
# raise of another active scope is still never refused: it is made in the
# scope's committed entry (scope.c raise_in_place()).  The open transaction
# holds the ordering lock too, so its event follows its commit.
my $bulk = $node->background_psql('postgres');
$bulk->query_safe(q{SET client_min_messages = warning; BEGIN;
SELECT count(ks_engage('emergency', 'escalate more', 'pager', scope => 's' || lpad(g::text, 5, '0')))
  FROM generate_series(1003, 2002) g});
($rc, $out, $err) = $node->psql('postgres',
	"SET client_min_messages = warning; SELECT (ks_engage('emergency', 'escalate', 'pager', scope => 's02003')).mode");
is($err, '', 'an active scope is raised while 1,000 raises are in flight');
is(sql(q{SELECT mode FROM ks_scopes() WHERE scope = 's02003'::regrole}), 'emergency', 'in force at once, in its committed entry');
# such a raise that rolls back is an extra halt until the watcher settles the entry by the chain
my $inplace = $node->background_psql('postgres');
$inplace->query_safe(q{SET client_min_messages = warning; BEGIN;
SELECT ks_engage('emergency', 'in place, rolled back', 'pager', scope => 's02004')});
is(sql(q{SELECT mode FROM ks_scopes() WHERE scope = 's02004'::regrole}), 'emergency', 'another, in a transaction: in force');
$inplace->query_safe('ROLLBACK');
$inplace->quit;
$bulk->query_safe('ROLLBACK');
$bulk->quit;
ok($node->poll_query_until('postgres', q{SELECT mode = 'halt_all' FROM ks_scopes() WHERE scope = 's02004'::regrole}),
	'the rolled-back raise made in place is settled back by the watcher (not left higher for good)');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'escalate' AND scope = 's02003'::regrole}),
	'the committed one is recorded once the lock is free');
is(sql(q{SELECT mode FROM ks_scopes() WHERE scope = 's02003'::regrole}), 'emergency', 'and stays');
is(sql(q{SELECT count(*) FROM killswitch.events WHERE reason = 'in place, rolled back'}), '0', 'the rolled-back one has no event');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

done_testing();
