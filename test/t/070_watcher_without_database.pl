# A watcher whose killswitch.database is missing is loud and still works:
# it stays up (no FATAL loop), ks_status() in any database with the
# extension says why (watcher_problem), one WARNING a minute, and an
# outside engage emergency is still applied and acted on — shared memory,
# an agent session in another database ended, the snapshot file.  Once
# the database is created with the extension, the watcher comes back
# connected to it and the history gets the change.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('nodb');
my $pgdata = $node->data_dir;

sub sql { return $node->safe_psql('postgres', shift); }

my $watcher = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'";
my $problem = "SELECT ks_status()->>'watcher_problem'";

sql('CREATE DATABASE other');
sql('CREATE ROLE bot LOGIN IN ROLE killswitch_agent');
ok($node->poll_query_until('postgres', "$problem IS NULL"),
	'watcher_problem is null while the watcher has its database and the extension');

# 1. killswitch.database names a database that does not exist.  The history
#    in postgres stays, so ks_status() can be asked there.
$node->append_conf('postgresql.conf',
	"killswitch.database = 'ksdb'\nkillswitch.alert_command = 'env >> alert.env'\nkillswitch.refuse_agent_logins = on\n");
$node->restart;
ok($node->poll_query_until('postgres', "$problem LIKE '%database \"ksdb\"%does not exist%'"),
	'ks_status() in another database shows watcher_problem');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 AND bool_and(datname IS NULL) FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'"),
	'the watcher runs, connected to no database');
my $pid = sql($watcher);
like($pid, qr/^\d+$/, 'the watcher is there');
sleep 4;
is(sql($watcher), $pid, 'the watcher stays up (same pid after 4 seconds): no FATAL loop');
my $log = slurp_file($node->logfile);
my $warnings = () = $log =~ /WARNING:  the kill switch watcher cannot record the history: database "ksdb" named by killswitch.database does not exist/g;
is($warnings, 1, 'the WARNING is logged once, not every second');
like($log, qr/HINT:  Create it and run CREATE EXTENSION killswitch in it/, 'it says how to fix it');
like(sql("SELECT ks_status()->>'watcher_age_ms'"), qr/^\d+$/, 'the watcher notes when it looked');

# 2. An outside engage emergency is applied without a database: shared
#    memory, an agent session in another database ended, the snapshot file.
my $bg = $node->background_psql('other', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$bg->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(60) /* agent-nodb */;\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'bot' AND datname = 'other' AND state = 'active'"),
	'an agent works in database other');
unlink "$pgdata/pg_killswitch/kill_switch_snapshot.json";
my ($out, $err) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'emergency', '--reason', 'fire, no db', '--by', 'ops' ],
	'>', \$out, '2>', \$err);
is($?, 0, 'killswitch -D engage emergency writes the file') or diag($err);
my ($cli_gen) = $out =~ /\(generation (\d+)\) written/;
like($cli_gen, qr/^\d+$/, 'the command prints the generation it wrote') or diag($out);
ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'emergency'),
	'the watcher without a database applies it to shared memory');
ok($node->poll_query_until('postgres', "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'", '0'),
	'the agent session in database other is ended');
eval { $bg->quit };
my ($rc, $stdout, $stderr) = $node->psql('other', 'SELECT 1', extra_params => [ '-U', 'bot' ]);
like($stderr, qr/login by agent "bot" refused/, 'agent logins are refused');
my $snapfile = "$pgdata/pg_killswitch/kill_switch_snapshot.json";
for (1 .. 600) { last if -s $snapfile; usleep(100_000); }
my $snap = decode_json(slurp_file($snapfile));
is($snap->{status}{mode}, 'emergency', 'the snapshot file holds the status');
ok((grep { $_->{role} eq 'bot' && $_->{database} eq 'other' && $_->{query} =~ /agent-nodb/ } @{ $snap->{sessions} }),
	'and the agent session with what it ran');
