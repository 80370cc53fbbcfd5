#!/usr/bin/env bash
# Fail-over time: from `kill -9` of a backend host (its HTTP server and its
# vnamed monitor, a ring member) to the first `dig` answer without it, over
# TRIALS trials, with the tuned ring profile and with the seed's defaults.
# Prints p50/p99 for each. Everything runs on loopback and is stopped at the end.
#
#   bash scripts/bench/failover.sh [TRIALS] [SOAK_SECONDS]   (defaults 20, 60)
#
# Then a soak: the tuned ring runs SOAK_SECONDS with both cores saturated by
# busy loops, and the false deaths (members reported dead while alive) are
# counted. Last, the per-member cost of the ring state machine for 10, 100
# and 1,000 simulated members (examples/ring_cost.rs).
#
# gdnsd runs in the same script at its default check settings (tcp_connect,
# interval 10 s, down_thresh 10): TRIALS instances side by side, each with
# its own primary and secondary, all primaries killed at once, each timed
# until it answers the secondary. PowerDNS LUA records (ifportup) the same
# way, at their defaults (checks every 5 s, 2 s connect timeout).
set -euo pipefail
cd "$(dirname "$0")/../.."
trials=${1:-20}
soak=${2:-60}
bash scripts/setup.sh
cargo build --release --quiet --bin vnamed --example ring_cost
vnamed=$PWD/target/release/vnamed

work=$(mktemp -d)
pids=()
others=()   # the peers' servers and listeners, stopped by cleanup too
stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  for p in "${others[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${auth:-}" ] && kill "$auth" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

hosts=(127.0.31.1 127.0.31.2 127.0.31.3)
mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/fo.example.zone"
cat > "$work/auth.toml" <<EOT
[authority]
dns_listen = ["127.0.0.1:5430"]
grpc_listen = "127.0.0.1:7430"
zones_dir = "$work/zones"

[[pool]]
name = "www.fo.example."
policy = "priority"
stale_after = "60s"
members = [ { id = "h1", address = "${hosts[0]}" }, { id = "h2", address = "${hosts[1]}" }, { id = "h3", address = "${hosts[2]}" } ]
EOT
"$vnamed" authority --config "$work/auth.toml" 2>"$work/auth.log" &
auth=$!
sleep 0.5

peers=$(printf '"%s:7946", ' "${hosts[@]}"); peers=${peers%, }
host_up() { # $1 index, $2 profile
  local h=${hosts[$1]}
  python3 -m http.server --bind "$h" 8080 >/dev/null 2>&1 &
  pids+=($!)
  disown
  local timing
  if [ "$2" = tuned ]; then
    timing='ping_interval = "100ms"
misses = 3
token_timeout = "400ms"
broadcast_timeout = "300ms"'
  else
    timing='ping_interval = "500ms"
misses = 3
token_timeout = "2s"
broadcast_timeout = "2.5s"'
  fi
  cat > "$work/h$1.toml" <<EOT
[monitor]
host = "h$(($1 + 1))"
report_to = ["http://127.0.0.1:7430"]
[[monitor.check]]
pool = "www.fo.example."
kind = "tcp"
target = "$h:8080"
interval = "1s"
[ring]
listen = "$h:7946"
$timing
peers = [$peers]
EOT
  "$vnamed" monitor --config "$work/h$1.toml" 2>>"$work/h$1.log" &
  pids+=($!)
  disown
}

answer() { dig +short +time=1 +tries=1 @127.0.0.1 -p 5430 www.fo.example A 2>/dev/null | head -1; }
now_ms() { date +%s%3N; }

measure() { # $1 profile
  local times=()
  for t in $(seq "$trials"); do
    stop_all
    "$vnamed" ring table --server http://127.0.0.1:7430 >/dev/null 2>&1 || true
    for i in 0 1 2; do host_up "$i" "$1"; done
    # Wait for the ring and for h1 to answer.
    local ok=""
    for _ in $(seq 200); do
      if "$vnamed" ring table --server http://127.0.0.1:7430 2>/dev/null | grep -q "ring (3 members)" && [ "$(answer)" = "${hosts[0]}" ]; then ok=1; break; fi
      sleep 0.05
    done
    [ -n "$ok" ] || { echo "trial $t: ring did not form" >&2; continue; }
    sleep 0.5
    local start; start=$(now_ms)
    kill -9 "${pids[0]}" "${pids[1]}"   # h1's HTTP server and its monitor
    while [ "$(answer)" = "${hosts[0]}" ]; do
      [ $(( $(now_ms) - start )) -gt 20000 ] && break
    done
    times+=($(( $(now_ms) - start )))
    stop_all
    # The survivors left gracefully; h1 is recorded dead: clear it for the next trial.
    "$vnamed" ring announce "${hosts[0]}:7946" --server http://127.0.0.1:7430 >/dev/null 2>&1 || true
    for h in "${hosts[@]}"; do "$vnamed" ring delete "$h:7946" --server http://127.0.0.1:7430 >/dev/null 2>&1 || true; done
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v p="$1" '{a[NR]=$1} END {
    if (NR == 0) { print p ": no trial completed"; exit }
    i50 = int(NR * 0.5) + 1; if (i50 > NR) i50 = NR
    i99 = int(NR * 0.99) + 1; if (i99 > NR) i99 = NR
    printf "%-8s trials %d  p50 %d ms  p99 %d ms  max %d ms\n", p, NR, a[i50], a[i99], a[NR] }'
}

echo "kill -9 of a backend host to the first dig answer without it (vnamed ring):"
measure tuned
measure seed

