#!/usr/bin/env bash
# The dispatcher across real network namespaces: a client, an authority,
# a dispatcher and three HTTP servers (each with its monitor), on a bridge
# in a namespace of its own, with addresses only in 10.78.0.0/24 (hosts),
# 10.79.0.0/24 (the client's second address) and 10.80.0.0/24 (the L4/3
# virtual IP) inside those namespaces. Then, with curl from the client:
#   1. L4/2 (VIP 10.78.0.200, held by the servers on loopback) and L4/3
#      (VIP 10.80.0.201, the dispatcher as the servers' gateway) reach the
#      server the pool's policy prefers; round-robin spreads connections;
#   2. a killed server gets no new connections;
#   3. L7 (VIP 10.78.0.202): /images/ goes to the image pool (s3), the
#      rest to the web pool, through connections the dispatcher relays;
#   4. UDP and fragmented frames to a virtual IP are dropped and counted;
#      a flood of 20,000 SYNs from spoofed sources keeps the connection map
#      within its cap (half-open entries evicted, counted) and a real
#      client is still served;
#   5. two dispatchers are ring members with the servers' monitors: a long
#      download through each virtual IP survives kill -9 of the active
#      dispatcher, as the standby takes the addresses over and rebuilds its
#      connection map from the servers' connections.
# With VMAC=<mac> the dispatchers answer for the virtual IPs with that
# shared virtual MAC, and the client is checked to keep it across the
# take-over.
# Every wait is bounded; every namespace and process goes away at the end,
# also on failure. Needs root. Exit 0 only when every check passed.
#
#   bash scripts/netns/dispatch.sh [path/to/vnamed]
set -euo pipefail
cd "$(dirname "$0")/../.."
vnamed=${1:-$PWD/target/debug/vnamed}
token=netns-dispatch-token-0001
admin_token=netns-dispatch-admin-0001
[ -x "$vnamed" ] || { echo "build vnamed first (cargo build)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root for network namespaces" >&2; exit 2; }
for t in curl ethtool; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done

tag="vd$$"
work=$(mktemp -d)
net=10.78.0
vip2=$net.200
vip3=10.80.0.201
vip7=$net.202
auth_ip=$net.100
disp_ip=$net.10
disp2_ip=$net.11
gateway=$net.9
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; [ -n "${HOLD:-}" ] && sleep "$HOLD"; exit 1; }

source scripts/netns/lib.sh
netns_begin
netns_attach c "$net.50"
netns_attach a "$auth_ip"
netns_attach d "$disp_ip"
netns_attach e "$disp2_ip"
for i in 1 2 3; do netns_attach "s$i" "$net.2$i"; done

# The client: a second address, and the L4/3 virtual IP's network on the link.
in_ns c ip addr add 10.79.0.50/24 dev vc
in_ns c ip route add 10.80.0.0/24 dev vc src 10.79.0.50
# A small receive window: a rate-limited download is really in flight
# (not already sitting in the client's buffers) when the dispatcher dies.
in_ns c sysctl -qw net.ipv4.tcp_rmem="4096 16384 65536"
# The dispatchers forward nothing themselves: only what vnamed sends goes out.
for d in d e; do
  in_ns $d sysctl -qw net.ipv4.ip_forward=0
  in_ns $d ip route add 10.79.0.0/24 dev "v$d"
done
ring_peers="\"$disp_ip:7946\", \"$disp2_ip:7946\", \"$net.21:7946\", \"$net.22:7946\", \"$net.23:7946\""
ring() { # $1 address
  printf '[ring]\nlisten = "%s:7946"\nping_interval = "100ms"\nmisses = 3\ntoken_timeout = "400ms"\nbroadcast_timeout = "300ms"\npeers = [ %s ]\nkey = "netns-dispatch"\n' "$1" "$ring_peers"
}
for i in 1 2 3; do
  # L4/2: the virtual IP on loopback, never answered for by ARP.
  in_ns "s$i" ip addr add "$vip2/32" dev lo
  in_ns "s$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  # L4/3: replies to the client's second network go through the active
  # dispatcher, by the gateway address it holds.
  in_ns "s$i" ip route add 10.79.0.0/24 via "$gateway"
  mkdir -p "$work/www$i"
  echo "s$i" > "$work/www$i/index.html"
  mkdir -p "$work/www$i/images"
  echo "img-s$i" > "$work/www$i/images/index.html"
  head -c 2000000 /dev/zero > "$work/www$i/big"
  in_ns "s$i" python3 -m http.server --directory "$work/www$i" --bind 0.0.0.0 80 >/dev/null 2>&1 &
  cat > "$work/s$i.toml" <<EOT
