# killswitch -D engage --scope OID on a stopped server (ARCHITECTURE §13,
# "Outside writes"): the command writes a signed scope file ahead of the
# server's copy; at start the postmaster judges it as the watcher would —
# a raise, in force from the start — and the watcher's first look records
# it (source "file") before it settles the scopes by the chain, so the
# settling never lowers it.  A release written offline with the release key
# is applied at the next start and recorded; without the release key the
# command refuses, and a hand-made release signed with the secret alone is
# a tamper verdict at start.  A role given by name offline is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use Digest::SHA qw(hmac_sha256_hex);
use KsTest;
use KsScopeFile;

my $node = ks_scope_node('scope_offline');
my $pgdata = $node->data_dir;
my $file = "$pgdata/pg_killswitch/kill_switch_scopes.json";
my $secret = ks_secret($node);

sub scopes
{
	return sql("SELECT coalesce(string_agg(scope::text || '=' || mode, ',' ORDER BY scope::text), '') FROM ks_scopes()");
}
sub recorded
{
	return $node->poll_query_until('postgres', "SELECT count(*) > 0 FROM killswitch.events WHERE " . shift);
}

# The scope file holds the server's copy's bytes (waited for, at most 10 s).
sub same_files
{
	for (1 .. 500)
	{
		return 1 if slurp_file($file) eq slurp_file("$pgdata/pg_killswitch/scopes.json");
		usleep(20_000);
	}
	return 0;
}

my $oid7 = agents(q{
CREATE ROLE etl_agents NOLOGIN;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent, etl_agents;
});
my $team = sql("SELECT 'etl_agents'::regrole::oid");

# 1. A name is refused offline; the OID is the scope's identity.
$node->stop;
my ($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'x', '--scope', 'agent_7');
is($rc, 1, 'offline, a role name is refused');
like($err, qr/takes the role's OID/, 'with the reason');
ok(!-e $file, 'nothing was written');

# 2. A raise on a stopped server: in force from the start, recorded by the watcher.
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'agent_7 loops', '--by', 'oncall',
	'--scope', $oid7);
is($rc, 0, 'engage --scope OID offline succeeds') or diag($err);
like($out, qr/scope $oid7 halt_all \(version 1\) written/, 'and says what it wrote');
my $obj = decode_json(slurp_file($file));
my $sig = delete $obj->{signature};
is($sig, hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($obj), $secret),
	'the file is signed under the secret as the server signs its own');
is($obj->{scopes}{$oid7}{mode}, 'HALT_ALL', 'it holds the scope by OID');
$node->start;
is(refused('agent_7'), 'KS001', 'after the start agent_7 is halted');
is(refused('agent_8'), 'ok', 'an agent outside the scope works');
ok(recorded("scope = $oid7 AND source = 'file' AND mode = 'halt_all'"),
	'the watcher records the raise as the scope\'s event, source file');
is(sql("SELECT reason || '/' || triggered_by FROM killswitch.events WHERE scope = $oid7"),
	'agent_7 loops/oncall', 'with the command\'s reason and caller');
is(scopes(), 'agent_7=halt_all', 'ks_scopes() shows it');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');
ok(same_files(), 'the file holds the server\'s own bytes again');
is(refused('agent_7'), 'KS001', 'the settling at the first look did not lower it');

# 3. A team raised offline, then a restart: it stays (the chain holds it).
$node->stop;
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'emergency', '--reason', 'etl bad data', '--scope', $team);
is($rc, 0, 'a team raised offline') or diag($err);
$node->start;
is(refused('agent_9'), 'KS001', 'the team\'s member is halted');
ok(recorded("scope = $team AND source = 'file'"), 'recorded');
$node->restart;
is(scopes(), 'agent_7=halt_all,etl_agents=emergency', 'both scopes survive a restart');

# 4. A release offline needs the release key, and is applied at the next start.
$node->stop;
($rc, $out, $err) = ks('-D', $pgdata, '--release-key-file', '/nonexistent', 'disengage',
	'--reason', 'fixed', '--scope', $team);
is($rc, 1, 'a release without the release key is refused by the command');
like($err, qr/a release needs the release key/, 'with the reason');
($rc, $out, $err) = ks('-D', $pgdata, 'disengage', '--reason', 'etl fixed', '--by', 'boss', '--scope', $team);
is($rc, 0, 'an administrator\'s release with the release key is written') or diag($err);
$node->start;
ok(recorded("scope = $team AND source = 'file' AND mode = 'disengaged'"), 'the release is recorded');
ok($node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM ks_scopes() WHERE scope = 'etl_agents'::regrole)"),
	'and applied');
is(refused('agent_9'), 'ok', 'the team works again');
is(refused('agent_7'), 'KS001', 'the other scope stays');
is(sql("SELECT ks_status()->>'integrity'"), 'ok', 'no tamper verdict');

# 5. A release signed with the secret alone (a hostile agent's) is a verdict at start.
$node->stop;
$obj = decode_json(slurp_file($file));
delete $obj->{signature};
my $held = $obj;
put(signed({ key_id => $held->{key_id}, scopes => {}, version => $held->{version} + 1 }));
$node->start;
is(refused('agent_7'), 'KS001', 'the scope stays');
is(sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'halt_all tampered',
	'the fleet is halted with a tamper verdict');
ok(-e "$file.rejected", 'the file is set aside');

done_testing();
