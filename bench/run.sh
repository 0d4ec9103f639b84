#!/usr/bin/env bash
# Side-by-side benchmark: PostgreSQL direct, through PgBouncer (session mode) and
# through Bulwark (pass-through role, plaintext on loopback), on one machine in
# one run.
#
#   bench/run.sh            full run  (scale 10, 10 s per pgbench run, 3 rounds)
#   bench/run.sh --quick    short run (scale 1, 3 s per pgbench run, 1 round)
#   bench/run.sh --smoke    checks that every part runs end to end (1 s runs, 2 clients,
#                           simple mode, 1000 rows); its figures mean nothing and no
#                           report file is written
#   options: --rounds N --duration SECONDS --scale N --clients "1 8 32"
#            --modes "simple extended prepared" --rows N (streaming SELECT)
#
# Every case (pgbench -S in one protocol mode at one client count; the streaming
# SELECT) runs against the three targets in turn, round after round, the order
# rotated each round, so that machine drift hits all three alike; the median of
# the rounds is reported. One line per case on stdout:
#
#   RESULT mode=simple clients=8 direct_tps=12000 pgbouncer_tps=9000 bulwark_tps=10000
#   RESULT mode=stream rows=1000000 direct_s=1.9 pgbouncer_s=2.3 bulwark_s=2.1
#
# then a markdown table, also written with machine information to
# bench/results/YYYY-MM-DD-{quick,full}.md. A value that could not be measured
# is NA, and the exit status is then 1. This measures and reports; it asserts
# nothing about speed. Progress goes to stderr.
#
# After these pass-through cases, the same PostgreSQL serves two more parts, whose lines
# are added to the output and the report: bench/policy.sh (the pgbench cases again with a
# realistic policy, `policy=on`; BENCH_POLICY=0 skips it), bench/workers.sh (`workers: 1` and
# `workers: 2` side by side, `workers=1,2`; BENCH_WORKERS=0 skips it) and bench/audit.sh (the cost of
# each audit durability mode). A full run takes about 40 minutes, --quick about 5.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}

RUN_KIND=full SCALE=10 DURATION=10 ROUNDS=3
CLIENTS="1 8 32" MODES="simple extended prepared" ROWS=1000000
set_quick() { RUN_KIND=quick SCALE=1 DURATION=3 ROUNDS=1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) set_quick ;;
        --smoke) RUN_KIND=smoke SCALE=1 DURATION=1 ROUNDS=1 CLIENTS=2 MODES=simple ROWS=1000 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --scale) SCALE=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --rows) ROWS=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown argument \"$1\" (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for v in ROUNDS DURATION SCALE ROWS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench: --${v,,} must be a positive integer" >&2; exit 2; }
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init bench bulwark-bench
bench_need pgbench psql pgbouncer
PGB_PID='' BULWARK_PID=''

export PGSSLMODE=disable   # all three targets in plaintext: compare like with like
export PGCONNECT_TIMEOUT=10

# --- PostgreSQL ---------------------------------------------------------------
bench_pg_start "$SCALE"

# --- PgBouncer ----------------------------------------------------------------
PGB_PORT=$(free_port)
mkdir -p "$WORK/pgbouncer"
printf '"bench" "%s"\n' "$PW" > "$WORK/pgbouncer/userlist.txt"
cat > "$WORK/pgbouncer/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 64
ignore_startup_parameters = extra_float_digits
logfile = $WORK/pgbouncer/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
if [ "$(id -u)" = 0 ]; then
    # PgBouncer refuses to run as root; it switches to this user itself.
    echo "user = postgres" >> "$WORK/pgbouncer/pgbouncer.ini"
    chown -R postgres: "$WORK/pgbouncer"
