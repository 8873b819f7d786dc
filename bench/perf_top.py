#!/usr/bin/env python3
"""Summarise `perf script --no-inline` output: each function's share of samples, inclusive
(on the stack at all) and self (the leaf). usage: perf_top.py FILE [TOP=40] [MATCH]
With MATCH, only samples whose stack holds a function containing MATCH are counted, and the
shares are of those samples (what a function spends its time in)."""
import re, sys
from collections import Counter

def samples(path):
    stack = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if stack:
                    yield stack
                stack = []
            elif line.startswith(("\t", " ")):
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    name = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].split(" (")[0])
                    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
                    stack.append(name)
    if stack:
        yield stack

def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    match = sys.argv[3] if len(sys.argv) > 3 else None
    incl, selfc, n = Counter(), Counter(), 0
    for st in samples(path):
        if match and not any(match in s for s in st):
            continue
        n += 1
        selfc[st[0]] += 1
        for s in set(st):
            incl[s] += 1
    print(f"{n} samples" + (f" with {match!r} on the stack" if match else ""))
    print("-- inclusive")
    for name, c in incl.most_common(top):
        print(f"{100 * c / n:6.1f}%  {name[:150]}")
    print("-- self")
    for name, c in selfc.most_common(top // 2):
        print(f"{100 * c / n:6.1f}%  {name[:150]}")

main()
