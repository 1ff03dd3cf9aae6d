# The killswitch command on a fleet of clusters: several -d (or
# --dbname-file) get one change in parallel; each cluster's result is printed
# labelled by the cluster, never with a password; an unreachable cluster or
# one without the extension fails alone; the exit status is the worst
# (1, then 3, then 2, then 0).  One -d behaves as it always did.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use IPC::Run;
use KsTest;

my $cli = "$ENV{KS_SRCDIR}/src/cli/killswitch";

my %node = map { $_ => ks_node("fleet_$_") } qw(a b c);
my $noext = ks_node('fleet_noext', no_extension => 1);
my $host = $node{a}->host;
my $dead_port = PostgreSQL::Test::Cluster::get_free_port();

# Every conninfo carries a password (trust ignores it): none may show.
my %secret = (a => 'PwA-9f3k', b => 'PwB-x81q', c => 'PwC-u7r2',
	dead => 'PwDead-44z', noext => 'PwNoext-5m', admin => 'PwAdmin-0p');
my %conn = (
	a => $node{a}->connstr('postgres') . " password=$secret{a}",
	b => $node{b}->connstr('postgres') . " password='$secret{b}'",
	# a URI, its password in the query
	c => "postgresql:///postgres?host=$host&port=" . $node{c}->port . "&password=$secret{c}",
	dead => "host=$host port=$dead_port dbname=postgres password=$secret{dead}",
	noext => $noext->connstr('postgres') . " password=$secret{noext}");
my %label = map { $_ => "host=$host port=" . ($_ eq 'dead' ? $dead_port : $_ eq 'noext' ? $noext->port : $node{$_}->port) . ' dbname=postgres' }
  qw(a b c dead noext);
my @fleet = qw(a b c dead noext);

my $all_output = '';

# Run the command; return (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '>', \$out, '2>', \$err);
	$all_output .= $out . $err;
	return ($? >> 8, $out, $err);
}

sub sql { my ($n, $q) = @_; return $node{$n}->safe_psql('postgres', $q); }

sub dflags { return map { ('-d', $conn{$_}) } @_; }

# The stdout lines and stderr lines of one cluster.
sub lines_of
{
	my ($text, $who) = @_;
	return grep { index($_, "[$label{$who}] ") == 0 } split /\n/, $text;
}

for my $n (qw(a b c))
{
	sql($n, 'CREATE ROLE alice LOGIN IN ROLE killswitch_admin');
}

