# A standby drops what it heard ahead of replay when its upstream is on
# another timeline, even at the same generation (ARCHITECTURE §11): the
# promoted standby's emergency at the generation of a halt heard from the
# old primary is taken at once, with replay held.  158 covers a new
# history that tells a lower generation.
#
# The follower takes its WAL from the heir and hears the primary directly.
# The heir stops; the primary engages a halt the follower hears and cannot
# replay; the primary dies; the follower's replay is held.  The heir is
# promoted and engages emergency — the same generation as the heard halt,
# on timeline 2 — before the follower hears it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub within { my ($node, $sql, $secs) = @_; return ks_within($node, $sql, $secs // 30); }

sub status { my ($node, $f) = @_; return q1($node, "SELECT coalesce(ks_status()->>'$f', 'null')"); }

# WAL from the heir, word from the primary; the history forks at $g0
my ($primary, $heir, $follower, $g0) = ks_forking_fleet('timeline');
is(status($follower, 'replayed_generation'), $g0, 'the follower replayed the last change');
ok(within($follower, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL"), 'and hears the primary');

# ---- a halt heard from the old primary on timeline 1 ----
$heir->stop;
my $h = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'old history', 'ops')");
ok(within($follower, "SELECT ks_mode() = 'halt_all' AND ks_status()->>'heard_generation' = '$h'"),
	'the follower heard the halt ahead of replay');
$primary->stop('immediate');
q1($follower, 'SELECT pg_wal_replay_pause()');
ok(within($follower, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is held on the follower');

# ---- the heir, promoted, engages at the same generation on timeline 2 ----
$heir->start;
$heir->promote;
ok(within($heir, "SELECT ks_status()->>'role' = 'primary'"), 'the heir is promoted');
my $e = q1($heir, "SELECT generation FROM ks_engage('emergency', 'new history', 'ops')");
is($e, $h, 'its emergency has the generation the follower heard from the old primary');
is(q1($heir, 'SELECT timeline_id FROM killswitch.committed_state()'), 2, 'on timeline 2');
q1($follower, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($heir) . "'; SELECT pg_reload_conf()");
ok(within($follower, "SELECT ks_mode() = 'emergency' AND ks_status()->>'heard_generation' = '$e'"),
	'the follower takes the new history\'s emergency at once');
is(status($follower, 'replayed_generation'), $g0, 'with replay still held');

# ---- and follows the new primary once replay goes on ----
my $r = q1($heir, "SELECT generation FROM ks_disengage('new history released', 'ops')");
q1($follower, 'SELECT pg_wal_replay_resume()');
ok(within($follower, "SELECT ks_mode() = 'disengaged' AND ks_status()->>'replayed_generation' = '$r' "
	  . "AND ks_status()->>'heard_generation' IS NULL", 60),
	'replay brings the new primary\'s release');

$follower->stop;
$heir->stop;
done_testing();
