# Hard enforcement and the emergency (ARCHITECTURE §8.3, §9): members of
# killswitch_agent are stopped by the server itself, whether they check or
# not, and cannot lift their own halt; emergency snapshots, ends agent
# sessions that are busy, refuses every agent statement with KS001 and alerts.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(time usleep);
use KsTest;

my $node = ks_node('enforce', conf => qq(
killswitch.alert_command = 'env | grep ^KS_ > alert.env'
max_connections = 100
));
my $dir = $node->data_dir . '/pg_killswitch';
$node->safe_psql('postgres', q(
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE ROLE helper NOLOGIN;
GRANT helper TO bot;
CREATE DATABASE other;
CREATE TABLE t (x int, note text);
GRANT ALL ON t TO bot, helper;
CREATE FUNCTION add_row(v int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t VALUES (v, 'via function'); RETURN v; END $$;
CREATE FUNCTION definer_add(v int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public AS $$ BEGIN INSERT INTO t VALUES (v, 'definer'); RETURN v; END $$;
GRANT EXECUTE ON FUNCTION definer_add(int) TO bot;
));
$node->safe_psql('other', 'CREATE TABLE o (x int); GRANT ALL ON o TO bot;');

sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as the agent; return (exit code, stderr).
sub as_bot
{
	my ($sqltext, $db) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db // 'postgres', $sqltext, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', 'bot' ], on_error_stop => 1);
	return ($rc, $err, $out);
}

sub refused
{
	my ($sqltext, $what, $db) = @_;
	my ($rc, $err) = as_bot($sqltext, $db);
	ok($rc != 0 && $err =~ /kill switch engaged \(\w+\): .* by agent "bot" refused/, "refused: $what")
	  or diag("rc $rc: $err");
}

# Refused by any error (PostgreSQL's own or ours), with nothing written.
sub not_done
{
	my ($sqltext, $what) = @_;
	my $before = sql('SELECT count(*) FROM t');
	my ($rc, $err) = as_bot($sqltext);
	ok($rc != 0 && sql('SELECT count(*) FROM t') eq $before, "refused: $what") or diag($err);
}

# Allowed, retrying for a while: for changes the watcher passes on.
sub eventually_allowed
{
	my ($sqltext, $what, $db) = @_;
	my ($rc, $err);
	for (1 .. 300)
	{
		($rc, $err) = as_bot($sqltext, $db);
		last if $rc == 0;
		usleep(200_000);
	}
	is($rc, 0, "allowed: $what") or diag($err);
}

sub allowed
{
	my ($sqltext, $what, $db) = @_;
	my ($rc, $err) = as_bot($sqltext, $db);
	is($rc, 0, "allowed: $what") or diag($err);
}

my %writes = (
	'INSERT' => 'INSERT INTO t VALUES (1)',
	'UPDATE' => 'UPDATE t SET x = x',
	'DELETE' => 'DELETE FROM t WHERE false',
	'MERGE' => 'MERGE INTO t USING (SELECT 1 AS x) s ON t.x = s.x WHEN NOT MATCHED THEN INSERT VALUES (s.x)',
	'SELECT FOR UPDATE' => 'SELECT * FROM t FOR UPDATE',
	'SELECT FOR SHARE' => 'SELECT * FROM t FOR SHARE',
	'DDL' => 'CREATE TEMP TABLE bot_table (x int)',
	'COPY FROM' => "COPY t (x) FROM STDIN;\n7\n\\.\n",
	'writable CTE' => 'WITH w AS (INSERT INTO t VALUES (2) RETURNING x) SELECT * FROM w',
	'a write inside a function called by SELECT' => 'SELECT add_row(3)',
	'a SECURITY DEFINER function owned by a superuser' => 'SELECT definer_add(4)',
	'a write in another database' => ['INSERT INTO o VALUES (1)', 'other'],
);

# 1. Disengaged: every kind of write is allowed.
for my $k (sort keys %writes)
{
	my ($s, $db) = ref $writes{$k} ? @{ $writes{$k} } : ($writes{$k});
	allowed($s, "$k while disengaged", $db);
}

# 2. halt_all: every kind of write refused; reads allowed.
sql("SELECT ks_engage('halt_all', 'enforcement test', 'tester')");
for my $k (sort keys %writes)
{
	my ($s, $db) = ref $writes{$k} ? @{ $writes{$k} } : ($writes{$k});
	refused($s, "$k in halt_all", $db);
}
allowed('SELECT count(*) FROM t', 'reading in halt_all');
allowed("SELECT ks_mode(), ks_engaged(), ks_status()->>'mode'", "reading the kill switch's state");
allowed('SELECT x FROM o', 'reading in another database', 'other');

# A plan cached by PL/pgSQL before the halt does not slip through after it.
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'bot' ]);
	sql("SELECT ks_disengage('cache a plan', 'tester')");
	$bg->query_safe('SELECT add_row(10)');
	$bg->query_safe('SELECT add_row(11)');
	sql("SELECT ks_engage('halt_all', 'after the plan was cached', 'tester')");
	my ($ret, $stdout, $stderr);
	$bg->{stderr} = '';
	$bg->query('SELECT add_row(12)');
	like($bg->{stderr}, qr/a write by agent "bot" refused/, 'a PL/pgSQL cached plan that writes is refused after the halt');
	$bg->quit;
}

