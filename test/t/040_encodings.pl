# Every character in every encoding: reasons and triggered_by with accents,
# CJK, an astral emoji, U+2028, control characters and DEL go through SQL,
# the killswitch command, a Python writer, restarts (fast and immediate) and
# a crash restart, on UTF8, LATIN1 and SQL_ASCII clusters and in a LATIN1
# database of a UTF8 cluster.  Each time: the mode, integrity ok (also after
# the watcher read the server's own file), the exact text ks_status() shows
# (escaped where the database cannot hold a character), and KS001 with that
# text for a refused agent write in every database.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Encode qw(encode_utf8 decode_utf8);
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";

# Every client here speaks UTF-8; the server converts for LATIN1 databases.
# Servers start without it: a postmaster takes PGCLIENTENCODING from its
# environment as every session's default, which would hide a client (the
# killswitch command) that does not say what it sends.
$ENV{PGCLIENTENCODING} = 'UTF8';

sub start_server
{
	my ($node) = @_;
	local $ENV{PGCLIENTENCODING};
	delete $ENV{PGCLIENTENCODING};
	$node->start;
}

# What a database of this encoding shows of UTF-8 text: LATIN1 escapes
# what it cannot hold as \uXXXX / \UXXXXXXXX; UTF8 and SQL_ASCII show it.
sub shown
{
	my ($enc, $s) = @_;
	return $s unless $enc eq 'LATIN1';
	return join '', map {
		my $o = ord;
		$o <= 0xFF ? $_ : $o <= 0xFFFF ? sprintf('\\u%04X', $o) : sprintf('\\U%08X', $o)
	} split //, $s;
}

sub hexu { return unpack('H*', encode_utf8(shift)); }

# Text that only UTF-8 holds, and text that LATIN1 holds too (what SQL can
# send into a LATIN1 database).
my $wide = "caf\x{e9} \x{6771}\x{4eac} \x{1F6A8} fire\x{2028}next ctl\x01\x1f del\x7f \"q\" \\ \x{1F600}";
my $wide_by = "\x{1F916} r\x{f4}bot \x{4eba}";
my $latin = "r\x{e9}sum\x{e9} \x{a1}ol\x{e9}! ctl\x01 del\x7f \"q\" \\ \x{ff}";
my $latin_by = "op\x{e9}rateur \x{c5}sa";

# Write a state file the Python library's way (in place, indent=2, signed
# over json.dumps(..., separators=(",", ":"), sort_keys=True)).
my $pywrite = <<'PY';
import hashlib, hmac, json, sys
from datetime import datetime, timezone
d, mode, reason, by = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
secret = open(d + "/signing.key").read()
if secret.endswith("\n"):
    secret = secret[:-1]
data = {"mode": mode, "engaged_at": datetime.now(timezone.utc).isoformat(),
        "reason": reason, "triggered_by": by}
