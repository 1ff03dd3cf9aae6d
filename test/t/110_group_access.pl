# Agents on the same host read the state file through group access: when
# killswitch.state_dir grants its group read and search access (0750), the
# server writes the state file 0640 -- after SQL changes, after applying an
# outside write, after a tamper verdict -- and never anything wider; the
# secret and the emergency snapshot stay 0600 even in that directory.  An
# owner-only directory (0700) keeps the file 0600.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX qw(strftime);
use KsTest;

my $base = PostgreSQL::Test::Utils::tempdir;
my $shared = "$base/shared";
mkdir $shared or die;
chmod 0750, $shared or die;

my $node = ks_node('group',
	conf => "killswitch.state_dir = '$shared'\n"
	  . "killswitch.signing_secret_file = '$shared/signing.key'\n");
my $file = "$shared/kill_switch_state.json";

sub mode_of { return sprintf('%04o', (stat(shift))[2] & 07777); }
sub sql { return $node->safe_psql('postgres', shift); }

is(mode_of($file), '0640', 'first start: the state file in a 0750 directory is 0640');
is(mode_of("$shared/signing.key"), '0600', 'the secret created in that directory stays 0600');

sql("SELECT ks_engage('halt_all', 'group test', 'tester')");
is(mode_of($file), '0640', 'after an engage from SQL: 0640');

# An outside writer (the Python library chmods its file 0600 after writing
# in place): once the watcher has applied it, the server's rewrite is 0640 —
# also when the writer's chmod lands on that rewrite.
my $secret = slurp_file("$shared/signing.key");
$secret =~ s/\n\z//;
my $gen = sql("SELECT ks_status()->>'generation'");
open my $fh, '>', $file or die;
print $fh ks_signed_text($secret, mode => 'EMERGENCY', engaged_at => strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', gmtime(time + 1)),
	reason => 'outside', triggered_by => 'library');
close $fh;
chmod 0600, $file;
ok($node->poll_query_until('postgres',
	"SELECT (ks_status()->>'generation')::bigint > $gen AND ks_mode() = 'emergency'"),
	'an outside write is applied');
# the writer's chmod may land on the server's rewrite (it chmods by name):
# the watcher sees it and writes its file again
for (1 .. 600) { last if mode_of($file) eq '0640'; select(undef, undef, undef, 0.1); }
is(mode_of($file), '0640', 'and the server rewrites the file 0640');
# the emergency's snapshot, beside the state file, holds the agents' queries
my $snap = "$shared/kill_switch_snapshot.json";
for (1 .. 600) { last if -e $snap; select(undef, undef, undef, 0.1); }
is(mode_of($snap), '0600', 'the emergency snapshot in that directory stays 0600');

# A tamper verdict's rewrite too.
$gen = sql("SELECT ks_status()->>'generation'");
open $fh, '>', $file or die;
print $fh "not json";
close $fh;
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'integrity' = 'tampered'"),
	'a bad file is judged');
ok($node->poll_query_until('postgres', "SELECT (ks_status()->>'generation')::bigint > $gen"),
	'and its verdict recorded');
is(mode_of($file), '0640', 'the file written in its place is 0640');

# A release from SQL, then an owner-only directory after a restart: 0600.
sql("SELECT ks_disengage('done', 'tester')");
is(mode_of($file), '0640', 'after a release: 0640');
$node->stop;
chmod 0700, $shared or die;
$node->start;
sql("SELECT ks_engage('halt_noncritical', 'owner only', 'tester')");
is(mode_of($file), '0600', 'in a 0700 directory the state file is 0600');

$node->stop;
done_testing();
