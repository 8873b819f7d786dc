#!/usr/bin/env python3
"""The deployment test: the compose cluster of deploy/compose/, from the image scripts/image.sh
builds, as an operator runs it.

  python3 scripts/deploy_test.py --image TAG

Brings the cluster up (TLS and tokens on, certificates made by its `certs` service), signs a
user up and appends through the nodes, `docker kill`s the leader's container, sees a new
leader and every acknowledged write still there, starts the killed container again and sees
it catch up, then `docker-compose down -v`. Every container, network and volume it made is
removed, also on failure. Needs Docker and docker-compose (scripts/test.sh installs them).
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = os.path.join(ROOT, "deploy", "compose", "docker-compose.yml")
NODES = ["node1", "node2", "node3"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[deploy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deployment:
    def __init__(self, image):
        self.project = f"uniqlogdeploy{os.getpid()}"
        self.ports = {n: free_port() for n in NODES + ["query", "sink"]}
        self.env = dict(os.environ, UNIQLOG_IMAGE=image)
        for n in NODES:
            self.env[f"UNIQLOG_{n.upper()}_PORT"] = str(self.ports[n])
        self.env["UNIQLOG_QUERY_PORT"] = str(self.ports["query"])
        self.env["UNIQLOG_SINK_PORT"] = str(self.ports["sink"])
        self.dir = tempfile.mkdtemp(prefix="uniqlog-deploy-")
        self.ctx = None
        self.token = None

    def compose(self, *args, check=True, capture=False):
        cmd = ["docker-compose", "-p", self.project, "-f", COMPOSE, *args]
        r = subprocess.run(cmd, env=self.env, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.STDOUT if capture else None)
        if check and r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}){': ' + r.stdout if capture else ''}")
        return r

    def container(self, service):
        out = self.compose("ps", "-q", service, capture=True).stdout.strip()
        if not out:
            raise SystemExit(f"no container for {service}")
        return out.splitlines()[0]

    def copy_out(self, path):
        """A file of the certs volume, through node1's container."""
        dest = os.path.join(self.dir, os.path.basename(path))
        subprocess.run(["docker", "cp", f"{self.container('node1')}:{path}", dest], check=True)
        return dest

    def url(self, service, path):
        scheme = "http" if service == "sink" else "https"
        return f"{scheme}://localhost:{self.ports[service]}{path}"

    def call(self, service, method, path, body=None, timeout=10):
        """(status, parsed JSON or text); (None, why) when there is no HTTP answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(service, path), data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token and service != "sink":
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            ctx = self.ctx if service != "sink" else None
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                raw = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read().decode(), e.code
        except (urllib.error.URLError, OSError) as e:
            return None, str(e)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def wait(self, what, f, timeout=120):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = f()
            if last and last[0]:
                return last[1]
            time.sleep(0.5)
        raise SystemExit(f"timed out waiting for {what}; last: {last}")

    def status(self, node):
        s, b = self.call(node, "GET", "/v1/cluster/status", timeout=3)
        return b if s == 200 else None

    def leader(self, after_term=-1):
        """(leader, term) that two or more answering nodes agree on, in a term past
        `after_term`."""
        seen = [s for s in (self.status(n) for n in NODES) if s is not None]
        views = {(s["leader"], s["term"]) for s in seen}
        if len(seen) >= 2 and len(views) == 1:
            lead, term = views.pop()
            if lead is not None and term > after_term:
                return (True, (f"node{lead}", term))
        return (False, seen)

    def append(self, node, topic, i):
        body = {"events": [{"type": "Deployed", "data": {"i": i}}]}
        s, b = self.call(node, "POST", f"/v1/topics/{topic}/events", body)
        return s == 201, b

    def read_all(self, node, topic):
        events, offset = [], 0
        while True:
            s, b = self.call(node, "GET", f"/v1/topics/{topic}/events?from={offset}&limit=1000&consistency=linearizable")
            if s != 200:
                raise SystemExit(f"reading {topic} from {node}: {s} {b}")
            events += b["events"]
            if not b["events"]:
                return events
            offset = b["next_offset"]


def run(image):
    d = Deployment(image)
    started = time.time()
    try:
        log(f"project {d.project}, ports {d.ports}")
        d.compose("up", "-d")
        # TLS and tokens from the certs volume, as an operator takes them.
        d.ctx = ssl.create_default_context(cafile=d.copy_out("/certs/ca.pem"))
        with open(d.copy_out("/certs/admin.token")) as f:
            d.token = f.read().strip()
        for n in NODES:
            d.wait(f"{n} ready", lambda n=n: (d.call(n, "GET", "/ready", timeout=3)[0] == 200, None))
        leader, term = d.wait("one leader", d.leader)
        log(f"serving; leader {leader} in term {term}; up in {time.time() - started:.0f}s")

        # Without a token: refused. TLS is the only way in.
        saved, d.token = d.token, None
        s, _ = d.call("node1", "POST", "/v1/topics/deploy/events", {"events": [{"type": "x", "data": {}}]})
        assert s == 401, f"an append without a token answered {s}"
        d.token = saved
        plain = urllib.request.Request(f"http://localhost:{d.ports['node1']}/ready")
        try:
            urllib.request.urlopen(plain, timeout=3)
            raise SystemExit("node1 answered plain HTTP")
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            pass

        # A sign-up (anonymous, as the shipped config allows) and its effects.
        saved, d.token = d.token, None
        s, user = d.call("node2", "POST", "/v1/users",
                         {"username": "ada", "email": "ada@example.com", "password": "correct horse"})
        assert s == 201, f"sign-up: {s} {user}"
        s, dup = d.call("node3", "POST", "/v1/users",
                        {"username": "ada2", "email": "ADA@example.com", "password": "correct horse"})
        assert s == 409, f"a second account for one email: {s} {dup}"
        d.token = saved
        d.wait("the read model", lambda: (d.call("query", "GET", f"/v1/users/{user['id']}?min_offset={user['offset']}")[0] == 200, None))
        def messages():
            s, b = d.call("sink", "GET", "/messages?count=1&wait_ms=2000")
            return (s == 200 and bool(b["messages"]), b["messages"] if s == 200 else b)
        mail = d.wait("the activation email", messages)
        assert mail[0]["to"] == "ada@example.com", mail

        acked = []
        for i in range(30):
            ok, b = d.append(NODES[i % 3], "deploy", i)
            assert ok, f"append {i}: {b}"
            acked.append(i)

        # The leader's container dies.
        log(f"docker kill {leader}")
        killed = d.container(leader)
        subprocess.run(["docker", "kill", killed], check=True, stdout=subprocess.DEVNULL)
        others = [n for n in NODES if n != leader]
        # `restart: unless-stopped` may bring it back at once; either way a new term begins.
        new, new_term = d.wait("a new leader", lambda: d.leader(after_term=term))
        log(f"new leader {new} in term {new_term}")
        for i in range(30, 60):
            ok, b = d.append(others[i % 2], "deploy", i)
            assert ok, f"append {i} with {leader} down: {b}"
            acked.append(i)
        for n in others:
            got = [e["data"]["i"] for e in d.read_all(n, "deploy")]
            assert got == acked, f"{n} holds {got}, acknowledged {acked}"

        # Back, and caught up.
        # `restart: unless-stopped` may have started it already.
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", killed],
                               capture_output=True, text=True).stdout.strip()
        if state != "true":
            subprocess.run(["docker", "start", killed], check=True, stdout=subprocess.DEVNULL)
        d.wait(f"{leader} ready again", lambda: (d.call(leader, "GET", "/ready", timeout=3)[0] == 200, None))
        got = [e["data"]["i"] for e in d.read_all(leader, "deploy")]
        assert got == acked, f"{leader} after its restart holds {got}"
        final, _ = d.wait("one leader", d.leader)
        users = [e["stream"] for e in d.read_all(leader, "users")]
        assert users and users[0] == f"user-{user['id']}", users
        log(f"{leader} caught up ({len(acked)} events); leader {final}; in {time.time() - started:.0f}s")
    except BaseException:
        for service in NODES + ["query", "mail", "certs"]:
            print(f"--- logs of {service}", flush=True)
            d.compose("logs", "--no-color", "--tail", "60", service, check=False)
        raise
    finally:
        d.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
        shutil.rmtree(d.dir, ignore_errors=True)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={d.project}"],
                              capture_output=True, text=True).stdout.strip()
        if left:
            subprocess.run(["docker", "rm", "-f", *left.split()], check=False)
            raise SystemExit(f"containers of {d.project} were left: {left}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    args = ap.parse_args()
    run(args.image)
    print("deploy test: ok")


if __name__ == "__main__":
    main()
