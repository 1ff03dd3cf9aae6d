# No change is lost or applied unseen (compare-and-swap on the state file,
# and the replace that keeps what it did not expect): an SQL change in
# flight while the CLI writes (engage and release), while a writer rewrites
# the file in place as the Python library does, and while the watcher
# judges; aborted changes after a concurrent outside write; a raise whose
# file cannot be written.  An SQL release that finds an unseen outside
# change fails with 40001 (and, retried, commits on top of it); an SQL raise
# never fails (ARCHITECTURE §5.3).  After every trial nothing is lost, and
# the history, the file and shared memory agree on generation and mode.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";
my $node = ks_node('interleave');
my $pgdata = $node->data_dir;
my $dir = "$pgdata/pg_killswitch";
my $file = "$dir/kill_switch_state.json";
my $secret = ks_secret($node);

sub sql { return $node->safe_psql('postgres', shift); }

# Run the command; return (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, '-D', $pgdata, @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

sub now_iso
{
	my ($s, $us) = Time::HiRes::gettimeofday();
	my @t = gmtime($s);
	return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00',
		$t[5] + 1900, $t[4] + 1, @t[3, 2, 1, 0], $us);
}

# Write the file in place, without a lock, as the reference library does;
# a release carries the release signature and names the state it replaces
# (an administrators' tool: the library itself cannot release).
my $release_key = ks_release_key($node);
sub write_in_place
{
	my (%state) = @_;
	my $text = $state{mode} eq 'DISENGAGED'
	  ? ks_release_signed_text($secret, $release_key, engaged_at => now_iso(),
		replaces => ks_held_signature($node), %state)
	  : ks_signed_text($secret, engaged_at => now_iso(), %state);
	open my $fh, '>', $file or die $!;
	print $fh $text;
	close $fh;
}

# The history, the file and shared memory agree, once the watcher has
# judged the file (its generation is the one the server holds).
sub agree
{
	my ($what) = @_;
	my $ok = soon(qq{
		SELECT (ks_status()->>'generation')::bigint = (SELECT max(generation) FROM killswitch.events)
		   AND NOT (ks_status()->>'unrecorded_change')::boolean
		   AND (ks_status()->>'generation')::bigint =
		       (pg_read_file('pg_killswitch/kill_switch_state.json')::jsonb->>'generation')::bigint});
	my $row = sql(q{SELECT ks_status()->>'generation', ks_mode(),
		(SELECT max(generation) FROM killswitch.events),
		(SELECT mode FROM killswitch.events ORDER BY id DESC LIMIT 1)});
	my ($gen, $mode, $hgen, $hmode) = split /\|/, $row;
	my $f = decode_json(slurp_file($file));
	my $agreed = $ok && $gen == $hgen && $gen == $f->{generation}
	  && $mode eq $hmode && uc($mode) eq $f->{mode};
	ok($agreed, "$what: history, file and shared memory agree")
	  or diag("shared memory $gen $mode, history $hgen $hmode, file $f->{generation} $f->{mode}");
	return $agreed;
}

# Wait until a query is true, for 20 seconds at most (a lost change must
# fail the test, not stall it).
sub soon
{
	my ($query) = @_;
	for (1 .. 200)
	{
		return 1 if sql($query) eq 't';
		usleep(100_000);
	}
	return 0;
}

# Does the history hold an event with this reason (and these details)?
sub event_with
{
	my ($reason) = @_;
	return sql("SELECT mode || ' ' || source || ' ' || generation FROM killswitch.events WHERE reason = '$reason'");
}

# A session to hold a change in flight; errors show their SQLSTATE.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('\set VERBOSITY verbose');

