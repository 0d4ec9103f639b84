#!/usr/bin/env bash
# Runs the built fuzz targets: tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...
# For each target: replay its seed corpus and its kept crash inputs
# (tests/fuzz/corpus/T, tests/fuzz/regressions/T: each must pass), then fuzz
# for SECONDS into a scratch corpus under BUILD_DIR (the repository's seeds are
# never written). A crash leaves its input in BUILD_DIR/crashes/. Exits 1 if
# any target failed; prints one summary line per target.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build=$1 seconds=$2
shift 2
export BULWARK_TEST_ROOT=$PWD
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$build/crashes" "$build/logs"
summary=() failed=0
for t in "$@"; do
    bin=$build/$t
    seeds=tests/fuzz/corpus/$t regress=tests/fuzz/regressions/$t
    work=$build/corpus/$t
    log=$build/logs/$t.log
    mkdir -p "$work"
    replay=()
    for d in "$seeds" "$regress"; do
        [[ -d $d ]] && while IFS= read -r f; do replay+=("$f"); done < <(find "$d" -type f | sort)
    done
    if ((${#replay[@]})) && ! "$bin" -runs=1 "${replay[@]}" >"$log.replay" 2>&1; then
        echo "fuzz: $t: a seed or regression input fails:"; tail -30 "$log.replay"
        summary+=("$t: FAILED on a kept input"); failed=1; continue
    fi
    dirs=("$work")
    [[ -d $seeds ]] && dirs+=("$seeds")
    "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$build/crashes/$t-" "${dirs[@]}" >"$log" 2>&1
    rc=$?
    execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [[ $rc -ne 0 ]]; then
        echo "fuzz: $t FAILED (exit $rc):"; grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -10
        summary+=("$t: FAILED after ${execs:-?} executions (see $log)"); failed=1
    else
        summary+=("$t: ${execs:-?} executions in ${seconds}s, ${#replay[@]} kept inputs replayed, ${cov:-cov: ?}")
    fi
done
for s in "${summary[@]}"; do echo "fuzz: $s"; done
exit $failed
