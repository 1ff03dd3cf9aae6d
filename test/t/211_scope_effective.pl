# A session's effective mode under scoped halts (ARCHITECTURE §13): an agent
# in a scope is refused its writes, its guarded task rows and its tasks; a
# sibling outside keeps working; SET ROLE does not escape; a team is halted
# through its group role; a membership granted after the raise is halted at
# once, and a REVOKE of it is refused until the release; a raise is in force
# before its commit and gone with its abort; a release is not in force before
# its commit; ks_wait() wakes for it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use KsTest;

my $node = ks_node('scope_effective');
sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as a role; return ('ok', 'KS001' or another SQLSTATE; stderr).
sub as_role
{
	my ($role, $q) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return ('ok', $err, $out) if $rc == 0;
	return ($err =~ /(?:ERROR|FATAL):  ([0-9A-Z]{5}):/ ? $1 : "error: $err", $err, $out);
}
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
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE helper NOLOGIN;
GRANT helper TO agent_7;
CREATE ROLE etl_agents NOLOGIN;
CREATE ROLE etl_inner NOLOGIN IN ROLE etl_agents;
CREATE ROLE etl_a LOGIN IN ROLE killswitch_agent;
GRANT etl_inner TO etl_a;
CREATE ROLE etl_worker LOGIN IN ROLE etl_agents;   -- a person in the team, no agent
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
CREATE TABLE tasks (task_type text, status text);
CREATE TRIGGER guard BEFORE INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION ks_guard('task_type');
GRANT ALL ON tasks TO PUBLIC;
});

# 1. One agent halted: refused; its sibling and the fleet go on.
sql("SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7')");
my ($got, $err) = as_role('agent_7', 'INSERT INTO t VALUES (1)');
is($got, 'KS001', 'an agent in the scope is refused a write');
like($err, qr/kill switch engaged \(halt_all\): a write by agent "agent_7" refused/, 'named as the halt refuses it');
($got, $err, my $out) = as_role('agent_7', "SELECT ks_check_task('report')->>'allowed', ks_task_allowed('report'), ks_mode()");
is($out, 'false|f|halt_all', 'ks_check_task(), ks_task_allowed() and ks_mode() show its scope');
($got) = as_role('agent_7', "SELECT ks_assert_task('report')");
is($got, 'KS001', 'ks_assert_task() refuses');
($got, $err) = as_role('agent_8', 'INSERT INTO t VALUES (8)');
is($got, 'ok', 'a sibling agent outside the scope writes') or diag($err);
($got, $err, $out) = as_role('agent_8', "SELECT ks_mode(), ks_engaged(), ks_task_allowed('report')");
is($out, 'disengaged|f|t', 'and sees the fleet\'s mode');
is(sql('SELECT ks_mode()'), 'disengaged', 'the fleet is not halted');

# 2. SET ROLE (to a non-agent) does not leave the scope; nor a SECURITY DEFINER function.
($got, $err) = as_role('agent_7', 'SET ROLE helper; INSERT INTO t VALUES (1)');
is($got, 'KS001', 'SET ROLE to a role outside the scope does not escape it');
sql(q{CREATE FUNCTION definer_add(v int) RETURNS int LANGUAGE sql SECURITY DEFINER
      AS 'INSERT INTO t VALUES (v) RETURNING v'});
($got) = as_role('agent_7', 'SELECT definer_add(1)');
is($got, 'KS001', 'a superuser\'s SECURITY DEFINER function does not escape it');

# 3. A team through a group role, at any depth; the guard for a person in it.
sql("SELECT ks_engage('halt_noncritical', 'etl team', 'pager', scope => 'etl_agents')");
($got, $err) = as_role('etl_a', 'INSERT INTO t VALUES (1)');
is($got, 'KS001', 'an agent in the team (through a nested group role) is refused');
like($err, qr/\(halt_noncritical\)/, 'at the team\'s mode');
($got, $err) = as_role('etl_worker', "INSERT INTO tasks VALUES ('load', 'new')");
isnt($got, 'ok', 'a task row of a person in the team is refused by ks_guard');
like($err, qr/KS001/, 'with the switch\'s SQLSTATE');
($got, $err) = as_role('agent_8', "INSERT INTO tasks VALUES ('load', 'new')");
is($got, 'ok', 'outside the team, task rows go on') or diag($err);

