#!/usr/bin/env bash
# The Debian package, checked by the tools that consume it: dpkg installs
# it; the vnamed user, /var/lib/vnamed and the configuration's ownership are
# as the units expect; `systemd-analyze verify` accepts the units (their
# commands and man pages exist); `man vnamed-authority` works; the authority
# starts as its unit starts it (the unit's ExecStart, as user vnamed with
# only CAP_NET_BIND_SERVICE, NOTIFY_SOCKET set) on port 53 and `dig` gets
# the pool's answer; SIGHUP (ExecReload) keeps it serving; `dpkg -r` then
# `dpkg -P` remove it, and everything it made, cleanly. Needs root. Every
# wait is bounded; the authority and the package go away on exit.
#
#   bash scripts/package-test.sh target/debian/vnamed_*.deb
set -euo pipefail
deb=${1:?usage: package-test.sh PACKAGE.deb}
[ "$(id -u)" -eq 0 ] || { echo "needs root (dpkg -i)" >&2; exit 2; }
if dpkg -s vnamed >/dev/null 2>&1; then
  echo "package test skipped: vnamed is already installed on this machine, and the test would remove it" >&2
  exit 0
fi
ip=127.77.0.53
work=$(mktemp -d)
pid=""
fail() { echo "FAIL: $*" >&2; [ -e "$work/authority.log" ] && tail -n 30 "$work/authority.log" >&2; exit 1; }
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  dpkg -P vnamed >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() {
  local limit=$(( $(date +%s%3N) + $1 * 1000 )); shift
  while [ "$(date +%s%3N)" -lt "$limit" ]; do "$@" && return 0; sleep 0.05; done
  return 1
}

# Installed: the files, the user, the state directory, the modes.
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
[ -x /usr/bin/vnamed ] || fail "no /usr/bin/vnamed"
getent passwd vnamed >/dev/null || fail "no vnamed user"
[ "$(stat -c %U:%G /var/lib/vnamed/zones/example.com.zone)" = vnamed:vnamed ] || fail "the example zone is not the service's"
[ "$(stat -c %a:%U:%G /etc/vnamed/vnamed.toml)" = 640:root:vnamed ] || fail "vnamed.toml: $(stat -c %a:%U:%G /etc/vnamed/vnamed.toml)"
echo "installed: /usr/bin/vnamed, user vnamed, /var/lib/vnamed, /etc/vnamed"

# The units, as systemd reads them.
units=(/usr/lib/systemd/system/vnamed-{authority,monitor,farm,dispatch}.service)
for u in "${units[@]}"; do [ -e "$u" ] || fail "no $u"; done
systemd-analyze verify "${units[@]}" >"$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
grep -q '^Type=notify' /usr/lib/systemd/system/vnamed-authority.service || fail "the authority unit is not Type=notify"
grep -q '^AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN' /usr/lib/systemd/system/vnamed-dispatch.service || fail "dispatch capabilities"
! grep -q 'CAP_NET_RAW' /usr/lib/systemd/system/vnamed-authority.service || fail "the authority must not hold CAP_NET_RAW"
echo "systemd-analyze verify: the four units pass"

# Man pages and completions from the package.
MANPAGER=cat man vnamed-authority 2>/dev/null | grep -q -- '--config' || fail "man vnamed-authority"
[ -s /usr/share/bash-completion/completions/vnamed ] || fail "no bash completion"
echo "man vnamed-authority: shown"

# Started as the unit starts it. The operator's one edit: where to listen
# (a loopback address of this test's own), still on port 53.
sed -i "s|^dns_listen = .*|dns_listen = [\"$ip:53\"]|; s|127.0.0.1:7443|$ip:7443|; s|127.0.0.1:9353|$ip:9353|" /etc/vnamed/vnamed.toml
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/vnamed-authority.service)
[ "$exec_start" = "/usr/bin/vnamed authority --config /etc/vnamed/vnamed.toml" ] || fail "unexpected ExecStart: $exec_start"
python3 - "$work/notify.sock" >"$work/notify.txt" 2>&1 <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(20)
try:
    while True:
        msg = s.recv(4096).decode()
        print(msg, flush=True)
        if "READY=1" in msg:
            break
except socket.timeout:
    pass
EOF
listener=$!
wait_for 5 test -S "$work/notify.sock" || fail "notify socket"
chmod 777 "$work" "$work/notify.sock"
cd /var/lib/vnamed
NOTIFY_SOCKET="$work/notify.sock" JOURNAL_STREAM=1:1 setpriv --reuid=vnamed --regid=vnamed --init-groups \
  --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service \
  --no-new-privs $exec_start >"$work/authority.log" 2>&1 &
pid=$!
cd - >/dev/null
wait "$listener" || true
grep -q "READY=1" "$work/notify.txt" || fail "no READY=1 over NOTIFY_SOCKET: $(cat "$work/notify.txt")"
[ "$(stat -c %U /proc/$pid)" = vnamed ] || fail "not running as vnamed"
answer() { dig +short +time=1 +tries=1 @"$ip" -p 53 www.example.com A 2>/dev/null; }
wait_for 5 sh -c "dig +short +time=1 +tries=1 @$ip www.example.com A | grep -q '^192.0.2.1[01]$'" || fail "dig www.example.com: $(answer)"
echo "authority as user vnamed on $ip:53, READY=1 sent: www.example.com -> $(answer | tr '\n' ' ')"
[ "$(stat -c %U /var/lib/vnamed/zones/.vnamed-state)" = vnamed ] || fail "state not written by the service"

# ExecReload: SIGHUP reads the configuration again; it keeps serving.
kill -HUP "$pid"
wait_for 5 grep -q "configuration edit applied" "$work/authority.log" || fail "SIGHUP did not reload"
kill -0 "$pid" || fail "SIGHUP ended the authority"
answer | grep -q '^192.0.2.1[01]$' || fail "not serving after SIGHUP"
kill -TERM "$pid"
wait_for 10 sh -c "! kill -0 $pid 2>/dev/null" || fail "SIGTERM did not stop it"
pid=""
echo "SIGHUP: reloaded and still serving; SIGTERM: stopped"

# Removed: the program and units go, the configuration stays; purged: all of it.
dpkg -r vnamed >/dev/null || fail "dpkg -r"
[ ! -e /usr/bin/vnamed ] && [ ! -e "${units[0]}" ] && [ ! -e /usr/share/man/man1/vnamed-authority.1.gz ] || fail "dpkg -r left files"
[ -e /etc/vnamed/vnamed.toml ] || fail "dpkg -r removed the configuration"
dpkg -P vnamed >/dev/null || fail "dpkg -P"
[ ! -e /etc/vnamed ] && [ ! -e /var/lib/vnamed ] || fail "dpkg -P left /etc/vnamed or /var/lib/vnamed"
! getent passwd vnamed >/dev/null || fail "dpkg -P left the vnamed user"
! dpkg -s vnamed >/dev/null 2>&1 || fail "still installed"
echo "dpkg -r removed the program, kept the configuration; dpkg -P removed the rest"
echo "package test: all checks passed"
