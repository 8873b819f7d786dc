#!/usr/bin/env python3
"""The network test between real processes: three `uniqlog node` processes, each in its own
network namespace (scripts/jepsen/net.py), clients on every node, and a nemesis that cuts,
bridges, flaps, loses and delays their packets and SIGKILLs nodes during partitions. The
history the clients record is judged by the simulator's own checkers (`check-history`), so a
violation means the same thing here as in a simulated run.

    sudo scripts/jepsen/run.py --bin target/debug/uniqlog --check target/debug/check-history

Two things are checked here rather than from the history:
- while the old leader is cut off, a `consistency=linearizable` read sent to it after the
  majority acknowledged a newer write must not return a page without that write;
- how many elections a node that was cut off causes when it comes back (printed; with
  `--rejoin-elections-max N` more than N fails the test).

Root is needed (namespaces). Every namespace, link and process it made is removed at the end,
on failure and on SIGTERM/SIGINT too; the data and the node logs stay in `--out`.
"""

import argparse
import atexit
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from net import Net, enter  # noqa: E402

PORT = 7001
TOPIC = "jepsen"
N = 3


class Clock:
    """Milliseconds since the test started (the history's time base)."""

    def __init__(self):
        self.t0 = time.monotonic()

    def ms(self):
        return int((time.monotonic() - self.t0) * 1000)


class NotSent(OSError):
    """The connection could not be made: nothing was sent."""


def call(addr, method, path, body=None, timeout=3.0):
    """One HTTP request on a fresh connection. Returns (status, json-or-text); raises NotSent
    when the connection could not be made, any other OSError (a timeout, a reset) when the
    request may or may not have arrived."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as e:
            raise NotSent(str(e)) from e
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


class Cluster:
    def __init__(self, net, binary, workdir):
        self.net, self.bin, self.dir = net, binary, workdir
        self.procs = {}
        self.epochs = {i: 0 for i in range(1, N + 1)}
        self.lock = threading.Lock()
        self.config = os.path.join(workdir, "cluster.toml")
        nodes = "".join(
            f'[[node]]\nid = {i}\naddr = "{self.addr(i)}"\ndata_dir = "node{i}"\n\n'
            for i in range(1, N + 1)
        )
        with open(self.config, "w") as f:
            f.write(
                nodes
                + "[raft]\nheartbeat_ms = 100\nelection_timeout_ms_min = 600\n"
                "election_timeout_ms_max = 1200\nsnapshot_every_entries = 400\n\n"
                "[auth]\n# Addresses that exist only inside the test's namespaces.\n"
                "insecure = true\n"
            )

    def addr(self, i):
        return f"{self.net.addr(i)}:{PORT}"

    def start(self, i):
        log = open(os.path.join(self.dir, f"node{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns(i), self.bin, "node", "--config", self.config,
             "--id", str(i)],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def kill(self, i):
        """SIGKILL node i (the epoch changes first, so pages in flight are not recorded)."""
        with self.lock:
            self.epochs[i] += 1
        p = self.procs.get(i)
        if p and p.poll() is None:
            p.kill()
            p.wait()

    def epoch(self, i):
        with self.lock:
            return self.epochs[i]

    def stop_all(self):
        for i in list(self.procs):
            self.kill(i)

    def status(self, i, timeout=1.0):
        try:
            s, body = call(self.addr(i), "GET", "/v1/cluster/status", timeout=timeout)
            return body if s == 200 and isinstance(body, dict) else None
        except OSError:
            return None

    def leader(self, among=None, timeout=30.0):
        """A node that says it leads and that `among` (default: all) agree on, within `timeout`."""
        among = among or list(range(1, N + 1))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = [self.status(i) for i in among]
            leads = [s["id"] for s in seen if s and s.get("role") == "leader"]
            named = {s.get("leader") for s in seen if s}
            if len(leads) == 1 and named == {leads[0]}:
                return leads[0], max(s["term"] for s in seen if s)
            time.sleep(0.1)
        raise RuntimeError(f"no leader among {among} within {timeout}s: {seen}")

    def converged(self, timeout=60.0):
        """Every node knows the same leader and has applied the same index as committed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = [self.status(i) for i in range(1, N + 1)]
            if all(seen):
                applied = {s["applied_index"] for s in seen}
                commits = {s["commit_index"] for s in seen}
                leaders = {s.get("leader") for s in seen}
                if len(applied) == 1 and applied == commits and len(leaders) == 1 and None not in leaders:
                    return applied.pop()
            time.sleep(0.2)
        raise RuntimeError(f"the cluster did not converge within {timeout}s: {seen}")


