# The emergency snapshot names the emergency it was taken for.  A raise is
# in force at once, before its transaction commits (ARCHITECTURE §5.3), and
# the watcher ends the busy agent sessions at once — so it takes the
# snapshot before the emergency's event has given it its generation.  The
# row in killswitch.snapshots (and the file as recorded) waits for the
# event: its generation is the emergency's, however long the engaging
# transaction takes to commit, not the one before.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('snapgen');
$node->safe_psql('postgres', q(
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
));

sub sql { return $node->safe_psql('postgres', shift); }

my $before = sql("SELECT ks_status()->>'generation'");

# A busy agent, and an operator whose engage stays open three seconds
# (longer than the alert waits for an event: KS_ALERT_WAIT_MS).
my $bot = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'bot' ]);
$bot->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(60) /* busy agent */;\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'bot' AND state = 'active'"),
	'an agent is busy');
my $ops = $node->background_psql('postgres', on_error_stop => 0);
$ops->query_safe("BEGIN; SELECT ks_engage('emergency', 'held open', 'ops')");

ok($node->poll_query_until('postgres', "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bot'", '0'),
	'the busy agent is ended before the engage commits');
is(sql('SELECT count(*) FROM killswitch.snapshots'), '0',
	'no snapshot row while the emergency has no event');
sleep 3;
is(sql('SELECT count(*) FROM killswitch.snapshots'), '0',
	'nor after the alert stopped waiting for it');
$ops->query_safe('COMMIT');
my $generation = sql("SELECT max(generation) FROM killswitch.events WHERE mode = 'emergency'");
cmp_ok($generation, '>', $before, 'the emergency committed with a new generation');
ok($node->poll_query_until('postgres', 'SELECT count(*) FROM killswitch.snapshots', '1'),
	'then the snapshot is recorded');
my ($row_gen, $doc) = split /\|/, sql('SELECT generation, snapshot FROM killswitch.snapshots');
is($row_gen, $generation, "the row names the emergency's generation ($generation), not the one before ($before)");
my $snap = decode_json($doc);
is($snap->{generation}, $generation, 'and so does the snapshot itself');
ok((grep { $_->{role} eq 'bot' } @{ $snap->{sessions} }), 'which holds the agent that was busy');
my $file = decode_json(slurp_file($node->data_dir . '/pg_killswitch/kill_switch_snapshot.json'));
is($file->{generation}, $generation, 'the snapshot file as recorded names it too');

eval { $bot->quit };
$ops->quit;
$node->stop;
done_testing();
