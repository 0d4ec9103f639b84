# shellcheck shell=bash
# What the bench scripts share (sourced by bench/run.sh, audit.sh, login.sh and profile.sh;
# policy.sh, masking.sh and workers.sh are sourced by run.sh and use it through run.sh).
#
#   bench_init NAME WORKDIR-PREFIX   say/die with NAME, a scratch $WORK, the exit trap
#   bench_pg_start SCALE [--ssl DIR] a throwaway PostgreSQL in $WORK/pg: role and database
#                                    "bench" (password $PW), pgbench tables at SCALE (0: none)
#   bench_secrets DIR                $PW and a fresh HS256 secret into DIR (bench.password,
#                                    bench.hs256); bench_token SUB: a token for that subject
#   bench_gateway_config DIR PORT PREFIX AUDIT-JSON DESCRIPTION
#                                    DIR/bulwark.json and a pass-through role "bench" in
#                                    DIR/policies/bench.json; the secrets are at PREFIX
#                                    (relative to DIR: "" or "../")
#   bench_gateway_start DIR [CMD...] `bulwark serve` (under CMD, e.g. valgrind) logging to
#                                    DIR/bulwark.log; sets BENCH_LAST_PID; stopped on exit
#   bench_wait_listening LOG PID [TENTHS]  until the log says event=listening
#   bench_reload PID LOG ROLES       SIGHUP, then 0 once the log says it reloaded with ROLES
#                                    roles (1, printing the reload lines, if it failed)
#   run_pgbench TARGET MODE CLIENTS  pgbench -S: tps, or NA (target_port, target_user,
#                                    target_pass name the target; scripts redefine them)
#   median FORMAT VALUE... / ratio A B / div A B [FORMAT]   NA-aware arithmetic
#   result LINE                      echo a RESULT line and keep it in RESULTS
#
# Everything a script starts is stopped when it exits, however it exits: processes on
# BENCH_PIDS (last started first) with BENCH_STOP_SIGNAL (INT), then KILL after
# BENCH_STOP_SECONDS (5); then the PostgreSQL it started; then a function bench_on_exit if
# the script defines one; then $WORK goes.

say() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() { say "$*"; exit 1; }

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_port PORT PID SECONDS: until something accepts on 127.0.0.1:PORT (and PID lives).
wait_port() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        /usr/bin/python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" \
            2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# stop_pid PID: BENCH_STOP_SIGNAL, then SIGKILL after BENCH_STOP_SECONDS.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-${BENCH_STOP_SIGNAL:-INT}" "$pid" 2>/dev/null
    for ((i = 0; i < ${BENCH_STOP_SECONDS:-5} * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

bench_cleanup() {
    local status=$? i
    trap - EXIT
    trap "" INT TERM HUP   # finish cleaning up whatever else arrives (inherited by what we run here)
    set +e
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${BENCH_PIDS[$i]}"; done
    [ "$PG_STARTED" = 1 ] && "$ROOT/scripts/pgtmp.sh" stop "$WORK/pg" >/dev/null 2>&1
    declare -F bench_on_exit >/dev/null && bench_on_exit
    rm -rf "$WORK"
    exit "$status"
}

# bench_init NAME WORKDIR-PREFIX (ROOT and BIN set by the caller)
bench_init() {
    BENCH_NAME=$1
    [ -x "$BIN" ] || die "$BIN not found: run \`make\` first"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$2.XXXXXX")
    chmod 711 "$WORK"   # the cluster (and pgbouncer) may run as the postgres OS user
    PG_STARTED=0 BENCH_PIDS=() BENCH_LAST_PID='' RESULTS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

bench_need() {   # bench_need TOOL...: die naming the first one missing
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh"
    done
}

# bench_pg_start SCALE [pgtmp.sh options]: sets PGPORT, PW, PG_STARTED
bench_pg_start() {
    local scale=$1
    shift
    PGPORT=$(free_port) PW=$(random_hex 16)
    say "starting PostgreSQL on 127.0.0.1:$PGPORT"
    PG_STARTED=1   # before: an interrupted start may leave a server running
    "$ROOT/scripts/pgtmp.sh" start "$WORK/pg" "$PGPORT" "$@" >/dev/null || die "pgtmp.sh start failed"
    printf '%s\n' "CREATE ROLE bench LOGIN PASSWORD :'pw';" "CREATE DATABASE bench OWNER bench;" |
        psql -X -q -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$PGPORT" -U postgres -d postgres -v pw="$PW" >/dev/null
    [ "$scale" = 0 ] && return 0
    say "pgbench -i -s $scale"
    PGPASSWORD=$PW pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$PGPORT" -U bench bench >"$WORK/pgbench-init.log" 2>&1 ||
        { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
}

bench_secrets() {   # bench_secrets DIR: DIR/bench.password ($PW), DIR/bench.hs256; sets BENCH_SECRET
    mkdir -p "$1"
    (umask 077
     printf '%s' "$PW" > "$1/bench.password"
     random_hex 32 > "$1/bench.hs256")
    BENCH_SECRET=$1/bench.hs256
}
bench_token() {   # bench_token SUB: an HS256 token of issuer "bench" for SUB
    "$BIN" token --secret-file "$BENCH_SECRET" --iss bench --aud bulwark --sub "$1" --ttl 12h ||
        die "bulwark token failed"
}

bench_gateway_config() {   # DIR PORT PREFIX AUDIT-JSON DESCRIPTION
    local dir=$1 port=$2 pre=$3 audit=$4 desc=$5
    mkdir -p "$dir/policies"
    cat > "$dir/bulwark.json" <<EOF
{
  "listen": "127.0.0.1:$port",
  "allow_plaintext_on_loopback": true,
  "identity": {
    "issuers": [ { "issuer": "bench", "audience": "bulwark", "hs256_secret_file": "${pre}bench.hs256" } ],
    "max_token_lifetime": "24h"
  },
  "targets": {
    "bench": { "host": "127.0.0.1", "port": $PGPORT, "dbname": "bench", "sslmode": "disable" }
  },
  "policy_files": ["policies/*.json"],
  "audit": $audit,
  "max_client_conn": 200,
  "shutdown_grace": "1s"
}
EOF
    cat > "$dir/policies/bench.json" <<EOF
{
  "role": "bench",
  "description": "$desc",
  "identities": [ { "iss": "bench", "sub": "pgbench" } ],
  "upstream": { "bench": { "user": "bench", "password_file": "../${pre}bench.password" } },
  "default": "allow",
  "read_only": false,
  "catalog_reads": true
}
EOF
}

bench_gateway_start() {   # DIR [CMD...]
    local dir=$1
    shift
    "$@" "$BIN" serve -c "$dir/bulwark.json" 2>"$dir/bulwark.log" &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

bench_wait_listening() {   # LOG PID [TENTHS of a second, 200]: 0 once listening
    local i
    for ((i = 0; i < ${3:-200}; i++)); do
        grep -q 'event=listening' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    grep -q 'event=listening' "$1" 2>/dev/null
}

bench_reload() {   # PID LOG ROLES
    local from i
    from=$(wc -l < "$2")
    kill -HUP "$1" 2>/dev/null || return 1
    for ((i = 0; i < 100; i++)); do
        tail -n +"$((from + 1))" "$2" | grep -q -e "event=reloaded roles=$3\b" -e 'event=reload_failed' && break
        sleep 0.1
    done
    tail -n +"$((from + 1))" "$2" | grep -q "event=reloaded roles=$3\b" && return 0
    tail -n +"$((from + 1))" "$2" | grep 'event=reload' | tail -n 5 >&2
    return 1
}

target_user() { echo bench; }
# run_pgbench TARGET MODE CLIENTS: prints tps, or NA
run_pgbench() {
    local jobs=$(( $3 < 2 ? $3 : 2 )) out
    if out=$(PGPASSWORD=$(target_pass "$1") pgbench -n -S -M "$2" -c "$3" -j "$jobs" -T "$DURATION" \
                 -h 127.0.0.1 -p "$(target_port "$1")" -U "$(target_user "$1")" bench 2>&1); then
        awk '/^tps = / { printf "%.0f\n", $3; exit }' <<<"$out"
    else
        say "pgbench failed ($1, $2, $3 clients):"; tail -n 5 <<<"$out" >&2
        echo NA
    fi
}

median() {   # median FORMAT VALUE...: median of the numeric values, printed with FORMAT; NA if none
    local fmt=$1; shift
    printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g |
        awk -v fmt="$fmt\n" '{ v[NR] = $1 } END { if (!NR) print "NA"; else if (NR % 2) printf fmt, v[(NR + 1) / 2];
                                                  else printf fmt, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { div "$1" "$2"; }
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (a == "NA" || b == "NA" || a == "" || b == "" || b == 0) print "NA"; else printf f "\n", a / b }'; }

result() { echo "$1"; RESULTS+=("$1"); }
