# The fleet's edges (ARCHITECTURE §11): a base backup started as it is
# (crash recovery from its backup_label) whose WAL holds a change made after
# the state files were copied; a standby without hot standby puts back an
# outside write at start; the writers' lock held on a standby never stops
# WAL replay, and the files follow once it is free.
use strict;
use warnings;
use Fcntl qw(:flock);
use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::RecursiveCopy;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;
use JSON::PP;

sub q1 { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

my $primary = ks_node('edge_primary', init => { allows_streaming => 1 }, no_extension => 1);
q1($primary, q(
CREATE EXTENSION killswitch CASCADE;
CREATE TABLE t (x int);
));

# ---- a base backup started as it is ----
# A low-level backup: the files are copied, then a change commits, then the
# backup ends; its WAL holds the change, its copy of the state files does not.
my $bg = $primary->background_psql('postgres');
$bg->query_safe("SELECT pg_backup_start('edge', true)");
my $backup = $primary->backup_dir . '/manual';
PostgreSQL::Test::RecursiveCopy::copypath($primary->data_dir, $backup,
	filterfn => sub { my $p = shift; return $p ne 'postmaster.pid' && $p !~ m{^pg_wal/.}; });
my $gen = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'after the copy', 'ops')");
my $label = $bg->query('SELECT labelfile FROM pg_backup_stop(false)');
$label .= "\n" unless $label =~ /\n\z/;
$bg->quit;
append_to_file("$backup/backup_label", $label);
opendir my $dh, $primary->data_dir . '/pg_wal' or die;
for my $f (grep { /^[0-9A-F]{24}$/ } readdir $dh)
{
	copy($primary->data_dir . "/pg_wal/$f", "$backup/pg_wal/$f") or die $!;
}
closedir $dh;
my $copy = PostgreSQL::Test::Cluster->new('edge_copy');
ks_init_from_backup($copy, $primary, 'manual');
ok(!-e $copy->data_dir . '/standby.signal' && !-e $copy->data_dir . '/recovery.signal',
	'the copy starts with no signal file');
$copy->start;
ok($copy->poll_query_until('postgres', "SELECT ks_mode() = 'halt_all'"),
	'a base backup started as it is: the change in its WAL holds');
ok($copy->poll_query_until('postgres', "SELECT ks_status()->>'generation' = '$gen'"),
	'at the change\'s generation');
is(q1($copy, "SELECT ks_status()->>'integrity' || ' ' || (SELECT count(*) FROM killswitch.events WHERE source = 'tamper')"),
	'ok 0', 'integrity ok, no tamper event');
$copy->stop;

# ---- hot_standby = off: an outside write is put back at start ----
$primary->backup('b');
my $cold = PostgreSQL::Test::Cluster->new('edge_cold');
ks_init_from_backup($cold, $primary, 'b', has_streaming => 1);
$cold->append_conf('postgresql.conf', "hot_standby = off\n");
$cold->start;
$cold->stop;
my $state = $cold->data_dir . '/pg_killswitch/kill_switch_state.json';
my $copied = $cold->data_dir . '/pg_killswitch/last_applied.json';
append_to_file($state, ' ');	# an outside write: any byte counts
$cold->start;
is(slurp_file($state), slurp_file($copied), 'hot_standby = off: the state file is put back at start');
ok($cold->log_contains('refused an outside change of the kill switch state file on a standby'),
	'with the WARNING');
$cold->stop;

