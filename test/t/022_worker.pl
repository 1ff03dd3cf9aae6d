# The watcher as a PostgreSQL background worker: one per cluster, in
# killswitch.database; SIGHUP rereads the settings, SIGTERM ends it and the
# postmaster starts it again, and it goes when the postmaster goes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('worker');
my $file = $node->data_dir . '/pg_killswitch/kill_switch_state.json';

sub sql { return $node->safe_psql('postgres', shift); }

my $watchers = "SELECT count(*) || ':' || string_agg(datname, ',') FROM pg_stat_activity "
  . "WHERE backend_type = 'killswitch watcher'";
sub watcher_pid
{
	return sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'");
}

# 1. One watcher, connected to killswitch.database, even with several databases.
sql('CREATE DATABASE other');
ok($node->poll_query_until('postgres', $watchers, '1:postgres'),
	'one watcher in the cluster, connected to postgres');

# 2. SIGTERM ends it like any worker; the postmaster starts a new one, which works.
my $old = watcher_pid();
is(sql("SELECT pg_terminate_backend($old)"), 't', 'the watcher takes SIGTERM');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'killswitch watcher' AND pid <> $old"),
	'and is started again');
open my $fh, '>', "$file.new" or die $!;
print $fh ks_signed_text(ks_secret($node), mode => 'HALT_ALL',
	engaged_at => '2030-01-01T00:00:00.000000+00:00', reason => 'after restart', triggered_by => 't');
close $fh;
rename "$file.new", $file or die $!;
ok($node->poll_query_until('postgres', 'SELECT ks_mode()', 'halt_all'),
	'the new watcher applies a file change');
sql("SELECT ks_disengage('reset', 'tester')");

# 3. SIGHUP: a new poll interval is in force after a reload, without a restart.
#    At 100 ms the newest look is never a second old; at 3 s it soon is.
my $age = "SELECT (ks_status()->>'watcher_age_ms')::int > 1500";
sql("ALTER SYSTEM SET killswitch.poll_interval = '3s'");
$node->reload;
ok($node->poll_query_until('postgres', $age), 'a longer poll_interval is in force after a reload');
sql('ALTER SYSTEM RESET killswitch.poll_interval');
$node->reload;
ok($node->poll_query_until('postgres', "SELECT (ks_status()->>'watcher_age_ms')::int < 500"),
	'and the default again after the next one');
# Sampled for four seconds: at 3 s the newest look is over 2 s old for a
# third of the time (a dozen samples); at the default it is only when a look
# is a second late, which a loaded machine can make happen once in a while.
my $stale = 0;
for (1 .. 40)
{
	$stale++ if sql("SELECT (ks_status()->>'watcher_age_ms')::int > 2000") eq 't';
	usleep(100_000);
}
cmp_ok($stale, '<=', 3, "with the default, the watcher looks about every second ($stale of 40 samples over 4 s)");

# 4. It goes when the postmaster goes, and comes back with the server.
$old = watcher_pid();
ks_kill9_and_start($node);
ok(!ks_running($old), 'the watcher exits when the postmaster dies');
ok($node->poll_query_until('postgres', $watchers, '1:postgres'),
	'and one watcher runs again after the restart');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

done_testing();