# Start a change, hold it in flight, let something else happen, try to commit.
# Returns the error output of the COMMIT ('' when it committed).
sub in_flight
{
	my ($change, $meanwhile, $end) = @_;
	$bg->{stderr} = '';
	$bg->query_safe('BEGIN');
	$bg->query_safe("SELECT 1 FROM $change");
	$meanwhile->();
	$bg->query($end // 'COMMIT');
	my $err = $bg->{stderr};
	$bg->{stderr} = '';
	return $err;
}

my $trials = 20;

# A raise never fails for the file (ARCHITECTURE §5.3): an outside write it
# finds unjudged at its pre-commit write is not overwritten but kept beside
# the file as a raced write, which the watcher judges after the raise's
# commit — an outside engage is applied on top of it; a lower mode (a
# release written for the state before, or a lower engage) is superseded by
# it: not applied, no verdict, a WARNING.  The interleavings are forced: the
# outside write lands while the SQL change holds the lock that orders
# changes, so the watcher cannot judge it before the SQL commit.
my $log_offset;
sub superseded_logged
{
	return slurp_file($node->logfile, $log_offset) =~ /an outside write that raced a change of the kill switch state was superseded by it/;
}

# 1. The CLI writes while an SQL change is in flight, in turn: an SQL
#    release (halt_all to disengaged) is refused with 40001 and the CLI's
#    engage applied with the generation it printed; an SQL raise (to
#    halt_noncritical) commits and the CLI's engage is applied after it; an
#    SQL raise (to emergency) commits and the CLI's release, written for the
#    state before, is superseded.
my $lost = 0;
my $bad_error = 0;
for my $i (1 .. $trials)
{
	my $case = $i % 3;			# 0: SQL release, 1: SQL raise, CLI engage, 2: CLI release
	my $printed;
	sql("SELECT ks_engage('halt_all', 'setup $i', 'tester')") if $case != 1;
	$log_offset = -s $node->logfile;
	my $err = in_flight(
		$case == 0 ? "ks_disengage('sql $i', 'tester')"
		: $case == 1 ? "ks_engage('halt_noncritical', 'sql $i', 'tester')"
		: "ks_engage('emergency', 'sql $i', 'tester')",
		sub {
			my ($rc, $out, $cerr) = $case == 2
			  ? ks('disengage', '--reason', "cli $i", '--by', 'night-shift')
			  : ks('engage', 'emergency', '--reason', "cli $i", '--by', 'night-shift');
			die "cli failed: $cerr" if $rc != 0;
			($printed) = $out =~ /generation (\d+)/;
		});
	if ($case == 0)
	{
		$bad_error++, diag("trial $i: $err")
		  unless $err =~ /40001: the kill switch state changed outside the database while this change was in flight/
		  && $err =~ /HINT:  The outside change is being applied; retry\./;
		soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'cli $i'")
		  or diag("trial $i: the CLI's change was not recorded");
		$lost++, diag("trial $i: cli event '" . event_with("cli $i") . "' (printed $printed), sql event '"
			  . event_with("sql $i") . "'")
		  unless event_with("cli $i") eq "emergency cli $printed" && event_with("sql $i") eq '';
	}
	elsif ($case == 1)
	{
		$bad_error++, diag("trial $i: $err") if $err ne '';
		soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'cli $i'")
		  or diag("trial $i: the CLI's change was not recorded");
		my $order = sql("SELECT string_agg(mode || ' ' || source, ',' ORDER BY id) FROM killswitch.events "
			  . "WHERE reason IN ('sql $i', 'cli $i')");
		$lost++, diag("trial $i: $order") unless $order eq 'halt_noncritical sql,emergency cli';
	}
	else
	{
		$bad_error++, diag("trial $i: $err") if $err ne '';
		soon("SELECT ks_mode() = 'emergency'") or $lost++;
		for (1 .. 300) { last if superseded_logged(); usleep(100_000); }
		$lost++, diag("trial $i: the superseded release was not logged") unless superseded_logged();
		$lost++, diag("trial $i: the release was applied") if event_with("cli $i") ne '';
		$lost++ unless event_with("sql $i") =~ /^emergency sql \d+$/;
	}
	is(sql('SELECT ks_mode()'), 'emergency', "trial $i: emergency in force") or $lost++;
	$lost++, diag("trial $i: integrity " . sql("SELECT ks_status()->>'integrity'"))
	  unless sql("SELECT ks_status()->>'integrity'") eq 'ok';
	agree("CLI trial $i") or last;
	sql("SELECT ks_disengage('reset $i', 'tester')");
}
is($lost, 0, "$trials CLI writes during an SQL change: a release refused and the CLI's engage applied with its generation; "
	  . "a raise committed, an engage applied after it, a release superseded");
is($bad_error, 0, 'each refused release is a serialization failure (40001) that says to retry; every raise committed');

# 2. A writer that rewrites the file in place (no lock, no generation)
#    while an SQL change is in flight, in turn: an SQL release is refused
#    and the write (emergency) applied; an SQL raise commits and the write
#    (halt_all) is applied after it; an SQL raise (emergency) commits and the
#    write (a release) is superseded.
$lost = 0;
for my $i (1 .. $trials)
{
	my $case = $i % 3;
	sql("SELECT ks_engage('halt_all', 'setup py $i', 'tester')") if $case != 1;
	$log_offset = -s $node->logfile;
	my $err = in_flight(
		$case == 0 ? "ks_disengage('sql py $i', 'tester')"
		: $case == 1 ? "ks_engage('halt_noncritical', 'sql py $i', 'tester')"
		: "ks_engage('emergency', 'sql py $i', 'tester')",
		sub {
			write_in_place(
				mode => $case == 0 ? 'EMERGENCY' : $case == 1 ? 'HALT_ALL' : 'DISENGAGED',
				reason => "py $i", triggered_by => 'cost_governor');
		});
	if ($case == 0)
	{
		$lost++, diag("trial $i: $err") unless $err =~ /40001/;
		soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'py $i'")
		  or diag("trial $i: the in-place write was not recorded");
		$lost++, diag("trial $i: " . event_with("py $i") . ' / ' . event_with("sql py $i"))
		  unless event_with("py $i") =~ /^emergency file \d+$/ && event_with("sql py $i") eq '';
	}
	elsif ($case == 1)
	{
		$lost++, diag("trial $i: $err") if $err ne '';
		soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'py $i'")
		  or diag("trial $i: the in-place write was not recorded");
		my $order = sql("SELECT string_agg(mode || ' ' || source, ',' ORDER BY id) FROM killswitch.events "
			  . "WHERE reason IN ('sql py $i', 'py $i')");
		$lost++, diag("trial $i: $order") unless $order eq 'halt_noncritical sql,halt_all file';
	}
	else
	{
		$lost++, diag("trial $i: $err") if $err ne '';
		for (1 .. 300) { last if superseded_logged(); usleep(100_000); }
		$lost++, diag("trial $i: the superseded release was not logged") unless superseded_logged();
		$lost++ unless event_with("py $i") eq '' && event_with("sql py $i") =~ /^emergency sql \d+$/;
	}
	$lost++ unless sql("SELECT ks_status()->>'integrity'") eq 'ok';
	agree("in-place trial $i") or last;
	sql("SELECT ks_disengage('reset py $i', 'tester')");
}
is($lost, 0, "$trials in-place writes during an SQL change: none lost; a release refused, a raise committed "
	  . "with an engage applied after it and a release superseded");

# 3a. An in-place write just before an autocommit release: either the
#    watcher applied it first (the release commits on top) or the release is
#    refused and, retried, commits on top.  Nothing lost, in that order.
$lost = 0;
for my $i (1 .. $trials)
{
	sql("SELECT ks_engage('halt_all', 'setup early $i', 'tester')");
	write_in_place(mode => 'EMERGENCY', reason => "early $i", triggered_by => 'agent');
	usleep(3000 * ($i % 5));
	my $tries = 0;
	my ($rc, $out, $err);
	do
	{
		# retried until the watcher has applied the outside change: a minute
		# at most (fifty quick tries were a few seconds, short of a loaded look)
		usleep(100_000) if $tries++;
		($rc, $out, $err) = $node->psql('postgres',
			"SELECT 1 FROM ks_engage('halt_noncritical', 'after $i', 'tester')");
	} while ($rc != 0 && $err =~ /changed outside the database/ && $tries < 600);
	$lost++ if $rc != 0;
	soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'early $i'");
	my $order = sql("SELECT string_agg(reason, ',' ORDER BY id) FROM killswitch.events "
		  . "WHERE reason IN ('early $i', 'after $i')");
	$lost++, diag("trial $i: $order") unless $order eq "early $i,after $i";
	agree("early write trial $i") or last;
	sql("SELECT ks_disengage('reset early $i', 'tester')");
}
is($lost, 0, "$trials in-place writes racing an autocommit change: both recorded, in order");

# 3b. An in-place write just before an autocommit raise: the raise commits
#    at once; the write is applied before it (the watcher was first), or
#    judged while the raise held the lock that orders changes and recorded
#    after it at the raise's level (ARCHITECTURE §12), or — lower than the
#    raise, found unjudged by its write — superseded by it; never a verdict
#    (it has no generation, and would once have been judged a replay).
$lost = 0;
for my $i (1 .. $trials)
{
	write_in_place(mode => 'HALT_NONCRITICAL', reason => "early b $i", triggered_by => 'agent');
	usleep(3000 * ($i % 5));
	my ($rc, $out, $err) = $node->psql('postgres',
		"SELECT 1 FROM ks_engage('halt_all', 'after b $i', 'tester')");
	$lost++, diag("trial $i: $err") if $rc != 0;
	agree("early write trial $i") or last;
	my $order = sql("SELECT string_agg(reason, ',' ORDER BY id) FROM killswitch.events "
		  . "WHERE reason IN ('early b $i', 'after b $i')");
	$lost++, diag("trial $i: $order")
	  unless $order eq "early b $i,after b $i" || $order eq "after b $i,early b $i" || $order eq "after b $i";
	$lost++ unless sql("SELECT ks_mode() || ' ' || (ks_status()->>'integrity')") eq 'halt_all ok';
	sql("SELECT ks_disengage('reset early b $i', 'tester')");
}
is($lost, 0, "$trials in-place writes racing an autocommit raise: the raise commits, the write applied before it or superseded");

# 4a. While the watcher judges: the CLI writes and an SQL release follows at
#    once, retried on a serialization failure.  Both recorded, CLI first.
$lost = 0;
for my $i (1 .. $trials)
{
	sql("SELECT ks_engage('halt_all', 'setup race $i', 'tester')");
	my ($rc, $out, $err) = ks('engage', 'emergency', '--reason', "cli race $i");
	my ($printed) = $out =~ /generation (\d+)/;
	my $tries = 0;
	do
	{
		# retried until the watcher has applied the outside change: a minute
		# at most (fifty quick tries were a few seconds, short of a loaded look)
		usleep(100_000) if $tries++;
		($rc, $out, $err) = $node->psql('postgres',
			"SELECT 1 FROM ks_engage('halt_noncritical', 'sql race $i', 'tester')");
	} while ($rc != 0 && $err =~ /changed outside the database/ && $tries < 600);
	$lost++ if $rc != 0;
	my $order = sql("SELECT string_agg(reason || ' ' || generation, ',' ORDER BY id) FROM killswitch.events "
		  . "WHERE reason IN ('cli race $i', 'sql race $i')");
	$lost++, diag("trial $i: $order") unless $order =~ /^cli race $i $printed,sql race $i \d+$/;
	agree("watcher race trial $i") or last;
	sql("SELECT ks_disengage('reset race $i', 'tester')");
}
is($lost, 0, "$trials CLI writes racing an SQL release: both recorded, the CLI's with its generation");

# 4b. While the watcher judges: the CLI writes and an SQL raise follows at
#    once.  The CLI's engage is recorded first with its generation, or after
#    the raise (judged while the raise held the lock that orders changes),
#    or — found unjudged by the raise, and lower than it — superseded.
$lost = 0;
for my $i (1 .. $trials)
{
	my ($rc, $out, $err) = ks('engage', 'halt_noncritical', '--reason', "cli race b $i");
	my ($printed) = $out =~ /generation (\d+)/;
	($rc, $out, $err) = $node->psql('postgres',
		"SELECT 1 FROM ks_engage('halt_all', 'sql race b $i', 'tester')");
	$lost++, diag("trial $i: $err") if $rc != 0;
	agree("watcher race trial $i") or last;
	my $order = sql("SELECT string_agg(reason || ' ' || generation, ',' ORDER BY id) FROM killswitch.events "
		  . "WHERE reason IN ('cli race b $i', 'sql race b $i')");
	$lost++, diag("trial $i: $order")
	  unless $order =~ /^cli race b $i $printed,sql race b $i \d+$/ || $order =~ /^sql race b $i \d+(,cli race b $i \d+)?$/;
	sql("SELECT ks_disengage('reset race b $i', 'tester')");
}
is($lost, 0, "$trials CLI writes racing an SQL raise: recorded first with its generation, or superseded");

# 5. Aborted changes after a concurrent outside write: a rollback writes
#    nothing, so the outside change is applied and nothing is put back.
$lost = 0;
for my $i (1 .. $trials)
{
	my $err = in_flight("ks_engage('halt_all', 'rolled back $i', 'tester')",
		sub {
			if ($i % 2)
			{
				ks('engage', 'halt_noncritical', '--reason', "kept $i");
			}
			else
			{
				write_in_place(mode => 'HALT_NONCRITICAL', reason => "kept $i", triggered_by => 'agent');
			}
		},
		'ROLLBACK');
	$lost++ if $err ne '';
	soon("SELECT count(*) = 1 FROM killswitch.events WHERE reason = 'kept $i'")
	  or $lost++;
	$lost++ unless sql('SELECT ks_mode()') eq 'halt_noncritical'
	  && event_with("rolled back $i") eq '';
	agree("rollback trial $i") or last;
	sql("SELECT ks_disengage('reset rollback $i', 'tester')");
}
is($lost, 0, "$trials rollbacks after an outside write: the outside change stands");

# 6. An abort after the pre-commit write (a serialization failure found at
#    commit) puts back exactly the bytes that were there, and removes the
#    in-flight mark; nothing else is said.
sql('CREATE TABLE skew (k int PRIMARY KEY, v int); INSERT INTO skew VALUES (1, 0), (2, 0)');
my $before = slurp_file($file);
my $other = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE');
$other->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE');
$bg->query_safe('SELECT sum(v) FROM skew WHERE k = 1');
$other->query_safe('SELECT sum(v) FROM skew WHERE k = 2');
$bg->query_safe('UPDATE skew SET v = 1 WHERE k = 2');
$other->query_safe('UPDATE skew SET v = 1 WHERE k = 1');
$bg->query_safe("SELECT 1 FROM ks_engage('emergency', 'aborted at commit', 'tester')");
$other->query_safe('COMMIT');
$bg->{stderr} = '';
$bg->query('COMMIT');
my $err = $bg->{stderr};
$bg->{stderr} = '';
like($err, qr/40001: could not serialize access/, 'the change is aborted at commit, after its pre-commit write');
unlike($err, qr/could not restore/, 'no warning about restoring: the undo put the bytes back');
is(slurp_file($file), $before, 'the state file holds exactly its bytes from before');
is(sql("SELECT count(*) FROM pg_ls_dir('pg_killswitch/in_flight')"), '0', 'and the mark is gone');
is(sql('SELECT ks_mode()'), 'disengaged', 'the aborted change never took effect');
is(event_with('aborted at commit'), '', 'nor is it in the history');
$other->quit;

# 7. A raise whose file cannot be written commits anyway (ARCHITECTURE
#    §5.3): a WARNING, the problem in ks_status(), and the watcher writes the
#    file once it can.
chmod 0500, $dir;
$bg->{stderr} = '';
$bg->query("SELECT 1 FROM ks_engage('halt_all', 'cannot write', 'tester')");
$err = $bg->{stderr};
$bg->{stderr} = '';
like($err, qr/WARNING:  01000: could not write the kill switch state file; the change is in force without it/,
	'an unwritable state directory: a WARNING');
unlike($err, qr/ERROR/, 'and no error: the raise committed');
unlike($err, qr/could not restore/, 'with no warning about restoring what was never written');
is(sql('SELECT ks_mode()'), 'halt_all', 'it is in force');
like(sql("SELECT ks_status()->>'file_problem'"), qr/could not create/, 'ks_status() shows why the file lags');
chmod 0700, $dir;
ok($node->poll_query_until('postgres', "SELECT ks_status()->>'file_problem' IS NULL"),
	'the watcher writes the file once it can');
agree('after a failed write');
is(sql("SELECT reason FROM killswitch.events ORDER BY id DESC LIMIT 1"), 'cannot write',
	'recorded once');

$bg->quit;
$node->stop;
done_testing();
