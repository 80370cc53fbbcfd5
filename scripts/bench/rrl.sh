#!/usr/bin/env bash
# The cost of response rate limiting on the fast path: the build from
# before RRL (BASE, default: the parent of the commit that added
# src/dns/rrl.rs) against this build with RRL on and applying to every
# client (no exemption, a budget too high to drop anything), serving the
# same zone in the same run. Each server is pinned to core 0 and dnsperf to
# core 1; it prints queries/s and the server's CPU time per answered query
# (from /proc), and the ratio this/base.
#
#   bash scripts/bench/rrl.sh [SECONDS] [BASE]     (default: 10 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
base=${2:-$(git log --diff-filter=A --format=%H -- src/dns/rrl.rs | tail -1)^}
bash scripts/setup.sh
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  git worktree remove --force "$work/base-src" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach "$work/base-src" "$base" >/dev/null 2>&1
(cd "$work/base-src" && CARGO_TARGET_DIR="$PWD/../base-target" cargo build --release --quiet)
declare -A bin=([base]="$work/base-target/release/vnamed" [rrl]="$PWD/target/release/vnamed")
declare -A port=([base]=5410 [rrl]=5411)
declare -A extra=([base]="" [rrl]=$'[authority.rrl]\nexempt = []\nresponses_per_second = 4000000000\nnxdomains_per_second = 4000000000\nerrors_per_second = 4000000000')
ip=127.0.0.1
declare -A pid
for s in base rrl; do
  mkdir -p "$work/$s/zones"
  {
    echo '$TTL 300'
    echo '@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )'
    echo '  IN NS ns1'
    echo "ns1 IN A $ip"
  } > "$work/$s/zones/bench.example.zone"
  cat > "$work/$s/vnamed.toml" <<EOT
[authority]
dns_listen = ["$ip:${port[$s]}"]
zones_dir = "$work/$s/zones"
udp_workers = 1
${extra[$s]}

[[pool]]
name = "www.bench.example."
policy = "priority"
answers = 3
members = [ { id = "a", address = "127.0.10.1" }, { id = "b", address = "127.0.10.2" }, { id = "c", address = "127.0.10.3" } ]
EOT
  taskset -c 0 "${bin[$s]}" authority --config "$work/$s/vnamed.toml" 2>"$work/$s.log" &
  pids+=($!)
  pid[$s]=$!
  for _ in $(seq 100); do
    dig +short +time=1 +tries=1 @$ip -p "${port[$s]}" www.bench.example A >/dev/null 2>&1 && break
    sleep 0.1
  done
done
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)
echo "www.bench.example A" > "$work/queries"
declare -A qps cpu
for round in 1 2; do
  for s in base rrl; do
    before=$(ticks "${pid[$s]}")
    out=$(taskset -c 1 dnsperf -s $ip -p "${port[$s]}" -d "$work/queries" -l "$secs" -c 20 -q 500 2>/dev/null)
    after=$(ticks "${pid[$s]}")
    completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
    qps[$s]=$(awk '/Queries per second:/ {printf "%.0f", $4}' <<<"$out")
    cpu[$s]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$completed" 'BEGIN { printf "%.3f", (n > 0) ? (t / hz / n * 1e6) : 0 }')
    echo "round $round $s: ${qps[$s]} queries/s, ${cpu[$s]} us CPU/query" >&2
  done
done
printf '\n%-6s %12s %16s\n' build "queries/s" "CPU/query (us)"
for s in base rrl; do printf '%-6s %12s %16s\n' "$s" "${qps[$s]}" "${cpu[$s]}"; done
awk -v b="${cpu[base]}" -v r="${cpu[rrl]}" -v qb="${qps[base]}" -v qr="${qps[rrl]}" \
  'BEGIN { printf "\nRRL on / before RRL: CPU per query x%.3f, queries/s x%.3f\n", r / b, qr / qb }'
