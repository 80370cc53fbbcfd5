#!/usr/bin/env bash
# How a pool's answers spread load: a deterministic simulation that drives
# vnamed's real policy code on a virtual clock (examples/spread.rs). 2,000
# resolvers with TTL caches, five backends of unequal capacity whose load
# comes back as reports every second; four scenarios (steady, a backend
# failing and coming back warm or cold, a capacity step), each answered by
# select = "best", by shares, and by static weights drawn per query. Prints
# peak/mean utilisation, seconds over capacity, answer changes and the
# recovered backend's time to its share. No network, no root.
#
#   bash scripts/bench/spread.sh
#   SPREAD_POOL='smoothing = 0.5;margin = 0.15' bash scripts/bench/spread.sh   (other settings)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --release --quiet --example spread
