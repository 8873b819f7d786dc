#!/usr/bin/env bash
# The whole test suite: what CI runs and what a newcomer runs. Installs what it needs itself.
# Prints each stage's time so the CI budget (90 min on 2 cores) stays visible.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
# Normal builds share one target dir; the madsim build has its own so neither rebuilds the other.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
MADSIM_TARGET_DIR="${MADSIM_TARGET_DIR:-$PWD/target-madsim}"

declare -a SUMMARY=()
stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "=== stage: $name"
  "$@"
  local took=$((SECONDS - start))
  SUMMARY+=("$(printf '%-28s %5ds' "$name" "$took")")
  echo "=== stage: $name done in ${took}s"
}

install_tools() {
  command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
  cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
  # The SMTP test talks to Python's aiosmtpd.
  python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
  # The metrics tests parse /metrics with the reference OpenMetrics parser.
  python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check prometheus-client==0.23.1
  # The dashboard test drives Debian's headless Chromium over the DevTools protocol.
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  command -v chromium >/dev/null || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
  # The README walkthrough uses curl and jq, as its readers do.
  { command -v jq && command -v curl; } >/dev/null || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq curl; }
  python3 -c 'import websocket' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check websocket-client==1.8.0
  # The network test makes namespaces, veth pairs and tc filters.
  { command -v ip && command -v tc; } >/dev/null || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2; }
}

build() {
  cargo build --workspace --all-targets
}

# The crates' layering (ARCHITECTURE.md, docs/decisions/0042): the contract links no Raft
# and no storage, and the consumers reach nodes only over HTTP.
crate_layering() {
  local bad=0
  for spec in "api:raft-store openraft redb" "consumers:raft-store openraft"; do
    local crate=${spec%%:*}
    for dep in ${spec#*:}; do
      if cargo tree -p "$crate" -e normal --prefix none | grep -q "^$dep v"; then
        echo "$crate links $dep"; bad=1
      fi
    done
  done
  return $bad
}

unit_and_integration() {
  cargo nextest run --workspace --no-fail-fast
}

# README's walkthrough, run as written against a fresh `uniqlog dev` and a `cluster up`, every
# shown answer compared with the real one.
readme_walkthrough() {
  python3 scripts/readme_check.py "$CARGO_TARGET_DIR/debug"
}

# schemathesis (from PyPI, into a venv under the target dir) against a live node and query process.
schemathesis() {
  ./scripts/schemathesis.sh "$CARGO_TARGET_DIR/debug/uniqlog"
}

# The `otlp` feature: spans exported to a stand-in collector. Rebuilds only the node crate.
otlp_feature() {
  cargo nextest run -p node --features otlp --test otlp --no-fail-fast
}

# Three real nodes, each in its own network namespace, under partitions (isolated leader,
# minority, bridge, flapping), packet loss, delay and SIGKILL, clients on every node; their
# history judged by the simulator's own checkers (scripts/jepsen/run.py), and a cut-off
# follower's return must cause no election (PreVote). Needs root.
network_faults() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo python3 scripts/jepsen/run.py --rounds "${NETWORK_ROUNDS:-2}" --rejoin-elections-max 0 \
    --bin "$CARGO_TARGET_DIR/debug/uniqlog" --check "$CARGO_TARGET_DIR/debug/check-history"
}

