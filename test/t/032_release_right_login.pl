# The release right counts the identities the agent test counts
# (ARCHITECTURE §6): a session is an agent when its current role, its
# session role or the role it logged in as is a member of killswitch_agent,
# and such a session may never release.  A superuser agent can SET SESSION
# AUTHORIZATION to an administrator, which changes the session role and the
# current role but not the login: its statements stay refused as an
# agent's, and so must its release.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('release_right');
$node->safe_psql('postgres', q(
CREATE ROLE suagent SUPERUSER LOGIN IN ROLE killswitch_agent;
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
CREATE TABLE t (x int);
GRANT ALL ON t TO alice;
));

sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL logged in as the superuser agent; return (exit code, stderr).
sub as_suagent
{
	my ($sqltext) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sqltext, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', 'suagent' ], on_error_stop => 1);
	return ($rc, $err);
}

sql("SELECT ks_engage('halt_all', 'drill', 'tester')");

# The agent test: logged in as an agent, the session stays one as alice.
my ($rc, $err) = as_suagent('SET SESSION AUTHORIZATION alice; INSERT INTO t VALUES (1)');
ok($rc != 0 && $err =~ /kill switch engaged/, 'an agent logged in is refused as alice')
  or diag("rc $rc: $err");
is(sql('SELECT count(*) FROM t'), '0', 'nothing written');

# The release right: the same session may not release, by either path.
($rc, $err) = as_suagent(
	"SET SESSION AUTHORIZATION alice; SELECT ks_disengage('let me go', 'alice')");
ok($rc != 0 && $err =~ /may never release/, 'ks_disengage refused to an agent logged in, as alice')
  or diag("rc $rc: $err");
($rc, $err) = as_suagent(
	"SET SESSION AUTHORIZATION alice; SELECT ks_engage('halt_noncritical', 'lower', 'alice')");
ok($rc != 0 && $err =~ /may never release/, 'a lowering ks_engage refused to an agent logged in, as alice')
  or diag("rc $rc: $err");
is(sql('SELECT ks_mode()'), 'halt_all', 'still halted');

# alice herself, logged in as alice, releases.
($rc, $err) = ('', '');
$rc = $node->psql('postgres', "SELECT ks_disengage('drill over', 'alice')",
	stderr => \$err, extra_params => [ '-U', 'alice' ], on_error_stop => 1);
is($rc, 0, 'alice logged in releases') or diag($err);
is(sql('SELECT ks_mode()'), 'disengaged', 'released');

done_testing();
