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
