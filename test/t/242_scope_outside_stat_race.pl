# The stat the watcher remembers as "the server's own scope file" is taken
# before it reads the bytes it compares (scopefile.c
# ks_scope_file_is_ours()), so an outside write landing between its compare
# and the end of its round — killswitch -D engage --scope, whose
# wait_until_judged() saw the file equal to the copy and whose writers'
# lock is free — changes the stat and is judged by the next round: the
# raise is put in force and recorded, never taken for the server's file.
# Forced: an LD_PRELOAD shim (test/shim/ks_stat_pause.c) holds the watcher
# at its stat() of the scope file after a read of it, and the outside write
# lands there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;
use KsScopeFile;

my $shim = "$ENV{KS_SRCDIR}/test/shim/ks_stat_pause.so";
my $node = ks_scope_node('scope_outside_stat_race');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";

$node->stop;
{
	local $ENV{LD_PRELOAD} = $shim;
	$node->start;
}
my $oid7 = agents();

# hold the watcher at its next look at the scope file, between compare and stat
open my $f, '>', "$dir/pause_stat" or die $!;
close $f;
sql("SELECT ks_engage('halt_all', 'agent_8 loops', 'pager', scope => 'agent_8')");
my $waited = 0;
usleep(10_000), $waited++ until -e "$dir/stat_paused" || $waited > 3000;
ok(-e "$dir/stat_paused", 'the watcher is held between its compare of the scope file and its stat');

# an operator's outside raise lands there
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'outside raise', '--scope', $oid7);
is($rc, 0, 'the outside raise is written') or diag($err);
unlink "$dir/pause_stat";
$waited = 0;
usleep(10_000), $waited++ while -e "$dir/stat_paused" && $waited < 3000;

ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'the outside raise is put in force');
is(refused('agent_7'), 'KS001', 'agent_7 is refused');
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file'", 60),
	'the outside raise is recorded');
# judged and recorded: the scope file holds the server's bytes, the raise in them
like(slurp_file("$dir/kill_switch_scopes.json"), qr/"$oid7"/, 'the outside raise is still in the scope file');
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 60),
	'and the scope file is the server\'s copy again: a look judged and recorded it');

done_testing();
