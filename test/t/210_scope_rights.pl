# Scoped halts (ARCHITECTURE §13): who may raise and release a scope, its
# history in the one chain (ks_verify_events() covers it, a tampered scope
# row is named), and its NOTIFY naming the scope.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('scope_rights');
sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as a role; return ('ok' or the error's SQLSTATE, stderr).
sub as_role
{
	my ($role, $q) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$q",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return ('ok', $err) if $rc == 0;
	return ($err =~ /ERROR:  ([0-9A-Z]{5}):/ ? $1 : "error: $err", $err);
}

sql(q{
CREATE ROLE on_call LOGIN IN ROLE killswitch_operator;
CREATE ROLE boss LOGIN IN ROLE killswitch_admin;
CREATE ROLE boss2 LOGIN IN ROLE killswitch_admin;
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_ops LOGIN IN ROLE killswitch_agent, killswitch_operator;
CREATE ROLE agent_admin LOGIN IN ROLE killswitch_agent, killswitch_admin;
CREATE ROLE etl_agents NOLOGIN;
GRANT etl_agents TO agent_ops, agent_admin;
});

# 1. Rights: an operator raises; it cannot release.
my ($got, $err) = as_role('on_call', "SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7')");
is($got, 'ok', 'an operator raises a scope') or diag($err);
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'the scope is in force');
($got, $err) = as_role('on_call', "SELECT ks_disengage('operator tries', scope => 'agent_7')");
is($got, '42501', 'an operator cannot release a scope') or diag($err);

# an agent that holds the operator's role may raise a scope (raising is free),
# even its own team's, but never release it
($got, $err) = as_role('agent_ops', "SELECT ks_engage('halt_noncritical', 'stop my team', 'self', scope => 'etl_agents')");
is($got, 'ok', 'an agent operator raises a scope') or diag($err);
($got, $err) = as_role('agent_ops', "SELECT ks_disengage('let me go', scope => 'etl_agents')");
is($got, '42501', 'an agent operator cannot release its own scope') or diag($err);
# an agent holding the administrators' role, in the scope: refused as an agent
($got, $err) = as_role('agent_admin', "SELECT ks_disengage('agent admin tries', scope => 'etl_agents')");
is($got, '42501', 'an agent in the scope holding the release right is refused the release');
like($err, qr/members of "killswitch_agent" may never release the kill switch/, 'as an agent');
($got, $err) = as_role('agent_admin', "SELECT ks_disengage('agent admin tries', scope => 'agent_7')");
is($got, '42501', 'an agent administrator cannot release another agent\'s scope either');
is(sql("SELECT string_agg(scope::text || '=' || mode, ',' ORDER BY scope::text) FROM ks_scopes()"),
	'agent_7=halt_all,etl_agents=halt_noncritical', 'both scopes still in force');

# two-person release: one administrator's release of a scope is a request
sql("ALTER SYSTEM SET killswitch.release_approvals = 2; SELECT pg_reload_conf()");
ks_within($node, "SELECT current_setting('killswitch.release_approvals') = '2'", 60);
($got, $err) = as_role('boss', "SELECT ks_disengage('one admin', scope => 'agent_7')");
is($got, 'ok', 'with two approvals required, one administrator\'s release of a scope is recorded') or diag($err);
like($err, qr/release of scope "agent_7" requested; it stays halt_all until a second administrator confirms/,
	'as a request');
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'the scope stays halted');
is(sql("SELECT source || ' ' || mode || ' ' || release_target FROM killswitch.events WHERE scope_name = 'agent_7' ORDER BY id DESC LIMIT 1"),
	'release_request halt_all disengaged', 'the request is in the chain, on the scope\'s line');
