# The exemption for the extension's own writes cannot outlive the call that
# opened it (ARCHITECTURE §8.3).  Every SQL function an agent can call that runs
# work as the extension's owner (ks_verify_events; ks_check_task and the
# other task checks, which rebuild a stale list of critical tasks; ks_engage
# by an agent that is also an operator) is made to fail *inside* that work — a
# lock timeout, a statement timeout, a cancel, the stack running out — the
# error is caught by a savepoint or an EXCEPTION block, and then the agent
# writes: refused with KS001, in the same transaction and the next.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('owner_regions', conf => "max_stack_depth = '512kB'\nmax_prepared_transactions = 2\n");
$node->safe_psql('postgres', q{
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE ROLE opbot LOGIN IN ROLE killswitch_agent, killswitch_operator;
CREATE TABLE t (x int);
GRANT ALL ON t TO bot, opbot;
});
# Nested EXCEPTION blocks that call a function at every depth until the
# stack runs out: somewhere the error lands inside its owner region.
for my $f ([ 'dig_verify', 'PERFORM * FROM ks_verify_events()' ],
	[ 'dig_engage', "PERFORM ks_engage('halt_all', 'deep', 'opbot')" ])
{
	my ($name, $call) = @$f;
	$node->safe_psql('postgres', qq{
CREATE FUNCTION $name(n int) RETURNS int LANGUAGE plpgsql AS \$\$
BEGIN
    BEGIN PERFORM $name(n + 1); EXCEPTION WHEN OTHERS THEN NULL; END;
    BEGIN $call; EXCEPTION WHEN OTHERS THEN NULL; END;
    RETURN n;
END \$\$;
});
}
sub sql { return $node->safe_psql('postgres', shift); }

# Run a script as an agent, going on after errors; return stderr.
sub as_agent
{
	my ($role, $script) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', "\\set VERBOSITY verbose\n$script", stdout => \$out, stderr => \$err,
		on_error_stop => 0, extra_params => [ '-U', $role ]);
	return $err;
}

# After the caught error: a write in the same transaction, and one in the next.
my $AFTER = "ROLLBACK TO s;\nINSERT INTO t VALUES (1);\nROLLBACK;\nINSERT INTO t VALUES (2);\n";

# Two KS001 refusals of the writes after the error, and nothing written.
sub writes_refused
{
	my ($err, $what, $first_error) = @_;
	my @refusals = $err =~ /KS001: kill switch engaged \(halt_all\): a write by agent "\w+" refused/g;
	like($err, $first_error, "$what: the error hit inside the owner region");
	is(scalar @refusals, 2, "$what: the agent's writes after it are refused, in the transaction and the next")
	  or diag($err);
	is(sql('SELECT count(*) FROM t'), '0', "$what: nothing written");
}

# Hold an ACCESS EXCLUSIVE lock on a table the region reads, so that the
# agent waits inside the region.  The task checks read the shared list of
# critical tasks and enter their region only when it is stale (lists.c): a
# prepared change of the table committed since it was built.  So: prepare a
# change, queue the lock behind it, commit the prepared change — the lock
# is granted before the watcher can rebuild the list, which stays stale.
my $probe = 0;
sub lock_region
{
	my ($table) = @_;
	my $locker = $node->background_psql('postgres');
	if ($table eq 'killswitch.critical_tasks')
	{
		$probe++;
		sql("BEGIN; INSERT INTO killswitch.critical_tasks (task) VALUES ('probe_$probe'); PREPARE TRANSACTION 'probe_$probe'");
		$locker->query_until(qr/locking/, "\\echo locking\nBEGIN; LOCK TABLE $table IN ACCESS EXCLUSIVE MODE;\n");
		$node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_locks WHERE relation = '$table'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted");
		sql("COMMIT PREPARED 'probe_$probe'");
		$node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_locks WHERE relation = '$table'::regclass AND mode = 'AccessExclusiveLock' AND granted");
	}
	else
	{
		$locker->query_safe("BEGIN; LOCK TABLE $table IN ACCESS EXCLUSIVE MODE");
	}
	return $locker;
}

# The owner regions an agent can enter, each with the table it reads first.
my @regions = (
	[ 'ks_verify_events()', 'SELECT * FROM ks_verify_events()', 'killswitch.events' ],
	[ 'ks_check_task()', "SELECT ks_check_task('x')", 'killswitch.critical_tasks' ],
	[ 'ks_task_allowed()', "SELECT ks_task_allowed('x')", 'killswitch.critical_tasks' ],
	[ 'ks_assert_task()', "SELECT ks_assert_task('audit_logging')", 'killswitch.critical_tasks' ],
);

