# What the switch does differently on newer PostgreSQL (README "Versions"),
# each checked on the versions it concerns, and its absence before them:
#
# 1. A session asleep in ks_wait() shows in pg_stat_activity as wait event
#    KillswitchWait from 17 on (WaitEventExtensionNew), as the generic
#    Extension before.
# 2. From 16 on killswitch_operator (and so killswitch_admin) is a member of
#    pg_use_reserved_connections: once only the slots of reserved_connections
#    are left, an operator and an administrator still log in, engage and
#    release, while a role that is neither is refused.  Before 16 that role
#    does not exist and CREATE EXTENSION grants nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my ($major) = `pg_config --version` =~ /PostgreSQL (\d+)/
  or die "cannot tell the version from pg_config";

# 8 slots: 1 for superusers (the test's own connections), 2 reserved, 5 for anyone
my $node = ks_node('versions',
	conf => "max_connections = 8\nsuperuser_reserved_connections = 1\n"
	  . ($major >= 16 ? "reserved_connections = 2\n" : ''));
$node->safe_psql('postgres', q{
CREATE ROLE plain LOGIN;
CREATE ROLE oncall LOGIN IN ROLE killswitch_operator;
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
});
sub sql { return $node->safe_psql('postgres', shift); }

# 1. ks_wait()'s wait event
my $g = sql("SELECT ks_wait(0, 0)");
my ($out, $err) = ('', '');
my $waiter = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' user=bot',
	  '-c', "SELECT ks_wait($g, 3600000) /* versions */" ],
	'>', \$out, '2>', \$err, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
my $event = $major >= 17 ? 'KillswitchWait' : 'Extension';
ok( $node->poll_query_until('postgres',
		"SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity "
		  . "WHERE query LIKE '%ks_wait(%versions%' AND state = 'active' AND pid <> pg_backend_pid()",
		"Extension/$event"),
	"PostgreSQL $major: a session in ks_wait() waits on Extension/$event");
sql("SELECT ks_engage('halt_noncritical', 'wake the waiter', 'tester')");
$waiter->finish;
is($out =~ s/\s+\z//r, $g + 1, 'and the engage wakes it');

# 2. the operators' reserve
my $member = sql(
	"SELECT pg_has_role('killswitch_operator', oid, 'MEMBER') FROM pg_roles WHERE rolname = 'pg_use_reserved_connections'");
if ($major < 16)
{
	is($member, '', "PostgreSQL $major: no pg_use_reserved_connections, nothing granted");
	done_testing();
	exit;
}
is($member, 't', "PostgreSQL $major: killswitch_operator is a member of pg_use_reserved_connections");

my @plain = map { $node->background_psql('postgres', extra_params => [ '-U', 'plain' ]) } 1 .. 5;
my ($rc, $stdout, $stderr) = $node->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'plain' ]);
like($stderr, qr/remaining connection slots are reserved for roles with privileges of the "pg_use_reserved_connections" role/,
	'with 5 sessions of another role, only the reserved slots are left: that role is refused');
my $oncall = $node->background_psql('postgres', extra_params => [ '-U', 'oncall' ]);
is($oncall->query_safe("SELECT mode FROM ks_engage('halt_all', 'from a reserved slot', 'oncall')"),
	'halt_all', 'an operator logs in on a reserved slot and engages');
($rc, $stdout, $stderr) = $node->psql('postgres', "SELECT mode FROM ks_disengage('from the last reserved slot', 'alice')",
	extra_params => [ '-U', 'alice' ]);
is($stdout, 'disengaged', 'an administrator logs in on the last one and releases') or diag($stderr);
$_->quit for @plain, $oncall;

done_testing();
