#!/usr/bin/env bash
# Status report ingestion: simulated monitors report MEMBERS pool members to
# one authority pinned to core 0 (the load generator runs on core 1). Prints
# reports/s at full speed, the authority's CPU per report and RSS, and the
# report-to-answer latency (p50/p99, measured with real DNS queries) while
# 10,000 reports/s arrive.
#
# With AGAINST=<git revision> the same measurements run, in the same run,
# against that revision built in a temporary worktree (e.g. AGAINST=HEAD~5),
# and the ratios are printed.
#
#   [AGAINST=REV] bash scripts/bench/ingest.sh [MEMBERS] [SECONDS] [ROUNDS]
#   (defaults: 10000, 10, 1; with several rounds the builds alternate and
#   the median of each figure is kept)
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-10000}
secs=${2:-10}
rounds=${3:-1}
cargo build --release --quiet --bin vnamed --example ingest
ingest=$PWD/target/release/examples/ingest

work=$(mktemp -d)
pid=""
tree=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$tree" ] && git worktree remove --force "$tree" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

builds=("current=$PWD/target/release/vnamed")
if [ -n "${AGAINST:-}" ]; then
  tree=$work/against
  git worktree add --quiet --detach "$tree" "$AGAINST"
  (cd "$tree" && CARGO_TARGET_DIR="${AGAINST_TARGET:-$tree/target}" cargo build --release --quiet --bin vnamed)
  builds+=("$AGAINST=${AGAINST_TARGET:-$tree/target}/release/vnamed")
fi

mkdir -p "$work/zones"
python3 - "$members" > "$work/vnamed.toml" <<'PY'
import ipaddress, sys
n = int(sys.argv[1])
print('[authority]\ndns_listen = ["127.0.0.1:5410"]\ngrpc_listen = "127.0.0.1:7410"\nzones_dir = "ZONES"\nudp_workers = 1\n')
print('[[pool]]\nname = "www.bench.example."\npolicy = "least-loaded"\nstale_after = "60s"\nmembers = [')
base = int(ipaddress.IPv4Address("127.1.0.0"))
for i in range(n):
    print(f'  {{ id = "m{i}", address = "{ipaddress.IPv4Address(base + i)}" }},')
print(']')
PY
sed -i "s|ZONES|$work/zones|" "$work/vnamed.toml"

stat() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)

# One measurement of one build: "rate cpu rss p50 p99" on stdout.
measure() {
  local vnamed=$1
  printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/bench.example.zone"
  taskset -c 0 "$vnamed" authority --config "$work/vnamed.toml" 2>"$work/vnamed.log" &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/7410) 2>/dev/null && break
    sleep 0.1
  done
  local before after max rate cpu steady rss
  before=$(stat)
  max=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" max "$secs")
  after=$(stat)
  rate=$(awk '/max_reports_per_s/ {print $2}' <<<"$max")
  cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$rate" -v s="$secs" 'BEGIN { printf "%.2f", (r > 0) ? (t / hz) / (r * s) * 1e6 : 0 }')
  steady=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" steady 10000 "$secs" 2>/dev/null)
  rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  echo "$rate $cpu $rss $(awk '/p50_ms/ {p50=$2} /p99_ms/ {p99=$2} END {print p50, p99}' <<<"$steady")"
}

declare -A results
for round in $(seq "$rounds"); do
  for b in "${builds[@]}"; do
    results[${b%%=*}]+="$(measure "${b#*=}")"$'\n'
  done
done

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
column() { awk -v c="$2" 'NF {print $c}' <<<"${results[$1]}" | median; }

echo
printf '%-32s' "members $members, $rounds round(s)"
for b in "${builds[@]}"; do printf '%14s' "${b%%=*}"; done
[ ${#builds[@]} -gt 1 ] && printf '%10s' "ratio"
echo
row() {
  local label=$1 col=$2 target=$3
  printf '%-32s' "$label"
  local first="" v
  for b in "${builds[@]}"; do
    v=$(column "${b%%=*}" "$col")
    printf '%14s' "$v"
    [ -z "$first" ] && first=$v || printf '%10s' "$(awk -v a="$first" -v b="$v" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')"
  done
  echo "   $target"
}
row "reports/s, as fast as possible" 1 "(target: >= 450000)"
row "authority CPU per report (us)" 2 ""
row "authority RSS (MB)" 3 "(target: <= 200)"
row "report-to-answer p50 (ms)" 4 ""
row "report-to-answer p99 (ms)" 5 "(target: <= 5)"
