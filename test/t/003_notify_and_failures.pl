# NOTIFY (ARCHITECTURE §5) and a failure to write the state file: the payload is
# valid JSON under the 8000-byte limit whatever the reason; a change whose
# file cannot be written aborts with a clear error and changes nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('notify');

sub sql { return $node->safe_psql('postgres', shift); }

# Listen on a channel in a background session, run $action, return the payloads received.
sub notifications
{
	my ($channel, $action) = @_;
	my $bg = $node->background_psql('postgres');
	$bg->query_safe("LISTEN $channel");
	$action->();
	# psql prints notifications when it next talks to the server
	my ($out) = $bg->query('SELECT 1');
	my $all = $bg->{stdout} . $out . $bg->{stderr};
	$bg->quit;
	return ($out =~ /Asynchronous notification "\Q$channel\E" with payload "(.*)" received/g);
}

# 1. The payload: valid JSON with the documented keys.
my @got = notifications('killswitch',
	sub { sql("SELECT ks_engage('halt_all', 'notify test \"quoted\" \\\\ slash', 'tester')") });
is(scalar @got, 1, 'one notification for one change');
my $p = decode_json($got[0]);
is_deeply([ sort keys %$p ],
	[ sort qw(event_id mode previous_mode reason triggered_by at generation source) ],
	'the payload has the documented keys');
is($p->{mode}, 'halt_all', 'payload mode');
is($p->{previous_mode}, 'disengaged', 'payload previous_mode');
is($p->{reason}, sql('SELECT reason FROM killswitch.events ORDER BY id DESC LIMIT 1'),
	'payload reason, exactly as stored');
like($p->{reason}, qr/"quoted" \\\\ slash/, 'with its quotes and backslashes');
is($p->{generation}, sql("SELECT ks_status()->>'generation'"), 'payload generation');
is($p->{event_id}, sql('SELECT max(id) FROM killswitch.events'), 'payload event_id');
like($p->{at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$/, 'payload time stamp');

# 2. A 10 000-character reason: the payload is shortened, the table is not.
my $long = 'r' x 9990 . ' the end';
@got = notifications('killswitch', sub { sql("SELECT ks_engage('emergency', '$long', 'tester')") });
is(scalar @got, 1, 'a change with a long reason is announced');
cmp_ok(length($got[0]), '<', 8000, 'the payload stays under the 8000-byte limit');
$p = decode_json($got[0]);
ok($p->{truncated}, 'and says it was shortened');
is(sql("SELECT length(reason) FROM killswitch.events ORDER BY id DESC LIMIT 1"), length($long),
	'the table keeps the whole reason');

# 3. Emergencies are also announced on killswitch_alert.
@got = notifications('killswitch_alert',
	sub { sql("SELECT ks_engage('emergency', 'alert test', 'tester')") });
ok(scalar(grep { decode_json($_)->{mode} // '' eq 'emergency' } @got) >= 1,
	'an emergency is announced on killswitch_alert');

# 4. A rolled-back change announces nothing.
@got = notifications('killswitch',
	sub { sql("BEGIN; SELECT ks_disengage('rolled back', 'tester'); ROLLBACK;") });
is(scalar @got, 0, 'a rolled-back change announces nothing');

# 5. The state file cannot be written: the change aborts, clearly, and nothing changes.
my $dir = $node->data_dir . '/pg_killswitch';
my $before_file = slurp_file("$dir/kill_switch_state.json");
my $before_events = sql('SELECT count(*) FROM killswitch.events');
chmod 0500, $dir;
my ($out, $err) = ('', '');
$node->psql('postgres', "SELECT ks_disengage('cannot be written', 'tester')", stdout => \$out, stderr => \$err);
chmod 0700, $dir;
like($err, qr/could not write the kill switch state file/, 'a failed write aborts with a clear error');
like($err, qr/HINT:  The change was not made/, 'and says nothing changed');
is(sql('SELECT ks_mode()'), 'emergency', 'the mode is unchanged');
is(sql('SELECT count(*) FROM killswitch.events'), $before_events, 'no event was recorded');
is(slurp_file("$dir/kill_switch_state.json"), $before_file, 'the file is byte-identical');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
