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

# killswitch -D engage halt_all --scope OID: its exit code.
sub file_engage
{
	my ($oid, $reason) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-D', $node->data_dir, 'engage', 'halt_all',
		'--reason', $reason, '--by', 'oncall', '--scope', $oid ], '>', \$out, '2>', \$err);
	diag($err) if $?;
	return $? >> 8;
}

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

# 2. The watcher's record of a raise written to the scope file (in force
# since its round) waited for its role's lock as a release does: an agent's
# open REVOKE over the scope held the watcher — and the ordering lock its
# look holds — for as long as the agent liked.  It orders itself as an SQL
# raise now: it goes on, and the REVOKE is refused at its commit.
sql(q{CREATE ROLE team_w NOLOGIN; CREATE ROLE agent_w LOGIN IN ROLE killswitch_agent, team_w});
my $oidw = sql(q{SELECT 'team_w'::regrole::oid});
$revoker = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$revoker->query_safe('BEGIN; REVOKE team_w FROM agent_w');
is(file_engage($oidw, 'stop team w'), 0, 'killswitch -D engage --scope team_w');
ok(KsTest::ks_within($node, qq{SELECT EXISTS (SELECT FROM killswitch.events WHERE scope = $oidw AND source = 'file')
  OR EXISTS (SELECT FROM pg_locks WHERE locktype = 'object' AND objid = $oidw AND NOT granted)}, 15),
	'the watcher has recorded the raise or waits for a lock of team_w');
is(sql(qq{SELECT count(*) FROM killswitch.events WHERE scope = $oidw AND source = 'file' AND mode = 'halt_all'}), '1',
	'the watcher records the raise without waiting for the agent\'s open REVOKE');
$agent = $node->background_psql('postgres', extra_params => [ '-U', 'agent_w' ], on_error_stop => 0);
$agent->query('INSERT INTO t VALUES (1)');
like($agent->{stderr}, qr/kill switch engaged/, 'agent_w is refused');
$agent->quit;
$revoker->{stderr} = '';
$revoker->query('COMMIT');
like($revoker->{stderr}, qr/cannot revoke membership in role "team_w" while a scope that holds it is (halted|being raised)/,
	'the REVOKE is refused at its commit');
is(sql(q{SELECT pg_has_role('agent_w', 'team_w', 'MEMBER')}), 't', 'agent_w is still in team_w');
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oidw AND source = 'file'}),
	'the raise is recorded once');
$revoker->quit;

# 3. "Committing" is not "only its commit left": an agent holds a change
# past its second look as long as it likes.  After the kill switch's
# pre-commit look come PostgreSQL's own steps, which take locks: an ON
# COMMIT DELETE ROWS temporary table is truncated (AccessExclusiveLock) when
# the transaction touched the temporary schema, and a second session of the
# same agent holds that table shared (LOCK TABLE of a parent recurses to the
# temporary child, with no look at the other session's schema).  The operator's raise of the role
# being dropped then waits, untimed, for as long as the agent keeps that
# session open: in force meanwhile, but not recorded (a crash or a cancel
# loses it) and the operator's call does not return.  Not fixed (TODO).
sql(q{CREATE ROLE agent_x LOGIN IN ROLE killswitch_agent; CREATE TABLE parent (x int); ALTER TABLE parent OWNER TO rolemaker});
my $agent_x_oid = sql(q{SELECT 'agent_x'::regrole::oid});
my $dropper = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$dropper->query_safe('CREATE TEMP TABLE tt () INHERITS (parent) ON COMMIT DELETE ROWS');
my $tt = $dropper->query_safe(q{SELECT 'tt'::regclass::oid});
$tt =~ s/\s+$//;
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'rolemaker' ], on_error_stop => 0);
$holder->query_safe("BEGIN; LOCK TABLE parent IN ACCESS SHARE MODE");
$dropper->query_safe('BEGIN; DROP ROLE agent_x; SELECT count(*) FROM tt');
$dropper->{stderr} = '';
$dropper->{stdin} .= "COMMIT;\n";
$dropper->{run}->pump_nb;
until_locks(q{l.objsubid = 1 AND l.mode = 'AccessExclusiveLock' AND l.granted AND r.rolname = 'agent_x'},
	'the DROP ROLE is past its second look (it holds the role\'s second lock)');
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_locks
  WHERE locktype = 'relation' AND relation = $tt AND mode = 'AccessExclusiveLock' AND NOT granted}),
	'and waits, in its commit, for the agent\'s other session');
my $raiser = $node->background_psql('postgres', extra_params => [ '-U', 'op' ], on_error_stop => 0);
$raiser->query_safe("SET lock_timeout = '200ms'; SET client_min_messages = warning");
$raiser->{stderr} = '';
$raiser->{stdin} .= "SELECT mode FROM ks_engage('halt_all', 'stop agent_x', 'pager', scope => 'agent_x');\n";
$raiser->{run}->pump_nb;
ok($node->poll_query_until('postgres', q{SELECT state = 'idle' OR wait_event_type = 'Lock'
  FROM pg_stat_activity WHERE usename = 'op'}),
	'the raise has returned or waits for a lock');
TODO:
{
	local $TODO = 'a raise waits, untimed, for a change past its look that an agent holds in its commit';
	is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'op' AND wait_event_type = 'Lock'}), '0',
		'the raise does not wait for a lock an agent\'s session holds');
}
# meanwhile another raise commits: the scope file it writes holds agent_x's
# raise in flight, "unconfirmed" (part 4)
sql(q{CREATE ROLE team_q NOLOGIN});
$node->safe_psql('postgres', q{SET client_min_messages = warning; SELECT mode FROM ks_engage('halt_all', 'stop team q', 'pager', scope => 'team_q')},
	extra_params => [ '-U', 'op' ]);
like(sql(q{SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json')}), qr/"$agent_x_oid"/,
	'the scope file written meanwhile holds the raise of agent_x in flight');
$holder->query_safe('COMMIT');
$dropper->query('SELECT 1');
is($dropper->{stderr}, '', 'once the agent lets it, the DROP ROLE commits');
$raiser->query('SELECT 1');
like($raiser->{stderr}, qr/role "agent_x" does not exist/, 'and the raise, waited for, fails');
$raiser->quit;
$holder->quit;
$dropper->quit;

# 4. The raise of part 3, in force and then failed ("does not exist"),
# stays in the scope file: a write of the file while it waited (team_q's
# raise's commit) holds it "unconfirmed", and its abort writes the file again
# only for a raise that reached its pre-commit.  The next outside write
# (killswitch -D engage, which keeps the file's entries) names a role that
# does not exist: rejected, and the verdict halts the whole fleet.  An
# agent that can drop a role thus halts every agent.  An aborted raise now
# writes the file again (scopechange.c at_abort()).
{
	unlike(sql(q{SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json')}), qr/"$agent_x_oid"/,
		'the scope file does not name the dropped role');
	sql(q{CREATE ROLE team_z NOLOGIN});
	is(file_engage(sql(q{SELECT 'team_z'::regrole::oid}), 'stop team z'), 0, 'killswitch -D engage --scope team_z');
	ok(KsTest::ks_within($node, q{SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'stop team z'}, 15),
		'the outside write is accepted and recorded');
	is(sql(q{SELECT ks_mode()}), 'disengaged', 'the fleet is not halted');
}

is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');
done_testing();
