#!/usr/bin/env bash
# The SRP responder: resolutions/s of an authority pinned to core 0 (the
# load generator on core 1) answering CLNT_UCAST_INST as fast as it can,
# with its CPU per resolution; then the median time of `vnamed resolve`,
# cold (an SRP exchange) and cached (the cache file, no exchange), over
# RUNS runs each, both as the resolver measures it and as a whole process.
#
#   bash scripts/bench/srp.sh [SECONDS] [RUNS]     (defaults: 10, 50)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
runs=${2:-50}
cargo build --release --quiet --bin vnamed --example srp_load
vnamed=$PWD/target/release/vnamed
load=$PWD/target/release/examples/srp_load

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cluster=127.0.0.91
mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/bench.example.zone"
cat > "$work/vnamed.toml" <<EOT
[authority]
dns_listen = ["127.0.0.1:5420"]
zones_dir = "$work/zones"
udp_workers = 1

[srp]
rate = 100000000
burst = 100000000
[[srp.cluster]]
name = "bench"
addresses = ["$cluster"]
[[srp.cluster.instance]]
name = "SALES"
tcp = 14330
np = '\\\\BENCH\\pipe\\sql\\query'
EOT
taskset -c 0 "$vnamed" authority --config "$work/vnamed.toml" 2>"$work/vnamed.log" &
pid=$!
for _ in $(seq 100); do
  "$vnamed" resolve --timeout 50ms "$cluster\\SALES" >/dev/null 2>&1 && break
  sleep 0.1
done

stat() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)
before=$(stat)
out=$(taskset -c 1 "$load" "$cluster:1434" SALES "$secs" 2 32)
after=$(stat)
rate=$(awk '{for (i = 1; i <= NF; i++) if ($i == "resolutions/s,") print $(i - 1)}' <<<"$out")
cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$rate" -v s="$secs" 'BEGIN { printf "%.2f", (r > 0) ? (t / hz) / (r * s) * 1e6 : 0 }')

median() { sort -n | awk '{a[NR] = $1} END { if (NR) print a[int((NR + 1) / 2)]; else print "n/a" }'; }
now_us() { date +%s%6N; }
cold_in=(); cold_wall=(); warm_in=(); warm_wall=()
cache="$work/srp-cache"
for _ in $(seq "$runs"); do
  rm -f "$cache"
  t0=$(now_us); err=$("$vnamed" resolve --cache "$cache" "$cluster\\SALES" 2>&1 >/dev/null); t1=$(now_us)
  cold_in+=($(awk '{print $3}' <<<"$err")); cold_wall+=($((t1 - t0)))
  t0=$(now_us); err=$("$vnamed" resolve --cache "$cache" "$cluster\\SALES" 2>&1 >/dev/null); t1=$(now_us)
  grep -q '^cached' <<<"$err" || { echo "expected a cached resolution: $err" >&2; exit 1; }
  warm_in+=($(awk '{print $3}' <<<"$err")); warm_wall+=($((t1 - t0)))
done

echo
echo "$out"
echo "SRP resolutions/s, responder on one core   $rate"
echo "responder CPU per resolution (us)          $cpu"
echo "vnamed resolve, median of $runs (us)        resolver   whole process"
printf '  cold (SRP exchange)                      %-10s %s\n' "$(printf '%s\n' "${cold_in[@]}" | median)" "$(printf '%s\n' "${cold_wall[@]}" | median)"
printf '  cached (no exchange)                     %-10s %s\n' "$(printf '%s\n' "${warm_in[@]}" | median)" "$(printf '%s\n' "${warm_wall[@]}" | median)"
