#!/usr/bin/env bash
# Audit recording cost: pgbench through Bulwark with the audit store in each durability
# mode (SPEC section 3: batched, strict-writes, strict), next to PostgreSQL direct.
#
#   bench/audit.sh            full run  (scale 10, 10 s per pgbench run, 3 rounds)
#   bench/audit.sh --quick    short run (scale 1, 3 s per pgbench run, 1 round)
#   options: --rounds N --duration SECONDS --scale N --clients "1 8 32"
#            --scripts "select-only simple-update"
#
# Cases: pgbench -S (select-only: reads, recorded within one flush) and pgbench -N
# (simple-update: BEGIN, UPDATE, SELECT, INSERT, END; the writes wait for their record in
# strict-writes, everything waits in strict), simple query mode, at each client count.
# Each case runs against the four targets in rotating order, round after round; the median
# tps is reported. The three gateways run side by side, each with its own store.
#
# One line per case on stdout, e.g.
#
#   RESULT mode=simple script=select-only clients=8 audit=strict-writes bulwark_tps=9000 direct_tps=12000 latency_ms=0.89 records_per_s=18000 group_mean=3.1
#
# latency_ms is pgbench's average; records_per_s the audit records committed per second of
# pgbench run; group_mean the records per LMDB commit (group commit; from the store's
# transaction ids, `mdb_stat -e`: the gateway exposes no statistics of its own). Then per
# mode:
#
#   RESULT audit=strict statements=120000 records=240210 store_bytes=98000000 bytes_per_statement=816 records_per_statement=2.00
#
# (store_bytes: LMDB pages in use, freelist excluded) and, as the only view of fsync
# latency from outside, the difference of the one-client latencies strict - batched for
# each script (`RESULT audit=strict script=... durable_wait_ms_est=...`). Progress goes to
# stderr.
#
# bench/run.sh calls this with the PostgreSQL it started (BENCH_PGPORT, BENCH_PGPASSWORD:
# role and database "bench", pgbench tables loaded); run alone, it starts its own. A value
# that could not be measured is NA, and the exit status is then 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}

SCALE=10 DURATION=10 ROUNDS=3 CLIENTS="1 8 32" SCRIPTS="select-only simple-update"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SCALE=1 DURATION=3 ROUNDS=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --scale) SCALE=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --scripts) SCRIPTS=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/audit: unknown argument \"$1\" (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for v in ROUNDS DURATION SCALE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench/audit: --${v,,} must be a positive integer" >&2; exit 2; }
done
for s in $SCRIPTS; do
    case "$s" in select-only|simple-update) ;; *) echo "bench/audit: unknown script \"$s\"" >&2; exit 2 ;; esac
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init bench/audit bulwark-bench-audit
bench_need pgbench psql
HAVE_MDB_STAT=1
command -v mdb_stat >/dev/null || { HAVE_MDB_STAT=0; say "mdb_stat not found (lmdb-utils): store figures will be NA"; }
# The gateways get SIGTERM and 10 s to commit what they hold.
BENCH_STOP_SIGNAL=TERM BENCH_STOP_SECONDS=10
declare -A GW_PID=() GW_PORT=()
MODES_AUDIT=(batched strict-writes strict)

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10

# --- PostgreSQL: bench/run.sh's, or our own ------------------------------------
if [ -n "${BENCH_PGPORT:-}" ]; then
    PGPORT=$BENCH_PGPORT PW=${BENCH_PGPASSWORD:?BENCH_PGPASSWORD must come with BENCH_PGPORT}
    say "using the PostgreSQL on 127.0.0.1:$PGPORT (database bench)"
else
    bench_pg_start "$SCALE"
fi

