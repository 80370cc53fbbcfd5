#!/usr/bin/env bash
# The ring across real network namespaces: five hosts (each a backend HTTP
# server and a `vnamed monitor` that is a ring member) and an authority, on
# a bridge in a namespace of its own, with addresses only in 10.77.0.0/24
# inside those namespaces. Then:
#   1. kill -9 one host's processes: `dig` stops returning it;
#   2. cut another host's link: the same; restore it: it rejoins;
#   3. partition the ring in two and heal it: exactly one dispatcher after.
# Every wait is bounded; every namespace and process goes away at the end,
# also on failure. Needs root. Exit 0 only when every check passed.
#
#   bash scripts/netns/ring.sh [path/to/vnamed]
set -euo pipefail
cd "$(dirname "$0")/../.."
vnamed=${1:-$PWD/target/debug/vnamed}
[ -x "$vnamed" ] || { echo "build vnamed first (cargo build)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root for network namespaces" >&2; exit 2; }
command -v ethtool >/dev/null || { echo "needs ethtool" >&2; exit 2; }

tag="vn$$"
work=$(mktemp -d)
net=10.77.0
auth_ip=$net.100
n=5
fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/h*.log "$work"/auth.log; do [ -e "$f" ] && { echo "--- $(basename "$f")"; tail -n 30 "$f"; }; done >&2
  exit 1
}

source scripts/netns/lib.sh
netns_begin
in_ns br ip link add br1 type bridge      # the other side of a partition
in_ns br ip link set br1 up
netns_attach a "$auth_ip"
for i in $(seq $n); do netns_attach "h$i" "$net.$i"; done

mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A %s\n' "$auth_ip" > "$work/zones/ring.test.zone"
members=""
for i in $(seq $n); do members+="{ id = \"h$i\", address = \"$net.$i\" }, "; done
cat > "$work/auth.toml" <<EOT
[authority]
dns_listen = ["$auth_ip:53"]
grpc_listen = "$auth_ip:7443"
zones_dir = "$work/zones"
# The ring members report and keep the ring; none may administer.
[[authority.credential]]
token = "netns-ring-token-0000001"
scopes = ["report", "ring"]

[[pool]]
name = "www.ring.test."
policy = "round-robin"
answers = $n
stale_after = "60s"
members = [ ${members%, } ]
EOT
in_ns a "$vnamed" authority --config "$work/auth.toml" 2>"$work/auth.log" &

peers=""
for i in $(seq $n); do peers+="\"$net.$i:7946\", "; done
for i in $(seq $n); do
  capable=false
  [ "$i" -ge 2 ] && capable=true   # h1 cannot dispatch: the next one is elected
  cat > "$work/h$i.toml" <<EOT
[monitor]
host = "h$i"
metrics_listen = "$net.$i:9400"
report_to = ["http://$auth_ip:7443"]
token = "netns-ring-token-0000001"
[[monitor.check]]
pool = "www.ring.test."
kind = "tcp"
target = "$net.$i:8080"
interval = "1s"
[ring]
listen = "$net.$i:7946"
ping_interval = "100ms"
misses = 3
token_timeout = "400ms"
broadcast_timeout = "300ms"
dispatch_capable = $capable
peers = [ ${peers%, } ]
key = "netns-ring"
EOT
  in_ns "h$i" python3 -m http.server --bind "$net.$i" 8080 >/dev/null 2>&1 &
  in_ns "h$i" "$vnamed" monitor --config "$work/h$i.toml" 2>"$work/h$i.log" &
done

answer() { in_ns a dig +short +time=1 +tries=1 @"$auth_ip" www.ring.test A 2>/dev/null | sort | tr '\n' ' '; }
table() { in_ns a "$vnamed" ring table --server "http://$auth_ip:7443" --token netns-ring-token-0000001 2>/dev/null || true; }
has() { answer | grep -qw "$1"; }
lacks() { ! answer | grep -qw "$1"; }
members_are() { table | grep -q "ring ($1 members)"; }
metric() { in_ns "h$1" curl -s --max-time 1 "http://$net.$1:9400/metrics" 2>/dev/null | grep -qx "$2"; }
dispatching() { # the hosts that act as the dispatcher now (their own gauge)
  for i in "$@"; do metric "$i" "vnamed_ring_dispatcher 1" && echo "h$i"; done | tr '\n' ' '
}

