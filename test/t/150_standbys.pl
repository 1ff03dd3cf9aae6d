# Standbys follow the primary through the WAL (ARCHITECTURE §11): a
# streaming standby and a cascading standby behind it say what the primary
# committed, in every mode; in an emergency their busy agent sessions are
# ended and every agent statement is refused, with the snapshot in the
# standby's file; an outside write to a standby's state file is put back; a
# standby restarts in the state it replayed, writes no history and creates
# no key; a standby without the library stops at the first record with
# PostgreSQL's error, never silently.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;
use IPC::Run;

my $primary = ks_node('fleet_primary', init => { allows_streaming => 1 }, no_extension => 1);
$primary->safe_psql('postgres', q(
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE ROLE ops LOGIN IN ROLE killswitch_admin;
CREATE TABLE work (x int);
GRANT SELECT ON work TO bot;
));
# made while engaged: a new standby starts engaged
$primary->safe_psql('postgres', "SELECT ks_engage('halt_noncritical', 'before the backup', 'ops')");
$primary->backup('b1');

my $standby = PostgreSQL::Test::Cluster->new('fleet_standby');
ks_init_from_backup($standby, $primary, 'b1', has_streaming => 1);
$standby->start;
$standby->backup('b2');
my $cascade = PostgreSQL::Test::Cluster->new('fleet_cascade');
ks_init_from_backup($cascade, $standby, 'b2', has_streaming => 1);
$cascade->append_conf('postgresql.conf', "killswitch.refuse_agent_logins = on\n");
$cascade->start;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

for my $node ($standby, $cascade)
{
	my $name = $node->name;
	is(q1($node, 'SELECT ks_mode()'), 'halt_noncritical', "$name: made while engaged, starts engaged");
	is(q1($node, "SELECT ks_status()->>'role'"), 'standby', "$name: role standby");
}
is(q1($primary, "SELECT ks_status()->>'role'"), 'primary', 'the primary says primary');

# every mode, and the release, followed by both
my @steps = (
	[ "SELECT ks_engage('halt_all', 'café ☕ anomaly', 'ops')", 'halt_all' ],
	[ "SELECT ks_disengage('all clear', 'ops')", 'disengaged' ],
	[ "SELECT ks_engage('halt_noncritical', 'partial', 'ops')", 'halt_noncritical' ],
	[ "SELECT ks_engage('halt_all', 'full', 'ops')", 'halt_all' ],
	[ "SELECT ks_disengage('clear again', 'ops')", 'disengaged' ]);
for my $step (@steps)
{
	my ($sql, $mode) = @$step;
	q1($primary, $sql);
	my $gen = q1($primary, 'SELECT ks_status()->>\'generation\'');
	for my $node ($standby, $cascade)
	{
		my $name = $node->name;
		ok($node->poll_query_until('postgres',
			"SELECT ks_mode() = '$mode' AND ks_status()->>'generation' = '$gen'"),
			"$name follows: $mode, generation $gen");
	}
}
my $st = q1($cascade, "SELECT ks_status()->>'integrity', ks_status()->>'state_lsn' IS NOT NULL, ks_status()->>'source'");
is($st, "ok|t|sql", 'the cascading standby: integrity ok, the replay position of the state, source sql');
q1($primary, "SELECT ks_engage('halt_all', 'café ☕ anomaly', 'ops')");
ok($cascade->poll_query_until('postgres', "SELECT ks_mode() = 'halt_all'"), 'cascade halted again');
is(q1($cascade, "SELECT ks_status()->'last_engagement'->>'reason'"), 'café ☕ anomaly',
	'non-ASCII text arrives whole');
is(q1($cascade, "SELECT ks_check_task('nightly_report')->>'allowed'"), 'false',
	'ks_check_task on the cascading standby refuses work');
is(q1($standby, 'SELECT ks_engaged()'), 't', 'ks_engaged on the standby');

# the state file on each standby holds the primary's bytes
my $pfile = slurp_file($primary->data_dir . '/pg_killswitch/kill_switch_state.json');
for my $node ($standby, $cascade)
{
	is(slurp_file($node->data_dir . '/pg_killswitch/kill_switch_state.json'), $pfile,
		$node->name . ": the state file holds the primary's bytes");
}

# nothing changes on a standby through SQL
my ($ret, $out, $err) = $standby->psql('postgres', "SELECT ks_engage('emergency', 'here', 'ops')");
like($err, qr/cannot execute ks_engage\(\) during recovery|read-only transaction/,
	'ks_engage on a standby: refused');

