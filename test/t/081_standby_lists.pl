# The critical tasks on a streaming standby: the task rules there follow
# the replicated table at once (the standby reads it; no watcher runs on a
# standby and nothing can write there).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KsTest;

my $primary = ks_node('lists_primary', init => { allows_streaming => 1 }, no_extension => 1);
$primary->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
# the standby starts from a copy of the primary's state file: halt_all
$primary->safe_psql('postgres', "SELECT ks_engage('halt_all', 'standby test', 'tester')");
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('lists_standby');
ks_init_from_backup($standby, $primary, 'b', has_streaming => 1);
$standby->start;

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'a standby');
is($standby->safe_psql('postgres', 'SELECT ks_mode()'), 'halt_all', 'in halt_all');
is($standby->safe_psql('postgres', "SELECT ks_check_task('audit_logging')->>'allowed'"), 'true',
	'a default critical task is allowed on the standby');
is($standby->safe_psql('postgres', "SELECT ks_check_task('standby_task')->>'allowed'"), 'false',
	'another task is not');

$primary->safe_psql('postgres', "INSERT INTO killswitch.critical_tasks (task) VALUES ('standby_task')");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT ks_check_task('standby_task')->>'allowed'"), 'true',
	'a task made critical on the primary is critical on the standby once replayed');
$primary->safe_psql('postgres', "DELETE FROM killswitch.critical_tasks WHERE task = 'audit_logging'");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT ks_check_task('audit_logging')->>'allowed'"), 'false',
	'and a task removed there is removed here');

$standby->stop;
$primary->stop;
done_testing();
