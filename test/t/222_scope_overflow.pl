# The scope set's overflow (ARCHITECTURE §13): a committed scope that finds
# no slot is never skipped silently.  Here the server starts from a scope
# file (and copy, signed) holding one scope more than the set holds:
# 10,000 raised through SQL and 1,001 written beside them.  The postmaster
# logs the overflow; ks_status() says scopes_overflowed; every agent session,
# even one in no scope, is held at the highest mode of any scope; once the
# watcher's first look that holds the ordering lock settles the scopes by
# the chain (10,000: they fit), the overflow ends.  Forced: a prepared
# transaction holds the ordering lock across the restart, so the first look
# waits until the test commits it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256_hex);
use JSON::PP;
use KsTest;

my $node = ks_node('scope_overflow', conf => "max_prepared_transactions = 2\n");
sub sql { return $node->safe_psql('postgres', shift); }
sub refused { return ks_refused($node, shift); }

sql(q{
CREATE TABLE t (x int);
GRANT ALL ON t TO PUBLIC;
CREATE ROLE agent_in LOGIN IN ROLE killswitch_agent;
CREATE ROLE agent_free LOGIN IN ROLE killswitch_agent;
DO $$ BEGIN
  FOR g IN 1..11001 LOOP
    EXECUTE format('CREATE ROLE %I NOLOGIN', 's' || lpad(g::text, 5, '0'));
  END LOOP;
END $$;
GRANT s00001 TO agent_in;
});
for my $k (0 .. 9)
{
	my ($rc, $out, $err) = $node->psql('postgres', qq{SET client_min_messages = warning;
SELECT count(ks_engage('halt_all', 'bulk', 'pager', scope => 's' || lpad(g::text, 5, '0')))
  FROM generate_series(@{[ $k * 1000 + 1 ]}, @{[ $k * 1000 + 1000 ]}) g});
	is($out, '1000', 'scopes ' . ($k * 1000 + 1) . ' to ' . ($k * 1000 + 1000) . ' raised') or diag($err);
}
is(sql("SELECT ks_status()->>'scopes_overflowed'"), 'false', 'ks_status(): 10,000 scopes fit');
is(refused('agent_free'), 'ok', 'an agent in no scope writes');

my @extra = split /\n/, sql("SELECT oid FROM pg_roles WHERE rolname BETWEEN 's10001' AND 's11001'");
is(scalar(@extra), 1001, '1,001 roles more');
my $state_dir = sql('SHOW killswitch.state_dir');
$state_dir = $node->data_dir . "/$state_dir" unless $state_dir =~ m{^/};

# A prepared transaction holds the ordering lock across the restart.
sql("BEGIN; LOCK killswitch.events IN SHARE ROW EXCLUSIVE MODE; PREPARE TRANSACTION 'hold'");
$node->stop;

# One scope more than the set holds (11,000 slots: 10,000 committed scopes
# and 1,000 raises in flight beside them), in the copy and the file alike, signed.
my $copy = $node->data_dir . '/pg_killswitch/scopes.json';
my $obj = decode_json(slurp_file($copy));
my $sig = delete $obj->{signature};
my $secret = ks_secret($node);
is($sig, hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($obj), $secret), 'the copy verifies');
is(scalar(keys %{ $obj->{scopes} }), 10000, 'it holds the 10,000 scopes');
my ($any) = values %{ $obj->{scopes} };
$obj->{scopes}{$_} = { %$any } for @extra;
$obj->{version}++;
$obj->{signature} = hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($obj), $secret);
my $text = JSON::PP->new->canonical->ascii->encode($obj) . "\n";
for my $path ($copy, "$state_dir/kill_switch_scopes.json")
{
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh $text;
	close($fh);
}
$node->start;

ok($node->log_contains(qr/1 committed scope does not fit in shared memory/), 'the overflow is logged at start');
is(sql("SELECT ks_status()->>'scopes_overflowed'"), 'true', 'ks_status() says scopes_overflowed');
is(refused('agent_free'), 'KS001', 'while overflowed, an agent in no scope is held at the highest mode of any scope');
is(refused('agent_in'), 'KS001', 'an agent in a scope too');

# The lock goes: the watcher's first look settles the scopes by the chain.
sql("COMMIT PREPARED 'hold'");
ok($node->poll_query_until('postgres', "SELECT count(*) = 10000 FROM ks_scopes()"),
	'the chain\'s 10,000 scopes are active');
is(sql("SELECT ks_status()->>'scopes_overflowed'"), 'false', 'the scopes fit again: the overflow ends');
is(sql("SELECT count(*) FROM ks_scopes() WHERE scope::text >= 's10001'"), '0', 'those the chain lacks are not');
is(refused('agent_free'), 'ok', 'an agent in no scope writes again');
is(refused('agent_in'), 'KS001', 'an agent in a scope stays halted');

done_testing();
