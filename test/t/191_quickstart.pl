# The README's five-minute quickstart, as written: its blocks are taken from
# README.md itself (the section "Five-minute quickstart"), so this test
# fails when the README drifts from what the server does.
#
#  - the configuration block (the one without a language) goes into the
#    postgresql.conf of a throwaway server that preloads nothing else;
#  - the shell blocks must run as root on a fresh Debian 12: no sudo there;
#  - every SQL block runs, in order, in one psql session of the superuser
#    (the README's `su postgres -c psql`), with ON_ERROR_STOP: the roles it
#    plays with SET SESSION AUTHORIZATION are the ones it names;
#  - a result the README shows in a comment after a SELECT (or INSERT ...
#    RETURNING) -- on the same line (true, false, a word, a JSON object, a
#    tuple), or on the comment lines right below it (rows) -- must be what
#    the statement returned;
#  - and the history shows who pulled and who released: the engage's
#    session_role is oncall, the release's alice.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;

my $src = $ENV{KS_SRCDIR} // '.';
my $readme = slurp_file("$src/README.md");
my ($section) = $readme =~ /^## Five-minute quickstart\n(.*?)^## /ms
  or BAIL_OUT('README.md has no section "## Five-minute quickstart"');
my @blocks;
while ($section =~ /^```(\w*)\n(.*?)^```\s*$/msg)
{
	push @blocks, { lang => $1, text => $2 };
}
my @sh = grep { $_->{lang} eq 'sh' } @blocks;
my @conf = grep { $_->{lang} eq '' } @blocks;
my @sql = grep { $_->{lang} eq 'sql' } @blocks;
ok(@sh >= 1 && @conf == 1 && @sql >= 1,
	scalar(@sh) . ' shell, ' . scalar(@conf) . ' configuration and ' . scalar(@sql)
	  . ' SQL blocks in the quickstart');
for my $b (@sh)
{
	unlike($b->{text}, qr/\bsudo\b/, "the shell block runs as root without sudo: "
		  . (split /\n/, $b->{text})[0]);
}
like($sh[0]{text}, qr/\bmake install\b/, 'the first shell block installs the extension');

# ---------------------------------------------------------------- the server
my $node = PostgreSQL::Test::Cluster->new('quickstart');
$node->init;
$node->append_conf('postgresql.conf', $conf[0]{text});
$node->start;
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), 'killswitch',
	'the configuration block preloads killswitch');

# ---------------------------------------------------------------- the statements
# Split a block into statements, each with the result its comments show.
sub statements
{
	my ($text) = @_;
	my (@out, $cur);
	for my $line (split /\n/, $text)
	{
		if (!defined $cur && @out && $line =~ /^--  (.*)$/)
		{
			# a result shown below the statement (rows, or a long value)
			push @{ $out[-1]{rows} }, $1;
			next;
		}
		next if !defined $cur && $line =~ /^\s*(--.*)?$/;
		my ($code, $comment) = $line =~ /^(.*?)(?:\s+--\s*(.*))?$/;
		$cur = defined $cur ? "$cur\n$code" : $code;
		if ($code =~ /;\s*$/)
		{
			push @out, { sql => $cur, comment => $comment, rows => [] };
			undef $cur;
		}
	}
	return @out;
}

# The value a comment shows, if it shows one: true, false, a JSON object, a
# tuple, or a single word (after an optional label such as "critical: ").
sub shown_value
{
	my ($comment) = @_;
	return undef unless defined $comment;
	$comment =~ s/^[a-z ]+: (?=\{)//;
	return $comment if $comment =~ /^(true|false|\{.*\}|\(.*\)|[a-z_]+)$/;
	return undef;
}

# Does psql's unaligned output (-At) match what the README shows?
sub matches
{
	my ($got, $shown) = @_;
	return $got eq ($shown eq 'true' ? 't' : 'f') if $shown =~ /^(true|false)$/;
	if ($shown =~ /^\{/)
	{
		my $json = JSON::PP->new;
		my ($g, $s) = eval { ($json->decode($got), $json->decode($shown)) };
		return $g && $s && JSON::PP->new->canonical->encode($g) eq JSON::PP->new->canonical->encode($s);
	}
	if ($shown =~ /^\((.*)\)$/)
	{
		my @s = map { $_ eq 'NULL' ? '' : $_ } split /,\s*/, $1, -1;
		return $got eq join('|', @s);
	}
	return $got eq $shown;
}

my @stmts = map { statements($_->{text}) } @sql;
my $script = '';
for my $i (0 .. $#stmts)
{
	$script .= "\\echo \@\@ $i\n$stmts[$i]{sql}\n";
}
my ($stdout, $stderr);
my $ret = $node->psql('postgres', $script, stdout => \$stdout, stderr => \$stderr,
	on_error_stop => 1, extra_params => [ '-A', '-t' ]);
is($ret, 0, 'every statement of the quickstart\'s SQL blocks runs, in one superuser session')
  or diag($stderr);
my %out;
my $at;
for my $line (split /\n/, $stdout)
{
	if ($line =~ /^\@\@ (\d+)$/) { $at = $1; $out{$at} = []; next; }
	push @{ $out{$at} }, $line if defined $at;
}

my $checked = 0;
for my $i (0 .. $#stmts)
{
	my $st = $stmts[$i];
	next unless $st->{sql} =~ /^\s*SELECT\b|\bRETURNING\b/i;
	(my $what = $st->{sql}) =~ s/\s+/ /g;
	my @got = @{ $out{$i} // [] };
	if (@{ $st->{rows} } && $st->{rows}[0] =~ /\|/)
	{
		my @shown = map { join '|', map { s/^\s+|\s+$//gr } split /\|/ } @{ $st->{rows} };
		is_deeply(\@got, \@shown, "$what returns the rows shown");
		$checked++;
		next;
	}
	my $shown = shown_value(@{ $st->{rows} } ? join(' ', @{ $st->{rows} }) : $st->{comment});
	next unless defined $shown;
	ok(@got == 1 && matches($got[0], $shown), "$what returns $shown")
	  or diag('got: ' . join("\n", @got));
	$checked++;
}
cmp_ok($checked, '>=', 9, "$checked results shown in the README were checked");

# ---------------------------------------------------------------- who did it
is($node->safe_psql('postgres',
	"SELECT string_agg(mode || ':' || session_role, ' ' ORDER BY id) FROM killswitch.events"),
	'halt_all:oncall disengaged:alice halt_noncritical:postgres disengaged:postgres',
	'the history: oncall engaged, alice released (then the superuser\'s guard drill)');
is($node->safe_psql('postgres', 'SELECT ks_mode()'), 'disengaged', 'the quickstart ends disengaged');

done_testing();
