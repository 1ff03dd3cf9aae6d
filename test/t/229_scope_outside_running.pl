# Outside writes of the scope file while the server runs (ARCHITECTURE §13,
# "Outside writes"): killswitch -D engage --scope OID against a running
# server's directory is judged by the watcher as an outside write of the
# state file is (§5.7) — a raise, in force at once and recorded as the
# scope's event (source "file"), announced with "scope" in the NOTIFY
# payload; the agent in scope is refused, the others work; an
# administrator's release with the release key is applied and recorded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_outside_running');
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_scopes.json";

my $oid7 = agents();

# 1. A raise through the file: applied by the watcher, recorded, announced.
my $bg = $node->background_psql('postgres');
$bg->query_safe('LISTEN killswitch');
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'emergency', '--reason', 'agent_7 loops', '--by', 'oncall',
	'--scope', $oid7);
is($rc, 0, 'killswitch -D engage --scope OID against a running server') or diag($err);
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file' AND mode = 'emergency'", 30),
	'the watcher records the raise as the scope\'s event, source file');
is(sql("SELECT scope::text || '=' || mode FROM ks_scopes()"), 'agent_7=emergency', 'the scope is in force');
is(refused('agent_7'), 'KS001', 'the agent in scope is refused');
is(refused('agent_8'), 'ok', 'another agent works');
is(sql('SELECT ks_mode()'), 'disengaged', 'the fleet is not halted');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');
is(sql("SELECT reason || '/' || triggered_by || '/' || scope_name FROM killswitch.events WHERE scope = $oid7"),
	'agent_7 loops/oncall/agent_7', 'with the command\'s reason and caller, and the role\'s name');
my $all = '';
for (1 .. 200)
{
	my ($o) = $bg->query('SELECT 1');
	$all .= $o;
	last if $all =~ /agent_7 loops/;
	select(undef, undef, undef, 0.05);
}
my ($note) = grep { $_->{reason} eq 'agent_7 loops' }
  map { decode_json($_) } ($all =~ /Asynchronous notification "killswitch" with payload "(.*)" received/g);
ok($note, 'the change is announced') or diag($all);
is($note && $note->{scope}, 'agent_7', 'NOTIFY names the scope');
is($note && $note->{source}, 'file', 'with source file');
$bg->quit;
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 30),
	'the file holds the server\'s own bytes again');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

# 2. A second raise of the same scope to the same mode writes nothing.
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'again', '--scope', $oid7);
is($rc, 0, 'a raise to a lower mode changes nothing');
like($out, qr/already at mode emergency: nothing written/, 'and says so');

# 3. An administrator's release with the release key: applied and recorded.
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'fixed', '--by', 'boss', '--scope', $oid7);
is($rc, 0, 'killswitch -D disengage --scope OID with the release key') or diag($err);
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file' AND mode = 'disengaged'", 30),
	'the release is recorded, source file');
ok(ks_within($node, "SELECT count(*) = 0 FROM ks_scopes()", 30), 'and applied');
is(refused('agent_7'), 'ok', 'agent_7 works again');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the chain verifies');

# 4. An outside raise judged while the lock that orders changes is held, then
# an SQL raise of another scope that commits first: its write of the
# scope file carries the outside raise (shared memory holds it), so the file
# is the server's own again before any look could record it — the raise is
# recorded all the same (the watcher keeps what it accepted), and survives
# a restart.  Forced: a session holds the lock; the SQL raise commits
# meanwhile with its event to follow (§13: a raise never waits for it).
my $oid8 = sql("SELECT 'agent_8'::regrole::oid");
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK TABLE killswitch.events IN SHARE ROW EXCLUSIVE MODE');
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'outside, lock held', '--scope', $oid7);
is($rc, 0, 'an outside raise while the ordering lock is held') or diag($err);
ok(ks_within($node, "SELECT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'agent_7'::regrole)", 30),
	'the round puts it in force at once');
is(refused('agent_7'), 'KS001', 'agent_7 is refused');
is(sql("SET client_min_messages = warning; SELECT id IS NULL FROM ks_engage('halt_all', 'sql raise first', 'pager', scope => 'agent_8')"),
	't', 'the SQL raise of another scope commits at once, its event to follow (the lock is held)');
is(refused('agent_8'), 'KS001', 'and is in force');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'outside, lock held'"), '0',
	'the outside raise is not recorded while the lock is held');
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 30),
	'the SQL raise rewrote the scope file: the server\'s own bytes again');
$holder->query_safe('COMMIT');
$holder->quit;
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'sql raise first'", 30), 'the SQL raise committed');
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file' AND reason = 'outside, lock held'", 30),
	'the outside raise is recorded though the server rewrote the file first');
$node->restart;
is(sql("SELECT string_agg(scope::text || '=' || mode, ',' ORDER BY scope::text) FROM ks_scopes()"),
	'agent_7=halt_all,agent_8=halt_all', 'both scopes survive a restart');
is(refused('agent_7'), 'KS001', 'agent_7 is still refused');

done_testing();
