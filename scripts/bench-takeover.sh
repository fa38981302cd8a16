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
. scripts/local-cluster.sh
local_cluster_prepare bench-takeover
trap local_cluster_stop EXIT INT TERM
start_etcd
for i in 1 2 3; do start_node "$i" 3; done
sleep 2
NODES=()
for i in 1 2 3; do NODES+=("127.0.0.1:${NODE_MQTT[$i]}"); done
python3 scripts/takeover-latency.py --nodes "${NODES[@]}" \
    --rounds "${BENCH_ROUNDS:-20}" --queued "${BENCH_QUEUED:-1000}" \
    --failover-pid "${NODE_PID[1]}" | tee "$OUT/results.txt"
echo "bench-takeover: results in $OUT/results.txt"
