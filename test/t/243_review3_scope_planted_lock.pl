# Review 3, finding 4: the watcher judges an outside write of the scope file
# only under the writers' lock, and skips the round when the lock is busy
# (scopefile.c ks_scope_file_is_ours(): ks_lock_dir_within(..., 0, ...)
# fails -> "a writer is at it: the next round" -> true).  A hostile agent
# with write access to the state directory plants and holds that lock (the
# move of TAP 167): every outside raise of a scope — killswitch -D engage
# --scope, which writes without the lock after its bounded wait — is never
# judged, never in force, never recorded while the agent holds it.  Raising
# needs nothing (§13): a raise must not wait on a lock anyone may hold
# (§5.7), as the fleet's own outside raise does not.
use strict;
use warnings;
use Fcntl qw(:flock O_RDWR O_CREAT);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('review3_planted');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";

sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}
sub sql { return $node->safe_psql('postgres', shift); }
sub refused
{
	my ($role) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1)",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? 'ok' : $err =~ /KS001/ ? 'KS001' : "error: $err";
}
sub plant_lock
{
	my $lock = "$dir/kill_switch_state.lock";
	unlink $lock;
	sysopen(my $fh, $lock, O_RDWR | O_CREAT, 0666) or die "open $lock: $!";
	chmod 0666, $lock;
	flock($fh, LOCK_EX) or die "flock: $!";
	return $fh;
}

sql(q{
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
SELECT ks_engage('halt_all', 'someone else', 'pager', scope => 'killswitch_operator');
});
my $oid7 = sql("SELECT 'agent_7'::regrole::oid");
is(refused('agent_7'), 'ok', 'agent_7 works before');

my $lock = plant_lock();
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'outside raise', '--scope', $oid7);
is($rc, 0, 'the outside raise is written (without the writers\' lock, after its bounded wait)') or diag($err);
like(slurp_file("$dir/kill_switch_scopes.json"), qr/"$oid7"/, 'the scope file holds the raise');

ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'review3_planted: the outside raise is in force while the lock is held');
is(refused('agent_7'), 'KS001', 'review3_planted: agent_7 is refused');

# the agent lets go: then it is judged (the raise was only held back)
close $lock;
ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'once the lock is let go, the raise is in force (it was only held back)');

done_testing();