ok($node->wait_for_log(qr/kill switch emergency \(generation \d+\): 1 agent session ended/),
	'the emergency WARNING is logged');
my $envfile = "$pgdata/alert.env";
# the command runs at no moment the test can name, and env may write in pieces
for (1 .. 600) { last if -s $envfile && slurp_file($envfile) =~ /^KS_REASON=.*\n/m; usleep(100_000); }
like(slurp_file($envfile), qr/^KS_REASON=fire, no db$/m, 'the alert command runs');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'fire, no db'"), '0',
	'nothing is recorded in the old database');

# 3. The database appears with the extension: the watcher restarts into it
#    and the history gets the change.
sql('CREATE DATABASE ksdb');
$node->safe_psql('ksdb', 'CREATE EXTENSION killswitch CASCADE');
ok($node->poll_query_until('postgres',
	"SELECT datname FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'", 'ksdb'),
	'the watcher comes back connected to ksdb');
ok($node->poll_query_until('ksdb', "SELECT ks_status()->>'watcher_problem' IS NULL"),
	'watcher_problem is null again');
ok($node->poll_query_until('ksdb',
	"SELECT count(*) > 0 FROM killswitch.events WHERE mode = 'emergency' AND reason = 'fire, no db'"),
	'the history gets the change made without a database');
is($node->safe_psql('ksdb', "SELECT ks_mode()"), 'emergency', 'the mode is still emergency');
is($node->safe_psql('ksdb', "SELECT (ks_status()->>'generation')::bigint = max(generation) FROM killswitch.events"),
	't', 'history and shared memory agree on the generation');
is($node->safe_psql('ksdb', "SELECT string_agg(generation || ' ' || source, ',') FROM killswitch.events WHERE reason = 'fire, no db'"),
	"$cli_gen cli", 'the change is recorded once, with the generation the command printed');
is($node->safe_psql('ksdb', "SELECT count(*) FROM killswitch.events WHERE mode = 'emergency'"), '1',
	'one emergency event in the history');
# a whole turn of the watcher after the change was recorded: its duties ran
my $t0 = $node->safe_psql('ksdb', 'SELECT clock_timestamp()');
ok($node->poll_query_until('ksdb', "SELECT (ks_status()->>'watcher_checked_at')::timestamptz > '$t0'::timestamptz"),
	'the watcher went round once more');
is(() = slurp_file($node->logfile) =~ /kill switch emergency \(generation/g, 1,
	'the emergency actions did not run again after the restart');
is(() = slurp_file($envfile) =~ /^KS_REASON=/mg, 1, 'the alert command ran once');

# 4. The extension missing in killswitch.database is a problem too.
$node->safe_psql('ksdb', "SELECT ks_disengage('all clear', 'tester')");
$node->safe_psql('ksdb', 'DROP EXTENSION killswitch');
$node->restart;
ok($node->poll_query_until('other', 'SELECT 1', '1'), 'restarted');
ok($node->poll_query_until('postgres', "$problem LIKE '%extension is not installed in database \"ksdb\"%'"),
	'watcher_problem names a missing extension');

# 5. Without a database, a file that cannot be trusted still halts (fail-closed).
$node->append_conf('postgresql.conf', "killswitch.database = 'gone'\n");
$node->restart;
ok($node->poll_query_until('postgres', "$problem LIKE '%database \"gone\"%does not exist%'"),
	'the watcher runs without its database again');
is(sql('SELECT ks_mode()'), 'disengaged', 'disengaged before the bad file');
open my $fh, '>', "$pgdata/pg_killswitch/kill_switch_state.json" or die $!;
print $fh '{"mode": "DISENGAGED", "reason": "unsigned"}';
close $fh;
ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'halt_all'),
	'an unsigned file halts without a database');
is(sql("SELECT ks_status()->>'integrity'"), 'tampered', 'and the state is marked tampered');

$node->stop;
done_testing();
