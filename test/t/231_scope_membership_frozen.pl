# Membership inside a halted scope is frozen (ARCHITECTURE §13, scopemembers.c):
# while a scope is active, no REVOKE, ALTER GROUP ... DROP USER or DROP ROLE
# takes a role out of it — by a CREATEROLE role manager or by a superuser —
# and its agents stay refused throughout; after the release each is allowed.
# A REVOKE racing a raise either waits for the raise and is refused, or is
# refused at its own commit (the raise never waits for it); a REVOKE
# racing a GRANT into a halted scope waits for it and is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('scope_members');
sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as a role; return its stderr ('' when it succeeded).
sub as_role
{
	my ($role, $q) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $err;
}

# Send a statement to a session without waiting for its end, and see it
# wait for a lock (its query in pg_stat_activity LIKE $like).
sub waits
{
	my ($session, $statement, $like, $what) = @_;
	$session->{stderr} = '';
	$session->{stdin} .= "$statement\n";
	$session->{run}->pump_nb;
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '$like'"),
		$what);
}

sub halted
{
	my ($agent, $why) = @_;
	like(as_role($agent, 'INSERT INTO t VALUES (1)'), qr/KS001/, "$agent is refused $why");
}

sql(q{
CREATE ROLE role_manager LOGIN CREATEROLE;
CREATE ROLE team NOLOGIN;
CREATE ROLE inner_group NOLOGIN IN ROLE team;
CREATE ROLE agent_a LOGIN IN ROLE killswitch_agent, inner_group;
CREATE ROLE agent_b LOGIN IN ROLE killswitch_agent, team;
CREATE ROLE agent_c LOGIN IN ROLE killswitch_agent, team;
CREATE ROLE agent_out LOGIN IN ROLE killswitch_agent;
CREATE ROLE above NOLOGIN;
GRANT above TO team;
CREATE ROLE other_group NOLOGIN;
GRANT other_group TO agent_out;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
SET client_min_messages = warning;
SELECT ks_engage('halt_all', 'team loops', 'pager', scope => 'team');
});
halted($_, 'once the team is halted') for qw(agent_a agent_b agent_c);
is(as_role('agent_out', 'INSERT INTO t VALUES (1)'), '', 'agent_out, in no scope, writes');

# The matrix: each change that would take a role out of the team, by a
# CREATEROLE role manager and by a superuser, is refused and changes nothing.
my @changes = (
	[ 'REVOKE team FROM agent_b', 'revoke membership in role "team"', 'REVOKE direct' ],
	[ 'REVOKE inner_group FROM agent_a', 'revoke membership in role "inner_group"', 'REVOKE of an intermediate group\'s member' ],
	[ 'REVOKE team FROM inner_group', 'revoke membership in role "team"', 'REVOKE of the intermediate group' ],
	[ 'ALTER GROUP team DROP USER agent_b', 'revoke membership in role "team"', 'ALTER GROUP ... DROP USER' ],
	[ 'DROP ROLE inner_group', 'drop role "inner_group"', 'DROP ROLE of an intermediate group' ],
	[ 'DROP ROLE agent_c', 'drop role "agent_c"', 'DROP ROLE of an agent in the team' ],
	[ 'DROP ROLE team', 'drop role "team"', 'DROP ROLE of the scope\'s own role' ]);
my $members = q{SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname IN ('team', 'inner_group')};
my $before = sql($members);
for my $actor ('role_manager', 'postgres')
{
	for my $c (@changes)
	{
		my ($q, $msg, $what) = @$c;
		my $err = as_role($actor, $q);
		like($err, qr/ERROR:  55006: cannot \Q$msg\E while a scope that holds it is halted|ERROR:  2BP01: cannot \Q$msg\E while its scope is halted/,
			"$what, by $actor: refused");
		if ($q =~ /inner_group FROM|team FROM|DROP USER|inner_group$|agent_c$/)
		{
			like($err, qr/DETAIL:  Role "[a-z_]+" is in scope "team", at mode halt_all: /, "$what, by $actor: the detail names the scope");
			like($err, qr/HINT:  Release the scope first: ks_disengage\(reason, scope => 'team'\)\./, "$what, by $actor: the hint says release it first");
		}
		halted($_, "after $what by $actor") for qw(agent_a agent_b agent_c);
	}
}
is(sql($members), $before, 'no membership of the team changed');
is(sql(q{SELECT count(*) FROM pg_roles WHERE rolname IN ('team', 'inner_group', 'agent_c')}), '3', 'no role was dropped');

# What leaves the memberships alone, or only touches edges outside the team, is allowed.
is(as_role('role_manager', 'ALTER ROLE inner_group NOINHERIT; ALTER ROLE agent_a NOINHERIT'), '',
	'ALTER ROLE ... NOINHERIT is allowed');
halted('agent_a', 'after NOINHERIT (a scope holds its members INHERIT or not)');
is(as_role('postgres', 'DROP OWNED BY inner_group; REASSIGN OWNED BY agent_a TO postgres'), '',
	'DROP OWNED and REASSIGN OWNED are allowed (they change no membership in PostgreSQL 15)');
halted('agent_a', 'after DROP OWNED and REASSIGN OWNED');
is(as_role('postgres', 'GRANT team TO agent_b WITH ADMIN OPTION; REVOKE ADMIN OPTION FOR team FROM agent_b'), '',
	'REVOKE ADMIN OPTION FOR is allowed (the membership stays)');
