# The killswitch command's --scope ROLE (ARCHITECTURE §13): engage and disengage a role's
# scoped halt through the server (one cluster and a fleet of them), status
# --scope shows it (text and JSON, exit 2 while engaged), the fleet's state
# stays as it was; with verify or history, or without a name, --scope is
# refused and nothing changes; offline (-D) it takes the role's OID (a name
# is refused: TAP 228-230 test the offline path) and status needs -d.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my %node = map { $_ => ks_node("cli_scope_$_") } qw(a b);

sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

sub sql { my ($n, $q) = @_; return $node{$n}->safe_psql('postgres', $q); }

for my $n (qw(a b))
{
	sql($n, q{
CREATE ROLE ops LOGIN IN ROLE killswitch_admin;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
CREATE ROLE "ETL agents" NOLOGIN;
CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent, "ETL agents";
CREATE ROLE agent_admin LOGIN IN ROLE killswitch_agent, killswitch_admin;
});
}
my $a = $node{a}->connstr('postgres') . ' user=ops';
my $b = $node{b}->connstr('postgres') . ' user=ops';

my ($rc, $out, $err) = ks('--help');
like($out, qr/--scope=ROLE/, '--help documents --scope');

# ---- one cluster ----
($rc, $out, $err) = ks('-d', $a, 'engage', 'halt_all', '--reason', 'agent_7 loops — ärger', '--scope', 'agent_7');
is($rc, 0, 'engage --scope succeeds') or diag($err);
like($out, qr/^scope agent_7: halt_all \(event \d+, its generation 1\)$/, 'and prints the scope, its mode, event and generation');
is(sql('a', "SELECT mode || ' ' || reason || ' ' || triggered_by FROM ks_scopes() WHERE scope = 'agent_7'::regrole"),
	'halt_all agent_7 loops — ärger ops', 'the server holds the scoped halt, its reason intact');
is(sql('a', 'SELECT ks_mode()'), 'disengaged', 'the fleet stays disengaged');
is($node{a}->safe_psql('postgres', 'SELECT ks_mode()', extra_params => [ '-U', 'agent_7' ]), 'halt_all',
	'agent_7 sees its scope\'s mode');
is($node{a}->safe_psql('postgres', 'SELECT ks_mode()', extra_params => [ '-U', 'agent_8' ]), 'disengaged',
	'agent_8 does not');

