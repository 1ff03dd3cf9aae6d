# The rules an outside write of the scope file is judged by (ARCHITECTURE
# §13, "Outside writes"), those of the state file's (§3, §5.7): a hostile
# agent that holds the signing secret and can write the state directory can
# raise a scope but never lower one — its release without the release key is
# a tamper verdict (the fleet at halt_all, tampered), the server's bytes are
# put back and the scope stays; a release signed with the release key but
# naming another scope file than the server's is refused too; a replay of an
# older signed scope file is refused; a file naming an unknown role is
# refused; an unsigned file is refused; a release superseded by a change
# committed before it could be recorded is not applied (no verdict).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Digest::SHA qw(sha256_hex);
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_outside_rules');
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_scopes.json";
my $copy = "$pgdata/pg_killswitch/scopes.json";
my $release_key = ks_release_key($node);

sub held { return decode_json(slurp_file($copy)); }
sub verdicts { return sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper' AND reason LIKE 'scope file rejected%'"); }

# The verdict, the server's bytes back, the fleet released for the next case.
sub verdict_ok
{
	my ($n, $what, $reason) = @_;
	ok(ks_within($node, "SELECT count(*) > $n FROM killswitch.events WHERE source = 'tamper' AND reason LIKE 'scope file rejected%'", 30),
		"$what: a tamper verdict");
	is(sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'halt_all tampered', "$what: the fleet at halt_all, tampered");
	like(sql("SELECT reason FROM killswitch.events WHERE source = 'tamper' ORDER BY id DESC LIMIT 1"), $reason,
		"$what: the verdict says why");
	ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 30),
		"$what: the server's bytes are put back");
	is(refused('agent_7'), 'KS001', "$what: the scope stays");
	sql("SELECT ks_disengage('checked', 'boss')");
}

my $oid7 = agents(q{
SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7');
});
my $saved = slurp_file($file);		# a signed scope file, for the replay
is(refused('agent_7'), 'KS001', 'agent_7 is halted by its scope');

# 1. The hostile agent: the signing secret and write access, no release key.
my $h = held();
put(signed({ key_id => $h->{key_id}, scopes => {}, version => $h->{version} + 1,
	replaces => $h->{signature}, reason => 'let me out', triggered_by => 'agent_7' }));
verdict_ok(0, 'a release signed with the secret alone', qr/without the release credential/);

# its release signed with a key of its own is no better
$h = held();
put(signed({ key_id => $h->{key_id}, scopes => {}, version => $h->{version} + 1,
	replaces => $h->{signature} }, 'a key of my own'));
verdict_ok(1, 'a release signed with another key', qr/without the release credential/);

# nor is a lower mode
$h = held();
my %lower = %{ $h->{scopes} };
$lower{$oid7} = { %{ $lower{$oid7} }, mode => 'HALT_NONCRITICAL' };
put(signed({ key_id => $h->{key_id}, scopes => \%lower, version => $h->{version} + 1, replaces => $h->{signature} }));
verdict_ok(2, 'a lower mode signed with the secret alone', qr/without the release credential/);

# 2. The release key, but not naming the server's scope file: refused.
$h = held();
put(signed({ key_id => $h->{key_id}, scopes => {}, version => $h->{version} + 1,
	replaces => sha256_hex('an earlier set') }, $release_key));
verdict_ok(3, 'a release naming another scope file', qr/does not name the server's scope file/);

# 3. A replay of an older signed scope file.
put($saved);
verdict_ok(4, 'a replay of an older scope file', qr/a replay/);

# 4. A raise of an unknown role.
$h = held();
put(signed({ key_id => $h->{key_id}, version => $h->{version} + 1,
	scopes => { %{ $h->{scopes} }, 4000000000 => { generation => 1, mode => 'HALT_ALL',
		since => '2026-01-01T00:00:00.000000+00:00', unconfirmed => JSON::PP::false } } }));
verdict_ok(5, 'a file naming an unknown role', qr/names a role that does not exist/);

# 5. Unsigned.
$h = held();
my $unsigned = { key_id => $h->{key_id}, scopes => {}, version => $h->{version} + 1, signature => 'x' x 64 };
put(JSON::PP->new->canonical->encode($unsigned));
verdict_ok(6, 'a file with a bad signature', qr/bad signature/);

# 6. The administrator's release: the release key, naming the server's file.
is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'file'"), '0', 'nothing was recorded from the refused files');
my ($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'fixed', '--by', 'boss', '--scope', $oid7);
is($rc, 0, 'killswitch -D disengage --scope with the release key') or diag($err);
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = $oid7 AND source = 'file' AND mode = 'disengaged'", 30),
	'the release is recorded');
ok(ks_within($node, 'SELECT count(*) = 0 FROM ks_scopes()', 30), 'and applied');
is(refused('agent_7'), 'ok', 'agent_7 works again');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');

# 7. The hostile agent can still raise: raising needs only the signing secret.
$h = held();
put(signed({ key_id => $h->{key_id}, version => $h->{version} + 1, reason => 'stop agent_8',
	scopes => { sql("SELECT 'agent_8'::regrole::oid") => { generation => 1, mode => 'HALT_ALL',
		since => '2026-01-01T00:00:00.000000+00:00', unconfirmed => JSON::PP::false } } }));
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE scope = 'agent_8'::regrole AND source = 'file'", 30),
	'a raise signed with the secret alone is recorded');
is(refused('agent_8'), 'KS001', 'and in force');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no verdict');

# 8. A release superseded: written with the release key while the ordering
# lock is held, then an SQL raise of another scope commits first (its event
# follows, §13) and replaces the server's scope
# file — the release names a file that is gone: not applied, a WARNING, no
# verdict, the scope stays.
my $oid8 = sql("SELECT 'agent_8'::regrole::oid");
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK TABLE killswitch.events IN SHARE ROW EXCLUSIVE MODE');
my $log_offset = -s $node->logfile;
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'superseded', '--by', 'boss', '--scope', $oid8);
is($rc, 0, 'a release written while the ordering lock is held') or diag($err);
ok($node->wait_for_log(qr/the scope file was changed outside the server \(version \d+\): a release, applied once recorded/, $log_offset),
	'the watcher\'s round accepts it (LOG)');
is(sql("SET client_min_messages = warning; SELECT id IS NULL FROM ks_engage('halt_all', 'sql raise first', 'pager', scope => 'agent_7')"),
	't', 'an SQL raise of another scope commits first, its event to follow (the lock is held)');
is(refused('agent_8'), 'KS001', 'the release is not in force before it is recorded');
$log_offset = -s $node->logfile;
$holder->query_safe('COMMIT');
$holder->quit;
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'sql raise first'", 30), 'the SQL raise is recorded');
ok($node->wait_for_log(qr/a release written to the scope file was superseded/, $log_offset),
	'the release is superseded, with a WARNING');
is(sql("SELECT count(*) FROM killswitch.events WHERE reason = 'superseded'"), '0', 'and not recorded');
is(refused('agent_8'), 'KS001', 'agent_8 stays halted');
is(refused('agent_7'), 'KS001', 'the SQL raise is in force');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no verdict');
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json')", 30),
	'the file holds the server\'s bytes');

done_testing();
