#!/usr/bin/env bash
# schemathesis against a live one-node cluster, from the node's own /openapi.json: no 5xx, every
# status and content type documented, every body matching its schema.
# usage: scripts/schemathesis.sh [UNIQLOG_BINARY]    (default target/debug/uniqlog)
# Knobs: ST_MAX_EXAMPLES (examples per operation, default 60), ST_VENV (where schemathesis is
# installed, default target/schemathesis-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-$PWD/target}/debug/uniqlog}
VENV=${ST_VENV:-${CARGO_TARGET_DIR:-$PWD/target}/schemathesis-venv}
ST_VERSION=4.32.5

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

DIR=$(mktemp -d)
NODE_PID=
cleanup() {
  if [ -n "$NODE_PID" ]; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
# Long-polls are bounded short so generated waits do not stall the run; password hashing is
# cheap. The shipped uniq rules apply, so sign-ups and appends to `users` meet them.
{
  printf '[[node]]\nid = 1\naddr = "%s"\ndata_dir = "node1"\n\n' "$ADDR"
  printf '[limits]\nwait_ms_max = 200\n\n'
  cat node/tests/common/user_email_rules.toml
  printf '\n[users]\nactivation_secret = "schemathesis"\npassword_memory_kib = 64\npassword_iterations = 1\n'
} > "$DIR/cluster.toml"

"$BIN" node --config "$DIR/cluster.toml" --id 1 > "$DIR/node.log" 2>&1 &
NODE_PID=$!
answers() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
for _ in $(seq 100); do answers "http://$ADDR/health" && break; sleep 0.1; done
"$BIN" cluster init --config "$DIR/cluster.toml" >/dev/null
for _ in $(seq 100); do answers "http://$ADDR/ready" && break; sleep 0.1; done

# Left out, each for a reason:
# - cluster init, learners and membership change the cluster under test (a learner that does
#   not exist, a voter set without this node): the cluster tests cover them;
# - the event stream never ends by design, so a client that waits for the end of the body
#   would wait forever; `node/tests/log_api.rs` covers it.
status=0
"$VENV/bin/schemathesis" run "http://$ADDR/openapi.json" \
  --url "http://$ADDR" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /v1/cluster/init \
  --exclude-path /v1/cluster/learners \
  --exclude-path /v1/cluster/membership \
  --exclude-path '/v1/topics/{topic}/stream' \
  --max-examples "${ST_MAX_EXAMPLES:-60}" \
  --request-timeout 10 \
  --seed 1 \
  --no-color || status=$?
if ! kill -0 "$NODE_PID" 2>/dev/null; then
  echo "the node died during the run; its log:"; tail -50 "$DIR/node.log"; exit 1
fi
if [ "$status" -ne 0 ]; then tail -30 "$DIR/node.log"; fi
exit "$status"