fi
chmod 600 "$WORK/pgbouncer/userlist.txt"
say "starting PgBouncer on 127.0.0.1:$PGB_PORT"
pgbouncer "$WORK/pgbouncer/pgbouncer.ini" 2>"$WORK/pgbouncer/stderr.log" &
PGB_PID=$!
BENCH_PIDS+=("$PGB_PID")
wait_port "$PGB_PORT" "$PGB_PID" 10 ||
    { cat "$WORK/pgbouncer/stderr.log" "$WORK/pgbouncer/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }

# --- Bulwark ------------------------------------------------------------------
GW_PORT=$(free_port)
bench_secrets "$WORK/bulwark"
# Audit on, with the default durability (strict-writes), as a deployment runs it; retention
# keeps the store within its map however many statements a full run records.
bench_gateway_config "$WORK/bulwark" "$GW_PORT" "" \
    '{ "path": "audit", "map_size": "2GiB", "retention": { "max_size": "1536MiB" } }' \
    "pgbench through the gateway: pass-through"
TOKEN=$(bench_token pgbench)
say "starting Bulwark on 127.0.0.1:$GW_PORT"
bench_gateway_start "$WORK/bulwark"
BULWARK_PID=$BENCH_LAST_PID
if ! bench_wait_listening "$WORK/bulwark/bulwark.log" "$BULWARK_PID"; then
    tail -n 20 "$WORK/bulwark/bulwark.log" >&2
    say "Bulwark did not start: its results will be NA"
fi

# --- measuring ----------------------------------------------------------------
TARGETS=(direct pgbouncer bulwark)
target_port() { case "$1" in direct) echo "$PGPORT" ;; pgbouncer) echo "$PGB_PORT" ;; bulwark) echo "$GW_PORT" ;; esac; }
target_pass() { if [ "$1" = bulwark ]; then echo "$TOKEN"; else echo "$PW"; fi; }
FAILED=0

# run_stream TARGET: prints seconds, or NA
run_stream() {
    local t0 t1
    t0=$EPOCHREALTIME
    if PGPASSWORD=$(target_pass "$1") psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(target_port "$1")" \
           -U bench -d bench -c "SELECT g, md5(g::text) FROM generate_series(1, $ROWS) AS g" >/dev/null 2>"$WORK/stream.err"; then
        t1=$EPOCHREALTIME
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
    else
        say "streaming SELECT failed ($1):"; tail -n 5 "$WORK/stream.err" >&2
        echo NA
    fi
}
# run_case KIND ARGS...: rounds of all three targets, rotated; sets MED[target]
declare -A MED
run_case() {
    local kind=$1; shift
    local -A vals=()
    local r i t v
    for ((r = 0; r < ROUNDS; r++)); do
        for ((i = 0; i < 3; i++)); do
            t=${TARGETS[$(((r + i) % 3))]}
            if [ "$kind" = pgbench ]; then v=$(run_pgbench "$t" "$@"); else v=$(run_stream "$t"); fi
            say "  round $((r + 1))/$ROUNDS $t: $v"
            [ "$v" = NA ] && FAILED=1
            vals[$t]+="$v "
        done
    done
    for t in "${TARGETS[@]}"; do
        # shellcheck disable=SC2086
        MED[$t]=$(median "$([ "$kind" = pgbench ] && echo %.0f || echo %.2f)" ${vals[$t]})
    done
}

STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
TABLE=("| case | direct | pgbouncer | bulwark | bulwark / direct | bulwark / pgbouncer |"
       "| --- | ---: | ---: | ---: | ---: | ---: |")
for mode in $MODES; do
    for c in $CLIENTS; do
        say "pgbench -S -M $mode -c $c, ${DURATION}s per run"
        run_case pgbench "$mode" "$c"
        line="RESULT mode=$mode clients=$c direct_tps=${MED[direct]} pgbouncer_tps=${MED[pgbouncer]} bulwark_tps=${MED[bulwark]}"
        result "$line"
        TABLE+=("| $mode -c $c (tps) | ${MED[direct]} | ${MED[pgbouncer]} | ${MED[bulwark]} | $(ratio "${MED[bulwark]}" "${MED[direct]}") | $(ratio "${MED[bulwark]}" "${MED[pgbouncer]}") |")
    done
