#!/usr/bin/env bash
# Installs what the tests talk to (dig, named-checkzone, NSD, ...) and runs
# every test: unit tests of the pure cores and integration tests against
# real processes and real clients, after checking formatting and clippy.
# Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The habits CI holds every change to: formatted, and clippy-clean with
# every unsafe block explained (clippy::undocumented_unsafe_blocks in lib.rs).
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings
cargo build --quiet --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Tests that need root (network namespaces) are #[ignore]d for plain
# `cargo test`; as root they run here, otherwise they show as ignored.
extra=()
if [ "$(id -u)" -eq 0 ]; then
  extra=(-- --include-ignored)
else
  echo "not root: the network namespace tests are skipped (shown as ignored)" >&2
fi
cargo test --no-fail-fast --lib --bins --tests "$@" "${extra[@]}" 2>&1 | tee "$log" || status=$?
# The Debian package: built, installed with dpkg, its units verified, the
# authority started as its unit starts it, removed (root: dpkg -i).
if [ "$(id -u)" -eq 0 ]; then
  { bash scripts/package.sh --debug && bash scripts/package-test.sh target/debian/vnamed_*.deb; } || status=1
fi
# A short soak of crashes, pauses, full disks and bad edits (root: it mounts a tmpfs).
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/chaos.sh 1 || status=1
fi
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
exit $status
