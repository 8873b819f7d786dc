#!/usr/bin/env bash
# Before and after: two uniqlog binaries, alternating, one fresh three-node cluster per run
# (bench/lib.sh: auth on, shipped settings), `uniqlog bench` at 1 and at 64 clients. Prints
# one line per run and a markdown table of medians, with the server CPU per request (user +
# system time of the three node processes over the run, from /proc, divided by the requests).
# usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS=3] [REQS_1=1500] [REQS_64=20000]
# AB_SPREAD=1: the clients spread over all three nodes (two thirds of the writes forwarded)
# instead of all on node 1, the leader.
# AB_NO_VERIFY=1: skip the bench's read-back check (for experiment binaries that do not serve
# reads); the CPU figure then counts the writes alone.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [REQS_1] [REQS_64]}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [REQS_1] [REQS_64]}
ROUNDS=${3:-3}
REQS_1=${4:-1500}
REQS_64=${5:-20000}
source "$ROOT/bench/lib.sh"
trap stop_cluster EXIT
OUT=$(mktemp -d)

run() { # run LABEL BINARY CLIENTS REQUESTS
  local label=$1 bin=$2 clients=$3 reqs=$4 before after j
  start_cluster "${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-ab" "$bin" 2>/dev/null
  before=$(cpu_ticks)
  local target=(--addr 127.0.0.51:7001)
  [ "${AB_SPREAD:-0}" = 1 ] && target=()
  [ "${AB_NO_VERIFY:-0}" = 1 ] && target+=(--no-verify)
  j=$("$bin" bench --config "$CONFIG" ${target[@]+"${target[@]}"} --json \
    --clients "$clients" --requests "$reqs" 2>/dev/null)
  after=$(cpu_ticks)
  stop_cluster
  python3 - "$label" "$clients" "$j" "$((after - before))" "$TICKS" <<'PY' | tee -a "$OUT/runs"
import json, sys
label, clients, j, ticks, hz = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
v = j.get("verify") or {}
ok = j["client_check_ok"] and v.get("ok", True) and j["errors"] == 0
n = j["requests"]
us = ticks / hz * 1e6 / max(n, 1)
print(json.dumps({"label": label, "clients": int(clients), "ops": j["ops_per_s"], "p50": j["p50_ms"],
                  "p99": j["p99_ms"], "cpu_us": us, "correct": ok}))
PY
}

for r in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$OLD; [ "$which" = new ] && bin=$NEW
    run "$which" "$bin" 1 "$REQS_1"
    run "$which" "$bin" 64 "$REQS_64"
  done
done

python3 - "$OUT/runs" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
print()
print("| clients | build | ops/s (median) | runs | p50 ms | p99 ms | server CPU µs/request | correct |")
print("|---|---|---|---|---|---|---|---|")
for c in (1, 64):
    for label in ("old", "new"):
        rs = [r for r in runs if r["clients"] == c and r["label"] == label]
        ops = [r["ops"] for r in rs]
        print(f"| {c} | {label} | {med(ops):,.0f} | {', '.join(f'{o:,.0f}' for o in ops)} | "
              f"{med([r['p50'] for r in rs]):.2f} | {med([r['p99'] for r in rs]):.2f} | "
              f"{med([r['cpu_us'] for r in rs]):.0f} | {'yes' if all(r['correct'] for r in rs) else 'NO'} |")
    o = med([r["ops"] for r in runs if r["clients"] == c and r["label"] == "old"])
    n = med([r["ops"] for r in runs if r["clients"] == c and r["label"] == "new"])
    print(f"| {c} | ratio | {n / o:.2f}× | | | | | |")
PY
