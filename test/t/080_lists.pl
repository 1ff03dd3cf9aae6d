# Shared lists without silent limits, and critical work authorized, not
# declared: any number of agent roles for the login check, critical task
# names of any length, one list for every path, kept current by COMMIT and
# COMMIT PREPARED; a claim to a critical task exempts an agent only when an
# administrator granted the task to its role.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;

# killswitch.refuse_agent_logins: section 9 checks the login list in emergency
my $node = ks_node('lists', conf => qq(
max_prepared_transactions = 5
max_connections = 40
killswitch.refuse_agent_logins = on
));

sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as a role in a database; return (exit code, stderr, stdout).
sub as_role
{
	my ($role, $sqltext, $db) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db // 'postgres', $sqltext, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', $role ], on_error_stop => 1);
	return ($rc, $err, $out);
}

sub allowed
{
	my ($role, $sqltext, $what, $db) = @_;
	my ($rc, $err) = as_role($role, $sqltext, $db);
	is($rc, 0, "allowed: $what") or diag($err);
}

# Refused by the kill switch (KS001), the message matching $re.
sub refused
{
	my ($role, $sqltext, $re, $what, $db) = @_;
	my ($rc, $err) = as_role($role, "\\set VERBOSITY verbose\n$sqltext", $db);
	ok($rc != 0 && $err =~ /KS001/ && $err =~ $re, "refused: $what") or diag("rc $rc: $err");
}

