# Issue 19, item 1: a generation can neither wrap nor be pushed far, and no
# outside write makes more than one event (ARCHITECTURE §3).  An agent here
# holds what agents hold — the signing secret and write access to the state
# directory — and writes validly signed files; nothing depends on timing.
#
# 1. The wrap: a copy of the file saved while disengaged (the server signs
#    every file it writes with the release key too), a signed HALT_ALL with
#    generation 2^56 (shared memory keeps 56 bits), then the saved copy put
#    back.  Generations are bounded to 2^53 - 1: the big one is a bad file,
#    the copy an old one; the fleet stays halted and its writes refused.
# 2. 2^63 - 1: a bad file too, and the next SQL engage records a generation
#    above the one before.
# 3. The step: a file may move the generation at most 1000 past the state
#    held; 1001 is a verdict, 1000 is applied.
# 4. No event storm: after each of these writes, one event, and none more
#    while the watcher reads the file again and again (its time stamps and
#    mode touched: inotify wakes it every time).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('generations');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";
my $secret = ks_secret($node);

sub sql { return $node->safe_psql('postgres', shift); }
sub events { return sql('SELECT count(*) FROM killswitch.events'); }
sub generation { return sql("SELECT ks_status()->>'generation'"); }
sub status { return sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"); }

# Put a file in place as an agent would (a temporary file renamed).
sub put_file
{
	my ($text) = @_;
	open my $fh, '>', "$file.agent" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.agent", $file or die $!;
}

sub signed
{
	my (%o) = @_;
	return ks_signed_text($secret, engaged_at => '2030-01-01T00:00:00.000000+00:00',
		triggered_by => 'agent-7', %o);
}

# Wait until the history has grown past $n events.
sub judged
{
	my ($n, $what) = @_;
	ok($node->poll_query_until('postgres', "SELECT count(*) > $n FROM killswitch.events"),
		"$what: judged");
}

# Make the watcher read the file again and again without changing its
# bytes; then count the events once it has looked.
sub reread_quietly
{
	my ($what) = @_;
	my $n = events();
	for my $i (1 .. 20)
	{
		utime(undef, undef, $file);
		chmod((stat $file)[2] & 07777, $file);
		usleep(20_000);
	}
	my $seen = sql("SELECT ks_status()->>'watcher_checked_at'");
	$node->poll_query_until('postgres', "SELECT ks_status()->>'watcher_checked_at' > '$seen'");
	usleep(300_000);
	is(events(), $n, "$what: the watcher re-reads the file without a new event");
}

sql('CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent');
sql('CREATE TABLE work (id int); GRANT INSERT ON work TO agent_7');

# 1. The wrap, and the saved release.
ks_held_signature($node);
my $saved = slurp_file($file);
like($saved, qr/"release_signature"/, 'the saved copy (disengaged) carries the server\'s release signature');
my $n = events();
put_file(signed(mode => 'HALT_ALL', reason => 'wrap', generation => 72057594037927936));
judged($n, 'a signed HALT_ALL with generation 2^56');
is(events(), $n + 1, 'one event');
is(status(), 'halt_all tampered', 'a generation beyond 2^53 - 1 is a bad file: halt_all, tampered');
like(sql("SELECT ks_status()->>'problem'"), qr/"generation" is beyond 9007199254740991/, 'the problem names the bound');
cmp_ok(generation(), '<', 2**53, 'the generation held stayed below the bound');
reread_quietly('after the wrap');

$n = events();
put_file($saved);
judged($n, 'the saved disengaged copy put back');
is(events(), $n + 1, 'one event');
is(status(), 'halt_all tampered', 'the saved release does not release: halt_all, tampered');
my ($rc, $out, $err) = $node->psql('postgres', 'INSERT INTO work VALUES (1)', extra_params => [ '-U', 'agent_7' ]);
isnt($rc, 0, 'an agent\'s INSERT is refused');
like($err, qr/KS001|kill switch/i, 'by the kill switch');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');
reread_quietly('after the replay');
sql("SELECT ks_disengage('reset', 'admin')");

# 2. 2^63 - 1.
my $gen = generation();
$n = events();
put_file(signed(mode => 'HALT_ALL', reason => 'int64 max', generation => 9223372036854775807));
judged($n, 'a signed HALT_ALL with generation 2^63 - 1');
is(status(), 'halt_all tampered', '2^63 - 1 is a bad file');
my $last = sql('SELECT max(generation) FROM killswitch.events');
sql("SELECT ks_engage('emergency', 'after the big one', 'ops')");
cmp_ok(sql('SELECT generation FROM killswitch.events ORDER BY id DESC LIMIT 1'), '>', $last,
	'the next SQL engage records a generation above the one before');
cmp_ok(generation(), '<', $gen + 10, 'and the generation moved by one a change');
sql("SELECT ks_disengage('reset', 'admin')");

# 3. The step.
$gen = generation();
$n = events();
put_file(signed(mode => 'HALT_ALL', reason => 'too far', generation => $gen + 1001));
judged($n, 'a file 1001 generations ahead');
is(status(), 'halt_all tampered', 'more than 1000 past the state held is a verdict');
like(sql("SELECT ks_status()->>'problem'"), qr/more than 1000 past the state held/, 'saying why');
is(events(), $n + 1, 'one event');
cmp_ok(generation(), '<', $gen + 1001, 'the generation did not jump');
reread_quietly('after the verdict');
sql("SELECT ks_disengage('reset', 'admin')");

$gen = generation();
$n = events();
put_file(signed(mode => 'HALT_NONCRITICAL', reason => 'far enough', generation => $gen + 1000));
judged($n, 'a file 1000 generations ahead');
is(status(), 'halt_noncritical ok', 'exactly 1000 past the state held is applied');
is(generation(), $gen + 1000, 'with the generation its writer gave');
is(events(), $n + 1, 'one event');
reread_quietly('after the applied file');
ok($node->poll_query_until('postgres',
	"SELECT (pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'generation')::bigint = "
	  . ($gen + 1000)),
	'the file holds the generation in force');

$node->stop;
done_testing();