# 4. A membership granted after the raise: halted at once, in an open session.
my $s8 = agent_session('agent_8');
is(bg_err($s8, 'INSERT INTO t VALUES (81)'), '', 'agent_8 writes in its session');
# (A team of its own, late_team: a REVOKE is refused while the team is halted, TAP 231.)
sql(q{CREATE ROLE late_team NOLOGIN; SET client_min_messages = warning;
      SELECT ks_engage('halt_noncritical', 'late team', 'pager', scope => 'late_team')});
sql('GRANT late_team TO agent_8');
like(bg_err($s8, 'INSERT INTO t VALUES (82)'), qr/KS001/, 'granted into the team: its next statement is refused');
my ($rc4, $out4, $err4) = $node->psql('postgres', 'REVOKE late_team FROM agent_8');
like($err4, qr/cannot revoke membership in role "late_team"/, 'the REVOKE is refused while the team is halted');
like(bg_err($s8, 'INSERT INTO t VALUES (83)'), qr/KS001/, 'and agent_8 stays halted');
sql("SELECT ks_disengage('done', scope => 'late_team'); REVOKE late_team FROM agent_8");
is(bg_err($s8, 'INSERT INTO t VALUES (83)'), '', 'released, then revoked: it writes again');

# 5. A raise is in force before its commit, gone with its abort; a release only after its commit.
my $op = $node->background_psql('postgres');
$op->query_safe("BEGIN; SELECT ks_engage('halt_all', 'in flight', 'pager', scope => 'agent_8')");
like(bg_err($s8, 'INSERT INTO t VALUES (84)'), qr/KS001/, 'a scope raise is in force before its commit');
$op->query_safe('ROLLBACK');
is(bg_err($s8, 'INSERT INTO t VALUES (85)'), '', 'and gone when it rolls back');
$op->query_safe("BEGIN; SELECT ks_disengage('release in flight', 'boss', scope => 'agent_7')");
($got) = as_role('agent_7', 'INSERT INTO t VALUES (1)');
is($got, 'KS001', 'a release is not in force before its commit');
$op->query_safe('COMMIT');
($got, $err) = as_role('agent_7', 'INSERT INTO t VALUES (1)');
is($got, 'ok', 'committed, the agent writes') or diag($err);
$op->quit;

# 6. ks_wait() wakes for a raise of a scope the session is in.
my $gen = sql("SELECT ks_status()->>'generation'");
$s8->query_until(qr/waiting/, "\\echo waiting\nSELECT ks_wait($gen, 600000) AS woke;\n");
my $t0 = time;
sql("SELECT ks_engage('halt_all', 'wake up', 'pager', scope => 'agent_8')");
my ($woke) = $s8->query('SELECT 1');
cmp_ok(time - $t0, '<', 300, 'ks_wait() returned on the scope\'s raise, long before its timeout');
like(bg_err($s8, 'INSERT INTO t VALUES (86)'), qr/KS001/, 'and the session is halted');
$s8->quit;

# 7. Release everything; every agent writes.
sql("SELECT ks_disengage('done', scope => 'agent_8'); SELECT ks_disengage('done', scope => 'etl_agents')");
for my $role ('agent_7', 'agent_8', 'etl_a')
{
	($got, $err) = as_role($role, 'INSERT INTO t VALUES (9)');
	is($got, 'ok', "released: $role writes") or diag($err);
}
is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'no scope active');
is(sql("SELECT ks_status()->>'scopes_active'"), '0', 'ks_status() says so');

done_testing();
