"""Network namespaces for the network test between real processes (scripts/jepsen/run.py).

The kernel of these machines has no netem, so faults are made from what it has:

- every node lives in its own namespace, joined to a hub namespace by a veth pair; the hub
  routes between them (no bridge), so every packet from node i to node j leaves the hub
  through j's veth;
- drops (partitions, random loss) are a classic-BPF program in direct-action mode on the egress
  of each hub-side veth: it matches the packet's source address (which node sent it) and
  returns TC_ACT_SHOT, or draws the kernel's random number for a share of loss;
- delay is a user-space relay: policy routing sends forwarded packets from a node into a TUN
  device, a relay process holds each packet for its delay and writes it back, and the kernel
  routes it on. Packets to the hub itself (the test's clients) are delivered before the
  policy rule is read, so clients are never delayed or dropped.

Everything is named with a tag taken from the test's pid, and `Net.remove` (also called from
`atexit` and on SIGTERM by the runner) deletes every namespace, which takes their links and
processes' sockets with them. Addresses are 10.177.0.0/16, which exist only inside these
namespaces.
"""

import ctypes
import heapq
import os
import random
import select
import struct
import subprocess
import sys
import time

PREFIX = "ulj"
CLONE_NEWNET = 0x40000000

# Classic BPF opcodes (linux/bpf_common.h) and the tc verdicts a direct-action program returns.
LD_H_ABS, LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x28, 0x20, 0x15, 0x35, 0x06
SKF_AD_RANDOM = 0xFFFFF000 + 56
TC_ACT_OK, TC_ACT_SHOT = 0, 2
ETH_P_IP = 0x0800
SRC_IP_OFFSET = 14 + 12  # Ethernet header, then the IPv4 header's source address


def sh(*args, check=True, quiet=False):
    """Run one command; its output is shown only when it fails."""
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    if not quiet and r.returncode != 0:
        print(f"(ignored) {' '.join(args)}: {r.stderr.strip()}", file=sys.stderr)
    return r


def ip_u32(addr):
    return struct.unpack("!I", bytes(int(p) for p in addr.split(".")))[0]


def drop_program(blocked, loss, peers):
    """The classic-BPF bytecode (tc's `bytecode` syntax) of one veth's egress filter: drop
    IPv4 packets from any address in `blocked`; drop a `loss` share of those from `peers`;
    pass everything else (ARP, the clients' traffic)."""
    # (code, jump-if-true, jump-if-false, k); jumps name a label, "next" falls through.
    prog = []
    prog.append((LD_H_ABS, None, None, 12))
    prog.append((JEQ_K, "next", "pass", ETH_P_IP))
    prog.append((LD_W_ABS, None, None, SRC_IP_OFFSET))
    for a in sorted(blocked):
        prog.append((JEQ_K, "drop", "next", ip_u32(a)))
    if loss > 0:
        for a in sorted(peers):
            prog.append((JEQ_K, "lossy", "next", ip_u32(a)))
        prog.append((RET_K, None, None, TC_ACT_OK))
        prog.append(("label", "lossy"))
        prog.append((LD_W_ABS, None, None, SKF_AD_RANDOM))
        prog.append((JGE_K, "pass", "drop", int(loss * 0xFFFFFFFF)))
    prog.append(("label", "pass"))
    prog.append((RET_K, None, None, TC_ACT_OK))
    prog.append(("label", "drop"))
    prog.append((RET_K, None, None, TC_ACT_SHOT))
    # Resolve labels into relative jumps.
    labels, out = {}, []
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = len(out)
        else:
            out.append(ins)
    code = []
    for i, (op, jt, jf, k) in enumerate(out):
        def rel(target):
            if target is None or target == "next":
                return 0
            d = labels[target] - (i + 1)
            assert 0 <= d < 256, "BPF jumps go forward"
            return d
        code.append(f"{op} {rel(jt)} {rel(jf)} {k}")
    return f"{len(code)}," + ",".join(code)


