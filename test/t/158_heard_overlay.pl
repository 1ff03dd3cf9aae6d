# What a standby hears from its upstream ahead of replay is an overlay
# beside what it replayed (ARCHITECTURE §11): it raises at once, and ends
# when replay reaches its generation or when the upstream tells of another
# history — never freezing the standby at a generation its primary will
# not reach.  And word from another system is refused.
#
# The standby under test ("follower") takes its WAL from a second standby
# ("heir") and hears the primary directly (killswitch.upstream_conninfo).
# With its replay held, a halt it heard stays in force over the release it
# also heard, until replay brings the release.  The heir stops; the primary engages three changes, which the follower
# hears but cannot replay.  The primary dies; the follower restarts and
# still holds the halt it heard.  The heir is promoted: its generations go
# on from where its replay was, below what the follower heard, on a new
# timeline.  The follower, now hearing the heir, follows its emergency and
# its committed release (before the fix it kept the old primary's
# generation and ignored both), and after another restart keeps no
# generation of the old history.  Then a server of another system, signed
# with the same secret, is refused.
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
my ($primary, $heir, $follower, $g0) = ks_forking_fleet('overlay');
ok(within($follower, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL"), 'the follower hears the primary');
is(status($follower, 'replayed_generation'), $g0, 'and replayed its last change');

# ---- a heard halt is lowered by the replayed release, not by the heard one ----
q1($follower, 'SELECT pg_wal_replay_pause()');
ok(within($follower, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is held on the follower');
my $h1 = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'heard first', 'ops')");
ok(within($follower, "SELECT ks_mode() = 'halt_all' AND ks_status()->>'heard_generation' = '$h1'"),
	'the follower hears the halt ahead of replay');
my $r1 = q1($primary, "SELECT generation FROM ks_disengage('heard first, released', 'ops')");
my $after = q1($primary, 'SELECT pg_current_wal_insert_lsn()');
# an answer that knows of WAL past the release was told after it
ok(within($follower, "SELECT pg_last_wal_replay_lsn() + (ks_status()->>'replay_behind_bytes')::numeric >= '$after'::pg_lsn"),
	'the follower has heard the primary after its release');
is(q1($follower, 'SELECT ks_mode()') . ' ' . status($follower, 'heard_generation') . ' ' . status($follower, 'replayed_generation'),
	"halt_all $h1 $g0", 'the heard release lowers nothing: the halt holds until replay');
q1($follower, 'SELECT pg_wal_replay_resume()');
ok(within($follower, "SELECT ks_mode() = 'disengaged' AND ks_status()->>'replayed_generation' = '$r1' "
	  . "AND ks_status()->>'heard_generation' IS NULL"),
	'replay brings the release: the heard halt ends with it');
$g0 = $r1;
$heir->wait_for_catchup($follower, 'replay', $primary->lsn('insert'));

# ---- the old primary's changes, heard and not replayed ----
$heir->stop;
q1($primary, "SELECT count(ks_engage('halt_all', 'old history ' || i, 'ops')) FROM generate_series(1, 3) i");
is(status($primary, 'generation'), $g0 + 3, 'the old primary moved three generations');
ok(within($follower, "SELECT ks_mode() = 'halt_all' AND ks_status()->>'heard_generation' = '" . ($g0 + 3) . "'"),
	'the follower heard the halt ahead of replay');
is(status($follower, 'replayed_generation') . ' ' . status($follower, 'generation'), "$g0 " . ($g0 + 3),
	'its replay is at the old generation; the generation shown is the heard one');
{
	my ($out, $err, $heard) = ('', '', $g0 + 3);
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-d', $follower->connstr('postgres'), '--json', 'status' ],
		'>', \$out, '2>', \$err);
	like($out, qr/"heard_generation": $heard[,}]/,
		'killswitch status --json shows the heard generation');
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-d', $follower->connstr('postgres'), 'status' ],
		'>', \$out, '2>', \$err);
	like($out, qr/^heard: +generation $heard from the upstream, ahead of replay$/m, 'and so does its text');
}
$primary->stop('immediate');

