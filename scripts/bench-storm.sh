#!/usr/bin/env bash
# Reconnect storm onto the survivors of a 3-node cluster (one etcd on a
# temporary directory, release build, --cores 1 per node, lease TTL 3 s):
# BENCH_CLIENTS (10000) persistent MQTT 5 clients (vmqtt-loadtest conn)
# connect to node 1 and leave their sessions there; node 1 is killed with
# -9; once its lease has ended and its partitions moved (the script waits
# for node 2 to log node 1 gone and a new map), all of them connect to
# node 2 at once (BENCH_CONCURRENCY, 1000, connecting at a time): every
# CONNECT claims its client id at the partition's owner, which has
# forgotten the dead node, and gets a fresh session. Baseline in the same
# run: as many new client ids onto node 3. Reports connects/s and
# CONNECT->CONNACK percentiles of each; docs/BENCHMARKS.md quotes a run.
# Environment: BENCH_OUT, BENCH_CLIENTS, BENCH_CONCURRENCY,
# BENCH_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/vmqtt-bench-storm-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. scripts/local-cluster.sh
local_cluster_prepare bench-storm
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p vmqtt-loadtest
fi
LT="$CARGO_TARGET_DIR/release/vmqtt-loadtest"
trap local_cluster_stop EXIT INT TERM
start_etcd
for i in 1 2 3; do start_node "$i" 3; done
sleep 1
N=${BENCH_CLIENTS:-10000}
common=(--mqtt 5 --persistent --connections "$N" --concurrency "${BENCH_CONCURRENCY:-1000}"
    --no-pin --duration 1 --connect-timeout 30)
echo "bench-storm: $N persistent sessions onto node 1"
"$LT" conn --port "${NODE_MQTT[1]}" --client-prefix storm "${common[@]}" >"$OUT/before.txt"
echo "bench-storm: kill -9 node 1"
from=$(wc -l <"$OUT/node2.log")
kill_node 1
for _ in $(seq 200); do
    tail -n +"$from" "$OUT/node2.log" | grep -q "node gone" &&
        tail -n +"$from" "$OUT/node2.log" | grep -q "partition map: claims" && break
    sleep 0.1
done
echo "bench-storm: node 1 gone; the storm onto node 2"
"$LT" conn --port "${NODE_MQTT[2]}" --client-prefix storm "${common[@]}" | tee "$OUT/storm.txt"
echo "bench-storm: baseline, new client ids onto node 3"
"$LT" conn --port "${NODE_MQTT[3]}" --client-prefix fresh "${common[@]}" | tee "$OUT/fresh.txt"
echo "bench-storm: results in $OUT"
