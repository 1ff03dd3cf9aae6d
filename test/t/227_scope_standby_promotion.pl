# Promotion and the heard scopes (ARCHITECTURE §13 "Standbys"): a standby
# whose replay is paused holds a scope heard from its upstream, and keeps it
# through its promotion — the promotion replays what it received, and the
# first look as a primary settles the scopes by the chain; the promoted
# server refuses the agent in scope and lets the others work, and its chain
# verifies.  A scope heard whose WAL never reached the standby (its
# walreceiver cut off, its watcher hearing the primary all the same) holds
# until the promotion, where the history decides, as for the fleet's heard
# state (§11): a change the new primary never received did not happen on
# its timeline.  And a follower that heard a scope from the old primary
# drops it when its upstream tells another timeline — the new primary's
# history decides — and follows the new primary's scopes (as TAP 158 for
# the fleet's heard state).
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

sub as_role
{
	my ($node, $role, $q) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? $out : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

my $primary = ks_node('scope_promote_primary', init => { allows_streaming => 1 });
q1($primary, q(
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
));
$primary->backup('b');
my $conf = "killswitch.standby_max_silence = 0\n";

# ---- 1. the walreceiver cut off: a heard scope, never replayed, and the promotion ----
my $cut = PostgreSQL::Test::Cluster->new('scope_promote_cut');
ks_init_from_backup($cut, $primary, 'b', has_streaming => 1);
$cut->append_conf('postgresql.conf', $conf
	  . "primary_conninfo = 'host=" . $cut->host . " port=1'\n"
	  . "killswitch.upstream_conninfo = '" . ks_host_port($primary) . "'\n");
$cut->start;
ok(within($cut, "SELECT (ks_status()->>'upstream_heard_at') IS NOT NULL"), 'cut off: the watcher hears the primary');
q1($primary, "SELECT ks_engage('halt_all', 'agent_8 loops', 'pager', scope => 'agent_8')");
ok(within($cut, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_8'::regrole AND mode = 'halt_all'"),
	'cut off: the scope is heard');
is(as_role($cut, 'agent_8', 'SELECT ks_mode()'), 'halt_all', 'cut off: agent_8 is halted on the standby');
is(q1($cut, 'SELECT count(*) FROM killswitch.events WHERE scope IS NOT NULL'), '0', 'cut off: nothing replayed');
$cut->promote;
ok(within($cut, 'SELECT NOT pg_is_in_recovery()'), 'cut off: promoted');
ok(within($cut, 'SELECT count(*) = 0 FROM ks_scopes()'),
	'cut off: the first look as a primary settles the scopes by its chain, which never had it');
is(as_role($cut, 'agent_8', 'INSERT INTO t VALUES (8)'), '', 'cut off: agent_8 writes on the new timeline');
is(q1($cut, 'SELECT ok FROM ks_verify_events()'), 't', 'cut off: its chain verifies');
$cut->stop;
q1($primary, "SELECT ks_disengage('next case', scope => 'agent_8')");

# ---- 2. replay paused: the heard scope is kept by the promotion ----
my $standby = PostgreSQL::Test::Cluster->new('scope_promote_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', $conf);
$standby->start;
my $lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
ok(within($standby, "SELECT pg_last_wal_replay_lsn() >= '$lsn'"), 'the standby caught up');
ok(within($standby, 'SELECT count(*) = 0 FROM ks_scopes()'), 'no scope on the standby');
q1($standby, 'SELECT pg_wal_replay_pause()');
ok(within($standby, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is paused');
q1($primary, "SELECT ks_engage('emergency', 'agent_7 loops', 'pager', scope => 'agent_7')");
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'emergency'"),
	'paused: the scope is heard');
is(q1($standby, "SELECT count(*) FROM killswitch.events WHERE scope = 'agent_7'::regrole AND mode = 'emergency'"), '0',
	'paused: not replayed');
$lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
ok(within($standby, "SELECT pg_last_wal_receive_lsn() >= '$lsn'"), 'paused: its WAL was received');
$primary->stop('immediate');
is(as_role($standby, 'agent_7', 'SELECT count(*) FROM t'), 'KS001', 'primary gone: agent_7 still refused on the standby');
$standby->promote;
ok(within($standby, 'SELECT NOT pg_is_in_recovery()'), 'promoted');
is(as_role($standby, 'agent_7', 'INSERT INTO t VALUES (7)'), 'KS001', 'the promoted server keeps the scope: agent_7 refused');
is(as_role($standby, 'agent_8', 'INSERT INTO t VALUES (8)'), '', 'agent_8 writes');
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'emergency' AND reason = 'agent_7 loops'"),
	'ks_scopes() shows it, with its event: the chain holds it now');
is(as_role($standby, 'agent_7', 'INSERT INTO t VALUES (7)'), 'KS001', 'after the first look as a primary: still refused');
$standby->safe_psql('postgres', "SELECT ks_disengage('after the failover', 'ops', scope => 'agent_7')");
is(as_role($standby, 'agent_7', 'INSERT INTO t VALUES (7)'), '', 'the new primary\'s release lowers it');
is(q1($standby, 'SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

# ---- 3. another timeline: a scope heard from the old primary, and the failover ----
my ($old, $heir, $follower) = ks_forking_fleet('scope_fork');
q1($old, 'CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent; CREATE TABLE t (x int); GRANT ALL ON t TO PUBLIC');
$old->wait_for_catchup($heir, 'replay', $old->lsn('insert'));
$heir->wait_for_catchup($follower, 'replay', $old->lsn('insert'));
ok(within($follower, "SELECT (ks_status()->>'upstream_heard_at') IS NOT NULL"), 'fork: the follower hears the old primary');
$heir->stop;
q1($old, "SELECT ks_engage('halt_all', 'old history', 'ops', scope => 'agent_7')");
ok(within($follower, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'halt_all'"),
	'fork: the follower heard the scope from the old primary (its WAL never came)');
$old->stop('immediate');
$heir->start;
$heir->promote;
ok(within($heir, "SELECT NOT pg_is_in_recovery()"), 'fork: the heir is promoted');
is(q1($heir, 'SELECT count(*) FROM ks_scopes()'), '0', 'fork: its history has no scope');
q1($follower, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($heir) . "'; SELECT pg_reload_conf()");
ok(within($follower, 'SELECT count(*) = 0 FROM ks_scopes()'),
	'fork: told another timeline, the follower drops the scope heard from the old history');
# the scopes end, then the line is logged (upstream.c): wait for it
ok($follower->wait_for_log(qr/no longer holds the scopes it heard ahead of replay: its upstream is on another history/),
	'fork: and says why');
is(as_role($follower, 'agent_7', 'SELECT ks_mode()'), 'disengaged', 'fork: agent_7 is free on the follower');
q1($heir, "SELECT ks_engage('emergency', 'new history', 'ops', scope => 'agent_7')");
ok(within($follower, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_7'::regrole AND mode = 'emergency'"),
	'fork: the follower follows the new primary\'s scope');
ok(within($follower, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = 'agent_7'::regrole AND mode = 'emergency'"),
	'fork: replay brings it on the new timeline');
q1($heir, "SELECT ks_disengage('new history released', 'ops', scope => 'agent_7')");
ok(within($follower, 'SELECT count(*) = 0 FROM ks_scopes()'), 'fork: and its release, replayed');

done_testing();
