#!/usr/bin/env bash
# Chaos run (bounded in time): 3 nodes (release build, --cores 1, lease TTL
# 3 s, one local etcd), CHAOS_SUBS persistent MQTT 5 subscribers
# reconnecting to random nodes, a QoS 1 publisher per subscriber at
# CHAOS_RATE msg/s to random nodes, one node killed with -9 and restarted
# every CHAOS_KILL_EVERY s for CHAOS_SECONDS s (scripts/cluster-chaos.py).
# Reports acknowledged vs received messages and duplicates; exits 1 if an
# acknowledged message was lost. Environment: CHAOS_SECONDS (180),
# CHAOS_KILL_EVERY (20), CHAOS_SUBS (10), CHAOS_RATE (20), BENCH_OUT,
# BENCH_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/vmqtt-chaos-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. scripts/local-cluster.sh
local_cluster_prepare cluster-chaos
trap local_cluster_stop EXIT INT TERM

start_etcd
for i in 1 2 3; do start_node "$i"; done
sleep 1
NODES=()
for i in 1 2 3; do NODES+=("127.0.0.1:${NODE_MQTT[$i]}"); done
coproc CHAOS { python3 scripts/cluster-chaos.py --nodes "${NODES[@]}" \
    --subs "${CHAOS_SUBS:-10}" --rate "${CHAOS_RATE:-20}" \
    --duration "${CHAOS_SECONDS:-180}" --kill-every "${CHAOS_KILL_EVERY:-20}" 2>"$OUT/report.txt"; }
while read -r cmd node <&"${CHAOS[0]}"; do
    case "$cmd" in
        kill) echo "cluster-chaos: kill -9 node $((node + 1))"; kill_node $((node + 1)) ;;
        start) echo "cluster-chaos: restart node $((node + 1))"; start_node $((node + 1)) ;;
        done) break ;;
    esac
    echo ok >&"${CHAOS[1]}"
done
wait "$CHAOS_PID" && rc=0 || rc=$?
cat "$OUT/report.txt"
echo "cluster-chaos: logs in $OUT"
exit "$rc"
