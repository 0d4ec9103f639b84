#!/usr/bin/env bash
# Bulwark demo, a two-minute tour: a throwaway PostgreSQL with a small shop schema
# (with PII in it), the gateway in front of it with TLS and policies/demo.json, a
# demo token, and ready commands to try: a masked SELECT, a denied DROP, a held
# DELETE and how to approve it, the session's replay. Ctrl-C (or SIGTERM, or
# `make demo-stop` from another shell) stops all of it and removes every file it
# made.
#
#   scripts/demo.sh                 run until interrupted (what `make demo` does)
#   scripts/demo.sh stop            stop a running demo (what `make demo-stop` does)
#   DEMO_ONESHOT=1 scripts/demo.sh  start everything, run the tour through the
#                                   gateway with psql (checking the masks, and
#                                   approving the held DELETE with the CLI, when
#                                   the build has them), stop, exit 0 on success
#
# Environment: BULWARK_BIN (default build/bulwark), DEMO_PORT (gateway port;
# default 6432, or a free port when 6432 is taken), TMPDIR.
# Works as a normal user and as root (the cluster then runs as the postgres OS
# user; scripts/pgtmp.sh takes care of that).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULWARK_BIN:-$ROOT/build/bulwark}
ONESHOT=${DEMO_ONESHOT:-0}
# The running demo's process id, for `scripts/demo.sh stop`.
PIDFILE=${DEMO_PIDFILE:-$ROOT/build/demo.pid}

say() { printf '%s\n' "$*" >&2; }
die() { say "demo: $*"; exit 1; }

if [ "${1:-}" = stop ]; then
    pid=$(cat "$PIDFILE" 2>/dev/null) || { say "demo: not running (no $PIDFILE)"; exit 0; }
    # Only a demo.sh of ours: the pid may have been reused since.
    if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'demo\.sh'; then
        rm -f "$PIDFILE"; say "demo: not running (stale $PIDFILE)"; exit 0
    fi
    # Alive and not a zombie (a parent that has not reaped it yet: it is done).
    alive() {
        local st
        st=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
        [ -n "$st" ] && [ "$st" != Z ]
    }
    kill -TERM "$pid"
    for _ in $(seq 100); do alive || break; sleep 0.1; done
    alive && die "demo (pid $pid) still running 10s after SIGTERM"
    say "demo: stopped (pid $pid)"
    exit 0