halted('agent_b', 'after REVOKE ADMIN OPTION FOR');
is(as_role('role_manager', 'REVOKE above FROM team'), '', 'a REVOKE above the scope\'s role is allowed (it takes no one out)');
is(as_role('role_manager', 'REVOKE other_group FROM agent_out'), '', 'a REVOKE outside any scope is allowed');
is(sql($members), $before, 'still no membership of the team changed');

# The race, forced by lock waits.  (a) A raise under way (uncommitted):
# a REVOKE from another session waits for it, and is refused once it commits.
sql('CREATE ROLE team2 NOLOGIN; CREATE ROLE agent_d LOGIN IN ROLE killswitch_agent, team2; GRANT other_group TO agent_d');
my $raiser = $node->background_psql('postgres');
$raiser->query_safe("SET client_min_messages = warning; BEGIN; SELECT ks_engage('halt_all', 'team2 loops', 'pager', scope => 'team2')");
my $revoker = $node->background_psql('postgres', on_error_stop => 0);
waits($revoker, "REVOKE team2 FROM agent_d;", 'REVOKE team2 FROM agent_d%',
	'a REVOKE waits for the raise under way');
$raiser->query_safe('COMMIT');
$revoker->query('SELECT 1');
like($revoker->{stderr}, qr/cannot revoke membership in role "team2" while a scope that holds it is halted/,
	'and is refused once the raise commits');
halted('agent_d', 'after the REVOKE that raced the raise');

# The same with the raise rolled back: the REVOKE goes through.
$raiser->query_safe("SET client_min_messages = warning; BEGIN; SELECT ks_engage('halt_all', 'rolled back', 'pager', scope => 'other_group')");
waits($revoker, "REVOKE other_group FROM agent_d;", 'REVOKE other_group FROM agent_d%',
	'a REVOKE waits for a raise of the group under way');
$raiser->query_safe('ROLLBACK');
$revoker->query('SELECT 1');
is($revoker->{stderr}, '', 'and goes through once the raise rolls back');

# (b) A REVOKE under way: a raise of the scope does not wait for it (in
# force at once, it commits); the REVOKE looks again at its pre-commit and
# is refused (TAP 252 has the raise's timeouts and the committing case).
sql('CREATE ROLE team3 NOLOGIN; CREATE ROLE agent_e LOGIN IN ROLE killswitch_agent, team3; CREATE ROLE agent_f LOGIN IN ROLE killswitch_agent, team3');
$revoker->query_safe('BEGIN; REVOKE team3 FROM agent_e');
$raiser->{stderr} = '';
$raiser->query("SELECT (ks_engage('halt_all', 'team3 during the revoke', 'pager', scope => 'team3')).mode");
is($raiser->{stderr}, '', 'a raise does not wait for a REVOKE under way in its scope');
$revoker->{stderr} = '';
$revoker->query('COMMIT');
like($revoker->{stderr}, qr/cannot revoke membership in role "team3" while a scope that holds it is halted/,
	'and the REVOKE is refused at its commit');
is(sql(q{SELECT mode FROM ks_scopes() WHERE scope = 'team3'::regrole}), 'halt_all', 'team3 is halted');
halted('agent_f', 'in team3');
halted('agent_e', 'in team3 still (its REVOKE was refused)');
$raiser->quit;
$revoker->quit;

# (c) A GRANT under way that puts a group into a halted scope: a REVOKE from
# that group waits for it, and is refused once it commits.
sql(q{CREATE ROLE team4 NOLOGIN; CREATE ROLE group4 NOLOGIN; CREATE ROLE agent_g LOGIN IN ROLE killswitch_agent, group4;
      SET client_min_messages = warning; SELECT ks_engage('halt_all', 'team4 loops', 'pager', scope => 'team4')});
is(as_role('agent_g', 'INSERT INTO t VALUES (1)'), '', 'agent_g, in group4 outside team4, writes');
my $granter = $node->background_psql('postgres');
$granter->query_safe('BEGIN; GRANT team4 TO group4');
$revoker = $node->background_psql('postgres', on_error_stop => 0);
waits($revoker, "REVOKE group4 FROM agent_g;", 'REVOKE group4 FROM agent_g%',
	'a REVOKE waits for a GRANT under way of its group into a scope');
$granter->query_safe('COMMIT');
$granter->quit;
$revoker->query('SELECT 1');
like($revoker->{stderr}, qr/cannot revoke membership in role "group4" while a scope that holds it is halted/,
	'and is refused once the GRANT commits (group4 is in team4 now)');
$revoker->quit;
halted('agent_g', 'in team4 through group4');

# After the release every change is allowed, by either actor.
sql(q{SELECT ks_disengage('fixed', scope => 'team'); SELECT ks_disengage('fixed', scope => 'team2'); SELECT ks_disengage('fixed', scope => 'team3'); SELECT ks_disengage('fixed', scope => 'team4')});
is(as_role('role_manager', 'REVOKE team FROM agent_b'), '', 'released: REVOKE direct, by the role manager');
is(as_role('postgres', 'REVOKE inner_group FROM agent_a'), '', 'released: REVOKE of an intermediate group\'s member, by a superuser');
is(as_role('role_manager', 'DROP ROLE inner_group'), '', 'released: DROP ROLE of the intermediate group, by the role manager');
is(as_role('postgres', 'DROP ROLE agent_c'), '', 'released: DROP ROLE of an agent, by a superuser');
is(as_role('role_manager', 'REVOKE team2 FROM agent_d'), '', 'released: the raced REVOKE goes through');
is(as_role($_, 'INSERT INTO t VALUES (1)'), '', "released: $_ writes") for qw(agent_a agent_b agent_d);

done_testing();
