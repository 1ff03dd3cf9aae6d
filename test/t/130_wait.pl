# ks_wait (ARCHITECTURE §8.1): a session sleeping in ks_wait() is woken by
# the condition variable ks_publish() broadcasts and returns the new
# generation — after ks_engage in another session, after an outside change
# the watcher applies, for 200 waiters at once, and for an agent behind the
# real PgBouncer in transaction pooling.  statement_timeout, pg_cancel_backend
# and pg_terminate_backend end a wait with their usual errors.  On a
# streaming standby and a cascading one, the replay of a change wakes them.
#
# Every waiter is seen sleeping (wait event type Extension: the event is
# KillswitchWait from PostgreSQL 17 on, Extension before) before the change is
# made, and sleeps for an hour unless woken; a wake-up that does not come
# shows as a waiter still sleeping when the test's usual time limit is up
# ($PostgreSQL::Test::Utils::timeout_default, like every wait of these tests).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $many = 200;
# how long a waiter sleeps if nobody wakes it, and how long the test waits for it
my $long = 3_600_000;
my $limit = $ENV{KS_WAIT_TEST_LIMIT} // $PostgreSQL::Test::Utils::timeout_default;
my $node = ks_node('wait', conf => "max_connections = " . ($many + 30) . "\n");
$node->safe_psql('postgres', q{
CREATE ROLE bot LOGIN PASSWORD 'agent-secret' IN ROLE killswitch_agent;
});
my $dir = PostgreSQL::Test::Utils::tempdir;

sub sql { return $node->safe_psql('postgres', shift); }
sub generation { return sql("SELECT ks_status()->>'generation'"); }

# Start psql running one statement in the background; its output goes to files.
my $started = 0;
sub background
{
	my ($conn, $sql) = @_;
	my $n = ++$started;
	my $h = IPC::Run::start([ 'psql', '-XAtq', '-d', $conn, '-c', $sql ],
		'<', \undef, '>', "$dir/$n.out", '2>', "$dir/$n.err", IPC::Run::timeout($limit));
	return { h => $h, n => $n };
}

# Wait for a background psql to end; return (stdout, stderr), trimmed.
sub finish
{
	my ($w) = @_;
	if (!eval { $w->{h}->finish; 1 })
	{
		$w->{h}->kill_kill;
		return ('', "still waiting after $limit s: $@");
	}
	my ($out, $err) = map { my $t = slurp_file("$dir/$w->{n}.$_"); $t =~ s/\s+\z//; $t } qw(out err);
	return ($out, $err);
}

# Until $count sessions sleep in ks_wait() with $tag in their statement.
sub sleeping
{
	my ($tag, $count) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' "
		  . "AND state = 'active' AND query LIKE '%ks_wait(%$tag%'",
		$count);
}

my $admin = $node->connstr('postgres');
my $agent = $node->connstr('postgres') . ' user=bot';

# 1. An agent waiting in each mode that lets it read is woken by the next change.
my @steps = (
	[ "SELECT ks_engage('halt_noncritical', 'step 1', 'tester')", 'disengaged', 'halt_noncritical' ],
	[ "SELECT ks_engage('halt_all', 'step 2', 'tester')",         'halt_noncritical', 'halt_all' ],
	[ "SELECT ks_disengage('step 3', 'tester')",                   'halt_all', 'disengaged' ],
);
for my $step (@steps)
{
	my ($change, $from, $to) = @$step;
	my $g = generation();
	my $w = background($agent, "SELECT ks_wait($g, $long) /* agent-$from */, ks_mode()");
	ok(sleeping("agent-$from", 1), "an agent waits in $from");
	sql($change);
	my ($out, $err) = finish($w);
	is($out, ($g + 1) . "|$to", "the waiting agent returns the new generation when $from becomes $to")
	  or diag($err);
}

