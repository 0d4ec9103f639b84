#!/usr/bin/env bash
# Where the loop thread's instructions go per statement: Bulwark under
# valgrind --tool=callgrind, driven by pgbench -S (select-only), recording on.
# Instruction counts do not depend on how loaded the machine is, unlike tps.
#
#   bench/profile.sh [--transactions N] [--clients C] [--protocol simple|extended]
#                    [--durability MODE] [--keep DIR]
#
# Counters are zeroed after pgbench has connected (callgrind_control -z during a
# 1 s warm-up phase would race; instead the script runs a short warm-up pgbench,
# zeroes, runs the measured pgbench, dumps). Prints, per thread,
#
#   RESULT thread=1 role=loop Ir=123456789 statements=20000 Ir_per_statement=6172
#
# and the loop thread's top functions (inclusive and self) to stderr. --keep DIR
# keeps the callgrind files for callgrind_annotate.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}
TX=2000 CLIENTS=4 PROTO=simple DUR=strict-writes KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --transactions) TX=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --protocol) PROTO=$2; shift ;;
        --durability) DUR=$2; shift ;;
        --keep) KEEP=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/profile: unknown argument \"$1\" (try --help)" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init bench/profile bulwark-profile
bench_need valgrind callgrind_control callgrind_annotate pgbench psql
BENCH_STOP_SIGNAL=TERM BENCH_STOP_SECONDS=30   # valgrind takes its time to write out
bench_on_exit() {   # keep the callgrind files (the gateway has stopped; $WORK is still there)
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK"/cg.out* "$KEEP"/ 2>/dev/null; fi
    return 0
}
export PGSSLMODE=disable PGCONNECT_TIMEOUT=30

bench_pg_start 1
bench_secrets "$WORK"
TOKEN=$("$BIN" token --secret-file "$BENCH_SECRET" --iss bench --aud bulwark --sub pgbench --ttl 2h)
GWPORT=$(free_port)
bench_gateway_config "$WORK/gw" "$GWPORT" "../" \
    "{ \"path\": \"audit\", \"map_size\": \"1GiB\", \"durability\": \"$DUR\" }" \
    "pgbench under callgrind"
say "starting Bulwark under callgrind on 127.0.0.1:$GWPORT (durability $DUR)"
bench_gateway_start "$WORK/gw" valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/cg.out"
GW=$BENCH_LAST_PID
bench_wait_listening "$WORK/gw/bulwark.log" "$GW" 600 || { tail "$WORK/gw/bulwark.log" >&2; die "Bulwark did not start"; }

bench() { PGPASSWORD=$TOKEN pgbench -n -S -M "$PROTO" -c "$CLIENTS" -j 1 -t "$1" -h 127.0.0.1 -p "$GWPORT" -U bench bench; }
say "warm-up"
bench 50 >/dev/null 2>&1 || { tail "$WORK/gw/bulwark.log" >&2; die "warm-up pgbench failed"; }
sleep 1
callgrind_control -z "$GW" >/dev/null
say "pgbench -S -M $PROTO -c $CLIENTS -t $TX"
out=$(bench "$TX" 2>&1) || { echo "$out" >&2; die "pgbench failed"; }
STMTS=$(awk '/^number of transactions actually processed: / { split($6, a, "/"); print a[1] }' <<<"$out")
sleep 1   # the writer commits what is left
callgrind_control -d "$GW" >/dev/null
sleep 1
for f in "$WORK"/cg.out.*-[0-9]*; do
    case "$f" in *.[0-9]*-[0-9]*) ;; *) continue ;; esac
    t=${f##*-}
    ir=$(awk '/^summary:/ { print $2 }' "$f")
    [ -n "$ir" ] || ir=$(awk '/^totals:/ { print $2 }' "$f")
    [ -n "$ir" ] && [ "$ir" != 0 ] || continue
    role=other
    grep -q 'fn=.*ev_run' "$f" && role=loop
    grep -q 'fn=.*writer_main' "$f" && role=writer
    echo "RESULT thread=$((10#$t)) role=$role Ir=$ir statements=$STMTS Ir_per_statement=$((ir / STMTS))"
    if [ "$role" = loop ]; then
        say "loop thread, inclusive:"
        callgrind_annotate --inclusive=yes "$f" 2>/dev/null | sed -n '1,/^$/d; 1,45p' >&2 || true
        say "loop thread, self:"
        callgrind_annotate "$f" 2>/dev/null | sed -n '1,/^$/d; 1,45p' >&2 || true
    fi
done
