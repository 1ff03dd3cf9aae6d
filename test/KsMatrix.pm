# KsMatrix — the bypass matrix (ARCHITECTURE §8.3), shared by the TAP file
# of the fleet's halt (090) and that of a scoped halt (212): the agents, what
# a careless setup gives them, every way out they might try with its
# outcome by mode, and the loop that runs them all against a halt.
package KsMatrix;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(ks_matrix_setup ks_matrix_run);

# Set the agents and their footholds up on a node (started with
# max_prepared_transactions and lo_compat_privileges on); returns what the
# cases and the TAP file need.
sub ks_matrix_setup
{
	my ($node) = @_;
	my $tmp = PostgreSQL::Test::Utils::tempdir;
	my ($host, $port) = ($node->host, $node->port);
	my $srcdir = $ENV{KS_SRCDIR} // '.';

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
	-- deny by default: indexes the agents own, a contrib module, a C function of
	-- no extension, a superuser's SECURITY DEFINER wrapper of pg_read_file, an
	-- IMMUTABLE PL/pgSQL function the planner folds
	CREATE TABLE bt (x int, v int[]);
	INSERT INTO bt SELECT g, ARRAY[g] FROM generate_series(1, 2000) g;
	CREATE INDEX bt_brin ON bt USING brin (x) WITH (pages_per_range = 1);
	CREATE INDEX bt_gin ON bt USING gin (v) WITH (fastupdate = on);
	INSERT INTO bt SELECT g, ARRAY[g] FROM generate_series(2001, 2100) g;
	ALTER TABLE bt OWNER TO owners;
	CREATE EXTENSION pg_prewarm;
	CREATE FUNCTION ks_test_mark(path text) RETURNS bigint
	  AS '$srcdir/test/ks_test_funcs.so', 'ks_test_mark' LANGUAGE C VOLATILE STRICT;
	CREATE FUNCTION su_read(path text) RETURNS text LANGUAGE sql SECURITY DEFINER
	  SET search_path = pg_catalog AS 'SELECT pg_read_file(path)';
	CREATE FUNCTION imm_agent() RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS \$\$
	BEGIN RAISE NOTICE 'agent code ran'; RETURN brin_summarize_new_values('bt_brin'); END \$\$;
	ALTER FUNCTION imm_agent() OWNER TO owners;
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
	my $gin = $node->safe_psql('postgres', "SELECT 'bt_gin'::regclass::oid");
	my $key = $node->data_dir . '/pg_killswitch/release.key';

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
		# issue 21, case 2: functions no list named, on indexes the agents own
		[ 'brin_summarize_new_values', "SELECT brin_summarize_new_values('bt_brin')", $W, undef, qr/brin_summarize_new_values\(\)/ ],
		[ 'brin_desummarize_range', "SELECT brin_desummarize_range('bt_brin', 0)", $W, undef, qr/brin_desummarize_range\(\)/ ],
		[ 'gin_clean_pending_list', "SELECT gin_clean_pending_list('bt_gin')", $W, undef, qr/gin_clean_pending_list\(\)/ ],
		# deny by default: a contrib module's function, a C function of no extension
		[ 'a contrib function (pg_prewarm)', "SELECT pg_prewarm('t')", $W, undef, qr/pg_prewarm\(\)/ ],
		[ 'a C function of no extension', "SELECT ks_test_mark('$tmp/marks_%u_%m')", $W, undef, qr/ks_test_mark\(\)/ ],
		[ 'the allowlist: clock, random, sleep, sizes, locks view', "SELECT clock_timestamp(), random(), pg_sleep(0), pg_table_size('t'), (SELECT count(*) FROM pg_locks)", $R ],
		# case 5 (c): a superuser's SECURITY DEFINER function that reads files
		[ "a superuser's SECURITY DEFINER pg_read_file", "SELECT length(su_read('$key'))", $W, undef, qr/pg_read_file\(\)/ ],
		# case 4: agent code the planner folds, 1/0, the fast path
		[ 'an IMMUTABLE PL/pgSQL function (folded by the planner)', 'SELECT imm_agent()', $W, undef,
			qr/brin_summarize_new_values\(\)/, { emergency => qr/agent code ran/ } ],
		[ '1/0', 'SELECT 1/0', [ '22012', '22012', '22012', 'KS001' ] ],
		[ 'fast path: pg_backend_pid', { fastpath => [2026] }, $R ],
		[ 'fast path: gin_clean_pending_list', { fastpath => [ 3789, $gin ] }, $W, undef, qr/gin_clean_pending_list\(\)/ ],
	);

	return { node => $node, tmp => $tmp, file => $file, key => $key, host => $host, port => $port,
		srcdir => $srcdir, roles => \@roles, modes => \@modes, cases => \@cases, n => 2000 };
}

# Run one case; return ('ok', 'KS001' (refused as what, if given), another
# error's SQLSTATE or the error; stderr).  A case given as { fastpath =>
# [oid, int4 arguments] } calls the function through the fast-path protocol.
sub outcome
{
	my ($m, $role, $sql, $db, $what) = @_;
	my ($node, $host, $port, $srcdir) = @$m{qw(node host port srcdir)};
	my ($out, $err) = ('', '');
	my $rc;
	if (ref $sql eq 'HASH')
	{
		$rc = IPC::Run::run([ "$srcdir/test/ks_fastpath",
			"host=$host port=$port dbname=postgres user=$role", @{ $sql->{fastpath} } ],
			'>', \$out, '2>', \$err) ? 0 : 1;
		$err .= $out;
	}
	else
	{
		$rc = $node->psql($db // 'postgres', "\\set VERBOSITY verbose\n$sql",
			stdout => \$out, stderr => \$err, on_error_stop => 1,
			extra_params => [ '-U', $role ]);
	}
	return ('ok', $err) if $rc == 0;
	$what //= qr/.*/;
	return ('KS001', $err) if $err =~ /KS001: (?:ERROR:  )?kill switch engaged \(\w+\): (?:$what) by agent "\Q$role\E" refused/
	  || $err =~ /lo_import: ERROR:  kill switch engaged \(\w+\): (?:$what) by agent "\Q$role\E" refused/;
	return ($1, $err) if $err =~ /(?:ERROR|FATAL):  ([0-9A-Z]{5}):/ && $1 ne 'KS001';
	return ("error: $err", $err);
}

# Every case, for every role (roles: those of the setup), in every mode:
# halt->(mode) puts that halt in force ('disengaged': none); label names the
# halt in each test's name.
sub ks_matrix_run
{
	my ($m, %o) = @_;
	my @modes = @{ $m->{modes} };
	my $label = $o{label} // '';
	for my $i (0 .. $#modes)
	{
		my $mode = $modes[$i];
		$o{halt}->($mode);
		for my $case (@{ $m->{cases} })
		{
			my ($name, $sql, $expect, $only, $what, $absent) = @$case;
			my $db;
			($sql, $db) = @$sql if ref $sql eq 'ARRAY';
			for my $role (@{ $only // $o{roles} // $m->{roles} })
			{
				my $s = $sql;
				if (!ref $s)
				{
					$s =~ s/%u/$role/g;
					$s =~ s/%m/$mode/g;
					$s =~ s/%n/$m->{n}++/ge;
				}
				my ($got, $err) = outcome($m, $role, $s, $db, $mode eq 'emergency' ? undef : $what);
				is($got, $expect->[$i], "$label$mode, $role: $name") or diag($err);
				unlike($err, $absent->{$mode}, "$label$mode, $role: $name: none of it ran")
				  if $absent && $absent->{$mode};
			}
		}
	}
}

1;