# --- three gateways, one per durability mode ---------------------------------
bench_secrets "$WORK"
TOKEN=$(bench_token pgbench)
for m in "${MODES_AUDIT[@]}"; do
    port=$(free_port)
    GW_PORT[$m]=$port
    bench_gateway_config "$WORK/gw-$m" "$port" "../" \
        "{ \"path\": \"audit\", \"map_size\": \"4GiB\", \"durability\": \"$m\" }" \
        "pgbench through the gateway: pass-through, recorded"
    say "starting Bulwark (audit.durability $m) on 127.0.0.1:$port"
    bench_gateway_start "$WORK/gw-$m"
    GW_PID[$m]=$BENCH_LAST_PID
done
for m in "${MODES_AUDIT[@]}"; do
    bench_wait_listening "$WORK/gw-$m/bulwark.log" "${GW_PID[$m]}" ||
        { tail -n 20 "$WORK/gw-$m/bulwark.log" >&2; die "Bulwark ($m) did not start"; }
done

# --- store figures ------------------------------------------------------------
# store_stat MODE: "records txnid bytes_in_use" of that gateway's store (NA NA NA without mdb_stat)
store_stat() {
    local dir=$WORK/gw-$1/audit
    if [ "$HAVE_MDB_STAT" = 0 ] || [ ! -e "$dir/data.mdb" ]; then echo "NA NA NA"; return; fi
    local env recs
    env=$(mdb_stat -ef "$dir" 2>/dev/null) || { echo "NA NA NA"; return; }
    recs=$(mdb_stat -s records "$dir" 2>/dev/null | awk '/Entries:/ { print $2; exit }')
    awk -v recs="${recs:-NA}" '
        /Page size:/ { ps = $3 } /Number of pages used:/ { used = $5 }
        /Last transaction ID:/ { txn = $4 } /Free pages:/ { free = $3 }
        END { if (ps == "" || used == "" || txn == "") print "NA NA NA";
              else printf "%s %s %d\n", recs, txn, (used - free) * ps }' <<<"$env"
}

# --- measuring ----------------------------------------------------------------
TARGETS=(direct "${MODES_AUDIT[@]}")
target_port() { if [ "$1" = direct ]; then echo "$PGPORT"; else echo "${GW_PORT[$1]}"; fi; }
target_pass() { if [ "$1" = direct ]; then echo "$PW"; else echo "$TOKEN"; fi; }
script_flag() { if [ "$1" = select-only ]; then echo -S; else echo -N; fi; }
stmts_per_tx() { if [ "$1" = select-only ]; then echo 1; else echo 5; fi; }
FAILED=0
declare -A STMTS=() LAT1=()

# run_pgbench TARGET SCRIPT CLIENTS (bench/lib.sh's, with the latency and the count):
# prints "tps latency_ms transactions", or "NA NA NA"
run_pgbench() {
    local jobs=$(( $3 < 2 ? $3 : 2 )) out
    if out=$(PGPASSWORD=$(target_pass "$1") pgbench -n "$(script_flag "$2")" -M simple -c "$3" -j "$jobs" \
                 -T "$DURATION" -h 127.0.0.1 -p "$(target_port "$1")" -U bench bench 2>&1); then
        awk '/^tps = / { tps = $3 } /^latency average = / { lat = $4 }
             /^number of transactions actually processed: / { split($6, a, "/"); n = a[1] }
             END { if (tps == "") print "NA NA NA"; else printf "%.0f %.3f %d\n", tps, lat, n }' <<<"$out"
    else
        say "pgbench failed ($1, $2, $3 clients):"; tail -n 5 <<<"$out" >&2
        echo "NA NA NA"
    fi
}

