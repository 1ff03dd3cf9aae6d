# A scope in emergency refuses its agents' logins (ARCHITECTURE §13,
# logins.c), as the fleet's emergency refuses every agent's, with
# killswitch.refuse_agent_logins on: the fleet's message, a detail naming
# the scope.  Other agents, and people in the scope, log in; a scope below
# emergency refuses no login; a raise to emergency under way refuses them
# until it rolls back; a release admits them again.  And a scope's emergency
# fires the emergency alert, the scope named: NOTIFY killswitch_alert and
# killswitch.alert_command with KS_SCOPE.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('scope_logins', conf => "killswitch.refuse_agent_logins = on\n"
	  . "killswitch.alert_command = 'env | grep ^KS_ > alert_\$KS_SCOPE.env'\n");
sub sql { return $node->safe_psql('postgres', shift); }

# Log in as a role; return its stderr ('' when it got in).
sub login
{
	my $role = shift;
	my ($rc, $out, $err) = $node->psql('postgres', 'SELECT 1', extra_params => [ '-U', $role ]);
	return $rc == 0 ? '' : $err;
}
sub refused
{
	my ($role, $scope, $what) = @_;
	my $err = login($role);
	like($err, qr/FATAL:  kill switch engaged \(emergency\): login by agent "$role" refused/, "$role: $what");
	like($err, qr/DETAIL:  Scope "$scope", which holds role "$role", is in emergency\./, "$role: the detail names scope $scope");
}

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN killswitch_alert');
sql(q{
CREATE ROLE team NOLOGIN;
CREATE ROLE inner_group NOLOGIN IN ROLE team;
CREATE ROLE agent_a LOGIN IN ROLE killswitch_agent, team;
CREATE ROLE agent_n LOGIN IN ROLE killswitch_agent, inner_group;
CREATE ROLE agent_out LOGIN IN ROLE killswitch_agent;
CREATE ROLE person LOGIN IN ROLE team;
CREATE ROLE team2 NOLOGIN;
CREATE ROLE agent_h LOGIN IN ROLE killswitch_agent, team2;
SET client_min_messages = warning;
SELECT ks_engage('emergency', 'team runs away', 'pager', scope => 'team');
SELECT ks_engage('halt_all', 'team2 loops', 'pager', scope => 'team2');
});

refused('agent_a', 'team', 'an agent in a scope in emergency cannot log in');
refused('agent_n', 'team', 'nor one in it through a group role');
is(login('agent_out'), '', 'an agent in no scope logs in');
is(login('person'), '', 'a person (no agent) in the scope logs in');
is(login('agent_h'), '', 'an agent in a scope at halt_all logs in (its statements are refused)');
like($node->safe_psql('postgres', 'SELECT ks_mode()'), qr/disengaged/, 'the fleet is not halted');

# The alert: NOTIFY killswitch_alert names the scope, and the alert command gets KS_SCOPE.
my $notes = '';
for (1 .. 100)
{
	my ($out) = $listener->query('SELECT 1');
	$notes .= $out;
	last if $notes =~ /"alert": "emergency", "scope": "team"/;
	select(undef, undef, undef, 0.1);
}
$listener->quit;
my $gen = sql(q{SELECT generation FROM ks_scopes() WHERE scope = 'team'::regrole});
like($notes, qr/Asynchronous notification "killswitch_alert" with payload "\{"alert": "emergency", "scope": "team", "generation": $gen, "sessions_ended": 0\}"/,
	'the scope\'s emergency is announced on killswitch_alert, the scope named');
my $envfile = $node->data_dir . '/alert_team.env';
for (1 .. 100) { last if -s $envfile; select(undef, undef, undef, 0.1); }
my %env = map { /^(KS_\w+)=(.*)$/ ? ($1 => $2) : () } split /\n/, slurp_file($envfile);
is($env{KS_SCOPE}, 'team', 'killswitch.alert_command runs with KS_SCOPE');
is($env{KS_MODE}, 'emergency', 'and KS_MODE');
is($env{KS_REASON}, 'team runs away', 'and the scope\'s reason in KS_REASON');
is($env{KS_TRIGGERED_BY}, 'pager', 'and KS_TRIGGERED_BY');
is($env{KS_GENERATION}, $gen, 'and the scope\'s generation');
is($env{KS_EVENT_ID}, sql(q{SELECT id FROM killswitch.events WHERE scope = 'team'::regrole ORDER BY id DESC LIMIT 1}),
	'and the id of its event');
ok(!-e $node->data_dir . '/alert_team2.env', 'a scope at halt_all fires no alert');

# A raise to emergency under way (uncommitted) refuses them already; its rollback admits them.
my $raiser = $node->background_psql('postgres');
$raiser->query_safe("SET client_min_messages = warning; BEGIN; SELECT ks_engage('emergency', 'in flight', 'pager', scope => 'team2')");
refused('agent_h', 'team2', 'a raise of its scope to emergency under way refuses its login');
$raiser->query_safe('ROLLBACK');
$raiser->quit;
is(login('agent_h'), '', 'and once it rolls back the agent logs in');

# With killswitch.refuse_agent_logins off, as for the fleet, logins are not refused.
sql("ALTER SYSTEM SET killswitch.refuse_agent_logins = off; SELECT pg_reload_conf()");
ok($node->poll_query_until('postgres', q{SELECT current_setting('killswitch.refuse_agent_logins') = 'off'}), 'reloaded');
my $err = login('agent_a');
unlike($err, qr/FATAL/, 'with killswitch.refuse_agent_logins off, the agent logs in');
like($err, qr/ERROR:  kill switch engaged \(emergency\): any statement by agent "agent_a" refused/,
	'and its statement is refused (the scope is in emergency)');
sql("ALTER SYSTEM RESET killswitch.refuse_agent_logins; SELECT pg_reload_conf()");
ok($node->poll_query_until('postgres', q{SELECT current_setting('killswitch.refuse_agent_logins') = 'on'}), 'reloaded');
refused('agent_a', 'team', 'on again: refused again');

# The release admits them again.
sql(q{SELECT ks_disengage('fixed', scope => 'team')});
is(login('agent_a'), '', 'released: agent_a logs in');
is(login('agent_n'), '', 'released: agent_n logs in');

done_testing();
