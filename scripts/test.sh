#!/usr/bin/env bash
# Installs what the tests talk to (dig, named-checkzone, NSD, ...) and runs
# every test: unit tests of the pure cores and integration tests against
# real processes and real clients.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --all-targets
exec cargo test --no-fail-fast "$@"
