#!/usr/bin/env bash
# A bounded soak on loopback of everything "Nothing lost" promises, as root
# (it mounts a small tmpfs): while three backends flap and an operator
# edits the zone and configuration files (valid, invalid, truncated,
# renamed into place) and changes weights through the API, it kill -9s and
# restarts the authority, SIGSTOPs and resumes ring monitors, and fills and
# frees the tmpfs holding zones_dir and the state store. A poller records
# every serial and answer. At the end it checks the invariants and prints
# the counts; it exits 1 on any violation.
#
#   scripts/chaos.sh [MINUTES]     (default 10; the test suite runs 1)
#
# Every process it starts is stopped, and the tmpfs unmounted, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
[ "$(id -u)" -eq 0 ] || { echo "chaos.sh: needs root (it mounts a tmpfs)" >&2; exit 2; }
cargo build --quiet --bin vnamed
bin=$PWD/target/debug/vnamed
work=$(mktemp -d /tmp/vnamed-chaos.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
mount -t tmpfs -o size=8m tmpfs "$mnt"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  umount -l "$mnt" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

base=127.0.$((90 + RANDOM % 60))
auth=$base.1
zones=$mnt/zones
mkdir -p "$zones"
now_ms() { date +%s%3N; }
cat > "$zones/chaos.test.zone" <<EOF
\$TTL 60
@   IN SOA ns1 hostmaster ( 100 3600 600 86400 30 )
    IN NS  ns1
ns1 IN A   $auth
EOF
pool() {
  cat <<EOF
[[pool]]
name = "www.chaos.test."
policy = "round-robin"
answers = 3
ttl = $1
stale_after = "2s"
fallback = "servfail"
members = [ { id = "web1", address = "$base.11" }, { id = "web2", address = "$base.12" }, { id = "web3", address = "$base.13" } ]
EOF
}
authority_section="[authority]
dns_listen = [\"$auth:5300\"]
grpc_listen = \"$auth:7400\"
metrics_listen = \"$auth:9300\"
zones_dir = \"$zones\"
zone_write_interval = \"100ms\""
write_config() { printf '%s\n\n%s\n' "$authority_section" "$(pool "$1")" > "$work/vnamed.toml"; }
write_config 1

cli() { "$bin" "$@" --server "http://$auth:7400"; }
start_authority() {
  "$bin" authority --config "$work/vnamed.toml" >>"$work/authority.log" 2>&1 &
  echo $! > "$work/authority.pid"
  for _ in $(seq 100); do
    dig +time=1 +tries=1 @"$auth" -p 5300 chaos.test SOA +short 2>/dev/null | grep -q hostmaster && return 0
    sleep 0.05
  done
  echo "the authority did not come back; its log:" >&2; tail -20 "$work/authority.log" >&2; return 1
}

# Backends: a TCP listener each, stopped and started to flap the member.
backend_up() {
  python3 -c "import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('$base.1$1', 8080)); s.listen(64)
while True:
    c,_=s.accept(); c.close()" &
  echo $! > "$work/backend$1.pid"
  disown
  rm -f "$work/down$1"
}
backend_down() {
  kill -9 "$(cat "$work/backend$1.pid")" 2>/dev/null || true
  # Whole or not at all: the poller reads it meanwhile.
  now_ms > "$work/down$1.tmp" && mv "$work/down$1.tmp" "$work/down$1"
}
monitor() {
  cat > "$work/m$1.toml" <<EOF
[monitor]
host = "web$1"
report_to = ["http://$auth:7400"]
refresh = "200ms"
[[monitor.check]]
pool = "www.chaos.test."
kind = "tcp"
target = "$base.1$1:8080"
interval = "100ms"
[ring]
listen = "$base.1$1:7946"
ping_interval = "100ms"
misses = 3
token_timeout = "400ms"
broadcast_timeout = "300ms"
peers = ["$base.11:7946", "$base.12:7946", "$base.13:7946"]
EOF
  "$bin" monitor --config "$work/m$1.toml" >>"$work/m$1.log" 2>&1 &
  echo $! > "$work/monitor$1.pid"
}

start_authority
for i in 1 2 3; do backend_up "$i"; monitor "$i"; done

# The poller: every serial and answer, and answers holding a member whose
# backend has been down longer than detection (check, report, ring) + TTL.
bound_ms=4000
(
  while true; do
    out=$(dig +time=1 +tries=1 @"$auth" -p 5300 www.chaos.test A +noall +answer 2>/dev/null || true)
    soa=$(dig +time=1 +tries=1 @"$auth" -p 5300 chaos.test SOA +short 2>/dev/null | awk '{print $3}' || true)
    t=$(now_ms)
    case $soa in '' | *[!0-9]*) ;; *) echo "$t serial $soa" ;; esac
    for a in $(echo "$out" | awk '$4 == "A" {print $5}'); do
      n=${a##*.1}
      since=$(cat "$work/down$n" 2>/dev/null || true)
      case $since in '' | *[!0-9]*) continue ;; esac
      if [ $((t - since)) -gt $bound_ms ]; then
        echo "$t stale $a"
      fi
    done
    sleep 0.1
  done
) > "$work/poll.log" 2>/dev/null &
echo $! > "$work/poller.pid"