# 3. Nothing an agent can do lifts its own halt.
refused("SET killswitch.task = 'not_critical'; INSERT INTO t VALUES (5)", 'SET of killswitch.task to a non-critical task');
refused("SET transaction_read_only = off; INSERT INTO t VALUES (5)", 'SET transaction_read_only');
refused("RESET ALL; INSERT INTO t VALUES (5)", 'RESET ALL');
not_done("SET session_replication_role = replica; INSERT INTO t VALUES (5)", 'SET session_replication_role');
not_done("SET killswitch.require_hmac = off; INSERT INTO t VALUES (5)", 'SET of a killswitch.* server setting');
not_done("SELECT set_config('killswitch.release_approvals', '1', false); INSERT INTO t VALUES (5)", 'set_config() of a killswitch.* server setting');
not_done("ALTER SYSTEM SET killswitch.require_hmac = off", 'ALTER SYSTEM');
refused("SET ROLE helper; INSERT INTO t VALUES (5)", 'SET ROLE to a non-agent role it is a member of');
refused("LOAD 'killswitch'", 'LOAD');
refused("ALTER ROLE bot SET killswitch.task = 'audit_logging'", 'ALTER ROLE');
refused("REVOKE killswitch_agent FROM bot", 'REVOKE of its own membership');
not_done("SELECT ks_disengage('let me go')", 'ks_disengage');
sql('GRANT killswitch_admin TO bot');
my ($drc, $derr) = as_bot("SELECT ks_disengage('let me go')");
ok($drc != 0 && $derr =~ /may never release/, 'ks_disengage even when granted admin');
sql('REVOKE killswitch_admin FROM bot');
is(sql('SELECT ks_mode()'), 'halt_all', 'still halted after every attempt');

# 4. Critical tasks granted to the agent's role: allowed in halt_noncritical
#    and halt_all, not in emergency.  A claim alone is refused (080_lists.pl
#    tests the grants in depth).
my ($crc, $cerr) = as_bot("SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (6, 'audit')");
ok($crc != 0 && $cerr =~ /critical task "audit_logging" is not granted to role "bot"/,
	'refused: a claim to a critical task not granted to the role') or diag($cerr);
sql("INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'bot'), ('cost_tracking', 'bot')");
allowed("SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (6, 'audit')", 'a granted critical task in halt_all');
sql("SELECT ks_engage('halt_noncritical', 'step down', 'tester')");
refused('INSERT INTO t VALUES (7)', 'a write without a task in halt_noncritical');
allowed("SET killswitch.task = 'cost_tracking'; INSERT INTO t VALUES (7, 'cost')", 'a granted critical task in halt_noncritical');
refused("SET killswitch.task = 'nightly_export'; INSERT INTO t VALUES (8)", 'a task before it is made critical');
sql("INSERT INTO killswitch.critical_tasks (task) VALUES ('nightly_export'); "
	. "INSERT INTO killswitch.task_grants (task, grantee) VALUES ('nightly_export', 'bot')");
allowed("SET killswitch.task = 'nightly_export'; INSERT INTO t VALUES (8)", 'a task once made critical and granted');
allowed("SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (8)", 'a granted critical task in another database', 'other');

# 5. A non-agent superuser is unaffected in every mode.
for my $m ('halt_all', 'emergency')
{
	sql("SELECT ks_engage('$m', 'superuser check', 'tester')");
	is($node->psql('postgres', 'INSERT INTO t VALUES (9); CREATE TABLE su_t (x int); DROP TABLE su_t;'),
		0, "a non-agent superuser writes in $m");
}
sql("SELECT ks_disengage('before the emergency test', 'tester')");

# 6. Emergency: 50 busy agent sessions, a snapshot of what they ran, all
#    ended; an idle agent session stays, and it and new logins get KS001
#    for every statement; one holding an advisory lock is ended; the alert
#    with its environment.
my $idle = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$idle->query_safe('\set VERBOSITY verbose');
my $idle_pid = $idle->query_safe('SELECT pg_backend_pid()');
my $locker = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
my $locker_pid = $locker->query_safe('SELECT pg_backend_pid(), pg_advisory_lock(42)');
$locker_pid =~ s/\|.*//;
my @sessions;
for my $i (1 .. 50)
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', 'bot' ]);
	$bg->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(60) /* agent-task-$i */;\n");
	push @sessions, $bg;
}
$node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot' AND query LIKE '%agent-task-%' AND state = 'active'", '50')
  or diag('not all 50 agents got busy');
