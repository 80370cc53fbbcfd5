#!/usr/bin/env bash
# Installs dig if needed, builds vnamed and runs `vnamed demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --minimal
exec cargo run --release --quiet -- demo "$@"