echo
echo "gdnsd (simplefo, tcp_connect, default check settings), $trials instances side by side:"
listen_all() { # $1 prefix (127.0.40 or 127.0.41): a TCP listener on .1..TRIALS port 8080
  python3 - "$1" "$trials" >/dev/null 2>&1 <<'PY' &
import asyncio, sys
prefix, n = sys.argv[1], int(sys.argv[2])
async def main():
    async def on(r, w):
        w.close()
    servers = [await asyncio.start_server(on, f"{prefix}.{k}", 8080) for k in range(1, n + 1)]
    await asyncio.gather(*(s.serve_forever() for s in servers))
asyncio.run(main())
PY
  echo $!
}
# side_by_side NAME PORT_BASE: waits until instance k (port PORT_BASE+k) no
# longer answers 127.0.40.k (killed) and answers 127.0.41.k; prints p50/p99.
side_by_side() {
  local name=$1 base=$2 start k a
  start=$(now_ms)
  declare -A done_at=()
  while [ "${#done_at[@]}" -lt "$trials" ] && [ $(( $(now_ms) - start )) -lt 300000 ]; do
    for k in $(seq "$trials"); do
      [ -n "${done_at[$k]:-}" ] && continue
      a=$(dig +short +time=1 +tries=1 @127.0.0.1 -p $((base + k)) www.fo.example A 2>/dev/null | sort | tr '\n' ' ')
      [ "$a" = "127.0.41.$k " ] && done_at[$k]=$(( $(now_ms) - start ))
    done
    sleep 0.1
  done
  printf '%s\n' "${done_at[@]}" | sort -n | awk -v n="$trials" -v p="$name" '{a[NR]=$1} END {
    if (NR == 0) { print p ": no instance failed over within 300 s"; exit }
    i50 = int(NR * 0.5) + 1; if (i50 > NR) i50 = NR
    i99 = int(NR * 0.99) + 1; if (i99 > NR) i99 = NR
    printf "%-8s trials %d  p50 %d ms  p99 %d ms  max %d ms  (%d of %d failed over)\n", p, NR, a[i50], a[i99], a[NR], NR, n }'
}

prim=$(listen_all 127.0.40)
sec=$(listen_all 127.0.41)
others+=("$prim" "$sec")
gd=()
for k in $(seq "$trials"); do
  d="$work/gdnsd$k"
  mkdir -p "$d/zones"
  cat > "$d/config" <<EOT
options => {
  listen => [ 127.0.0.1:$((5500 + k)) ]
  run_dir => $d/run
  state_dir => $d/state
}
service_types => { tcp8080 => { plugin => tcp_connect, port => 8080 } }
plugins => { simplefo => { www => { primary => 127.0.40.$k, secondary => 127.0.41.$k, service_types => tcp8080 } } }
EOT
  printf '$TTL 60\n@ IN SOA ns1 h 1 3600 600 86400 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\nwww 5 DYNA simplefo!www\n' > "$d/zones/fo.example"
  gdnsd -c "$d" start >"$d/log" 2>&1 &
  gd+=($!)
  others+=($!)
done
sleep 3
kill -9 "$prim"
side_by_side gdnsd 5500
kill "${gd[@]}" "$sec" 2>/dev/null || true

echo
echo "PowerDNS LUA records (ifportup, selector all, default check settings), $trials instances side by side:"
prim=$(listen_all 127.0.40)
sec=$(listen_all 127.0.41)
others+=("$prim" "$sec")
pd=()
for k in $(seq "$trials"); do
  d="$work/pdns$k"
  mkdir -p "$d"
  echo "zone \"fo.example\" { type master; file \"$d/fo.example\"; };" > "$d/named.conf"
  printf '$TTL 60\n@ IN SOA ns1 h 1 3600 600 86400 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\n' > "$d/fo.example"
  printf 'www 5 IN LUA A "ifportup(8080, {%s, %s}, {selector=%s})"\n' "'127.0.40.$k'" "'127.0.41.$k'" "'all'" >> "$d/fo.example"
  pdns_server --config-dir="$d" --launch=bind --bind-config="$d/named.conf" \
    --local-address=127.0.0.1 --local-port=$((5600 + k)) --socket-dir="$d" \
    --guardian=no --daemon=no --enable-lua-records=yes --disable-syslog \
    --write-pid=no --setuid= --setgid= >"$d/log" 2>&1 &
  pd+=($!)
  others+=($!)
  # The first query starts the instance's checks; spread their phases.
  sleep 0.3
  dig +short +time=1 +tries=1 @127.0.0.1 -p $((5600 + k)) www.fo.example A >/dev/null 2>&1 || true
done
sleep 12
kill -9 "$prim"
side_by_side pdns 5600
kill "${pd[@]}" "$sec" 2>/dev/null || true

echo
echo "soak: tuned ring, ${soak}s with both cores busy:"
stop_all
for i in 0 1 2; do host_up "$i" tuned; done
for _ in $(seq 200); do
  "$vnamed" ring table --server http://127.0.0.1:7430 2>/dev/null | grep -q "ring (3 members)" && break
  sleep 0.05
done
before=$(cat "$work"/h*.log | grep -c "ring member dead" || true)
burners=()
for _ in 1 2; do
  timeout "$soak" sh -c 'while :; do :; done' &
  burners+=($!)
done
sleep "$soak"
wait "${burners[@]}" 2>/dev/null || true
after=$(cat "$work"/h*.log | grep -c "ring member dead" || true)
dead=$("$vnamed" ring table --server http://127.0.0.1:7430 2>/dev/null | grep -c " dead" || true)
echo "false deaths seen by members: $((after - before)); dead in the authority's table: $dead   (target: 0)"
stop_all

echo
echo "ring state machine cost per member:"
"$PWD/target/release/examples/ring_cost" 30