class Recorder:
    """The history, in the serde form of sim_tests::history."""

    def __init__(self):
        self.lock = threading.Lock()
        self.appends, self.reads, self.status = [], [], []

    def add(self, kind, entry):
        with self.lock:
            getattr(self, kind).append(entry)


def append_outcome(cluster, node, body):
    """Send one append; the outcome as sim_tests::history::Outcome (externally tagged)."""
    try:
        s, b = call(cluster.addr(node), "POST", f"/v1/topics/{TOPIC}/events", body, timeout=5.0)
    except NotSent as e:
        return {"Failed": [0, f"cannot connect: {e}"]}
    except OSError as e:
        # The request may have arrived: a timeout (the phrase the checkers count as one) or
        # a broken connection.
        return {"Unknown": f"no answer from {cluster.addr(node)}: {e!r}"
                if isinstance(e, TimeoutError)
                else f"connection to {cluster.addr(node)} broken: {e!r}"}
    text = json.dumps(b) if not isinstance(b, str) else b
    if s == 201 and isinstance(b, dict):
        return {"Ok": {k: b[k] for k in ("first_offset", "last_offset", "log_index")}}
    if s == 409:
        return {"Conflict": b}
    if s == 503 and isinstance(b, dict) and b.get("error") == "outcome_unknown":
        return {"Unknown": f"503 {text}"}
    return {"Failed": [s, text]}


def retryable(outcome):
    return "Unknown" in outcome or ("Failed" in outcome and outcome["Failed"][0] in (0, 503))


def appender(k, cluster, rec, clock, stop, rng):
    """Client k: appends of one or two events, a third of them under an idempotency key and
    retried (on any node) until a definite answer."""
    n = 0
    while not stop.is_set():
        ident = f"c{k}-{n}"
        events = 1 + n % 2
        body = {"events": [{"type": "Logged", "data": {"id": f"{ident}.{j}", "client": k}}
                           for j in range(events)]}
        key = f"key-{ident}" if rng.random() < 0.34 else None
        if key:
            body["idempotency_key"] = key
        retry = 0
        while True:
            node = 1 + (k + n + retry) % N
            sent = clock.ms()
            outcome = append_outcome(cluster, node, body)
            rec.add("appends", {
                "id": ident, "client": k, "node": node, "topic": TOPIC, "events": events,
                "stream": None, "key": key, "retry": retry, "outcome": outcome,
                "sent_ms": sent, "answered_ms": clock.ms(),
            })
            if key is None or not retryable(outcome) or retry >= 5 or stop.is_set():
                break
            retry += 1
            time.sleep(rng.uniform(0.05, 0.3))
        n += 1
        time.sleep(rng.uniform(0.005, 0.03) if ("Ok" in outcome or "Conflict" in outcome)
                   else rng.uniform(0.05, 0.3))


def read_page(cluster, node, frm, linearizable, timeout=3.0):
    path = f"/v1/topics/{TOPIC}/events?from={frm}&limit=100&wait_ms=0"
    if linearizable:
        path += "&consistency=linearizable"
    s, b = call(cluster.addr(node), "GET", path, timeout=timeout)
    return b if s == 200 and isinstance(b, dict) else None


