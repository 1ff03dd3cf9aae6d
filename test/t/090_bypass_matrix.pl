# The bypass matrix (ARCHITECTURE §8.3): every way out an agent might try, run as
# a direct and as a nested member of killswitch_agent, disengaged (where
# each one works, so that every refusal below is the switch's doing) and in
# halt_noncritical, halt_all and emergency, each with its exact outcome:
# done, or refused with SQLSTATE KS001.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('matrix', conf => "max_prepared_transactions = 10\nlo_compat_privileges = on\n");
my $tmp = PostgreSQL::Test::Utils::tempdir;
my ($host, $port) = ($node->host, $node->port);

# Agents: bot is a direct member, nested one through mid; suagent is a
# superuser agent (only it can SET SESSION AUTHORIZATION).  They hold, through
# the non-agent role owners, what a careless setup might give them.
$node->safe_psql('postgres', qq{
CREATE ROLE mid NOLOGIN IN ROLE killswitch_agent;
CREATE ROLE owners NOLOGIN;
GRANT pg_write_server_files, pg_read_server_files, pg_execute_server_program TO owners;
CREATE ROLE bot LOGIN IN ROLE killswitch_agent, owners;
CREATE ROLE nested LOGIN IN ROLE mid, owners;
CREATE ROLE helper NOLOGIN;
GRANT helper TO bot, nested;
CREATE ROLE suagent SUPERUSER LOGIN IN ROLE killswitch_agent;
CREATE DATABASE other;
CREATE EXTENSION dblink;
GRANT EXECUTE ON FUNCTION dblink_connect_u(text, text) TO owners;
GRANT EXECUTE ON FUNCTION lo_import(text), lo_export(oid, text) TO owners;
-- (every signature: PostgreSQL 17 added a fourth argument, flush)
DO \$\$ DECLARE f regprocedure; BEGIN
  FOR f IN SELECT oid FROM pg_proc WHERE proname = 'pg_logical_emit_message' AND proargtypes[2] = 'text'::regtype LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO owners', f);
  END LOOP;
END \$\$;
CREATE TABLE t (x int);
GRANT ALL ON t TO owners, helper;
CREATE SEQUENCE s;
GRANT ALL ON s TO owners;
GRANT CREATE ON SCHEMA public TO owners;
CREATE FUNCTION definer_add(v int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS \$\$ BEGIN INSERT INTO t VALUES (v); RETURN v; END \$\$;
CREATE VIEW v AS SELECT x FROM t;
CREATE RULE v_insert AS ON INSERT TO v DO INSTEAD INSERT INTO t VALUES (NEW.x);
GRANT ALL ON v TO owners;
CREATE PROCEDURE add_and_commit(v int) LANGUAGE plpgsql AS \$\$
BEGIN INSERT INTO t VALUES (v); COMMIT; INSERT INTO t VALUES (v + 1); COMMIT; END \$\$;
CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n FROM t;
ALTER MATERIALIZED VIEW mv OWNER TO owners;
SELECT lo_create(1000);
SELECT lo_create(n) FROM generate_series(2000, 2099) n;
});
$node->safe_psql('other', 'CREATE TABLE o (x int); GRANT ALL ON o TO PUBLIC;');
my $file = "$tmp/import.txt";
PostgreSQL::Test::Utils::append_to_file($file, "some bytes\n");
chmod 0644, $file;
chmod 0777, $tmp;

my @roles = ('bot', 'nested');
my @modes = ('disengaged', 'halt_noncritical', 'halt_all', 'emergency');
my $W = [ 'ok', 'KS001', 'KS001', 'KS001' ];    # a write
my $R = [ 'ok', 'ok', 'ok', 'KS001' ];          # reading: open until emergency

# name, SQL (%u the role, %m the mode, %n a number unique to the run), outcomes by mode
my @cases = (
	[ 'SELECT', 'SELECT count(*) FROM t', $R ],
	[ "the kill switch's own read functions", "SELECT ks_mode(), ks_engaged(), ks_status()->>'mode', ks_check_task('x'), ks_verify_events()", $R ],
	[ 'COPY TO STDOUT', 'COPY t TO STDOUT', $R ],
	[ 'advisory locks (allowed, see README)', 'SELECT pg_advisory_lock(1), pg_advisory_unlock(1)', $R ],
	[ 'LISTEN', 'LISTEN chan', $R ],
	[ 'currval/lastval-free sequence read', 'SELECT last_value FROM s', $R ],
	[ 'INSERT', 'INSERT INTO t VALUES (1)', $W ],
	[ 'UPDATE', 'UPDATE t SET x = x', $W ],
	[ 'SELECT FOR UPDATE', 'SELECT * FROM t FOR UPDATE', $W ],
	[ 'a FOR UPDATE cursor', 'BEGIN; DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE; FETCH c; COMMIT', $W ],
	[ 'PREPARE and EXECUTE of an INSERT', 'PREPARE p AS INSERT INTO t VALUES (1); EXECUTE p', $W ],
	[ 'DO with COMMIT', 'DO $$BEGIN INSERT INTO t VALUES (1); COMMIT; END$$', $W ],
	[ 'TRUNCATE', 'TRUNCATE t', $W ],
	[ 'LOCK TABLE', 'BEGIN; LOCK TABLE t IN SHARE MODE; COMMIT', $W ],
	[ 'VACUUM', 'VACUUM t', $W ],
	[ 'a transaction id alone (the commit backstop, see README)', 'SELECT pg_current_xact_id()', $W, undef,
		qr/the commit of a transaction that wrote/ ],
	[ 'CREATE TABLE', 'CREATE TABLE new_%u_%m (x int)', $W ],
	[ 'CREATE TEMP TABLE', 'CREATE TEMP TABLE tt (x int)', $W ],
	[ 'COPY FROM STDIN', "COPY t FROM STDIN;\n7\n\\.\n", $W ],
	[ 'SET ROLE to a non-agent', 'SET ROLE helper; INSERT INTO t VALUES (1)', $W ],
	[ 'SECURITY DEFINER function of a superuser', 'SELECT definer_add(1)', $W ],
	[ 'view with a rule', 'INSERT INTO v VALUES (1)', $W ],
	[ 'CALL with COMMIT', 'CALL add_and_commit(1)', $W ],
	[ 'a write in another database', [ 'INSERT INTO o VALUES (1)', 'other' ], $W ],
	[ 'EXPLAIN ANALYZE CREATE TABLE AS', 'EXPLAIN ANALYZE CREATE TABLE ea_%u_%m AS SELECT 1 AS x', $W, undef, qr/a write/ ],
	[ 'EXPLAIN ANALYZE CREATE TEMP TABLE AS', 'EXPLAIN ANALYZE CREATE TEMP TABLE ea AS SELECT 1 AS x', $W ],
	[ 'EXPLAIN ANALYZE SELECT INTO', 'EXPLAIN ANALYZE SELECT 1 AS x INTO TEMP si', $W ],
	[ 'EXPLAIN ANALYZE CREATE MATERIALIZED VIEW', 'EXPLAIN ANALYZE CREATE MATERIALIZED VIEW mv_%u_%m AS SELECT 1 AS x', $W ],
	[ 'REFRESH MATERIALIZED VIEW', 'REFRESH MATERIALIZED VIEW mv', $W ],
	[ 'lo_create', 'SELECT lo_create(0)', $W, undef, qr/lo_create\(\)/ ],
	[ 'lo_creat', 'SELECT lo_creat(-1)', $W, undef, qr/lo_creat\(\)/ ],
	[ 'lo_from_bytea', "SELECT lo_from_bytea(0, 'x')", $W, undef, qr/lo_from_bytea\(\)/ ],
	[ 'lo_put', "SELECT lo_put(1000, 0, 'x')", $W, undef, qr/lo_put\(\)/ ],
	[ 'lowrite', "SELECT lowrite(lo_open(1000, 131072), 'x')", $W, undef, qr/lowrite\(\)/ ],
	[ 'lo_truncate', 'SELECT lo_truncate(lo_open(1000, 131072), 0)', $W, undef, qr/lo_truncate\(\)/ ],
	[ 'lo_unlink', 'SELECT lo_unlink(%n)', $W, undef, qr/lo_unlink\(\)/ ],
	[ 'lo_import (server)', "SELECT lo_import('$file')", $W, undef, qr/lo_import\(\)/ ],
	[ 'lo_export', "SELECT lo_export(1000, '$tmp/export_%u_%m')", $W, undef, qr/lo_export\(\)/ ],
	[ 'large object through the fast-path protocol (\\lo_import)', "\\lo_import $file", $W, undef, qr/lo_creat\(\)/ ],
	[ 'nextval', "SELECT nextval('s')", $W, undef, qr/nextval\(\)/ ],
	[ 'setval', "SELECT setval('s', 5)", $W, undef, qr/setval\(\)/ ],
	[ 'nextval in a PL/pgSQL simple expression', "DO \$\$DECLARE v bigint; BEGIN v := nextval('s'); END\$\$", $W, undef, qr/nextval\(\)/ ],
	[ 'pg_logical_emit_message(true)', "SELECT pg_logical_emit_message(true, 'p', 'x')", $W, undef, qr/pg_logical_emit_message\(\)/ ],
	[ 'pg_logical_emit_message(false)', "SELECT pg_logical_emit_message(false, 'p', 'x')", $W, undef, qr/pg_logical_emit_message\(\)/ ],
	[ 'pg_notify', "SELECT pg_notify('chan', 'x')", $W, undef, qr/pg_notify\(\)/ ],
	[ 'NOTIFY', 'NOTIFY chan', $W ],
	[ 'COPY TO a file', "COPY t TO '$tmp/copy_%u_%m'", $W, undef, qr/COPY TO a file/ ],
	[ 'COPY TO PROGRAM', "COPY t TO PROGRAM 'cat > /dev/null'", $W, undef, qr/COPY TO PROGRAM/ ],
	[ 'PREPARE TRANSACTION', "BEGIN; SELECT 1; PREPARE TRANSACTION 'p_%u_%m'", $W, undef, qr/PREPARE TRANSACTION/ ],
	[ 'dblink loop-back', "SELECT dblink_connect_u('c', 'host=$host port=$port dbname=postgres user=%u'); SELECT dblink_exec('c', 'INSERT INTO t VALUES (1)')", $W ],
	[ 'SET SESSION AUTHORIZATION (a superuser agent)', 'SET SESSION AUTHORIZATION helper; INSERT INTO t VALUES (1)', $W, ['suagent'] ],
);

# Run one case; return 'ok', 'KS001' (refused as what, if given) or the other error.
sub outcome
{
	my ($role, $sql, $db, $what) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db // 'postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1,
		extra_params => [ '-U', $role ]);
	return 'ok' if $rc == 0;
	$what //= qr/.*/;
	return 'KS001' if $err =~ /KS001: Kill switch engaged \(\w+\): (?:$what) by agent "\Q$role\E" refused/
	  || $err =~ /lo_import: ERROR:  Kill switch engaged \(\w+\): (?:$what) by agent "\Q$role\E" refused/;
	return "error: $err";
}

