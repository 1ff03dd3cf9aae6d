# KsScopeFile — what the TAP tests of outside writes of the scope file
# (ARCHITECTURE §13, "Outside writes") share: one node, the killswitch CLI
# run against it, an agent's INSERT judged, and a scope file signed and put
# in the state directory as a writer holding the signing secret (and
# perhaps the release key) would.
package KsScopeFile;

use strict;
use warnings;
use Exporter 'import';
use Digest::SHA qw(hmac_sha256_hex sha256_hex);
use IPC::Run;
use JSON::PP;
use KsTest;

our @EXPORT = qw(ks_scope_node agents ks sql refused signed put);

# The node the helpers below act on, and its scope file.
my ($node, $file);

# A node as ks_node() makes it (same options), remembered for the helpers.
sub ks_scope_node
{
	$node = ks_node(@_);
	$file = $node->data_dir . '/pg_killswitch/kill_switch_scopes.json';
	return $node;
}

# Two agents, agent_7 and agent_8, and a table t every role may write,
# then the test's own SQL; returns agent_7's OID (the scope file's key).
sub agents
{
	my ($more) = @_;
	sql("CREATE ROLE agent_7 LOGIN IN ROLE killswitch_agent;\n"
		  . "CREATE ROLE agent_8 LOGIN IN ROLE killswitch_agent;\n"
		  . "CREATE TABLE t (x int);\n"
		  . "GRANT ALL ON t TO PUBLIC;\n"
		  . ($more // ''));
	return sql("SELECT 'agent_7'::regrole::oid");
}

# The killswitch command with these arguments: (exit code, stdout, stderr).
sub ks
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$ENV{KS_SRCDIR}/src/cli/killswitch", @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

sub sql { return $node->safe_psql('postgres', shift); }

# An INSERT into t as this role: 'ok', 'KS001' (refused by killswitch), or
# the other error.
sub refused
{
	my ($role) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\nINSERT INTO t VALUES (1)",
		stdout => \$out, stderr => \$err, on_error_stop => 1, extra_params => [ '-U', $role ]);
	return $rc == 0 ? 'ok' : $err =~ /KS001/ ? 'KS001' : "error: $err";
}

# A scope file as a writer holding the signing secret (and, given $rkey,
# the release key) makes it: every member signed, canonical.
sub signed
{
	my ($obj, $rkey) = @_;
	my $o = {%$obj};
	if ($rkey)
	{
		$o->{release_key_id} = substr(sha256_hex($rkey), 0, 16);
		$o->{release_signature} = hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($o), $rkey);
	}
	$o->{signature} = hmac_sha256_hex(JSON::PP->new->canonical->ascii->encode($o), ks_secret($node));
	return JSON::PP->new->canonical->ascii->encode($o) . "\n";
}

# The scope file replaced by this text at once (written aside, renamed).
sub put
{
	my ($text) = @_;
	open my $fh, '>', "$file.new" or die $!;
	print $fh $text;
	close $fh;
	rename "$file.new", $file or die $!;
}

1;