# the command refuses a standby's data directory
{
	my ($cout, $cerr) = ('', '');
	my $ok = IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", 'engage', 'emergency', '--reason', 'here', '-D',
		$standby->data_dir ], '>', \$cout, '2>', \$cerr);
	ok(!$ok, 'killswitch -D on a standby: fails');
	like($cerr, qr/is a standby's data directory/, 'and says why');
	for my $how ([ '-d', $standby->connstr('postgres') ], [ '-D', $standby->data_dir ])
	{
		($cout, $cerr) = ('', '');
		IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", @$how, '--json', 'status' ],
			'>', \$cout, '2>', \$cerr);
		like($cout, qr/"role"\s*:\s*"standby"/, "killswitch $how->[0] status says role standby");
	}
}

# an outside write to a standby's file is put back, never lowers it
my $secret = ks_secret($standby);
my $offset = -s $standby->logfile;
my $forged = ks_release_signed_text($secret, ks_release_key($standby),
	mode => 'DISENGAGED', engaged_at => undef, reason => 'sneaky', triggered_by => 'bot',
	generation => 999, replaces => ks_held_signature($standby));
{
	open my $fh, '>', $standby->data_dir . '/pg_killswitch/kill_switch_state.json' or die;
	print $fh $forged;
	close $fh;
}
ok($standby->wait_for_log(qr/refused an outside change of the kill switch state file on a standby/, $offset),
	'an outside write on a standby is refused');
ok($standby->poll_query_until('postgres',
	"SELECT pg_read_file('pg_killswitch/kill_switch_state.json') = pg_read_file('pg_killswitch/last_applied.json')"),
	'the replayed state is put back');
is(q1($standby, 'SELECT ks_mode()'), 'halt_all', 'and the standby stays halted');
is(q1($standby, 'SELECT count(*) FROM killswitch.events WHERE generation = 999'), '0',
	'a standby writes no history');

# emergency: busy agent sessions on each standby ended, statements refused
my %bg;
for my $node ($standby, $cascade)
{
	my $bot = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'bot' ]);
	$bot->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(300);\n");
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'bot' AND state = 'active'"),
		$node->name . ': an agent is busy');
	$bg{ $node->name } = $bot;
}
$offset = -s $cascade->logfile;
q1($primary, "SELECT ks_engage('emergency', 'stop everything', 'ops')");
for my $node ($standby, $cascade)
{
	my $name = $node->name;
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'bot'"),
		"$name: the busy agent session is ended");
	ok($node->poll_query_until('postgres',
		"SELECT (pg_stat_file('pg_killswitch/kill_switch_snapshot.json', true)).size > 0"),
		"$name: the snapshot is in the standby's file");
	like(q1($node, "SELECT pg_read_file('pg_killswitch/kill_switch_snapshot.json')"),
		qr/"bot"/, "$name: the snapshot names the agent session");
	eval { $bg{$name}->quit };
}
ok($cascade->wait_for_log(qr/This is a standby: the snapshot is in the file/, $offset),
	'the cascade says in its WARNING that it is a standby');
($ret, $out, $err) = $standby->psql('postgres', 'SELECT count(*) FROM work', extra_params => [ '-U', 'bot' ]);
like($err, qr/kill switch/i, 'standby: an agent statement is refused in emergency');
($ret, $out, $err) = $cascade->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'bot' ]);
isnt($ret, 0, 'cascade (refuse_agent_logins = on): an agent login is refused');

# a standby restarts in the state it replayed
$standby->restart;
is(q1($standby, 'SELECT ks_mode()'), 'emergency', 'a restarted standby is in the replayed mode');
is(q1($standby, "SELECT ks_status()->>'integrity'"), 'ok', 'with integrity ok');

# a standby never creates a key: without the secret it fails closed, follows
# the WAL in memory, and writes no secret
$standby->stop;
unlink $standby->data_dir . '/pg_killswitch/signing.key';
unlink $standby->data_dir . '/pg_killswitch/release.key';
$standby->start;
ok(!-e $standby->data_dir . '/pg_killswitch/signing.key', 'no secret created on a standby');
ok(!-e $standby->data_dir . '/pg_killswitch/release.key', 'no release key created on a standby');
q1($primary, "SELECT ks_disengage('released', 'ops')");
ok($standby->poll_query_until('postgres', "SELECT ks_mode() = 'disengaged'"),
	'without its secret the standby still follows the WAL');

# a standby without the library stops at the first record, saying why
$primary->backup('b3');
my $bare = PostgreSQL::Test::Cluster->new('fleet_bare');
ks_init_from_backup($bare, $primary, 'b3', has_streaming => 1);
$bare->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$bare->start;
$offset = -s $bare->logfile;
q1($primary, "SELECT ks_engage('halt_all', 'to a bare standby', 'ops')");
ok($bare->wait_for_log(qr/resource manager with ID 177 not registered/, $offset),
	'a standby without the library: a clear error');
like(slurp_file($bare->logfile), qr/Include the extension module that implements this resource manager in "?shared_preload_libraries"?/,
	'with the hint to preload it');
$bare->stop('immediate', fail_ok => 1);

$cascade->stop;
$standby->stop;
$primary->stop;
done_testing();
