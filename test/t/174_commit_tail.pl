# The review's finding 10 and the interlock's open gaps (ARCHITECTURE
# §5.2): no agent commit record follows the engage's commit record, read
# with pg_waldump — or the agent's commit is refused.
#
# 1. An agent's COMMIT stretched by PostgreSQL's own commit work after the
#    kill switch's last check: 600 temporary tables ON COMMIT DROP and 20000
#    notifications queued by NOTIFY (not pg_notify(), a built-in whose
#    setup before the halt has the raise cancel the agent's statement,
#    running.c — which would end this commit through another path), held
#    after the check for 5 s — longer than the raiser waits for committing
#    agents (KS_INTERLOCK_WAIT_MS, 1 s), by enough that the engage (a psql
#    started once the COMMIT is seen running) is raised within the hold on
#    a loaded machine too (at 1.5 s it had to come within about half a
#    second, or the agent ended inside the raiser's wait).  The
#    drops read the mode again (the object access hook, OAT_DROP): the
#    commit is refused.  Before, the raiser gave up after 1 s, the engage
#    committed, and the agent's commit record followed it.
# 2. An agent's COMMIT PREPARED racing a raise: the statement passes its
#    check while disengaged and is held for 500 ms before the prepared
#    transaction's commit record; the engage comes meanwhile.  The agent
#    holds its committing slot from before its check, so the raiser waits
#    for that commit record.  Before, the raiser did not see it (the
#    statement's own transaction has no id) and committed first.
#
# How the interleavings are forced: test/hooks/ks_test_hooks.so (a
# test-only module loaded before killswitch) sleeps after the kill switch's
# checks — ks_test.commit_delay_ms at pre-commit, and
# ks_test.commit_prepared_delay_ms before COMMIT PREPARED runs; the engage
# is sent once the agent's statement is running (pg_stat_activity), and
# the test checks that the agent had passed its check (1: the raiser's LOG
# line naming it; 2: the prepared transaction committed).  An agent commit whose only write is a NOTIFY (its transaction id
# assigned after the check) is branch fixes1's (NOTIFY and pg_notify() then
# assign it early) and not tested here.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $hooks = "$ENV{KS_SRCDIR}/test/hooks/ks_test_hooks.so";
my $node = PostgreSQL::Test::Cluster->new('commit_tail');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$hooks, killswitch'
max_prepared_transactions = 5
max_locks_per_transaction = 1024
});
$node->start;
sub sql { return $node->safe_psql('postgres', shift); }
sql(q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE agent LOGIN IN ROLE killswitch_agent;
CREATE TABLE work (trial int, n int);
GRANT INSERT, SELECT ON work TO agent;
GRANT CREATE, USAGE ON SCHEMA public TO agent;
});

# Wait until a session's statement is running.
sub running
{
	my ($pid, $like) = @_;
	$node->poll_query_until('postgres',
		"SELECT state = 'active' AND query LIKE '$like' FROM pg_stat_activity WHERE pid = $pid")
	  or die "the agent's statement does not run";
}

# ---------------------------------------------------------------------------
# 1. A COMMIT stretched past the raiser's wait by its ON COMMIT DROP tables.
{
	my $agent = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'agent' ]);
	my $pid = $agent->query_safe('SELECT pg_backend_pid()');
	$agent->query_safe(q{
BEGIN;
DO $$BEGIN FOR i IN 1..600 LOOP
  EXECUTE format('CREATE TEMP TABLE scratch_%s (x int) ON COMMIT DROP', i);
END LOOP; END$$;
INSERT INTO work VALUES (1, 1);
DO $$BEGIN FOR i IN 1..20000 LOOP
  EXECUTE format('NOTIFY workers, %L', 'queued before the halt ' || i);
END LOOP; END$$;
SET LOCAL ks_test.commit_delay_ms = 5000;
});
	my $xid = $agent->query_safe('SELECT pg_current_xact_id()');
	my $start = sql('SELECT pg_current_wal_insert_lsn()');
	$agent->{stderr} = '';
	$agent->query_until(qr/sent/, "\\echo sent\nCOMMIT;\n");
	running($pid, 'COMMIT%');
	my $engage = sql("SELECT xid::text FROM ks_engage('halt_all', 'commit tail 1', 'tester')");
	$agent->query('SELECT 1');
	my $end = sql('SELECT pg_current_wal_insert_lsn()');
	my $visible = sql('SELECT count(*) FROM work WHERE trial = 1');
	my ($commit_at) = ks_commit_lsns($node, $start, $end);
	my $engage_at = $commit_at->{$engage};
	my $agent_at = $commit_at->{$xid};
	ok(defined $engage_at, "pg_waldump shows the engage's commit record");
	ok(!defined $agent_at || $agent_at < $engage_at,
		'no commit record of the stretched agent commit follows the engage\'s')
	  or diag("agent $xid at $agent_at, engage $engage at $engage_at");
	is($visible, defined $agent_at ? '1' : '0', 'its row is visible only if it committed (before)');
	like($agent->{stderr}, qr/kill switch engaged \(halt_all\): the commit of a transaction that wrote/,
		'the agent was told its commit was refused');
	# the interleaving: the agent had passed its check, and the raiser waited for it in vain
	like(slurp_file($node->logfile), qr/agent transaction $xid \(pid $pid\) had not committed 1000 ms after the halt was raised/,
		'the agent had passed its check before the raise, and outlasted the raiser\'s wait');
	$agent->quit;
	sql("SELECT ks_disengage('after 1', 'tester')");
}

# ---------------------------------------------------------------------------
# 2. COMMIT PREPARED racing a raise.
{
	my $agent = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'agent' ]);
	my $pid = $agent->query_safe('SELECT pg_backend_pid()');
	$agent->query_safe("BEGIN; INSERT INTO work VALUES (2, 1); PREPARE TRANSACTION 'p2';");
	my $xid = sql("SELECT transaction FROM pg_prepared_xacts WHERE gid = 'p2'");
	$agent->query_safe('SET ks_test.commit_prepared_delay_ms = 500');
	my $start = sql('SELECT pg_current_wal_insert_lsn()');
	$agent->{stderr} = '';
	$agent->query_until(qr/sent/, "\\echo sent\nCOMMIT PREPARED 'p2';\n");
	running($pid, 'COMMIT PREPARED%');
	my $engage = sql("SELECT xid::text FROM ks_engage('halt_all', 'commit tail 2', 'tester')");
	$agent->query('SELECT 1');
	my $end = sql('SELECT pg_current_wal_insert_lsn()');
	my ($commit_at, $dumperr) = ks_commit_lsns($node, $start, $end);
	my $engage_at = $commit_at->{$engage};
	my $prepared_at = $commit_at->{$xid};
	my $left = sql("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p2'");
	ok(defined $engage_at, "pg_waldump shows the engage's commit record");
	# the interleaving: the statement had passed its check when the engage came
	ok(defined $prepared_at, 'the prepared transaction was committed') or diag($dumperr);
	ok(!defined $prepared_at || $prepared_at < $engage_at,
		'no COMMIT PREPARED record follows the engage\'s commit record')
	  or diag("prepared $xid at $prepared_at, engage $engage at $engage_at");
	is(sql('SELECT count(*) FROM work WHERE trial = 2'), defined $prepared_at ? '1' : '0',
		'its row is visible only if it committed (before)');
	sql("ROLLBACK PREPARED 'p2'") if $left eq '1';
	$agent->quit;
	sql("SELECT ks_disengage('after 2', 'tester')");
}

$node->stop;
done_testing();
