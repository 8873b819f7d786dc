#!/usr/bin/env bash
# Where the microseconds of one append go, at one client: a fresh three-node cluster
# (bench/lib.sh), `uniqlog bench --clients 1`, and the nodes' stage histograms scraped before
# and after. Each stage is timed where it happens (api::metrics::RaftPathMetrics, the log
# writer, apply, the HTTP route); means are the deltas of sum / count. What no stage holds
# (the client and loopback, openraft's task hand-offs) is the difference between the stage
# that contains it and the stages inside.
# usage: bench/breakdown.sh [REQUESTS=3000] [ROUNDS=3]   (UNIQLOG=binary, default release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQS=${1:-3000}
ROUNDS=${2:-3}
UNIQLOG=${UNIQLOG:-$ROOT/target/release/uniqlog}
source "$ROOT/bench/lib.sh"
OUT=$(mktemp -d)
trap 'stop_cluster; rm -rf "$OUT"' EXIT

scrape_all() { # scrape_all TAG: every node's /metrics into $OUT/TAG.N
  local i
  for i in 1 2 3; do curl -fsS "http://127.0.0.5$i:7001/metrics" > "$OUT/$1.$i"; done
}

for r in $(seq "$ROUNDS"); do
  start_cluster "${BENCH_TMP:-/tmp/bench-anchors}/uniqlog-breakdown" "$UNIQLOG" 2>/dev/null
  scrape_all "before$r"
  # The load goes to the leader, whichever node that is.
  leader=$(grep -l '^uniqlog_raft_state{state="leader"} 1' "$OUT"/before$r.? | sed 's/.*\.//')
  [ -n "$leader" ] || { echo "breakdown: no leader in the nodes' metrics" >&2; exit 1; }
  "$UNIQLOG" bench --config "$CONFIG" --addr "127.0.0.5$leader:7001" --json \
    --clients 1 --requests "$REQS" > "$OUT/bench$r.json" 2>/dev/null
  scrape_all "after$r"
  stop_cluster
done

python3 - "$OUT" "$ROUNDS" "$REQS" <<'PY'
import json, re, statistics, sys
out, rounds, reqs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ROUTE = '/v1/topics/{topic}/events'

def parse(path):
    m = {}
    for line in open(path):
        if line.startswith('#') or not line.strip():
            continue
        g = re.match(r'([a-z_]+)(\{.*\})? (\S+)$', line.strip())
        if g:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', g.group(2) or ''))
            m.setdefault(g.group(1), []).append((labels, float(g.group(3))))
    return m

def value(m, name, **want):
    return sum(v for labels, v in m.get(name, [])
               if all(labels.get(k) == w for k, w in want.items()))

def mean_us(before, after, family, **labels):
    """Mean of a histogram's observations between two scrapes, in µs (None if none)."""
    n = value(after, family + '_count', **labels) - value(before, family + '_count', **labels)
    s = value(after, family + '_sum', **labels) - value(before, family + '_sum', **labels)
    return (s / n * 1e6, n) if n > 0 else (None, 0)

rows = []
for r in range(1, rounds + 1):
    b = {i: parse(f'{out}/before{r}.{i}') for i in (1, 2, 3)}
    a = {i: parse(f'{out}/after{r}.{i}') for i in (1, 2, 3)}
    leader = next(i for i in (1, 2, 3) if value(a[i], 'uniqlog_raft_state', state='leader') == 1)
    followers = [i for i in (1, 2, 3) if i != leader]
    j = json.load(open(f'{out}/bench{r}.json'))
    st = {}
    st['client'] = 1e6 * j['seconds'] / j['requests']
    st['route'], _ = mean_us(b[leader], a[leader], 'uniqlog_http_request_duration_seconds',
                             method='POST', route=ROUTE)
    st['raft_write'], _ = mean_us(b[leader], a[leader], 'uniqlog_raft_write_seconds')
    st['leader_log'], _ = mean_us(b[leader], a[leader], 'uniqlog_raft_log_commit_seconds')
    st['rpc'], _ = mean_us(b[leader], a[leader], 'uniqlog_peer_rpc_sent_seconds', rpc='append')
    st['apply'], _ = mean_us(b[leader], a[leader], 'uniqlog_apply_seconds')
    fh = [mean_us(b[f], a[f], 'uniqlog_peer_rpc_handled_seconds', rpc='append')[0] for f in followers]
    fl = [mean_us(b[f], a[f], 'uniqlog_raft_log_commit_seconds')[0] for f in followers]
    st['follower_raft'] = statistics.mean(x for x in fh if x is not None)
    st['follower_log'] = statistics.mean(x for x in fl if x is not None)
    st['batch'] = (value(a[leader], 'uniqlog_append_batch_requests_sum')
                   - value(b[leader], 'uniqlog_append_batch_requests_sum')) / max(1, (
        value(a[leader], 'uniqlog_append_batch_requests_count')
        - value(b[leader], 'uniqlog_append_batch_requests_count')))
    st['ops'] = j['ops_per_s']
    st['p50'] = j['p50_ms'] * 1000
    rows.append(st)

missing = sorted({k for r in rows for k, v in r.items() if v is None})
if missing:
    sys.exit(f"breakdown: no samples for {', '.join(missing)} (did the load reach the leader?)")
med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
# The leader sends an entry while it syncs it (raft_store::LocalDurable): its log write and
# the replication round trip overlap, and the write waits for the longer.
overlap = max(med['leader_log'], med['rpc'])
lines = [
    ('one append, as the client sees it (mean)', med['client'], 0),
    ('client, loopback TCP, hyper outside the route', med['client'] - med['route'], 1),
    ('leader: the HTTP route (auth, body, JSON, validation, answer)', med['route'] - med['raft_write'], 1),
    ('leader: Raft write (client_write until committed and applied)', med['raft_write'], 1),
    ('leader log write and replication, side by side (the longer mean)', overlap, 2),
    ('leader: log write (segment frame + fdatasync)', med['leader_log'], 3),
    ('replication round trip (append RPC, as the leader sees it)', med['rpc'], 3),
    ('network, HTTP and codec of the RPC', med['rpc'] - med['follower_raft'], 4),
    ('follower: Raft handling of the append', med['follower_raft'], 4),
    ('follower: log write (segment frame + fdatasync)', med['follower_log'], 5),
    ('follower: the rest of its handling', med['follower_raft'] - med['follower_log'], 5),
    ('leader: apply', med['apply'], 2),
    ('hand-offs and waits no stage holds (openraft core, channels, commit)',
     med['raft_write'] - overlap - med['apply'], 2),
]
print(f"\nmedian of {rounds} rounds of {reqs:,} requests: {med['ops']:,.0f} ops/s, "
      f"p50 {med['p50']:,.0f} µs, {med['batch']:.2f} requests per entry\n")
print('| stage (· = inside the stage above it) | µs | share |')
print('|---|---|---|')
for name, us, depth in lines:
    pad = '· ' * depth
    print(f"| {pad}{name} | {us:,.0f} | {100 * us / med['client']:.0f} % |")
PY
