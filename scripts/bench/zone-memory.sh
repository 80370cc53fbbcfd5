#!/usr/bin/env bash
# Memory and load time of a large zone, vnamed beside NSD and Knot in the
# same run. For each size (records), one zone file (scripts/bench/zonegen.py:
# 70% A, 20% AAAA, 10% TXT) is loaded by each server on loopback; the
# script prints the time from start to the first answer and the memory
# (PSS summed over the server's processes, so NSD's forked children are
# not counted twice) once it answers. vnamed also serves one pool in the
# zone, whose answer is then changed CHANGES times through the API; its
# memory is printed again after them, and the ratio to the larger of NSD
# and Knot.
#
#   bash scripts/bench/zone-memory.sh [SIZES] [CHANGES]
#   (defaults "30000 150000 600000 1000000" and 100)
#
# 30,000 records are about 1 MB of zone file, 150,000 about 5 MB,
# 600,000 about 20 MB. Everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-30000 150000 600000 1000000}
changes=${2:-100}
bash scripts/setup.sh --bench
cargo build --release --quiet --bin vnamed
vnamed=$PWD/target/release/vnamed
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ip=127.0.0.61
# Milliseconds since the epoch.
ms() { date +%s%3N; }
# Waits (at most 120 s) until PORT at ip answers host1.bench.test.
wait_answer() {
  local port=$1 t=0
  until dig +short +time=1 +tries=1 @"$ip" -p "$port" host1.bench.test A 2>/dev/null | grep -q .; do
    t=$((t + 1)); [ $t -gt 1200 ] && { echo "no answer on port $port" >&2; return 1; }
    sleep 0.1
  done
}
# PSS in MB of the processes whose command line matches $1.
pss() {
  local total=0
  for p in $(pgrep -f "$1"); do
    total=$((total + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
  done
  echo $((total / 1024))
}
stop() {
  pkill -f "$1" 2>/dev/null || true
  for _ in $(seq 100); do pgrep -f "$1" >/dev/null || return 0; sleep 0.1; done
  pkill -9 -f "$1" 2>/dev/null || true
}

printf '%9s %8s | %9s %9s %11s | %9s %9s | %9s %9s | %7s %7s\n' records file_MB vnamed_MB "after_$changes" vnamed_load nsd_MB nsd_load knot_MB knot_load ratio load_x
for n in $sizes; do
  d=$work/$n
  mkdir -p "$d/vnamed/zones" "$d/nsd" "$d/knot"
  python3 scripts/bench/zonegen.py bench.test. "$n" > "$d/bench.test.zone"
  file_mb=$(( $(stat -c %s "$d/bench.test.zone") / 1048576 ))
  cp "$d/bench.test.zone" "$d/vnamed/zones/"
  cp "$d/bench.test.zone" "$d/nsd/"
  cp "$d/bench.test.zone" "$d/knot/"

  # vnamed, with one pool of two members in the zone.
  cat > "$d/vnamed/vnamed.toml" <<EOF
[authority]
dns_listen = ["$ip:5391"]
grpc_listen = "$ip:7491"
metrics_listen = "$ip:9391"
zones_dir = "$d/vnamed/zones"
token = "bench"
[[pool]]
name = "www.bench.test."
members = [ { id = "a", address = "192.0.2.1" }, { id = "b", address = "192.0.2.2" } ]
EOF
  t0=$(ms)
  "$vnamed" authority --config "$d/vnamed/vnamed.toml" > "$d/vnamed/log" 2>&1 &
  pids+=($!)
  wait_answer 5391
  v_load=$(( $(ms) - t0 ))
  sleep 2 # what the load needed for a moment is given back
  v_mem=$(pss "vnamed authority --config $d/vnamed")
  for i in $(seq "$changes"); do
    if [ $((i % 2)) = 1 ]; then a=down; else a=up; fi
    VNAMED_TOKEN=bench "$vnamed" member www.bench.test a --admin "$a" --server "http://$ip:7491" >/dev/null
  done
  # The zone file follows within the write interval; then memory settles.
  for _ in $(seq 100); do
    grep -q "zone file written" "$d/vnamed/log" && break; sleep 0.1
  done
  sleep 3
  v_after=$(pss "vnamed authority --config $d/vnamed")
  stop "vnamed authority --config $d/vnamed"

  cat > "$d/nsd/nsd.conf" <<EOF
server:
  ip-address: $ip@5392
  server-count: 1
  username: ""
  zonesdir: "$d/nsd"
  database: ""
  zonelistfile: "$d/nsd/zone.list"
  xfrdfile: "$d/nsd/xfrd.state"
  pidfile: "$d/nsd/nsd.pid"
  logfile: "$d/nsd/nsd.log"
remote-control:
  control-enable: no
zone:
  name: bench.test.
  zonefile: bench.test.zone
EOF
  t0=$(ms)
  nsd -d -c "$d/nsd/nsd.conf" &
  pids+=($!)
  wait_answer 5392
  n_load=$(( $(ms) - t0 ))
  sleep 2
  n_mem=$(pss "nsd -d -c $d/nsd")
  stop "nsd -d -c $d/nsd"

  cat > "$d/knot/knot.conf" <<EOF
server:
    listen: $ip@5393
    rundir: $d/knot
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1
database:
    storage: $d/knot/db
template:
  - id: default
    storage: $d/knot
    file: "%s.zone"
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: bench.test.
log:
  - target: stderr
    any: error
EOF
  t0=$(ms)
  knotd -c "$d/knot/knot.conf" 2> "$d/knot/log" &
  pids+=($!)
  wait_answer 5393
  k_load=$(( $(ms) - t0 ))
  sleep 2
  k_mem=$(pss "knotd -c $d/knot")
  stop "knotd -c $d/knot"

  peer=$(( n_mem > k_mem ? n_mem : k_mem ))
  ratio=$(awk -v v="$v_after" -v p="$peer" 'BEGIN { printf "%.2f", v / p }')
  load_x=$(awk -v v="$v_load" -v k="$k_load" 'BEGIN { printf "%.2f", v / k }')
  printf '%9s %8s | %9s %9s %9sms | %9s %7sms | %9s %7sms | %7s %7s\n' "$n" "$file_mb" "$v_mem" "$v_after" "$v_load" "$n_mem" "$n_load" "$k_mem" "$k_load" "$ratio" "$load_x"
  rm -rf "$d"
done
echo "ratio: vnamed's memory after the changes / the larger of NSD's and Knot's; load_x: vnamed's load time / Knot's"
