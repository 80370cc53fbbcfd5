#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the
# other, and prints the executions each made. Installs cargo-fuzz if it is
# missing; runs on the stable toolchain (RUSTC_BOOTSTRAP=1). Crashes stop
# the run and leave the input in fuzz/artifacts/TARGET/.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
mkdir -p ../target/fuzz-logs
for t in "${targets[@]}"; do
  log=../target/fuzz-logs/$t.log
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || {
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED (log: target/fuzz-logs/$t.log)" >&2
    exit 1
  }
  runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log")
  echo "fuzz: $t: $runs executions in $secs s, no crash"
done