def reader(k, cluster, rec, clock, stop, rng):
    """Reader k: pages near the end of what it has seen, from random nodes, a third of them
    linearizable."""
    seen = 0
    while not stop.is_set():
        node = rng.randint(1, N)
        frm = max(0, seen - rng.randint(0, 5)) if rng.random() < 0.8 else rng.randint(0, seen)
        lin = rng.random() < 0.34
        epoch = cluster.epoch(node)
        sent = clock.ms()
        try:
            page = read_page(cluster, node, frm, lin)
        except OSError:
            page = None
        if page is not None and cluster.epoch(node) == epoch:
            seen = max(seen, frm + len(page["events"]))
            rec.add("reads", {
                "reader": k, "node": node, "epoch": epoch, "topic": TOPIC, "from": frm,
                "linearizable": lin, "events": page["events"], "head": page.get("head", 0),
                "sent_ms": sent, "answered_ms": clock.ms(),
            })
        time.sleep(rng.uniform(0.02, 0.1))


def poller(node, cluster, rec, clock, stop):
    while not stop.is_set():
        epoch = cluster.epoch(node)
        s = cluster.status(node)
        if s is not None and cluster.epoch(node) == epoch:
            rec.add("status", {
                "node": node, "epoch": epoch, "at_ms": clock.ms(), "role": s["role"],
                "term": s["term"], "leader": s.get("leader"), "commit_index": s["commit_index"],
                "applied_index": s["applied_index"], "last_log_index": s["last_log_index"],
            })
        time.sleep(0.1)


