# Two-person release (killswitch.release_approvals = 2): a release by one
# administrator is a request; a second, different administrator confirms it
# within killswitch.approval_timeout; both are in the history.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IPC::Run;
use KsTest;

my $node = ks_node('two_person',
	conf => "killswitch.release_approvals = 2\nkillswitch.approval_timeout = '10min'\n");

$node->safe_psql('postgres', q(
CREATE ROLE alice LOGIN IN ROLE killswitch_admin;
CREATE ROLE bob LOGIN IN ROLE killswitch_admin;
CREATE ROLE carol LOGIN IN ROLE killswitch_operator;
CREATE ROLE rogue LOGIN IN ROLE killswitch_admin, killswitch_agent;
));

sub sql { return $node->safe_psql('postgres', shift); }

# Run SQL as a role; return (exit code, stdout, stderr).
sub as
{
	my ($role, $sqltext) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sqltext, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', $role ]);
	return ($rc, $out, $err);
}

sub newest
{
	return sql("SELECT source || '|' || mode || '|' || coalesce(release_target::text, '-') || '|' || session_role"
		  . " FROM killswitch.events ORDER BY id DESC LIMIT 1");
}

sql("SELECT ks_engage('halt_all', 'incident')");

# 1. The first administrator's release is a request; the mode stays.
my ($rc, $out, $err) = as('alice', "SELECT ks_disengage('root cause fixed', 'alice')");
is($rc, 0, 'a release by one administrator succeeds as a request') or diag($err);
like($err, qr/release to disengaged requested; the mode stays halt_all/, 'and says it is only a request');
is(sql('SELECT ks_mode()'), 'halt_all', 'the mode stays');
is(newest(), 'release_request|halt_all|disengaged|alice', 'the request is recorded: who asked for what');
is(sql("SELECT ks_status()->>'engagement_count'"), '1', 'a request is not counted as an engagement');

# 2. The same administrator cannot confirm her own request.
($rc, $out, $err) = as('alice', "SELECT ks_disengage('again', 'alice')");
isnt($rc, 0, 'the requester cannot confirm her own request');
like($err, qr/a release must be confirmed by a second administrator/, 'with a clear error');
is(sql('SELECT ks_mode()'), 'halt_all', 'still halted');

# 3. Neither an operator nor an agent holding admin can confirm.
($rc, $out, $err) = as('carol', "SELECT ks_disengage('op', 'carol')");
like($err, qr/permission denied/, 'an operator cannot confirm');
($rc, $out, $err) = as('rogue', "SELECT ks_disengage('me too', 'rogue')");
like($err, qr/may never release/, 'an agent holding admin cannot confirm');

# 4. A rolled-back confirmation changes nothing; a second administrator confirms.
as('bob', "BEGIN; SELECT ks_disengage('confirm', 'bob'); ROLLBACK;");
is(sql('SELECT ks_mode()'), 'halt_all', 'a rolled-back confirmation leaves the halt');
is(newest(), 'release_request|halt_all|disengaged|alice', 'and the request pending');
($rc, $out, $err) = as('bob', "SELECT ks_disengage('confirmed after review', 'bob')");
is($rc, 0, 'a second administrator confirms') or diag($err);
like($err, qr/release to disengaged confirmed: requested by "alice"/, 'naming the requester');
is(sql('SELECT ks_mode()'), 'disengaged', 'released');
is(sql(q{SELECT string_agg(source || ':' || mode || ':' || session_role, ' ' ORDER BY id)
         FROM (SELECT * FROM killswitch.events ORDER BY id DESC LIMIT 2) e}),
	'release_request:halt_all:alice sql:disengaged:bob', 'both are in the history, request then release');

# 5. A request for another mode is not a confirmation: it replaces the request.
sql("SELECT ks_engage('emergency', 'incident 2')");
ok($node->poll_query_until('postgres', 'SELECT count(*) FROM killswitch.snapshots', '1'),
	'the emergency takes its snapshot');
as('alice', "SELECT ks_disengage('all clear', 'alice')");
($rc, $out, $err) = as('bob', "SELECT ks_engage('halt_noncritical', 'step down', 'bob')");
like($err, qr/release to halt_noncritical requested/, 'a different target is a new request');
is(sql('SELECT ks_mode()'), 'emergency', 'still in emergency');
as('alice', "SELECT ks_engage('halt_noncritical', 'agreed', 'alice')");
is(sql('SELECT ks_mode()'), 'halt_noncritical', 'the other administrator confirms the new target');
usleep(500_000);    # several looks of the watcher
is(sql(q{SELECT count(*) FROM killswitch.snapshots}), '1',
	'requests made in emergency do not repeat its snapshot');

# 6. A change in between voids a request.
sql("SELECT ks_engage('halt_all', 'incident 3')");
as('alice', "SELECT ks_disengage('done', 'alice')");
as('carol', "SELECT ks_engage('halt_all', 'still seeing errors', 'carol')");
($rc, $out, $err) = as('bob', "SELECT ks_disengage('done', 'bob')");
like($err, qr/release to disengaged requested;/, 'after a change, the old request cannot be confirmed: a new request');
is(sql('SELECT ks_mode()'), 'halt_all', 'still halted');

# 7. A pending request survives a restart (it lives in the history) ...
$node->restart;
as('alice', "SELECT ks_disengage('after restart', 'alice')");
is(sql('SELECT ks_mode()'), 'disengaged', 'a request survives a restart and can be confirmed');

# 8. ... but not its timeout.
sql("ALTER SYSTEM SET killswitch.approval_timeout = '1s'");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('killswitch.approval_timeout') = '1s'");
sql("SELECT ks_engage('halt_all', 'incident 4')");
as('alice', "SELECT ks_disengage('done', 'alice')");
usleep(1_500_000);
($rc, $out, $err) = as('bob', "SELECT ks_disengage('late', 'bob')");
like($err, qr/release to disengaged requested;/, 'an expired request cannot be confirmed: a new request');
is(sql('SELECT ks_mode()'), 'halt_all', 'still halted');

# The command tells a script that a release was only requested: exit status 2
# (bob's request has expired too, so alice's is a new one).
usleep(1_500_000);
my ($cout, $cerr) = ('', '');
IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", '-d', $node->connstr('postgres') . ' user=alice',
	'disengage', '--reason', 'from the command' ], '>', \$cout, '2>', \$cerr);
is($? >> 8, 2, 'killswitch disengage exits 2 when the release is only requested');
like($cout, qr/release requested, awaiting a second administrator; mode stays halt_all/, 'and says so');

# 9. With one approval (the default), a release is immediate again.
sql('ALTER SYSTEM SET killswitch.release_approvals = 1');
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('killswitch.release_approvals') = '1'");
as('alice', "SELECT ks_disengage('single approval', 'alice')");
is(sql('SELECT ks_mode()'), 'disengaged', 'release_approvals = 1: immediate');

# 10. Agents cannot lower the requirement for themselves; the chain verifies.
($rc, $out, $err) = as('rogue', 'SET killswitch.release_approvals = 1');
like($err, qr/cannot be changed now/, 'release_approvals cannot be SET in a session');
is(sql('SELECT ok FROM ks_verify_events()'), 't', 'the history verifies');

done_testing();
