# A committed raise whose event followed (the ordering lock was
# busy) is lost by a crash when the transaction that recorded its event
# (swept its mark: ks_record_scope_marks() from record_before_ours()) was a
# RAISE with synchronous_commit = off.  at_commit() -> settle_swept()
# unlinks the mark right after the commit record is inserted, but only a
# release flushes that record first (any_release); an operator's raise
# commits asynchronously.  A crash before the WAL writer writes the commit
# then loses both the sweeper's event and the mark: the other operator's
# committed raise (acknowledged to its client, its own commit forced
# synchronous) is gone after the restart.  "A crash at any instant never
# loses a committed raise."
# Forced: the WAL writer is stopped (SIGSTOP) so the asynchronous commit
# stays in WAL buffers; the crash is a SIGKILL of the WAL writer, which
# the postmaster answers with SIGQUIT to all (restart_after_crash = off).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('scope_sweep_durable', conf => "restart_after_crash = off\nbgwriter_lru_maxpages = 0\n");
sub sql { return $node->safe_psql('postgres', shift); }

sub refused { return ks_refused($node, shift); }

sql(q{
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE op2 LOGIN IN ROLE killswitch_operator;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});
my $walwriter = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'");
ok($walwriter, 'the WAL writer runs');

# op2 holds the ordering lock: its own scope raise, recorded, in an open transaction
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'op2' ]);
$holder->query_safe("BEGIN; SET LOCAL synchronous_commit = off; "
	  . "SELECT ks_engage('halt_all', 'holder raise', 'pager', scope => 'agent_8')");

# op's raise of agent_7: the lock is busy, its event follows; it commits (synchronously)
my ($out, $err) = ('', '');
my $rc = $node->psql('postgres',
	"SET lock_timeout = '200ms'; SELECT id IS NULL FROM ks_engage('emergency', 'committed raise', 'pager', scope => 'agent_7')",
	stdout => \$out, stderr => \$err, timeout => 30, extra_params => [ '-U', 'op' ]);
is($rc . ':' . $out, '0:t', 'op\'s raise commits, its event to follow') or diag($err);
is(refused('agent_7'), 'KS001', 'agent_7 is refused');

# op2 raises another scope in the same transaction: it holds the lock, so it
# records op's committed raise first (the sweep), then commits asynchronously
kill 'STOP', $walwriter;
$holder->query_safe("SELECT ks_engage('halt_all', 'sweeper raise', 'pager', scope => 'agent_9')");
$holder->query_safe('COMMIT');
my @marks = grep { /_/ } split /\n/, sql("SELECT f FROM pg_ls_dir('pg_killswitch/in_flight') f");
is(scalar(@marks), 0, 'op\'s mark was removed at the sweeper\'s commit');

# crash before the asynchronous commit reaches the WAL file
kill 'KILL', $walwriter;
kill 'CONT', $walwriter;
eval { $holder->quit };
for (1 .. 200) { last unless -e $node->data_dir . '/postmaster.pid'; usleep(50_000); }
$node->_update_pid(-1);
$node->start;

is(refused('agent_7'), 'KS001', 'after the crash agent_7 (op\'s committed raise) is halted');
# the watcher's first look records the mark left by the crash, then settles the set by the history
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'committed raise'"),
	'op\'s committed raise has its event');
is(refused('agent_7'), 'KS001', 'and stays halted after the watcher\'s first look');
is(sql("SELECT coalesce(string_agg(scope::text || '=' || mode, ','), '') FROM ks_scopes() WHERE scope = 'agent_7'::regrole"),
	'agent_7=emergency', 'ks_scopes() holds it');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

done_testing();
