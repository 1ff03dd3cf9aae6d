# The bypass matrix (ARCHITECTURE §8.3, test/KsMatrix.pm) against a scoped
# halt (§13): the same agents, every way out they might try, with the same
# outcome by mode as under the fleet's halt (090) — but the halt is a scope on
# the group role team, which holds bot directly, nested through mid and the
# superuser agent suagent.  An agent outside the scope keeps working.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;
use KsMatrix;

my $node = ks_node('scope_matrix', conf => "max_prepared_transactions = 10\nlo_compat_privileges = on\n");
my $m = ks_matrix_setup($node);
sub sql { return $node->safe_psql('postgres', shift); }

sql(q{
CREATE ROLE team NOLOGIN;
GRANT team TO bot, mid, suagent;
CREATE ROLE outsider LOGIN IN ROLE killswitch_agent, owners;
});

my %outside = (
	'INSERT' => 'INSERT INTO t VALUES (1)',
	'nextval' => "SELECT nextval('s')",
	'CREATE TABLE' => 'CREATE TABLE outside_%m (x int)',
	'pg_notify' => "SELECT pg_notify('chan', 'x')",
	'COPY FROM STDIN' => "COPY t FROM STDIN;\n7\n\\.\n",
	'SET ROLE to a non-agent' => 'SET ROLE owners; INSERT INTO t VALUES (1)',
);

ks_matrix_run($m, label => 'scope: ', halt => sub {
	my ($mode) = @_;
	if ($mode eq 'disengaged')
	{
		is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'no scope active');
		return;
	}
	sql("SELECT ks_engage('$mode', 'matrix', 'tester', scope => 'team')");
	is(sql('SELECT ks_mode()'), 'disengaged', "scope $mode: the fleet is not halted");
	# the agent outside the scope keeps working in every mode of the scope
	for my $name (sort keys %outside)
	{
		(my $q = $outside{$name}) =~ s/%m/$mode/g;
		my ($out, $err) = ('', '');
		my $rc = $node->psql('postgres', $q, stdout => \$out, stderr => \$err,
			on_error_stop => 1, extra_params => [ '-U', 'outsider' ]);
		is($rc, 0, "scope $mode: an agent outside the scope: $name works") or diag($err);
	}
});

# what the agents prepared while nothing was halted (the emergency actions
# are the fleet's: a scope's emergency does not roll them back)
sql("SELECT ks_disengage('matrix done', 'tester', scope => 'team')");
for my $gid (split /\n/, sql('SELECT gid FROM pg_prepared_xacts'))
{
	sql("ROLLBACK PREPARED '$gid'");
}
is(sql('SELECT count(*) FROM ks_scopes()'), '0', 'released');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

done_testing();
