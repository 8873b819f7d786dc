#!/usr/bin/env python3
"""Run README.md's walkthrough as a new user would, and compare every shown answer.

A shell block preceded by `<!-- readme-test: WHAT -->` is run, command by command, in one
shell environment (variables set by `NAME=$(...)` carry over):

  dev            against a fresh `uniqlog dev` (started here, as the README's first command)
  cluster-start  its commands start in the background (another terminal, for the reader);
                 `uniqlog dev` is stopped first, as the README says
  cluster        against what `cluster-start` started

Lines `#> ...` after a command are its expected output. Whitespace is ignored, and `...`
matches anything (ids, times, log indexes). The README's ports (7001-7003, 7101, 7102, 7201)
are replaced by free ones, in the commands, the answers and the copy of cluster.toml, so a
system already running on this machine is left alone. Exits 1 with every mismatch shown.

usage: scripts/readme_check.py BIN_DIR   (the folder holding the `uniqlog` binary)
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_PORTS = [7001, 7002, 7003, 7101, 7102, 7201]
MARKER = re.compile(r"<!--\s*readme-test:\s*([a-z-]+)\s*-->")
ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def dev_port_base():
    """A base whose +1, +101, +102 and +201 are free."""
    for _ in range(200):
        base = free_port() - 1
        if 1024 < base < 65000 - 201 and all(port_free(base + o) for o in (1, 101, 102, 201)):
            return base
    raise SystemExit("no free port base for uniqlog dev")


def substitute(text, ports):
    for old, new in ports.items():
        text = re.sub(r"(?<=:)%d\b" % old, str(new), text)
    return text


def blocks(readme):
    """(what, [(command, expected lines or None)]) for every marked shell block."""
    out, pending, lines, i = [], None, readme.split("\n"), 0
    while i < len(lines):
        m = MARKER.search(lines[i])
        if m:
            pending = m.group(1)
        elif lines[i].startswith("```sh") and pending:
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((pending, commands(body)))
            pending = None
        elif lines[i].startswith("```"):
            pending = None
        i += 1
    return out


def commands(body):
    """Commands (continuation lines joined) and the `#>` lines after each."""
    out, current = [], None
    for line in body:
        if line.startswith("#>"):
            if out:
                cmd, exp = out[-1]
                out[-1] = (cmd, (exp or []) + [line[2:].strip()])
            continue
        if current is not None:
            current += "\n" + line
            if not line.endswith("\\"):
                out.append((current, None))
                current = None
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current = line
        else:
            out.append((line, None))
    return out


def matches(expected_lines, actual):
    squash = lambda t: re.sub(r"\s+", "", t)
    pattern = ".*?".join(re.escape(part) for part in squash("\n".join(expected_lines)).split("..."))
    return re.fullmatch(pattern, squash(actual), re.DOTALL) is not None


def wait_http(url, what, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited before it served ({url})")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {timeout} s")


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Shell:
    """Commands run by bash in `cwd`, with the variables earlier commands set."""

    def __init__(self, cwd, env):
        self.cwd, self.env = cwd, env
        self.vars = os.path.join(cwd, ".readme-vars.sh")
        open(self.vars, "w").close()

    def run(self, command, timeout=120):
        script = f"source {self.vars}\n{command}"
        m = ASSIGNMENT.match(command)
        if m:
            script += f"\ndeclare -p {m.group(1)} >> {self.vars}"
        p = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr


def main():
    bin_dir = os.path.abspath(sys.argv[1])
    readme = open(os.path.join(ROOT, "README.md")).read()
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    env.pop("RUST_LOG", None)
    work = tempfile.mkdtemp(prefix="readme-check-")
    dev = up = shell = None
    ports = {}
    failures, ran = [], 0
    try:
        for what, cmds in blocks(readme):
            if what == "dev" and dev is None:
                base = dev_port_base()
                ports = {7001: base + 1, 7101: base + 101, 7102: base + 102, 7201: base + 201}
                cwd = os.path.join(work, "dev")
                os.makedirs(cwd)
                log = open(os.path.join(cwd, "dev.log"), "w")
                dev = subprocess.Popen(["uniqlog", "dev", "--port-base", str(base)], cwd=cwd,
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
                for port, path in ((base + 1, "/ready"), (base + 101, "/health"), (base + 201, "/health")):
                    wait_http(f"http://127.0.0.1:{port}{path}", "uniqlog dev", dev)
                shell = Shell(cwd, env)
            elif what == "cluster-start":
                stop(dev)
                ports = {p: free_port() for p in README_PORTS}
                cwd = os.path.join(work, "cluster")
                os.makedirs(cwd)
                with open(os.path.join(ROOT, "cluster.toml")) as f:
                    config = substitute(f.read(), ports)
                with open(os.path.join(cwd, "cluster.toml"), "w") as f:
                    f.write(config)
                shell = Shell(cwd, env)
                for command, _ in cmds:
                    out = open(os.path.join(cwd, "up.log"), "w")
                    up = subprocess.Popen(["bash", "-c", substitute(command, ports)], cwd=cwd,
                                          env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
                    ran += 1
                deadline = time.time() + 180
                while "Children that exit are started again" not in open(os.path.join(cwd, "up.log")).read():
                    if up.poll() is not None or time.time() > deadline:
                        print(open(os.path.join(cwd, "up.log")).read())
                        raise SystemExit("`cluster up` did not start everything")
                    time.sleep(0.2)
                continue
            for command, expected in cmds:
                code, stdout, stderr = shell.run(substitute(command, ports))
                ran += 1
                shown = substitute("\n".join(expected), ports).split("\n") if expected else None
                if code != 0 or (shown is not None and not matches(shown, stdout)):
                    failures.append((command, shown, code, stdout, stderr))
    finally:
        stop(dev)
        if up and up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        if not failures:
            shutil.rmtree(work, ignore_errors=True)
    for command, shown, code, stdout, stderr in failures:
        print(f"--- README command:\n{command}")
        print(f"exit code {code}")
        if shown is not None:
            print("README shows:\n  " + "\n  ".join(shown))
        print(f"got:\n{stdout}{stderr}")
    print(f"README walkthrough: {ran} commands run, {len(failures)} differ from what README shows"
          + (f" (kept {work})" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
