#!/usr/bin/env bash
# Status report ingestion: simulated monitors report MEMBERS pool members to
# one authority pinned to core 0 (the load generator runs on core 1). Prints
# reports/s at full speed, the authority's CPU per report and RSS, and the
# report-to-answer latency (p50/p99, measured with real DNS queries) while
# 10,000 reports/s arrive.
#
#   bash scripts/bench/ingest.sh [MEMBERS] [SECONDS]     (defaults: 10000, 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-10000}
secs=${2:-10}
cargo build --release --quiet --bin vnamed --example ingest
vnamed=$PWD/target/release/vnamed
ingest=$PWD/target/release/examples/ingest

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/bench.example.zone"
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

taskset -c 0 "$vnamed" authority --config "$work/vnamed.toml" 2>"$work/vnamed.log" &
pid=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/7410) 2>/dev/null && break
  sleep 0.1
done

stat() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)
before=$(stat)
max=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" max "$secs")
after=$(stat)
rate=$(awk '/max_reports_per_s/ {print $2}' <<<"$max")
cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$rate" -v s="$secs" 'BEGIN { printf "%.2f", (r > 0) ? (t / hz) / (r * s) * 1e6 : 0 }')
steady=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" steady 10000 "$secs")
rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")

echo
echo "members                         $members"
echo "reports/s, as fast as possible  $rate   (targets: >= 100000)"
echo "authority CPU per report (us)   $cpu"
echo "authority RSS (MB)              $rss   (target: <= 200)"
awk '/steady_reports_per_s/ {print "steady reports/s                " $2}
     /report_to_answer_samples/ {print "report-to-answer samples        " $2}
     /report_to_answer_p50_ms/ {print "report-to-answer p50 (ms)       " $2}
     /report_to_answer_p99_ms/ {print "report-to-answer p99 (ms)       " $2 "   (target: <= 10)"}' <<<"$steady"
