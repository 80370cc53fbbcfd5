#!/usr/bin/env bash
# Status report ingestion: simulated monitors report MEMBERS members of one
# pool to one authority pinned to core 0 (the load generator runs on core
# 1). Prints reports/s at full speed, the authority's CPU per report and
# RSS, and the report-to-answer latency of a death (p50/p99: a member of a
# small probe pool beside the big one, in a zone of its own, is reported
# down, timed with real DNS queries until no answer carries it) while
# 10,000 reports/s arrive.
#
# Each measurement runs under each of SELECTS (default: "shares best", the
# pools' `select`), in the same run, and the ratio of the first to the
# last is printed. With AGAINST=<git revision> the same measurements run
# against that revision built in a temporary worktree (e.g. AGAINST=HEAD~5)
# as well, and the ratios of the builds are printed.
#
#   [AGAINST=REV] [SELECTS="shares best"] bash scripts/bench/ingest.sh [MEMBERS] [SECONDS] [ROUNDS]
#   (defaults: 10000, 10, 1; with several rounds the builds alternate and
#   the median of each figure is kept)
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-10000}
secs=${2:-10}
rounds=${3:-1}
cargo build --release --quiet --bin vnamed --example ingest
ingest=$PWD/target/release/examples/ingest

work=$(mktemp -d)
pid=""
tree=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$tree" ] && git worktree remove --force "$tree" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

builds=("current=$PWD/target/release/vnamed")
if [ -n "${AGAINST:-}" ]; then
  tree=$work/against
  git worktree add --quiet --detach "$tree" "$AGAINST"
  (cd "$tree" && CARGO_TARGET_DIR="${AGAINST_TARGET:-$tree/target}" cargo build --release --quiet --bin vnamed)
  builds+=("$AGAINST=${AGAINST_TARGET:-$tree/target}/release/vnamed")
fi

selects=(${SELECTS:-shares best})
mkdir -p "$work/zones"
for select in "${selects[@]}"; do
  python3 - "$members" "$select" > "$work/vnamed-$select.toml" <<'PY'
import ipaddress, sys
n, select = int(sys.argv[1]), sys.argv[2]
print('[authority]\ndns_listen = ["127.0.0.1:5410"]\ngrpc_listen = "127.0.0.1:7410"\nzones_dir = "ZONES"\nudp_workers = 1\n')
print(f'[[pool]]\nname = "www.bench.example."\npolicy = "least-loaded"\nselect = "{select}"\nstale_after = "60s"\nmembers = [')
base = int(ipaddress.IPv4Address("127.1.0.0"))
for i in range(n):
    print(f'  {{ id = "m{i}", address = "{ipaddress.IPv4Address(base + i)}" }},')
print(']')
# The probe: three members, each in every answer, so an answer without one
# means it is gone; in a zone of its own, so that its changes do not rewrite
# the big pool's zone file (whose cost is the zone file thread's, not this).
print(f'[[pool]]\nname = "www.probe.example."\npolicy = "least-loaded"\nselect = "{select}"\nanswers = 3\nstale_after = "60s"\nmembers = [')
for i in range(3):
    print(f'  {{ id = "p{i}", address = "127.2.0.{i + 1}" }},')
print(']')
PY
  sed -i "s|ZONES|$work/zones|" "$work/vnamed-$select.toml"
done

stat() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)

# One measurement of one build: "rate cpu rss p50 p99" on stdout.
measure() {
  local vnamed=$1 select=$2
  for z in bench probe; do
    printf '$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n' > "$work/zones/$z.example.zone"
  done
  rm -rf "$work/zones/.vnamed-state"
  taskset -c 0 "$vnamed" authority --config "$work/vnamed-$select.toml" 2>"$work/vnamed.log" &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/7410) 2>/dev/null && break
    sleep 0.1
  done
  local before after max rate cpu steady rss
  before=$(stat)
  max=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" max "$secs")
  after=$(stat)
  rate=$(awk '/max_reports_per_s/ {print $2}' <<<"$max")
  cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$rate" -v s="$secs" 'BEGIN { printf "%.2f", (r > 0) ? (t / hz) / (r * s) * 1e6 : 0 }')
  steady=$(taskset -c 1 "$ingest" http://127.0.0.1:7410 127.0.0.1:5410 www.bench.example. "$members" steady 10000 "$secs" 2>/dev/null)
  rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  echo "$rate $cpu $rss $(awk '/p50_ms/ {p50=$2} /p99_ms/ {p99=$2} END {print p50, p99}' <<<"$steady")"
}

# Each build under each select: the columns.
runs=()
for b in "${builds[@]}"; do
  for select in "${selects[@]}"; do runs+=("${b%%=*}/$select=${b#*=}"); done
done
declare -A results
for round in $(seq "$rounds"); do
  for r in "${runs[@]}"; do
    name=${r%%=*}
    results[$name]+="$(measure "${r#*=}" "${name#*/}")"$'\n'
  done
done

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
column() { awk -v c="$2" 'NF {print $c}' <<<"${results[$1]}" | median; }

echo
# Ratios: each run against the first (the current build under the first select).
printf '%-32s' "members $members, $rounds round(s)"
for r in "${runs[@]}"; do printf '%16s' "${r%%=*}"; done
echo
row() {
  local label=$1 col=$2 target=$3
  printf '%-32s' "$label"
  local v
  for r in "${runs[@]}"; do
    v=$(column "${r%%=*}" "$col")
    printf '%16s' "$v"
  done
  echo "   $target"
}
ratio() {
  local label=$1 col=$2 a=$3 b=$4
  printf '%-32s%16s   (%s / %s)\n' "$label" "$(awk -v x="$(column "$a" "$col")" -v y="$(column "$b" "$col")" 'BEGIN { printf "%.2f", (y > 0) ? x / y : 0 }')" "$a" "$b"
}
row "reports/s, as fast as possible" 1 "(target: >= 450000)"
row "authority CPU per report (us)" 2 ""
row "authority RSS (MB)" 3 "(target: <= 200)"
row "report-to-answer p50 (ms)" 4 ""
row "report-to-answer p99 (ms)" 5 "(target: <= 5)"
first=${runs[0]%%=*}
if [ ${#selects[@]} -gt 1 ]; then
  ratio "reports/s, ${selects[0]} / ${selects[-1]} (>= 0.9)" 1 "$first" "current/${selects[-1]}"
fi
for r in "${runs[@]:1}"; do
  n=${r%%=*}
  if [ "${n%%/*}" != current ]; then ratio "reports/s, current / ${n%%/*}" 1 "current/${n#*/}" "$n"; fi
done
