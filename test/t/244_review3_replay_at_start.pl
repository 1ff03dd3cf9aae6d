# Review 3, finding 5 (a README claim): "Anything else — unsigned, a bad
# signature, a lower without the release key, an older version (a replay),
# a role that does not exist — is tampering: the fleet goes to halt_all,
# tampered, the server's bytes are put back (at start the file is set aside
# as .rejected)".  At start an older signed scope file (a replay) is not a
# verdict: ks_scope_file_load() takes any verified file whose version is
# not past the copy's for "behind the copy (a crash between the two
# writes)" and silently puts the copy back — no verdict, no .rejected.
# Nothing is lowered (the copy is what is loaded); the claim is false.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $node = ks_node('review3_replay_start');
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
	'review3_replay_start: a replayed older scope file at start is a tamper verdict');
ok(-e "$file.rejected", 'review3_replay_start: it is set aside as .rejected');

done_testing();
