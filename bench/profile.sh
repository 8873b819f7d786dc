#!/usr/bin/env bash
# Where the CPU goes at load: a fresh three-node cluster (bench/lib.sh) of a binary built with
# `cargo build --profile profiling -p node`, `uniqlog bench` at CLIENTS clients on the leader,
# and `perf record` of the leader and of one follower for SECONDS seconds in the middle of it.
# Writes OUT/leader.txt and OUT/follower.txt (perf script) and prints each one's summary
# (bench/perf_top.py: the functions by share of samples, inclusive and self).
# usage: bench/profile.sh [BINARY=target/profiling/uniqlog] [CLIENTS=64] [SECONDS=10] [OUT=/tmp/uniqlog-profile]
# WARMUP=N: first write N requests (unprofiled), to see a cluster that holds data.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/profiling/uniqlog}
CLIENTS=${2:-64}
SECS=${3:-10}
OUT=${4:-/tmp/uniqlog-profile}
source "$ROOT/bench/lib.sh"
trap stop_cluster EXIT
mkdir -p "$OUT"
start_cluster "$OUT/cluster" "$BIN" 2>/dev/null
if [ "${WARMUP:-0}" -gt 0 ]; then
  "$BIN" bench --config "$CONFIG" --addr 127.0.0.51:7001 --json --clients "$CLIENTS" \
    --requests "$WARMUP" --no-verify > "$OUT/warmup.json" 2>/dev/null
fi
"$BIN" bench --config "$CONFIG" --addr 127.0.0.51:7001 --json --clients "$CLIENTS" \
  --requests $((100000 + SECS * 20000)) --no-verify > "$OUT/bench.json" 2>/dev/null &
LOAD=$!
LEADER=${PIDS[0]} FOLLOWER=${PIDS[1]}
sleep 3 # past the clients' connects and the first checkpoint (the bench stops after its requests)
# One perf for both nodes: two at once starve each other of samples on this VM.
perf record -q -F 499 --call-graph dwarf,32768 -o "$OUT/perf.data" -p "$LEADER,$FOLLOWER" -- sleep "$SECS"
kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
stop_cluster
for who in leader follower; do
  pid=$LEADER; [ "$who" = follower ] && pid=$FOLLOWER
  perf script --no-inline --pid "$pid" -i "$OUT/perf.data" > "$OUT/$who.txt" 2>/dev/null
  echo "== $who"
  python3 "$ROOT/bench/perf_top.py" "$OUT/$who.txt"
done
