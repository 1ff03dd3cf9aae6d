# review4: a scope's raise whose mark cannot be written (its directory
# unwritable: a full or read-only disk) while the ordering lock is busy.
# ks_engage() returns at once (the event is to follow), but at pre-commit
# mark_deferred() falls back to LockRelationOid(): the COMMIT waits for the
# lock after all ("a raise never waits for that lock", ARCHITECTURE §5.3
# "Busy"), and with lock_timeout or statement_timeout set — which the busy
# path exists to survive — the commit fails and the raise is rolled back:
# the caller saw its raise "in force", and it is gone.
# Forced: the holder is a session the test keeps open (LOCK
# killswitch.events); pg_killswitch/in_flight is made read-only (0500).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('review4_mark_unwritable');
sub sql { return $node->safe_psql('postgres', shift); }
my $in_flight = $node->data_dir . '/pg_killswitch/in_flight';

sub refused
{
	my ($role) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1)",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? 'ok' : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

sql(q{
CREATE ROLE op LOGIN IN ROLE killswitch_operator;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});
mkdir $in_flight unless -d $in_flight;
chmod 0500, $in_flight or die "chmod: $!";

my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE');
my ($out, $err, $timed_out) = ('', '', 0);
my $rc = $node->psql('postgres',
	"SET lock_timeout = '500ms'; SET statement_timeout = '3s';\n"
	  . "SELECT id IS NULL FROM ks_engage('halt_all', 'mark unwritable', 'pager', scope => 'agent_7')",
	stdout => \$out, stderr => \$err, timeout => 20, timed_out => \$timed_out, extra_params => [ '-U', 'op' ]);
ok(!$timed_out && $rc == 0, 'a scope\'s engage behind the busy lock commits though its mark cannot be written')
  or diag("rc $rc: $err");
is(refused('agent_7'), 'KS001', 'agent_7 is refused (the raise is in force) while the lock is still held');
$holder->query_safe('COMMIT');
$holder->quit;
chmod 0700, $in_flight;
is(refused('agent_7'), 'KS001', 'agent_7 stays refused once the lock is free');
my $recorded = 0;
for (1 .. 50)
{
	$recorded = sql("SELECT count(*) FROM killswitch.events WHERE reason = 'mark unwritable'");
	last if $recorded;
	select(undef, undef, undef, 0.1);
}
is($recorded, '1', 'the raise is recorded');

done_testing();
