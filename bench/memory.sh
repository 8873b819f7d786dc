#!/usr/bin/env bash
# Resident memory of each node of a three-node cluster under full load, sampled every 10 s.
# usage: bench/memory.sh [SECONDS=600] [CLIENTS=64]
# Prints the samples and, per node, the median RSS of the second minute against the last
# minute: the memory target is "flat within 20 %" after start-up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-600}
CLIENTS=${2:-64}
UNIQLOG=${UNIQLOG:-$ROOT/target/release/uniqlog}
source "$ROOT/bench/lib.sh"
DIR=${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-memory
# Ten minutes at full load write over 10 GB; only the samples and the summary are kept.
trap 'stop_cluster; rm -rf "$DIR"/node?' EXIT
start_cluster "$DIR" "$UNIQLOG"
# The load client plans every request (an email each) before it starts: ask for no more than
# it could send (30,000 a second, over twice the fastest run so far), not for 100 million
# (10 GB and a minute of planning).
"$UNIQLOG" bench --config "$CONFIG" --clients "$CLIENTS" --requests $((SECS * 30000)) \
  --max-seconds "$SECS" --warmup 0 --no-verify > "$(dirname "$CONFIG")/bench.out" 2>/dev/null &
LOAD=$!
OUT=$(dirname "$CONFIG")/rss.csv
echo "t_s,node1_kib,node2_kib,node3_kib" | tee "$OUT"
start=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
  row=$(( $(date +%s) - start ))
  for p in "${PIDS[@]}"; do row="$row,$(awk '/VmRSS/{print $2}' "/proc/$p/status")"; done
  echo "$row" | tee -a "$OUT"
  sleep 10
done
cat "$(dirname "$CONFIG")/bench.out"
python3 - "$OUT" "$SECS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
secs = int(sys.argv[2])
for n in (1, 2, 3):
    col = f"node{n}_kib"
    early = [int(r[col]) for r in rows if 60 <= int(r["t_s"]) < 120]
    late = [int(r[col]) for r in rows if int(r["t_s"]) >= secs - 60]
    if early and late:
        a, b = statistics.median(early), statistics.median(late)
        print(f"node{n}: RSS median {a/1024:.0f} MiB in minute 2, {b/1024:.0f} MiB in the last minute: {100*(b-a)/a:+.0f} %")
PY
