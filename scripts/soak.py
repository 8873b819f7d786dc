#!/usr/bin/env python3
"""A soak: a three-node cluster with its consumers under steady load for MINUTES, a random
node killed (kill -9) every few minutes and started again by `cluster up`.

    scripts/soak.sh MINUTES [--kill-every S] [--rate R] [--bin PATH]

The load is `uniqlog bench` in one-minute rounds at half the peak a short closed-loop bench
measures first (or --rate), each round read back: events acknowledged but missing (lost),
present twice (duplicated) or never sent (phantom) must all be 0. Per minute it prints the
round's p99, the writes acknowledged so far and each node's RSS; at the end the consumers' lag,
the RSS of the largest node before and after a restart on the same data (growth that a restart
keeps is the state's; growth it sheds was not), and a JSON summary. Exits 1
if anything was lost, duplicated or phantom. Ports are chosen free at start; everything runs
under a temporary directory, removed at the end with every process it started.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(workdir):
    """The repository's cluster.toml with every port free and the data under workdir."""
    text = (ROOT / "cluster.toml").read_text()
    ports = {}
    for old in sorted(set(re.findall(r"127\.0\.0\.1:(7\d\d\d)", text))):
        ports[old] = str(free_port())
    text = re.sub(r"127\.0\.0\.1:(7\d\d\d)", lambda m: "127.0.0.1:" + ports[m.group(1)], text)
    path = workdir / "cluster.toml"
    path.write_text(text)
    return path, {old: int(new) for old, new in ports.items()}


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(addrs, within=60):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if all(get(f"http://{a}/ready").get("leader") for a in addrs):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit("the cluster did not become ready")


def node_pids(config):
    """Node id -> pid of the `uniqlog node` processes of this config."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args]
        if "node" in args and str(config) in args and "--id" in args:
            out[int(args[args.index("--id") + 1])] = int(d.name)
    return out


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def applied(addr):
    """The applied index `/ready` reports, or None while the node is not ready."""
    try:
        return get(f"http://{addr}/ready").get("applied_index")
    except Exception:
        return None


def restarted_rss(config, addrs, victim, within=180):
    """Kill -9 node `victim` (`cluster up` starts it again), wait until it has applied what the
    others had, and return its RSS then."""
    others = [a for i, a in enumerate(addrs, 1) if i != victim]
    target = max(applied(a) or 0 for a in others)
    old = node_pids(config)[victim]
    os.kill(old, signal.SIGKILL)
    deadline = time.time() + within
    while time.time() < deadline:
        pid = node_pids(config).get(victim)
        if pid and pid != old and (applied(addrs[victim - 1]) or 0) >= target:
            return rss_mib(pid)
        time.sleep(0.5)
    return None


def bench(binary, config, seconds, rate, clients, seed, extra=()):
    cmd = [str(binary), "bench", "--config", str(config), "--json", "--max-seconds",
           str(seconds), "--requests", "100000000", "--clients", str(clients),
           "--seed", str(seed), "--warmup", "50", *extra]
    if rate:
        cmd += ["--rate", f"{rate:.1f}", "--tolerate-errors"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"bench gave no summary: {p.stderr[-2000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("minutes", type=int)
    ap.add_argument("--kill-every", type=int, default=180, help="seconds between kills")
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s (default: half the peak)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "uniqlog"))
    args = ap.parse_args()
    binary = Path(args.bin)
    workdir = Path(tempfile.mkdtemp(prefix="uniqlog-soak-"))
    config, ports = write_config(workdir)
    addrs = [f"127.0.0.1:{ports[p]}" for p in ("7001", "7002", "7003")]
    log = open(workdir / "cluster-up.log", "w")
    up = subprocess.Popen([str(binary), "cluster", "up", "--config", str(config),
                           "--with-consumers"], stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    stop = threading.Event()
    kills = []
    try:
        wait_ready(addrs)
        peak = bench(binary, config, 20, 0, 64, 1, ["--no-verify"])
        rate = args.rate or peak["ops_per_s"] / 2
        print(f"peak {peak['ops_per_s']:.0f} ops/s (64 clients, closed loop); soak at "
              f"{rate:.0f} ops/s for {args.minutes} min, a node killed every "
              f"{args.kill_every} s", flush=True)

        def killer():
            rng = random.Random(1)
            while not stop.wait(args.kill_every):
                pids = node_pids(config)
                if pids:
                    victim = rng.choice(sorted(pids))
                    os.kill(pids[victim], signal.SIGKILL)
                    kills.append((round(time.time() - t0), victim))
                    print(f"  killed node {victim} (kill -9)", flush=True)

        t0 = time.time()
        threading.Thread(target=killer, daemon=True).start()
        rounds = []
        print(f"data under {workdir}, {shutil.disk_usage(workdir).free / 2**30:.1f} GiB free "
              "(the nodes refuse writes below disk_free_min_bytes plus a snapshot's size)")
        print("minute  ops/s   p99 ms  errors  lost dup phantom   writes  free GiB  "
              "RSS MiB (node 1, 2, 3)")
        writes = 0
        for minute in range(1, args.minutes + 1):
            r = bench(binary, config, 60, rate, 64, 100 + minute)
            v = r.get("verify") or {}
            rss = {i: rss_mib(p) for i, p in sorted(node_pids(config).items())}
            writes += r["requests"] - r["errors"]
            free = shutil.disk_usage(workdir).free / 2**30
            row = {"minute": minute, "ops_per_s": r["ops_per_s"], "p99_ms": r["p99_ms"],
                   "errors": r["errors"], "lost": v.get("missing_emails"),
                   "duplicated": v.get("duplicated_emails"),
                   "phantom": v.get("phantom_emails"), "writes": writes,
                   "free_gib": round(free, 1), "rss_mib": rss}
            rounds.append(row)
            print(f"{minute:6d} {r['ops_per_s']:7.0f} {r['p99_ms']:8.1f} {r['errors']:7d}"
                  f"  {row['lost']:4} {row['duplicated']:3} {row['phantom']:7} {writes:8d}"
                  f" {free:9.1f}  "
                  f"{', '.join(str(rss.get(i)) for i in (1, 2, 3))}", flush=True)
        stop.set()
        rss = {i: rss_mib(p) for i, p in sorted(node_pids(config).items())}
        victim = max(rss, key=lambda i: rss[i] or 0)
        restart = {"node": victim, "rss_mib_before": rss[victim],
                   "rss_mib_after_restart": restarted_rss(config, addrs, victim)}
        print(f"node {victim}: {restart['rss_mib_before']} MiB before a restart, "
              f"{restart['rss_mib_after_restart']} MiB after it, caught up", flush=True)
        consumers = {}
        for name, port in (("query", ports.get("7101")), ("mail", ports.get("7102"))):
            try:
                consumers[name] = get(f"http://127.0.0.1:{port}/health")
            except Exception as e:
                consumers[name] = str(e)
        bad = sum((r["lost"] or 0) + (r["duplicated"] or 0) + (r["phantom"] or 0)
                  for r in rounds)
        summary = {"minutes": args.minutes, "rate": rate, "peak_ops_per_s": peak["ops_per_s"],
                   "kills": kills, "rounds": rounds, "restart": restart, "consumers": consumers,
                   "lost_duplicated_phantom": bad}
        print("consumers at the end:", json.dumps(consumers))
        print("SOAK " + json.dumps(summary))
        return 1 if bad else 0
    finally:
        stop.set()
        try:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=20)
        except Exception:
            try:
                os.killpg(up.pid, signal.SIGKILL)
            except Exception:
                pass
        for pid in node_pids(config).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
