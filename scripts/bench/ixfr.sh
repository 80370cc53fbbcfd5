#!/usr/bin/env bash
# Bytes a secondary transfers per pool change, incremental (IXFR) against
# the whole zone (AXFR), for a zone with POOLS pools of two members each
# (default 1,000). CHANGES changes are made one at a time (a member taken
# out or put back through the API); after each, `dig` asks IXFR from the
# serial before it, as a secondary that followed would, and AXFR. Prints
# the bytes of each kind per change (mean) and the ratio. Everything runs
# on loopback and is stopped at the end.
#
#   bash scripts/bench/ixfr.sh [POOLS] [CHANGES]   (defaults 1000, 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
pools=${1:-1000}
changes=${2:-100}
bash scripts/setup.sh --minimal
cargo build --release --quiet --bin vnamed
vnamed=$PWD/target/release/vnamed

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/ix.example.zone"
python3 - "$pools" "$work" > "$work/vnamed.toml" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
print(f'[authority]\ndns_listen = ["127.0.0.1:5440"]\ngrpc_listen = "127.0.0.1:7440"\nzones_dir = "{work}/zones"\nallow_transfer = ["127.0.0.0/8"]\n')
for i in range(n):
    a, b = 1 + i // 250, 1 + i % 250
    print(f'[[pool]]\nname = "p{i}.ix.example."\npolicy = "priority"\n'
          f'members = [ {{ id = "a", address = "127.2.{a}.{b}" }}, {{ id = "b", address = "127.3.{a}.{b}" }} ]\n')
PY
"$vnamed" authority --config "$work/vnamed.toml" 2>"$work/vnamed.log" &
pid=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/7440) 2>/dev/null && break
  sleep 0.1
done

serial() { dig @127.0.0.1 -p 5440 ix.example SOA +short | awk '{print $3}'; }
# "XFR size: N records (messages M, bytes B)"
bytes() { dig @127.0.0.1 -p 5440 ix.example "$@" +tcp | awk '/XFR size/ {gsub(/[^0-9]/, "", $NF); print $NF}'; }
ixfr_total=0
axfr_total=0
for i in $(seq 0 $((changes - 1))); do
  before=$(serial)
  pool=p$((RANDOM % pools)).ix.example.
  state=$([ $((i % 2)) -eq 0 ] && echo down || echo auto)
  "$vnamed" member "$pool" a --admin "$state" --server http://127.0.0.1:7440 >/dev/null
  # A pool put back that was never taken out changes nothing: take it out.
  if [ "$(serial)" = "$before" ]; then
    "$vnamed" member "$pool" a --admin down --server http://127.0.0.1:7440 >/dev/null
  fi
  ix=$(bytes "IXFR=$before")
  ax=$(bytes AXFR)
  ixfr_total=$((ixfr_total + ix))
  axfr_total=$((axfr_total + ax))
done
echo "zone with $pools pools, $changes changes, one at a time, each transferred as a secondary that followed would:"
awk -v i="$ixfr_total" -v a="$axfr_total" -v n="$changes" 'BEGIN {
  printf "  IXFR  %8.0f bytes per change\n  AXFR  %8.0f bytes per change\n  IXFR/AXFR  %.4f\n", i / n, a / n, i / a }'
