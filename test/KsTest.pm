# KsTest — what the killswitch TAP tests share: a node with the library
# preloaded and the extension created, and signing a state file the way the
# reference Python library does.
package KsTest;

use strict;
use warnings;
use Exporter 'import';
use Digest::SHA qw(hmac_sha256_hex sha256_hex);
use Fcntl qw(:flock O_RDWR O_CREAT);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep);

our @EXPORT = qw(ks_node ks_secret ks_signed_text ks_release_key ks_release_signed_text
  ks_held_signature ks_running ks_kill9_and_start ks_init_from_backup ks_pgbouncer ks_within ks_forking_fleet ks_host_port
  ks_commit_lsns ks_wait_ready ks_refused ks_plant_lock);

# A started node with killswitch preloaded (plus any extra settings) and,
# unless no_extension is given, the extension created in database postgres.
# init passes initdb's options (a primary: allows_streaming => 1).
sub ks_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'killswitch'\n" . ($opts{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE')
	  unless $opts{no_extension};
	return $node;
}

# A node made from a backup, as init_from_backup() does, with the keys'
# modes as pg_basebackup leaves them (0600): the framework copies the
# backup directory with the umask's modes, which killswitch rightly refuses
# for a key.
sub ks_init_from_backup
{
	my ($node, $root, $backup, %params) = @_;
	$node->init_from_backup($root, $backup, %params);
	for my $key ('signing.key', 'release.key')
	{
		my $path = $node->data_dir . "/pg_killswitch/$key";
		chmod 0600, $path if -e $path;
	}
	return $node;
}

