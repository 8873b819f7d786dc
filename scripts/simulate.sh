#!/usr/bin/env bash
# The simulation's seed runner, built first:
#   scripts/simulate.sh --seeds 1..1000 [--nodes 5] [--jobs J] [--safety-s S] [--fail-fast]
# One process per seed; a failure prints the seed and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/madsim-env.sh
cargo build --quiet --release -p sim-tests --bin simulate
exec "$CARGO_TARGET_DIR/release/simulate" "$@"