# ---- the writers' lock held on a standby ----
my $standby = PostgreSQL::Test::Cluster->new('edge_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->start;
open my $lock, '>>', $standby->data_dir . '/pg_killswitch/kill_switch_state.lock' or die $!;
flock($lock, LOCK_EX) or die $!;
my $g2 = q1($primary, "SELECT generation FROM ks_engage('emergency', 'while the lock is held', 'ops')");
q1($primary, 'INSERT INTO t VALUES (1)');
ok($standby->poll_query_until('postgres', 'SELECT count(*) = 1 FROM t'),
	'replay goes on while the writers\' lock is held on the standby');
is(q1($standby, 'SELECT ks_mode()'), 'emergency', 'and the standby follows in memory');
close $lock;	# the lock is free: the watcher writes the files redo could not
ok($standby->poll_query_until('postgres',
	"SELECT pg_read_file('pg_killswitch/last_applied.json')::jsonb->>'generation' = '$g2'"),
	'the private copy follows once the lock is free');
$standby->stop;

# ---- one state directory, one server ----
# A same-host standby made by pg_basebackup inherits the primary's absolute
# killswitch.state_dir: it must not write the primary's file.
my $shared = PostgreSQL::Test::Utils::tempdir();
chmod 0700, $shared;
$primary->append_conf('postgresql.conf', "killswitch.state_dir = '$shared'\n");
$primary->restart;
# (a moved state directory is a deleted file: a tamper verdict, released here)
q1($primary, "SELECT ks_disengage('own directory', 'ops')");
my $tampers = q1($primary, "SELECT count(*) FROM killswitch.events WHERE source = 'tamper'");
$primary->backup('b2');
my $twin = PostgreSQL::Test::Cluster->new('edge_twin');
ks_init_from_backup($twin, $primary, 'b2', has_streaming => 1);
$twin->start;
ok($twin->log_contains('is in use by the server whose data directory is'),
	'a standby sharing the primary\'s state directory says so');
for my $i (1 .. 10)
{
	q1($primary, "SELECT ks_engage('halt_all', 'shared $i', 'ops')");
	q1($primary, "SELECT ks_disengage('shared $i', 'ops')");
}
my $last = q1($primary, "SELECT ks_status()->>'generation'");
ok($twin->poll_query_until('postgres', "SELECT ks_mode() = 'disengaged' AND ks_status()->>'generation' = '$last'"),
	'the standby follows in memory');
is(q1($primary, "SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), $tampers,
	'and the primary sees no false tamper verdict');
is(q1($primary, "SELECT ks_status()->>'integrity'"), 'ok', 'its integrity is ok');
$twin->stop;

# ---- a forged event is not adopted ----
# A row a superuser inserted without the secret: a standby does not follow
# it, and a promoted standby calls it tampering instead of releasing.
$primary->append_conf('postgresql.conf', "killswitch.state_dir = 'pg_killswitch'\n");
$primary->restart;
q1($primary, "SELECT ks_disengage('own directory again', 'ops')");
$primary->backup('b3');
my $heir = PostgreSQL::Test::Cluster->new('edge_heir');
ks_init_from_backup($heir, $primary, 'b3', has_streaming => 1);
$heir->start;
my $g3 = q1($primary, "SELECT generation FROM ks_engage('halt_all', 'the real state', 'ops')");
ok($heir->poll_query_until('postgres', "SELECT ks_status()->>'generation' = '$g3'"), 'the heir follows');
my $offset = -s $heir->logfile;
q1($primary, qq{INSERT INTO killswitch.events (id, at, mode, previous_mode, reason, triggered_by,
  affected_tasks, source, session_role, backend_pid, xid, generation, key_id, require_hmac,
  prev_hash, hash, signature)
  SELECT id + 1, now(), 'disengaged', mode, 'forged', 'nobody', 0, 'sql', 'nobody', 0, xid,
         generation + 1, key_id, true, hash, repeat('0', 64), repeat('0', 64)
  FROM killswitch.events ORDER BY id DESC LIMIT 1});
ok($heir->wait_for_log(qr/the standby does not follow the kill switch history/, $offset),
	'a standby does not follow a forged newest event');
is(q1($heir, 'SELECT ks_mode()'), 'halt_all', 'and stays halted');
$primary->stop;
$heir->promote;
ok($heir->poll_query_until('postgres',
	"SELECT ks_mode() = 'halt_all' AND ks_status()->>'integrity' = 'tampered'"),
	'promoted over a forged event: the halt, tampered — not a release');
$heir->stop;

# ---- non-ASCII text on a LATIN1 fleet, across a crash of the standby ----
my $lprimary = ks_node('edge_latin1',
	init => { allows_streaming => 1, extra => [ '--encoding=LATIN1', '--locale=C' ] });
$lprimary->backup('l1');
my $lstandby = PostgreSQL::Test::Cluster->new('edge_latin1_standby');
ks_init_from_backup($lstandby, $lprimary, 'l1', has_streaming => 1);
$lstandby->start;
my $lgen = $lprimary->safe_psql('postgres',
	"SET client_encoding = 'UTF8'; SELECT generation FROM ks_engage('halt_all', 'café crème on LATIN1', 'opérateur')");
ok($lstandby->poll_query_until('postgres', "SELECT ks_status()->>'generation' = '$lgen'"),
	'a LATIN1 standby follows');
ks_kill9_and_start($lstandby);
is($lstandby->safe_psql('postgres', "SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"),
	'halt_all ok', 'after kill -9 the LATIN1 standby starts in the replayed mode, integrity ok');
my $lfile = decode_json(slurp_file($lstandby->data_dir . '/pg_killswitch/kill_switch_state.json'));
is($lfile->{reason}, "caf\x{e9} cr\x{e8}me on LATIN1", 'its state file keeps the text whole, in UTF-8');
$lstandby->stop;
$lprimary->stop;
done_testing();
