# Outside changes are seen at once: the watcher watches the state directory
# with inotify, so a file written by the CLI (renamed into place) or by the
# Python library (rewritten in place) is applied long before the poll would
# have looked.  With killswitch.poll_interval at 60 s, only inotify can
# apply a change within the waits below.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

plan skip_all => 'inotify is Linux only' unless $^O eq 'linux';

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('inotify', conf => "killswitch.poll_interval = '60s'\n");
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_state.json";

sub sql { return $node->safe_psql('postgres', shift); }

# Is the mode what we want within 10 seconds (a sixth of the poll interval)?
sub applied_soon
{
	my ($want) = @_;
	for (1 .. 100)
	{
		return 1 if sql('SELECT ks_mode()') eq $want;
		usleep(100_000);
	}
	return 0;
}

ok($node->poll_query_until('postgres', "SELECT ks_status()->>'watch'", 'inotify'),
	'ks_status() says the watcher uses inotify');
# the watcher's first look is done; the next poll is a minute away
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'watcher_checked_at' IS NOT NULL"),
	'the watcher has looked once');

# 1. The CLI writes a temp file and renames it into place.
my ($out, $err) = ('', '');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'halt_all', '--reason', 'by rename', '--by', 'ops' ],
	'>', \$out, '2>', \$err);
is($?, 0, 'killswitch -D engage halt_all') or diag($err);
ok(applied_soon('halt_all'), 'a file renamed into place is applied without waiting for the poll');
ok($node->poll_query_until('postgres',
	"SELECT count(*) FROM killswitch.events WHERE reason = 'by rename' AND source = 'cli'", '1'),
	'and recorded');

# 2. A writer that rewrites the file in place, as the Python library does:
#    truncate, write, close.  Twice in a row: the last one counts.
my $secret = ks_secret($node);
my $gen = sql("SELECT ks_status()->>'generation'");
for my $step ([ 'HALT_ALL', 'in place, first' ], [ 'EMERGENCY', 'in place, second' ])
{
	open my $fh, '>', $file or die $!;
	print $fh ks_signed_text($secret, mode => $step->[0], reason => $step->[1],
		triggered_by => 'python', engaged_at => '2030-01-01T00:00:0' . (++$gen % 10) . '.000000+00:00',
		generation => $gen);
	close $fh;
}
ok(applied_soon('emergency'), 'a file rewritten in place is applied without waiting for the poll');
# in force at once, recorded at a later look that holds the lock (watch.c)
ok($node->poll_query_until('postgres', "SELECT reason FROM killswitch.events ORDER BY id DESC LIMIT 1", 'in place, second'),
	'the last write is the one recorded');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'and nothing was judged half-written');

# 3. Deleting the file is seen at once too: the state stays, the file comes back.
unlink $file or die $!;
my $back = 0;
for (1 .. 100) { if (-s $file) { $back = 1; last; } usleep(100_000); }
ok($back, 'a deleted state file is rewritten without waiting for the poll');
is(sql('SELECT ks_mode()'), 'emergency', 'and deleting did not release');

# 4. An outside engage holds even when it cannot be recorded (the event's
#    insert fails): it is in shared memory before the disk is written, and
#    it is recorded once the failure is gone.
sql("SELECT ks_disengage('before the failing insert', 'tester')");
sql(q{CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'no inserts today'; END$$});
sql('CREATE TRIGGER refuse BEFORE INSERT ON killswitch.events FOR EACH ROW EXECUTE FUNCTION public.refuse()');
IPC::Run::run([ $cli, '-D', $pgdata, 'engage', 'halt_all', '--reason', 'not recordable', '--by', 'ops' ],
	'>', \$out, '2>', \$err);
is($?, 0, 'killswitch -D engage halt_all while the history refuses inserts') or diag($err);
ok(applied_soon('halt_all'), 'the engage is in force although it could not be recorded');
ok($node->wait_for_log(qr/no inserts today/), 'the failure is logged');
sql('DROP TRIGGER refuse ON killswitch.events');
ok($node->poll_query_until('postgres',
	"SELECT count(*) FROM killswitch.events WHERE reason = 'not recordable'", '1'),
	'and recorded once the failure is gone');

$node->stop;
done_testing();