($rc, $out, $err) = ks('-d', $a, 'status', '--scope', 'agent_7');
is($rc, 2, 'status --scope exits 2 while the scope is engaged');
like($out, qr/^scope: +agent_7\nmode: +halt_all\ngeneration: +1\n/, 'and names scope, mode and generation');
($rc, $out, $err) = ks('-d', $a, '--json', 'status', '--scope', 'agent_7');
my $j = decode_json($out);
is("$rc $j->{scope} $j->{mode} $j->{generation} $j->{triggered_by}", '2 agent_7 halt_all 1 ops', 'status --scope --json');
is($j->{reason}, "agent_7 loops \x{2014} \x{e4}rger", 'its reason round-trips');
# --json names the scope and its generation; an engage at or below the scope's mode changes nothing
($rc, $out, $err) = ks('-d', $a, '--json', 'engage', 'halt_noncritical', '--reason', 'lower', '--scope', 'agent_7');
is(sql('a', "SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'a lower engage leaves the scope at halt_all');
($rc, $out, $err) = ks('-d', $a, '--json', 'engage', 'emergency', '--reason', 'worse', '--scope', 'agent_7');
$j = decode_json($out);
is("$rc $j->{scope} $j->{mode} $j->{generation}", '0 agent_7 emergency 2', 'engage --scope --json names the scope, its mode and generation');
($rc, $out, $err) = ks('-d', $a, 'status', '--scope', 'agent_8');
is("$rc $out", "0 scope:        agent_8\nmode:         disengaged\n", 'a role without a scoped halt: disengaged, exit 0');
($rc, $out, $err) = ks('-d', $a, 'status');
is($rc, 0, 'status without --scope is the fleet\'s: disengaged');

# a role name that needs quoting, and one that does not exist
($rc, $out, $err) = ks('-d', $a, 'engage', 'emergency', '--reason', 'team', '--scope', 'ETL agents');
is($rc, 0, 'a group role\'s scope, by its name as it is') or diag($err);
{
	my ($ret, $o, $e) = $node{a}->psql('postgres', 'SELECT 1', extra_params => [ '-U', 'agent_9' ]);
	like($e, qr/kill switch engaged \(emergency\)/, 'its member gets the emergency\'s refusal');
}
is(sql('a', q{SELECT mode FROM ks_scopes() WHERE scope = '"ETL agents"'::regrole}), 'emergency', 'the team is in emergency');
my $events = sql('a', 'SELECT count(*) FROM killswitch.events');
($rc, $out, $err) = ks('-d', $a, 'engage', 'halt_all', '--reason', 'nobody', '--scope', 'no_such_role');
is($rc, 1, 'an unknown role fails');
like($err, qr/role "no_such_role" does not exist/, 'and says so');
($rc, $out, $err) = ks('-d', $a, 'status', '--scope', 'no_such_role');
like("$rc $err", qr/^1 .*role "no_such_role" does not exist/, 'status --scope of an unknown role fails too');
is(sql('a', 'SELECT count(*) FROM killswitch.events'), $events, 'nothing recorded');

# ---- a fleet: both clusters, in parallel ----
($rc, $out, $err) = ks('-d', $a, '-d', $b, 'engage', 'halt_all', '--reason', 'fleet-wide scope', '--scope', 'agent_8');
is($rc, 0, 'engage --scope on two clusters') or diag($err);
is(sql('a', "SELECT mode FROM ks_scopes() WHERE scope = 'agent_8'::regrole") . ' '
	  . sql('b', "SELECT mode FROM ks_scopes() WHERE scope = 'agent_8'::regrole"),
	'halt_all halt_all', 'both hold the scoped halt');
($rc, $out, $err) = ks('-d', $a, '-d', $b, 'disengage', '--reason', 'fixed', '--scope', 'agent_8');
is($rc, 0, 'disengage --scope on both') or diag($err);
is(sql('a', "SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_8'::regrole") . ' '
	  . sql('b', "SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_8'::regrole"),
	'0 0', 'both released it');

# ---- release one cluster's scope; the others stay ----
($rc, $out, $err) = ks('-d', $a, 'disengage', '--reason', 'agent_7 fixed', '--scope', 'agent_7');
is($rc, 0, 'disengage --scope') or diag($err);
like($out, qr/^scope agent_7: disengaged \(event \d+, its generation 3\)$/, 'and says so');
is(sql('a', 'SELECT string_agg(scope::text, \',\' ORDER BY scope::text) FROM ks_scopes()'), '"ETL agents"',
	'agent_7\'s scope is gone, the team\'s stays');
is($node{a}->safe_psql('postgres', 'SELECT ks_mode()', extra_params => [ '-U', 'agent_7' ]), 'disengaged',
	'agent_7 works again');

# an agent cannot release a scope through the command either, not even one
# that holds killswitch_admin
my $agent_admin = $node{a}->connstr('postgres') . ' user=agent_admin';
($rc, $out, $err) = ks('-d', $agent_admin, 'disengage', '--reason', 'let me out', '--scope', 'ETL agents');
is($rc, 1, 'an agent\'s disengage --scope fails');
like($err, qr/agent/, 'refused as an agent');
is(sql('a', q{SELECT mode FROM ks_scopes() WHERE scope = '"ETL agents"'::regrole}), 'emergency', 'the team stays in emergency');

# ---- refused before anything is done ----
my $before = sql('a', 'SELECT count(*) FROM killswitch.events');
my $pgdata = $node{a}->data_dir;
($rc, $out, $err) = ks('-D', $pgdata, 'engage', 'halt_all', '--reason', 'x', '--scope', 'agent_7');
is($rc, 1, 'offline --scope with a role name is refused');
like($err, qr/offline, --scope takes the role's OID/, 'and says it takes the OID (TAP 228-230)');
($rc, $out, $err) = ks('-D', $pgdata, 'status', '--scope', '1234');
like("$rc $err", qr/^1 .*status --scope needs a database connection/, 'offline status --scope is refused');
($rc, $out, $err) = ks('-d', $a, 'verify', '--scope', 'agent_7');
like("$rc $err", qr/^1 .*cannot use --scope with verify/, 'verify --scope is refused');
($rc, $out, $err) = ks('-d', $a, 'history', '--scope', 'agent_7');
like("$rc $err", qr/^1 .*cannot use --scope with history/, 'history --scope is refused');
($rc, $out, $err) = ks('-d', $a, 'engage', 'halt_all', '--reason', 'x', '--scope', '');
like("$rc $err", qr/^1 .*--scope needs a role name/, 'an empty --scope is refused');
is(sql('a', 'SELECT count(*) FROM killswitch.events'), $before, 'none of them changed anything');

done_testing();
