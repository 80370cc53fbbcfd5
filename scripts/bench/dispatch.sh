#!/usr/bin/env bash
# The dispatcher against HAProxy, in one run and one topology (network
# namespaces on a bridge, addresses only in 10.88.0.0/24, 10.89.0.0/24 and
# 10.90.0.0/24 inside them): a client running wrk, three nginx servers, and
# a dispatcher namespace running in turn HAProxy (mode tcp, round-robin)
# and vnamed (L4/2 and L4/3, round-robin; with a virtual MAC, as for
# fail-over, and again with the interface's own); plus the client straight
# to one server as a baseline. The dispatcher is pinned to core 0 and wrk to core
# 1. Each is driven with keep-alive and with a new connection per request;
# requests/s, p99 latency and vnamed's ratios to HAProxy are printed. Last,
# the connection map's memory for 1,000,000 connections. Needs root.
# With AGAINST=<git revision> that revision's dispatcher (built in a
# temporary worktree) runs too, in the same run and topology, and the
# ratios between the builds are printed.
#
#   [AGAINST=REV] bash scripts/bench/dispatch.sh [SECONDS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
[ "$(id -u)" -eq 0 ] || { echo "needs root for network namespaces" >&2; exit 2; }
bash scripts/setup.sh --bench
cargo build --release --quiet --bin vnamed --example connmap
vnamed=$PWD/target/release/vnamed

tag="vb$$"
work=$(mktemp -d)
builds=("vnamed=$vnamed=d" "vnamed-own-mac=$vnamed=own-mac")
if [ -n "${AGAINST:-}" ]; then
  tree=$(mktemp -d)/against
  git worktree add --quiet --detach "$tree" "$AGAINST"
  (cd "$tree" && CARGO_TARGET_DIR="${AGAINST_TARGET:-$tree/target}" cargo build --release --quiet --bin vnamed)
  builds+=("$AGAINST=${AGAINST_TARGET:-$tree/target}/release/vnamed=own-mac")
fi
net=10.88.0
source scripts/netns/lib.sh
netns_begin
if [ -n "${AGAINST:-}" ]; then
  trap 'netns_cleanup; git worktree remove --force "$tree" 2>/dev/null || true' EXIT
fi
netns_attach c "$net.50"
netns_attach a "$net.100"
netns_attach d "$net.10"
for i in 1 2 3; do netns_attach "s$i" "$net.2$i"; done
in_ns c ip addr add 10.89.0.50/24 dev vc
in_ns c ip route add 10.90.0.0/24 dev vc src 10.89.0.50
in_ns d sysctl -qw net.ipv4.ip_forward=0
in_ns d ip route add 10.89.0.0/24 dev vd
in_ns d ip addr add "$net.210/32" dev vd          # HAProxy's address
# HAProxy opens a connection to a server per client connection: give it
# the ports and TIME_WAIT reuse a proxy host would have.
in_ns d sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
for i in 1 2 3; do
  in_ns "s$i" ip addr add "$net.200/32" dev lo
  in_ns "s$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  in_ns "s$i" ip route add 10.89.0.0/24 via "$net.11"   # the dispatcher's gateway address
  mkdir -p "$work/s$i/www"
  echo "s$i" > "$work/s$i/www/index.html"
  cat > "$work/s$i/nginx.conf" <<EOT
user root;
worker_processes 1;
pid $work/s$i/nginx.pid;
error_log $work/s$i/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 80 backlog=4096; root $work/s$i/www; }
}
EOT
  in_ns "s$i" nginx -c "$work/s$i/nginx.conf" -g 'daemon off;' &
done

mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A %s\n' "$net.100" > "$work/zones/bench.test.zone"
cat > "$work/auth.toml" <<EOT
[authority]
dns_listen = ["$net.100:53"]
grpc_listen = "$net.100:7443"
zones_dir = "$work/zones"
token = "bench-token"          # off loopback the API needs a credential
[[pool]]
name = "www.bench.test."
policy = "round-robin"
answers = 3
stale_after = "3600s"
members = [ { id = "s1", address = "$net.21" }, { id = "s2", address = "$net.22" }, { id = "s3", address = "$net.23" } ]
EOT
in_ns a "$vnamed" authority --config "$work/auth.toml" 2>"$work/auth.log" &

cat > "$work/haproxy.cfg" <<EOT
global
  maxconn 8000
  nbthread 1
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend f
  bind $net.210:80
  default_backend b
backend b
  balance roundrobin
  server s1 $net.21:80
  server s2 $net.22:80
  server s3 $net.23:80
