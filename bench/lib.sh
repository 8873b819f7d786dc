# Start and stop a fresh three-node uniqlog cluster on 127.0.0.51-53:7001, auth on.
# Source it, then: start_cluster DIR BINARY; it sets PIDS, TOKEN and CONFIG. stop_cluster stops
# the nodes by PID (TERM, bounded wait, KILL). cpu_ticks: their CPU so far, in TICKS a second.

PIDS=()
TICKS=$(getconf CLK_TCK)

# cpu_ticks: user + system ticks of the cluster's node processes so far.
cpu_ticks() {
  local p sum=0
  for p in "${PIDS[@]}"; do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing paren.
    sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$sum"
}

stop_cluster() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}

start_cluster() {
  local dir=$1 bin=$2 i
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  rm -rf "$dir" && mkdir -p "$dir"
  TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  local secret digest
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  digest=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
  CONFIG=$dir/cluster.toml
  {
    for i in 1 2 3; do
      printf '[[node]]\nid = %d\naddr = "127.0.0.5%d:7001"\ndata_dir = "node%d"\n\n' "$i" "$i" "$i"
    done
    # [raft], [limits], [[uniq]] and [idempotency] as shipped.
    sed -n '/^\[raft\]/,/^\[users\]/p' "$root/cluster.toml" | sed '$d'
    cat <<TOML
[users]
activation_secret = "bench-$secret"
public_base_url = "http://127.0.0.51:7001"

[auth]
cluster_secret = "$secret"
client_token = "$TOKEN"
[[auth.token]]
name = "bench"
role = "admin"
sha256 = "$digest"
TOML
  } > "$CONFIG"
  for i in 1 2 3; do
    "$bin" node --config "$CONFIG" --id "$i" > "$dir/node$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.5$i:7001/health" 2>/dev/null && break; sleep 0.1; done
  done
  "$bin" cluster init --config "$CONFIG" >&2
  # Ready when a write goes through.
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -u "bench:$TOKEN" -H 'content-type: application/json' \
      -d '{"events":[{"type":"BenchReady","data":{}}]}' \
      http://127.0.0.51:7001/v1/topics/bench-ready/events && return 0
    sleep 0.2
  done
  echo "the cluster in $dir took no write; see its node logs" >&2
  return 1
}
