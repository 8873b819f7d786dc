#!/usr/bin/env bash
# schemathesis against a live one-node cluster and a `uniqlog query` process, each from its own
# /openapi.json: no 5xx, every status and content type documented, every body matching its
# schema, and both processes still up at the end.
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
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  [ -n "${ST_KEEP:-}" ] && echo "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ADDR=127.0.0.1:$(free_port)
QADDR=127.0.0.1:$(free_port)
# Long-polls are bounded (2 s, what the query consumer asks for) so generated waits do not
# stall the run; password hashing is cheap. The shipped uniq rules apply, so sign-ups and
# appends to `users` meet them.
{
  printf '[[node]]\nid = 1\naddr = "%s"\ndata_dir = "node1"\n\n' "$ADDR"
  printf '[limits]\nwait_ms_max = 2000\n\n'
  cat node/tests/common/user_email_rules.toml
  printf '\n[users]\nactivation_secret = "schemathesis"\npassword_memory_kib = 64\npassword_iterations = 1\n'
  printf '\n[query]\nlisten = "%s"\ndata_dir = "query"\nmin_offset_wait_ms_max = 200\n' "$QADDR"
} > "$DIR/cluster.toml"

"$BIN" node --config "$DIR/cluster.toml" --id 1 > "$DIR/node.log" 2>&1 &
PIDS+=($!)
answers() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
# Wait up to 10 s for URL to answer 2xx, or stop with the process's log.
await() {
  local url=$1 log=$2
  for _ in $(seq 100); do answers "$url" && return 0; sleep 0.1; done
  echo "$url did not answer in 10 s; $log ends:"; tail -n 30 "$log"; exit 1
}
await "http://$ADDR/health" "$DIR/node.log"
"$BIN" cluster init --config "$DIR/cluster.toml" >/dev/null
await "http://$ADDR/ready" "$DIR/node.log"

# One account, so the query API has a user and offset 0 of `users` exists.
python3 - "http://$ADDR/v1/users" <<'PY'
import json, sys, urllib.request
body = json.dumps({"username": "ann", "email": "ann@example.com", "password": "correct horse"}).encode()
req = urllib.request.Request(sys.argv[1], data=body, headers={"content-type": "application/json"})
assert urllib.request.urlopen(req, timeout=10).status == 201
PY
"$BIN" query --config "$DIR/cluster.toml" > "$DIR/query.log" 2>&1 &
PIDS+=($!)
await "http://$QADDR/health" "$DIR/query.log"

run() {
  local name=$1 config=$2; shift 2
  echo "=== schemathesis: $name"
  # In the temporary dir: schemathesis keeps its cache in the working directory.
  (cd "$DIR" && "$VENV/bin/schemathesis" --config-file "$config" run "$@" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${ST_MAX_EXAMPLES:-60}" \
    --request-timeout 10 \
    --seed 1 \
    --no-color)
}

# Node API. Left out, each for a reason:
# - cluster init, learners and membership change the cluster under test (a learner that does
#   not exist, a voter set without this node): the cluster tests cover them;
# - the event stream never ends by design, so a client that waits for the end of the body
#   would wait forever; `node/tests/log_api.rs` covers it.
: > "$DIR/node-st.toml"
status=0
run "node API" "$DIR/node-st.toml" "http://$ADDR/openapi.json" --url "http://$ADDR" \
  --exclude-path /v1/cluster/init \
  --exclude-path /v1/cluster/learners \
  --exclude-path /v1/cluster/membership \
  --exclude-path '/v1/topics/{topic}/stream' || status=$?

# Query API, over what the node run wrote. `min_offset` is held at 0: past the applied offset
# the documented answer is 503 `not_yet_applied` after a bounded wait, which the 5xx check
# would count; `node/tests/query.rs` covers that wait.
printf '[parameters]\n"query.min_offset" = 0\n' > "$DIR/query-st.toml"
run "query API" "$DIR/query-st.toml" "http://$QADDR/openapi.json" --url "http://$QADDR" || status=$?

names=(node query)
for i in 0 1; do
  if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
    echo "the ${names[$i]} process died during the run; its log:"; tail -50 "$DIR/${names[$i]}.log"; exit 1
  fi
done
if [ "$status" -ne 0 ]; then tail -n 30 "$DIR/node.log" "$DIR/query.log"; fi
exit "$status"