# 1. Engage halt_all on all five through -d.
my ($rc, $out, $err) = ks(dflags(@fleet), 'engage', 'halt_all', '--reason', 'fleet halt', '--by', 'oncall');
is($rc, 1, 'engage on a fleet with an unreachable cluster exits 1 (the worst)');
for my $n (qw(a b c))
{
	is(sql($n, 'SELECT ks_mode()'), 'halt_all', "cluster $n is halted");
	is(sql($n, "SELECT count(*) FROM killswitch.events WHERE reason = 'fleet halt' AND triggered_by = 'oncall' AND mode = 'halt_all'"),
		1, "and its event is recorded on $n");
	my @l = lines_of($out, $n);
	is(scalar @l, 1, "one line on stdout for $n");
	like($l[0] // '', qr/^\[\Q$label{$n}\E\] halt_all \(event \d+, generation \d+\)$/, "saying what $n did");
}
my @dead = lines_of($err, 'dead');
ok(@dead >= 1, 'the unreachable cluster has its line on stderr');
like($dead[0] // '', qr/^\[\Q$label{dead}\E\] error: connection to server .* failed/, 'saying the connection failed');
is(scalar lines_of($out, 'dead'), 0, 'and nothing on stdout');
my @noext = lines_of($err, 'noext');
like($noext[0] // '', qr/^\[\Q$label{noext}\E\] error: .*does not exist/, 'the cluster without the extension says why it failed');
like($err, qr/^killswitch: error: the command failed on 2 of 5 clusters$/m, 'a last line counts the failures');
is($noext->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'killswitch'"), 0,
	'(that cluster indeed has no extension)');

# 2. status: the worst exit status, and --json as one array.
($rc, $out) = ks(dflags(qw(a b c)), 'status');
is($rc, 2, 'status of three engaged clusters exits 2');
is(scalar(() = $out =~ /^\[[^\]]+\] mode:\s+halt_all$/mg), 3, 'each says halt_all, labelled');
($rc, $out) = ks(dflags(qw(a b c dead)), '--json', 'status');
is($rc, 1, 'status with an unreachable cluster exits 1: an error is worse than engaged');
my $arr = eval { decode_json($out) };
is(ref $arr, 'ARRAY', 'status --json on several clusters prints one JSON array') or diag($out);
is(join(',', map { $_->{cluster} } @$arr), join(',', map { $label{$_} } qw(a b c dead)),
	'one element per cluster, in the order given, with its label');
is(join(',', map { $_->{exit} } @$arr), '2,2,2,1', 'each with its exit status');
is(join(',', map { $_->{result} ? $_->{result}{mode} : 'null' } @$arr), 'HALT_ALL,HALT_ALL,HALT_ALL,null',
	'and its result: the members one -d prints');
like($arr->[3]{error} // '', qr/connection to server/, 'the failure carries its error');

# 3. Release with the admin on all three.
my %admin = map { $_ => $node{$_}->connstr('postgres') . " user=alice password=$secret{admin}" } qw(a b c);
($rc, $out, $err) = ks((map { ('-d', $admin{$_}) } qw(a b c)), 'disengage', '--reason', 'fleet resolved', '--by', 'alice');
is($rc, 0, 'the admin releases three clusters: exit 0') or diag($err);
for my $n (qw(a b c))
{
	is(sql($n, 'SELECT ks_mode()'), 'disengaged', "cluster $n is released");
	is(sql($n, "SELECT session_role FROM killswitch.events WHERE reason = 'fleet resolved'"), 'alice',
		"as alice on $n");
}
($rc) = ks(dflags(qw(a b c)), 'status');
is($rc, 0, 'status of three released clusters exits 0');

# 4. The same through --dbname-file: comments, blank lines, blanks around.
my $dir = PostgreSQL::Test::Utils::tempdir();
my $file = "$dir/fleet.conf";
open my $fh, '>', $file or die $!;
print $fh "# production fleet\n\n";
print $fh "  $conn{$_}  \n" for @fleet;
print $fh "   # end\n";
close $fh;
($rc, $out, $err) = ks('--dbname-file', $file, 'engage', 'halt_all', '--reason', 'file halt', '--by', 'oncall');
is($rc, 1, 'engage through --dbname-file exits 1 (the worst)');
for my $n (qw(a b c))
{
	is(sql($n, "SELECT ks_mode() || ' ' || count(*) FROM killswitch.events WHERE reason = 'file halt'"),
		'halt_all 1', "cluster $n halted through the file, its event recorded");
	like((lines_of($out, $n))[0] // '', qr/ halt_all \(event \d+, generation \d+\)$/, "with a line for $n");
}
ok(scalar lines_of($err, 'dead'), 'and a line for the unreachable one');

# 5. Tampered is worse than engaged, an error worse than tampered.
open $fh, '>', $node{c}->data_dir . '/pg_killswitch/kill_switch_state.json' or die $!;
print $fh '{"mode": "DISENGAGED"}';
close $fh;
ok($node{c}->poll_query_until('postgres', "SELECT ks_status()->>'integrity'", 'tampered'),
	'cluster c judges an unsigned file tampered');
($rc) = ks(dflags(qw(a b c)), 'status');
is($rc, 3, 'status of two engaged and one tampered cluster exits 3');
($rc) = ks(dflags(qw(a c dead)), 'status');
is($rc, 1, 'with an unreachable one too, it exits 1');

# 6. Release with the admin on all, through a file.
my $afile = "$dir/admins.conf";
open $fh, '>', $afile or die $!;
print $fh "$admin{$_}\n" for qw(a b c);
close $fh;
($rc, $out, $err) = ks('--dbname-file', $afile, 'disengage', '--reason', 'file resolved', '--by', 'alice');
is($rc, 0, 'the admin releases all three through a file') or diag($err);
is(join(',', map { sql($_, 'SELECT ks_mode()') } qw(a b c)), 'disengaged,disengaged,disengaged',
	'all three are released, the tampered one too');

# 6b. In parallel, and never held up: while another change holds cluster
# a's history, the engage is in force there at once and its event follows
# (ARCHITECTURE §5.3): a, b and c are all done and printed.
my $bg = $node{a}->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe("SELECT ks_engage('halt_all', 'held in flight', 'test')");
my ($hout, $herr) = ('', '');
my $timer = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
my $h = IPC::Run::start([ $cli, dflags(qw(a b c)), 'engage', 'halt_all', '--reason', 'parallel' ],
	'>', \$hout, '2>', \$herr, $timer);
$h->finish;
my $hrc = $? >> 8;
$all_output .= $hout . $herr;
is($hrc, 0, 'the command ends with exit 0 while a\'s history is held');
ok(lines_of($hout, 'b') && lines_of($hout, 'c'), 'b and c are done');
like((lines_of($hout, 'a'))[0] // '', qr/ halt_all \(in force; its event follows\)$/, 'a is in force, its event to follow');
$bg->query_safe('COMMIT');
$bg->quit;
ok($node{a}->poll_query_until('postgres', "SELECT count(*) FROM killswitch.events WHERE reason = 'parallel'", '1'),
	'a records the event once its history is free');
is(join(',', map { sql($_, "SELECT count(*) FROM killswitch.events WHERE reason = 'parallel'") } qw(a b c)),
	'1,1,1', 'each recorded the change');
($rc, $out, $err) = ks('--dbname-file', $afile, 'disengage', '--reason', 'parallel resolved', '--by', 'alice');
is($rc, 0, 'released again') or diag($err);

# 7. Bad input changes nothing.
my $before = sql('a', 'SELECT count(*) FROM killswitch.events');
open $fh, '>', "$dir/bad.conf" or die $!;
print $fh "$conn{a}\nhost=$host port='unterminated password=$secret{dead}\n";
close $fh;
($rc, $out, $err) = ks('--dbname-file', "$dir/bad.conf", 'engage', 'halt_all', '--reason', 'never');
is($rc, 1, 'a connection string libpq cannot parse: exit 1');
like($err, qr/invalid connection string \(\Q$dir\E\/bad.conf:2\).*\n.*No cluster was changed/, 'naming its line');
is(sql('a', 'SELECT count(*) FROM killswitch.events'), $before, 'and the valid line before it was not applied');
($rc, $out, $err) = ks('-D', $node{a}->data_dir, dflags(qw(a b)), 'status');
is($rc, 1, '-D with -d is refused');
like($err, qr/cannot use -D together with -d or --dbname-file/, 'clearly');
open $fh, '>', "$dir/empty.conf" or die $!;
print $fh "# nothing yet\n\n";
close $fh;
($rc, $out, $err) = ks('--dbname-file', "$dir/empty.conf", 'engage', 'halt_all', '--reason', 'x');
is($rc, 1, 'a file without a connection string is refused');
like($err, qr/names no connection string/, 'saying so');

# 8. One -d: exactly as before — no label, no array.
($rc, $out, $err) = ks('-d', $conn{a}, 'engage', 'halt_noncritical', '--reason', 'single');
is($rc, 0, 'one -d: engage exits 0');
like($out, qr/\Ahalt_noncritical \(event \d+, generation \d+\)\n\z/, 'and prints the one unlabelled line');
is($err, '', 'nothing on stderr');
($rc, $out) = ks('-d', $conn{a}, '--json', 'status');
is($rc, 2, 'one -d: status exits 2');
is(ref(decode_json($out)), 'HASH', 'and --json prints one object, not an array');
($rc, $out, $err) = ks('-d', $conn{dead}, 'status');
is($rc, 1, 'one -d to a dead port exits 1');
like($err, qr/\Akillswitch: error: connection to server/, 'with the message it always printed');

# 9. No password ever reached the output.
for my $k (sort keys %secret)
{
	unlike($all_output, qr/\Q$secret{$k}\E/, "the password of $k never appears in any output");
}

$_->stop for values %node;
$noext->stop;
done_testing();