kills=0 pauses=0 fulls=0 edits=0 acked=0 refused=0 rejoin_late=0
expected_weight=1
end=$(( $(date +%s) + minutes * 60 ))
round=0
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  # Flap a backend.
  n=$((1 + RANDOM % 3))
  if [ -f "$work/down$n" ]; then backend_up "$n"; else backend_down "$n"; fi
  case $((RANDOM % 6)) in
    0) # kill -9 and restart the authority
      kill -9 "$(cat "$work/authority.pid")"; wait "$(cat "$work/authority.pid")" 2>/dev/null || true
      kills=$((kills + 1)); start_authority ;;
    1) # freeze a ring monitor past its detection time, then resume it
      m=$((1 + RANDOM % 3)); p=$(cat "$work/monitor$m.pid")
      kill -STOP "$p"; sleep 1.2; kill -CONT "$p"; pauses=$((pauses + 1))
      back=0
      for _ in $(seq 60); do
        if ! cli ring table 2>/dev/null | grep -q dead && cli ring table 2>/dev/null | grep -q "ring (3 members)"; then back=1; break; fi
        sleep 0.05
      done
      [ $back -eq 1 ] || { rejoin_late=$((rejoin_late + 1)); echo "ring member $m not back within 3 s" >&2; } ;;
    2) # the disk fills up for a while
      dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null || true
      fulls=$((fulls + 1))
      w=$((2 + RANDOM % 20))
      if cli member www.chaos.test. web1 --weight "$w" >/dev/null 2>&1; then acked=$((acked + 1)); expected_weight=$w; else refused=$((refused + 1)); fi
      sleep 1; rm -f "$mnt/filler" ;;
    3) # an operator edits the configuration: valid, garbage, truncated, renamed into place
      edits=$((edits + 1))
      case $((RANDOM % 4)) in
        0) write_config $((1 + RANDOM % 2)) ;;
        1) echo "[[pool]] this is not toml" > "$work/vnamed.toml"; sleep 0.3; write_config 1 ;;
        2) : > "$work/vnamed.toml"; sleep 0.3; write_config 1 ;;
        3) printf '%s\n\n%s\n' "$authority_section" "$(pool 2)" > "$work/vnamed.toml.new"; mv "$work/vnamed.toml.new" "$work/vnamed.toml" ;;
      esac ;;
    4) # an operator edits the zone file: a record added, garbage, truncated, renamed into place
      edits=$((edits + 1))
      z=$zones/chaos.test.zone
      case $((RANDOM % 4)) in
        0) { cat "$z"; echo "note$round IN TXT \"operator edit $round\""; } > "$z.tmp" 2>/dev/null && cat "$z.tmp" > "$z" ;;
        1) cp "$z" "$work/zone.keep" 2>/dev/null; echo "this is not a zone" >> "$z"; sleep 0.3; cp "$work/zone.keep" "$z" 2>/dev/null ;;
        2) cp "$z" "$work/zone.keep" 2>/dev/null; : > "$z"; sleep 0.3; cp "$work/zone.keep" "$z" 2>/dev/null ;;
        3) { cat "$z"; echo "moved$round IN TXT \"renamed into place\""; } > "$z.tmp" 2>/dev/null && mv "$z.tmp" "$z" ;;
      esac
      rm -f "$z.tmp" ;;
    5) # an API change, acknowledged or refused
      w=$((2 + RANDOM % 20))
      if cli member www.chaos.test. web1 --weight "$w" >/dev/null 2>&1; then acked=$((acked + 1)); expected_weight=$w; else refused=$((refused + 1)); fi ;;
  esac
  sleep 0.$((2 + RANDOM % 6))
done

# Settle: every backend up, one last kill -9 and restart, then check.
for i in 1 2 3; do [ -f "$work/down$i" ] && backend_up "$i"; done
write_config 1
sleep 1
kill -9 "$(cat "$work/authority.pid")"; wait "$(cat "$work/authority.pid")" 2>/dev/null || true
kills=$((kills + 1)); start_authority
sleep 1.5
kill "$(cat "$work/poller.pid")" || { echo "chaos: the poller stopped early; the answers were not all watched" >&2; exit 1; }
sleep 0.2

violations=0
backwards=$(awk '$2 == "serial" { s = $3 + 0; if (max != "" && s < max) n++; if (max == "" || s > max) max = s } END { print n + 0 }' "$work/poll.log")
stale=$(grep -c " stale " "$work/poll.log" || true)
cli --help >/dev/null 2>&1 || true
checkzone=0
for f in "$zones"/*.zone; do named-checkzone chaos.test "$f" >/dev/null 2>&1 || { checkzone=$((checkzone + 1)); named-checkzone chaos.test "$f" >&2 || true; }; done
lost=0
status=$(cli status)
if [ "$expected_weight" -ne 1 ]; then
  echo "$status" | grep -q "\[api\] member web1 weight $expected_weight" || lost=1
else
  echo "$status" | grep -Eq "web1 .*weight=1 " || lost=1
fi
[ "$lost" -eq 0 ] || { echo "acknowledged weight $expected_weight missing:" >&2; echo "$status" >&2; }
violations=$((backwards + stale + checkzone + lost + rejoin_late))
# Logs of the last run stay for a look.
rm -rf /tmp/vnamed-chaos-last && mkdir -p /tmp/vnamed-chaos-last && cp "$work"/*.log /tmp/vnamed-chaos-last/
serials=$(grep -c " serial " "$work/poll.log" || true)
echo "chaos: ${minutes} min, $round rounds: $kills kill -9, $pauses monitor pauses, $fulls disk-full episodes, $edits file edits, $acked API changes acknowledged ($refused refused), $serials serials polled"
echo "violations: $backwards serial decreases, $checkzone zone files failing named-checkzone, $lost acknowledged changes lost, $stale answers with a member down > ${bound_ms} ms, $rejoin_late ring members not back within 3 s: $violations in all"
[ "$violations" -eq 0 ]
