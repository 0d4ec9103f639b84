# shellcheck shell=bash
# Worker loops side by side: pgbench -S through Bulwark with `workers: 1` and with
# `workers: 2`, against the same PostgreSQL, next to the direct connection. Sourced by
# bench/run.sh after policy.sh (it uses run.sh's variables and functions); not run on its own.
#
# Two more gateways start from run.sh's configuration (pass-through role, audit on), each
# with its own port and audit store, differing only in "workers". Every case of run.sh
# (mode x clients) runs against direct, workers 1 and workers 2 in the same rotation, and
# is reported as one more line:
#
#   RESULT mode=simple clients=8 workers=1,2 direct_tps=12000 workers1_tps=9000 workers2_tps=11000
#
# plus a table of its own. With one client the two should match (one session lives on one
# worker); the gain shows with several clients on a machine with spare cores. On a machine
# with fewer than 2 cores the comparison means little; it runs anyway.
# BENCH_WORKERS=0 skips this part. docs/scaling.md says how to read it.
[ "${BENCH_WORKERS:-1}" = 0 ] && return 0

WK_PIDS=()
# start_workers_gateway N: a copy of the bench gateway with "workers": N; sets WK_PORT[N]
declare -A WK_PORT
start_workers_gateway() {
    local n=$1 dir=$WORK/bulwark-w$1 port
    port=$(free_port)
    mkdir -p "$dir"
    cp -r "$WORK/bulwark/policies" "$dir/"
    (umask 077; cp "$WORK/bulwark/bench.password" "$WORK/bulwark/bench.hs256" "$dir/")
    /usr/bin/python3 - "$WORK/bulwark/bulwark.json" "$dir/bulwark.json" "$port" "$n" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["listen"] = "127.0.0.1:" + sys.argv[3]
cfg["workers"] = int(sys.argv[4])
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
EOF
    say "starting Bulwark with workers=$n on 127.0.0.1:$port"
    bench_gateway_start "$dir"
    WK_PIDS+=("$BENCH_LAST_PID")
    bench_wait_listening "$dir/bulwark.log" "$BENCH_LAST_PID" || true
    grep -q "event=listening.* workers=$n" "$dir/bulwark.log" ||
        { tail -n 20 "$dir/bulwark.log" >&2; say "Bulwark workers=$n did not start: its results will be NA"; }
    WK_PORT[$n]=$port
}
start_workers_gateway 1
start_workers_gateway 2

TARGETS=(direct bulwark1 bulwark2)
target_port() { case "$1" in direct) echo "$PGPORT" ;; bulwark1) echo "${WK_PORT[1]}" ;; bulwark2) echo "${WK_PORT[2]}" ;; esac; }
target_user() { echo bench; }
target_pass() { if [ "$1" = direct ]; then echo "$PW"; else echo "$TOKEN"; fi; }

WK_TABLE=("| case | direct | workers 1 | workers 2 | workers 2 / workers 1 | workers 2 / direct |"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
for mode in $MODES; do
    for c in $CLIENTS; do
        say "workers 1 vs 2: pgbench -S -M $mode -c $c, ${DURATION}s per run"
        run_case pgbench "$mode" "$c"
        line="RESULT mode=$mode clients=$c workers=1,2 direct_tps=${MED[direct]} workers1_tps=${MED[bulwark1]} workers2_tps=${MED[bulwark2]}"
        result "$line"
        WK_TABLE+=("| $mode -c $c (tps) | ${MED[direct]} | ${MED[bulwark1]} | ${MED[bulwark2]} | $(ratio "${MED[bulwark2]}" "${MED[bulwark1]}") | $(ratio "${MED[bulwark2]}" "${MED[direct]}") |")
    done
done
for p in "${WK_PIDS[@]}"; do stop_pid "$p" || true; done   # (set -e: a gone pid fails kill)
WK_PIDS=()
TABLE+=("" "Worker loops (same run):" "" "${WK_TABLE[@]}")
TARGETS=(direct pgbouncer bulwark)
