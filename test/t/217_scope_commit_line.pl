# The commit line for a scoped halt (ARCHITECTURE §13, §5.2): no commit
# record of an agent in the scope follows the scope's engage's commit
# record.  The fleet's test (164) with the engage given a scope: 30 trials,
# each with 40 agents (members of killswitch_agent and of the group role
# team) inserting into a guarded table through pgbench; a scope engage on
# team in the middle of each.  After all trials pg_waldump reads the WAL:
# every agent row that is visible must have its commit record before the
# engage's commit record of its trial.  The scope's raise is published to
# the set (its version) before the interlock scans the committing slots;
# an agent's pre-commit check publishes its slot before it reads the
# version.
#
# How the race is forced: every agent session sleeps 20 ms at
# XACT_EVENT_PRE_COMMIT after the kill switch's commit check and before its
# commit record (ks_test.commit_delay_ms, test/hooks/ks_test_hooks.so, a
# test-only module loaded before killswitch), so at any instant most of the
# 40 agents are between their last check and their commit record.  Before
# the interlock, those committed after the engage in every trial.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $node = PostgreSQL::Test::Cluster->new('scope_commit_line');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$hooks, killswitch'
max_connections = 100
checkpoint_timeout = 1h
max_wal_size = 4GB
});
$node->start;
my $pgdata = $node->data_dir;
sub sql { return $node->safe_psql('postgres', shift); }
sql(q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE team NOLOGIN;
CREATE ROLE agent LOGIN IN ROLE killswitch_agent, team;
CREATE TABLE work (trial int, n int);
CREATE TRIGGER guard BEFORE INSERT ON work FOR EACH ROW EXECUTE FUNCTION ks_guard();
GRANT INSERT, SELECT ON work TO agent;
});
my $script = PostgreSQL::Test::Utils::tempdir() . '/agent.sql';
open my $fh, '>', $script or die $!;
print $fh "\\set n random(1, 1000000)\nINSERT INTO work VALUES (:trial, :n);\n";
close $fh;

my $trials = 30;
my $agents = 40;
my $start_lsn = sql('SELECT pg_current_wal_insert_lsn()');
my %engage_xid;
for my $trial (1 .. $trials)
{
	my ($out, $err) = ('', '');
	local $ENV{PGOPTIONS} = '-c ks_test.commit_delay_ms=20';
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-h', $node->host, '-p', $node->port, '-U', 'agent',
		  '-c', $agents, '-j', 2, '-T', 60, '-D', "trial=$trial", '-f', $script, 'postgres' ],
		'>', \$out, '2>', \$err);
	$node->poll_query_until('postgres', "SELECT count(*) >= $agents FROM work WHERE trial = $trial")
	  or die "trial $trial: the agents do not write";
	$engage_xid{$trial} = sql("SELECT xid::text FROM ks_engage('halt_all', 'trial $trial', 'tester', scope => 'team')");
	# every agent's next statement is refused: pgbench ends
	$bench->finish;
	sql("SELECT ks_disengage('after trial $trial', 'tester', scope => 'team')");
}
my $end_lsn = sql('SELECT pg_current_wal_insert_lsn()');
sql('CHECKPOINT');

# The commit records, by transaction id.
my ($dump, $dumperr) = ('', '');
IPC::Run::run([ 'pg_waldump', '-p', "$pgdata/pg_wal", '-s', $start_lsn, '-e', $end_lsn, '-r', 'Transaction' ],
	'>', \$dump, '2>', \$dumperr);
my %commit_at;
sub lsn_value { my ($hi, $lo) = split m{/}, shift; return hex($hi) * 2**32 + hex($lo); }
while ($dump =~ /tx:\s+(\d+), lsn: ([0-9A-F]+\/[0-9A-F]+).*desc: COMMIT/g)
{
	$commit_at{$1} = lsn_value($2);
}
ok(scalar(keys %commit_at) > $trials * $agents, 'pg_waldump read the commit records')
  or diag($dumperr);

my ($checked, $late, $trials_checked) = (0, 0, 0);
for my $trial (1 .. $trials)
{
	my $engage = $commit_at{ $engage_xid{$trial} % 2**32 };
	next unless defined $engage;
	$trials_checked++;
	for my $xmin (split /\n/, sql("SELECT xmin::text FROM work WHERE trial = $trial"))
	{
		$checked++;
		my $at = $commit_at{$xmin};
		if (!defined $at || $at > $engage)
		{
			$late++;
			diag("trial $trial: agent transaction $xmin committed after the engage") if $late <= 5;
		}
	}
}
is($trials_checked, $trials, "the engage's commit record found in all $trials trials");
cmp_ok($checked, '>=', $trials * $agents, "at least $agents visible agent rows a trial checked ($checked)");
is($late, 0, 'no visible agent row has its commit record after the scope engage\'s');
is(sql('SELECT ks_mode()'), 'disengaged', 'the fleet was never halted');

$node->stop;
done_testing();