all_in() { for i in $(seq $n); do has "$net.$i" || return 1; done; }
wait_for 15 members_are 5 || fail "the ring did not form: $(table)"
wait_for 10 all_in || fail "not every host in the answers: $(answer)"
# The authority's table names the dispatcher the ring elected (h1 cannot be one).
names_h2() { table | grep -qx "dispatcher $net.2:7946"; }
wait_for 5 names_h2 || fail "the authority's ring table does not name h2 the dispatcher: $(table)"
echo "ring of 5 formed; dispatcher h2 in the authority's table; answers: $(answer)"

# 1. kill -9 of h3's processes.
for p in $(ip netns pids "$tag-h3"); do kill -9 "$p"; done
start=$(date +%s%3N)
wait_for 5 lacks "$net.3" || fail "h3 still answered after kill -9"
echo "kill -9 h3: out of the answers after $(( $(date +%s%3N) - start )) ms"

# 2. cut h4's link for well past the detection time (its process runs on
# and misses its expulsion), then restore it: it notices and comes back by
# itself, into the ring and the answers.
in_ns br ip link set ph4 down
start=$(date +%s%3N)
wait_for 5 lacks "$net.4" || fail "h4 still answered with its link cut"
echo "link of h4 cut: out of the answers after $(( $(date +%s%3N) - start )) ms"
sleep 2
in_ns br ip link set ph4 up
start=$(date +%s%3N)
wait_for 5 has "$net.4" || fail "h4 did not come back within 5 s: $(answer) / $(table)"
wait_for 5 members_are 4 || fail "h4 is not back in the ring table: $(table)"
echo "link of h4 restored after 2 s more: back in the answers and the ring after $(( $(date +%s%3N) - start )) ms"

# 3. partition {h1, h2} | {h4, h5} (h3 is dead), then heal.
cut_off_elected() { [ "$(dispatching 4 5)" = "h4 " ]; }
for i in 4 5; do in_ns br ip link set "ph$i" master br1; done
wait_for 10 cut_off_elected || fail "the cut-off side should elect its own dispatcher, got: $(dispatching 4 5)"
echo "partitioned: {h1,h2} and {h4,h5} each elected a dispatcher"
for i in 4 5; do in_ns br ip link set "ph$i" master br0; done
start=$(date +%s%3N)
# One ring of four with one dispatcher, and so for 3 s in a row. Right after
# the heal the views may still move for a second or two (ARP on the healed
# links resolves at its own pace, and a member whose pings wait for it may
# count a buddy out once); what must hold is that they settle as one.
one_ring() { for i in 1 2 4 5; do metric "$i" "vnamed_ring_members 4" || return 1; done; [ "$(dispatching 1 2 4 5)" = "h2 " ]; }
settled() {
  local until=$(( $(date +%s%3N) + 3000 ))
  while [ "$(date +%s%3N)" -lt "$until" ]; do one_ring || return 1; sleep 0.1; done
}
wait_for 20 settled || fail "no single, steady ring 20 s after the partition healed; dispatching: $(dispatching 1 2 4 5)"
# And the authority counts every live host in: a death reported late from
# the cut-off side is undone by the members' periodic announcements.
live_in() { for i in 1 2 4 5; do has "$net.$i" || return 1; done; }
wait_for 10 live_in || fail "after the heal every live host should be in the answers: $(answer) / $(table)"
wait_for 5 names_h2 || fail "after the heal the authority's table should name h2 the dispatcher: $(table)"
echo "partition healed: one ring, one dispatcher ($(dispatching 1 2 4 5)), steady for 3 s from $(( $(date +%s%3N) - start - 3000 )) ms after the heal"
echo "netns ring: all checks passed"
