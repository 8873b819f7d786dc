#!/usr/bin/env bash
# Many seeds on demand, beyond what CI runs:
#   scripts/sweep.sh [SEEDS] [FROM]     (default: 20000 seeds of three nodes from 1000000,
#                                        and a fifth as many of five nodes)
# Prints one line to record in sim-tests/README.md, "Latest sweep": date, commit, seeds,
# failures. Any failure prints its replay command.
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20000}
from=${2:-1000000}
five=$((seeds / 5))
log=$(mktemp -t uniqlog-sweep.XXXXXX)
start=$SECONDS
./scripts/simulate.sh --seeds "$from..$((from + seeds))" --jobs "$(nproc)" | tee "$log" | grep -E '^(seed [0-9]+ FAIL|  replay|total)'
./scripts/simulate.sh --seeds "$from..$((from + five))" --nodes 5 --jobs "$(nproc)" | tee -a "$log" | grep -E '^(seed [0-9]+ FAIL|  replay|total)'
failed=$(grep -c '^seed [0-9]* FAIL' "$log")
echo "sweep: $(date -u +%F), commit $(git rev-parse --short HEAD), ${seeds} seeds of 3 nodes and ${five} of 5 from ${from}, ${failed} failed, $(( (SECONDS - start) / 60 )) min on $(nproc) cores (log: $log)"
[ "$failed" = 0 ]
