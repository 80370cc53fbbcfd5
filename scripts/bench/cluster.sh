#!/usr/bin/env bash
# A group of three authorities sharing their state through a three-node etcd
# cluster, all on loopback: POOLS pools of MEMBERS members each (defaults
# 1,000 and 10: 10,000 members), every member reported to every authority
# at RATE reports/s (default 10,000) by examples/cluster_load.rs. Meanwhile
# a probe takes a pool's first member down at every authority and times
# until all three answer without it (real DNS queries): p50/p99. The same
# load and probe then run against one authority with the embedded store
# (today's single-authority path) as the baseline, in the same run.
#
#   bash scripts/bench/cluster.sh [POOLS] [MEMBERS] [RATE] [SECONDS]
#   (defaults 1000, 10, 10000, 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
pools=${1:-1000}
members=${2:-10}
rate=${3:-10000}
secs=${4:-20}
bash scripts/setup.sh
cargo build --release --quiet --bin vnamed --example cluster_load
vnamed=$PWD/target/release/vnamed
load=$PWD/target/release/examples/cluster_load

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

etcd_ips=(127.0.50.1 127.0.50.2 127.0.50.3)
auth_ips=(127.0.51.1 127.0.51.2 127.0.51.3)
initial=""
for i in 0 1 2; do initial+="${initial:+,}n$i=http://${etcd_ips[$i]}:2380"; done

start_etcd() {
  for i in 0 1 2; do
    ip=${etcd_ips[$i]}
    etcd --name "n$i" --data-dir "${ETCD_DATA:-$work}/etcd$i" \
      --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
      --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token vnamed-bench \
      2>"$work/etcd$i.log" &
    pids+=($!)
    disown
  done
  for _ in $(seq 300); do
    curl -sf "http://${etcd_ips[0]}:2379/health" | grep -q '"health":"true"' && return
    sleep 0.1
  done
  echo "etcd did not become healthy" >&2
  exit 1
}

# The pools, and a config per authority (with or without [cluster]).
python3 - "$pools" "$members" > "$work/pools.toml" <<'PY'
import sys
pools, members = int(sys.argv[1]), int(sys.argv[2])
for p in range(pools):
    ms = ", ".join(f'{{ id = "m{m}", address = "127.{4 + m}.{p // 250}.{p % 250 + 1}" }}' for m in range(members))
    print(f'[[pool]]\nname = "p{p}.cl.example."\npolicy = "priority"\nstale_after = "1h"\nmembers = [ {ms} ]\n')
PY
config() { # NAME IP CLUSTER(yes|no)
  mkdir -p "$work/$1/zones"
  printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/$1/zones/cl.example.zone"
  {
    printf '[authority]\ndns_listen = ["%s:5460"]\ngrpc_listen = "%s:7460"\nzones_dir = "%s"\n\n' "$2" "$2" "$work/$1/zones"
    if [ "$3" = yes ]; then
      printf '[cluster]\nbackend = "etcd"\nendpoints = ["http://%s:2379", "http://%s:2379", "http://%s:2379"]\nprefix = "/bench/"\n\n' "${etcd_ips[@]}"
    fi
    cat "$work/pools.toml"
  } > "$work/$1/vnamed.toml"
}
start_auth() { # NAME IP
  "$vnamed" authority --config "$work/$1/vnamed.toml" 2>"$work/$1.log" &
  pids+=($!)
  disown
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/$2/7460") 2>/dev/null && return
    sleep 0.1
  done
  echo "authority $1 did not start: $(tail -5 "$work/$1.log")" >&2
  exit 1
}
figure() { awk -v k="$1" '$1 == k {print $2}' <<<"$2"; }

# The group.
start_etcd
urls=""; addrs=""
for i in 0 1 2; do
  config "a$i" "${auth_ips[$i]}" yes
  start_auth "a$i" "${auth_ips[$i]}"
  urls+="${urls:+,}http://${auth_ips[$i]}:7460"
  addrs+="${addrs:+,}${auth_ips[$i]}:5460"
done
group=$("$load" "$urls" "$addrs" cl.example. "$pools" "$members" "$rate" "$secs")
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
pids=()

# The baseline: one authority, its own store.
config single 127.0.52.1 no
start_auth single 127.0.52.1
single=$("$load" http://127.0.52.1:7460 127.0.52.1:5460 cl.example. "$pools" "$members" "$rate" "$secs")

echo
echo "$pools pools x $members members, $rate reports/s to each authority, ${secs}s"
printf '%-44s %14s %14s\n' "" "3 on etcd" "1 embedded"
printf '%-44s %14s %14s\n' "reports/s taken by each authority" "$(figure reports_per_s_per_authority "$group")" "$(figure reports_per_s_per_authority "$single")"
printf '%-44s %14s %14s\n' "member down -> all answer it, p50 (ms)" "$(figure all_answer_p50_ms "$group")" "$(figure all_answer_p50_ms "$single")"
printf '%-44s %14s %14s   (target: <= 50 for the group)\n' "member down -> all answer it, p99 (ms)" "$(figure all_answer_p99_ms "$group")" "$(figure all_answer_p99_ms "$single")"
printf '%-44s %14s %14s\n' "probes (missed: not answered within 2 s)" "$(figure samples "$group") ($(figure missed "$group"))" "$(figure samples "$single") ($(figure missed "$single"))"