elif [ $# -gt 0 ]; then
    die "unknown argument: $1 (usage: scripts/demo.sh [stop])"
fi

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
RUNNING=0   # the tour is printed: a SIGTERM now (`make demo-stop`) is a normal end
BULWARK_PID=

# shellcheck disable=SC2317  # invoked by trap
cleanup() {
    local status=$?
    trap - EXIT
    trap "" INT TERM HUP   # finish cleaning up whatever else arrives (inherited by what we run here)
    set +e
    if [ -n "$BULWARK_PID" ] && kill -0 "$BULWARK_PID" 2>/dev/null; then
        # SIGINT stops the gateway at once; SIGTERM would wait for sessions to drain.
        kill -INT "$BULWARK_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$BULWARK_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BULWARK_PID" 2>/dev/null
        wait "$BULWARK_PID" 2>/dev/null
    fi
    if [ "$PG_STARTED" = 1 ]; then "$ROOT/scripts/pgtmp.sh" stop "$DEMO/pg" >/dev/null 2>&1; fi
    rm -rf "$DEMO"
    if [ "$(cat "$PIDFILE" 2>/dev/null)" = "$$" ]; then rm -f "$PIDFILE"; fi
    say "demo: stopped; removed $DEMO"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'if [ "$RUNNING" = 1 ]; then exit 0; else exit 143; fi' TERM
trap 'exit 129' HUP

# --- certificates and secrets -------------------------------------------------
out=$("$ROOT/scripts/mkcerts.sh" "$DEMO/certs" 2>&1) || { say "$out"; die "mkcerts.sh failed"; }
mkdir -p "$DEMO/secrets" "$DEMO/policies"
chmod 700 "$DEMO/secrets"
(umask 077
 random_hex 24 > "$DEMO/secrets/shop_ro.password"
 random_hex 24 > "$DEMO/secrets/shop_agent.password"
 random_hex 32 > "$DEMO/secrets/demo.hs256")

# --- PostgreSQL with the shop schema ------------------------------------------
PGPORT=$(free_port)
say "demo: starting PostgreSQL 15 on 127.0.0.1:$PGPORT"
PG_STARTED=1   # before: an interrupted start may leave a server running
"$ROOT/scripts/pgtmp.sh" start "$DEMO/pg" "$PGPORT" >/dev/null || die "pgtmp.sh start failed"
su_psql() { psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO/pg" -p "$PGPORT" -U postgres "$@"; }
su_psql -d postgres -c "CREATE DATABASE shop" >/dev/null
su_psql -d shop -f "$ROOT/examples/demo/schema.sql" >/dev/null
# Passwords go through psql variables, never into a statement on a command line.
for login in shop_ro shop_agent; do
    printf '%s\n' "ALTER ROLE $login LOGIN PASSWORD :'pw';" |
        su_psql -d shop -v pw="$(cat "$DEMO/secrets/$login.password")" >/dev/null
done

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

CONF=$DEMO/bulwark.json
PSQL_URI="postgresql://analyst:$TOKEN@localhost:$GWPORT/shop?sslmode=verify-full&sslrootcert=$DEMO/certs/ca.crt"
SA_URI="postgresql+psycopg2://analyst:$TOKEN@localhost:$GWPORT/shop?sslmode=require"
aspsql() { psql -X -q -At -v ON_ERROR_STOP=1 "$PSQL_URI" "$@"; }

# Whether this build masks and holds: a build without masking or approvals still runs
# the tour, and says which are in effect rather than promise them.
MASKING=off
[ "$(aspsql -c "SELECT ssn FROM customers WHERE id = 1" 2>/dev/null)" = "****" ] && MASKING=on
APPROVALS=off
"$BIN" approvals --help >/dev/null 2>&1 && APPROVALS=on

if [ "$ONESHOT" = 1 ]; then
    say "demo: the tour's statements through the gateway (verify-full TLS, role analyst)"
    # One session, as a person at psql would: the refusals leave it usable.
    out=$(psql -X -q -At "$PSQL_URI" 2>&1 <<'SQL'
SELECT name, email, card_number, ssn FROM customers ORDER BY id LIMIT 3;
DROP TABLE customers;
DELETE FROM support_tickets;
SELECT 'still here';
SQL
) || { cat "$LOG" >&2; die "psql through the gateway failed: $out"; }
    say "$out"
    [ "$(printf '%s\n' "$out" | grep -c '|')" -ge 3 ] ||
        { cat "$LOG" >&2; die "the SELECT of customers did not return three rows"; }
    for want in 'denied by rule "no-ddl-dcl"' 'denied by rule "no-unbounded-writes"' 'still here'; do
        case "$out" in
            *"$want"*) ;;
            *) cat "$LOG" >&2; die "the tour's session did not show $want" ;;
        esac
    done
    sid=$("$BIN" sessions -c "$CONF" --role analyst --json |
          /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["session"])') ||
        die "bulwark sessions failed"
    transcript=$("$BIN" replay -c "$CONF" "$sid") || die "bulwark replay $sid failed"
    for want in "DROP TABLE customers" "DELETE FROM support_tickets" "no-ddl-dcl"; do
        case "$transcript" in
            *"$want"*) ;;
            *) say "$transcript"; die "bulwark replay $sid does not show $want" ;;
        esac
    done
    if [ "$MASKING" = on ]; then
        case "$out" in
            *"alice.archer@"* | *"123-45-6789"* | *"4111111111111111"*)
                die "masking is on, yet the SELECT showed a real value: $out" ;;
            *"|a***@example.com|************1111|****"*) ;;
            *) die "masking is on, yet Alice's row is not masked as the policy says: $out" ;;
        esac
    fi
    if [ "$APPROVALS" = on ]; then
        # The held DELETE, approved from "a second shell" as step 3 of the tour says.
        held=$DEMO/held.out
        psql -X -q "$PSQL_URI" -c "DELETE FROM support_tickets WHERE id = 4" >"$held" 2>&1 &
        held_pid=$!
        rid=
        for _ in $(seq 100); do
            rid=$("$BIN" approvals -c "$CONF" --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for r in json.load(sys.stdin):
    if r.get("sql") == "DELETE FROM support_tickets WHERE id = 4":
        print(r["id"]); break' 2>/dev/null) || true
            [ -n "$rid" ] && break
            sleep 0.1
        done
        [ -n "$rid" ] || { kill "$held_pid" 2>/dev/null; die "the DELETE was not held for approval"; }
        "$BIN" approve -c "$CONF" "$rid" --as demo-dba-1 >&2 || die "bulwark approve $rid failed"
        wait "$held_pid" || { cat "$held" >&2; die "the approved DELETE failed"; }
        grep -q "request $rid" "$held" || { cat "$held" >&2; die "no NOTICE named request $rid"; }
        [ "$(aspsql -c "SELECT count(*) FROM support_tickets")" = 3 ] ||
            die "ticket 4 is still there after the approved DELETE"
        say "demo: held, approved and run: $(tr '\n' ' ' < "$held")"
    fi
    say "demo: masking $MASKING, approvals $APPROVALS in this build"
    say "demo: oneshot OK"
    exit 0
fi

mkdir -p "$(dirname "$PIDFILE")"
echo $$ > "$PIDFILE"
RUNNING=1

if [ "$MASKING" = on ]; then
    MASK_NOTE="masked per column (policies/demo.json \"masks\")"
else
    MASK_NOTE="masks apply once this build has masking; until then values show as stored"
fi
if [ "$APPROVALS" = on ]; then
    HOLD_NOTE="held by rule \"support-fixes\" until a human answers"
    STEP3="While the DELETE waits (a NOTICE names its request id), from a second shell:"
else
    HOLD_NOTE="rule \"support-fixes\" (review); this build has no approvals yet, so it is refused"
    STEP3="Once approvals are in, the DELETE waits (a NOTICE names its request id) for:"
fi

cat <<EOF

  Bulwark demo is running: gateway on localhost:$GWPORT (TLS), PostgreSQL 15 behind it
  with a "shop" database. The agent's token is its password; the database login
  "shop_agent" and its password stay inside the gateway.

  1. Connect as the AI agent (role "analyst", token for sub "demo-agent-1", 12h):

       psql "$PSQL_URI"

  2. In psql, try:

       SELECT name, email, phone, card_number, ssn FROM customers LIMIT 3;
            -- $MASK_NOTE
       SELECT subject, body FROM support_tickets;
            -- content detectors: card numbers, SSNs, emails, keys in free text
       DROP TABLE customers;              -- ERROR 42501, denied by rule "no-ddl-dcl"
       DELETE FROM support_tickets;       -- ERROR 42501, denied by rule "no-unbounded-writes"
       SELECT * FROM internal.api_keys;   -- ERROR 42501, denied by rule "no-internal"
       DELETE FROM support_tickets WHERE id = 4;
            -- $HOLD_NOTE

  3. $STEP3

       $BIN approvals -c $CONF
       $BIN approve -c $CONF ID --as demo-dba-1
       $BIN deny -c $CONF ID --reason "not now" --as demo-dba-1    (the other answer)

  4. The session as the gateway recorded it (statements, decisions, rows as sent):

       $BIN sessions -c $CONF --role analyst
       $BIN replay -c $CONF SESSION
       $BIN audit verify -c $CONF

  What would the gateway do with a statement, and why?

       $BIN explain -c $CONF --role analyst "DELETE FROM orders"

  LangChain / SQLAlchemy URI (see examples/langchain-python and examples/langchain-js):

       $SA_URI

  Gateway log: $LOG
  Stop: Ctrl-C here, or \`make demo-stop\` from another shell; everything under
  $DEMO is removed.

EOF

set +e
wait "$BULWARK_PID"
rc=$?
set -e
BULWARK_PID=
die "bulwark serve exited (status $rc)"