my $n = 2000;
for my $i (0 .. $#modes)
{
	my $mode = $modes[$i];
	if ($mode eq 'disengaged')
	{
		$node->safe_psql('postgres', "SELECT ks_disengage('matrix', 'tester')")
		  unless $node->safe_psql('postgres', 'SELECT ks_mode()') eq 'disengaged';
	}
	else
	{
		$node->safe_psql('postgres', "SELECT ks_engage('$mode', 'matrix', 'tester')");
	}
	for my $case (@cases)
	{
		my ($name, $sql, $expect, $only, $what) = @$case;
		my $db;
		($sql, $db) = @$sql if ref $sql;
		for my $role (@{ $only // \@roles })
		{
			(my $s = $sql) =~ s/%u/$role/g;
			$s =~ s/%m/$mode/g;
			$s =~ s/%n/$n++/ge;
			is(outcome($role, $s, $db, $mode eq 'emergency' ? undef : $what), $expect->[$i], "$mode, $role: $name");
		}
	}
}
$node->safe_psql('postgres', "SELECT ks_disengage('matrix done', 'tester')");
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
	'the transactions the agents prepared while disengaged were rolled back in the emergency');

# What an agent started before the halt and finishes after it.
sub sql { return $node->safe_psql('postgres', shift); }
sub agent_session
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', shift ]);
	$bg->query_safe('\set VERBOSITY verbose');
	return $bg;
}
# Run SQL in a background session; return its stderr.
sub bg_err
{
	my ($bg, $sql) = @_;
	$bg->{stderr} = '';
	$bg->query($sql);
	return $bg->{stderr};
}
sql('TRUNCATE t; INSERT INTO t VALUES (100)');
for my $mode ('halt_noncritical', 'halt_all', 'emergency')
{
	for my $role (@roles)
	{
		my $cur = agent_session($role);
		$cur->query_safe('BEGIN; DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE');
		my $wrote = agent_session($role);
		$wrote->query_safe('BEGIN; INSERT INTO t VALUES (1)');
		my $prep = agent_session($role);
		$prep->query_safe("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'before_$role'");
		my $log_offset = -s $node->logfile;
		if ($mode eq 'emergency')
		{
			# and one in a database other than the watcher's
			$node->psql('other', "BEGIN; INSERT INTO o VALUES (3); PREPARE TRANSACTION 'other_$role'",
				extra_params => [ '-U', $role ]);
		}
		my $curpid = $cur->query_safe('SELECT pg_backend_pid()');
		my $wrotepid = $wrote->query_safe('SELECT pg_backend_pid()');
		sql("SELECT ks_engage('$mode', 'started before', 'tester')");

		if ($mode eq 'emergency')
		{
			# sessions in a transaction begun before the emergency are ended
			ok($node->poll_query_until('postgres',
				"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid IN ($curpid, $wrotepid)"),
				"$mode, $role: the sessions in a transaction are ended");
		}
		else
		{
			like(bg_err($cur, 'FETCH c;'), qr/KS001: Kill switch engaged \(\w+\): a write by agent/,
				"$mode, $role: FETCH from a FOR UPDATE cursor declared before the halt");
			is(sql("SELECT count(*) FROM pg_locks WHERE pid = $curpid AND locktype = 'transactionid'"),
				'0', "$mode, $role: and no row lock taken");
			like(bg_err($wrote, 'COMMIT;'), qr/KS001: Kill switch engaged \(\w+\): the commit of a transaction that wrote/,
				"$mode, $role: COMMIT of writes made before the halt (the backstop)");
		}
		if ($mode eq 'emergency')
		{
			# the watcher rolls the agent's prepared transaction back
			ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_prepared_xacts WHERE gid = 'before_$role'"),
				"$mode, $role: the agent's prepared transaction is rolled back");
			like(sql("SELECT snapshot->>'prepared' FROM killswitch.snapshots ORDER BY id DESC LIMIT 1"),
				qr/"gid": "before_$role"/, "$mode, $role: and it is in the snapshot");
			ok($node->wait_for_log(qr/WARNING:  killswitch: prepared transaction "other_$role" of an agent in database "other" was not rolled back/,
				$log_offset), "$mode, $role: one in another database is named in a WARNING");
			like(sql("SELECT snapshot->>'prepared' FROM killswitch.snapshots ORDER BY id DESC LIMIT 1"),
				qr/"gid": "other_$role"/, "$mode, $role: and is in the snapshot");
			$node->safe_psql('other', "ROLLBACK PREPARED 'other_$role'");
		}
		else
		{
			like(bg_err($prep, "COMMIT PREPARED 'before_$role';"), qr/KS001: Kill switch engaged \(\w+\): COMMIT PREPARED/,
				"$mode, $role: COMMIT PREPARED of a transaction prepared before the halt");
			is(bg_err($prep, "ROLLBACK PREPARED 'before_$role';"), '', "$mode, $role: ROLLBACK PREPARED is allowed");
		}
		is(sql('SELECT pg_catalog.string_agg(x::text, \',\') FROM t'), '100', "$mode, $role: nothing written");
		eval { $_->quit } for ($cur, $wrote, $prep);
		sql("SELECT ks_disengage('next', 'tester')");
	}
}

$node->stop;
done_testing();
