# The metrics of metrics/queries.yaml through the real exporter: Debian's
# prometheus-postgres-exporter (0.11), started on loopback on a free port
# against a primary and against its streaming standby, connecting as a
# role without any privilege.  Each value is read from /metrics as
# Prometheus would scrape it, and seen to move: an engage, an emergency, an
# agent role with a power that gets around the switch, a refused claim, a
# tamper verdict, a watcher stopped (SIGSTOP) and going again, the release;
# the standby's generation follows the primary's, and its upstream_* metrics
# say how it hears its primary (lost, past killswitch.standby_max_silence,
# once the primary is gone).  Every killswitch_ metric
# the alert rules (alerts/killswitch.rules.yml) read is in the scrape.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IPC::Run;
use Time::HiRes qw(usleep);
use KsTest;

my $src = $ENV{KS_SRCDIR} // '.';
my $queries = "$src/metrics/queries.yaml";
my ($exporter) = grep { -x $_ }
  map { "$_/prometheus-postgres-exporter" } (split(/:/, $ENV{PATH}), '/usr/bin');
if (!$exporter)
{
	fail('prometheus-postgres-exporter is installed (Debian: prometheus-postgres-exporter; scripts/setup)');
	done_testing();
	exit;
}

my $primary = ks_node('metrics', init => { allows_streaming => 1 });
$primary->safe_psql('postgres', q{
CREATE ROLE prometheus LOGIN;      -- the exporter's role: no privilege at all
CREATE ROLE bot LOGIN IN ROLE killswitch_agent;
CREATE TABLE claims (x int);
GRANT INSERT ON claims TO bot;
});
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('metrics_standby');
ks_init_from_backup($standby, $primary, 'b1', has_streaming => 1);
$standby->start;

# ---------------------------------------------------------------- the exporter
my @exporters;

# The real exporter for a node, as role prometheus, on 127.0.0.1 and a free
# port; returns its port.
sub start_exporter
{
	my ($node) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $log = "$PostgreSQL::Test::Utils::log_path/exporter_" . $node->name . '.log';
	local $ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port
	  . ' user=prometheus dbname=postgres sslmode=disable';
	push @exporters, IPC::Run::start(
		[ $exporter, "--web.listen-address=127.0.0.1:$port",
		  "--extend.query-path=$queries", '--disable-settings-metrics' ],
		'<', \undef, '>', $log, '2>&1');
	return $port;
}

END { local $?; $_->kill_kill for @exporters; }

# One scrape of /metrics: { name => [ { labels => {...}, value => N }, ... ] }.
sub scrape
{
	my ($port) = @_;
	my $res = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$port/metrics");
	return {} unless $res->{success};
	my %m;
	for my $line (split /\n/, $res->{content})
	{
		next if $line =~ /^#/;
		my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
		  or next;
		my %l = ($labels // '') =~ /([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g;
		push @{ $m{$name} }, { labels => \%l, value => $value + 0 };
	}
	return \%m;
}

# The value of a killswitch metric (it has one series per server), or undef.
sub value
{
	my ($m, $name) = @_;
	my $series = $m->{$name} or return undef;
	return @$series == 1 ? $series->[0]{value} : undef;
}

# Scrape until every metric has the value wanted (or the time is up); the
# last scrape's values, for the checks.
sub scrape_until
{
	my ($port, %want) = @_;
	my $m;
	for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		$m = scrape($port);
		my $all = 1;
		while (my ($name, $v) = each %want)
		{
			my $got = value($m, $name);
			$all = 0 unless defined $got && (ref $v ? $v->($got) : $got == $v);
		}
		last if $all;
		usleep(100_000);
	}
	return $m;
}

