# What the first hostile review found (test/t/200_review_findings.pl on its
# branch) and that has no better home: a forged claim of a shared
# killswitch.state_dir, killswitch.await_state() called from a procedure or
# a DO block, an upstream that reports a negative silence.  Each check fails
# while its fix is absent.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use KsTest;

sub within { my ($node, $sql, $secs) = @_; return ks_within($node, $sql, $secs // 60); }

my $shared = PostgreSQL::Test::Utils::tempdir;
chmod 0770, $shared;
my $node = ks_node('fixes', conf => "killswitch.state_dir = '$shared'\n");
sub sql { return $node->safe_psql('postgres', shift); }
sql(q{
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE SCHEMA bot AUTHORIZATION bot;
});

# ---- a forged claim of the shared state directory (claim.c) ----
# The "owner" file lives in the directory agents may write.  A claim the
# server did not write (not 0600), or one naming a data directory whose
# postmaster.pid does not name that directory and a process of ours,
# pins the server at its next start in a halt no one could raise.
{
	my $fake = PostgreSQL::Test::Utils::tempdir;
	my @forgeries = (
		[ 'an owner file with group and world access', 0644, "1\n" ],
		[ "a private owner file naming a directory whose postmaster.pid names another user's process (PID 1)",
			0600, "1\n$fake\n" ]);
	for my $f (@forgeries)
	{
		my ($what, $mode, $pidfile) = @$f;
		unlink "$fake/postmaster.pid", "$shared/owner";
		append_to_file("$fake/postmaster.pid", $pidfile);
		append_to_file("$shared/owner", $fake);
		chmod $mode, "$shared/owner";
		my $offset = -s $node->logfile;
		$node->restart;
		unlike(slurp_file($node->logfile, $offset), qr/is in use by the server whose data directory is/,
			"$what: not taken for another server's claim");
		is(sql('SELECT ks_mode()'), 'disengaged', "$what: the server starts in its own state");
		like(slurp_file("$shared/owner"), qr/^\Q${\ $node->data_dir }\E$/, "$what: the server claims the directory");
		my ($ret, $out, $err) = $node->psql('postgres', "SELECT ks_engage('emergency', 'after a forged claim', 'tester')");
		is(sql('SELECT ks_mode()') . ' ' . sql("SELECT ks_status()->>'integrity'") . " $err", 'emergency ok ',
			"$what: an operator engages emergency");
		$node->psql('postgres', "SELECT ks_disengage('next', 'tester')");
	}
	ok($node->log_contains('ignored the claim file of killswitch.state_dir'), 'the ignored claim is in the log');

	# A true claim: a second server started on the same directory while the
	# first runs leaves the file alone and starts halted; a raise still
	# takes effect in its shared memory.
	my $second = ks_node('fixes_second', conf => "killswitch.state_dir = '$shared'\n");
	ok($second->log_contains('is in use by the server whose data directory is'), 'a second server finds the claim');
	is($second->safe_psql('postgres', 'SELECT ks_mode()'), 'halt_all', 'and starts halted');
	my ($ret, $out, $err) = $second->psql('postgres', "SELECT ks_engage('emergency', 'on a foreign directory', 'tester')");
	is("$ret " . $second->safe_psql('postgres', 'SELECT ks_mode()'), '0 emergency',
		'an engage on it takes effect in shared memory');
	like($err, qr/WARNING:  could not write the kill switch state file; the change is in force without it: .*is in use by another running server/,
		'without the file, and says why');
	like($err, qr/HINT:  Another running server owns killswitch.state_dir; this server never writes the file there/,
		'and that it never will there (not that the watcher writes it later)');
	($ret, $out, $err) = $second->psql('postgres', "SELECT ks_disengage('released on a foreign directory', 'tester')");
	is("$ret " . $second->safe_psql('postgres', 'SELECT ks_mode()'), '3 emergency',
		'a release there is refused: the halt stays');
	like($err, qr/ERROR:  could not write the kill switch state file: .*is in use by another running server/, 'and says why');
	is($second->safe_psql('postgres', "SELECT count(*) FROM killswitch.events WHERE reason IN ('on a foreign directory', 'released on a foreign directory')"),
		'1', 'the engage is recorded, the refused release is not');
	like(slurp_file("$shared/owner"), qr/^\Q${\ $node->data_dir }\E$/, 'the claim stays the first server\'s');
	$second->stop;
}

# ---- killswitch.await_state() inside a procedure or a DO block (feed.c) ----
# It lets go of its caller's portal snapshot; PL/pgSQL's next statement, or
# the procedure's COMMIT, must find the portal told so.
{
	sql(q{CREATE PROCEDURE bot.await_then_commit() LANGUAGE plpgsql AS $$
BEGIN CALL killswitch.await_state(0, 10); COMMIT; END $$;
ALTER PROCEDURE bot.await_then_commit() OWNER TO bot;});
	my $offset = -s $node->logfile;
	my ($ret, $out, $err) = $node->psql('postgres', 'CALL bot.await_then_commit()', extra_params => [ '-U', 'bot' ]);
	is("$ret $err", '0 ', 'await_state() then COMMIT in a procedure');
	($ret, $out, $err) = $node->psql('postgres', q{DO $$ BEGIN CALL killswitch.await_state(0, 10); PERFORM 1; END $$},
		extra_params => [ '-U', 'bot' ]);
	is("$ret $err", '0 ', 'await_state() then a statement in a DO block');
	($ret, $out, $err) = $node->psql('postgres',
		q{DO $$ BEGIN CALL killswitch.await_state(0, 10); COMMIT; PERFORM count(*) FROM pg_class; END $$},
		extra_params => [ '-U', 'bot' ]);
	is("$ret $err", '0 ', 'await_state(), COMMIT and a query in a DO block');
	unlike(slurp_file($node->logfile, $offset), qr/TRAP|terminated by signal|portal snapshots/, 'no backend failed');
}
$node->stop;

# ---- an upstream that reports a negative silence (upstream.c) ----
# The silence an upstream reports is not signed.  A standby cut off from
# its primary's WAL hears a signed state through killswitch.upstream_conninfo
# from a server that says its word is ten days younger than now (and gives
# the primary's system identifier and timeline, as an impostor with the
# secret would); then that
# server goes quiet.  killswitch.standby_max_silence still holds the halt
# once the standby has heard nothing for longer than the bound.
{
	my $primary = ks_node('fixes_primary', init => { allows_streaming => 1 });
	$primary->backup('b');
	my ($state, $sysid, $tli) = split /\|/, $primary->safe_psql('postgres',
		"SELECT encode(state, 'hex'), system_identifier, timeline_id FROM killswitch.committed_state()");
	my $liar = PostgreSQL::Test::Cluster->new('fixes_liar');
	$liar->init;
	$liar->start;
	$liar->safe_psql('postgres', qq{
CREATE SCHEMA killswitch;
CREATE PROCEDURE killswitch.await_state(known_generation bigint, timeout_ms integer)
    LANGUAGE sql AS \$\$ SELECT pg_sleep(0.05) \$\$;
CREATE FUNCTION killswitch.committed_state(OUT state bytea, OUT silent_ms bigint, OUT wal_lsn pg_lsn,
    OUT system_identifier bigint, OUT timeline_id integer)
    LANGUAGE sql AS \$\$ SELECT '\\x$state'::bytea, -864000000::bigint, NULL::pg_lsn, ${sysid}::bigint, $tli \$\$;
});
	my $dead = PostgreSQL::Test::Cluster::get_free_port();
	my $standby = PostgreSQL::Test::Cluster->new('fixes_standby');
	ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
	$standby->append_conf('postgresql.conf',
		"primary_conninfo = 'host=" . $primary->host . " port=$dead'\n"
		  . "killswitch.upstream_conninfo = 'host=" . $liar->host . ' port=' . $liar->port . " dbname=postgres'\n"
		  . "killswitch.standby_max_silence = 2\n");
	$standby->start;
	ok(within($standby, "SELECT ks_status()->>'upstream_heard_at' IS NOT NULL AND ks_mode() = 'disengaged'"),
		'the standby hears the upstream that says its word is from the future');
	$liar->stop;
	ok(within($standby, "SELECT ks_mode() = 'halt_all' AND ks_status()->>'upstream_lost' = 'true'", 60),
		'it goes quiet: the standby holds halt_all after killswitch.standby_max_silence all the same');
	$standby->stop('immediate');
	$primary->stop('immediate');
}

done_testing();
