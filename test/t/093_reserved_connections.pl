# Operators keep a way in (ARCHITECTURE §5.8, issue 18 case 5): with
# max_connections = 100, 97 agent sessions would leave only the superusers'
# reserve, and an operator could not connect to pull the switch.  An agent
# login is refused (FATAL, 53300) once it would leave fewer than
# superuser_reserved_connections (3) plus killswitch.reserved_connections
# (default 3) slots: 94 agents get in, 3 are turned away, and an operator and
# an administrator connect, side by side, and engage.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('reserve', conf => "max_connections = 100\n");
my ($host, $port) = ($node->host, $node->port);
$node->safe_psql('postgres', q{
CREATE ROLE fleet NOLOGIN IN ROLE killswitch_agent;
CREATE ROLE bot LOGIN IN ROLE fleet;
CREATE ROLE oncall LOGIN IN ROLE killswitch_operator;
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
CREATE ROLE app LOGIN;
});
sub sql { return $node->safe_psql('postgres', shift); }

my ($rc, $out, $err) = $node->psql('postgres', 'SHOW killswitch.reserved_connections');
is($out, '3', 'killswitch.reserved_connections is 3 by default');

# 97 agents, each asleep in ks_wait() until the generation moves.
my $generation = sql('SELECT ks_wait(0, 0)');
my @agents;
for my $i (1 .. 97)
{
	my %a = (out => '', err => '');
	$a{h} = IPC::Run::start(
		[ 'psql', '-X', '-At', '-h', $host, '-p', $port, '-U', 'bot', '-d', 'postgres',
		  '-c', "SELECT ks_wait($generation, 600000)" ],
		'>', \$a{out}, '2>', \$a{err});
	push @agents, \%a;
}

# Wait until every agent is either asleep or turned away.
my ($waiting, $refused);
for (1 .. 600)
{
	$_->{h}->pump_nb for grep { $_->{h}->pumpable } @agents;
	$refused = grep { $_->{err} =~ /FATAL/ } @agents;
	$waiting = sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot' AND state = 'active'");
	last if $waiting + $refused == 97;
	usleep(100_000);
}
is($waiting, 94, '94 agents are in: 100 slots less the 3 of superusers and the 3 kept for operators');
is($refused, 3, 'the other 3 are turned away');
my ($one) = grep { $_->{err} =~ /FATAL/ } @agents;
like($one->{err},
	qr/FATAL:  remaining connection slots are reserved for roles that operate the kill switch/,
	'with the reason');

# An operator and an administrator connect, both at once, and engage.
my $oncall = $node->background_psql('postgres', extra_params => [ '-U', 'oncall' ], wait => 0, timeout => 20);
my $alice = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ], wait => 0, timeout => 20);
is(eval { $oncall->wait_connect; $oncall->query_safe("SELECT mode FROM ks_engage('halt_all', 'agents took the connections', 'oncall')") },
	'halt_all', 'the operator connects and engages') or diag($oncall->{stderr});
is(eval { $alice->wait_connect; $alice->query_safe("SELECT mode FROM ks_engage('emergency', 'and the administrator escalates', 'alice')") },
	'emergency', 'the administrator, connected beside it, engages too') or diag($alice->{stderr});

# The agents' waits end with the change; nobody was left hanging.  (Had the
# operators been kept out, the agents would still be waiting: end them.)
for (1 .. 600)
{
	last if sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'") eq '0';
	usleep(100_000);
}
sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'bot'");
for my $a (@agents)
{
	eval { $a->{h}->finish };
}
is(scalar(grep { $_->{out} =~ /^\d+$/m } @agents), 94, 'the waiting agents return the new generation');
eval { $oncall->quit };
eval { $alice->quit };
sql("SELECT ks_disengage('reserve tested', 'tester')");

# The reserve holds only agents back: other roles take the slots as before.
# And it is a reload setting.
my @apps;
for my $i (1 .. 94)
{
	push @apps, $node->background_psql('postgres', extra_params => [ '-U', 'app' ]);
}
($rc, $out, $err) = $node->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'bot' ]);
like($err, qr/remaining connection slots are reserved for roles that operate the kill switch/,
	'94 other sessions: an agent login is refused');
($rc, $out, $err) = $node->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'app' ]);
is($rc, 0, 'a role that is not an agent still gets in') or diag($err);
sql('ALTER SYSTEM SET killswitch.reserved_connections = 0');
sql('SELECT pg_reload_conf()');
for (1 .. 100)
{
	($rc, $out, $err) = $node->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'bot' ]);
	last if $rc == 0;
	usleep(100_000);
}
is($rc, 0, 'with killswitch.reserved_connections = 0 (a reload) the agent gets in again') or diag($err);
$_->quit for @apps;

$node->stop;
done_testing();
