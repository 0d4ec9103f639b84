# shellcheck shell=bash
# The same pgbench -S cases with a realistic policy active. Sourced by bench/run.sh once its
# own cases have run (it uses run.sh's variables and functions); not run on its own.
#
# A second role, bench_policy, is added to the running Bulwark (a policy file, then SIGHUP):
# default deny, catalog reads on, and a rule for every operation (deny, review and allow
# rules, relation and function globs, without_where), so that every statement pgbench sends
# is parsed and decided. The three targets are measured again, in the same rotation, and
# each case is reported as one more line:
#
#   RESULT mode=simple clients=8 policy=on direct_tps=12000 pgbouncer_tps=9000 bulwark_tps=9500
#
# plus a row per case in the table and the report. BENCH_POLICY=0 skips this part.
[ "${BENCH_POLICY:-1}" = 0 ] && return 0

say "policy on: adding role bench_policy to Bulwark"
cat > "$WORK/bulwark/policies/bench-policy.json" <<'EOF'
[
  {
    "role": "bench_policy",
    "description": "pgbench through the gateway with a realistic policy: every statement parsed and decided",
    "identities": [ { "iss": "bench", "sub": "pgbench-policy" } ],
    "upstream": { "bench": { "user": "bench", "password_file": "../bench.password" } },
    "default": "deny",
    "catalog_reads": true,
    "rules": [
      { "id": "no-ddl", "action": "deny", "operations": ["ddl", "dcl", "truncate"] },
      { "id": "no-session-changes", "action": "deny", "operations": ["session", "utility", "do"] },
      { "id": "no-bulk-copy", "action": "deny", "operations": ["copy_to", "copy_from"] },
      { "id": "no-secrets", "action": "deny", "relations": ["public.secrets", "internal.*"] },
      { "id": "no-unbounded-writes", "action": "deny", "operations": ["update", "delete"],
        "without_where": true },
      { "id": "merge-needs-review", "action": "review", "operations": ["merge"], "relations": ["public.*"],
        "review": { "approvers": ["bench_dba"], "timeout": "30s", "mode": "reject" } },
      { "id": "read-bench", "action": "allow", "operations": ["select", "explain"],
        "relations": ["public.pgbench_*"] },
      { "id": "write-bench", "action": "allow", "operations": ["insert", "update", "delete"],
        "relations": ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers",
                      "public.pgbench_history"] },
      { "id": "app-functions", "action": "allow", "operations": ["function"], "functions": ["app.*"] }
    ]
  },
  {
    "role": "bench_dba",
    "description": "approver named by bench_policy's review rule",
    "identities": [ { "iss": "bench", "sub": "dba-*" } ],
    "admin": true,
    "default": "deny",
    "rules": []
  }
]
EOF
POLICY_TOKEN=$(bench_token pgbench-policy)
bench_reload "$BULWARK_PID" "$WORK/bulwark/bulwark.log" 3 ||
    say "Bulwark did not load bench_policy: its results will be NA"

# From here on the bulwark target is the policy role (direct and PgBouncer are unchanged;
# run_pgbench of bench/lib.sh asks these two).
target_user() { if [ "$1" = bulwark ]; then echo bench_policy; else echo bench; fi; }
target_pass() { if [ "$1" = bulwark ]; then echo "$POLICY_TOKEN"; else echo "$PW"; fi; }

# A refused statement would make pgbench fail (NA above); check that none was refused.
POLICY_LOG_FROM=$(wc -l < "$WORK/bulwark/bulwark.log")
for mode in $MODES; do
    for c in $CLIENTS; do
        say "policy on: pgbench -S -M $mode -c $c, ${DURATION}s per run"
        run_case pgbench "$mode" "$c"
        line="RESULT mode=$mode clients=$c policy=on direct_tps=${MED[direct]} pgbouncer_tps=${MED[pgbouncer]} bulwark_tps=${MED[bulwark]}"
        result "$line"
        TABLE+=("| $mode -c $c, policy on (tps) | ${MED[direct]} | ${MED[pgbouncer]} | ${MED[bulwark]} | $(ratio "${MED[bulwark]}" "${MED[direct]}") | $(ratio "${MED[bulwark]}" "${MED[pgbouncer]}") |")
    done
done
POLICY_REFUSED=$(tail -n +"$((POLICY_LOG_FROM + 1))" "$WORK/bulwark/bulwark.log" | grep -c 'event=statement_refused' || true)
if [ "$POLICY_REFUSED" != 0 ]; then
    say "policy on: the gateway refused $POLICY_REFUSED statements of pgbench -S"
    # shellcheck disable=SC2034  # run.sh's exit status
    FAILED=1
fi
