# shellcheck shell=bash
# Shared by scripts/test and scripts/demo: build, install, and run things
# as an unprivileged user (initdb and postgres refuse to run as root).

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# Build and install the extension from the top of the tree.
ks_build_install() {
    make -s PG_CONFIG="$PG_CONFIG" >/dev/null
    $SUDO make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# A scratch copy of the tree owned by the user that runs the servers.
# Prints its path.  As root that user is postgres; otherwise ourselves.
ks_scratch_copy() {
    local dir
    dir=$(mktemp -d /tmp/killswitch.XXXXXX)
    cp -a . "$dir/src-tree"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres:postgres "$dir"
    fi
    echo "$dir/src-tree"
}

# Run a command as the server user.
ks_as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" "$@"
    else
        env PATH="$PG_BINDIR:$PATH" "$@"
    fi
}

# ---- the suites, counted; and other PostgreSQL versions (scripts/pg-builds) ----
# KS_PASSED, KS_FAILED and KS_FAILURES (the sections that failed) add up
# across every section of a run.
KS_PASSED=${KS_PASSED:-0}
KS_FAILED=${KS_FAILED:-0}
KS_FAILURES=()
# What failed, a few lines per failing section (the failed tests, their
# got/expected), repeated at the end of a run by ks_failure_summary: a CI
# that keeps only the tail of the output still names them.
KS_NOTES=${KS_NOTES:-}

# ks_note_failure SECTION LOG: keep what LOG says failed for the summary.
ks_note_failure() {
    [ -n "$KS_NOTES" ] || KS_NOTES=$(mktemp)
    {
        echo "--- $1"
        grep -E -A8 '^#   Failed test|Dubious|\.\.\. FAILED|^not ok [0-9]+|^[0-9]+ passed, [1-9][0-9]* failed' "$2" | head -80
    } >> "$KS_NOTES"
}

# ks_failure_summary: the notes of every failing section, once, at the end.
ks_failure_summary() {
    [ -n "$KS_NOTES" ] || return 0
    if [ -s "$KS_NOTES" ]; then
        echo "=== what failed (again, from each failing section above)"
        cat "$KS_NOTES"
    fi
    rm -f "$KS_NOTES"
    KS_NOTES=""
}

# ks_pg_label PG_CONFIG: "PostgreSQL 18.6", and what the build is if it is
# not a release build ("PostgreSQL 15.18, assertions").
ks_pg_label() {
    local cfg version label
    cfg=$("$1" --configure)
    version=$("$1" --version | sed 's/^PostgreSQL //')
    label="PostgreSQL $version"
    case $cfg in *--enable-cassert*) label="$label, assertions" ;; esac
    case $cfg in *USE_VALGRIND*) label="$label, Valgrind" ;; esac
    echo "$label"
}

# ks_run_suite NAME TARGET [LABEL]: in the current tree, runs `make TARGET` as
# the server user against $PG_CONFIG, shows its output under a heading that
# names the version, and counts its tests.
ks_run_suite() {
    local name=$1 target=$2 label=${3:-$(ks_pg_label "$PG_CONFIG")} log rc p f
    log=$(mktemp)
    echo "=== $name — $label"
    ks_as_server_user make -s PG_CONFIG="$PG_CONFIG" "$target" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    # count what the runner said it ran
    case $name in
        vectors) p=$(grep -c '^ok ' "$log"); f=$(grep -c '^not ok ' "$log") ;;
        fuzz)    p=$(grep -c '^Done [0-9]* runs' "$log"); f=0 ;;
        tap)     # prove's summary: "Files=4, Tests=57, ..." and "Failed 2/10 subtests"
                 f=$(grep -oE 'Failed [0-9]+/[0-9]+ subtests' "$log" | awk '{split($2,a,"/"); n+=a[1]} END {print n+0}')
                 p=$(( $(grep -oE 'Tests=[0-9]+' "$log" | tail -1 | cut -d= -f2 || echo 0) - f )) ;;
        *)       p=$(grep -cE '^(ok|test|\s+)?\s*[a-z0-9_-]+\s+\.\.\. ok|^ok [0-9]+\s+[-+] ' "$log")
                 f=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+' "$log") ;;
    esac
    KS_PASSED=$((KS_PASSED + p)); KS_FAILED=$((KS_FAILED + f))
    if [ "$rc" -ne 0 ]; then
        KS_FAILURES+=("$name ($label)")
        ks_note_failure "$name ($label)" "$log"
        [ "$f" -gt 0 ] || KS_FAILED=$((KS_FAILED + 1))
        for d in tmp_check/regress-out/regression.diffs tmp_check/isolation-out/regression.diffs; do
            [ -s "$d" ] && { echo "--- $d"; head -200 "$d"; }
        done
        if [ "$name" = tap ]; then
            for l in tmp_check/tap/tmp_check/log/regress_log_*; do
                [ -f "$l" ] && { echo "--- $l (tail)"; tail -60 "$l"; }
            done
        fi
    fi
    rm -f "$log"
    return "$rc"
}

# ks_version_tree PG_CONFIG: a scratch copy of the tree (see ks_scratch_copy)
# with the extension built against PG_CONFIG and installed into that
# PostgreSQL.  Prints its path; the build's output goes to stderr.
ks_version_tree() {
    local pgc=$1 tree
    tree=$(ks_scratch_copy)
    (
        cd "$tree" || exit 1
        make -s PG_CONFIG="$pgc" clean >/dev/null 2>&1
        make -s -j"$(nproc)" PG_CONFIG="$pgc" >/dev/null || exit 1
        if [ -w "$("$pgc" --pkglibdir)" ]; then
            make -s PG_CONFIG="$pgc" install >/dev/null
        else
            $SUDO make -s PG_CONFIG="$pgc" install >/dev/null
        fi
    ) >&2 || return 1
    [ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$tree"
    echo "$tree"
}

# ks_version_sections BUILD SUITE...: the extension built against BUILD (a
# build of scripts/pg-builds, or the path of a pg_config) in a scratch tree,
# and the suites (make targets test-SUITE) run there against it.  A build
# missing or failing counts as one failure.
ks_version_sections() {
    local build=$1 pgc tree suite label
    shift
    case $build in
        */*) pgc=$build ;;
        *)   if ! pgc=$(bash scripts/pg-builds --pg-config "$build"); then
                 echo "=== $build: not built"
                 KS_FAILED=$((KS_FAILED + 1)); KS_FAILURES+=("$build (not built)")
                 return 1
             fi ;;
    esac
    label=$(ks_pg_label "$pgc")
    echo "=== build — $label ($pgc)"
    if ! tree=$(ks_version_tree "$pgc"); then
        echo "killswitch: the build against $label failed"
        KS_FAILED=$((KS_FAILED + 1)); KS_FAILURES+=("build ($label)")
        return 1
    fi
    # the suites see this build's pg_config and binaries (bash's locals are
    # dynamically scoped)
    local PG_CONFIG=$pgc PG_BINDIR
    PG_BINDIR=$("$pgc" --bindir)
    pushd "$tree" >/dev/null || return 1
    for suite in "$@"; do
        ks_run_suite "$suite" "test-$suite" "$label"
    done
    popd >/dev/null || return 1
}
