# The watcher: changes to the state file made outside the database while the
# server runs (ARCHITECTURE §4, §5).  A validly signed newer file is applied and
# recorded; every other kind of file makes the state at least halt_all (or,
# for a deleted or emptied file, keeps it) and records a tamper event;
# nothing written outside ever releases without the secret.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('watcher');

my $dir = $node->data_dir . '/pg_killswitch';
my $file = "$dir/kill_switch_state.json";
my $secret = ks_secret($node);

sub sql { return $node->safe_psql('postgres', shift); }
sub mode { return sql('SELECT ks_mode()'); }
sub integrity { return sql("SELECT ks_status()->>'integrity'"); }
sub tampers { return sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"); }
sub generation { return sql("SELECT (ks_status()->>'generation')::bigint"); }

# Wait (bounded) until a query gives the expected answer.
sub wait_for
{
	my ($sql, $want, $what) = @_;
	ok($node->poll_query_until('postgres', $sql, $want), $what);
}

# Signed the way the reference library signs (the tricky characters are
# covered by the test vectors).
sub signed_text { return ks_signed_text($secret, @_); }

sub now_iso
{
	my ($s, $us) = Time::HiRes::gettimeofday();
	my @t = gmtime($s);
	return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00',
		$t[5] + 1900, $t[4] + 1, @t[3, 2, 1, 0], $us);
}

# Put text into place the way careful writers do: a temporary file renamed.
sub put_file
{
	my ($text) = @_;
	open my $fh, '>', "$file.new" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.new", $file or die $!;
}

# Release from SQL as the superuser: right after an outside change is
# recorded, too (TAP 023 holds that moment open).
sub release
{
	sql("SELECT ks_disengage('test reset', 'tester')");
	is(mode(), 'disengaged', 'released through SQL');
}

# 1. A validly signed newer file is applied, recorded with source file.
my $gen = generation();
put_file(signed_text(mode => 'HALT_ALL', engaged_at => now_iso(), reason => 'edited by hand',
	triggered_by => 'an operator with the secret', generation => $gen + 1));
wait_for('SELECT ks_mode()', 'halt_all', 'a signed file written outside is applied');
# in force at once, recorded by a later look that holds the lock (watch.c)
wait_for("SELECT source || ' ' || reason FROM killswitch.events ORDER BY id DESC LIMIT 1",
	'file edited by hand', 'and recorded as source file with its reason');
is(integrity(), 'ok', 'integrity stays ok');
my $on_disk = decode_json(slurp_file($file));
is($on_disk->{generation}, generation(), 'the file carries the generation of the state');

# 2. The reference library's file: no generation, written in place.
release();
open my $fh, '>', $file or die $!;
print $fh signed_text(mode => 'HALT_NONCRITICAL', engaged_at => now_iso(),
	reason => 'python agent', triggered_by => 'cost_governor');
close $fh;
wait_for('SELECT ks_mode()', 'halt_noncritical', 'a file written in place without a generation is applied');

# 3. A file marked as written by the CLI is recorded with source cli.
$gen = generation();
put_file(signed_text(mode => 'EMERGENCY', engaged_at => now_iso(), reason => 'cli',
	triggered_by => 'root', generation => $gen + 1, source => 'cli'));
wait_for("SELECT source FROM killswitch.events ORDER BY id DESC LIMIT 1", 'cli',
	'a change from the CLI is recorded with source cli');
release();

# 4. An unsigned hand edit asking for a halt halts ...
my $before = tampers();
put_file(qq({"mode": "HALT_ALL", "reason": "unsigned"}));
wait_for('SELECT ks_mode()', 'halt_all', 'an unsigned file asking for a halt halts');
is(integrity(), 'tampered', 'and the state is marked tampered');
wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
	'a tamper event is recorded');
ok(-f "$file.rejected", 'the rejected file is kept beside the state file');

# ... and an unsigned hand edit asking for a release never releases.
$before = tampers();
put_file(qq({"mode": "DISENGAGED", "reason": "let me go"}));
wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
	'an unsigned release is judged');
is(mode(), 'halt_all', 'an unsigned release does not release');

# 5. Every corrupt variant, one by one, from disengaged.
my %variants = (
	'wrong signature' => sub {
		my $t = signed_text(mode => 'DISENGAGED', engaged_at => now_iso(), reason => 'x',
			triggered_by => 'y', generation => generation() + 1);
		$t =~ s/"signature" : "[0-9a-f]/"signature" : "z/;
		put_file($t);
	},
	'truncated' => sub { put_file(substr(signed_text(mode => 'DISENGAGED', reason => 'x'), 0, 30)); },
	'garbage' => sub { put_file("\x00\xff\xfe garbage \x01"); },
	'unknown mode' => sub {
		put_file(signed_text(mode => 'STOP', engaged_at => now_iso(), reason => 'x',
			triggered_by => 'y', generation => generation() + 1));
	},
	'wrong types' => sub {
		put_file(signed_text(mode => 5, engaged_at => now_iso(), reason => 'x',
			triggered_by => 'y', generation => generation() + 1));
	},
	# the watcher sees a deletion at once (inotify) and writes the file back: retry
	'a directory' => sub {
		for (1 .. 100) { unlink $file; last if mkdir $file; }
		-d $file or die "could not put a directory in place of $file";
	},
	'a symlink' => sub {
		my $t = signed_text(mode => 'DISENGAGED', engaged_at => now_iso(), reason => 'x',
			triggered_by => 'y', generation => generation() + 1);
		open my $o, '>', "$dir/elsewhere.json" or die $!;
		print $o $t;
		close $o;
		symlink "$dir/elsewhere.json", "$file.link" or die $!;
		rename "$file.link", $file or die $!;
	},
	'a huge file' => sub { put_file('{"mode": "DISENGAGED", "reason": "' . ('x' x (2 * 1024 * 1024)) . '"}'); },
	'unreadable' => sub {
		put_file(signed_text(mode => 'DISENGAGED', engaged_at => now_iso(), reason => 'x',
			triggered_by => 'y', generation => generation() + 1));
		chmod 0000, $file;
	},
);
for my $name (sort keys %variants)
{
	release();
	# let the watcher see the released file before corrupting it
	usleep(300_000);
	$before = tampers();
	$variants{$name}->();
	wait_for('SELECT ks_mode()', 'halt_all', "$name: the state becomes halt_all");
	is(integrity(), 'tampered', "$name: marked tampered");
	wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
		"$name: a tamper event is recorded");
	# clean up whatever the variant left in the way
	if (-d $file && !-l $file) { rmdir $file; }
	chmod 0600, $file if -e $file;
	unlink "$dir/elsewhere.json";
	wait_for("SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'",
		't', "$name: the watcher is still running");
}
release();