($got, $err) = as_role('boss', "SELECT ks_disengage('me again', scope => 'agent_7')");
is($got, '42501', 'the same administrator cannot confirm it');
($got, $err) = as_role('agent_admin', "SELECT ks_disengage('agent confirms', scope => 'agent_7')");
is($got, '42501', 'nor an agent holding the administrators\' role');
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'still halted');
# a request for another scope does not confirm this one
($got, $err) = as_role('boss2', "SELECT ks_disengage('other scope', scope => 'etl_agents')");
like($err, qr/release of scope "etl_agents" requested/, 'a request is per scope');
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), 'halt_all', 'agent_7 is untouched by it');
($got, $err) = as_role('boss2', "SELECT ks_disengage('second admin', 'boss2', scope => 'agent_7')");
is($got, 'ok', 'a second administrator confirms') or diag($err);
like($err, qr/release of scope "agent_7" confirmed: requested by "boss"/, 'and is told whose request');
is(sql("SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), '0', 'the scope is released');
is(sql("SELECT mode FROM ks_scopes() WHERE scope = 'etl_agents'::regrole"), 'halt_noncritical', 'the other still halted');
sql("ALTER SYSTEM RESET killswitch.release_approvals; SELECT pg_reload_conf()");
ks_within($node, "SELECT current_setting('killswitch.release_approvals') = '1'", 60);
sql("SELECT ks_engage('halt_all', 'again', 'pager', scope => 'agent_7')");

# an administrator releases
($got, $err) = as_role('boss', "SELECT ks_disengage('fixed', 'boss', scope => 'agent_7')");
is($got, 'ok', 'an administrator releases a scope') or diag($err);
is(sql("SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_7'::regrole"), '0', 'released');
is(sql("SELECT ks_mode()"), 'disengaged', 'the fleet was never halted');

# 2. NOTIFY names the scope; the fleet's payload has no such key.
{
	my $bg = $node->background_psql('postgres');
	$bg->query_safe('LISTEN killswitch');
	sql("SELECT ks_engage('emergency', 'notify me', 'pager', scope => 'agent_7')");
	sql("SELECT ks_engage('halt_noncritical', 'fleet marker', 'pager')");
	my $all = '';
	for (1 .. 200)
	{
		my ($out) = $bg->query('SELECT 1');
		$all .= $out;
		last if $all =~ /"reason": "fleet marker"/ && $all =~ /"reason": "notify me"/;
		select(undef, undef, undef, 0.05);
	}
	$bg->quit;
	my @got = map { decode_json($_) } ($all =~ /Asynchronous notification "killswitch" with payload "(.*)" received/g);
	my ($scoped) = grep { $_->{reason} eq 'notify me' } @got;
	my ($fleet) = grep { $_->{reason} eq 'fleet marker' } @got;
	ok($scoped, 'the scope\'s change is announced') or diag($all);
	is($scoped->{scope}, 'agent_7', 'its payload names the scope');
	is($scoped->{mode}, 'emergency', 'with its mode');
	is($scoped->{generation}, sql("SELECT generation FROM killswitch.events WHERE reason = 'notify me'"),
		'and the scope\'s own generation');
	ok($fleet && !exists $fleet->{scope}, 'the fleet\'s payload has no scope key');
	is_deeply([ sort keys %$fleet ], [ sort qw(event_id mode previous_mode reason triggered_by at generation source) ],
		'the fleet\'s payload keeps exactly its keys');
	sql("SELECT ks_disengage('fleet marker done', 'boss')");
	sql("SELECT ks_disengage('notify done', scope => 'agent_7')");
}

# 3. The chain: every scope row is in it and verifies; a tampered one is named.
my $verify = sql('SELECT ok, checked, first_bad_id FROM ks_verify_events()');
my $rows = sql('SELECT count(*) FROM killswitch.events');
is($verify, "t|$rows|", 'ks_verify_events() passes a chain with scope events');
cmp_ok(sql('SELECT count(*) FROM killswitch.events WHERE scope IS NOT NULL'), '>=', 5, 'which holds scope events');
is(sql(q{SELECT string_agg(generation::text, ',' ORDER BY id) FROM killswitch.events WHERE scope_name = 'agent_7'}),
	'1,2,3,4,5,6,7', 'agent_7 has its own generation line');
my $victim = sql("SELECT id FROM killswitch.events WHERE scope_name = 'etl_agents' ORDER BY id LIMIT 1");
sub tamper
{
	sql("ALTER TABLE killswitch.events DISABLE TRIGGER events_append_only; $_[0]; "
		  . 'ALTER TABLE killswitch.events ENABLE TRIGGER events_append_only');
}
tamper("UPDATE killswitch.events SET scope = 'boss'::regrole WHERE id = $victim");
is(sql('SELECT ok, first_bad_id FROM ks_verify_events()'), "f|$victim", 'a scope event moved to another role is named');
tamper("UPDATE killswitch.events SET scope = 'etl_agents'::regrole WHERE id = $victim");
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'put back, it verifies');
tamper("UPDATE killswitch.events SET scope_name = 'etl' WHERE id = $victim");
is(sql('SELECT ok, first_bad_id FROM ks_verify_events()'), "f|$victim", 'a scope event renamed is named');
tamper("UPDATE killswitch.events SET scope_name = 'etl_agents' WHERE id = $victim");
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'put back, it verifies');
my $last7 = sql("SELECT id FROM killswitch.events WHERE scope_name = 'agent_7' ORDER BY id DESC LIMIT 1");
tamper("UPDATE killswitch.events SET scope = NULL, scope_name = NULL WHERE id = $last7");
is(sql('SELECT ok, first_bad_id FROM ks_verify_events()'), "f|$last7", 'a scope event passed off as the fleet\'s is named');

done_testing();