canon = json.dumps(data, separators=(",", ":"), sort_keys=True)
data["signature"] = hmac.new(secret.encode(), canon.encode(), hashlib.sha256).hexdigest()
with open(d + "/kill_switch_state.json", "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
PY

# A cluster (or a database of one) under test.
sub setup
{
	my ($name, $enc, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(extra => [ "--encoding=$enc", '--locale=C' ]);
	# refuse_agent_logins: section 5 checks the refused login's message too
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'killswitch'\nrestart_after_crash = on\nkillswitch.refuse_agent_logins = on\n");
	start_server($node);
	$node->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
	$node->safe_psql('postgres', q{
		CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
		CREATE TABLE t (x int); GRANT ALL ON t TO bot;});
	# where agents are refused: every database, with its encoding
	my @dbs = ([ 'postgres', $enc ]);
	for my $extra (@{ $opts{databases} // [] })
	{
		my ($db, $dbenc) = @$extra;
		$node->safe_psql('postgres',
			"CREATE DATABASE $db ENCODING '$dbenc' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
		$node->safe_psql($db, 'CREATE TABLE t (x int); GRANT ALL ON t TO bot;');
		push @dbs, [ $db, $dbenc ];
	}
	return { node => $node, enc => $enc, dbs => \@dbs, name => $name };
}

sub sql
{
	my ($c, $q, $db) = @_;
	return $c->{node}->safe_psql($db // 'postgres', encode_utf8($q));
}

# Wait until the watcher has looked at the file after now.
sub watcher_looked
{
	my ($c) = @_;
	my $t0 = sql($c, 'SELECT clock_timestamp()');
	return $c->{node}->poll_query_until('postgres',
		"SELECT (ks_status()->>'watcher_checked_at')::timestamptz > '$t0'::timestamptz");
}

# The state as the killswitch database shows it, and refusals everywhere.
sub check_state
{
	my ($c, $what, $mode, $reason, $by, $source) = @_;
	my $enc = $c->{enc};
	ok(watcher_looked($c), "$c->{name} $what: the watcher looked at the file");
	is(sql($c, "SELECT ks_mode() || ' ' || (ks_status()->>'integrity') || ' ' || (ks_status()->>'source')"),
		"$mode ok $source", "$c->{name} $what: mode $mode, integrity ok, source $source");
	is(sql($c, "SELECT encode(convert_to(ks_status()->'last_engagement'->>'reason', 'UTF8'), 'hex')"),
		hexu(shown($enc, $reason)), "$c->{name} $what: ks_status() shows the reason exactly");
	is(sql($c, "SELECT encode(convert_to(ks_status()->'last_engagement'->>'triggered_by', 'UTF8'), 'hex')"),
		hexu(shown($enc, $by)), "$c->{name} $what: and triggered_by");
	return if $mode eq 'emergency';
	for my $d (@{ $c->{dbs} })
	{
		my ($db, $dbenc) = @$d;
		my ($out, $err) = ('', '');
		$c->{node}->psql($db, "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1);",
			stdout => \$out, stderr => \$err, extra_params => [ '-U', 'bot' ]);
		$err = decode_utf8($err);
		like($err, qr/ERROR:  KS001: kill switch engaged \(halt_all\): a write by agent "bot" refused/,
			"$c->{name} $what: an agent write in $db ($dbenc) is refused with KS001");
		my $detail = 'Set by ' . shown($dbenc, $by) . ': ' . shown($dbenc, $reason) . '.';
		ok(index($err, "DETAIL:  $detail") >= 0,
			"$c->{name} $what: the refusal in $db ($dbenc) names the reason exactly")
		  or diag("want: $detail\ngot: $err");
	}
}

# The history verifies, in C and the auditor's way in SQL (pgcrypto).
sub check_history
{
	my ($c, $what) = @_;
	is(sql($c, 'SELECT ok FROM ks_verify_events()'), 't', "$c->{name} $what: ks_verify_events() is ok");
	is(sql($c, q{SELECT bool_and(hash = encode(digest(prev_hash || killswitch.event_canonical(e), 'sha256'), 'hex'))
		FROM killswitch.events e}), 't', "$c->{name} $what: every hash re-derives with pgcrypto");
}

# The mode once the server accepts connections again after a crash: the
# query goes with -c, since a refused connection could break psql's stdin.
# The postmaster learns of the crash when it reaps the killed backend: until
# it logs the reinitialization, the old server still answers.
sub mode_after_crash
{
	my ($node, $log_offset) = @_;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
	for (1 .. 600)
	{
		my ($out, $err) = ('', '');
		my $rc = $node->psql('postgres', '', stdout => \$out, stderr => \$err,
			extra_params => [ '-c', 'SELECT ks_mode()' ]);
		return $out if $rc == 0 && $out ne '';
		usleep(100_000);
	}
	return 'not back';
}

sub run_cli
{
	my ($c, @args) = @_;
	my ($out, $err) = ('', '');
	# the command must say itself that it speaks UTF-8
	local $ENV{PGCLIENTENCODING};
	delete $ENV{PGCLIENTENCODING};
	@args = ('-D', $c->{node}->data_dir, @args) unless $args[0] eq '-d';
	IPC::Run::run([ $cli, map { encode_utf8($_) } @args ],
		'>', \$out, '2>', \$err);
	return ($? >> 8, $err);
}

my @clusters = (
	setup('enc_utf8', 'UTF8', databases => [ [ 'lat', 'LATIN1' ] ]),
	setup('enc_latin1', 'LATIN1'),
	setup('enc_sqlascii', 'SQL_ASCII'));

for my $c (@clusters)
{
	my $node = $c->{node};
	my $enc = $c->{enc};
	# SQL can only send what the database holds
	my ($r, $b) = $enc eq 'LATIN1' ? ($latin, $latin_by) : ($wide, $wide_by);

	# 1. Through SQL, then the server's own file read back by the watcher;
	#    a listener gets the text as its database shows it.
	my $listener = $node->background_psql('postgres');
	$listener->query_safe('LISTEN killswitch');
	sql($c, "SELECT ks_engage('halt_all', \$r\$$r\$r\$, \$b\$$b\$b\$)");
	check_state($c, 'SQL engage', 'halt_all', $r, $b, 'sql');
	is(sql($c, 'SELECT encode(convert_to(reason, \'UTF8\'), \'hex\') FROM killswitch.events ORDER BY id DESC LIMIT 1'),
		hexu($r), "$c->{name}: the history holds the reason exactly");
	my $heard = $listener->query_safe('SELECT 1');
	$listener->quit;
	my ($payload) = $heard =~ /with payload "(.*)" received from server process/s;
	my $p = $payload ? decode_json($payload) : {};
	is($p->{reason} // '', shown($enc, $r), "$c->{name}: the NOTIFY payload carries the reason exactly");
	is($p->{triggered_by} // '', shown($enc, $b), "$c->{name}: and triggered_by");

	# 1b. The killswitch command through a connection (it speaks UTF-8).
	my ($orc, $oerr) = run_cli($c, '-d', $node->connstr('postgres'), 'engage', 'halt_all',
		'--reason', "$r (-d)", '--by', $b);
	is($orc, 0, "$c->{name}: killswitch -d engage with non-ASCII text") or diag($oerr);
	check_state($c, 'CLI -d engage', 'halt_all', "$r (-d)", $b, 'sql');

	# 2. A fast restart reads the file back (in the postmaster).
	$node->stop('fast');
	start_server($node);
	check_state($c, 'fast restart', 'halt_all', "$r (-d)", $b, 'sql');

	# 3. The killswitch command, offline while the server runs.
	my ($rc, $err) = run_cli($c, 'engage', 'halt_all', '--reason', $wide, '--by', $wide_by);
	is($rc, 0, "$c->{name}: killswitch -D engage with non-ASCII text") or diag($err);
	ok($node->poll_query_until('postgres', "SELECT ks_status()->>'source'", 'cli'),
		"$c->{name}: the watcher applies the command's write");
	check_state($c, 'CLI engage', 'halt_all', $wide, $wide_by, 'cli');

	# 4. An immediate stop: the start reads the command's file.
	$node->stop('immediate');
	start_server($node);
	check_state($c, 'immediate restart', 'halt_all', $wide, $wide_by, 'cli');

	# 5. A Python writer asks for emergency, while an agent runs a query
	#    with non-ASCII text: the snapshot file is UTF-8 all the same.
	my $busy = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
	$busy->query_until(qr/started/, encode_utf8("\\echo started\nSELECT pg_sleep(60) /* r\x{e9}sum\x{e9} */;\n"));
	ok($node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = 'bot' AND state = 'active'"),
		"$c->{name}: an agent is busy");
	my $pyreason = "\x{1F525} Python: caf\x{e9}\x{2028}\x{4e2d}\x{6587} \x7f\x02";
	my $pyby = "gouverneur \x{20ac}";
	my ($out, $perr);
	IPC::Run::run([ $python, '-c', $pywrite, $node->data_dir . '/pg_killswitch', 'EMERGENCY',
		encode_utf8($pyreason), encode_utf8($pyby) ], '>', \$out, '2>', \$perr);
	diag($perr) if $perr;
	ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'emergency'),
		"$c->{name}: the watcher applies a Python writer's emergency");
	check_state($c, 'Python engage', 'emergency', $pyreason, $pyby, 'file');
	eval { $busy->quit; };
	my $snapfile = $node->data_dir . '/pg_killswitch/kill_switch_snapshot.json';
	ok($node->poll_query_until('postgres', 'SELECT count(*) FROM killswitch.snapshots', '1'),
		"$c->{name}: the emergency snapshot is taken");
	my $snap = eval { JSON::PP->new->utf8->decode(slurp_file($snapfile)) };
	ok($snap, "$c->{name}: the snapshot file is valid UTF-8 JSON") or diag($@);
	ok((grep { ($_->{query} // '') =~ /r\x{e9}sum\x{e9}/ } @{ $snap->{sessions} // [] }),
		"$c->{name}: and holds the agent's query text exactly");
	my ($lout, $lerr) = ('', '');
	# the query goes with -c: a refused login could break the pipe of stdin
	$node->psql('postgres', '',
		stdout => \$lout, stderr => \$lerr, extra_params => [ '-U', 'bot', '-c', 'SELECT 1' ]);
	like($lerr, qr/FATAL:  kill switch engaged \(emergency\): login by agent "bot" refused/,
		"$c->{name}: in emergency an agent login is refused");

	# An agent role created since the emergency began is not in the list of
	# logins to refuse: its statements are refused, ERROR KS001 with the
	# reason as each database shows it.
	# one such role per database: once seen, a role may join the list
	$node->safe_psql('postgres', "CREATE ROLE latebot_$_->[0] LOGIN IN ROLE killswitch_agent") for @{ $c->{dbs} };
	for my $d (@{ $c->{dbs} })
	{
		my ($db, $dbenc) = @$d;
		my ($o, $e) = ('', '');
		$node->psql($db, '', stdout => \$o, stderr => \$e,
			extra_params => [ '-U', "latebot_$db", '-v', 'VERBOSITY=verbose', '-c', 'SELECT 1' ]);
		$e = decode_utf8($e);
		next if $e =~ /login by agent "latebot_$db" refused/;	# listed after all: nothing to show
		like($e, qr/ERROR:  KS001: kill switch engaged \(emergency\): any statement by agent "latebot_$db" refused/,
			"$c->{name}: in emergency an agent's statement in $db ($dbenc) is refused with KS001");
		my $detail = 'Set by ' . shown($dbenc, $pyby) . ': ' . shown($dbenc, $pyreason) . '.';
		ok(index($e, "DETAIL:  $detail") >= 0, "$c->{name}: and the refusal in $db ($dbenc) names the reason exactly")
		  or diag("want: $detail\ngot: $e");
	}

	# 6. kill -9 of a backend: the crash restart re-reads the file.
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	my $log_offset = -s $node->logfile;
	kill 'KILL', $pid;
	eval { $bg->quit; };
	is(mode_after_crash($node, $log_offset), 'emergency', "$c->{name}: the server is back after a crash restart, in emergency");
	check_state($c, 'crash restart', 'emergency', $pyreason, $pyby, 'file');

	# 7. Released with non-ASCII text.
	sql($c, "SELECT ks_disengage(\$r\$$r\$r\$, \$b\$$b\$b\$)");
	ok(watcher_looked($c), "$c->{name} release: the watcher looked at the file");
	is(sql($c, "SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'disengaged ok',
		"$c->{name}: released, integrity ok");
	is(sql($c, "SELECT encode(convert_to(reason || '|' || triggered_by, 'UTF8'), 'hex') FROM killswitch.events ORDER BY id DESC LIMIT 1"),
		hexu("$r|$b"), "$c->{name}: the release is recorded with its text exactly");
	check_history($c, 'after the matrix');
	is(sql($c, "SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), '0',
		"$c->{name}: no tamper event at any step");
}

# A SQL_ASCII database takes text as UTF-8: other bytes are refused clearly
# and nothing changes.
{
	my $c = $clusters[2];
	my $gen = sql($c, "SELECT ks_status()->>'generation'");
	my ($out, $err) = ('', '');
	$c->{node}->psql('postgres', "\\set VERBOSITY verbose\nSELECT ks_engage('halt_all', convert_from('\\xe9e9'::bytea, 'SQL_ASCII'))",
		stdout => \$out, stderr => \$err);
	like($err, qr/ERROR:  22021: reason is not valid UTF-8/, 'SQL_ASCII: a reason that is not UTF-8 is refused clearly');
	is(sql($c, "SELECT ks_mode() || ' ' || (ks_status()->>'generation')"), "disengaged $gen",
		'and nothing changed');
}

# A refusal's detail is cut to whole characters of the database encoding
# when escapes lengthen it: here the cut falls in the middle of the
# two-byte EUC_JP form of a kanji.
{
	my $c = $clusters[0];
	my $node = $c->{node};
	$node->safe_psql('postgres',
		"CREATE DATABASE jp ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
	$node->safe_psql('jp', 'CREATE TABLE t (x int); GRANT ALL ON t TO bot;');
	my $by = "\x{1F916}" x 10;
	my $reason = 'x' . ("\x{1F6A8}" x 36) . ("\x{6771}" x 36);
	sql($c, "SELECT ks_engage('halt_all', \$r\$$reason\$r\$, \$b\$$by\$b\$)");
	my ($out, $err) = ('', '');
	$node->psql('jp', "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1);",
		stdout => \$out, stderr => \$err, extra_params => [ '-U', 'bot' ]);
	$err = decode_utf8($err);
	like($err, qr/ERROR:  KS001: /, 'EUC_JP: a long escaped refusal is still KS001');
	my $full = 'Set by ' . ('\U0001F916' x 10) . ': x' . ('\U0001F6A8' x 36) . ("\x{6771}" x 36);
	my ($detail) = $err =~ /DETAIL:  (.*)/;
	$detail //= '';
	is($detail, substr($full, 0, 470 + 20) . '.', 'and its detail is cut after the last whole character that fits, and ends its sentence');
}

# The command refuses text that is not UTF-8 rather than mangle it.
{
	my $c = $clusters[0];
	my $before = slurp_file($c->{node}->data_dir . '/pg_killswitch/kill_switch_state.json');
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, '-D', $c->{node}->data_dir, 'engage', 'halt_all', '--reason', "bad \xe9 latin1" ],
		'>', \$out, '2>', \$err);
	is($? >> 8, 1, 'killswitch: a --reason that is not UTF-8 is refused');
	like($err, qr/--reason is not valid UTF-8/, 'with a clear message');
	is(slurp_file($c->{node}->data_dir . '/pg_killswitch/kill_switch_state.json'), $before,
		'and the file is unchanged');
}

$_->{node}->stop for @clusters;
done_testing();
