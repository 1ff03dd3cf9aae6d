# A standby cut off from its primary says so, and may be told to fail
# closed (ARCHITECTURE §11): its primary_conninfo names a dead port, the
# primary engages halt_all.  ks_status() on the standby and on its
# cascading standby shows how old the last word from the primary is and
# why the upstream cannot be heard, and `killswitch status` warns; with
# killswitch.standby_max_silence both hold halt_all (a floor, no tamper
# verdict) until word comes again.  killswitch.upstream_conninfo lets the
# standby hear the primary's halt without any WAL; a release waits for
# replay; when the WAL flows again, the floor is lifted and the standbys
# follow the release.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub within { my ($node, $sql, $secs) = @_; return ks_within($node, $sql, $secs // 60); }

# killswitch status on a node: (exit status, stdout, stderr).
sub cli_status
{
	my ($node, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-d', $node->connstr('postgres'), @args, 'status' ],
		'>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# Set a setting with ALTER SYSTEM and reload.
sub set_and_reload
{
	my ($node, $name, $value) = @_;
	q1($node, "ALTER SYSTEM SET $name = '$value'");
	q1($node, 'SELECT pg_reload_conf()');
}

my $primary = ks_node('silence_primary', init => { allows_streaming => 1 }, no_extension => 1);
q1($primary, q(
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE ops LOGIN IN ROLE killswitch_admin;
));
$primary->backup('b');
my $dead = PostgreSQL::Test::Cluster::get_free_port();
my $host = $primary->host;

my $standby = PostgreSQL::Test::Cluster->new('silence_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	"primary_conninfo = 'host=$host port=$dead'\nkillswitch.standby_max_silence = 0\n");
$standby->start;
my $cascade = PostgreSQL::Test::Cluster->new('silence_cascade');
ks_init_from_backup($cascade, $primary, 'b', has_streaming => 1);
$cascade->append_conf('postgresql.conf',
	"primary_conninfo = '" . $standby->connstr . "'\nkillswitch.standby_max_silence = 0\n");
$cascade->start;
my @followers = ($standby, $cascade);

my $engaged = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'while they are cut off', 'ops')");

# ---- without a bound: the staleness shows ----
ok(within($standby, "SELECT (ks_status()->>'upstream_age_ms')::bigint > 3500"), 'the standby: the last word grows old');
like(q1($standby, "SELECT ks_status()->>'upstream_problem'"), qr/could not connect to the upstream/,
	'the standby says it cannot connect to its upstream');
is(q1($standby, "SELECT (ks_status()->>'upstream_heard_at') IS NULL, ks_status()->>'upstream_lost'"), 't|false',
	'the standby has never heard its upstream, and holds no halt for it without a bound');
ok(within($cascade, "SELECT (ks_status()->>'upstream_heard_at') IS NOT NULL")
	  && within($cascade, "SELECT (ks_status()->>'upstream_age_ms')::bigint > 3500"),
	'the cascade hears its upstream, and knows that the word from the primary is old all the same');
like(q1($cascade, "SELECT ks_status()->>'upstream_problem'"), qr/has had no word from the primary itself/,
	'the cascade says why');
for my $node (@followers)
{
	my $name = $node->name;
	is(q1($node, 'SELECT ks_mode()'), 'disengaged', "$name: unbounded, it still says disengaged");
	my ($rc, $out, $err) = cli_status($node);
	is($rc, 0, "$name: killswitch status exits 0 (disengaged)");
	like($out, qr/^upstream:\s+last word from the primary \d+ ms ago/m, "$name: killswitch status shows the last word");
	like($err, qr/warning: this standby cannot hear its upstream/, "$name: and warns");
	($rc, $out, $err) = cli_status($node, '--json');
	like($out, qr/"upstream_age_ms": \d+/, "$name: killswitch status --json has upstream_age_ms");
}

# ---- killswitch.standby_max_silence: fail closed ----
set_and_reload($_, 'killswitch.standby_max_silence', '2s') for @followers;
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT ks_mode() = 'halt_all'"), "$name: with the bound, it holds halt_all");
	is(q1($node, "SELECT ks_status()->>'upstream_lost' || ' ' || (ks_status()->>'integrity')"), 'true ok',
		"$name: upstream_lost, and no tamper verdict");
	is(q1($node, "SELECT ks_check_task('nightly_report')->>'allowed'"), 'false', "$name: tasks are refused");
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT ks_assert_task('nightly_report')");
	like($err, qr/has not heard its upstream for longer than killswitch.standby_max_silence/,
		"$name: the refusal says why");
	my $rc;
	($rc, $out, $err) = cli_status($node);
	is($rc, 2, "$name: killswitch status exits 2 (engaged)");
	like($err, qr/warning: this standby has had no word from its primary for \d+ ms and holds halt_all/,
		"$name: and warns that it holds the halt");
}

# ---- the upstream heard without any WAL: the halt, not the release ----
set_and_reload($standby, 'killswitch.upstream_conninfo', $primary->connstr);
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT ks_status()->>'generation' = '$engaged' AND ks_status()->>'upstream_lost' = 'false'"),
		"$name: hears the primary's halt_all, and the floor is lifted");
	is(q1($node, "SELECT ks_mode() || ' ' || (ks_status()->>'source')"), 'halt_all sql', "$name: in the primary's halt");
	is(q1($node, "SELECT ks_status()->>'replayed_generation' IS NULL"), 't', "$name: with nothing replayed");
}
like(slurp_file($standby->data_dir . '/pg_killswitch/kill_switch_state.json'), qr/while they are cut off/,
	'the standby\'s state file holds the heard halt');
q1($primary, "SELECT ks_disengage('released', 'ops')");
my $released_at = q1($primary, 'SELECT clock_timestamp()');
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT (ks_status()->>'upstream_heard_at')::timestamptz > '$released_at'::timestamptz + interval '100 ms'"),
		"$name: has heard its upstream since the release");
	is(q1($node, 'SELECT ks_mode()'), 'halt_all', "$name: still halted: a release comes only by replay");
}

# ---- the WAL flows again ----
set_and_reload($standby, 'primary_conninfo', $primary->connstr);
my $gen = q1($primary, "SELECT ks_status()->>'generation'");
for my $node (@followers)
{
	my $name = $node->name;
	ok(within($node, "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$gen'"),
		"$name: follows the release by replay");
	is(q1($node, "SELECT ks_status()->>'upstream_lost' || ' ' || (ks_status()->>'replayed_generation')"),
		"false $gen", "$name: no floor, replay at the release");
	ok(within($node, "SELECT ks_status()->>'upstream_problem' IS NULL"), "$name: no problem left");
}

$cascade->stop;
$standby->stop;
$primary->stop;
done_testing();
