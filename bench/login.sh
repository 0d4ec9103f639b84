#!/usr/bin/env bash
# Login cost: new TLS connections per second, each running one `SELECT 1`, through Bulwark
# with an RS256 token (JWKS file), against PostgreSQL directly with SCRAM-SHA-256 over TLS
# as the reference (pgbench -C: a new connection for every transaction). Rounds alternate
# the two targets; the median is reported as
#
#   RESULT mode=login clients=8 direct_cps=410 bulwark_cps=380
#
# Starts its own PostgreSQL (with TLS) and gateway, and stops them on exit. Run by
# bench/run.sh; on its own: bench/login.sh [--duration S] [--rounds N] [--clients N].
# It measures; it asserts nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}
DURATION=5 ROUNDS=3 CLIENTS=8
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --clients) CLIENTS=${2##* }; shift 2 ;; # the last of a list: the busiest case
    *) echo "login.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_init bench/login bulwark-bench-login
bench_need pgbench psql
BENCH_STOP_SIGNAL=TERM

"$ROOT/scripts/mkcerts.sh" "$WORK/certs" >/dev/null
bench_pg_start 0 --ssl "$WORK/certs"

mkdir -p "$WORK/gw/policies"
printf '%s' "$PW" > "$WORK/gw/bench.password"
cp "$ROOT/tests/fixtures/keys/jwks.json" "$WORK/gw/jwks.json"
GW_PORT=$(free_port)
cat > "$WORK/gw/bulwark.json" <<EOF
{
  "listen": "127.0.0.1:$GW_PORT",
  "tls": { "cert_file": "$WORK/certs/server.crt", "key_file": "$WORK/certs/server.key" },
  "identity": { "issuers": [ { "issuer": "bench-rs", "audience": "bulwark",
                               "jwks_file": "jwks.json", "algorithms": ["RS256"] } ] },
  "targets": { "bench": { "host": "127.0.0.1", "port": $PGPORT, "dbname": "bench",
                          "sslmode": "require" } },
  "audit": { "path": "$WORK/gw/audit", "durability": "strict-writes" },
  "policy_files": ["policies/*.json"]
}
EOF
cat > "$WORK/gw/policies/login.json" <<'EOF'
{ "role": "bench", "identities": [ { "iss": "bench-rs", "sub": "pgbench-*" } ],
  "upstream": { "bench": { "user": "bench", "password_file": "../bench.password" } },
  "default": "allow" }
EOF
bench_gateway_start "$WORK/gw"
bench_wait_listening "$WORK/gw/bulwark.log" "$BENCH_LAST_PID" 100 ||
    { tail -n 20 "$WORK/gw/bulwark.log" >&2; die "Bulwark did not start"; }
TOKEN=$("$BIN" token --key "$ROOT/tests/fixtures/keys/rsa1.pem" --kid rsa1 --alg RS256 \
        --iss bench-rs --aud bulwark --sub pgbench-login --ttl 1h)
echo 'SELECT 1;' > "$WORK/select1.sql"

cps() { # cps PORT PASSWORD: connections (= transactions) per second
    PGPASSWORD=$2 PGSSLMODE=require pgbench -n -C -f "$WORK/select1.sql" -c "$CLIENTS" \
        -j 2 -T "$DURATION" -h 127.0.0.1 -p "$1" -U bench bench 2>/dev/null |
        awk '/^tps = / { printf "%d\n", $3 }'
}
D=() B=()
for r in $(seq "$ROUNDS"); do
    say "round $r/$ROUNDS"
    if [ $((r % 2)) = 1 ]; then D+=("$(cps "$PGPORT" "$PW")"); B+=("$(cps "$GW_PORT" "$TOKEN")")
    else B+=("$(cps "$GW_PORT" "$TOKEN")"); D+=("$(cps "$PGPORT" "$PW")"); fi
done
echo "RESULT mode=login clients=$CLIENTS tls=on direct_cps=$(median %.0f "${D[@]}") bulwark_cps=$(median %.0f "${B[@]}")"
