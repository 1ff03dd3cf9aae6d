# Issue 18 case 7: no agent transaction's commit record follows the
# engage's commit record (ARCHITECTURE §5.2, the interlock).  50 trials,
# each with 40 agents (members of killswitch_agent) inserting into a
# guarded table through pgbench; an engage in the middle of each.  After
# all trials pg_waldump reads the WAL: every agent row that is visible must
# have its commit record before the engage's commit record of its trial.
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
my $node = PostgreSQL::Test::Cluster->new('commit_line');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$hooks, killswitch'
max_connections = 100
checkpoint_timeout = 1h
max_wal_size = 4GB
});
$node->start;
sub sql { return $node->safe_psql('postgres', shift); }
sql(q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE agent LOGIN IN ROLE killswitch_agent;
CREATE TABLE work (trial int, n int);
CREATE TRIGGER guard BEFORE INSERT ON work FOR EACH ROW EXECUTE FUNCTION ks_guard();
GRANT INSERT, SELECT ON work TO agent;
});
my $script = PostgreSQL::Test::Utils::tempdir() . '/agent.sql';
open my $fh, '>', $script or die $!;
print $fh "\\set n random(1, 1000000)\nINSERT INTO work VALUES (:trial, :n);\n";
close $fh;

my $trials = 50;
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
	$engage_xid{$trial} = sql("SELECT xid::text FROM ks_engage('halt_all', 'trial $trial', 'tester')");
	# every agent's next statement is refused: pgbench ends
	$bench->finish;
	sql("SELECT ks_disengage('after trial $trial', 'tester')");
}
my $end_lsn = sql('SELECT pg_current_wal_insert_lsn()');
sql('CHECKPOINT');

# The commit records, by transaction id.
my ($commit_at, $dumperr) = ks_commit_lsns($node, $start_lsn, $end_lsn);
my %commit_at = %$commit_at;
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
is($late, 0, 'no visible agent row has its commit record after the engage\'s');

$node->stop;
done_testing();
