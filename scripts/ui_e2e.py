#!/usr/bin/env python3
"""Drive the dashboard in headless Chromium over the DevTools protocol, as a user would:
see the cluster (three nodes, one leader), open the `users` topic with a live tail, sign a
user up through the API and see the event arrive, look up the email's owner, and see the
`query` consumer's lag fall to 0. Exits non-zero, saying what it waited for, on failure.

usage: ui_e2e.py --base http://127.0.0.1:PORT --chromium PATH [--token T] [--screenshots DIR]
With --token (a cluster with auth on), it signs in through the page's form first.
Needs websocket-client (scripts/test.sh installs it). Run by node/tests/ui.rs."""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, ws_url):
        # No Origin header: Chromium 111+ refuses DevTools WebSockets from other origins.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, what, expression, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.2)
        error = self.eval("document.querySelector('#error')?.textContent")
        raise SystemExit(f"timed out after {timeout} s waiting for {what} (page error: {error!r})")

    def screenshot(self, directory, name):
        if not directory:
            return
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(os.path.join(directory, name), "wb") as f:
            f.write(base64.b64decode(data))


def post_json(url, body, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.status, json.loads(resp.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--screenshots")
    ap.add_argument("--token")
    args = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="uniqlog-ui-")
    # Port 0: Chromium picks a free one and writes it to DevToolsActivePort in the profile.
    chrome = subprocess.Popen(
        [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1280,860", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        targets = None
        port = None
        while time.time() < deadline:
            try:
                if port is None:
                    with open(os.path.join(profile, "DevToolsActivePort")) as f:
                        port = int(f.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if targets:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        if not targets:
            raise SystemExit("chromium did not open its DevTools endpoint")
        page = Page(targets[0]["webSocketDebuggerUrl"])
        page.call("Page.enable")
        # Navigated again until it loads: a first try can meet a node still starting.
        deadline = time.time() + 30
        while True:
            page.call("Page.navigate", url=args.base + "/ui#cluster")
            try:
                page.wait("the page", "document.readyState === 'complete' && typeof state === 'object'", timeout=3)
                break
            except (SystemExit, RuntimeError):
                if time.time() > deadline:
                    raise
        if args.token:
            # Auth on: the page asks for a token and shows nothing before it.
            page.wait("the sign-in form", "!document.querySelector('#login').hidden")
            page.eval(f"document.querySelector('#token').value = {json.dumps(args.token)}")
            page.eval("document.querySelector('#login button').click()")
            page.wait("the form to go", "document.querySelector('#login').hidden")

        # The cluster: three nodes, one leader.
        page.wait("three nodes and one leader in the cluster table",
                  "document.querySelectorAll('#cluster-table tbody tr').length === 3 && "
                  "document.querySelectorAll('#cluster-table tbody tr[data-role=leader]').length === 1 && "
                  "[...document.querySelectorAll('#cluster-table tbody td')].some(td => td.textContent === 'ready')")
        if args.screenshots:
            # Enough samples for the charts to draw a line.
            page.wait("a minute of metrics", "state.metrics.length >= 30", timeout=90)
        page.screenshot(args.screenshots, "ui-cluster.png")

        # The users topic, tailed live; a sign-up through the API shows up in the tail.
        page.eval("location.hash = 'topics'")
        page.wait("the users topic", "!!document.querySelector('#topics-table tr[data-topic=users]')")
        page.eval("document.querySelector('#topics-table tr[data-topic=users]').click()")
        page.wait("the topic browser", "!document.querySelector('#browser').hidden && "
                  "document.querySelectorAll('#events li').length > 0")
        page.eval("document.querySelector('#tail-toggle').click()")
        page.wait("the live tail to connect", "state.tail !== null && state.tail.readyState === 1")
        email = f"dash-{int(time.time() * 1000)}@example.com"
        status, body = post_json(args.base + "/v1/users",
                                 {"username": "dash", "email": email, "password": "correct horse"},
                                 args.token)
        if status != 201:
            raise SystemExit(f"sign-up answered {status}: {body}")
        page.wait("the sign-up in the live tail",
                  f"document.querySelector('#tail-list').textContent.includes({json.dumps(email)})")
        page.eval(f"[...document.querySelectorAll('#tail-list li')].find(li => li.textContent.includes({json.dumps(email)})).click()")
        page.wait("the event's details", f"document.querySelector('#event-detail').textContent.includes({json.dumps(email)})")
        detail = page.eval("document.querySelector('#event-detail').textContent")
        if "password" in detail:
            raise SystemExit(f"the event's details show a password: {detail}")
        page.screenshot(args.screenshots, "ui-topics.png")

        # The email's owner, looked up with another spelling (keys are normalized).
        page.eval("location.hash = 'uniq'")
        page.wait("the uniq sets", "[...document.querySelectorAll('#uniq-set option')].some(o => o.value === 'user_email')")
        page.wait("the set's key count",
                  "Number(document.querySelector('#sets-table tr[data-set=user_email] td.keys').textContent) >= 2")
        page.eval("document.querySelector('#uniq-set').value = 'user_email'")
        page.eval(f"document.querySelector('#uniq-key').value = {json.dumps(email.upper())}")
        page.eval("document.querySelector('#uniq-form button').click()")
        owner = page.wait("the email's owner", "document.querySelector('#uniq-owner').dataset.owner")
        if body["id"] not in owner:
            raise SystemExit(f"the owner shown is {owner!r}, not the account {body['id']}")
        shown = page.eval("document.querySelector('#uniq-owner').textContent")
        if not shown.startswith(email.lower() + ":"):
            raise SystemExit(f"the lookup shows {shown!r}, not the normalized key {email.lower()!r}")
        page.wait("the owner's history", "document.querySelectorAll('#uniq-history tbody tr').length >= 1")
        page.screenshot(args.screenshots, "ui-uniq.png")

        # The query consumer catches up: its lag falls to 0.
        page.eval("location.hash = 'consumers'")
        page.wait("the query consumer at lag 0",
                  "(() => { const r = document.querySelector('#consumers-table tr[data-consumer=query]'); "
                  "return !!r && r.querySelector('td.lag').textContent === '0'; })()", timeout=60)
        page.screenshot(args.screenshots, "ui-consumers.png")

        # The append-rate chart counted the sign-up this page saw (from /metrics).
        page.wait("the append rate to show the sign-up",
                  "state.metrics.length > 1 && "
                  "state.metrics[state.metrics.length - 1].appends > state.metrics[0].appends && "
                  "document.querySelector('#chart-rate polyline') !== null")
        print("dashboard: cluster, live tail, owner lookup and consumer lag all seen")
    finally:
        chrome.terminate()
        try:
            chrome.wait(10)
        except subprocess.TimeoutExpired:
            chrome.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
