#!/usr/bin/env bash
# How one uniqlog cluster's throughput grows with client count, event size and events per
# request (`uniqlog bench`, append target, auth on). One fresh three-node cluster per row
# group; prints a markdown table.
# usage: bench/scaling.sh [REQS=10000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQS=${1:-10000}
UNIQLOG=${UNIQLOG:-$ROOT/target/release/uniqlog}
source "$ROOT/bench/lib.sh"
trap stop_cluster EXIT

row() { # row LABEL ARGS...
  local label=$1; shift
  local j
  j=$("$UNIQLOG" bench --config "$CONFIG" --addr 127.0.0.51:7001 --json "$@" 2>/dev/null)
  python3 - "$label" "$j" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
v = r.get("verify") or {}
ok = r["client_check_ok"] and v.get("ok", True)
print(f"| {sys.argv[1]} | {r['clients']} | {r['batch']} | {r['ops_per_s']:,.0f} | {r['events_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {'yes' if ok else 'NO'} |")
PY
}

echo "| varied | clients | events/request | requests/s | events/s | p50 ms | p99 ms | errors | correct |"
echo "|---|---|---|---|---|---|---|---|---|"
start_cluster "${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-scaling" "$UNIQLOG" 2>/dev/null
for c in 1 4 16 64 256; do
  n=$REQS; [ "$c" = 1 ] && n=$((REQS / 4))
  row "clients" --clients "$c" --requests "$n"
done
for b in 200 1024 4096; do
  row "event bytes $b" --clients 64 --requests "$REQS" --event-bytes "$b"
done
for b in 10 100; do
  row "events per request" --clients 64 --requests $((REQS / b * 2)) --batch "$b" --dup-ratio 0
done
stop_cluster
