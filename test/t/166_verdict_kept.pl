# Issue 19 item 4, the SQL side: clearing a tamper verdict is a release.
# An engage after a verdict (same mode, higher, repeated, deferred behind a
# held lock) keeps integrity "tampered" — in shared memory, in the state
# file and the private copy ("tampered": true), across a restart; only a
# release (ks_disengage, or a lower mode with the release right) clears it.
# Nothing is forced: the verdict is a garbage state file.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('verdict_kept');
my $file = $node->data_dir . '/pg_killswitch/kill_switch_state.json';
$node->safe_psql('postgres', 'CREATE ROLE op LOGIN IN ROLE killswitch_operator');
sub sql { return $node->safe_psql('postgres', shift); }
sub integrity { return sql("SELECT ks_status()->>'integrity'"); }

open my $fh, '>', $file or die $!;
print $fh 'not a state file';
close $fh;
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'integrity' = 'tampered'"),
	'a garbage state file: a tamper verdict');
is(sql('SELECT ks_mode()'), 'halt_all', 'at halt_all');

sql("SELECT ks_engage('halt_all', 'same mode after the verdict')");
is(integrity(), 'tampered', 'an engage of the same mode keeps the verdict');
$node->safe_psql('postgres', "SELECT ks_engage('emergency', 'higher, by an operator')",
	extra_params => [ '-U', 'op' ]);
is(integrity(), 'tampered', 'an operator\'s engage of a higher mode keeps it');
is(sql('SELECT ks_mode()'), 'emergency', 'and raises the mode');
ok(decode_json(slurp_file($file))->{tampered}, 'the state file says "tampered": true');

# deferred behind a held lock, then recorded by the watcher
my $holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT ks_engage('emergency', 'holder')");
sql("SELECT ks_engage('emergency', 'deferred after the verdict')");
$holder->query_safe('COMMIT');
$holder->quit;
ok($node->poll_query_until('postgres', "SELECT NOT (ks_status()->>'unrecorded_change')::boolean"),
	'the deferred engage is recorded');
is(integrity(), 'tampered', 'a deferred engage keeps the verdict');

$node->restart;
is(integrity(), 'tampered', 'after a restart, still tampered');
is(sql('SELECT ks_mode()'), 'emergency', 'in emergency');

sql("SELECT ks_engage('halt_all', 'an admin lowers')");
is(integrity(), 'ok', 'a lower mode by an administrator is a release: the verdict is cleared');
sql("SELECT ks_engage('emergency', 'again')");
is(integrity(), 'ok', 'and stays cleared');
sql("SELECT ks_disengage('released')");
is(sql('SELECT ks_mode()'), 'disengaged', 'released');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

$node->stop;
done_testing();