my $reason = q{stop now; $(touch injected) `touch injected2` "quoted" 'single'};
my $t0 = time;
$node->safe_psql('postgres', "SELECT ks_engage('emergency', \$r\$$reason\$r\$, 'tester')");
# How fast is bench/'s to measure (a loaded machine stretches any bound here);
# that they are ended at all is the guarantee.
ok($node->poll_query_until('postgres', "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot' AND pid <> $idle_pid", '0'),
	'50 busy agent sessions are ended');
diag(sprintf('50 agent sessions ended %.0f ms after the emergency was committed', (time - $t0) * 1000));
eval { $_->quit } for @sessions;

# the watcher ends the sessions, then commits the snapshot's row: wait for it
my $this_snapshot = "FROM killswitch.snapshots WHERE snapshot::text LIKE '%agent-task-%'";
ok($node->poll_query_until('postgres', "SELECT count(*) > 0 $this_snapshot"),
	'the emergency\'s snapshot is recorded');
my $snap = decode_json(sql("SELECT snapshot $this_snapshot ORDER BY id DESC LIMIT 1"));
is(scalar @{ $snap->{sessions} }, 52, 'the snapshot lists the 52 agent sessions');
is(scalar(grep { $_->{query} =~ /agent-task-\d+/ } @{ $snap->{sessions} }), 50,
	'the snapshot holds what each session was running');
ok(-f "$dir/kill_switch_snapshot.json", 'the snapshot is also written beside the state file');
is($snap->{status}{mode}, 'emergency', 'the snapshot holds the kill switch status');

is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $locker_pid"), '0',
	'an idle agent session holding an advisory lock is ended');
eval { $locker->quit };
is(sql("SELECT state FROM pg_stat_activity WHERE pid = $idle_pid"), 'idle',
	'an idle agent session is not ended (a pooler keeps its connection)');
for my $try (1, 2)
{
	$idle->{stderr} = '';
	$idle->query('SELECT 1;');
	like($idle->{stderr}, qr/ERROR:  KS001: kill switch engaged \(emergency\): any statement by agent "bot" refused/,
		"its statement is refused with an ERROR, KS001 (try $try)");
}
$idle->{stderr} = '';
$idle->query("SELECT ks_mode();");
like($idle->{stderr}, qr/KS001/, 'reading too');
my ($rc, $err) = as_bot('SELECT 1');
ok($rc != 0 && $err =~ /ERROR:  kill switch engaged \(emergency\): any statement by agent "bot" refused/,
	'a new agent login is accepted, and its statements refused') or diag($err);
is($node->psql('postgres', 'SELECT 1'), 0, 'a non-agent is not');

my $envfile = $node->data_dir . '/alert.env';
for (1 .. 600) { last if -s $envfile; usleep(100_000); }
my %env = map { /^(KS_\w+)=(.*)$/ ? ($1 => $2) : () } split /\n/, slurp_file($envfile);
is($env{KS_MODE}, 'emergency', 'alert_command gets KS_MODE');
is($env{KS_REASON}, $reason, 'alert_command gets the reason verbatim in KS_REASON');
is($env{KS_TRIGGERED_BY}, 'tester', 'and KS_TRIGGERED_BY');
is($env{KS_EVENT_ID}, sql("SELECT id FROM killswitch.events WHERE mode = 'emergency' ORDER BY id DESC LIMIT 1"),
	'and KS_EVENT_ID');
ok(!-e $node->data_dir . '/injected' && !-e $node->data_dir . '/injected2',
	'the reason text cannot inject into the shell command');

# 7. After release, agents log in and write again, and so does the idle session.
sql("SELECT ks_disengage('all clear', 'tester')");
allowed('INSERT INTO t VALUES (20)', 'an agent logs in and writes after release');
$idle->{stderr} = '';
$idle->query('INSERT INTO t VALUES (21);');
is($idle->{stderr}, '', 'the idle session that stayed writes again at once');
$idle->quit;

# 8. A hanging alert command is bounded and never blocks the halt.
#    A restart, not a reload: the watcher runs the command, and nothing
#    shows when it has read a reloaded file (a loaded machine can take longer
#    than any fixed pause; the old command then ran and was never killed).
$node->append_conf('postgresql.conf', "killswitch.alert_command = 'sleep 60'\nkillswitch.alert_timeout = 500\n");
$node->restart;
my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$bg->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(60);\n");
sql("SELECT ks_engage('emergency', 'hanging alert', 'tester')");
$node->poll_query_until('postgres', "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'", '0');
is(sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'"), '0',
	'sessions are ended while the alert command hangs');
ok($node->wait_for_log(qr/alert_command did not finish within 500 ms and was killed/),
	'the hanging alert command is killed after killswitch.alert_timeout');
eval { $bg->quit };

$node->stop;
done_testing();
