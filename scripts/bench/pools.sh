#!/usr/bin/env bash
# Many pools: for each count (10,000, 50,000 and 100,000 by default), one
# authority serves that many pools of two members in one zone; the script
# prints the time from start to the last pool answering, memory (PSS)
# then, memory and the SOA serial's move after one report batch takes
# DOWN members down at once (one publish: the serial moves by one), and
# the time a clean stop (SIGTERM) takes. The growth with the pool count
# is the thing to read: linear, not worse.
#
#   bash scripts/bench/pools.sh [COUNTS] [DOWN]   (defaults "10000 50000 100000" and 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=${1:-10000 50000 100000}
down=${2:-10000}
bash scripts/setup.sh --minimal
cargo build --release --quiet --bin vnamed --example pools_batch
vnamed=$PWD/target/release/vnamed
batch=$PWD/target/release/examples/pools_batch
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
ip=127.0.0.62
ms() { date +%s%3N; }
pss() { echo $(( $(awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup") / 1024 )); }
serial() { dig +short +time=1 +tries=1 @"$ip" -p 5394 pools.test SOA | awk '{print $3}'; }
answer() { dig +short +time=1 +tries=1 @"$ip" -p 5394 "$1" A 2>/dev/null; }

printf '%8s | %8s %6s | %10s %7s %8s | %7s\n' pools start_ms MB after_down serial+ batch_ms stop_ms
for n in $counts; do
  d=$work/$n
  mkdir -p "$d/zones"
  printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 30 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$d/zones/pools.test.zone"
  printf '[authority]\ndns_listen = ["%s:5394"]\ngrpc_listen = "%s:7494"\nmetrics_listen = "%s:9394"\nzones_dir = "%s"\ntoken = "bench"\n' \
    "$ip" "$ip" "$ip" "$d/zones" > "$d/vnamed.toml"
  python3 -c '
import sys
n = int(sys.argv[1])
for p in range(n):
    a, b = (p // 250) % 250, p % 250 + 1
    print(f"[[pool]]\nname = \"p{p}.pools.test.\"\nselect = \"best\"\nmembers = [ {{ id = \"m0\", address = \"10.1.{a}.{b}\" }}, {{ id = \"m1\", address = \"10.2.{a}.{b}\" }} ]")
' "$n" >> "$d/vnamed.toml"
  t0=$(ms)
  "$vnamed" authority --config "$d/vnamed.toml" > "$d/log" 2>&1 &
  pid=$!
  until answer "p$((n - 1)).pools.test" | grep -q .; do
    kill -0 "$pid" 2>/dev/null || { cat "$d/log" >&2; exit 1; }
    sleep 0.05
  done
  start=$(( $(ms) - t0 ))
  sleep 2
  mem=$(pss "$pid")
  # Each pool's m0 reported up first, then one batch takes them all down.
  "$batch" "http://$ip:7494" bench pools.test "$down" up >/dev/null
  sleep 1
  before=$(serial)
  took=$("$batch" "http://$ip:7494" bench pools.test "$down" down)
  # Answered once the last pool of the batch answers its other member.
  last=$((down - 1))
  until [ "$(answer "p$last.pools.test")" = "10.2.$((last / 250 % 250)).$((last % 250 + 1))" ]; do sleep 0.05; done
  sleep 2
  after_mem=$(pss "$pid")
  moved=$(( $(serial) - before ))
  t0=$(ms)
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  stopped=$(( $(ms) - t0 ))
  pid=""
  printf '%8s | %8s %6s | %10s %7s %8s | %7s\n' "$n" "$start" "$mem" "$after_mem" "$moved" "$took" "$stopped"
  rm -rf "$d"
done
echo "start_ms: start to the last pool answering; MB: PSS then; after_down: PSS once the batch is answered;"
echo "serial+: how far the SOA serial moved for the batch; batch_ms: the batch's round trip; stop_ms: SIGTERM to exit"
