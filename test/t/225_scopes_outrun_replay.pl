# Scopes outrun replay (ARCHITECTURE §13 "Standbys", §11 "Halts outrun
# replay"): a standby whose replay is paused (pg_wal_replay_pause()) or held
# by a recovery conflict still takes a scope the primary raises — heard from
# its upstream (killswitch.committed_scopes()) — within a bounded wait: the
# agent in the scope is refused, the other agents read on, ks_scopes() shows
# it.  The primary's release does not lower the standby until replay brings
# it; a scope heard later does not drop one heard before.  A server of
# another system telling a scope copy signed with the standby's own secret
# is refused, as the fleet's link refuses its state.
#
# The standby runs with max_standby_streaming_delay = -1, so a conflict holds
# replay for good, and each case checks that replay is indeed held (paused,
# or the startup process waiting for the lock) and that the standby's
# history holds no scope event yet: what reaches it can only have come past
# replay.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

# a bound for what must come (replay is held, it does not race): generous,
# for a loaded machine; it costs nothing when the effect comes
my $BOUND = 60;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
sub within { my ($node, $sql) = @_; return ks_within($node, $sql, $BOUND); }

# $q as $role (verbose errors): its output, 'KS001' if the switch refused it.
sub as_role
{
	my ($node, $role, $q) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? $out : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

my $primary = ks_node('scope_outrun_primary', init => { allows_streaming => 1 });
q1($primary, q(
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
INSERT INTO t VALUES (1);
CREATE TABLE locked (id int);
INSERT INTO locked VALUES (1);
GRANT SELECT ON t, locked TO PUBLIC;
));
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('scope_outrun_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	"max_standby_streaming_delay = -1\nhot_standby_feedback = off\n");
$standby->start;

sub caught_up
{
	my $lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
	ok(within($standby, "SELECT pg_last_wal_replay_lsn() >= '$lsn'"), 'the standby caught up');
}

sub scope_events_replayed
{
	return q1($standby, 'SELECT count(*) FROM killswitch.events WHERE scope IS NOT NULL');
}

caught_up();
ok(within($standby, "SELECT (ks_status()->>'upstream_heard_at') IS NOT NULL"), 'the standby hears its upstream');

# ---- 1. replay paused ----
q1($standby, 'SELECT pg_wal_replay_pause()');
ok(within($standby, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is paused');
my $before = scope_events_replayed();
q1($primary, "SELECT ks_engage('emergency', 'agent_7 loops', 'pager', scope => 'agent_7')");
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'emergency'"),
	'paused: the standby\'s ks_scopes() shows the scope within the bound');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), 'KS001', 'paused: agent_7\'s reads are refused');
is(as_role($standby, 'agent_7', 'SELECT ks_mode()'), 'KS001', 'paused: every statement of agent_7 (emergency)');
is(as_role($standby, 'agent_8', 'SELECT count(*) FROM t'), '1', 'paused: agent_8 reads on');
is(q1($standby, 'SELECT ks_mode()'), 'disengaged', 'paused: the standby\'s fleet is not halted');
is(q1($standby, "SELECT pg_get_wal_replay_pause_state()"), 'paused', 'replay is still paused');
is(scope_events_replayed(), $before, 'and the standby\'s history holds no new scope event: it came past replay');

# the release on the primary, then another scope: once that one is heard, the
# standby has heard the copy without agent_7 — which lowers nothing
q1($primary, "SELECT ks_disengage('fixed', scope => 'agent_7')");
q1($primary, "SELECT ks_engage('halt_noncritical', 'agent_9 too', 'pager', scope => 'agent_9')");
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_9'::regrole AND mode = 'halt_noncritical'"),
	'paused: a later scope is heard');
is(q1($standby, "SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'emergency',
	'paused: the primary\'s release heard does not lower agent_7 on the standby');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), 'KS001', 'paused: agent_7 is still refused');
is(as_role($standby, 'agent_9', "SELECT (ks_check_task('nightly')->>'allowed')::boolean"), 'f',
	'paused: agent_9\'s tasks are refused (halt_noncritical)');
is(as_role($standby, 'agent_8', "SELECT (ks_check_task('nightly')->>'allowed')::boolean"), 't', 'paused: agent_8\'s are not');

q1($standby, 'SELECT pg_wal_replay_resume()');
caught_up();
ok(within($standby, "SELECT count(*) = 0 FROM ks_scopes() WHERE scope = 'agent_7'::regrole"),
	'resumed: replay brings the release, and only then agent_7 is lowered');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), '1', 'resumed: agent_7 reads again');