done
say "streaming SELECT of $ROWS rows through psql"
run_case stream
line="RESULT mode=stream rows=$ROWS direct_s=${MED[direct]} pgbouncer_s=${MED[pgbouncer]} bulwark_s=${MED[bulwark]}"
result "$line"
# For time, lower is better: the ratios read as "how many times the direct time".
TABLE+=("| stream $ROWS rows (s) | ${MED[direct]} | ${MED[pgbouncer]} | ${MED[bulwark]} | $(ratio "${MED[bulwark]}" "${MED[direct]}") | $(ratio "${MED[bulwark]}" "${MED[pgbouncer]}") |")
. "$ROOT/bench/policy.sh"   # the same pgbench cases with a realistic policy (policy=on lines)
. "$ROOT/bench/masking.sh"  # a large SELECT unmasked and masked (mode=masking line)
. "$ROOT/bench/workers.sh"  # workers 1 and 2 side by side (workers=1,2 lines)
# results_of FAILURE-LINE CMD...: CMD's RESULT lines as ours (FAILURE-LINE if it fails)
results_of() {
    local line fail=$1
    shift
    while IFS= read -r line; do result "$line"; if [[ $line == *=NA* ]]; then FAILED=1; fi; done < <("$@" || echo "$fail")
}
results_of "RESULT audit=failed status=NA" env BULWARK_BIN="$BIN" BENCH_PGPORT="$PGPORT" BENCH_PGPASSWORD="$PW" \
    "$ROOT/bench/audit.sh" --duration "$DURATION" --rounds "$ROUNDS" --clients "$CLIENTS"
# login cost: new TLS connections per second, RS256 token vs direct SCRAM (bench/login.sh)
results_of "RESULT mode=login status=NA" env BULWARK_BIN="$BIN" \
    "$ROOT/bench/login.sh" --duration "$DURATION" --rounds "$ROUNDS" --clients "$CLIENTS"

echo
printf '%s\n' "${TABLE[@]}"

# --- report file --------------------------------------------------------------
if [ "$RUN_KIND" = smoke ]; then
    [ "$FAILED" = 0 ] || die "some measurements failed (NA above)"
    say "smoke run: every part ran (no report written)"
    exit 0
fi
REPORT=$ROOT/bench/results/$(date -u +%F)-$RUN_KIND.md
if ! mkdir -p "$ROOT/bench/results" 2>/dev/null || [ ! -w "$ROOT/bench/results" ]; then
    die "cannot write to $ROOT/bench/results (the results above are not saved)"
fi
if rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || rev="$rev (with uncommitted changes in src/)"
else
    rev=unknown
fi
{
    echo "# Bulwark benchmark, $RUN_KIND run, $STARTED"
    echo
    echo "pgbench -S (select-only), median of $ROUNDS round(s), ${DURATION}s per pgbench run, scale $SCALE;"
    echo "targets alternated in rotating order within each case. TPS: higher is better; stream: seconds"
    echo "for \`psql -A -t -c \"SELECT g, md5(g::text) FROM generate_series(1, $ROWS) g\" > /dev/null\`, lower is better."
    echo "All on loopback, plaintext; PgBouncer in session mode; Bulwark with a pass-through role."
    echo
    printf '%s\n' "${TABLE[@]}"
    echo
    echo '```'
    printf '%s\n' "${RESULTS[@]}"
    echo '```'
    echo
    echo "## Machine and versions"
    echo
    echo "- cpu: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
    echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null)"
    echo "- kernel: $(uname -srm)"
    echo "- load average (1, 5, 15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
    echo "  (more than about $(nproc) means other work shared the machine: compare within a row, not across runs)"
    # shellcheck disable=SC1091
    echo "- os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
    echo "- bulwark: git $rev"
    echo "- server: $(psql -X -A -t -h "$WORK/pg" -p "$PGPORT" -U postgres -d postgres -c 'SHOW server_version' 2>/dev/null)"
    echo "- $(pgbouncer --version 2>/dev/null | head -n 1)"
    echo "- $(pgbench --version 2>/dev/null)"
    echo "- parameters: clients \"$CLIENTS\", modes \"$MODES\", pgbench -j min(clients, 2), rows $ROWS"
} > "$REPORT"
say "report written to ${REPORT#"$ROOT"/}"
[ "$FAILED" = 0 ] || die "some measurements failed (NA above)"
