#!/usr/bin/env bash
# DNS throughput and cost: vnamed against NSD and gdnsd in the same run,
# serving the same zone (virtual names plus static names): www, a priority
# pool answering 3 addresses, and w, a pool whose answers are drawn by
# shares from weights 1, 2, 3 (each query one address; the peers serve the
# zone file's three records).
# Each server is pinned to core 0 and dnsperf to core 1. For each server it
# prints queries/s at full load, lost queries, p99 latency at half that load,
# and the server's CPU time per answered query (from /proc, since on two
# cores dnsperf itself can be the bottleneck), then vnamed's ratios.
#
#   bash scripts/bench/dns.sh [SECONDS] [QNAME]     (defaults: 10, www.bench.example)
#   bash scripts/bench/dns.sh 10 w.bench.example    (the weighted pool)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
qname=${2:-www.bench.example}
bash scripts/setup.sh
cargo build --release --quiet
vnamed=$PWD/target/release/vnamed

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ip=127.0.0.1
declare -A port=([vnamed]=5400 [nsd]=5401 [gdnsd]=5402)

# The zone: a pool www with three members answered together, and static names.
mkdir -p "$work/vnamed/zones"
{
  echo '$TTL 300'
  echo '@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )'
  echo '  IN NS ns1'
  echo "ns1 IN A $ip"
  for i in $(seq 1 100); do echo "host$i IN A 192.0.2.$i"; done
} > "$work/vnamed/zones/bench.example.zone"
cat > "$work/vnamed/vnamed.toml" <<EOT
[authority]
dns_listen = ["$ip:${port[vnamed]}"]
zones_dir = "$work/vnamed/zones"
udp_workers = 1

[[pool]]
name = "www.bench.example."
policy = "priority"
answers = 3
ttl = 5
members = [ { id = "a", address = "127.0.10.1" }, { id = "b", address = "127.0.10.2" }, { id = "c", address = "127.0.10.3" } ]

[[pool]]
name = "w.bench.example."
policy = "weighted"
answers = 1
ttl = 5
members = [ { id = "a", address = "127.0.11.1", weight = 1 }, { id = "b", address = "127.0.11.2", weight = 2 },
            { id = "c", address = "127.0.11.3", weight = 3 } ]
EOT

taskset -c 0 "$vnamed" authority --config "$work/vnamed/vnamed.toml" 2>"$work/vnamed.log" &
pids+=($!)
declare -A pid=([vnamed]=$!)
for _ in $(seq 50); do
  [ "$(grep -c "vnamed:begin" "$work/vnamed/zones/bench.example.zone" 2>/dev/null)" = 2 ] && break
  sleep 0.1
done
# The peers serve exactly the zone file vnamed wrote.
zonefile="$work/vnamed/zones/bench.example.zone"

mkdir -p "$work/nsd"
cp "$zonefile" "$work/nsd/bench.example.zone"
cat > "$work/nsd/nsd.conf" <<EOT
server:
  ip-address: $ip@${port[nsd]}
  port: ${port[nsd]}
  server-count: 1
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  zonesdir: "$work/nsd"
  pidfile: "$work/nsd/nsd.pid"
  database: ""
  xfrdfile: "$work/nsd/xfrd.state"
  zonelistfile: "$work/nsd/zone.list"
  username: ""
  chroot: ""
  logfile: "$work/nsd/nsd.log"
remote-control:
  control-enable: no
zone:
  name: bench.example
  zonefile: "$work/nsd/bench.example.zone"
EOT
taskset -c 0 nsd -d -c "$work/nsd/nsd.conf" &
pids+=($!)
pid[nsd]=$!

mkdir -p "$work/gdnsd/zones"
cp "$zonefile" "$work/gdnsd/zones/bench.example"
printf 'options => {\n  listen => [ %s:%s ]\n}\n' "$ip" "${port[gdnsd]}" > "$work/gdnsd/config"
taskset -c 0 gdnsd -c "$work/gdnsd" start 2>"$work/gdnsd.log" &
pids+=($!)
pid[gdnsd]=$!

for s in vnamed nsd gdnsd; do
  for _ in $(seq 50); do
    dig +short +time=1 +tries=1 @$ip -p "${port[$s]}" "$qname" A >/dev/null 2>&1 && break
    sleep 0.1
  done
  answer=$(dig +short +time=1 +tries=1 @$ip -p "${port[$s]}" "$qname" A | sort | tr '\n' ' ')
  echo "$s answers $qname: $answer" >&2
done

# CPU ticks (user + system) of a process and all its descendants.
ticks() {
  local total=0 c
  # Fields after the command name, which may hold spaces: utime and stime are 12 and 13.
  [ -r "/proc/$1/stat" ] && total=$(sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}')
  for c in $(pgrep -P "$1" || true); do
    total=$((total + $(ticks "$c")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
echo "$qname A" > "$work/queries"

declare -A qps lost cpu p99
for s in vnamed nsd gdnsd; do
  before=$(ticks "${pid[$s]}")
  out=$(taskset -c 1 dnsperf -s $ip -p "${port[$s]}" -d "$work/queries" -l "$secs" -c 20 -q 500 2>/dev/null)
  after=$(ticks "${pid[$s]}")
  completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
  qps[$s]=$(awk '/Queries per second:/ {printf "%.0f", $4}' <<<"$out")
  lost[$s]=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  cpu[$s]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$completed" 'BEGIN { printf "%.2f", (n > 0) ? (t / hz / n * 1e6) : 0 }')
  half=$((qps[$s] / 2))
  taskset -c 1 dnsperf -s $ip -p "${port[$s]}" -d "$work/queries" -l 5 -Q "$half" -v 2>/dev/null \
    | awk '/^> / {print $NF}' | sort -g > "$work/lat.$s"
  n=$(wc -l < "$work/lat.$s")
  p99[$s]=$(awk -v n="$n" 'NR == int(n * 0.99) + 1 { printf "%.0f", $1 * 1e6 }' "$work/lat.$s")
  echo "$s latency at half load (us): p50 $(awk -v n="$n" 'NR == int(n * 0.5) + 1 { printf "%.0f", $1 * 1e6 }' "$work/lat.$s") p90 $(awk -v n="$n" 'NR == int(n * 0.9) + 1 { printf "%.0f", $1 * 1e6 }' "$work/lat.$s") p99 ${p99[$s]} over $n queries" >&2
done

printf '\n%-8s %12s %8s %14s %16s\n' server "queries/s" lost "p99@half (us)" "CPU/query (us)"
for s in vnamed nsd gdnsd; do
  printf '%-8s %12s %8s %14s %16s\n' "$s" "${qps[$s]}" "${lost[$s]}" "${p99[$s]}" "${cpu[$s]}"
done
echo
awk -v v="${qps[vnamed]}" -v g="${qps[gdnsd]}" -v n="${qps[nsd]}" \
    -v cv="${cpu[vnamed]}" -v cg="${cpu[gdnsd]}" -v cn="${cpu[nsd]}" 'BEGIN {
  printf "vnamed/gdnsd: queries/s x%.2f, CPU per query x%.2f\n", v / g, cv / cg
  printf "vnamed/nsd:   queries/s x%.2f, CPU per query x%.2f\n", v / n, cv / cn
}'
