# At start, a verified scope file whose version is not past the server's
# copy is a replay — a tamper verdict, set aside as .rejected, the server's
# bytes put back (README "Scoped halts") — unless it is exactly the file a
# crash between the server's two writes leaves: the copy is written first,
# so the scope file may still hold what it held before, which the copy
# names in "replaces" (scopefile.c crash_left()); that one is put back, no
# verdict.  Nothing is lowered either way: the copy is what is loaded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Digest::SHA qw(hmac_sha256_hex);
use KsTest;

my $node = ks_node('scope_replay_at_start');
my $file = $node->data_dir . '/pg_killswitch/kill_switch_scopes.json';
sub sql { return $node->safe_psql('postgres', shift); }

sql(q{
CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;
SELECT ks_engage('halt_all', 'agent_7 loops', 'pager', scope => 'agent_7');
});
my $saved = slurp_file($file);		# version n: only agent_7
sql("SELECT ks_engage('halt_all', 'agent_8 loops', 'pager', scope => 'agent_8')");
$node->stop;
open my $fh, '>', $file or die $!;
print $fh $saved;					# the replay: a signed, older scope file
close $fh;
$node->start;

is(sql("SELECT string_agg(scope::text, ',' ORDER BY scope::text) FROM ks_scopes()"), 'agent_7,agent_8',
	'both scopes stay (nothing lowered)');
ok(ks_within($node, "SELECT count(*) = 1 FROM killswitch.events WHERE source = 'tamper'", 15),
	'a replayed older scope file at start is a tamper verdict');
ok(-e "$file.rejected", 'it is set aside as .rejected');

# every write of the server names the scope file it replaces
my $copy = $node->data_dir . '/pg_killswitch/scopes.json';
my $verdicts = sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'");
sql("CREATE ROLE agent_9 LOGIN IN ROLE killswitch_agent");
my $session = $node->background_psql('postgres');
$session->query_safe("BEGIN; SELECT ks_engage('halt_all', 'agent_9 loops', 'pager', scope => 'agent_9')");
$session->query_safe('COMMIT');
$session->quit;
ok(ks_within($node, "SELECT pg_read_file('pg_killswitch/kill_switch_scopes.json') = pg_read_file('pg_killswitch/scopes.json') "
	. "AND pg_read_file('pg_killswitch/scopes.json')::jsonb->'scopes' ? 'agent_9'::regrole::oid::text", 30),
	'the commit wrote both files');
my $written = decode_json(slurp_file($copy));
ok(defined $written->{replaces} && $written->{replaces} =~ /^[0-9a-f]{64}$/,
	'the server\'s copy names the scope file it replaced');
$node->stop;

# a crash between the two writes: the copy written (naming the file it
# replaced), the scope file still that one — made here with the secret, as
# the server writes it
my $held = slurp_file($copy);
my $obj = decode_json($held);
$obj->{replaces} = delete $obj->{signature};
$obj->{version}++;
$obj->{signature} = hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($obj), ks_secret($node));
open $fh, '>', $copy or die $!;
print $fh JSON::PP->new->canonical->ascii->encode($obj) . "\n";
close $fh;
unlink "$file.rejected";
$node->start;
ok($node->wait_for_log(qr/the scope file was put back from the server's copy \(it was behind\)/),
	'the file a crash between the two writes leaves is put back');
is(sql("SELECT count(*) FROM killswitch.events WHERE source = 'tamper'"), $verdicts,
	'no verdict for it');
ok(!-e "$file.rejected", 'nothing set aside');
is(slurp_file($file), slurp_file($copy), 'the server\'s bytes are back');
is(sql("SELECT count(*) FROM ks_scopes() WHERE scope = 'agent_9'::regrole"), '1', 'agent_9 is still halted');

done_testing();
