#!/usr/bin/env bash
# uniqlog's three-node cluster measured beside etcd and NATS JetStream, with the same load
# client, in the same run: the anchors harness (../shared/bench/anchors/run.sh) does the floor,
# etcd and NATS, then measures the uniqlog cluster this script started. Prints one table with
# uniqlog's rows and its ratios to the anchors.
#
# Knobs (env): REQS RUNS CONCS MAXS (passed to run.sh), ONLY (default "floor etcd nats sut"),
#   SIGNUP_REQS=2000 (POST /v1/users hashes a password at the production cost: fewer requests),
#   ANCHORS=path to the anchors harness, BENCH_TMP=/tmp/bench-anchors, SKIP_BUILD=1,
#   UNIQLOG=another uniqlog binary (an older build, to measure before and after a change).
# Auth stays on while measuring: the nodes require a cluster secret on peer RPC and a write
# token on client routes; the load client presents it as HTTP Basic in the URL.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/bench/anchors}
export BENCH_TMP=${BENCH_TMP:-/tmp/bench-anchors}
export BENCH_OUT=${BENCH_OUT:-$ROOT/bench/results}
SIGNUP_REQS=${SIGNUP_REQS:-2000}
ONLY=${ONLY:-"floor etcd nats sut"}
DIR=$BENCH_TMP/uniqlog
UNIQLOG=${UNIQLOG:-$ROOT/target/release/uniqlog}

log() { printf '%s compare: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release -p node"
  (cd "$ROOT" && cargo build --release -q -p node)
fi

# ------------------------------------------------------------ a fresh three-node cluster
source "$ROOT/bench/lib.sh"
trap stop_cluster EXIT
trap 'exit 130' INT TERM
start_cluster "$DIR" "$UNIQLOG"
SUT_PIDS=$(IFS=,; echo "${PIDS[*]}")
log "uniqlog nodes up: pids $SUT_PIDS, data in $DIR"

# ------------------------------------------------------------ the anchors, then uniqlog
URL="http://bench:$TOKEN@127.0.0.51:7001"
mkdir -p "$BENCH_OUT"
ONLY="$ONLY" SUT_LABEL=uniqlog SUT_PIDS="$SUT_PIDS" \
  SUT_TARGETS="http-append=$URL/v1/topics/users/events" \
  "$ANCHORS/run.sh"
RUN1=$BENCH_OUT/$(ls "$BENCH_OUT" | sort | tail -1)
if [ "$SIGNUP_REQS" != 0 ]; then
  log "sign-up (POST /v1/users, argon2id at the production cost): $SIGNUP_REQS requests per run"
  ONLY=sut SKIP_INSTALL=1 AUDIT=0 REQS=$SIGNUP_REQS SUT_LABEL=uniqlog SUT_PIDS="$SUT_PIDS" \
    SUT_TARGETS="http-post-json=$URL/v1/users" "$ANCHORS/run.sh"
  RUN2=$BENCH_OUT/$(ls "$BENCH_OUT" | sort | tail -1)
  [ "$RUN2" != "$RUN1" ] && cat "$RUN2/results.jsonl" >> "$RUN1/results.jsonl"
fi
rss=$(for p in "${PIDS[@]}"; do awk '/VmRSS/{print $2}' "/proc/$p/status"; done | paste -sd' ')
echo "uniqlog node RSS after the run (KiB): $rss" | tee -a "$RUN1/env.txt" >&2
python3 "$ROOT/bench/ratios.py" "$RUN1/results.jsonl" | tee "$RUN1/compare.md"
log "results in $RUN1"
