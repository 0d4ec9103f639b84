#!/usr/bin/env bash
# Where the loop thread's instructions go per statement: Bulwark under
# valgrind --tool=callgrind, driven by pgbench -S (select-only), recording on.
# Instruction counts do not depend on how loaded the machine is, unlike tps.
#
#   bench/profile.sh [--transactions N] [--clients C] [--protocol simple|extended]
#                    [--durability MODE] [--policy allow|rules|masking] [--keep DIR]
#
# --protocol takes pgbench's -M modes (simple, extended, prepared). --policy picks the
# role's policy: allow (default: everything allowed, nothing masked), rules (the
# realistic rule set of bench/policy.sh, every statement decided by rules) or masking
# (allow, plus a column mask on pgbench_accounts and every content detector, so that
# every result goes through the masking plan and the detectors).
#
# Counters are zeroed after a warm-up pgbench (callgrind_control -z during a 1 s
# warm-up phase would race), then two measured pgbench runs are dumped one by one
# (see measure below). Prints, per thread,
#
#   RESULT thread=1 role=loop Ir=123456789 statements=20000 Ir_per_statement=6172 marginal_Ir_per_statement=5900
#   RESULT loops Ir=... statements=... Ir_per_statement=... marginal_Ir_per_statement=... (every loop thread)
#
# (marginal: per-connection costs left out, see below) and the loop threads' top
# functions (inclusive) to stderr. --keep DIR
# keeps the callgrind files for callgrind_annotate.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}
TX=2000 CLIENTS=4 PROTO=simple DUR=strict-writes KEEP= POLICY=allow
while [ $# -gt 0 ]; do
    case "$1" in
        --transactions) TX=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --protocol) PROTO=$2; shift ;;
        --durability) DUR=$2; shift ;;
        --keep) KEEP=$2; shift ;;
        --policy) POLICY=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/profile: unknown argument \"$1\" (try --help)" >&2; exit 2 ;;
    esac
    shift
done
say() { printf 'bench/profile: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
for tool in valgrind callgrind_control callgrind_annotate pgbench psql; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ -x "$BIN" ] || die "$BIN not found: run \`make\` first"

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-profile.XXXXXX")
chmod 711 "$WORK"
GW=
cleanup() {
    local status=$?
    trap - EXIT
    set +e
    if [ -n "$GW" ] && kill -0 "$GW" 2>/dev/null; then
        kill -TERM "$GW"; for _ in $(seq 300); do kill -0 "$GW" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW" 2>/dev/null
    fi
    "$ROOT/scripts/pgtmp.sh" stop "$WORK/pg" >/dev/null 2>&1
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK"/cg.out* "$KEEP"/ 2>/dev/null; fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export PGSSLMODE=disable PGCONNECT_TIMEOUT=30

PGPORT=$(free_port) PW=$(random_hex 16)
say "starting PostgreSQL on 127.0.0.1:$PGPORT"
"$ROOT/scripts/pgtmp.sh" start "$WORK/pg" "$PGPORT" >/dev/null || die "pgtmp.sh start failed"
printf '%s\n' "CREATE ROLE bench LOGIN PASSWORD :'pw';" "CREATE DATABASE bench OWNER bench;" |
    psql -X -q -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$PGPORT" -U postgres -d postgres -v pw="$PW" >/dev/null
PGPASSWORD=$PW pgbench -i -q -s 1 -h 127.0.0.1 -p "$PGPORT" -U bench bench >/dev/null 2>&1 || die "pgbench -i failed"

(umask 077; printf '%s' "$PW" > "$WORK/bench.password"; random_hex 32 > "$WORK/bench.hs256")
TOKEN=$("$BIN" token --secret-file "$WORK/bench.hs256" --iss bench --aud bulwark --sub pgbench --ttl 2h)
GWPORT=$(free_port)
mkdir -p "$WORK/gw/policies"
cat > "$WORK/gw/bulwark.json" <<EOF
{
  "listen": "127.0.0.1:$GWPORT",
  "allow_plaintext_on_loopback": true,
  "identity": { "issuers": [ { "issuer": "bench", "audience": "bulwark", "hs256_secret_file": "../bench.hs256" } ] },
  "targets": { "bench": { "host": "127.0.0.1", "port": $PGPORT, "dbname": "bench", "sslmode": "disable" } },
  "policy_files": ["policies/*.json"],
  "audit": { "path": "audit", "map_size": "1GiB", "durability": "$DUR" },
  "shutdown_grace": "1s"
}
EOF
case "$POLICY" in
    allow) EXTRA='"default": "allow"' ;;
    rules) EXTRA='"default": "deny",
  "rules": [
    { "id": "no-ddl", "action": "deny", "operations": ["ddl", "dcl", "truncate"] },
    { "id": "no-session-changes", "action": "deny", "operations": ["session", "utility", "do"] },
    { "id": "no-bulk-copy", "action": "deny", "operations": ["copy_to", "copy_from"] },
    { "id": "no-secrets", "action": "deny", "relations": ["public.secrets", "internal.*"] },
    { "id": "no-unbounded-writes", "action": "deny", "operations": ["update", "delete"], "without_where": true },
    { "id": "read-bench", "action": "allow", "operations": ["select", "explain"], "relations": ["public.pgbench_*"] },
    { "id": "write-bench", "action": "allow", "operations": ["insert", "update", "delete"],
      "relations": ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"] }
  ]' ;;
    masking) EXTRA='"default": "allow",
  "masks": [
    { "column": "public.pgbench_accounts.filler", "method": "redact" },
    { "detectors": ["email", "credit_card", "us_ssn", "iban", "phone", "secret"], "method": "redact" }
  ]' ;;
    *) die "--policy must be allow, rules or masking" ;;
