# Behind a transaction pooler (ARCHITECTURE §8.3): agents connected through the
# real PgBouncer (Debian's pgbouncer, transaction pooling, started here) get
# SQLSTATE KS001 at once when the kill switch enters emergency — not a hang
# — and work again at once after the release: the pooler's server logins
# never fail, so it never turns clients away.  PgBouncer's
# query_wait_timeout is 1 s here, so a client left waiting for a server
# connection gets PgBouncer's own error after 1 s, never KS001.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes;
use KsTest;

my $pgbouncer = '/usr/sbin/pgbouncer';
plan skip_all => 'PgBouncer is not installed (scripts/setup installs it)' unless -x $pgbouncer;

my $node = ks_node('pooled');
$node->safe_psql('postgres', q{
CREATE ROLE bot LOGIN PASSWORD 'agent-secret' IN ROLE killswitch_agent;
CREATE TABLE t (x int);
GRANT ALL ON t TO bot;
});

# PgBouncer on a free port, as this (the postgres) OS user.
my ($bouncer, $conninfo, $dir) = ks_pgbouncer($node, 4, "query_wait_timeout = 1\n");
# stopped however the test ends, a failure included
END { $bouncer->kill_kill if $bouncer; }
$ENV{PGPASSWORD} = 'agent-secret';
my @via = ('-d', $conninfo);
sub usleep { Time::HiRes::usleep(@_) }

# A client of PgBouncer that stays connected (as an agent's pool does).
sub pooled_client
{
	my $c = $node->background_psql('postgres', on_error_stop => 0, extra_params => \@via);
	$c->query_safe('\set VERBOSITY verbose');
	return $c;
}

# Run SQL in a pooled client; return its stderr ('' when it worked).
sub run
{
	my ($c, $sql) = @_;
	$c->{stderr} = '';
	$c->query($sql);
	return $c->{stderr};
}

# Disengaged: the pool fills with server connections.
my @clients = map { pooled_client() } 1 .. 3;
is(run($_, 'INSERT INTO t VALUES (1);'), '', 'an agent writes through PgBouncer while disengaged') for @clients;

# One agent is running a long statement when the emergency comes.
my $busy = pooled_client();
$busy->query_until(qr/started/, "\\echo started\nSELECT pg_sleep(60) /* busy-agent */;\n");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%busy-agent%' AND state = 'active' AND usename = 'bot'");

$node->safe_psql('postgres', "SELECT ks_engage('emergency', 'pooled agents', 'tester')");
my $KS = qr/ERROR:  KS001: kill switch engaged \(emergency\): any statement by agent "bot" refused/;
for my $i (0 .. $#clients)
{
	like(run($clients[$i], 'INSERT INTO t VALUES (2);'), $KS, "pooled client $i: KS001 at once in emergency");
	like(run($clients[$i], 'SELECT ks_mode();'), $KS, "pooled client $i: KS001 again (its connection to PgBouncer stays)");
}
my $new = pooled_client();
like(run($new, 'SELECT 1;'), $KS, 'a client that connects to PgBouncer during the emergency gets KS001');

# The busy agent's statement is ended; its next one gets KS001.
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'bot' AND query LIKE '%busy-agent%'"),
	'the running statement is ended');
eval { $busy->quit };
$busy = pooled_client();
like(run($busy, 'INSERT INTO t VALUES (3);'), $KS, 'the busy agent reconnects and gets KS001');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t WHERE x > 1'), '0', 'nothing written in emergency');

# The release: every client works again at the first try.
$node->safe_psql('postgres', "SELECT ks_disengage('all clear', 'tester')");
for my $c (@clients, $new, $busy)
{
	is(run($c, 'INSERT INTO t VALUES (4);'), '', 'a pooled client writes again at once after the release');
}
my $after = pooled_client();
is(run($after, 'INSERT INTO t VALUES (5);'), '', 'a new client of PgBouncer writes at once after the release');
unlike(slurp_file("$dir/pgbouncer.log"), qr/server login has been failing|login failed/i,
	"PgBouncer's server logins never failed");

eval { $_->quit } for (@clients, $new, $busy, $after);
$bouncer->kill_kill;
undef $bouncer;
$node->stop;
done_testing();
