# The emergency ends the agent sessions busy since before it began, never
# one that came after: a session that connected during the emergency is
# refused statement by statement (KS001) and keeps its connection, also
# when the emergency is published again (a repeated engage emergency; the
# watcher's commit after its early halt) and the actions run once more.
# A refused statement is busy only for an instant; here it is held busy,
# waiting for a table lock before the refusal, so that the tick sees it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('late');
$node->safe_psql('postgres', q(
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT SELECT ON t TO bot;
));

sub sql { return $node->safe_psql('postgres', shift); }

# The emergency's actions for a generation have run (its WARNING is logged
# after the sessions are ended).
sub actions_ran
{
	my ($generation, $offset) = @_;
	return $node->wait_for_log(
		qr/kill switch emergency \(generation $generation\): \d+ agent sessions? ended/, $offset);
}

my $offset = -s $node->logfile;
my $first = sql("SELECT generation FROM ks_engage('emergency', 'first', 'ops')");
ok(actions_ran($first, $offset), 'the emergency actions ran');

# An agent connects during the emergency; its statement waits for a table
# lock (taken before the refusal), so it is busy in a transaction that
# began during the emergency.
my $admin = $node->background_psql('postgres', on_error_stop => 0);
$admin->query_safe('BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE');
my $bot = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$bot->query_until(qr/started/, "\\echo started\nSELECT count(*) FROM t;\n");
ok($node->poll_query_until('postgres',
	"SELECT state = 'active' AND wait_event_type = 'Lock' FROM pg_stat_activity WHERE usename = 'bot'"),
	'an agent that connected during the emergency is busy');
my $pid = sql("SELECT pid FROM pg_stat_activity WHERE usename = 'bot'");

# The emergency is engaged again, with a new generation: the same episode
# (the mode in force never left emergency), so its actions do not run again
# (ARCHITECTURE §9); the watcher goes on ending what is busy since before
# the emergency began — not this session.
$offset = -s $node->logfile;
my $second = sql("SELECT generation FROM ks_engage('emergency', 'second', 'ops')");
isnt($second, $first, 'engage emergency again: a new generation');
my $t0 = sql('SELECT clock_timestamp()');
ok($node->poll_query_until('postgres',
		"SELECT (ks_status()->>'watcher_checked_at')::timestamptz > '$t0'::timestamptz + interval '300 ms'"),
	'the watcher went round a few times');
ok(!$node->log_contains(qr/EMERGENCY \(generation $second\)/, $offset),
	'the same emergency episode: its actions did not run again');
is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"), '1',
	'the session that connected during the emergency is not ended');

# The lock goes: the statement reaches the refusal, and the session stays.
$admin->query_safe('ROLLBACK');
$bot->query('SELECT 2');
my @refused = $bot->{stderr} =~ /ERROR:  kill switch engaged \(emergency\): any statement by agent "bot" refused/g;
is(scalar @refused, 2, 'its statements are refused with KS001, the connection kept')
  or diag($bot->{stderr});
is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"), '1', 'the session is still there');
$bot->quit;
$admin->quit;

$node->stop;
done_testing();