is(q1($standby, "SELECT mode FROM ks_scopes() WHERE scope = 'agent_9'::regrole"), 'halt_noncritical',
	'resumed: agent_9\'s scope, replayed now, stays');
q1($primary, "SELECT ks_disengage('done', scope => 'agent_9')");
caught_up();
ok(within($standby, 'SELECT count(*) = 0 FROM ks_scopes()'), 'no scope left on the standby');

# ---- 2. replay held by a recovery conflict (a lock an agent's transaction holds) ----
my $holder = $standby->background_psql('postgres', extra_params => [ '-U', 'agent_8' ]);
$holder->query_safe('BEGIN');
$holder->query_safe('SELECT count(*) FROM locked');
q1($primary, 'TRUNCATE locked');
ok(within($standby, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'startup' AND wait_event_type = 'Lock'"),
	'conflict: replay waits for agent_8\'s lock (TRUNCATE)');
$before = scope_events_replayed();
q1($primary, "SELECT ks_engage('halt_all', 'agent_7 again', 'pager', scope => 'agent_7')");
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'halt_all'"),
	'conflict: the standby\'s ks_scopes() shows the scope within the bound');
is(as_role($standby, 'agent_7', 'SELECT ks_mode()'), 'halt_all', 'conflict: agent_7 is at halt_all');
is(as_role($standby, 'agent_7', "SELECT (ks_check_task('nightly')->>'allowed')::boolean"), 'f', 'conflict: agent_7\'s tasks are refused');
is(as_role($standby, 'agent_9', 'SELECT count(*) FROM t'), '1', 'conflict: agent_9 reads on');
is(as_role($standby, 'agent_9', "SELECT (ks_check_task('nightly')->>'allowed')::boolean"), 't', 'conflict: and its tasks are allowed');
is($holder->query_safe('SELECT count(*) FROM t'), '1', 'conflict: agent_8, whose lock holds replay, works on');
ok(within($standby, "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'startup' AND wait_event_type = 'Lock'"),
	'conflict: replay still waits');
is(scope_events_replayed(), $before, 'conflict: the standby\'s history holds no new scope event');
$holder->quit;
caught_up();
ok(within($standby, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = 'agent_7'::regrole AND mode = 'halt_all'"),
	'replay brings the event');
is(q1($standby, "SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'and the scope stays');

# ---- 3. a server of another system, signing with the standby's secret ----
q1($primary, "SELECT ks_disengage('done', scope => 'agent_7')");
caught_up();
ok(within($standby, 'SELECT count(*) = 0 FROM ks_scopes()'), 'no scope left on the standby');
my $fake = PostgreSQL::Test::Cluster->new('scope_outrun_fake');
$fake->init;
$fake->append_conf('postgresql.conf', "shared_preload_libraries = 'killswitch'\n");
mkdir $fake->data_dir . '/pg_killswitch', 0700;
append_to_file($fake->data_dir . '/pg_killswitch/signing.key', ks_secret($standby) . "\n");
chmod 0600, $fake->data_dir . '/pg_killswitch/signing.key';
$fake->start;
q1($fake, 'CREATE EXTENSION killswitch CASCADE; CREATE ROLE fake_agent');
q1($fake, "SELECT ks_engage('emergency', 'another system', 'ops', scope => 'fake_agent')");
my $oid = q1($fake, "SELECT 'fake_agent'::regrole::oid");
like(q1($fake, "SELECT convert_from(scopes, 'UTF8') FROM killswitch.committed_scopes()"), qr/"$oid"/,
	'another system: its feed tells its scope, signed with the same secret');
q1($standby, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($fake) . "'; SELECT pg_reload_conf()");
ok(within($standby, "SELECT ks_status()->>'upstream_problem' LIKE 'the upstream is not of this standby''s system: %'"),
	'another system: the standby refuses its word, and says so');
is(q1($standby, 'SELECT count(*) FROM killswitch.active_scopes()'), '0',
	'another system: its scope, signed with the right secret, is not taken');
q1($standby, "ALTER SYSTEM RESET killswitch.upstream_conninfo; SELECT pg_reload_conf()");
ok(within($standby, "SELECT ks_status()->>'upstream_problem' IS NULL"), 'back on its own upstream, it hears again');

done_testing();