esac
cat > "$WORK/gw/policies/bench.json" <<EOF
{ "role": "bench", "identities": [ { "iss": "bench", "sub": "pgbench" } ],
  "upstream": { "bench": { "user": "bench", "password_file": "../../bench.password" } },
  "read_only": false, "catalog_reads": true,
  $EXTRA }
EOF
say "starting Bulwark under callgrind on 127.0.0.1:$GWPORT (durability $DUR, policy $POLICY)"
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/cg.out" \
    "$BIN" serve -c "$WORK/gw/bulwark.json" 2>"$WORK/gw.log" &
GW=$!
for _ in $(seq 600); do grep -q 'event=listening' "$WORK/gw.log" 2>/dev/null && break; sleep 0.1; done
grep -q 'event=listening' "$WORK/gw.log" || { tail "$WORK/gw.log" >&2; die "Bulwark did not start"; }

bench() { PGPASSWORD=$TOKEN pgbench -n -S -M "$PROTO" -c "${2:-$CLIENTS}" -j 1 -t "$1" -h 127.0.0.1 -p "$GWPORT" -U bench bench; }
say "warm-up"
# 16 clients, so that every worker loop has logged in upstream once (its SCRAM
# cache filled) and the measured run counts statements, not PBKDF2
bench 50 16 >/dev/null 2>&1 || { tail "$WORK/gw.log" >&2; die "warm-up pgbench failed"; }
sleep 1
# Two measured runs with the same number of clients, each dumped on its own (a dump
# zeroes the counters): a short one (TX/5 transactions per client) and the full one.
# Both pay the same per-connection costs (login, catalog loads), so the difference
# divided by the difference in statements is the marginal cost of a statement.
measure() {
    local out
    out=$(bench "$1" 2>&1) || { echo "$out" >&2; die "pgbench failed"; }
    awk '/^number of transactions actually processed: / { split($6, a, "/"); print a[1] }' <<<"$out"
}
SHORT=$(( TX / 5 > 0 ? TX / 5 : 1 ))
callgrind_control -z "$GW" >/dev/null
say "pgbench -S -M $PROTO -c $CLIENTS -t $SHORT, then -t $TX"
STMTS1=$(measure "$SHORT")
sleep 1   # the writer commits what is left
callgrind_control -d "$GW" >/dev/null
STMTS=$(measure "$TX")
sleep 1
callgrind_control -d "$GW" >/dev/null
sleep 1
thread_ir() {
    local ir
    ir=$(awk '/^summary:/ { print $2 }' "$1")
    [ -n "$ir" ] || ir=$(awk '/^totals:/ { print $2 }' "$1")
    echo "${ir:-0}"
}
LOOPS_IR=0 LOOPS_IR1=0
for f in "$WORK"/cg.out.2-[0-9]*; do
    [ -e "$f" ] || continue
    t=${f##*-}
    ir=$(thread_ir "$f")
    [ "$ir" != 0 ] || continue
    ir1=$(thread_ir "$WORK/cg.out.1-$t" 2>/dev/null || echo 0)
    role=other
    grep -q 'fn=.*ev_run' "$f" && role=loop
    grep -q 'fn=.*writer_main' "$f" && role=writer
    echo "RESULT thread=$((10#$t)) role=$role Ir=$ir statements=$STMTS Ir_per_statement=$((ir / STMTS)) marginal_Ir_per_statement=$(( (ir - ir1) / (STMTS - STMTS1) ))"
    if [ "$role" = loop ]; then
        LOOPS_IR=$((LOOPS_IR + ir)) LOOPS_IR1=$((LOOPS_IR1 + ir1))
        say "loop thread, inclusive:"
        callgrind_annotate --inclusive=yes "$f" 2>/dev/null | sed -n '/file:function/,/^$/p' | sed -n '3,45p' >&2 || true
    fi
done
# with workers > 1 the sessions are spread over several loops: their sum is the cost
echo "RESULT loops Ir=$LOOPS_IR statements=$STMTS Ir_per_statement=$((LOOPS_IR / STMTS)) marginal_Ir_per_statement=$(( (LOOPS_IR - LOOPS_IR1) / (STMTS - STMTS1) )) protocol=$PROTO policy=$POLICY"
