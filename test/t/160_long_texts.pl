# Issue 18 case 8: a valid engage with texts of exactly the 65,536-byte
# limit must not crash the server.  ks_record_event() used to keep the
# reason and triggered_by it had converted inside the SPI region and use
# them after that region was freed (a use-after-free for every change:
# small texts survived only because their freed chunks stayed mapped; texts
# this large are allocated and returned to the system on their own).
# Nothing is forced: the sizes alone make the freed memory unmapped.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use KsTest;

my $node = ks_node('long_texts');

sub sql { return $node->safe_psql('postgres', shift); }

my $log_at = -s $node->logfile;
my $bg = $node->background_psql('postgres');
$bg->query_safe('LISTEN killswitch');

# 16,384 four-byte emoji and 32,768 two-byte letters: 65,536 bytes each in UTF-8.
for my $mode ('halt_noncritical', 'halt_all', 'emergency')
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT mode, length(reason), octet_length(triggered_by) FROM "
		  . "ks_engage('$mode', repeat(U&'\\+01F6A8', 16384), repeat(U&'\\00E9', 32768))");
	is($ret, 0, "$mode with 65,536-byte texts: the engage succeeds") or diag($err);
	is($out, "$mode|16384|65536", "$mode: the row holds the whole texts");
}
$node->psql('postgres', "SELECT ks_disengage(repeat(U&'\\+01F6A8', 16384), repeat(U&'\\00E9', 32768))");
unlike(slurp_file($node->logfile, $log_at), qr/terminated by signal|server process .* was terminated/,
	'no backend crashed');
is(sql('SELECT ks_mode()'), 'disengaged', 'the release with the longest texts took effect');
is(sql("SELECT count(*) FROM killswitch.events WHERE octet_length(reason) = 65536"), '4',
	'every change is recorded with its whole reason');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

# The notifications arrive, shortened and valid JSON.
my @payloads;
for (1 .. 600)
{
	my ($out) = $bg->query('SELECT 1');
	push @payloads, ($out =~ /Asynchronous notification "killswitch" with payload "(.*)" received/g);
	last if @payloads >= 4;
	select(undef, undef, undef, 0.1);
}
is(scalar @payloads, 4, 'four notifications');
my $ok = grep { my $p = eval { decode_json($_) }; $p && $p->{truncated} && length($_) < 8000 } @payloads;
is($ok, 4, 'each valid JSON under 8000 bytes, marked truncated');
$bg->quit;

$node->stop;
done_testing();