# ---- a restart keeps the heard halt, beside what was replayed ----
$follower->restart;
is(q1($follower, 'SELECT ks_mode()') . ' ' . status($follower, 'heard_generation'), 'halt_all ' . ($g0 + 3),
	'after a restart the follower still holds the halt it heard (its upstream is gone)');
is(status($follower, 'replayed_generation'), $g0, 'and replay is where it was');
is(status($follower, 'integrity'), 'ok', 'no tamper verdict');

# ---- failover: the heir goes on from the generation it replayed ----
$heir->start;
$heir->promote;
ok(within($heir, "SELECT ks_status()->>'role' = 'primary' AND ks_mode() = 'disengaged'"),
	'the heir is promoted, disengaged');
is(status($heir, 'generation'), $g0, 'at the generation it replayed, below what the follower heard');
q1($follower, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($heir) . "'; SELECT pg_reload_conf()");

my $e = q1($heir, "SELECT generation FROM ks_engage('emergency', 'new history', 'ops')");
is($e, $g0 + 1, 'the new primary engages emergency at a generation the follower heard from the old one');
ok(within($follower, "SELECT ks_mode() = 'emergency' AND ks_status()->>'generation' = '$e'"),
	'the follower follows the new primary into emergency');
ok(within($follower, "SELECT ks_status()->>'replayed_generation' = '$e' AND ks_status()->>'heard_generation' IS NULL", 60),
	'replay brings it on the new timeline, and nothing heard is held above it');

my $r = q1($heir, "SELECT generation FROM ks_disengage('new history released', 'ops')");
ok(within($follower, "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$r'", 60),
	'the follower follows the new primary\'s committed release');
is(status($follower, 'upstream_problem'), 'null', 'it hears the new primary without a problem');

# ---- a restart keeps no generation of the old history ----
$follower->restart;
is(q1($follower, 'SELECT ks_mode()') . ' ' . status($follower, 'generation') . ' ' . status($follower, 'heard_generation'),
	"disengaged $r null", 'after a restart the follower is where the new primary is, nothing heard held');
my $h = q1($heir, "SELECT generation FROM ks_engage('halt_all', 'again', 'ops')");
ok(within($follower, "SELECT ks_mode() = 'halt_all' AND ks_status()->>'generation' = '$h'"),
	'it follows the next halt');
$r = q1($heir, "SELECT generation FROM ks_disengage('again released', 'ops')");
cmp_ok($r, '>', $g0 + 3, 'the new history has passed the generation heard from the old one');
ok(within($follower, "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$r'", 60),
	'and its release');

# ---- word from another system, signed with the same secret, is refused ----
my $fake = ks_node('overlay_fake');
my $copy = $fake->data_dir . '/pg_killswitch/last_applied.json';
unlink $copy;
append_to_file($copy, ks_signed_text(ks_secret($heir), mode => 'HALT_ALL',
	engaged_at => '2030-01-01T00:00:00.000000+00:00', reason => 'another system',
	triggered_by => 'agent', generation => $r + 5));
q1($follower, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($fake) . "'; SELECT pg_reload_conf()");
ok(within($follower, "SELECT ks_status()->>'upstream_problem' LIKE 'the upstream is not of this standby''s system: its system identifier is %'"),
	'the follower refuses word from another system, and says so');
is(q1($follower, 'SELECT ks_mode()') . ' ' . status($follower, 'heard_generation'), 'disengaged null',
	'its signed halt is not taken');
q1($follower, "ALTER SYSTEM SET killswitch.upstream_conninfo = '" . ks_host_port($heir) . "'; SELECT pg_reload_conf()");
ok(within($follower, "SELECT ks_status()->>'upstream_problem' IS NULL"),
	'back on its own upstream, it hears again');
is(q1($follower, 'SELECT ks_mode()'), 'disengaged', 'still disengaged');

$follower->stop;
$heir->stop;
$fake->stop;
done_testing();