SUMMARY=("| case | direct tps | batched tps | strict-writes tps | strict tps | strict-writes / batched | strict / batched |"
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for script in $SCRIPTS; do
    for c in $CLIENTS; do
        say "pgbench $(script_flag "$script") ($script) -M simple -c $c, ${DURATION}s per run"
        declare -A TPS=() LAT=() CREC=() CTXN=() CSEC=()
        for ((r = 0; r < ROUNDS; r++)); do
            for ((i = 0; i < ${#TARGETS[@]}; i++)); do
                t=${TARGETS[$(((r + i) % ${#TARGETS[@]}))]}
                [ "$t" = direct ] || read -r rec0 txn0 _ < <(store_stat "$t")
                t0=$EPOCHREALTIME
                read -r tps lat n < <(run_pgbench "$t" "$script" "$c")
                t1=$EPOCHREALTIME
                say "  round $((r + 1))/$ROUNDS $t: tps $tps, latency ${lat} ms"
                if [ "$tps" = NA ]; then FAILED=1; fi
                TPS[$t]+="$tps " LAT[$t]+="$lat "
                if [ "$t" != direct ]; then
                    sleep 0.3   # reads are recorded within one flush
                    read -r rec1 txn1 _ < <(store_stat "$t")
                    if [ "$rec0" != NA ] && [ "$rec1" != NA ]; then
                        CREC[$t]=$(( ${CREC[$t]:-0} + rec1 - rec0 ))
                        CTXN[$t]=$(( ${CTXN[$t]:-0} + txn1 - txn0 ))
                    fi
                    CSEC[$t]=$(awk -v a="${CSEC[$t]:-0}" -v b="$t0" -v c="$t1" 'BEGIN { printf "%.3f", a + c - b }')
                    [ "$n" = NA ] || STMTS[$t]=$(( ${STMTS[$t]:-0} + n * $(stmts_per_tx "$script") ))
                fi
            done
        done
        # shellcheck disable=SC2086
        direct=$(median %.0f ${TPS[direct]})
        declare -A MEDT=()
        for m in "${MODES_AUDIT[@]}"; do
            # shellcheck disable=SC2086
            MEDT[$m]=$(median %.0f ${TPS[$m]})
            # shellcheck disable=SC2086
            lat=$(median %.3f ${LAT[$m]})
            if [ "$c" = 1 ]; then LAT1[$m,$script]=$lat; fi
            echo "RESULT mode=simple script=$script clients=$c audit=$m bulwark_tps=${MEDT[$m]} direct_tps=$direct" \
                 "latency_ms=$lat records_per_s=$(div "${CREC[$m]:-NA}" "${CSEC[$m]:-NA}" %.0f)" \
                 "group_mean=$(div "${CREC[$m]:-NA}" "${CTXN[$m]:-NA}")"
            if [ "${MEDT[$m]}" = NA ]; then FAILED=1; fi
        done
        SUMMARY+=("| $script -c $c | $direct | ${MEDT[batched]} | ${MEDT[strict-writes]} | ${MEDT[strict]} | $(div "${MEDT[strict-writes]}" "${MEDT[batched]}") | $(div "${MEDT[strict]}" "${MEDT[batched]}") |")
        unset TPS LAT CREC CTXN CSEC MEDT
    done
done

for m in "${MODES_AUDIT[@]}"; do
    read -r recs _ bytes < <(store_stat "$m")
    echo "RESULT audit=$m statements=${STMTS[$m]:-NA} records=$recs store_bytes=$bytes" \
         "bytes_per_statement=$(div "$bytes" "${STMTS[$m]:-NA}" %.0f)" \
         "records_per_statement=$(div "$recs" "${STMTS[$m]:-NA}")"
done
for script in $SCRIPTS; do
    if [ -n "${LAT1[strict,$script]:-}" ] && [ -n "${LAT1[batched,$script]:-}" ]; then
        echo "RESULT audit=strict script=$script clients=1 durable_wait_ms_est=$(awk -v a="${LAT1[strict,$script]}" -v b="${LAT1[batched,$script]}" \
              'BEGIN { if (a == "NA" || b == "NA") print "NA"; else printf "%.3f\n", a - b }')"
    fi
done
printf '%s\n' "" "${SUMMARY[@]}" >&2
for m in "${MODES_AUDIT[@]}"; do
    if grep -E 'level=error' "$WORK/gw-$m/bulwark.log" >&2; then
        say "errors in the $m gateway's log (above)"; FAILED=1
    fi
done
[ "$FAILED" = 0 ] || die "some measurements failed (NA above)"
