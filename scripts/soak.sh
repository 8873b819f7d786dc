#!/usr/bin/env bash
# A soak of the three-node cluster with its consumers: scripts/soak.sh MINUTES [options]
# (scripts/soak.py has them). Builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet --release -p node --bin uniqlog
exec python3 scripts/soak.py "$@" --bin "$CARGO_TARGET_DIR/release/uniqlog"