# PgBouncer in transaction pooling in front of a node's database postgres,
# on a free port, as this (the postgres) OS user, for role bot (password
# agent-secret); extra lines go into its [pgbouncer] section.  Returns the
# harness (stop it with kill_kill), the conninfo through it and its
# directory (pgbouncer.log), once a
# connection through it works.
sub ks_pgbouncer
{
	my ($node, $pool_size, $extra) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir;
	my $bport = PostgreSQL::Test::Cluster::get_free_port();
	my ($host, $port) = ($node->host, $node->port);
	append_to_file("$dir/userlist.txt", qq{"bot" "agent-secret"\n});
	append_to_file("$dir/pgbouncer.ini", qq{
[databases]
postgres = host=$host port=$port dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = md5
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
} . ($extra // ''));
	my $bouncer = IPC::Run::start([ '/usr/sbin/pgbouncer', "$dir/pgbouncer.ini" ],
		'>', "$dir/out", '2>', "$dir/err");
	my $via = "host=127.0.0.1 port=$bport dbname=postgres user=bot";
	local $ENV{PGPASSWORD} = 'agent-secret';
	# The query goes on psql's command line, not its standard input: a psql
	# refused before PgBouncer listens may exit before its input is written,
	# and IPC::Run dies of the broken pipe (seen with 18's psql).
	for (1 .. 300)
	{
		last if IPC::Run::run([ 'psql', '-XAtq', '-d', $via, '-c', 'SELECT 1' ],
			'<', \undef, '>', \my $out, '2>', \my $err);
		usleep(100_000);
	}
	return ($bouncer, $via, $dir);
}

# The node's signing secret: the key file less one trailing newline.
sub ks_secret
{
	my ($node) = @_;
	my $secret = slurp_file($node->data_dir . '/pg_killswitch/signing.key');
	$secret =~ s/\n\z//;
	return $secret;
}

# A state file's text, signed over the canonical form (sorted keys, no
# spaces, ASCII: what the tests' values need of Python's json.dumps).
sub ks_signed_text
{
	my ($secret, %obj) = @_;
	my $canon = JSON::PP->new->canonical->ascii->encode(\%obj);
	$obj{signature} = hmac_sha256_hex($canon, $secret);
	return JSON::PP->new->canonical->ascii->pretty->encode(\%obj);
}

# The node's release key, read like the secret.
sub ks_release_key
{
	my ($node) = @_;
	my $key = slurp_file($node->data_dir . '/pg_killswitch/release.key');
	$key =~ s/\n\z//;
	return $key;
}

# The signature of the state a node holds — what a release names in
# "replaces" (ARCHITECTURE §3) — read from the state file as an
# administrators' tool would, once the server has judged it: the file then
# carries the bytes of the server's private copy.  Waits (bounded) for that.
sub ks_held_signature
{
	my ($node) = @_;
	my $dir = $node->data_dir . '/pg_killswitch';
	my $sig;
	for (1 .. 3000)		# a minute: the watcher's look comes when a loaded machine lets it
	{
		my ($file, $held) = map { eval { decode_json(slurp_file("$dir/$_")) } }
		  ('kill_switch_state.json', 'last_applied.json');
		$sig = $file && $file->{signature};
		return $sig if $sig && $held && $held->{signature} && $sig eq $held->{signature};
		usleep(20_000);
	}
	Test::More::note('the state file and the private copy still differ after a minute');
	return $sig;
}

# A state file's text that may lower the mode: release_key_id and
# release_signature (HMAC-SHA256 under the release key of every member but
# the two signatures), then signature over everything but itself.  A
# release names the state it replaces: give replaces => ks_held_signature().
sub ks_release_signed_text
{
	my ($secret, $release_key, %obj) = @_;
	$obj{release_key_id} = substr(sha256_hex($release_key), 0, 16);
	my $canon = JSON::PP->new->canonical->ascii->encode(\%obj);
	$obj{release_signature} = hmac_sha256_hex($canon, $release_key);
	return ks_signed_text($secret, %obj);
}

# Is a process still running?  A zombie is not: the init of some sandboxes
# does not reap a killed postmaster, so its pid lingers as a zombie.
sub ks_running
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return 0;
	my $stat = <$fh>;
	close $fh;
	return $stat !~ /^\d+ \(.*\) Z/;
}

# kill -9 the postmaster, wait for it (and its orphaned children) to be
# gone, and start again.  The stale postmaster.pid is removed only once its
# process is dead, which is all a reaping init would have done.
sub ks_kill9_and_start
{
	my ($node) = @_;
	my $pid = $node->{_pid};
	$node->kill9;
	for (1 .. 100)
	{
		last unless ks_running($pid);
		usleep(100_000);
	}
	unlink $node->data_dir . '/postmaster.pid';
	for my $try (1 .. 100)
	{
		# orphaned backends may still hold the old shared memory for a moment
		# (a loaded machine stretches the moment: up to 25 s)
		last if $node->start(fail_ok => 1);
		usleep(250_000);
	}
}

# Poll a query in database postgres until it returns t, for at most $secs
# seconds; true if it did.  (Standbys' tests: a state is reached by replay
# or by what a watcher hears, at no moment the test can name.)
sub ks_within
{
	my ($node, $sql, $secs) = @_;
	my $deadline = Time::HiRes::time() + $secs;
	while (Time::HiRes::time() < $deadline)
	{
		return 1 if $node->safe_psql('postgres', $sql) eq 't';
		usleep(20_000);
	}
	Test::More::note("still not true after $secs s: $sql");
	return 0;
}

# A node's address for a conninfo without a database (primary_conninfo,
# killswitch.upstream_conninfo).
sub ks_host_port { my $n = shift; return 'host=' . $n->host . ' port=' . $n->port; }

# Three nodes for a history that forks (TAP 158, 159): a primary, its heir
# (a standby streaming from it) and a follower that takes WAL from the heir
# and its word from the primary (killswitch.upstream_conninfo), with no
# silence bound — the primary is dead for a while in these tests.  One
# change both standbys replay is made and replayed; returns the nodes and
# the generation the history forks at.
sub ks_forking_fleet
{
	my ($prefix) = @_;
	my $primary = ks_node("${prefix}_primary", init => { allows_streaming => 1 }, no_extension => 1);
	$primary->safe_psql('postgres', 'CREATE EXTENSION killswitch CASCADE');
	$primary->backup('b');

	my $heir = PostgreSQL::Test::Cluster->new("${prefix}_heir");
	ks_init_from_backup($heir, $primary, 'b', has_streaming => 1);
	$heir->start;

	my $follower = PostgreSQL::Test::Cluster->new("${prefix}_follower");
	ks_init_from_backup($follower, $primary, 'b', has_streaming => 1);
	$follower->append_conf('postgresql.conf', "primary_conninfo = '" . ks_host_port($heir) . "'\n"
		  . "killswitch.upstream_conninfo = '" . ks_host_port($primary) . "'\n"
		  . "killswitch.standby_max_silence = 0\n");
	$follower->start;
	$primary->safe_psql('postgres',
		"SELECT ks_engage('halt_all', 'before', 'ops'); SELECT ks_disengage('before, released', 'ops')");
	$primary->wait_for_catchup($heir, 'replay', $primary->lsn('insert'));
	$heir->wait_for_catchup($follower, 'replay', $primary->lsn('insert'));
	return ($primary, $heir, $follower, $primary->safe_psql('postgres', "SELECT ks_status()->>'generation'"));
}

# Where each transaction's commit record is in a node's WAL between two
# positions, as pg_waldump reads it (TAP 164, 174: no agent commit record
# after the engage's): a hash of transaction id (32 bits) to the record's
# position as a number — a COMMIT by its record's transaction, a COMMIT
# PREPARED by the prepared one — and pg_waldump's stderr.
sub ks_commit_lsns
{
	my ($node, $start, $end) = @_;
	my ($dump, $err) = ('', '');
	my %at;
	my $value = sub { my ($hi, $lo) = split m{/}, shift; return hex($hi) * 2**32 + hex($lo); };
	IPC::Run::run([ 'pg_waldump', '-p', $node->data_dir . '/pg_wal', '-s', $start, '-e', $end, '-r', 'Transaction' ],
		'>', \$dump, '2>', \$err);
	$at{$1} = $value->($2) while $dump =~ /tx:\s+(\d+), lsn: ([0-9A-F]+\/[0-9A-F]+).*desc: COMMIT /g;
	$at{$2} = $value->($1) while $dump =~ /lsn: ([0-9A-F]+\/[0-9A-F]+).*desc: COMMIT_PREPARED (\d+):/g;
	return (\%at, $err);
}

# Wait until a node accepts connections again after a crash restart, for
# at most $secs seconds (default 60); true if it does.  pg_isready, not
# poll_query_until(): that one feeds its query on psql's standard input,
# and a psql refused during crash recovery exits before reading it —
# IPC::Run then dies of EPIPE ("ack Broken pipe"), ending the test.
sub ks_wait_ready
{
	my ($node, $secs) = @_;
	my $deadline = Time::HiRes::time() + ($secs // 60);
	while (Time::HiRes::time() < $deadline)
	{
		return 1
		  if system('pg_isready', '-q', '-h', $node->host, '-p', $node->port, '-d', 'postgres') == 0;
		usleep(100_000);
	}
	return 0;
}

# A write as role (INSERT INTO t VALUES (1), the table the tests make):
# 'ok', 'KS001' (refused by the kill switch) or "error: " and the error.
sub ks_refused
{
	my ($node, $role) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1)",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? 'ok' : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

# An agent's move on a state directory it can write: its own writers'
# lock file in place of the server's, held (flock) until the returned
# handle is unlocked or closed.
sub ks_plant_lock
{
	my ($dir) = @_;
	my $lock = "$dir/kill_switch_state.lock";
	unlink $lock;
	sysopen(my $fh, $lock, O_RDWR | O_CREAT, 0666) or die "open $lock: $!";
	chmod 0666, $lock;
	flock($fh, LOCK_EX) or die "flock: $!";
	return $fh;
}

1;
