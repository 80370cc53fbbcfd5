# Network namespaces for the netns scripts and benchmarks; sourced, with
# `tag` (the prefix of every namespace made) and `work` (a scratch
# directory) set by the caller. Only addresses the caller gives, inside
# namespaces it makes; `netns_cleanup` (installed as the EXIT trap by
# `netns_begin`) kills every process in them and removes them.

in_ns() { local ns=$1; shift; ip netns exec "$tag-$ns" "$@"; }

netns_cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}

# A namespace "br" holding the bridge br0: a plain switch (bridged frames
# skip the host's IP filtering, which would drop, for one, bad checksums).
netns_begin() {
  trap netns_cleanup EXIT
  ip netns add "$tag-br"
  in_ns br ip link add br0 type bridge
  in_ns br ip link set br0 up
  in_ns br sh -c 'for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e "$f" ] && echo 0 > "$f"; done; true'
}

# netns_attach NAME ADDRESS: a host on br0 by a veth pair (vNAME inside,
# pNAME on the bridge). Its frames leave with their checksums filled in, as
# from a real NIC (veth would leave them to an offload that never happens).
netns_attach() {
  ip netns add "$tag-$1"
  ip link add "v$1" netns "$tag-$1" type veth peer name "p$1" netns "$tag-br"
  in_ns "$1" ip addr add "$2/24" dev "v$1"
  in_ns "$1" ip link set "v$1" up
  in_ns "$1" ip link set lo up
  in_ns br ip link set "p$1" master br0
  in_ns br ip link set "p$1" up
  in_ns "$1" ethtool -K "v$1" tx off >/dev/null
}

# wait_for SECONDS COMMAND...: until the command succeeds, at most that long.
wait_for() {
  local limit=$(( $(date +%s%3N) + $1 * 1000 )); shift
  while [ "$(date +%s%3N)" -lt "$limit" ]; do "$@" && return 0; sleep 0.05; done
  return 1
}
