#!/usr/bin/env bash
# Takeover latency across nodes and failover time of a 3-node cluster (one
# etcd on a temporary directory, release build, --cores 1 per node, lease
# TTL 3 s), measured with paho-mqtt by scripts/takeover-latency.py:
#   takeover-same / takeover-cross: a persistent session with
#     BENCH_QUEUED (1000) QoS 1 messages waiting, resumed on the same node
#     (baseline) or on another (the session moves): CONNECT -> CONNACK and
#     -> last message, P50/P99 over BENCH_ROUNDS (20).
#   failover: node 1 killed with -9; time until its client is accepted on
#     node 2 and receiving again.
# docs/BENCHMARKS.md quotes a run. Environment: BENCH_OUT, BENCH_ROUNDS,
# BENCH_QUEUED, BENCH_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/vmqtt-bench-takeover-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    bash scripts/install-build-deps.sh
    cargo build --release -q -p vmqtt-shard
fi
BIN="$CARGO_TARGET_DIR/release/vmqtt-shard"
command -v etcd >/dev/null || { echo "bench-takeover: needs etcd (Debian etcd-server)" >&2; exit 1; }
python3 -c 'import paho.mqtt' 2>/dev/null || { echo "bench-takeover: needs paho-mqtt" >&2; exit 1; }

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP=$(free_port)
etcd --name=bench --data-dir="$OUT/etcd" \
    --listen-client-urls="http://127.0.0.1:$EP" --advertise-client-urls="http://127.0.0.1:$EP" \
    --listen-peer-urls="http://127.0.0.1:$((EP + 1))" \
    --initial-advertise-peer-urls="http://127.0.0.1:$((EP + 1))" \
    --initial-cluster="bench=http://127.0.0.1:$((EP + 1))" \
    --log-level=warn >"$OUT/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$EP") 2>/dev/null && break
    sleep 0.1
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/secret"
NODES=()
NODE_PIDS=()
for i in 1 2 3; do
    mq=$(free_port)
    peer=$(free_port)
    cat >"$OUT/node$i.toml" <<TOML
data_dir = "$OUT/data$i"
[cluster]
name = "bench"
node_id = $i
etcd = ["http://127.0.0.1:$EP"]
listen = "127.0.0.1:$peer"
secret_file = "$OUT/secret"
lease_ttl_seconds = 3
TOML
    "$BIN" --cores 1 --listen "127.0.0.1:$mq" --config "$OUT/node$i.toml" >"$OUT/node$i.log" 2>&1 &
    PIDS+=($!)
    NODE_PIDS+=($!)
    NODES+=("127.0.0.1:$mq")
done
for i in 1 2 3; do
    for _ in $(seq 300); do
        grep -q "partition map: claims" "$OUT/node$i.log" 2>/dev/null && break
        sleep 0.1
    done
done
sleep 2
python3 scripts/takeover-latency.py --nodes "${NODES[@]}" \
    --rounds "${BENCH_ROUNDS:-20}" --queued "${BENCH_QUEUED:-1000}" \
    --failover-pid "${NODE_PIDS[0]}" | tee "$OUT/results.txt"
echo "bench-takeover: results in $OUT/results.txt"
