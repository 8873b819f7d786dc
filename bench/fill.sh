#!/usr/bin/env bash
# CPU per request as a cluster fills: one fresh three-node cluster (bench/lib.sh) of each
# binary given, ROUNDS runs of `uniqlog bench` at 64 clients on it, one after another, each
# printed with its throughput, p99, server CPU µs a request (user + system time of the three
# node processes, from /proc) and the leader's RSS. ab.sh measures fresh clusters; this shows
# what changes as the data grows (a cost that grows with the log or the state shows here).
# usage: bench/fill.sh ROUNDS REQUESTS BINARY...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:?usage: bench/fill.sh ROUNDS REQUESTS BINARY...}
REQS=${2:?usage: bench/fill.sh ROUNDS REQUESTS BINARY...}
shift 2
[ $# -gt 0 ] || { echo "usage: bench/fill.sh ROUNDS REQUESTS BINARY..." >&2; exit 2; }
source "$ROOT/bench/lib.sh"
trap stop_cluster EXIT
echo "| binary | run | requests so far | ops/s | p99 ms | server CPU µs/request | leader RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for bin in "$@"; do
  start_cluster "${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-fill" "$bin" 2>/dev/null
  for r in $(seq "$ROUNDS"); do
    before=$(cpu_ticks)
    j=$("$bin" bench --config "$CONFIG" --addr 127.0.0.51:7001 --json --clients 64 \
      --requests "$REQS" --no-verify 2>/dev/null)
    after=$(cpu_ticks)
    rss=$(ps -o rss= -p "${PIDS[0]}")
    python3 - "$bin" "$r" "$REQS" "$j" "$((after - before))" "$TICKS" "$rss" <<'PY'
import json, sys
bin_, r, reqs, j, ticks, hz, rss = sys.argv[1:]
j = json.loads(j)
n = j["requests"]
ok = j["errors"] == 0 and j["client_check_ok"]
print(f"| {bin_} | {r} | {int(r) * int(reqs):,} | {j['ops_per_s']:,.0f} | {j['p99_ms']:.1f} | "
      f"{int(ticks) / int(hz) * 1e6 / max(n, 1):.0f} | {int(rss) // 1024}{'' if ok else ' (errors!)'} |")
PY
  done
  stop_cluster
done