EOT
# vnamed as deployed for fail-over: the servers' gateway is an address the
# dispatcher holds, and both it and the virtual IPs are answered with a
# virtual MAC (d.toml); the same without the virtual MAC (own-mac.toml),
# which is also what a previous build (AGAINST) runs.
cat > "$work/own-mac.toml" <<EOT
[dispatch]
interface = "vd"
authority = "http://$net.100:7443"
token = "bench-token"
gateway = "$net.11"
[[dispatch.vip]]
address = "$net.200"
ports = [80]
mode = "l4-2"
pool = "www.bench.test."
[[dispatch.vip]]
address = "10.90.0.201"
ports = [80]
mode = "l4-3"
pool = "www.bench.test."
EOT
sed 's/^gateway = .*/&\nvirtual_mac = "02:76:6e:00:00:01"/' "$work/own-mac.toml" > "$work/d.toml"

# stop_ns NAME: ends every process in the namespace (not only the
# `ip netns exec` that started it), bounded.
stop_ns() {
  local pids
  pids=$(ip netns pids "$tag-$1")
  [ -n "$pids" ] && kill $pids 2>/dev/null
  for _ in $(seq 50); do [ -z "$(ip netns pids "$tag-$1")" ] && return 0; sleep 0.1; done
  kill -9 $(ip netns pids "$tag-$1") 2>/dev/null || true
}
ok() { in_ns c curl -s --max-time 1 "http://$1/" | grep -q '^s'; }
# run NAME URL: wrk keep-alive, then a new connection per request.
declare -A rps p99
run() {
  local name=$1 url=$2 out
  for kind in keepalive close; do
    local extra=()
    [ "$kind" = close ] && extra=(-H "Connection: close")
    out=$(in_ns c taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency "${extra[@]}" "$url" 2>&1)
    rps[$name/$kind]=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")
    p99[$name/$kind]=$(awk '$1 == "99%" {print $2}' <<<"$out")
  done
}

wait_for 10 ok "$net.21" || { echo "nginx did not start" >&2; exit 1; }
run direct "http://$net.21/"

in_ns d taskset -c 0 haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" &
wait_for 10 ok "$net.210" || { echo "haproxy did not start" >&2; cat "$work/haproxy.log" >&2; exit 1; }
run haproxy "http://$net.210/"
stop_ns d

names=(direct haproxy)
for b in "${builds[@]}"; do
  IFS== read -r name bin conf <<<"$b"
  in_ns d taskset -c 0 "$bin" dispatch --config "$work/$conf.toml" 2>"$work/d.log" &
  wait_for 15 ok "$net.200" || { echo "$name dispatch (L4/2) did not start" >&2; tail "$work/d.log" >&2; exit 1; }
  wait_for 10 ok "10.90.0.201" || { echo "$name dispatch (L4/3) did not answer" >&2; exit 1; }
  run "$name-l4-2" "http://$net.200/"
  run "$name-l4-3" "http://10.90.0.201/"
  names+=("$name-l4-2" "$name-l4-3")
  stop_ns d
  # The next build announces the addresses afresh; the client forgets the old MAC.
  in_ns c ip neigh flush dev vc
done

echo
printf '%-20s %14s %10s %14s %10s\n' "" "keep-alive r/s" "p99" "new-conn r/s" "p99"
for n in "${names[@]}"; do
  printf '%-20s %14s %10s %14s %10s\n' "$n" "${rps[$n/keepalive]:-0}" "${p99[$n/keepalive]:-n/a}" "${rps[$n/close]:-0}" "${p99[$n/close]:-n/a}"
done
ratio() { awk -v a="${rps[$1]:-0}" -v b="${rps[$2]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "vnamed L4/2 / HAProxy: keep-alive x$(ratio vnamed-l4-2/keepalive haproxy/keepalive), new connections x$(ratio vnamed-l4-2/close haproxy/close)   (target: keep-alive >= 1.3)"
echo "vnamed L4/3 / HAProxy: keep-alive x$(ratio vnamed-l4-3/keepalive haproxy/keepalive), new connections x$(ratio vnamed-l4-3/close haproxy/close)   (target: keep-alive >= 1.3)"
for m in l4-2 l4-3; do
  echo "vnamed without the virtual MAC ${m^^} / HAProxy: keep-alive x$(ratio "vnamed-own-mac-$m/keepalive" haproxy/keepalive), new connections x$(ratio "vnamed-own-mac-$m/close" haproxy/close)"
done
if [ -n "${AGAINST:-}" ]; then
  for m in l4-2 l4-3; do
    echo "$AGAINST ${m^^} / HAProxy: keep-alive x$(ratio "$AGAINST-$m/keepalive" haproxy/keepalive), new connections x$(ratio "$AGAINST-$m/close" haproxy/close)"
  done
  for m in l4-2 l4-3; do
    echo "vnamed / $AGAINST ${m^^}: keep-alive x$(ratio "vnamed-$m/keepalive" "$AGAINST-$m/keepalive"), new connections x$(ratio "vnamed-$m/close" "$AGAINST-$m/close")"
  done
fi
echo
"$PWD/target/release/examples/connmap" 1000000