# 6. Deleting or emptying the file never releases: the state is kept and the file rewritten.
sql("SELECT ks_engage('halt_noncritical', 'before the deletion')");
usleep(300_000);
$before = tampers();
unlink $file;
wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
	'a deleted file is a tamper event');
is(mode(), 'halt_noncritical', 'a deleted file keeps the mode');
ok(-f $file, 'and the file is written again');
is(decode_json(slurp_file($file))->{mode}, 'HALT_NONCRITICAL', 'with the mode held');
$before = tampers();
truncate $file, 0;
wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
	'an emptied file is a tamper event');
is(mode(), 'halt_noncritical', 'an emptied file keeps the mode');
release();

# 7. A replay: an older validly signed file put back.
my $old = slurp_file($file);
sql("SELECT ks_engage('halt_noncritical', 'newer 1')");
release();
usleep(300_000);
put_file($old);
wait_for('SELECT ks_mode()', 'halt_all', 'an old signed file put back is a replay: halt_all');
is(integrity(), 'tampered', 'a replay is marked tampered');
release();

# 8. A writer that rewrites the file in place is never judged mid-write:
#    half a file, a pause shorter than killswitch.recheck_delay, the rest.
#    The releases carry the release key's signature and name the state they
#    replace (test/t/100_release.pl).
#    The recheck waits a second here: the pause is the writer's, and on a
#    loaded machine a 15 ms sleep can last longer than the default 50 ms.
sql("ALTER SYSTEM SET killswitch.recheck_delay = '1s'");
sql('SELECT pg_reload_conf()');
wait_for("SELECT current_setting('killswitch.recheck_delay')", '1s', 'recheck_delay is 1 s');
$before = tampers();
my $release_key = ks_release_key($node);
for my $i (1 .. 5)
{
	my $m = $i % 2 ? 'HALT_NONCRITICAL' : 'DISENGAGED';
	my %o = (mode => $m, engaged_at => now_iso(), reason => "in place $i", triggered_by => 'python');
	my $t = $m eq 'DISENGAGED'
	  ? ks_release_signed_text($secret, $release_key, %o, replaces => ks_held_signature($node))
	  : signed_text(%o);
	open my $w, '+<', $file or die $!;
	truncate $w, 0;
	syswrite $w, substr($t, 0, 40);
	usleep(15_000);
	syswrite $w, substr($t, 40);
	close $w;
	wait_for('SELECT ks_mode()', lc $m, "in-place write $i is applied");
}
is(tampers(), $before, 'no in-place write was judged mid-write');
sql('ALTER SYSTEM RESET killswitch.recheck_delay');
sql('SELECT pg_reload_conf()');

# 8b. The recheck is a later look, not a sleep inside one: while a file that
#     is no valid state waits for it, the watcher holds no lock, so nobody
#     who takes the lock that orders changes (a release, an engage's record)
#     waits behind a half-written file.  The old watcher slept through the
#     recheck holding that lock: the LOCK below timed out.
sql("ALTER SYSTEM SET killswitch.recheck_delay = '5s'");
sql('SELECT pg_reload_conf()');
wait_for("SELECT current_setting('killswitch.recheck_delay')", '5s', 'recheck_delay is 5 s');
sql("SELECT ks_engage('halt_noncritical', 'before a half-written file', 'tester')");
$before = tampers();
open my $half, '>', $file or die $!;
print $half '{"mode": "HALT_';
close $half;						# closed: its writer is done, the recheck follows
my $watcher_locks = "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
  . "WHERE a.backend_type = 'killswitch watcher' AND l.granted "
  . "AND l.relation = 'killswitch.events'::regclass";
# a watcher that sleeps under the lock is caught at it here; ours never is
for (1 .. 20) { last if sql($watcher_locks) eq 't'; usleep(100_000); }
my ($rc, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '1s'; BEGIN; LOCK TABLE killswitch.events IN SHARE ROW EXCLUSIVE MODE; COMMIT;",
	on_error_stop => 1);
is($rc, 0, 'the lock that orders changes is free during the recheck') or diag($err);
wait_for('SELECT ks_mode()', 'halt_all', 'the half-written file is judged after the recheck');
wait_for("SELECT count(*) > $before FROM killswitch.events WHERE source = 'tamper'", 't',
	'and recorded as tampering');
sql('ALTER SYSTEM RESET killswitch.recheck_delay');
sql('SELECT pg_reload_conf()');
release();

# 9. The history still verifies after all of this.
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'ks_verify_events() passes');
my ($fgen) = decode_json(slurp_file($file))->{generation};
is(sql("SELECT max(generation) FROM killswitch.events"), generation(),
	'the newest event and shared memory agree on the generation');
is($fgen, generation(), 'and so does the file');

$node->stop;
done_testing();
