#!/usr/bin/env bash
# A group of three vnamed authorities on a three-node etcd cluster, all on
# loopback, with three web backends each watched by its own `vnamed monitor`
# reporting to all three authorities. Walks through what an operator would
# try, checking each step with dig and the CLI, and says PASS or FAIL:
#   1. all three answer alike, with one serial;
#   2. a member taken out at one authority is out at all three;
#   3. one etcd node killed: changes still go through;
#   4. two killed: answers stay, changes fail with a clear error;
#   5. both back: the group follows again and takes changes.
# Everything is stopped at the end (KEEP=1 keeps the directory and logs).
#
#   bash scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet --bin vnamed
vnamed=$PWD/target/debug/vnamed

work=$(mktemp -d)
pids=()
declare -A etcd_pid
cleanup() {
  for p in "${pids[@]}" "${etcd_pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

etcd_ips=(127.0.70.1 127.0.70.2 127.0.70.3)
auth_ips=(127.0.71.1 127.0.71.2 127.0.71.3)
web_ips=(127.0.72.1 127.0.72.2 127.0.72.3)
initial=""
for i in 0 1 2; do initial+="${initial:+,}n$i=http://${etcd_ips[$i]}:2380"; done
failures=0
check() { # DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then echo "PASS  $what"; else echo "FAIL  $what"; failures=$((failures + 1)); fi
}
eventually() { # SECONDS COMMAND...
  local until=$((SECONDS + $1))
  shift
  while [ $SECONDS -lt $until ]; do "$@" && return 0; sleep 0.1; done
  return 1
}

start_etcd() { # INDEX
  local ip=${etcd_ips[$1]}
  etcd --name "n$1" --data-dir "$work/etcd$1" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token vnamed-demo \
    2>>"$work/etcd$1.log" &
  etcd_pid[$1]=$!
  disown
}
healthy() { curl -sf "http://${etcd_ips[0]}:2379/health" | grep -q '"health":"true"'; }

for i in 0 1 2; do start_etcd "$i"; done
eventually 30 healthy || { echo "etcd did not start" >&2; exit 1; }

for i in 0 1 2; do
  python3 -m http.server --bind "${web_ips[$i]}" 8080 >/dev/null 2>&1 &
  pids+=($!)
  disown
done

endpoints=$(printf '"http://%s:2379", ' "${etcd_ips[@]}")
for i in 0 1 2; do
  mkdir -p "$work/a$i/zones"
  printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/a$i/zones/demo.example.zone"
  cat > "$work/a$i/vnamed.toml" <<EOT
[authority]
dns_listen = ["${auth_ips[$i]}:5470"]
grpc_listen = "${auth_ips[$i]}:7470"
metrics_listen = "${auth_ips[$i]}:9470"
zones_dir = "$work/a$i/zones"

[cluster]
backend = "etcd"
endpoints = [${endpoints%, }]
prefix = "/vnamed-demo/"

[[pool]]
name = "www.demo.example."
policy = "priority"
members = [ { id = "web1", address = "${web_ips[0]}" }, { id = "web2", address = "${web_ips[1]}" }, { id = "web3", address = "${web_ips[2]}" } ]
EOT
  "$vnamed" authority --config "$work/a$i/vnamed.toml" 2>"$work/a$i.log" &
  pids+=($!)
  disown
done
report_to=$(printf '"http://%s:7470", ' "${auth_ips[@]}")
for i in 0 1 2; do
  cat > "$work/m$i.toml" <<EOT
[monitor]
host = "web$((i + 1))"
report_to = [${report_to%, }]
refresh = "1s"

[[monitor.check]]
pool = "www.demo.example."
kind = "tcp"
target = "${web_ips[$i]}:8080"
interval = "500ms"
EOT
  "$vnamed" monitor --config "$work/m$i.toml" 2>"$work/m$i.log" &
  pids+=($!)
  disown
done

answer() { dig @"${auth_ips[$1]}" -p 5470 www.demo.example A +short +time=1 +tries=1 | head -1; }
serial() { dig @"${auth_ips[$1]}" -p 5470 demo.example SOA +short +time=1 +tries=1 | awk '{print $3}'; }
all_answer() { # ADDRESS: all three answer it, with one serial
  local s
  s=$(serial 0)
  for i in 0 1 2; do
    [ "$(answer "$i")" = "$1" ] && [ -n "$s" ] && [ "$(serial "$i")" = "$s" ] || return 1
  done
}
cli() { local i=$1; shift; "$vnamed" "$@" --server "http://${auth_ips[$i]}:7470"; }
following() { for i in 0 1 2; do curl -sf "http://${auth_ips[$i]}:9470/metrics" | grep -qx 'vnamed_cluster_available 1' || return 1; done; }

echo "three etcd nodes, three authorities, three monitors reporting to all three:"
check "every authority follows the group" eventually 20 following
check "1. all three answer web1, with one serial" eventually 20 all_answer "${web_ips[0]}"
cli 0 member www.demo.example. web1 --admin down >/dev/null
check "2. web1 taken out at the first authority: all three answer web2" eventually 5 all_answer "${web_ips[1]}"
kill -9 "${etcd_pid[2]}"
quietly() { "$@" >/dev/null; }
check "3. one etcd node killed: a change at the second authority goes through" quietly cli 1 member www.demo.example. web2 --admin down
check "   and all three answer web3" eventually 5 all_answer "${web_ips[2]}"
kill -9 "${etcd_pid[1]}"
refused() { ! cli 2 member www.demo.example. web2 --admin auto 2>"$work/refused.txt" && grep -q "cluster state unavailable" "$work/refused.txt"; }
check "4. two etcd nodes killed: a change fails with 'cluster state unavailable'" eventually 15 refused
check "   and all three still answer web3" all_answer "${web_ips[2]}"
start_etcd 1
start_etcd 2
check "5. etcd back: every authority follows the group again" eventually 30 following
cli 2 member www.demo.example. web2 --admin auto >/dev/null
check "   a change at the third authority: all three answer web2" eventually 5 all_answer "${web_ips[1]}"
echo
if [ "$failures" -eq 0 ]; then echo "all steps passed"; else echo "$failures step(s) failed (KEEP=1 keeps the logs)"; exit 1; fi
