#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for tests, `make demo` and `make bench`.
#
# Usage:
#   scripts/pgtmp.sh start DIR PORT [--ssl CERTDIR]
#       initdb into DIR (once; an existing cluster in DIR is started again), listen on
#       127.0.0.1:PORT with the unix socket in DIR, wait until it accepts connections and
#       print the superuser's psql command on stdout. Superuser `postgres`, no password
#       over the socket (local trust). fsync is off: never keep data you care about here.
#       --ssl CERTDIR: ssl=on with CERTDIR/server.crt and CERTDIR/server.key (copied into
#       DIR with the ownership and mode PostgreSQL requires; see scripts/mkcerts.sh).
#   scripts/pgtmp.sh stop DIR
#       stop it fast (an already stopped or missing cluster is not an error).
#
# pg_hba.conf (first match wins):
#   local all all                   trust
#   host  all u_trust 127.0.0.1/32  trust
#   host  all u_md5   127.0.0.1/32  md5        create u_md5's password with
#                                              SET password_encryption = 'md5' first,
#                                              or PostgreSQL upgrades it to SCRAM
#   host  all u_clear 127.0.0.1/32  password   (cleartext)
#   host  all all     127.0.0.1/32  scram-sha-256
# The users themselves are created by whoever needs them.
#
# Run as root, the server runs as the `postgres` OS user (initdb refuses root): DIR is
# chowned to it, so DIR's parent directories must be searchable by that user (a directory
# under /tmp is). Env PG_BIN overrides the PostgreSQL binary directory.
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" >&2
    exit 2
}

pg_bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
if [[ ! -x "$pg_bin/initdb" ]]; then
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        pg_bin="$(pg_config --bindir)"
    else
        echo "pgtmp: no PostgreSQL binaries in $pg_bin (install postgresql-15 or set PG_BIN)" >&2
        exit 1
    fi
fi

# Run a PostgreSQL binary as the cluster's owner: `postgres` when we are root.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

cmd_start() {
    local dir="$1" port="$2" certdir=""
    shift 2
    while (($#)); do
        case "$1" in
            --ssl) [[ $# -ge 2 ]] || usage; certdir="$(realpath "$2")"; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ "$port" =~ ^[0-9]+$ ]] || { echo "pgtmp: bad port: $port" >&2; exit 2; }
    dir="$(realpath -m "$dir")"
    # The socket path must fit sockaddr_un (107 bytes).
    if (( ${#dir} + ${#port} + 12 > 107 )); then
        echo "pgtmp: $dir is too long for a unix socket path; use a shorter directory" >&2
        exit 1
    fi

    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$dir"
        chmod 0700 "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            echo "pgtmp: the postgres user cannot reach $dir (a parent directory is not" \
                 "searchable: chmod o+x it, or use a directory such as /tmp/NAME)" >&2
            exit 1
        fi
    fi

    if [[ ! -f "$dir/PG_VERSION" ]]; then
        if [[ -n "$(ls -A "$dir")" ]]; then
            echo "pgtmp: $dir is neither empty nor a PostgreSQL data directory" >&2
            exit 1
        fi
        as_owner "$pg_bin/initdb" -D "$dir" -U postgres -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$dir/../.pgtmp-initdb.$$.log" 2>&1 \
            || { cat "$dir/../.pgtmp-initdb.$$.log" >&2; rm -f "$dir/../.pgtmp-initdb.$$.log"; exit 1; }
        rm -f "$dir/../.pgtmp-initdb.$$.log"
        cat >"$dir/pg_hba.conf" <<'EOF'
# written by scripts/pgtmp.sh
local all all                  trust
host  all u_trust 127.0.0.1/32 trust
host  all u_md5   127.0.0.1/32 md5
host  all u_clear 127.0.0.1/32 password
host  all all     127.0.0.1/32 scram-sha-256
EOF
        echo "include_if_exists = 'pgtmp.conf'" >>"$dir/postgresql.conf"
    fi

    # Settings of this start (port and TLS may change between starts).
    local ssl=off
    if [[ -n "$certdir" ]]; then
        for f in server.crt server.key; do
            [[ -r "$certdir/$f" ]] || { echo "pgtmp: missing $certdir/$f (scripts/mkcerts.sh)" >&2; exit 1; }
        done
        install -m 0644 "$certdir/server.crt" "$dir/server.crt"
        install -m 0600 "$certdir/server.key" "$dir/server.key"
        ssl=on
    fi
    cat >"$dir/pgtmp.conf" <<EOF
# written by scripts/pgtmp.sh on each start
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 400
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
ssl = $ssl
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$dir/pg_hba.conf" "$dir/pgtmp.conf"
        [[ -z "$certdir" ]] || chown postgres:postgres "$dir/server.crt" "$dir/server.key"
    fi

    if as_owner "$pg_bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        echo "pgtmp: already running in $dir" >&2
    else
        if ! as_owner "$pg_bin/pg_ctl" -D "$dir" -l "$dir/postgres.log" -w -t 60 start >/dev/null; then
            echo "pgtmp: PostgreSQL did not start; end of $dir/postgres.log:" >&2
            tail -n 20 "$dir/postgres.log" >&2 || true
            exit 1
        fi
    fi
    local i
    for ((i = 0; i < 300; i++)); do
        "$pg_bin/pg_isready" -q -h "$dir" -p "$port" -U postgres && break
        sleep 0.1
    done
    "$pg_bin/pg_isready" -q -h "$dir" -p "$port" -U postgres \
        || { echo "pgtmp: PostgreSQL in $dir is not ready on port $port" >&2; exit 1; }
    echo "psql -h $dir -p $port -U postgres postgres"
}

cmd_stop() {
    local dir
    dir="$(realpath -m "$1")"
    [[ -f "$dir/postmaster.pid" ]] || return 0
    as_owner "$pg_bin/pg_ctl" -D "$dir" -m fast -w -t 20 stop >/dev/null 2>&1 \
        || as_owner "$pg_bin/pg_ctl" -D "$dir" -m immediate -w -t 20 stop >/dev/null 2>&1 \
        || { as_owner "$pg_bin/pg_ctl" -D "$dir" status >/dev/null 2>&1 && {
                 echo "pgtmp: could not stop PostgreSQL in $dir" >&2; exit 1; }; }
    return 0
}

case "${1:-}" in
    start) [[ $# -ge 3 ]] || usage; shift; cmd_start "$@" ;;
    stop) [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
    *) usage ;;
esac