# The shipped deployment files, offline: the systemd units pass `systemd-analyze verify` and
# stay at a low exposure (`security`), the Kubernetes manifests validate against the 1.31
# schemas (kubernetes-validate from PyPI, in a venv under the target dir).
deploy_manifests() {
  local dir; dir=$(mktemp -d)
  for f in deploy/systemd/*.service; do
    sed "s#/usr/local/bin/uniqlog#$CARGO_TARGET_DIR/debug/uniqlog#" "$f" > "$dir/$(basename "$f")"
  done
  systemd-analyze verify "$dir"/*.service
  for f in "$dir"/*.service; do
    systemd-analyze security --offline=yes --threshold=20 "$f" >/dev/null \
      || { systemd-analyze security --offline=yes "$f" | tail -1; return 1; }
  done
  rm -rf "$dir"
  local venv="$CARGO_TARGET_DIR/k8s-venv"
  [ -x "$venv/bin/kubernetes-validate" ] || {
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0; }
  "$venv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 deploy/kubernetes/*.yaml
}

# The compose cluster from the image, as an operator runs it (scripts/deploy_test.py): Docker
# and docker-compose from Debian's packages and the musl target, installed when missing; the
# Docker daemon started here when none runs, and stopped after.
deployment() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  { command -v dockerd && command -v docker-compose && command -v musl-gcc; } >/dev/null \
    || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose musl-tools; }
  rustup target list --installed | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
  # Debian's client beside Debian's daemon (a newer client may be first on PATH).
  [ -x /usr/bin/docker ] && export PATH="/usr/bin:$PATH"
  local dockerd_pid=""
  if ! $sudo docker info >/dev/null 2>&1; then
    $sudo dockerd >"$CARGO_TARGET_DIR/dockerd.log" 2>&1 &
    dockerd_pid=$!
    local i
    for i in $(seq 120); do $sudo docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  local tag="uniqlog:test-$$" rc=0
  { ./scripts/image.sh "$tag" && $sudo python3 scripts/deploy_test.py --image "$tag"; } || rc=$?
  $sudo docker rmi "$tag" >/dev/null 2>&1 || true
  if [ -n "$dockerd_pid" ]; then $sudo kill "$dockerd_pid"; wait "$dockerd_pid" || true; fi
  return $rc
}

# The madsim build: optimised, with debug assertions on (scripts/madsim-env.sh).
simulation_build() {
  ( export MADSIM_TARGET_DIR; source scripts/madsim-env.sh
    cargo build --release -p sim-tests --all-targets )
}

simulation_tests() {
  ( export MADSIM_TARGET_DIR; source scripts/madsim-env.sh
    cargo nextest run --release -p sim-tests --no-fail-fast )
}

# SIM_SEEDS whole runs of 3 nodes and SIM_SEEDS_5 of 5 nodes, one process each. Every
# hundredth seed runs twice and must trace the same (the runner's --twice-every).
simulation_seeds() {
  MADSIM_TARGET_DIR="$MADSIM_TARGET_DIR" ./scripts/simulate.sh --seeds "1..$((${SIM_SEEDS:-2000} + 1))" --jobs 2
  MADSIM_TARGET_DIR="$MADSIM_TARGET_DIR" ./scripts/simulate.sh --seeds "1..$((${SIM_SEEDS_5:-500} + 1))" --nodes 5 --jobs 2
}

# Seeds of this commit only: a range that starts where the commit's hash says, so each commit
# explores seeds no earlier one ran. The runner prints the range and every failure's replay
# command; the fixed seeds above stay, so a commit is also judged on known ground.
simulation_moving_seeds() {
  local rev; rev=$(git rev-parse HEAD 2>/dev/null | cut -c1-7) || true
  [ -n "$rev" ] || rev=$(printf '%x' "$(date +%s)")
  local from=$(( 100000 + (16#$rev % 10000000) * 10 ))
  echo "moving seeds of ${rev}: from ${from}"
  MADSIM_TARGET_DIR="$MADSIM_TARGET_DIR" ./scripts/simulate.sh --seeds "$from..$((from + ${SIM_MOVING_SEEDS:-3000}))" --jobs 2
  MADSIM_TARGET_DIR="$MADSIM_TARGET_DIR" ./scripts/simulate.sh --seeds "$from..$((from + ${SIM_MOVING_SEEDS_5:-1000}))" --nodes 5 --jobs 2
}

stage "install tools" install_tools
stage "build" build
stage "crate layering" crate_layering
stage "unit + integration tests" unit_and_integration
stage "README walkthrough" readme_walkthrough
stage "schemathesis (node + query API)" schemathesis
stage "otlp feature" otlp_feature
stage "network faults (namespaces)" network_faults
stage "deployment files (systemd, k8s)" deploy_manifests
stage "deployment (compose, docker)" deployment
if [ -n "$(ls sim-tests/tests/*.rs 2>/dev/null)" ]; then
  stage "simulation build (madsim)" simulation_build
  stage "simulation tests" simulation_tests
  stage "simulation seeds" simulation_seeds
  stage "simulation seeds (moving)" simulation_moving_seeds
fi

echo "=== timings"
for line in "${SUMMARY[@]}"; do echo "$line"; done
