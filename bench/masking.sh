# shellcheck shell=bash
# The cost of masking. Sourced by bench/run.sh after policy.sh (it uses run.sh's
# variables and functions); not run on its own.
#
# A table bench_people of ROWS rows (id, name, email, ssn, card) is read whole with
# `psql -A -t -c "SELECT * FROM bench_people" > /dev/null` three ways, rotated each round:
# direct, through Bulwark with the pass-through role (unmasked), and through Bulwark with
# role bench_mask, which masks three columns (email: email, ssn: redact, card: partial)
# and runs every content detector over the other text values. One line:
#
#   RESULT mode=masking rows=1000000 direct_rows_s=... bulwark_rows_s=... masked_rows_s=...
#
# plus a table row (masked / unmasked is the figure issue 5 asks about). BENCH_MASKING=0
# skips this part.
[ "${BENCH_MASKING:-1}" = 0 ] && return 0

say "masking: a table of $ROWS rows with three masked columns"
PGPASSWORD=$PW psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U bench -d bench >/dev/null <<SQL ||
DROP TABLE IF EXISTS bench_people;
CREATE TABLE bench_people AS
  SELECT g AS id, 'person ' || g AS name, 'user' || g || '@example.com' AS email,
         lpad((g % 899999999 + 100000000)::text, 9, '0') AS ssn,
         '4111111111111111' AS card
  FROM generate_series(1, $ROWS) AS g;
SQL
    die "masking: cannot create bench_people"

cat > "$WORK/bulwark/policies/bench-mask.json" <<'EOF2'
{
  "role": "bench_mask",
  "description": "the masking bench: three masked columns and every detector",
  "identities": [ { "iss": "bench", "sub": "pgbench-mask" } ],
  "upstream": { "bench": { "user": "bench", "password_file": "../bench.password" } },
  "default": "allow",
  "catalog_reads": true,
  "masks": [
    { "column": "public.bench_people.email", "method": "email" },
    { "column": "public.bench_people.ssn", "method": "redact" },
    { "column": "public.bench_people.card", "method": "partial", "keep_last": 4 },
    { "detectors": ["email", "credit_card", "us_ssn", "iban", "phone", "secret"], "method": "redact" }
  ]
}
EOF2
MASK_TOKEN=$(bench_token pgbench-mask)
MASK_ROLES=$(( $(grep -c '"role"' "$WORK"/bulwark/policies/*.json | awk -F: '{ s += $2 } END { print s }') ))
bench_reload "$BULWARK_PID" "$WORK/bulwark/bulwark.log" "$MASK_ROLES" ||
    say "masking: Bulwark did not load bench_mask: its results will be NA"

# mask_read CASE: prints seconds, or NA
mask_read() {
    local port=$PGPORT user=bench pass=$PW t0 t1
    case "$1" in
        bulwark) port=$GW_PORT pass=$TOKEN ;;
        masked) port=$GW_PORT user=bench_mask pass=$MASK_TOKEN ;;
    esac
    t0=$EPOCHREALTIME
    if PGPASSWORD=$pass psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$user" \
           -d bench -c "SELECT * FROM bench_people" >/dev/null 2>"$WORK/mask.err"; then
        t1=$EPOCHREALTIME
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
    else
        say "masking: SELECT failed ($1):"; tail -n 5 "$WORK/mask.err" >&2
        echo NA
    fi
}

# The masked role really masks (else its figure would mean nothing).
first=$(PGPASSWORD=$MASK_TOKEN psql -X -q -A -t -h 127.0.0.1 -p "$GW_PORT" -U bench_mask -d bench \
        -c "SELECT email || '|' || ssn || '|' || card FROM bench_people WHERE id = 1" 2>&1 || true)
case "$first" in
    *user1@example.com*|*4111111111111111*) say "masking: bench_mask returned clear values: $first"; FAILED=1 ;;
esac

MASK_CASES=(direct bulwark masked)
declare -A MASK_VALS=()
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < 3; i++)); do
        t=${MASK_CASES[$(((r + i) % 3))]}
        v=$(mask_read "$t")
        say "  round $((r + 1))/$ROUNDS $t: $v s"
        [ "$v" = NA ] && FAILED=1
        MASK_VALS[$t]+="$v "
    done
done
declare -A MASK_RPS=()
for t in "${MASK_CASES[@]}"; do
    # shellcheck disable=SC2086
    s=$(median %.3f ${MASK_VALS[$t]})
    MASK_RPS[$t]=$(awk -v s="$s" -v n="$ROWS" 'BEGIN { if (s == "NA" || s == 0) print "NA"; else printf "%.0f\n", n / s }')
done
line="RESULT mode=masking rows=$ROWS direct_rows_s=${MASK_RPS[direct]} bulwark_rows_s=${MASK_RPS[bulwark]} masked_rows_s=${MASK_RPS[masked]}"
result "$line"
TABLE+=("| SELECT * of $ROWS rows, 3 masked columns + detectors (rows/s): direct / unmasked / masked | ${MASK_RPS[direct]} | — | ${MASK_RPS[bulwark]} / ${MASK_RPS[masked]} | $(ratio "${MASK_RPS[bulwark]}" "${MASK_RPS[direct]}") | masked / unmasked $(ratio "${MASK_RPS[masked]}" "${MASK_RPS[bulwark]}") |")
