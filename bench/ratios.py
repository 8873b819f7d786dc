#!/usr/bin/env python3
"""The anchors harness's table (medians of results.jsonl), then uniqlog against the issue's
targets: ratios to etcd's Txn and NATS JetStream's dedup at the same client count.
usage: ratios.py results.jsonl [more.jsonl ...]"""
import json, os, statistics, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
anchors = os.environ.get("ANCHORS", os.path.join(here, "..", "..", "shared", "bench", "anchors"))
subprocess.run([sys.executable, os.path.join(anchors, "report.py"), *sys.argv[1:]], check=True)

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        rows += [json.loads(l) for l in f if l.strip().startswith("{")]

def median(system, target, conc, key):
    v = [r[key] for r in rows
         if r.get("system", r.get("label")) == system and r["target"] == target
         and r.get("concurrency", 1) == conc and isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None

print()
print("| uniqlog target | clients | ops/s | vs etcd-txn | vs nats-dedup | p99 ms | target |")
print("|---|---|---|---|---|---|---|")
for target in ("http-append", "http-post-json"):
    for conc in sorted({r.get("concurrency", 1) for r in rows}):
        ops = median("uniqlog", target, conc, "ops_per_s")
        if ops is None:
            continue
        etcd = median("etcd", "etcd-txn", conc, "ops_per_s")
        nats = median("nats", "nats-dedup", conc, "ops_per_s")
        p99 = median("uniqlog", target, conc, "p99_ms")
        r_etcd = f"{ops / etcd:.2f}x" if etcd else "-"
        r_nats = f"{ops / nats:.2f}x" if nats else "-"
        goal = "-"
        if target == "http-append" and etcd:
            if conc == 1:
                goal = "met" if ops >= 3 * etcd else f"missed: {ops / (3 * etcd):.0%} of 3x etcd"
            elif conc >= 64 and nats:
                need = max(10 * etcd, nats)
                ok = ops >= need and p99 is not None and p99 < 10
                goal = "met" if ok else f"missed: {ops / need:.0%} of max(10x etcd, nats), p99 {p99:.1f} ms"
        print(f"| {target} | {conc} | {ops:,.0f} | {r_etcd} | {r_nats} | {p99:.2f} | {goal} |")

# Server CPU per request: user + system time of all of a system's server processes over the
# measured phase (`server_cpu_s`, from /proc), divided by the requests answered. Steadier than
# ops/s on a shared machine, and issue 25's CPU target is uniqlog <= NATS dedup in the same run.
def cpu_us(r):
    s, n = r.get("server_cpu_s"), r.get("requests")
    return 1e6 * s / n if isinstance(s, (int, float)) and s > 0 and n else None

cells = {}
for r in rows:
    v = cpu_us(r)
    if v is not None:
        key = (r.get("system", r.get("label")), r["target"], r.get("concurrency", 1))
        cells.setdefault(key, []).append(v)
if cells:
    print()
    print("| system | target | clients | server CPU µs/request (median) | runs | vs nats-dedup |")
    print("|---|---|---|---|---|---|")
    for (system, target, conc), vs in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        med = statistics.median(vs)
        nats = cells.get(("nats", "nats-dedup", conc))
        ratio = f"{med / statistics.median(nats):.2f}x" if nats else "-"
        runs = ", ".join(f"{v:,.0f}" for v in vs)
        print(f"| {system} | {target} | {conc} | {med:,.0f} | {runs} | {ratio} |")
