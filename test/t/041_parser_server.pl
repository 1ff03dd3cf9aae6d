# The server-side parser on hostile input: the fuzzing corpus, the test
# vectors, hostile non-ASCII and escape inputs, and generations at and past
# their bounds (test/fuzz/server_cases.py)
# are written as the state file of a running server (the watcher judges
# them, in a LATIN1 database) and of a postmaster about to start (which has
# no database encoding).  The server always stays up or starts, and either
# applies a validly signed newer file exactly, texts included, or fails
# closed: at least halt_all, integrity tampered, a tamper event.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Encode qw(encode_utf8);
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);

my ($python) = grep { -x $_ } map { "$_/python3" } split /:/, $ENV{PATH};
plan skip_all => 'python3 is not installed' unless $python;
my $src = $ENV{KS_SRCDIR} or die 'KS_SRCDIR is not set';

$ENV{PGCLIENTENCODING} = 'UTF8';
my $node = PostgreSQL::Test::Cluster->new('parser');
$node->init(extra => [ '--encoding=LATIN1', '--locale=C' ]);
# a short poll keeps the run fast; judging is the same
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'killswitch'\nkillswitch.poll_interval = 10\n");
my $session;

# Start the server (without PGCLIENTENCODING, which a postmaster would take
# as every session's default), and open the session the test talks through.
sub start_server
{
	local $ENV{PGCLIENTENCODING};
	delete $ENV{PGCLIENTENCODING};
	my $started = $node->start(fail_ok => 1);
	$session = $node->background_psql('postgres') if $started;
	return $started;
}

sub stop_server
{
	$session->quit;
	$node->stop('fast');
}

start_server() or die 'the server did not start';
my $dir = $node->data_dir . '/pg_killswitch';

# One query through the open session (a new psql per query would be slow).
sub sql
{
	my $out = $session->query_safe(shift);
	chomp $out;
	return $out;
}

# Wait (up to 60 s) until a query returns 't'.
sub wait_for
{
	my ($query) = @_;
	for (1 .. 3000)
	{
		return 1 if sql($query) eq 't';
		usleep(20_000);
	}
	return 0;
}

$node->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE');

# What a LATIN1 database shows of text: what it cannot hold, escaped.
sub shown
{
	return join '', map {
		my $o = ord;
		$o <= 0xFF ? $_ : $o <= 0xFFFF ? sprintf('\\u%04X', $o) : sprintf('\\U%08X', $o)
	} split //, shift;
}

sub hexu { return unpack('H*', encode_utf8(shift)); }

# Run the case generator; returns its decoded JSON output.
sub cases
{
	my (@args) = @_;
	my ($out, $err);
	IPC::Run::run([ $python, "$src/test/fuzz/server_cases.py", $dir, $src, @args ],
		'>', \$out, '2>', \$err)
	  or die "server_cases.py failed: $err";
	return JSON::PP->new->decode($out);
}

sub generation { return sql("SELECT ks_status()->>'generation'"); }

# Check the outcome of one case; $gen is the generation before it.
sub check_case
{
	my ($case, $where) = @_;
	my $what = "$where, $case->{name}";
	if ($case->{expect} eq 'apply')
	{
		is(sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'halt_all ok',
			"$what: applied (halt_all, integrity ok)");
		ok(wait_for("SELECT NOT (ks_status()->>'unrecorded_change')::boolean"), "$what: recorded");
		for my $col ('reason', 'triggered_by')
		{
			my $text = $case->{$col};
			next unless defined $text && ref($text) eq '' && $text ne '';
			is(sql("SELECT encode(convert_to($col, 'UTF8'), 'hex') FROM killswitch.events ORDER BY id DESC LIMIT 1"),
				hexu(shown($text)), "$what: the history holds $col exactly");
		}
	}
	else
	{
		is(sql("SELECT ks_mode() >= 'halt_all' AND ks_status()->>'integrity' = 'tampered'"), 't',
			"$what: fails closed (at least halt_all, tampered)");
		ok(wait_for("SELECT source = 'tamper' FROM killswitch.events ORDER BY id DESC LIMIT 1"),
			"$what: a tamper event is recorded");
	}
}

# Make a tamper verdict history, so that the next case starts clean.
sub reset_state
{
	sql("SELECT ks_disengage('reset by the test')");
	is(sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')"), 'disengaged ok', 'reset');
}

my @list = @{ cases(0, 'list') };
cmp_ok(scalar(grep { $_->{expect} eq 'apply' } @list), '>=', 10, 'cases that must apply');
cmp_ok(scalar(grep { $_->{expect} eq 'tamper' } @list), '>=', 10, 'cases that must fail closed');

# 1. Each case while the server runs: the watcher judges it.
for my $i (0 .. $#list)
{
	my $gen = generation();
	my $case = cases($gen + 1, 'write', $i);
	ok(wait_for("SELECT (ks_status()->>'generation')::bigint > $gen"),
		"running, $case->{name}: judged")
	  or next;
	check_case($case, 'running');
	reset_state() if $case->{expect} eq 'tamper';
}

# 2. A subset at a start: the postmaster parses the file before any
#    database is open; the server must start.
my %at_start = map { $_ => 1 } (
	'hard text, raw UTF-8 on disk', 'hard text, escaped', 'vector: astral',
	'an escaped backslash before u00e9 is text, not an escape',
	'signed, lone high surrogate', 'signed, \\u0000', 'LATIN1 byte in a string',
	'UTF-8-encoded surrogate', 'an escape at the very end', 'corpus: full.json',
	'deep nesting', 'signed, generation 2^56', 'signed, generation 1001 past the state held',
	'generation 1000 past the state held');
for my $i (grep { $at_start{ $list[$_]->{name} } } 0 .. $#list)
{
	my $gen = generation();
	stop_server();
	my $case = cases($gen + 1, 'write', $i);
	ok(start_server(), "start, $case->{name}: the server starts")
	  or BAIL_OUT('the server did not start');
	check_case($case, 'start');
	reset_state() if $case->{expect} eq 'tamper';
}
is(scalar(keys %at_start), scalar(grep { $at_start{ $_->{name} } } @list), 'every start case exists');

is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies after all of it');
stop_server();
done_testing();