def enter(ns):
    """Move the calling thread (call it before starting any) into namespace `ns`; threads and
    processes started afterwards are in it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    os.close(fd)


class Net:
    """A hub namespace and `n` node namespaces; node i (1-based) has address 10.177.i.2."""

    def __init__(self, n, tag=None):
        self.n = n
        self.tag = tag or f"{os.getpid() % 100000:05d}"
        self.hub = f"{PREFIX}{self.tag}h"
        self.blocked = {i: set() for i in range(1, n + 1)}  # node -> nodes it hears nothing from
        self.loss = 0.0
        self.delayed = False
        self.relay = None

    def ns(self, i):
        return f"{PREFIX}{self.tag}n{i}"

    def addr(self, i):
        return f"10.177.{i}.2"

    def hub_addr(self, i):
        return f"10.177.{i}.1"

    def veth(self, i):
        return f"{PREFIX}{self.tag}v{i}"

    def tun(self):
        return f"{PREFIX}{self.tag}t"

    def create(self):
        sh("ip", "netns", "add", self.hub)
        hub = ["ip", "-n", self.hub]
        sh(*hub, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i in range(1, self.n + 1):
            ns, v = self.ns(i), self.veth(i)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", v, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", self.hub_addr(i))
            sh(*hub, "addr", "add", f"{self.hub_addr(i)}/24", "dev", v)
            sh(*hub, "link", "set", v, "up")
            sh("ip", "netns", "exec", self.hub, "tc", "qdisc", "add", "dev", v, "clsact")
        # The delay relay's device; the policy rules that feed it are added by `delay`.
        sh(*hub, "tuntap", "add", "dev", self.tun(), "mode", "tun")
        sh(*hub, "link", "set", self.tun(), "up")
        for key in ("all", "default", self.tun()):
            sh("ip", "netns", "exec", self.hub, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        sh(*hub, "route", "add", "default", "dev", self.tun(), "table", "177")
        self.apply()

    def remove(self):
        """Delete every namespace of this tag (their links go with them) and stop the relay.
        Node processes are the runner's to kill; a namespace outlives its name only while a
        process is still in it."""
        if self.relay and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait()
        for ns in [self.ns(i) for i in range(1, self.n + 1)] + [self.hub]:
            sh("ip", "netns", "del", ns, check=False, quiet=True)

    @staticmethod
    def remove_stale():
        """Namespaces left by an earlier run that died without cleaning up (its pid is gone)."""
        out = sh("ip", "netns", "list", check=False, quiet=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX) and len(name) > len(PREFIX) + 5:
                for pid in sh("ip", "netns", "pids", name, check=False, quiet=True).stdout.split():
                    sh("kill", "-9", pid, check=False, quiet=True)
                sh("ip", "netns", "del", name, check=False, quiet=True)

    # ---- faults ---------------------------------------------------------------------------

    def apply(self):
        """Install each node's current drop program on its hub-side veth."""
        peers = {self.addr(i) for i in range(1, self.n + 1)}
        for j in range(1, self.n + 1):
            blocked = {self.addr(i) for i in self.blocked[j]}
            prog = drop_program(blocked, self.loss, peers - {self.addr(j)})
            tc = ["ip", "netns", "exec", self.hub, "tc", "filter"]
            sh(*tc, "del", "dev", self.veth(j), "egress", check=False, quiet=True)
            sh(*tc, "add", "dev", self.veth(j), "egress", "bpf", "da", "bytecode", prog)

    def partition(self, *groups):
        """Nodes in different groups hear nothing from each other; a node in no group is cut
        off from all. `partition()` heals."""
        where = {i: g for g, members in enumerate(groups) for i in members}
        for j in range(1, self.n + 1):
            self.blocked[j] = {
                i for i in range(1, self.n + 1)
                if i != j and (j not in where or i not in where or where[i] != where[j])
            } if groups else set()
        self.apply()

    def bridge(self, a, b):
        """Groups `a` and `b` cannot hear each other; a node in neither hears and is heard by
        both (the bridge)."""
        for j in range(1, self.n + 1):
            self.blocked[j] = set()
        for x in a:
            for y in b:
                self.blocked[x].add(y)
                self.blocked[y].add(x)
        self.apply()

    def heal(self):
        self.partition()

    def set_loss(self, share):
        self.loss = share
        self.apply()

    def delay(self, on):
        """Route node-to-node packets through the relay (its delay is fixed when it starts)."""
        if on == self.delayed:
            return
        verb = "add" if on else "del"
        for i in range(1, self.n + 1):
            sh("ip", "-n", self.hub, "rule", verb, "iif", self.veth(i), "table", "177",
               check=on)
        self.delayed = on

    def start_relay(self, delay_ms, jitter_ms):
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", self.hub, sys.executable, os.path.abspath(__file__), "relay",
             self.tun(), str(delay_ms), str(jitter_ms)],
        )


def relay(tun, delay_ms, jitter_ms):
    """Hold every packet read from `tun` for delay ± jitter ms, then write it back (so the
    kernel routes it on). Packets may overtake each other, as on a real network."""
    import fcntl

    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
    held = []  # (due, seq, packet)
    seq = 0
    rng = random.Random(os.getpid())
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            os.write(fd, heapq.heappop(held)[2])
        timeout = max(0.0, held[0][0] - now) if held else 1.0
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            packet = os.read(fd, 65535)
            due = time.monotonic() + max(0, delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000
            seq += 1
            heapq.heappush(held, (due, seq, packet))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "relay":
        relay(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: net.py relay TUN DELAY_MS JITTER_MS (started by Net.start_relay)")
