#!/usr/bin/env bash
# Bulwark demo: a throwaway PostgreSQL with a small shop schema (with PII in it),
# the gateway in front of it with TLS and policies/demo.json, a demo token, and a
# ready psql command. Ctrl-C (or SIGTERM) stops all of it and removes every file
# it made.
#
#   scripts/demo.sh                 run until interrupted (what `make demo` does)
#   DEMO_ONESHOT=1 scripts/demo.sh  start everything, run one query through the
#                                   gateway with psql, stop, exit 0 on success
#
# Environment: BULWARK_BIN (default build/bulwark), DEMO_PORT (gateway port;
# default 6432, or a free port when 6432 is taken), TMPDIR.
# Works as a normal user and as root (the cluster then runs as the postgres OS
# user; scripts/pgtmp.sh takes care of that).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}
ONESHOT=${DEMO_ONESHOT:-0}

say() { printf '%s\n' "$*" >&2; }
die() { say "demo: $*"; exit 1; }

free_port() {
    # A port nobody listens on now (there is a small race; good enough for a demo).
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_is_free() {
    /usr/bin/python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

[ -x "$BIN" ] || die "$BIN not found: run \`make\` first (or \`make demo\`)"
for tool in psql od; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh"
done

DEMO=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-demo.XXXXXX")
# The cluster may run as another OS user (postgres, when we are root): it must be
# able to reach its own directory below this one, but not list what else is here.
chmod 711 "$DEMO"
PG_STARTED=0
BULWARK_PID=
TAIL_PID=

# shellcheck disable=SC2317  # invoked by trap
cleanup() {
    local status=$?
    trap - EXIT
    trap "" INT TERM HUP   # finish cleaning up whatever else arrives (inherited by what we run here)
    set +e
    if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null; fi
    if [ -n "$BULWARK_PID" ] && kill -0 "$BULWARK_PID" 2>/dev/null; then
        # SIGINT stops the gateway at once; SIGTERM would wait for sessions to drain.
        kill -INT "$BULWARK_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$BULWARK_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BULWARK_PID" 2>/dev/null
        wait "$BULWARK_PID" 2>/dev/null
    fi
    if [ "$PG_STARTED" = 1 ]; then "$ROOT/scripts/pgtmp.sh" stop "$DEMO/pg" >/dev/null 2>&1; fi
    rm -rf "$DEMO"
    say "demo: stopped; removed $DEMO"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- certificates and secrets -------------------------------------------------
out=$("$ROOT/scripts/mkcerts.sh" "$DEMO/certs" 2>&1) || { say "$out"; die "mkcerts.sh failed"; }
mkdir -p "$DEMO/secrets" "$DEMO/policies"
chmod 700 "$DEMO/secrets"
(umask 077
 random_hex 24 > "$DEMO/secrets/shop_ro.password"
 random_hex 32 > "$DEMO/secrets/demo.hs256")

# --- PostgreSQL with the shop schema ------------------------------------------
PGPORT=$(free_port)
say "demo: starting PostgreSQL 15 on 127.0.0.1:$PGPORT"
PG_STARTED=1   # before: an interrupted start may leave a server running
"$ROOT/scripts/pgtmp.sh" start "$DEMO/pg" "$PGPORT" >/dev/null || die "pgtmp.sh start failed"
su_psql() { psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO/pg" -p "$PGPORT" -U postgres "$@"; }
su_psql -d postgres -c "CREATE DATABASE shop" >/dev/null
su_psql -d shop -f "$ROOT/examples/demo/schema.sql" >/dev/null
# The password goes through a psql variable on stdin, never on a command line.
printf '%s\n' "ALTER ROLE shop_ro LOGIN PASSWORD :'pw';" |
    su_psql -d shop -v pw="$(cat "$DEMO/secrets/shop_ro.password")" >/dev/null

# --- gateway config -----------------------------------------------------------
GWPORT=${DEMO_PORT:-}
if [ -z "$GWPORT" ]; then
    if port_is_free 6432; then GWPORT=6432; else GWPORT=$(free_port); fi
fi
cp "$ROOT/policies/demo.json" "$ROOT/policies/langchain-readonly.json" "$DEMO/policies/"
cat > "$DEMO/bulwark.json" <<EOF
{
  "listen": "127.0.0.1:$GWPORT",
  "tls": { "cert_file": "certs/server.crt", "key_file": "certs/server.key" },
  "allow_plaintext_on_loopback": false,
  "identity": {
    "issuers": [
      { "issuer": "demo", "audience": "bulwark", "hs256_secret_file": "secrets/demo.hs256" }
    ],
    "leeway": "30s",
    "max_token_lifetime": "24h"
  },
  "targets": {
    "shop": { "host": "127.0.0.1", "port": $PGPORT, "dbname": "shop", "sslmode": "disable" }
  },
  "policy_files": ["policies/*.json"],
  "audit": { "path": "audit" },
  "shutdown_grace": "2s"
}
EOF

TOKEN=$("$BIN" token --secret-file "$DEMO/secrets/demo.hs256" --iss demo --aud bulwark \
        --sub demo-agent-1 --ttl 12h) || die "bulwark token failed"

# --- gateway ------------------------------------------------------------------
LOG=$DEMO/bulwark.log
"$BIN" serve -c "$DEMO/bulwark.json" 2>"$LOG" &
BULWARK_PID=$!
for _ in $(seq 200); do
    grep -q 'event=listening' "$LOG" 2>/dev/null && break
    kill -0 "$BULWARK_PID" 2>/dev/null || { cat "$LOG" >&2; die "bulwark serve exited during startup"; }
    sleep 0.1
done
grep -q 'event=listening' "$LOG" || { cat "$LOG" >&2; die "bulwark serve did not report event=listening within 20s"; }

PSQL_URI="postgresql://analyst:$TOKEN@localhost:$GWPORT/shop?sslmode=verify-full&sslrootcert=$DEMO/certs/ca.crt"
SA_URI="postgresql+psycopg2://analyst:$TOKEN@localhost:$GWPORT/shop?sslmode=require"

if [ "$ONESHOT" = 1 ]; then
    say "demo: one query through the gateway (verify-full TLS, role analyst)"
    psql -X -v ON_ERROR_STOP=1 "$PSQL_URI" \
        -c "SELECT c.id, c.name, c.email, c.card_number, count(o.id) AS orders
            FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
            GROUP BY c.id ORDER BY c.id LIMIT 3" || { cat "$LOG" >&2; die "query through the gateway failed"; }
    say "demo: oneshot OK"
    exit 0
fi

cat <<EOF

  Bulwark demo is running.

  gateway    localhost:$GWPORT  (TLS; CA certificate $DEMO/certs/ca.crt)
  upstream   PostgreSQL 15 on 127.0.0.1:$PGPORT, database "shop", login "shop_ro"
             (its password lives only in $DEMO/secrets; clients never see it)
  policies   $DEMO/policies/: demo.json (role "analyst"), langchain-readonly.json (role "langchain")
  token      HS256, iss "demo", sub "demo-agent-1", valid 12h

  Connect with psql:

    psql "$PSQL_URI"

  LangChain / SQLAlchemy (psycopg2) URI:

    $SA_URI

  A token for the "langchain" role:

    $BIN token --secret-file $DEMO/secrets/demo.hs256 --iss demo --aud bulwark --sub langchain-1

  Try what the analyst may not do: DELETE FROM orders; SELECT * FROM internal.api_keys;
  SELECT pg_read_file('/etc/passwd'). Each is refused, naming the rule. The policy's
  masks are validated but not applied yet (planned), so PII still shows in results.
  What would the gateway do with a statement?

    $BIN explain -c $DEMO/bulwark.json --role analyst "DELETE FROM orders"

  Gateway log follows. Ctrl-C stops everything and removes $DEMO.

EOF

tail -n +1 -f "$LOG" >&2 &
TAIL_PID=$!
set +e
wait "$BULWARK_PID"
rc=$?
set -e
BULWARK_PID=
die "bulwark serve exited (status $rc)"