class Nemesis:
    def __init__(self, cluster, net, rec, clock, rng, episode_s):
        self.c, self.net, self.rec, self.clock = cluster, net, rec, clock
        self.rng, self.s = rng, episode_s
        self.markers = 0
        self.failures = []
        self.rejoin = []

    def log(self, what):
        print(f"[{self.clock.ms() / 1000:7.1f}s] {what}", flush=True)

    def rest(self):
        self.net.heal()
        self.net.set_loss(0)
        self.net.delay(False)
        time.sleep(2)

    def isolated_leader(self):
        old, term = self.c.leader()
        rest = [i for i in range(1, N + 1) if i != old]
        self.log(f"isolate leader {old} (term {term})")
        self.net.partition([old], rest)
        new, new_term = self.c.leader(among=rest)
        # A write the majority acknowledges after the old leader was cut off (recorded like
        # any client's, under a key, so its retries cannot write it twice).
        self.markers += 1
        ident = f"m{self.markers}"
        marker = {"events": [{"type": "Marker", "data": {"id": f"{ident}.0"}}],
                  "idempotency_key": f"key-{ident}"}
        deadline, offset, retry = time.monotonic() + 20, None, 0
        while offset is None and time.monotonic() < deadline:
            sent = self.clock.ms()
            out = append_outcome(self.c, new, marker)
            self.rec.add("appends", {
                "id": ident, "client": 1000, "node": new, "topic": TOPIC, "events": 1,
                "stream": None, "key": f"key-{ident}", "retry": retry, "outcome": out,
                "sent_ms": sent, "answered_ms": self.clock.ms(),
            })
            offset = out["Ok"]["last_offset"] if "Ok" in out else None
            retry += 1
        if offset is None:
            self.failures.append("the majority acknowledged no write while the leader was cut off")
        else:
            self.log(f"new leader {new} (term {new_term}) acknowledged offset {offset}; "
                     f"linearizable read from the old leader {old}")
            try:
                page = read_page(self.c, old, offset, True, timeout=5.0)
            except OSError:
                page = None
            if page is not None and (page.get("head", 0) <= offset or not page["events"]):
                self.failures.append(
                    f"the cut-off old leader {old} served a linearizable page without offset "
                    f"{offset}, acknowledged by the majority: head {page.get('head')}")
            self.log("old leader answered " + ("no page (refused or timed out)" if page is None
                                               else f"a page with head {page.get('head')}"))
        time.sleep(self.s / 2)
        self.rest()

    def minority(self):
        i = self.rng.randint(1, N)
        self.log(f"cut node {i} off")
        self.net.partition([i], [j for j in range(1, N + 1) if j != i])
        time.sleep(self.s)
        self.rest()

    def bridge(self):
        a, mid, b = self.rng.sample(range(1, N + 1), 3)
        self.log(f"bridge: {a} and {b} cannot hear each other, {mid} hears both")
        self.net.bridge([a], [b])
        time.sleep(self.s)
        self.rest()

    def flapping(self):
        self.log("flapping partitions")
        end = time.monotonic() + self.s
        while time.monotonic() < end:
            i = self.rng.randint(1, N)
            self.net.partition([i], [j for j in range(1, N + 1) if j != i])
            time.sleep(self.rng.uniform(0.2, 1.0))
            self.net.heal()
            time.sleep(self.rng.uniform(0.2, 1.0))
        self.rest()

    def loss(self):
        self.log("lose 20% of packets between nodes")
        self.net.set_loss(0.2)
        time.sleep(self.s)
        self.rest()

    def delay(self):
        self.log("delay packets between nodes (relay: 40 ms +- 30 ms)")
        self.net.delay(True)
        time.sleep(self.s)
        self.rest()

    def kill_in_partition(self):
        leader, _ = self.c.leader()
        rest = [i for i in range(1, N + 1) if i != leader]
        victim = self.rng.choice([leader, self.rng.choice(rest)])
        self.log(f"cut leader {leader} off, SIGKILL node {victim}")
        self.net.partition([leader], rest)
        time.sleep(self.s / 3)
        self.c.kill(victim)
        time.sleep(self.s / 3)
        self.net.heal()
        self.c.start(victim)
        self.log(f"healed, node {victim} restarted")
        time.sleep(self.s / 3)
        self.rest()

    def rejoin_elections(self):
        """Cut a follower off for several election timeouts, bring it back, and count the
        elections its return causes (terms the majority's leader gains within 5 s)."""
        leader, _ = self.c.leader()
        follower = self.rng.choice([i for i in range(1, N + 1) if i != leader])
        rest = [i for i in range(1, N + 1) if i != follower]
        self.log(f"rejoin: cut follower {follower} off for 6 s")
        self.net.partition([follower], rest)
        time.sleep(6)
        _, term_before = self.c.leader(among=rest)
        cut_off = self.c.status(follower) or {}
        healed = self.clock.ms()
        self.net.heal()
        time.sleep(5)
        # Terms only rise through elections: count the terms the majority's nodes report in
        # the 5 s after the heal, beyond the one they had.
        with self.rec.lock:
            terms = {s["term"] for s in self.rec.status
                     if s["node"] in rest and s["at_ms"] >= healed}
        elections = len(terms | {term_before}) - 1
        self.log(f"rejoin: follower {follower} came back at term {cut_off.get('term')}; the "
                 f"majority was at term {term_before}, then saw terms {sorted(terms)}: "
                 f"{elections} elections")
        self.rejoin.append(elections)
        self.rest()


