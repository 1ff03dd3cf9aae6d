# A planted writers' lock does not keep an outside scope raise from being
# judged: the watcher waits for the lock at most KS_SCOPE_LOCK_DEFER_MS (as
# it waits for a writer of the state file, §5.7), then judges the scope
# file without it and puts its raises in force (scopefile.c
# lock_or_stuck()) — raising needs nothing; only a release, a verdict and a
# put-back wait for the lock.  The plant is TAP 167's: a process with write
# access to the state directory takes and holds the lock while
# killswitch -D engage --scope writes without it after its bounded wait.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_outside_planted_lock');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";

my $oid7 = agents(q{
SELECT ks_engage('halt_all', 'someone else', 'pager', scope => 'killswitch_operator');
});
is(refused('agent_7'), 'ok', 'agent_7 works before');

my $lock = ks_plant_lock($dir);
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'outside raise', '--scope', $oid7);
is($rc, 0, 'the outside raise is written (without the writers\' lock, after its bounded wait)') or diag($err);
like(slurp_file("$dir/kill_switch_scopes.json"), qr/"$oid7"/, 'the scope file holds the raise');

ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'the outside raise is in force while the lock is held');
is(refused('agent_7'), 'KS001', 'agent_7 is refused');

# the agent lets go: then it is judged (the raise was only held back)
close $lock;
ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'once the lock is let go, the raise is in force (it was only held back)');

done_testing();
