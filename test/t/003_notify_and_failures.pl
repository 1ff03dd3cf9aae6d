# NOTIFY (ARCHITECTURE §5.6) and a failure to write the state file: the
# payload is valid JSON under the 8000-byte limit whatever the reason, sent
# by the watcher just after the change commits; a state file that cannot be
# written never fails a change — a raise or a release is in force and
# recorded, the file stays at the higher mode (a WARNING, file_problem in
# ks_status()) and the watcher writes it once it can.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('notify');

sub sql { return $node->safe_psql('postgres', shift); }

# Listen on a channel in a background session, run $action, then a marker
# change (a repeat of the mode, announced on killswitch after everything
# before it); return the payloads received before the marker's.  The
# watcher announces changes a moment after their commit, in commit order.
sub notifications
{
	my ($channel, $action) = @_;
	my $bg = $node->background_psql('postgres');
	$bg->query_safe("LISTEN $channel");
	$bg->query_safe('LISTEN killswitch') if $channel ne 'killswitch';
	$action->();
	sql("SELECT ks_engage(greatest(ks_mode(), 'halt_noncritical'), 'marker', 'tester')");
	my $all = '';
	for (1 .. 600)
	{
		# psql prints notifications when it next talks to the server
		my ($out) = $bg->query('SELECT 1');
		$all .= $out;
		last if $all =~ /"reason": "marker"/;
		select(undef, undef, undef, 0.05);
	}
	$bg->quit;
	my @got = ($all =~ /Asynchronous notification "\Q$channel\E" with payload "(.*)" received/g);
	return grep { !/"reason": "marker"/ } @got;
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
is($p->{reason}, sql("SELECT reason FROM killswitch.events WHERE triggered_by = 'tester' AND reason LIKE 'notify test%'"),
	'payload reason, exactly as stored');
like($p->{reason}, qr/"quoted" \\\\ slash/, 'with its quotes and backslashes');
is($p->{generation}, sql("SELECT generation FROM killswitch.events WHERE reason LIKE 'notify test%'"), 'payload generation');
is($p->{event_id}, sql("SELECT id FROM killswitch.events WHERE reason LIKE 'notify test%'"), 'payload event_id');
like($p->{at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$/, 'payload time stamp');

# 2. A 10 000-character reason: the payload is shortened, the table is not.
my $long = 'r' x 9990 . ' the end';
@got = notifications('killswitch', sub { sql("SELECT ks_engage('emergency', '$long', 'tester')") });
is(scalar @got, 1, 'a change with a long reason is announced');
cmp_ok(length($got[0]), '<', 8000, 'the payload stays under the 8000-byte limit');
$p = decode_json($got[0]);
ok($p->{truncated}, 'and says it was shortened');
is(sql("SELECT length(reason) FROM killswitch.events WHERE reason LIKE 'rrr%'"), length($long),
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

# 5. The state file cannot be written: a change is still made — in force,
#    recorded — and the file stays at the higher mode until the watcher
#    can write it.
my $dir = $node->data_dir . '/pg_killswitch';
my $before_file = slurp_file("$dir/kill_switch_state.json");
my $before_events = sql('SELECT count(*) FROM killswitch.events');
chmod 0500, $dir;
my ($out, $err) = ('', '');
$node->psql('postgres', "SELECT ks_disengage('cannot be written', 'tester')", stdout => \$out, stderr => \$err);
like($err, qr/WARNING:  could not write the kill switch state file after a release/,
	'a release whose file cannot be written warns');
is(sql('SELECT ks_mode()'), 'disengaged', 'and is in force');
is(sql('SELECT count(*) FROM killswitch.events'), $before_events + 1, 'and recorded');
is(slurp_file("$dir/kill_switch_state.json"), $before_file, 'the file still shows the higher mode, byte for byte');
like(sql("SELECT ks_status()->>'file_problem'"), qr/could not/, 'ks_status() says why');
$node->psql('postgres', "SELECT ks_engage('halt_all', 'engaged with the file stuck', 'tester')",
	stdout => \$out, stderr => \$err);
like($err, qr/WARNING:  could not write the kill switch state file/, 'an engage whose file cannot be written warns');
is(sql('SELECT ks_mode()'), 'halt_all', 'and is in force');
chmod 0700, $dir;
ok($node->poll_query_until('postgres',
		"SELECT pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'mode' = 'HALT_ALL' "
		  . "AND ks_status()->>'file_problem' IS NULL"),
	'the watcher writes the file once it can');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
