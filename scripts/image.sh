#!/usr/bin/env bash
# Build the container image (Dockerfile): the release binary, static (musl), then the image.
#   scripts/image.sh [TAG]           # default uniqlog:dev
# Needs the musl target (`rustup target add x86_64-unknown-linux-musl`) and a C compiler for
# it (`musl-tools`): ring builds C. Installs neither; scripts/deploy_test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-uniqlog:dev}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
TARGET=x86_64-unknown-linux-musl
cargo build --quiet --release --locked --target "$TARGET" -p node --bin uniqlog
install -m 0755 "$CARGO_TARGET_DIR/$TARGET/release/uniqlog" deploy/image/uniqlog
docker build --quiet -t "$TAG" . >/dev/null
echo "built image $TAG"