sql("SELECT ks_engage('halt_all', 'owner regions', 'tester')");
for my $r (@regions)
{
	my ($name, $call, $table) = @$r;

	# the table locked by someone else: the agent waits inside the region
	my $locker = lock_region($table);

	writes_refused(as_agent('bot', "BEGIN;\nSAVEPOINT s;\nSET LOCAL lock_timeout = '100ms';\n$call;\n$AFTER"),
		"$name, lock timeout", qr/55P03: canceling statement due to lock timeout/);
	writes_refused(as_agent('bot', "BEGIN;\nSAVEPOINT s;\nSET LOCAL statement_timeout = '100ms';\n$call;\n$AFTER"),
		"$name, statement timeout", qr/57014: canceling statement due to statement timeout/);

	# a cancel while it waits there
	my $agent = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	$agent->query_safe('\set VERBOSITY verbose');
	my $pid = $agent->query_safe('SELECT pg_backend_pid()');
	$agent->query_until(qr/started/, "BEGIN;\nSAVEPOINT s;\n\\echo started\n$call;\n");
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_locks WHERE pid = $pid AND NOT granted")
	  or diag('the agent did not wait for the lock');
	sql("SELECT pg_cancel_backend($pid)");
	$agent->{stderr} = '';
	$agent->query("SELECT 'cancelled';");
	$agent->query($AFTER);
	my $err = $agent->{stderr};
	$agent->quit;
	writes_refused($err, "$name, cancel", qr/57014: canceling statement due to user request/);

	$locker->query('ROLLBACK;');
	$locker->quit;
}

# The stack running out in nested EXCEPTION blocks that call the function at
# every depth: somewhere an error lands inside the region (issue 12's case).
for my $r ([ 'ks_verify_events()', 'bot', 'dig_verify' ],
	[ 'ks_engage() by an agent operator', 'opbot', 'dig_engage' ])
{
	my ($name, $role, $dig) = @$r;
	my $err = as_agent($role, "BEGIN;\nSAVEPOINT s;\nSELECT $dig(0);\n$AFTER");
	my @refusals = $err =~ /KS001: kill switch engaged \(halt_all\): a write by agent "\w+" refused/g;
	is(scalar @refusals, 2, "$name, stack depth: the agent's writes after it are refused") or diag($err);
	is(sql('SELECT count(*) FROM t'), '0', "$name, stack depth: nothing written");
}

# A region left by an error while disengaged does not lift the next halt.
sql("SELECT ks_disengage('before the halt', 'tester')");
{
	my $locker = $node->background_psql('postgres');
	$locker->query_safe('BEGIN; LOCK TABLE killswitch.events IN ACCESS EXCLUSIVE MODE');
	my $agent = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	$agent->query("BEGIN; SAVEPOINT s; SET LOCAL lock_timeout = '100ms'; SELECT ks_verify_events();");
	like($agent->{stderr}, qr/lock timeout/, 'disengaged: the error hit inside the owner region');
	$agent->query('ROLLBACK TO s; COMMIT;');
	$locker->query_safe('ROLLBACK');
	$locker->quit;
	sql("SELECT ks_engage('halt_all', 'after the error', 'tester')");
	$agent->{stderr} = '';
	$agent->query('INSERT INTO t VALUES (3);');
	like($agent->{stderr}, qr/a write by agent "bot" refused/,
		'an error inside a region while disengaged does not lift the next halt');
	$agent->quit;
	is(sql('SELECT count(*) FROM t'), '0', 'nothing written');
}

# The extension's own work takes no transaction ids while a statement of the
# agent's that writes is running.  Such a statement passed its checks
# disengaged, and the rows it writes after the engage would carry the ids
# the engage took: they would commit under the exemption meant for the
# extension's own write, past the halt.  The engage is refused, however the
# agent wraps it; it engages in a statement of its own.
sql("SELECT ks_disengage('writes around an engage', 'tester')");
$node->safe_psql('postgres', q{
CREATE TABLE opt (x int);
CREATE FUNCTION engage_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM ks_engage('halt_all', 'in a trigger', 'opbot'); RETURN NULL; END $$;
CREATE TRIGGER engage BEFORE INSERT ON opt FOR EACH STATEMENT EXECUTE FUNCTION engage_on_insert();
ALTER TABLE opt OWNER TO opbot;
ALTER FUNCTION engage_on_insert() OWNER TO opbot;
CREATE FUNCTION write_engaged() RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t SELECT g FROM (SELECT ks_engage('halt_all', 'in a function', 'opbot')) e, generate_series(1, 5) g; END $$;
});
for my $w ([ 'a CTE of the INSERT',
		"WITH e AS MATERIALIZED (SELECT (ks_engage('halt_all', 'in a CTE', 'opbot')).mode AS m)\n"
		  . "INSERT INTO t SELECT g FROM e, generate_series(1, 5) g;" ],
	[ "a trigger of the agent's", 'INSERT INTO opt SELECT generate_series(1, 5);' ],
	[ 'an INSERT in a function', 'SELECT write_engaged();' ])
{
	my ($name, $script) = @$w;
	my $err = as_agent('opbot', $script);
	like($err, qr/55000: the kill switch cannot record a change inside a statement of agent "opbot" that writes/,
		"an engage inside a writing statement ($name) is refused");
	is(sql('SELECT ks_mode()') . ' ' . sql('SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM opt)'),
		'disengaged 0', "$name: nothing engaged, nothing written");
}
is(as_agent('opbot', "BEGIN;\nSELECT ks_engage('halt_all', 'a statement of its own', 'opbot');\nCOMMIT;"), '',
	'the agent operator engages in a statement of its own');
is(sql('SELECT ks_mode()'), 'halt_all', 'and the halt is in force');

# The extension's own write still works for an agent operator while halted:
# ks_engage records the event and commits.
my $gen = sql("SELECT ks_status()->>'generation'");
my $err = as_agent('opbot', "SELECT ks_engage('halt_all', 'an agent operator repeats the halt', 'opbot');");
is(sql("SELECT ks_status()->>'generation'"), $gen + 1, 'an agent operator engages while halted')
  or diag($err);

$node->stop;
done_testing();