[monitor]
host = "s$i"
report_to = ["http://$auth_ip:7443"]
token = "$token"
refresh = "500ms"
listen = "$net.2$i:7450"
# The dispatchers ask this listener for connections, in the clear.
insecure = true
[[monitor.check]]
pool = "www.dispatch.test."
kind = "tcp"
target = "$net.2$i:80"
interval = "200ms"
$(ring "$net.2$i")
EOT
  in_ns "s$i" "$vnamed" monitor --config "$work/s$i.toml" 2>"$work/s$i.log" &
done

mkdir -p "$work/zones"
printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A %s\n' "$auth_ip" > "$work/zones/dispatch.test.zone"
cat > "$work/auth.toml" <<EOT
[authority]
dns_listen = ["$auth_ip:53"]
grpc_listen = "$auth_ip:7443"
zones_dir = "$work/zones"
# Monitors and dispatchers report and keep the ring; none may administer.
[[authority.credential]]
token = "$token"
scopes = ["report", "ring"]
# The operator's.
[[authority.credential]]
token = "$admin_token"
scopes = ["admin"]

[[pool]]
name = "www.dispatch.test."
policy = "priority"
answers = 3
stale_after = "3s"
members = [ { id = "s1", address = "$net.21" }, { id = "s2", address = "$net.22" }, { id = "s3", address = "$net.23" } ]

[[pool]]
name = "img.dispatch.test."
stale_after = "3s"
members = [ { id = "s3", address = "$net.23" } ]
EOT
in_ns a "$vnamed" authority --config "$work/auth.toml" 2>"$work/auth.log" &

# With VMAC set, the dispatchers answer for the virtual IPs with that MAC.
vmac_line=""
[ -n "${VMAC:-}" ] && vmac_line="virtual_mac = \"$VMAC\""
dispatcher() { # $1 namespace, $2 address
cat > "$work/$1.toml" <<EOT
[dispatch]
interface = "v$1"
authority = "http://$auth_ip:7443"
token = "$token"
metrics_listen = "$2:9400"
monitor_port = 7450
gateway = "$gateway"
threads = 3
max_connections = 3000
$vmac_line
[[dispatch.vip]]
address = "$vip2"
ports = [80]
mode = "l4-2"
pool = "www.dispatch.test."
[[dispatch.vip]]
address = "$vip3"
ports = [80]
mode = "l4-3"
pool = "www.dispatch.test."
[[dispatch.vip]]
address = "$vip7"
ports = [80]
mode = "l7"
pool = "www.dispatch.test."
route = [ { prefix = "/images/", pool = "img.dispatch.test." } ]
$(ring "$2")
EOT
in_ns "$1" env RUST_LOG="${DISPATCH_LOG:-info}" "$vnamed" dispatch --config "$work/$1.toml" 2>"$work/$1.log" &
}
dispatcher d "$disp_ip"
dispatcher e "$disp2_ip"

get() { in_ns c curl -s --max-time 2 "http://$1/" 2>/dev/null || true; }
is() { [ "$(get "$1")" = "$2" ]; }
metric() { in_ns c curl -s --max-time 2 "http://$disp_ip:9400/metrics" | awk -v k="$1" '$1 == k {print $2}'; }

wait_for 15 is "$vip2" s1 || fail "L4/2: no answer from s1 through $vip2 (got '$(get "$vip2")')"
for _ in 1 2 3 4 5; do is "$vip2" s1 || fail "L4/2: priority policy, expected s1"; done
echo "L4/2: $vip2 reaches s1, the policy's first"
wait_for 10 is "$vip3" s1 || fail "L4/3: no answer from s1 through $vip3 (got '$(get "$vip3")')"
for _ in 1 2 3 4 5; do is "$vip3" s1 || fail "L4/3: priority policy, expected s1"; done
echo "L4/3: $vip3 reaches s1, the policy's first"
wait_for 10 is "$vip7" s1 || fail "L7: no answer from s1 through $vip7 (got '$(get "$vip7")')"
for _ in 1 2 3; do is "$vip7" s1 || fail "L7: priority policy, expected s1"; done
echo "L7: $vip7 reaches s1, the policy's first"
size=$(in_ns c curl -s --max-time 10 "http://$vip3/big" | wc -c)
[ "$size" -eq 2000000 ] || fail "L4/3: a 2 MB download came back with $size bytes"
size=$(in_ns c curl -s --max-time 10 "http://$vip2/big" | wc -c)
[ "$size" -eq 2000000 ] || fail "L4/2: a 2 MB download came back with $size bytes"
echo "2 MB downloads through both virtual IPs: complete"

