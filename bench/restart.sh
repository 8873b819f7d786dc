#!/usr/bin/env bash
# How long a node holding a million events takes to come back: a fresh three-node cluster
# (bench/lib.sh), EVENTS sign-up events written 100 per request (each its own stream and
# uniq key, so the state holds as many streams and keys as events), then a follower is
# stopped and started again, twice: killed (SIGKILL) and stopped cleanly (SIGTERM). Each time
# is measured from the start of the process until it is `/ready` and serves the topic's last
# event. Prints the data dir's size and the times.
# usage: bench/restart.sh [EVENTS=1000000]   (UNIQLOG=binary, default release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVENTS=${1:-1000000}
UNIQLOG=${UNIQLOG:-$ROOT/target/release/uniqlog}
source "$ROOT/bench/lib.sh"
DIR=${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-restart
trap 'stop_cluster; rm -rf "$DIR"/node?' EXIT
log() { printf '%s restart: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }

start_cluster "$DIR" "$UNIQLOG" 2>/dev/null
log "writing $EVENTS events, 100 per request"
started=$(date +%s.%N)
"$UNIQLOG" bench --config "$CONFIG" --addr 127.0.0.51:7001 --clients 16 --batch 100 \
  --requests $((EVENTS / 100)) --warmup 0 --dup-ratio 0 --no-verify --max-seconds 1800 >&2
log "written in $(since "$started") s"
# The last event's offset, as the leader serves it.
head=$(curl -fsS -u "bench:$TOKEN" "http://127.0.0.51:7001/v1/topics" \
  | python3 -c 'import json,sys; t=json.load(sys.stdin); t=t.get("topics",t); print(next(x for x in t if x["name"]=="users")["length"])')
last=$((head - 1))
log "topic users holds $head events"

# Wait until node 2 has applied everything the leader has (so its restart replays nothing
# the leader still has to send).
serves_last() { # serves_last: node 2 serves the topic's last event
  curl -fsS -u "bench:$TOKEN" "http://127.0.0.52:7001/v1/topics/users/events?from=$last&limit=1" \
    2>/dev/null | grep -q "\"offset\":$last"
}
caught_up=""
for _ in $(seq 600); do
  serves_last && { caught_up=1; break; }
  sleep 0.5
done
[ -n "$caught_up" ] || { log "node 2 did not catch up within 300 s"; exit 1; }
du -sh "$DIR/node2/log" "$DIR/node2/uniqlog.redb" "$DIR/node2/snapshots" 2>/dev/null | sed "s/^/data: /" >&2 || true

restart_once() { # restart_once SIGNAL: stop node 2 with SIGNAL, start it, time until it serves
  local sig=$1 t0 t1 ready_at=""
  kill "-$sig" "${PIDS[1]}"
  while kill -0 "${PIDS[1]}" 2>/dev/null; do sleep 0.05; done
  t0=$(date +%s.%N)
  "$UNIQLOG" node --config "$CONFIG" --id 2 >> "$DIR/node2.log" 2>&1 &
  PIDS[1]=$!
  while :; do
    if [ -z "$ready_at" ] && curl -fsS -o /dev/null "http://127.0.0.52:7001/ready" 2>/dev/null; then
      ready_at=$(date +%s.%N)
    fi
    if [ -n "$ready_at" ] && serves_last; then
      t1=$(date +%s.%N)
      break
    fi
    kill -0 "${PIDS[1]}" 2>/dev/null || { log "node 2 exited; see $DIR/node2.log"; exit 1; }
    [ "$(since "$t0" | cut -d. -f1)" -lt 300 ] || { log "node 2 did not serve within 300 s"; exit 1; }
    sleep 0.02
  done
  printf '| %s | %s | %s |\n' "$sig" "$(minus "$ready_at" "$t0")" "$(minus "$t1" "$t0")"
}

echo "| stopped with | s to /ready | s to serving the last event |"
echo "|---|---|---|"
restart_once KILL
restart_once TERM
