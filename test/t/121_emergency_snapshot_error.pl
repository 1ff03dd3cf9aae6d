# An emergency snapshot that fails leaves nothing held (ARCHITECTURE §9):
# the watcher takes it in a subtransaction, logs the failure and goes on to
# end the agent sessions.  The failure is forced where it does the most
# harm: GetLockStatusData() grows its array while it holds every
# lock-manager partition LWLock, and only an abort gives those back — an
# error caught and flushed without one leaves them held, and every lock
# that is not a fast-path one waits forever, the agent's own release of its
# locks as it is ended among them.
#
# The watcher is connected to no database (killswitch.database missing), so
# the snapshot is built from shared memory (sessions.c).  An LD_PRELOAD shim
# (test/shim/ks_oom.c) fails the watcher's one realloc() that grows the
# array: max_connections = 200 makes the array GetLockStatusData() starts
# with (one entry a backend) larger than a memory context's small chunks,
# so that growing it is a realloc(), and an agent holding 600 locks makes
# it grow.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $src = $ENV{KS_SRCDIR} // '.';
my $shim = "$src/test/shim/ks_oom.so";
my $cli = "$src/src/cli/killswitch";
my $node = ks_node('snapshot_error', conf => "max_connections = 200\n");
my $pgdata = $node->data_dir;
my $oom = "$pgdata/oom";

sub sql { return $node->safe_psql('postgres', shift); }

sql('CREATE ROLE bot LOGIN IN ROLE killswitch_agent');
sql(join('', map { "CREATE TABLE t$_ (x int); GRANT SELECT ON t$_ TO bot;\n" } 1 .. 600));
sql('CREATE TABLE u (x int)');
$node->append_conf('postgresql.conf', "killswitch.database = 'ksdb'\n");
$node->stop;
{
	local $ENV{LD_PRELOAD} = $shim;
	local $ENV{KS_OOM_FILE} = $oom;
	$node->start;
}
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 AND bool_and(datname IS NULL) FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'"),
	'the watcher runs, connected to no database');
my $watcher = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'");

# The agent holds 600 locks in a transaction begun before the emergency.
my $bg = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$bg->query_safe('BEGIN; LOCK TABLE ' . join(', ', map { "t$_" } 1 .. 600) . ' IN ACCESS SHARE MODE');
is(sql("SELECT count(*) >= 600 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'bot'"),
	't', 'the agent holds its locks');

# The watcher's next realloc() of at least 24000 bytes fails: the array's
# growth from 212 entries (11872 bytes) to over 600 (33600).
open my $f, '>', $oom or die $!;
print $f "$watcher 24000\n";
close $f;
my ($out, $err) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'emergency', '--reason', 'oom drill', '--by', 'ops' ],
	'>', \$out, '2>', \$err);
is($?, 0, 'killswitch -D engage emergency') or diag($err);
ok($node->wait_for_log(qr/WARNING:  the kill switch emergency snapshot failed: out of memory/),
	'the snapshot failed for want of memory, and the watcher said so');
ok(-e "$oom.done", 'in the realloc() the shim failed');

# Nothing is left held: the agent is ended (its exit releases its locks),
# and a lock that needs a partition LWLock exclusively is granted.  Without
# the abort both wait forever — even a new connection does, for the lock
# on its database — so each query here has a timeout.
sub sql_within
{
	my ($sqltext, $secs) = @_;
	my ($stdout, $timed_out) = ('', 0);
	my $rc = $node->psql('postgres', $sqltext, stdout => \$stdout,
		timeout => $secs, timed_out => \$timed_out);
	return ($rc == 0 && !$timed_out) ? $stdout : undef;
}
my $ended = 0;
for (1 .. 100)
{
	my $left = sql_within("SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'", 60);
	last unless defined $left;
	$ended = 1, last if $left eq '0';
	usleep(100_000);
}
ok($ended, 'the busy agent session is ended, its locks given back');
eval { $bg->quit } if $ended;
ok(defined sql_within('BEGIN; LOCK TABLE u IN ACCESS EXCLUSIVE MODE; COMMIT', 60),
	'an ACCESS EXCLUSIVE lock is granted at once');
# held, every later query would wait forever
unless ($ended)
{
	done_testing();
	exit;
}
ok($node->wait_for_log(qr/kill switch emergency \(generation \d+\): 1 agent session ended/),
	'the emergency WARNING counts the session ended');
is(sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'"), $watcher,
	'the watcher is the same process');

done_testing();