in_ns a "$vnamed" policy www.dispatch.test. round-robin --server "http://$auth_ip:7443" --token "$admin_token" >/dev/null
spread() { local seen; seen=$(for _ in 1 2 3 4 5 6; do get "$1"; echo; done | sort -u | grep -c '^s'); [ "$seen" -eq 3 ]; }
wait_for 5 spread "$vip2" || fail "L4/2: round-robin did not spread connections over the three servers"
wait_for 5 spread "$vip3" || fail "L4/3: round-robin did not spread connections over the three servers"
echo "round-robin: new connections spread over s1, s2, s3 on both virtual IPs"
# Three capture threads share the connections (a fanout group steered by
# the connection's ports): more than one of them has switched packets.
[ "$(metric vnamed_dispatch_threads)" = 3 ] || fail "expected 3 capture threads, metrics say '$(metric vnamed_dispatch_threads)'"
busy=$(for t in 0 1 2; do metric "vnamed_dispatch_switched_total{thread=\"$t\"}"; done | awk '$1 > 0' | wc -l)
[ "$busy" -ge 2 ] || fail "connections all went through one capture thread of 3 ($busy busy)"
echo "fanout: connections spread over $busy of 3 capture threads"

# L7: the request line picks the server class.
get_path() { in_ns c curl -s --max-time 2 "http://$vip7$1" 2>/dev/null || true; }
images_to_s3() { for _ in 1 2 3 4; do [ "$(get_path /images/)" = img-s3 ] || return 1; done; }
wait_for 5 images_to_s3 || fail "L7: /images/ should always reach s3 (got '$(get_path /images/)')"
spread7() { local seen; seen=$(for _ in 1 2 3 4 5 6; do get_path /; echo; done | sort -u | grep -c '^s'); [ "$seen" -eq 3 ]; }
wait_for 5 spread7 || fail "L7: / should spread over the web pool"
size=$(in_ns c curl -s --max-time 10 "http://$vip7/big" | wc -c)
[ "$size" -eq 2000000 ] || fail "L7: a 2 MB download came back with $size bytes"
echo "L7: /images/ reaches the image pool (s3), / spreads over the web pool, 2 MB downloads complete"

# A killed server gets no new connections.
pkill -9 -f "directory $work/www1" || true
never_s1() { for _ in 1 2 3 4 5 6; do r=$(get "$1"); [ "$r" = s2 ] || [ "$r" = s3 ] || return 1; done; }
wait_for 5 never_s1 "$vip2" || fail "L4/2: connections still went to the killed s1"
never_s1 "$vip3" || fail "L4/3: connections still went to the killed s1"
never_s1 "$vip7" || fail "L7: connections still went to the killed s1"
echo "kill -9 of s1's server: new connections go to s2 and s3 only (L4/2, L4/3, L7)"

