#!/usr/bin/env bash
# Installs the tools vnamed's demo, tests and benchmarks use: dig and
# named-checkzone (BIND utilities), NSD (a real secondary), dnsperf, gdnsd and
# PowerDNS (benchmark peers), kdig and dnspython (strict DNS parsers), FreeTDS tsql (a real SQL client for the SRP
# responder), Python grpcio (an independent gRPC client), promtool (it checks
# and unit-tests the alerting rules in contrib/prometheus) and what the
# package test uses (dpkg-dev, man-db, systemd-analyze), and Chromium with
# chromedriver for the status page, protoc (to build) and etcd (the cluster
# tests). Safe to
# run again: it installs only what is missing. --minimal: only what the demo
# needs; --bench: also HAProxy, wrk and nginx for scripts/bench/dispatch.sh
# and Knot DNS for scripts/bench/zone-memory.sh.
set -euo pipefail

need=()
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v named-checkzone >/dev/null || need+=(bind9-utils)
command -v nsd >/dev/null || need+=(nsd)
# Building needs protoc (the etcd client compiles etcd's API with it).
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ "${1:-}" != "--minimal" ]; then
  command -v dnsperf >/dev/null || need+=(dnsperf)
  command -v gdnsd >/dev/null || need+=(gdnsd)
  command -v pdns_server >/dev/null || need+=(pdns-server pdns-backend-bind)
  command -v tsql >/dev/null || need+=(freetds-bin)
  command -v curl >/dev/null || need+=(curl)
  command -v ethtool >/dev/null || need+=(ethtool)
  command -v kdig >/dev/null || need+=(knot-dnsutils)
  command -v openssl >/dev/null || need+=(openssl)
  command -v promtool >/dev/null || need+=(prometheus)
  # A real etcd cluster for the cluster tests and benchmark.
  command -v etcd >/dev/null || need+=(etcd-server)
  # The package test: dpkg-shlibdeps for cargo-deb, man, systemd-analyze.
  command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
  command -v man >/dev/null || need+=(man-db)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  # The status page test drives Debian's Chromium through chromedriver.
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
# The independent gRPC client the tests use (Python grpcio, from PyPI).
if [ "${1:-}" != "--minimal" ] && ! python3 -c "import grpc, grpc_tools, grpc_health, grpc_reflection, dns.message, prometheus_client" 2>/dev/null; then
  echo "installing: grpcio grpcio-tools grpcio-health-checking grpcio-reflection dnspython prometheus-client (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    grpcio grpcio-tools grpcio-health-checking grpcio-reflection dnspython prometheus-client
fi
# Only the benchmarks need these.
if [ "${1:-}" = "--bench" ]; then
  for t in haproxy wrk nginx; do command -v $t >/dev/null || need+=("$t"); done
  command -v knotd >/dev/null || need+=(knot)
  [[ " ${need[*]} " == *" nginx "* ]] && need=("${need[@]/nginx/nginx-light}")
fi
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# Packaged servers must not start themselves on port 53 while installing.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ -n "$created_policy" ] && $sudo rm -f /usr/sbin/policy-rc.d' EXIT
echo "installing: ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