# 2. An outside change, written by the killswitch command, applied by the watcher.
{
	my $g = generation();
	my $w = background($admin, "SELECT ks_wait($g, $long) /* outside */");
	ok(sleeping('outside', 1), 'a session waits before the outside change');
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-D', $node->data_dir,
		'engage', 'halt_all', '--reason', 'from the command line', '--by', 'night-shift' ],
		'>', \$out, '2>', \$err);
	is($? >> 8, 0, 'killswitch -D engage halt_all') or diag($err);
	my ($got, $werr) = finish($w);
	is($got, generation(), 'the waiter returns the generation the watcher applied') or diag($werr);
	cmp_ok($got, '>', $g, 'a newer one');
	is(sql("SELECT source FROM killswitch.events ORDER BY id DESC LIMIT 1"), 'cli',
		'and that was the command\'s change');
	sql("SELECT ks_disengage('back', 'tester')");
}

# 3. statement_timeout, pg_cancel_backend and pg_terminate_backend end a wait.
{
	my $g = generation();
	my ($out, $err) = finish(background("$agent options='-c statement_timeout=200'",
		"SELECT ks_wait($g, $long) /* timeout */"));
	like($err, qr/canceling statement due to statement timeout/, 'statement_timeout ends a wait');
	is($out, '', 'and it returned nothing');

	my $w = background($agent, "SELECT ks_wait($g, $long) /* cancel */");
	ok(sleeping('cancel', 1), 'an agent waits');
	sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%ks_wait(%cancel%' AND pid <> pg_backend_pid()");
	($out, $err) = finish($w);
	like($err, qr/canceling statement due to user request/, 'pg_cancel_backend ends a wait');

	$w = background($agent, "SELECT ks_wait($g, $long) /* terminate */");
	ok(sleeping('terminate', 1), 'an agent waits');
	sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%ks_wait(%terminate%' AND pid <> pg_backend_pid()");
	($out, $err) = finish($w);
	like($err, qr/terminating connection due to administrator command/, 'pg_terminate_backend ends a wait');
	# a client that goes away: with client_connection_check_interval its session notices
	$w = background("$agent options='-c client_connection_check_interval=100'",
		"SELECT ks_wait($g, $long) /* client-gone */");
	ok(sleeping('client-gone', 1), 'an agent waits');
	$w->{h}->kill_kill;
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE query LIKE '%ks_wait(%client-gone%' AND pid <> pg_backend_pid()"),
		'a wait whose client went away ends with client_connection_check_interval');
	is(sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%ks_wait(%' AND pid <> pg_backend_pid()"),
		'0', 'no wait is left behind');
	is(generation(), $g, 'nothing changed');
}

# 4. Many waiters: one engage wakes them all.
{
	my $g = generation();
	my @w = map { background($_ % 2 ? $agent : $admin, "SELECT ks_wait($g, $long) /* many */") } 1 .. $many;
	ok(sleeping('many', $many), "$many sessions wait at once");
	sql("SELECT ks_engage('halt_all', 'one engage for $many waiters', 'tester')");
	my %got;
	for my $w (@w)
	{
		my ($out, $err) = finish($w);
		$got{$out eq '' ? "error: $err" : $out}++;
	}
	is_deeply(\%got, { $g + 1 => $many }, "all $many waiters return the new generation");
	sql("SELECT ks_disengage('many done', 'tester')");
}

# 5. Emergency: a session waiting when it comes returns its generation; an
# agent's next statement (a wait too) is refused with KS001, which is how it
# learns of the emergency.
{
	my $g = generation();
	my $w = background($admin, "SELECT ks_wait($g, $long) /* emergency */");
	my $wa = background($agent, "SELECT ks_wait($g, $long) /* emergency */");
	ok(sleeping('emergency', 2), 'a session and an agent wait');
	sql("SELECT ks_engage('emergency', 'wake in emergency', 'tester')");
	my ($out, $err) = finish($w);
	is($out, $g + 1, 'the waiter returns the emergency\'s generation') or diag($err);
	# the agent is woken at the commit; should the watcher find it still
	# inside its statement, it ends it as a busy session (README, Emergency)
	($out, $err) = finish($wa);
	ok($out eq $g + 1 || $err =~ /terminating connection due to administrator command/,
		'the waiting agent returns the emergency\'s generation, or is ended as busy')
	  or diag("out: $out, err: $err");
	($out, $err) = finish(background($agent, "SELECT ks_wait($g + 1, 0)"));
	like($err, qr/kill switch engaged \(emergency\): any statement by agent "bot" refused/,
		'an agent\'s wait in emergency is refused like any statement');
	sql("SELECT ks_disengage('emergency done', 'tester')");
}

# 6. An agent behind the real PgBouncer, in transaction pooling, waits in one
# statement and is woken.
SKIP:
{
	my $pgbouncer = '/usr/sbin/pgbouncer';
	skip 'PgBouncer is not installed (scripts/setup installs it)', 4 unless -x $pgbouncer;
	my ($bouncer, $via) = ks_pgbouncer($node, 2);
	local $ENV{PGPASSWORD} = 'agent-secret';
	my $g = generation();
	my $w = background($via, "SELECT ks_wait($g, $long) /* pooled */");
	ok(sleeping('pooled', 1), 'an agent waits through PgBouncer');
	is(sql("SELECT usename FROM pg_stat_activity WHERE query LIKE '%ks_wait(%pooled%' AND pid <> pg_backend_pid()"),
		'bot', 'as its own role, on a server connection of the pool');
	sql("SELECT ks_engage('halt_all', 'pooled waiter', 'tester')");
	my ($out, $err) = finish($w);
	is($out, $g + 1, 'the pooled agent returns the new generation') or diag($err);
	($out, $err) = finish(background($via, "SELECT ks_mode()"));
	is($out, 'halt_all', 'and its next statement through the pooler reads the halt');
	$bouncer->kill_kill;
}

$node->stop;

# 7. On standbys, where no NOTIFY exists: the replay of a change wakes the
# waiters of a streaming standby and of a cascading standby behind it.
{
	my $primary = ks_node('wait_primary', init => { allows_streaming => 1 }, no_extension => 1);
	$primary->safe_psql('postgres', q{
CREATE EXTENSION killswitch CASCADE;
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
});
	$primary->backup('b1');
	my $standby = PostgreSQL::Test::Cluster->new('wait_standby');
	ks_init_from_backup($standby, $primary, 'b1', has_streaming => 1);
	$standby->start;
	$standby->backup('b2');
	my $cascade = PostgreSQL::Test::Cluster->new('wait_cascade');
	ks_init_from_backup($cascade, $standby, 'b2', has_streaming => 1);
	$cascade->start;

	for my $step ([ 'halt_all', "SELECT ks_engage('halt_all', 'standby waiters', 'tester')" ],
		[ 'disengaged', "SELECT ks_disengage('standby waiters released', 'tester')" ])
	{
		my ($to, $change) = @$step;
		my $g = $primary->safe_psql('postgres', "SELECT ks_wait(0, 0)");
		my %w;
		for my $n ($standby, $cascade)
		{
			ok($n->poll_query_until('postgres', "SELECT ks_wait(0, 0) = $g"),
				$n->name . ': at the primary\'s generation');
			$w{ $n->name } = background($n->connstr('postgres') . ' user=bot',
				"SELECT ks_wait($g, $long) /* standby-$to */, ks_mode()");
			ok($n->poll_query_until('postgres',
				"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension' "
				  . "AND state = 'active' AND query LIKE '%ks_wait(%standby-$to%'", 1),
				$n->name . ': an agent waits');
		}
		$primary->safe_psql('postgres', $change);
		for my $n ($standby, $cascade)
		{
			my ($out, $err) = finish($w{ $n->name });
			is($out, ($g + 1) . "|$to", $n->name . ": the waiting agent returns the new generation ($to) once replayed")
			  or diag($err);
		}
	}
	$cascade->stop;
	$standby->stop;
	$primary->stop;
}
done_testing();