sql(q(
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE ROLE bot2 LOGIN IN ROLE killswitch_agent;
CREATE ROLE bot3 LOGIN IN ROLE killswitch_agent;
CREATE ROLE auditors NOLOGIN;
GRANT auditors TO bot2;
CREATE ROLE human LOGIN;
CREATE DATABASE other;
CREATE TABLE t (x int, note text);
GRANT ALL ON t TO PUBLIC;
CREATE FUNCTION definer_add(v int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public AS $$ BEGIN INSERT INTO t VALUES (v, 'definer'); RETURN v; END $$;
));
$node->safe_psql('other', 'CREATE TABLE o (x int); GRANT ALL ON o TO PUBLIC;');

my $long = 'long_' . ('t' x 195);                   # 200 bytes
my $wide = "\x{e9}" x 50 . "\x{6f22}" x 50;         # 100 non-ASCII characters
my $prefix = 'p' x 63;                               # what a 63-byte copy kept
my $wide_utf8 = $wide;
utf8::encode($wide_utf8);
is(length($long), 200, 'a task name of 200 bytes');

sql(qq(INSERT INTO killswitch.critical_tasks (task) VALUES ('$long'), ('${prefix}_real'), ('$wide_utf8')));

# 1. One list for every path: ks_check_task, ks_guard and enforcement.
sql("SELECT ks_engage('halt_all', 'lists test', 'tester')");
is(sql("SELECT ks_check_task('$long')->>'allowed'"), 'true', 'ks_check_task: a critical task of 200 bytes');
is(sql("SELECT ks_check_task('$wide_utf8')->>'allowed'"), 'true', 'ks_check_task: a critical task of 100 non-ASCII characters');
is(sql("SELECT ks_check_task('${prefix}_real')->>'allowed'"), 'true', 'ks_check_task: the real name of a long critical task');
is(sql("SELECT ks_check_task('${prefix}_fake')->>'allowed'"), 'false', 'ks_check_task: another name sharing its first 63 bytes is not critical');
is(sql("SELECT ks_check_task('$prefix')->>'allowed'"), 'false', 'ks_check_task: nor is its 63-byte prefix');
is(sql("SELECT ks_check_task('audit_logging')->>'note'"), 'critical only', 'the defaults stay critical (by name, as the reference library says)');

# 2. Claims: granted to nobody by default, so a claim alone exempts nothing.
is(sql('SELECT count(*) FROM killswitch.task_grants'), '0', 'no task is granted to anyone by default');
for my $m ('halt_all', 'halt_noncritical')
{
	sql("SELECT ks_engage('$m', 'claims', 'tester')") if $m eq 'halt_noncritical';
	refused('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (1)",
		qr/critical task "audit_logging" is not granted to role "bot"/,
		"an ungranted claim to a default critical task in $m");
}
refused('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (1)",
	qr/not granted to role "bot"/, 'an ungranted claim in another database', 'other');
my $count = sql("SELECT ks_status()->>'refused_claims'");
ok($count >= 3, "ks_status() counts refused claims ($count)");
# caught by the agent, still recorded
my ($rc, $err) = as_role('bot', q(SET killswitch.task = 'audit_logging';
DO $$ BEGIN INSERT INTO t VALUES (1); EXCEPTION WHEN SQLSTATE 'KS001' THEN NULL; END $$;));
is($rc, 0, 'an agent may catch the refusal');
is(sql("SELECT ks_status()->>'refused_claims'"), $count + 1, 'a caught refusal is counted too');
ok($node->log_contains(qr/refused the claim of session user "bot" \(pid \d+\) to critical task "audit_logging"/),
	'and logged with the session user');

# 3. Granted claims: directly, through a parent role, names of any length.
sql("INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'bot'), ('cost_tracking', 'auditors'), ('$long', 'bot'), ('$wide_utf8', 'bot'), ('${prefix}_real', 'bot')");
allowed('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (2)", 'a granted claim in halt_noncritical');
allowed('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (2)", 'a granted claim in another database', 'other');
allowed('bot2', "SET killswitch.task = 'cost_tracking'; INSERT INTO t VALUES (3)", 'a claim granted to a parent role');
refused('bot2', "SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (3)",
	qr/not granted to role "bot2"/, "a task granted to another role does not exempt");
refused('bot3', "SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (3)",
	qr/not granted to role "bot3"/, "one agent's grant does not exempt an agent of another role");
sql("SELECT ks_engage('halt_all', 'claims', 'tester')");
allowed('bot', "SET killswitch.task = '$long'; INSERT INTO t VALUES (4)", 'a granted task of 200 bytes in halt_all');
allowed('bot', "SET killswitch.task = '$wide_utf8'; INSERT INTO t VALUES (4)", 'a granted task of 100 non-ASCII characters');
allowed('bot', "SET killswitch.task = '${prefix}_real'; INSERT INTO t VALUES (4)", 'the real name of a long granted task');
refused('bot', "SET killswitch.task = '${prefix}_fake'; INSERT INTO t VALUES (4)",
	qr/a write by agent "bot" refused/, 'a name sharing its first 63 bytes exempts nothing');
refused('bot', "SET killswitch.task = '$prefix'; INSERT INTO t VALUES (4)",
	qr/a write by agent "bot" refused/, 'nor does its 63-byte prefix');
refused('bot3', "SET killswitch.task = 'audit_logging'; SELECT definer_add(4)",
	qr/not granted to role "bot3"/, 'a SECURITY DEFINER function owned by a superuser grants nothing (the session user is judged)');

# 4. Revoke takes effect at the next statement, in every database.
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	my $bgo = $node->background_psql('other', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	for my $s ($bg, $bgo)
	{
		$s->query_safe("SET killswitch.task = 'audit_logging'");
	}
	$bg->query_safe('INSERT INTO t VALUES (5)');
	$bgo->query_safe('INSERT INTO o VALUES (5)');
	sql("DELETE FROM killswitch.task_grants WHERE task = 'audit_logging' AND grantee = 'bot'::regrole");
	for my $s ([ $bg, 't' ], [ $bgo, 'o' ])
	{
		$s->[0]->{stderr} = '';
		$s->[0]->query("INSERT INTO $s->[1] VALUES (6)");
		like($s->[0]->{stderr}, qr/not granted to role "bot"/, "a revoke takes effect at the session's next statement (table $s->[1])");
	}
	sql("INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'bot')");
	$bg->{stderr} = '';
	$bg->query('INSERT INTO t VALUES (7)');
	is($bg->{stderr}, '', 'and a grant at the next statement');
	$bg->quit;
	$bgo->quit;
}

# 4b. Concurrent changes are ordered: the second waits for the first to
#     commit, and builds on it, so neither is lost from the list.
{
	my $a = $node->background_psql('postgres', on_error_stop => 1);
	my $b = $node->background_psql('postgres', on_error_stop => 1);
	$a->query_safe("BEGIN; INSERT INTO killswitch.task_grants (task, grantee) VALUES ('data_persistence', 'bot3')");
	$b->query_until(qr/started/, "\\echo started\nBEGIN; INSERT INTO killswitch.task_grants (task, grantee) VALUES ('safety_monitoring', 'bot3');\n\\echo inserted\n");
	ok($node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND NOT granted AND objid = 'killswitch.critical_tasks'::regclass", '1'),
		'a second change of the grants waits for the first one');
	$a->query_safe('COMMIT');
	$b->query_until(qr/inserted/, '');
	$b->query_safe('COMMIT');
	allowed('bot3', "SET killswitch.task = 'data_persistence'; INSERT INTO t VALUES (7)", 'the first of two concurrent grants holds');
	allowed('bot3', "SET killswitch.task = 'safety_monitoring'; INSERT INTO t VALUES (7)", 'and so does the second');
	$a->quit;
	$b->quit;
	sql("DELETE FROM killswitch.task_grants WHERE grantee = 'bot3'::regrole");
}

# 5. COMMIT PREPARED of a change takes effect for enforcement.
sql("BEGIN; DELETE FROM killswitch.task_grants WHERE grantee = 'bot'::regrole; PREPARE TRANSACTION 'revoke'");
allowed('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (8)", 'a prepared revoke changes nothing yet', 'other');
sql("COMMIT PREPARED 'revoke'");
# at once: until the watcher rebuilt the list, it fails closed
refused('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (8)",
	qr/refused|not granted/, 'a revoke committed by COMMIT PREPARED: refused at once in another database', 'other');
refused('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO t VALUES (8)",
	qr/not granted to role "bot"/, 'and in the database of the table (rebuilt on the spot)');
$node->poll_query_until('postgres', "SELECT ks_status()->>'refused_claims' IS NOT NULL");
my $seen = 0;
for (1 .. 300)
{
	my ($rc, $err) = as_role('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (8)", 'other');
	if ($err =~ /not granted to role "bot"/) { $seen = 1; last; }
	usleep(100_000);
}
ok($seen, 'then, once rebuilt, as an ungranted claim');
sql("BEGIN; INSERT INTO killswitch.critical_tasks (task) VALUES ('nightly_export');"
	. " INSERT INTO killswitch.task_grants (task, grantee) VALUES ('nightly_export', 'bot'); PREPARE TRANSACTION 'grant'");
is(sql("SELECT ks_check_task('nightly_export')->>'allowed'"), 'false', 'a prepared new critical task is not critical yet');
# COMMIT PREPARED from another session than the one that prepared
sql("COMMIT PREPARED 'grant'");
my $ok = 0;
for (1 .. 300)
{
	my ($rc) = as_role('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (9)", 'other');
	if ($rc == 0) { $ok = 1; last; }
	usleep(100_000);
}
ok($ok, 'a grant committed by COMMIT PREPARED takes effect in another database');
is(sql("SELECT ks_check_task('nightly_export')->>'allowed'"), 'true', 'and for ks_check_task');
is($node->safe_psql('other', "SELECT count(*) FROM o WHERE x = 9"), '1', 'the granted write happened');
sql("BEGIN; DELETE FROM killswitch.critical_tasks WHERE task = 'nightly_export'; PREPARE TRANSACTION 'drop'");
sql("ROLLBACK PREPARED 'drop'");
allowed('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (10)", 'a rolled-back prepared change leaves the list as it was', 'other');

# 6. The list survives a restart (the watcher loads it before any exemption),
#    and so does a prepared change of it.
sql("BEGIN; DELETE FROM killswitch.task_grants WHERE task = 'nightly_export' AND grantee = 'bot'::regrole; "
	. "PREPARE TRANSACTION 'across'");
$node->restart;
$ok = 0;
for (1 .. 300)
{
	my ($rc) = as_role('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (11)", 'other');
	if ($rc == 0) { $ok = 1; last; }
	usleep(100_000);
}
ok($ok, 'grants hold after a restart');
sql("COMMIT PREPARED 'across'");
refused('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (11)",
	qr/refused|not granted/, 'a revoke prepared before a restart and committed after it: refused at once', 'other');
sql("INSERT INTO killswitch.task_grants (task, grantee) VALUES ('nightly_export', 'bot')");
refused('bot3', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (11)",
	qr/not granted to role "bot3"/, 'and ungranted claims stay refused', 'other');

# 7. Agents may not grant themselves anything.
($rc, $err) = as_role('bot', "INSERT INTO killswitch.task_grants (task, grantee) VALUES ('cost_tracking', 'bot')");
ok($rc != 0, 'an agent cannot grant itself a task') or diag($err);
sql("SELECT ks_disengage('claims done', 'tester')");
($rc, $err) = as_role('bot', "INSERT INTO killswitch.task_grants (task, grantee) VALUES ('cost_tracking', 'bot')");
ok($rc != 0 && $err =~ /permission denied/, 'not even while disengaged') or diag($err);

# 8. DROP and CREATE EXTENSION: the new installation's list replaces the old at once.
sql("SELECT ks_engage('halt_all', 'reinstall', 'tester')");
allowed('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (12)", 'granted before the reinstallation', 'other');
sql('DROP EXTENSION killswitch; CREATE EXTENSION killswitch');
refused('bot', "SET killswitch.task = 'nightly_export'; INSERT INTO o VALUES (12)",
	qr/a write by agent "bot" refused/, 'a task of the old installation exempts nothing after CREATE EXTENSION', 'other');
refused('bot', "SET killswitch.task = 'audit_logging'; INSERT INTO o VALUES (12)",
	qr/not granted to role "bot"/, 'nor do its grants', 'other');
sql("SELECT ks_disengage('reinstalled', 'tester')");

# 9. Any number of agent roles: 10,000, the login check in emergency.  (A
# commit every 500: from PostgreSQL 16 on a grant locks the role granted, and
# 10,000 such locks in one transaction exceed the lock table.)
sql(q(DO $$ BEGIN
  FOR i IN 1..10000 LOOP
    EXECUTE format('CREATE ROLE %I LOGIN IN ROLE killswitch_agent', 'fleet_' || lpad(i::text, 5, '0'));
    IF i % 500 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$));
is(sql("SELECT count(*) FROM pg_auth_members WHERE roleid = 'killswitch_agent'::regrole"), '10003', '10,003 agent roles');
sql("SELECT ks_engage('emergency', 'many agents', 'tester')");
# the watcher lists the roles at its next tick
$node->poll_query_until('postgres', "SELECT count(*) FROM killswitch.snapshots WHERE snapshot->>'generation' = (ks_status()->>'generation')", '1')
  or diag('no snapshot for the emergency');
for my $r ('fleet_00001', 'fleet_05000', 'fleet_10000', 'bot')
{
	my $tries = 0;
	my ($rc, $err);
	# -c, no stdin: a refused login ends psql before it could read any
	do
	{
		usleep(100_000) if $tries++;
		$err = '';
		$rc = $node->psql('postgres', undef, stderr => \$err,
			extra_params => [ '-U', $r, '-c', 'SELECT 1' ]);
	} while ($tries < 300 && $err !~ /login by agent/);
	ok($rc != 0 && $err =~ /login by agent "$r" refused/, "the login of agent $r is refused in emergency") or diag($err);
}
allowed('human', 'SELECT 1', 'a non-agent login is admitted in emergency');
sql("SELECT ks_disengage('all clear', 'tester')");
allowed('fleet_10000', 'SELECT 1', 'agent logins are admitted again after the release');

# 10. Restarted without preloading: changing the lists is a clear error, not a crash.
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->restart;
my ($prc, $pout, $perr) = $node->psql('postgres', "INSERT INTO killswitch.task_grants (task, grantee) VALUES ('audit_logging', 'bot3')");
like($perr, qr/killswitch must be loaded via shared_preload_libraries/, 'a change of the grants without preloading fails clearly');
is($node->safe_psql('postgres', "SELECT count(*) FROM killswitch.task_grants WHERE grantee = 'bot3'::regrole"), '0',
	'and changes nothing');

$node->stop;
done_testing();
