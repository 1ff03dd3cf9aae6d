# A restarted standby holds its scopes from its first connection
# (ARCHITECTURE §13 "Standbys"): at start the postmaster loads the
# standby's own scope copy, pg_killswitch/scopes.json — the scopes it had
# replayed or heard before it stopped — as heard scopes; the watcher's look
# at the replicated history then ends one only when the chain holds its
# scope's event at or past its generation, so it never lowers a scope it
# held: only replaying a release does.
#
# The case that can only pass by the copy: a scope heard ahead of replay
# (replay delayed by recovery_min_apply_delay), then the primary stopped —
# no upstream to hear again — and the standby restarted with replay still
# delayed.  killswitch.standby_max_silence = 0, so the silence floor does not
# halt the other agents meanwhile.  And a standby made from a base backup
# taken while a scope is active (its copy is the primary's): it holds the
# scope, and the primary's release lowers it once replayed — never frozen.
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

my $conf = "max_standby_streaming_delay = -1\nkillswitch.standby_max_silence = 0\n";
my $primary = ks_node('scope_restart_primary', init => { allows_streaming => 1 });
q1($primary, q(
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
INSERT INTO t VALUES (1);
GRANT SELECT ON t TO PUBLIC;
));
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('scope_restart_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', $conf);
$standby->start;

sub caught_up
{
	my ($node) = @_;
	my $lsn = q1($primary, 'SELECT pg_current_wal_lsn()');
	ok(within($node, "SELECT pg_last_wal_replay_lsn() >= '$lsn'"), $node->name . ': caught up');
}

# agent_7's scope replayed; then a base backup holds the primary's copy of it
q1($primary, "SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7')");
caught_up($standby);
is(q1($standby, "SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'agent_7\'s scope replayed');
$primary->backup('b2');
my $copy = PostgreSQL::Test::Cluster->new('scope_restart_from_backup');
ks_init_from_backup($copy, $primary, 'b2', has_streaming => 1);
$copy->append_conf('postgresql.conf', $conf);

# replay delayed from now on; agent_8's scope is heard ahead of it
$standby->append_conf('postgresql.conf', "recovery_min_apply_delay = '1h'\n");
$standby->reload;
ok(within($standby, "SELECT current_setting('recovery_min_apply_delay') = '1h'"), 'replay is delayed by an hour');
q1($primary, "SELECT ks_engage('emergency', 'agent_8 loops', 'pager', scope => 'agent_8')");
ok(within($standby, "SELECT count(*) = 1 FROM ks_scopes() WHERE scope = 'agent_8'::regrole AND mode = 'emergency'"),
	'agent_8\'s scope is heard ahead of replay');
is(q1($standby, "SELECT count(*) FROM killswitch.events WHERE scope = 'agent_8'::regrole"), '0',
	'replay has not brought it');

# no upstream to hear again, and the standby restarted with replay still delayed
my $before = q1($standby, 'SELECT version FROM killswitch.committed_scopes()');
$primary->stop('fast');
$standby->restart;
my $first = as_role($standby, 'agent_8', 'SELECT count(*) FROM t');
is($first, 'KS001', 'restarted: agent_8 is refused in its first session (the scope from the copy)');
is(as_role($standby, 'agent_7', 'SELECT ks_mode()'), 'halt_all', 'restarted: agent_7 at halt_all');
is(as_role($standby, 'agent_9', 'SELECT count(*) FROM t'), '1', 'restarted: agent_9 reads on');
ok($standby->log_contains(qr/the standby holds 2 scopes it held before it stopped/), 'the log says what it loaded');
is(q1($standby, "SELECT count(*) FROM killswitch.events WHERE scope = 'agent_8'::regrole"), '0',
	'restarted: the standby\'s history still holds no event of agent_8');

# the watcher's first look: it writes the copy (agent_7 now replay's), and lowers nothing
ok(within($standby, "SELECT version > $before FROM killswitch.committed_scopes()"),
	'the watcher has looked at the replicated history (the copy was written)');
is(q1($standby, "SELECT string_agg(scope::text || ' ' || mode, ', ' ORDER BY scope::text) FROM ks_scopes()"),
	'agent_7 halt_all, agent_8 emergency', 'the look kept both scopes');
is(as_role($standby, 'agent_8', 'SELECT count(*) FROM t'), 'KS001', 'agent_8 is still refused');

# the primary back, replay undelayed: agent_8's event replayed, then its release lowers it
$primary->start;
$standby->append_conf('postgresql.conf', "recovery_min_apply_delay = 0\n");
$standby->reload;
caught_up($standby);
is(q1($standby, "SELECT count(*) FROM killswitch.events WHERE scope = 'agent_8'::regrole"), '1', 'replay brought agent_8\'s event');
q1($primary, "SELECT ks_disengage('fixed', scope => 'agent_8')");
caught_up($standby);
ok(within($standby, "SELECT count(*) = 0 FROM ks_scopes() WHERE scope = 'agent_8'::regrole"),
	'the release replayed lowers agent_8');
is(as_role($standby, 'agent_8', 'SELECT count(*) FROM t'), '1', 'agent_8 reads again');

# the standby from the base backup: the primary's copy, a raised copy at worst
$copy->start;
is(as_role($copy, 'agent_7', 'SELECT ks_mode()'), 'halt_all', 'from a base backup: agent_7 held from the first session');
caught_up($copy);
q1($primary, "SELECT ks_disengage('fixed', scope => 'agent_7')");
caught_up($copy);
ok(within($copy, 'SELECT count(*) = 0 FROM ks_scopes()'), 'from a base backup: the release replayed lowers it');
is(as_role($copy, 'agent_7', 'SELECT ks_mode()'), 'disengaged', 'agent_7 is free there');
caught_up($standby);
ok(within($standby, 'SELECT count(*) = 0 FROM ks_scopes()'), 'and on the restarted standby');

done_testing();