# Frames to a virtual IP that are not TCP, or are fragments: dropped, counted.
in_ns c python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3): s.sendto(b'x', ('$vip2', 80))
# Too big for the link, and allowed to fragment: the kernel sends fragments.
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.sendto(b'y' * 3000, ('$vip2', 80))
"
# Malformed frames, sent raw to the dispatcher's MAC: a bad IP checksum and
# a TCP header cut short.
dmac=$(in_ns c ip neigh show "$vip2" | awk '{print $5}')
# What every raw frame from the client needs: a packet socket on its link,
# the Ethernet header to the dispatcher's MAC, the Internet checksum.
raw_frames="
import socket, struct, random
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('vc', 0))
dst = bytes.fromhex('$dmac'.replace(':', ''))
src = open('/sys/class/net/vc/address').read().strip().replace(':', '')
eth = dst + bytes.fromhex(src) + b'\x08\x00'
def csum(b):
    if len(b) % 2: b += b'\0'
    c = sum(struct.unpack('!%dH' % (len(b) // 2), b)); c = (c & 0xffff) + (c >> 16); return ~((c & 0xffff) + (c >> 16)) & 0xffff
"
in_ns c python3 -c "$raw_frames
def ip(total, proto, csum_ok=True):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, total, 1, 0, 64, proto, 0, socket.inet_aton('$net.50'), socket.inet_aton('$vip2'))
    c = csum(h)
    if not csum_ok: c ^= 0x1234
    return h[:10] + struct.pack('!H', c) + h[12:]
tcp = struct.pack('!HHIIBBHHH', 40000, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
s.send(eth + ip(40, 6, csum_ok=False) + tcp)
s.send(eth + ip(30, 6) + tcp[:10])
"
counted() {
  [ "$(metric "vnamed_dispatch_dropped_total{reason=\"not_tcp\"}")" -ge 3 ] &&
  [ "$(metric "vnamed_dispatch_dropped_total{reason=\"fragment\"}")" -ge 1 ] &&
  [ "$(metric "vnamed_dispatch_dropped_total{reason=\"bad_checksum\"}")" -ge 1 ] &&
  [ "$(metric "vnamed_dispatch_dropped_total{reason=\"malformed\"}")" -ge 1 ]
}
wait_for 3 counted || fail "drops not counted: $(in_ns c curl -s "http://$disp_ip:9400/metrics" | grep dropped)"
echo "UDP, fragmented and malformed frames to $vip2: dropped and counted"
# A SYN flood from 20,000 spoofed sources, sent raw as fast as it goes: the
# map holds at most max_connections (3000), evicting half-open entries.
in_ns c python3 -c "$raw_frames
vip = socket.inet_aton('$vip2')
for i in range(20000):
    ip_src = socket.inet_aton('10.99.%d.%d' % (i >> 8 & 255, i & 255))
    tcp = struct.pack('!HHIIBBHHH', 1024 + i % 60000, 80, random.getrandbits(32), 0, 0x50, 0x02, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack('!H', csum(ip_src + vip + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, ip_src, vip)
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    s.send(eth + h + tcp)
"
flooded() { [ "$(metric vnamed_dispatch_evicted_total)" -ge 15000 ]; }
wait_for 5 flooded || fail "SYN flood: evicted $(metric vnamed_dispatch_evicted_total), want 15000 or more"
held=$(metric vnamed_dispatch_connections)
[ "$held" -le 3000 ] || fail "SYN flood: $held connections in the map, over max_connections"
served() { r=$(get "$vip2"); [ "$r" = s2 ] || [ "$r" = s3 ]; }
wait_for 5 served || fail "SYN flood: a real client is not served through $vip2"
echo "SYN flood: 20000 spoofed SYNs, $(metric vnamed_dispatch_evicted_total) half-open entries evicted, $held held (cap 3000), a real client served"
if [ -n "${VMAC:-}" ]; then
  [ "$dmac" = "$VMAC" ] || fail "$vip2 should be answered with the virtual MAC $VMAC, the client has $dmac"
  echo "virtual MAC: the client reaches $vip2 at $VMAC"
fi

# Fail-over: long downloads through both virtual IPs; kill -9 the active
# dispatcher (d, the smaller address) in the middle.
grep -q "holding the virtual IPs" "$work/d.log" || fail "d should be the elected dispatcher"
grep -q "holding the virtual IPs" "$work/e.log" && fail "e should be standing by"
in_ns c curl -s --max-time 30 --limit-rate 400k -o "$work/dl2" "http://$vip2/big" & dl2=$!
in_ns c curl -s --max-time 30 --limit-rate 400k -o "$work/dl3" "http://$vip3/big" & dl3=$!
sleep 1.5
for p in $(ip netns pids "$tag-d"); do kill -9 "$p"; done
start=$(date +%s%3N)
wait_for 5 grep -q "holding the virtual IPs" "$work/e.log" || fail "the standby did not take over"
echo "kill -9 of the active dispatcher: the standby holds the virtual IPs after $(( $(date +%s%3N) - start )) ms"
wait "$dl2" || fail "L4/2: the download through $vip2 failed across the fail-over (curl $?)"
wait "$dl3" || fail "L4/3: the download through $vip3 failed across the fail-over (curl $?)"
for f in dl2 dl3; do
  size=$(wc -c < "$work/$f")
  [ "$size" -eq 2000000 ] || fail "$f: $size bytes of 2000000 across the fail-over"
done
rebuilt=$(grep "connection map rebuilt" "$work/e.log" | tail -1)
echo "new dispatcher: ${rebuilt#*driver: }"
restored=$(sed -n 's/.*restored=\([0-9]*\).*/\1/p' <<<"$rebuilt")
[ "${restored:-0}" -ge 2 ] || fail "the new dispatcher should have rebuilt both connections from the servers: $rebuilt"
echo "L4/2 and L4/3: 2 MB downloads survived kill -9 of the active dispatcher"
wait_for 5 images_to_s3 || fail "L7: the new dispatcher does not serve new connections"
echo "L7: new connections served by the new dispatcher"
if [ -n "${VMAC:-}" ]; then
  now=$(in_ns c ip neigh show "$vip2" | awk '{print $5}')
  [ "$now" = "$VMAC" ] || fail "after the take-over the client should still reach $vip2 at $VMAC, not $now"
  echo "virtual MAC: unchanged across the take-over"
fi
echo "netns dispatch: all checks passed"