# Check the values of several metrics in one scrape.
sub values_are
{
	my ($m, $what, %want) = @_;
	for my $name (sort keys %want)
	{
		my $got = value($m, $name);
		if (ref $want{$name})
		{
			ok(defined $got && $want{$name}->($got), "$what: $name ("
				  . ($got // 'missing') . ')');
		}
		else
		{
			is($got, $want{$name}, "$what: $name");
		}
	}
}

my $pport = start_exporter($primary);
my $sport = start_exporter($standby);

# ---------------------------------------------------------------- at rest
# the watcher may still say, for a moment, that the extension was missing
# when it started (ks_node creates it after the start)
my $m = scrape_until($pport, killswitch_mode => 0, killswitch_watcher_problem => 0);
is(value($m, 'pg_exporter_user_queries_load_error'), 0,
	'the exporter loaded metrics/queries.yaml without error');
values_are($m, 'disengaged primary',
	killswitch_mode => 0, killswitch_engaged => 0, killswitch_generation => 0,
	killswitch_tampered => 0, killswitch_unsigned => 0, killswitch_unrecorded_change => 0,
	killswitch_watcher_problem => 0, killswitch_audit_findings => 0, killswitch_refused_claims => 0,
	killswitch_scopes_active => 0,
	killswitch_watcher_age_seconds => sub { $_[0] >= 0 && $_[0] < 5 },
	killswitch_since_seconds => sub { abs($_[0] - time) < 3600 });
is($m->{killswitch_mode}[0]{labels}{role}, 'primary', 'the primary\'s metrics carry role="primary"');

# every metric the alert rules read is exposed
my $rules = slurp_file("$src/alerts/killswitch.rules.yml");
my %used = map { $_ => 1 } $rules =~ /\b(killswitch_[a-z_]+)\b/g;
ok(scalar(%used), 'the alert rules read killswitch metrics');
is_deeply([ grep { !defined value($m, $_) } sort keys %used ], [],
	'every killswitch metric the alert rules read is in the scrape: ' . join(', ', sort keys %used));

$m = scrape_until($sport, killswitch_mode => 0);
values_are($m, 'disengaged standby', killswitch_mode => 0, killswitch_generation => 0,
	killswitch_tampered => 0);
is(($m->{killswitch_mode} // [ {} ])->[0]{labels}{role}, 'standby',
	'the standby\'s metrics carry role="standby"');

# ---------------------------------------------------------------- halt_all, emergency
$primary->safe_psql('postgres', "SELECT ks_engage('halt_all', 'metrics test', 'tester')");
$m = scrape($pport);    # no cache: the next scrape reads the committed state
values_are($m, 'after ks_engage(halt_all)',
	killswitch_mode => 2, killswitch_engaged => 1, killswitch_generation => 1);
$m = scrape_until($sport, killswitch_generation => 1);
values_are($m, 'the standby after the engage', killswitch_mode => 2, killswitch_generation => 1);
# a scoped halt is counted, and leaves the fleet's metrics as they are
$primary->safe_psql('postgres', "SELECT ks_engage('emergency', 'one agent', 'tester', scope => 'bot')");
$m = scrape($pport);
values_are($m, 'with a scope active', killswitch_scopes_active => 1, killswitch_mode => 2,
	killswitch_generation => 1);
$primary->safe_psql('postgres', "SELECT ks_disengage('scope done', scope => 'bot')");

# an agent's claim to a critical task nobody granted it: refused and counted
my ($rc, $out, $err) = $primary->psql('postgres',
	"SET killswitch.task = 'audit_logging'; INSERT INTO claims VALUES (1)",
	extra_params => [ '-U', 'bot' ]);
like($err, qr/not granted to role "bot"/, 'an agent\'s ungranted claim is refused');
values_are(scrape($pport), 'after a refused claim', killswitch_refused_claims => 1);

$primary->safe_psql('postgres', "SELECT ks_engage('emergency', 'metrics test', 'tester')");
values_are(scrape($pport), 'after ks_engage(emergency)',
	killswitch_mode => 3, killswitch_engaged => 1, killswitch_generation => 2);

# ---------------------------------------------------------------- audit findings
$primary->safe_psql('postgres', 'CREATE ROLE risky LOGIN CREATEROLE IN ROLE killswitch_agent');
values_are(scrape($pport), 'an agent role with CREATEROLE', killswitch_audit_findings => 1);
$primary->safe_psql('postgres', 'DROP ROLE risky');
values_are(scrape($pport), 'the role dropped', killswitch_audit_findings => 0);

# ---------------------------------------------------------------- the watcher stopped
my $watcher = $primary->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'killswitch watcher'");
ok($watcher =~ /^\d+$/, "the primary's watcher runs (pid $watcher)");
kill 'STOP', $watcher;
$m = scrape_until($pport, killswitch_watcher_age_seconds => sub { $_[0] >= 2 });
kill 'CONT', $watcher;
values_are($m, 'the watcher stopped', killswitch_watcher_age_seconds => sub { $_[0] >= 2 });
$m = scrape_until($pport, killswitch_watcher_age_seconds => sub { $_[0] < 1 });
values_are($m, 'the watcher going again', killswitch_watcher_age_seconds => sub { $_[0] < 1 });

# ---------------------------------------------------------------- a tamper verdict
$primary->safe_psql('postgres', "SELECT ks_disengage('metrics test: released', 'tester')");
values_are(scrape($pport), 'after ks_disengage',
	killswitch_mode => 0, killswitch_engaged => 0, killswitch_generation => 3, killswitch_tampered => 0);
append_to_file($primary->data_dir . '/pg_killswitch/kill_switch_state.json.new', "not json\n");
rename($primary->data_dir . '/pg_killswitch/kill_switch_state.json.new',
	$primary->data_dir . '/pg_killswitch/kill_switch_state.json')
  or die "rename: $!";
$m = scrape_until($pport, killswitch_tampered => 1);
values_are($m, 'the state file replaced by garbage',
	killswitch_tampered => 1, killswitch_mode => 2, killswitch_engaged => 1);
my $gen = value($m, 'killswitch_generation');
$m = scrape_until($sport, killswitch_generation => $gen);
values_are($m, 'the standby follows the verdict', killswitch_generation => $gen,
	killswitch_mode => 2, killswitch_tampered => 1);

$primary->safe_psql('postgres', "SELECT ks_disengage('metrics test: verdict cleared', 'tester')");
$m = scrape($pport);
values_are($m, 'the verdict released', killswitch_tampered => 0, killswitch_mode => 0,
	killswitch_generation => $gen + 1);
$m = scrape_until($sport, killswitch_generation => $gen + 1);
values_are($m, 'the standby at its primary\'s generation',
	killswitch_generation => $gen + 1, killswitch_mode => 0, killswitch_tampered => 0);

# ---------------------------------------------------------------- how a standby hears its primary
values_are(scrape($pport), 'a primary reports 0 for what only standbys have',
	killswitch_upstream_lost => 0, killswitch_upstream_problem => 0, killswitch_upstream_age_seconds => 0,
	killswitch_replay_behind_bytes => 0, killswitch_replay_behind_seconds => 0, killswitch_file_problem => 0);
$m = scrape_until($sport, killswitch_upstream_problem => 0, killswitch_upstream_age_seconds => sub { $_[0] < 5 });
values_are($m, 'a standby that hears its primary',
	killswitch_upstream_lost => 0, killswitch_upstream_problem => 0,
	killswitch_upstream_age_seconds => sub { $_[0] >= 0 && $_[0] < 5 },
	killswitch_replay_behind_bytes => sub { $_[0] >= 0 }, killswitch_file_problem => 0);
$standby->append_conf('postgresql.conf', "killswitch.standby_max_silence = 2\n");
$standby->reload;
$primary->stop('immediate');
$m = scrape_until($sport, killswitch_upstream_lost => 1);
values_are($m, 'its primary gone, past killswitch.standby_max_silence',
	killswitch_upstream_lost => 1, killswitch_upstream_problem => 1, killswitch_mode => 2,
	killswitch_upstream_age_seconds => sub { $_[0] >= 2 });

done_testing();
