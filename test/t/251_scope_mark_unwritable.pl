# A scope's raise whose mark cannot be written (pg_killswitch/in_flight
# unwritable: a full or read-only disk) while the ordering lock is busy
# (ARCHITECTURE §13 "The change"): ks_engage() returns at once, in force,
# its event to follow; at pre-commit the mark cannot be written, so the
# raise is recorded in its own transaction after all and its COMMIT waits
# for the lock — in force throughout, and neither lock_timeout nor
# statement_timeout (which the caller set) rolls it back; once the holder
# ends, it commits and is recorded.  (Found by review4: the wait honoured
# the timeouts and the raise the caller saw in force was rolled back.)
# Forced: the holder is a session the test keeps open (LOCK
# killswitch.events); pg_killswitch/in_flight is made read-only (0500).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('scope_mark_unwritable');
sub sql { return $node->safe_psql('postgres', shift); }
my $in_flight = $node->data_dir . '/pg_killswitch/in_flight';

sub refused { return ks_refused($node, shift); }

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
my $op = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'op' ]);
$op->{stdin} .= "SET lock_timeout = '500ms'; SET statement_timeout = '2s';\n"
  . "SELECT id IS NULL AS follows FROM ks_engage('halt_all', 'mark unwritable', 'pager', scope => 'agent_7');\n"
  . "SELECT 'engage done';\n";
$op->{run}->pump_nb;
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'op' AND wait_event_type = 'Lock'
	  AND now() - query_start > interval '3 s'}),
	'the engage\'s commit waits for the lock past its statement_timeout and lock_timeout (they do not roll it back)');
is(refused('agent_7'), 'KS001', 'agent_7 is refused (the raise is in force) while the lock is held');
$holder->query_safe('COMMIT');
$holder->quit;
chmod 0700, $in_flight;
my $done = '';
for (1 .. 100)
{
	$op->{run}->pump_nb;
	$done = $op->{stdout};
	last if $done =~ /engage done/;
	select(undef, undef, undef, 0.1);
}
like($done, qr/engage done/, 'once the holder ends, the engage commits');
unlike($op->{stderr}, qr/ERROR/, 'with no error') or diag($op->{stderr});
$op->quit;
is(refused('agent_7'), 'KS001', 'agent_7 stays refused once the lock is free');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'mark unwritable' AND scope = 'agent_7'::regrole"), '1',
	'the raise is recorded in its own transaction');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

done_testing();