def final_state(cluster, applied):
    """Every node's copy of the test's topic and its state hash (the cluster has converged and
    nothing writes any more)."""
    topics, hashes = {}, {}
    for i in range(1, N + 1):
        events, frm, head = [], 0, None
        while head is None or frm < head:
            s, page = call(cluster.addr(i), "GET",
                           f"/v1/topics/{TOPIC}/events?from={frm}&limit=1000", timeout=10)
            assert s == 200, f"node {i} {TOPIC}@{frm}: {s} {page}"
            head = page["head"]
            events += page["events"]
            frm = page["next_offset"]
        topics[str(i)] = {TOPIC: events}
        s, h = call(cluster.addr(i), "GET", "/v1/cluster/state-hash", timeout=10)
        assert s == 200, f"node {i} state-hash: {s} {h}"
        hashes[str(i)] = h
    return {"applied_index": applied, "topics": topics, "uniq": {}, "state_hashes": hashes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the uniqlog binary")
    ap.add_argument("--check", required=True, help="the check-history binary")
    ap.add_argument("--out", help="where data, logs and the history go (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=None, help="the nemesis' choices")
    ap.add_argument("--episode-s", type=float, default=8.0, help="length of each fault")
    ap.add_argument("--rounds", type=int, default=1, help="times through every fault")
    ap.add_argument("--rejoin-elections-max", type=int, default=None,
                    help="fail if a rejoining node causes more elections than this")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the network test needs root (network namespaces)")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"network test: seed {seed} (replay the nemesis' choices with --seed {seed})")
    rng = random.Random(seed)
    out = args.out or tempfile.mkdtemp(prefix="uniqlog-jepsen-")
    os.makedirs(out, exist_ok=True)
    binary, checker = os.path.abspath(args.bin), os.path.abspath(args.check)

    Net.remove_stale()
    net = Net(N)
    cluster = None

    def cleanup(*_):
        if cluster:
            cluster.stop_all()
        net.remove()

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(130))

    net.create()
    net.start_relay(40, 30)
    # The clients live in the hub, which routes to every node (before any thread starts).
    enter(net.hub)
    clock = Clock()
    cluster = Cluster(net, binary, out)
    for i in range(1, N + 1):
        cluster.start(i)
    deadline = time.monotonic() + 60
    while not all(cluster.status(i) for i in range(1, N + 1)):
        if time.monotonic() > deadline:
            sys.exit("the nodes did not start serving within 60 s (logs in " + out + ")")
        time.sleep(0.2)
    subprocess.run([binary, "cluster", "init", "--config", cluster.config], check=True,
                   stdout=subprocess.DEVNULL)
    leader, term = cluster.leader()
    print(f"cluster up: leader {leader}, term {term}; data and logs in {out}", flush=True)

    rec, stop = Recorder(), threading.Event()
    threads = [threading.Thread(target=appender, args=(k, cluster, rec, clock, stop,
                                                       random.Random(seed * 31 + k)))
               for k in range(2 * N)]
    threads += [threading.Thread(target=reader, args=(k, cluster, rec, clock, stop,
                                                      random.Random(seed * 37 + k)))
                for k in range(N)]
    threads += [threading.Thread(target=poller, args=(i, cluster, rec, clock, stop))
                for i in range(1, N + 1)]
    for t in threads:
        t.start()

    nemesis = Nemesis(cluster, net, rec, clock, rng, args.episode_s)
    episodes = [nemesis.isolated_leader, nemesis.minority, nemesis.bridge, nemesis.flapping,
                nemesis.loss, nemesis.delay, nemesis.kill_in_partition, nemesis.rejoin_elections]
    try:
        time.sleep(2)
        for _ in range(args.rounds):
            order = episodes[:]
            rng.shuffle(order)
            for episode in order:
                episode()
    finally:
        nemesis.rest()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()
    applied = cluster.converged()
    state = final_state(cluster, applied)
    history_path = os.path.join(out, "history.json")
    with open(history_path, "w") as f:
        json.dump({"history": {"appends": rec.appends, "reads": rec.reads, "status": rec.status},
                   "final": state}, f)
    acked = sum(1 for a in rec.appends if "Ok" in a["outcome"])
    print(f"history: {len(rec.appends)} appends ({acked} acknowledged), {len(rec.reads)} pages, "
          f"{len(rec.status)} status samples")
    verdict = subprocess.run([checker, history_path])
    print(f"elections caused by a rejoining node: {nemesis.rejoin}")
    failed = list(nemesis.failures)
    if verdict.returncode != 0:
        failed.append(f"check-history found violations in {history_path}")
    if args.rejoin_elections_max is not None and any(
            e > args.rejoin_elections_max for e in nemesis.rejoin):
        failed.append(f"a rejoining node caused more than {args.rejoin_elections_max} elections")
    cleanup()
    if failed:
        print("NETWORK TEST FAILED (seed %d):\n  %s" % (seed, "\n  ".join(failed)))
        sys.exit(1)
    print(f"network test passed (seed {seed})")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
