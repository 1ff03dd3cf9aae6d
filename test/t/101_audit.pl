# The fleet's escape routes are said out loud (ARCHITECTURE §6): CREATE EXTENSION
# warns when agent roles already hold powers that get around the switch
# (roles are cluster-wide and outlive the extension), and the watcher warns
# in the server log as soon as an agent gains a new one — once per finding,
# not again at every look.  The rows themselves are in sql/11_audit.sql.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use KsTest;

my $node = ks_node('audit', no_extension => 1);

sub sql { return $node->safe_psql('postgres', shift); }

# Count the watcher's warnings about one role and power in the log.
sub warnings_about
{
	my ($role, $power) = @_;
	my $log = slurp_file($node->logfile);
	my @hits = $log =~ /WARNING:  agent role "\Q$role\E" holds \Q$power\E, which gets around the kill switch/g;
	return scalar @hits;
}

# Wait (bounded) for the watcher's warning about a role and power.
sub wait_for_warning
{
	my ($role, $power) = @_;
	for (1 .. 600)
	{
		return 1 if warnings_about($role, $power) > 0;
		usleep(100_000);
	}
	return 0;
}

# 1. Powers granted before the extension exists: a WARNING at CREATE EXTENSION.
sql(q{
	CREATE ROLE killswitch_agent NOLOGIN;
	CREATE ROLE bot_reader LOGIN IN ROLE killswitch_agent, pg_read_server_files;
	CREATE ROLE fleet NOLOGIN IN ROLE killswitch_agent;
	CREATE ROLE bot_nested LOGIN BYPASSRLS IN ROLE fleet;
});
my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
is($rc, 0, 'CREATE EXTENSION succeeds with findings');
like($err, qr/WARNING:  2 power\(s\) held by agent roles get around the kill switch/,
	'and warns with their number');
like($err, qr/DETAIL:  Agent roles and their powers: bot_nested: bypassrls; bot_reader: pg_read_server_files\./,
	'naming each role and power, a nested member included');
like($err, qr/HINT:  SELECT \* FROM ks_audit\(\)/, 'and pointing at ks_audit()');
is(sql("SELECT ks_status()->'audit_findings'"), 2, 'ks_status() counts them');

# 2. The watcher logs what it finds, including what was there before.
ok(wait_for_warning('bot_reader', 'pg_read_server_files'), 'the watcher logs a finding');
ok(wait_for_warning('bot_nested', 'bypassrls'), 'and each of them');

# 3. A power granted while running: the watcher notices the role change.
sql('CREATE ROLE bot_writer LOGIN IN ROLE killswitch_agent');
sql('GRANT pg_write_server_files TO bot_writer');
ok(wait_for_warning('bot_writer', 'pg_write_server_files'),
	'a power granted to an agent while the server runs is logged');
sql(q{CREATE FUNCTION public.plant() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS 'BEGIN END'});
sql('ALTER FUNCTION public.plant() OWNER TO bot_writer');
ok(wait_for_warning('bot_writer', 'security_definer_function'),
	'so is a writing SECURITY DEFINER function given to an agent');
# a foothold in the sessions of those who operate the switch: a trigger on a
# table the agent owns (a change to a table wakes the watcher)
sql(q{CREATE TABLE public.bot_tasks (x int);
	CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
	ALTER TABLE public.bot_tasks OWNER TO bot_writer});
sql('CREATE TRIGGER plant AFTER INSERT ON public.bot_tasks FOR EACH ROW EXECUTE FUNCTION public.noop()');
ok(wait_for_warning('bot_writer', 'trigger'), 'a trigger on a table the agent owns is logged');

# 4. Only new findings are logged: the looks that found the later ones saw
#    the earlier ones again and kept quiet about them.
is(warnings_about('bot_reader', 'pg_read_server_files'), 1, 'a finding is logged once');
is(warnings_about('bot_writer', 'pg_write_server_files'), 1, 'a later finding too');
is(sql("SELECT ks_status()->'audit_findings'"), 5, 'ks_status() counts every finding');

# 5. A session keeps its count between calls (audit.c: the audit reads every
#    agent role, and an exporter asks at every scrape), and takes it again
#    at its next call once a finding appears or goes — a change of roles,
#    memberships, functions or tables, in another session or its own.
my $scrape = $node->background_psql('postgres');
sub counted { return $scrape->query_safe("SELECT ks_status()->'audit_findings'"); }
is(counted(), 5, 'a long-lived session counts the findings');
is(counted(), 5, 'and the same again while nothing changed');
sql('ALTER ROLE bot_writer CREATEROLE');
is(counted(), 6, 'an attribute granted in another session counts at its next call');
sql('GRANT pg_execute_server_program TO bot_writer');
is(counted(), 7, 'so does a membership');
sql(q{CREATE FUNCTION public.plant2() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS 'BEGIN END';
	ALTER FUNCTION public.plant2() OWNER TO bot_writer});
is(counted(), 8, 'and a function given to an agent');
sql(q{CREATE TABLE public.bot_more (x int);
	CREATE TRIGGER plant2 AFTER INSERT ON public.bot_more FOR EACH ROW EXECUTE FUNCTION public.noop();
	ALTER TABLE public.bot_more OWNER TO bot_writer});
is(counted(), 9, 'and a trigger on a table it comes to own');
$scrape->query_safe('ALTER ROLE bot_writer REPLICATION');
is(counted(), 10, 'a change the session makes itself counts at once');
$scrape->query_safe('BEGIN; ALTER ROLE bot_writer NOREPLICATION');
is(counted(), 9, 'inside its transaction too');
$scrape->query_safe('ROLLBACK');
is(counted(), 10, 'and not once rolled back');
sql(q{DROP TABLE public.bot_more; DROP FUNCTION public.plant2();
	REVOKE pg_execute_server_program FROM bot_writer;
	ALTER ROLE bot_writer NOCREATEROLE NOREPLICATION});
is(counted(), 5, 'what another session revokes no longer counts');
$scrape->quit;

# 6. No findings, no warning.
sql('DROP TABLE public.bot_tasks; DROP FUNCTION public.noop()');
sql('DROP FUNCTION public.plant(); DROP EXTENSION killswitch');
sql('DROP ROLE bot_reader, bot_nested, bot_writer, fleet');
($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
is($rc, 0, 'CREATE EXTENSION without findings');
unlike($err, qr/WARNING/, 'says nothing');

$node->stop;
done_testing();
