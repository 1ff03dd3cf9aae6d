# A scope on a role whose name is not ASCII, on a LATIN1 cluster (ARCHITECTURE
# §13): the scope file holds role OIDs only, the event keeps the name
# (scope_name, converted to UTF-8 for the canonical form), so the name must
# come back exactly — from ks_scopes(), the history, the NOTIFY payload and
# the killswitch command — after a restart and a kill -9, the chain must
# verify throughout, and the agent in the scope must stay refused while an
# agent outside it writes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Encode qw(encode_utf8 decode_utf8);
use IPC::Run;
use JSON::PP;
use KsTest;

# Every client here speaks UTF-8; the server converts for the LATIN1 cluster.
# The server starts without it (a postmaster takes PGCLIENTENCODING from its
# environment as every session's default).
$ENV{PGCLIENTENCODING} = 'UTF8';
my $node = PostgreSQL::Test::Cluster->new('scope_latin1');
$node->init(extra => [ '--encoding=LATIN1', '--locale=C' ]);
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'killswitch'\nrestart_after_crash = on\n");
sub start_server { local $ENV{PGCLIENTENCODING}; delete $ENV{PGCLIENTENCODING}; $node->start; }
start_server();
$node->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
is($node->safe_psql('postgres', 'SHOW server_encoding'), 'LATIN1', 'a LATIN1 cluster');

sub sql { return decode_utf8($node->safe_psql('postgres', encode_utf8(shift))); }
sub hexu { return unpack('H*', encode_utf8(shift)); }

# agent names LATIN1 holds: é, ø, and a team "équipe_ÉTL"
my $agent = "agent_\x{e9}t\x{e9}";
my $member = "r\x{f8}bot_9";
my $team = "\x{e9}quipe_\x{c9}TL";
my $reason = "boucle d\x{e9}tect\x{e9}e \x{a1}stop!";
my $by = "op\x{e9}rateur \x{c5}sa";
sql(qq{
CREATE ROLE "$agent" LOGIN IN ROLE killswitch_agent;
CREATE ROLE "$member" LOGIN IN ROLE killswitch_agent;
CREATE ROLE outsider LOGIN IN ROLE killswitch_agent;
CREATE ROLE "$team" NOLOGIN;
GRANT "$team" TO "$member";
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
});

# a write as role, its name sent in the cluster's encoding
sub write_as { return ks_refused($node, Encode::encode('latin1', shift)); }

# The names as every reader shows them, byte for byte (UTF-8 hex).
sub names_shown
{
	return sql(q{SELECT string_agg(encode(convert_to(scope::text, 'UTF8'), 'hex') || '=' || mode || ':'
	                  || encode(convert_to(reason, 'UTF8'), 'hex') || ':' || encode(convert_to(triggered_by, 'UTF8'), 'hex'),
	                  ',' ORDER BY scope::text) FROM ks_scopes()});
}
my $expected = join(',', sort { $a cmp $b }
	(hexu(qq{"$agent"}) . '=halt_all:' . hexu($reason) . ':' . hexu($by),
	 hexu(qq{"$team"}) . '=emergency:' . hexu("team $reason") . ':' . hexu($by)));

sub check_all
{
	my ($when) = @_;
	is(write_as($agent), 'KS001', "$when: the agent in its own scope is refused");
	is(write_as($member), 'KS001', "$when: the team's member is refused");
	is(write_as('outsider'), 'ok', "$when: an agent in no scope writes");
	is(names_shown(), $expected, "$when: ks_scopes() shows the names, reasons and callers exactly");
	is(sql(q{SELECT ok FROM ks_verify_events()}), 't', "$when: the chain verifies");
	is(sql(q{SELECT string_agg(encode(convert_to(scope_name, 'UTF8'), 'hex'), ',' ORDER BY id)
	         FROM killswitch.events WHERE scope IS NOT NULL}),
		join(',', hexu($agent), hexu($team)), "$when: the history keeps the names");
}

# 1. Raise both, listening: the payload names the scope in UTF-8.
my $bg = $node->background_psql('postgres');
$bg->query_safe('LISTEN killswitch');
sql(qq{SELECT ks_engage('halt_all', '$reason', '$by', scope => '$agent')});
sql(qq{SELECT ks_engage('emergency', 'team $reason', '$by', scope => '$team')});
my $all = '';
for (1 .. 200)
{
	my ($out) = $bg->query('SELECT 1');
	$all .= decode_utf8($out);
	last if 2 <= (() = $all =~ /Asynchronous notification "killswitch"/g);
	select(undef, undef, undef, 0.05);
}
$bg->quit;
my @got = map { JSON::PP->new->decode($_) } ($all =~ /Asynchronous notification "killswitch" with payload "(.*)" received/g);
is(join(',', sort map { hexu($_->{scope} // '') } @got), join(',', sort(hexu($agent), hexu($team))),
	'the NOTIFY payloads name each scope exactly') or diag($all);
my ($first) = grep { ($_->{scope} // '') eq $agent } @got;
is(hexu($first->{reason} // ''), hexu($reason), 'and carry the reason exactly');
check_all('after the raise');

# 2. The killswitch command reads the scope by its non-ASCII name.
my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my ($out, $err) = ('', '');
IPC::Run::run([ $cli, '-d', 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres',
		'--json', 'status', '--scope', encode_utf8($agent) ], '>', \$out, '2>', \$err);
is($? >> 8, 2, 'killswitch status --scope with the non-ASCII name: exit 2, the scope is engaged') or diag($err);
my $j = eval { decode_json($out) } // {};
is(hexu($j->{scope} // ''), hexu($agent), 'it names the scope exactly');
is("$j->{mode} " . hexu($j->{reason} // '') . ' ' . hexu($j->{triggered_by} // ''), 'halt_all ' . hexu($reason) . ' ' . hexu($by),
	'with its mode, reason and caller exactly');

# 3. A restart and a kill -9 keep them, names and all.
$node->stop;
start_server();
check_all('after a restart');
{ local $ENV{PGCLIENTENCODING}; delete $ENV{PGCLIENTENCODING}; ks_kill9_and_start($node); }
ok(ks_wait_ready($node), 'the crash restart accepts connections');
check_all('after a kill -9');

# 4. The release, by the name, and its record.
sql(qq{SELECT ks_disengage('r\x{e9}par\x{e9}', '$by', scope => '$team')});
is(write_as($member), 'ok', 'the released team\'s member writes');
is(write_as($agent), 'KS001', 'the other scope stays');
sql(qq{SELECT ks_disengage('r\x{e9}par\x{e9}', '$by', scope => '$agent')});
is(write_as($agent), 'ok', 'released');
is(sql(q{SELECT count(*) FROM ks_scopes()}), '0', 'no scope active');
is(sql(q{SELECT encode(convert_to(reason, 'UTF8'), 'hex') FROM killswitch.events ORDER BY id DESC LIMIT 1}),
	hexu("r\x{e9}par\x{e9}"), 'the release\'s reason is recorded exactly');
is(sql(q{SELECT ok FROM ks_verify_events()}), 't', 'the chain verifies after the releases');
$node->stop;
start_server();
is(write_as($agent), 'ok', 'the releases survive a restart');
is(sql(q{SELECT ok FROM ks_verify_events()}), 't', 'and the chain still verifies');

done_testing();
