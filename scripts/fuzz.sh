#!/usr/bin/env bash
# Runs every fuzz target (or those named) one after the other and prints
# the executions each made: for SECONDS each (default 60), or, with
# FUZZ_RUNS=N, for N executions each. Installs cargo-fuzz if it is
# missing; runs on the stable toolchain (RUSTC_BOOTSTRAP=1) without a
# sanitizer (the code under test is safe Rust; a panic is what is hunted).
# A crash stops the run and leaves the input in fuzz/artifacts/TARGET/.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 bash scripts/fuzz.sh 0 [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
limit=(-max_total_time="$secs")
[ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
mkdir -p ../target/fuzz-logs
for t in "${targets[@]}"; do
  log=../target/fuzz-logs/$t.log
  start=$(date +%s)
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" -- "${limit[@]}" -print_final_stats=1 >"$log" 2>&1 || {
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED (log: target/fuzz-logs/$t.log)" >&2
    exit 1
  }
  runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log")
  echo "fuzz: $t: $runs executions in $(( $(date +%s) - start )) s, no crash"
done
