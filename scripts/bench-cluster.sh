#!/usr/bin/env bash
# Cross-node cost: the same load through one vmqtt node, and through two
# nodes of a cluster (publishers on node A, subscribers on node B, so every
# message crosses a node link), in the same run, alternating, medians of
# BENCH_REPEATS. docs/BENCHMARKS.md quotes a run.
#
# Brokers on CPU $BENCH_BROKER_CPU (both nodes of the cluster on that one
# CPU, `--cores 1` each: the broker CPU quoted is the sum over both nodes,
# so "per forwarded message" includes the hop's both ends), the generator
# on CPU $BENCH_GEN_CPU. A local etcd on a temporary data directory.
#
# Scenarios (many connections, each at a moderate fixed rate):
#   p2p QoS 1: 100 publisher/subscriber pairs at 100 msg/s each (10k msg/s)
#   p2p QoS 0: the same at QoS 0
#   fan-in QoS 0: 100 publishers at 200 msg/s -> 1 subscriber (20k msg/s)
#   shared QoS 1: 100 publishers at 100 msg/s -> a group of 4 (10k msg/s)
#   saturation QoS 1: 10 pairs, each as fast as its window of 64 allows
# For each: delivered msgs/s, P50/P99 publish-to-deliver, broker CPU %
# (utime+stime of the broker processes over the run / its wall time).
# Then route propagation: SUBACK on B → first message from A
# (scripts/route-latency.py, paho-mqtt).
#
# Environment: BENCH_OUT, BENCH_REPEATS (3), BENCH_SECONDS (5),
# BENCH_BROKER_CPU (0), BENCH_GEN_CPU (1), BENCH_NODE_B_CPU (node B's CPU;
# default: with node A), BENCH_SKIP_BUILD=1, BENCH_SCENARIOS (names to run,
# default all), BENCH_PERF=1 (perf record -g of both nodes during each
# scenario's first cross run: $OUT/NAME.perf.data).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/vmqtt-bench-cluster-$(date -u +%Y%m%dT%H%M%SZ)}
REPEATS=${BENCH_REPEATS:-3}
SECS=${BENCH_SECONDS:-5}
BCPU=${BENCH_BROKER_CPU:-0}
GCPU=${BENCH_GEN_CPU:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    bash scripts/install-build-deps.sh
    cargo build --release -q -p vmqtt-shard -p vmqtt-loadtest
fi
BIN="$CARGO_TARGET_DIR/release/vmqtt-shard"
LT="$CARGO_TARGET_DIR/release/vmqtt-loadtest"
command -v etcd >/dev/null || { echo "bench-cluster: needs etcd (Debian etcd-server)" >&2; exit 1; }

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-cluster: nothing listens on $1" >&2
    return 1
}

EC=$(free_port)
EP=$(free_port)
etcd --name=b --data-dir="$OUT/etcd" --listen-client-urls="http://127.0.0.1:$EC" \
    --advertise-client-urls="http://127.0.0.1:$EC" --listen-peer-urls="http://127.0.0.1:$EP" \
    --initial-advertise-peer-urls="http://127.0.0.1:$EP" --initial-cluster="b=http://127.0.0.1:$EP" \
    --log-level=warn >"$OUT/etcd.log" 2>&1 &
PIDS+=($!)
wait_port "$EC"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/secret"

# node NAME PORT [NODE_ID PEER_PORT [CPU]]: a vmqtt (a cluster node with
# an id).
node() {
    local name=$1 port=$2 id=${3:-} peer=${4:-} cpu=${5:-$BCPU}
    {
        echo "data_dir = \"$OUT/$name-data\""
        echo "[storage]"
        echo "durability = \"off\""
        if [ -n "$id" ]; then
            printf '[cluster]\nname = "bench"\nnode_id = %s\netcd = ["http://127.0.0.1:%s"]\n' "$id" "$EC"
            printf 'listen = "127.0.0.1:%s"\nsecret_file = "%s"\n' "$peer" "$OUT/secret"
        fi
    } >"$OUT/$name.toml"
    taskset -c "$cpu" "$BIN" --cores 1 --listen "127.0.0.1:$port" --config "$OUT/$name.toml" \
        >"$OUT/$name.log" 2>&1 &
    PIDS+=($!)
    echo $! >"$OUT/$name.pid"
    wait_port "$port"
}

SP=$(free_port); AP=$(free_port); BP=$(free_port)
node single "$SP"
node a "$AP" 1 "$(free_port)"
node b "$BP" 2 "$(free_port)" "${BENCH_NODE_B_CPU:-$BCPU}"
# Links up (node A's shard 0 dials B at once).
for _ in $(seq 100); do grep -q "node link: up" "$OUT/a.log" && break; sleep 0.1; done

ticks() { # utime+stime of the given pids, in clock ticks
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)

# run NAME TARGET ARGS...: TARGET single | cross.
run() {
    local name=$1 target=$2
    shift 2
    local pids sub=()
    if [ "$target" = single ]; then
        pids=("$(cat "$OUT/single.pid")")
        port=$SP
    else
        pids=("$(cat "$OUT/a.pid")" "$(cat "$OUT/b.pid")")
        port=$AP
        sub=(--sub-broker "127.0.0.1:$BP")
    fi
    local t0 w0 t1 w1
    t0=$(ticks "${pids[@]}"); w0=$(date +%s.%N)
    local perf=
    if [ -n "${BENCH_PERF:-}" ] && [ "$target" = cross ] && [ ! -e "$OUT/${name%-cross-*}.perf.data" ]; then
        # Profile both nodes once per scenario, after the warmup.
        (sleep 1.5; perf record -q -g -p "$(IFS=,; echo "${pids[*]}")" -o "$OUT/${name%-cross-*}.perf.data" \
            -- sleep "$((SECS - 1))" >/dev/null 2>&1) &
        perf=$!
    fi
    "$LT" pubsub --port "$port" "${sub[@]}" --cpus "$GCPU" --warmup 1 --duration "$SECS" \
        --drain 5 --client-prefix "$name" --json "$OUT/$name.json" "$@" >"$OUT/$name.out" 2>&1 || true
    [ -z "$perf" ] || wait "$perf" || true
    t1=$(ticks "${pids[@]}"); w1=$(date +%s.%N)
    python3 - "$OUT/$name.json" "$t0" "$t1" "$w0" "$w1" "$HZ" >"$OUT/$name.row" <<'EOF'
import json, sys
f, t0, t1, w0, w1, hz = sys.argv[1:]
try:
    r = json.load(open(f))
except Exception:
    print("nan nan nan nan 0"); sys.exit()
cpu = (int(t1) - int(t0)) / float(hz) / (float(w1) - float(w0)) * 100
l = r.get("latency") or {}
loss = (r.get("loss") or {})
print(int(r["rates"]["delivered_per_s"]), l.get("p50_us", float("nan")), l.get("p99_us", float("nan")),
      round(cpu, 1), loss.get("lost", 0) + loss.get("dropped", 0))
EOF
}

SCENARIOS=${BENCH_SCENARIOS:-p2p-q1 p2p-q0 fanin-q0 shared-q1 p2p-q1-sat}
scenario() {
    local name=$1
    shift
    case " $SCENARIOS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name"
    for k in $(seq "$REPEATS"); do
        for t in single cross; do
            run "$name-$t-$k" "$t" "$@"
            echo "  $t #$k: $(cat "$OUT/$name-$t-$k.row")  (delivered/s p50_us p99_us cpu% missing)"
        done
    done
}

scenario p2p-q1 --shape p2p --publishers 100 --qos 1 --rate 100
scenario p2p-q0 --shape p2p --publishers 100 --qos 0 --rate 100
scenario fanin-q0 --shape fan-in --publishers 100 --qos 0 --rate 200
# A shared group (4 members, all on B when cross) at a fixed rate.
scenario shared-q1 --shape shared --publishers 100 --subscribers 4 --qos 1 --rate 100
# Saturation: QoS 1 pairs as fast as their inflight windows allow.
scenario p2p-q1-sat --shape p2p --publishers 10 --qos 1 --rate 0

python3 - "$OUT" "$REPEATS" $SCENARIOS <<'EOF' | tee "$OUT/table.md"
import sys, statistics as st
out, n, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| load | one node: msgs/s, P50 / P99 ms, CPU | two nodes (A → B): msgs/s, P50 / P99 ms, CPU | CPU ratio | P99 added | per-CPU throughput, cross / one | missing one / cross |")
print("|---|---|---|---|---|---|---|")
for name in names:
    rows = {}
    for t in ["single", "cross"]:
        vals = [list(map(float, open(f"{out}/{name}-{t}-{k}.row").read().split())) for k in range(1, n + 1)]
        rows[t] = [st.median(v[i] for v in vals) for i in range(5)]
    s, c = rows["single"], rows["cross"]
    # Messages per CPU-second: the per-core throughput of each setup.
    per_cpu = lambda r: r[0] / max(r[3] / 100, 0.001)
    print(f"| {name} | {s[0]:.0f}, {s[1]/1000:.2f} / {s[2]/1000:.2f}, {s[3]:.0f}% | {c[0]:.0f}, {c[1]/1000:.2f} / {c[2]/1000:.2f}, {c[3]:.0f}% | {c[3]/max(s[3],0.1):.2f}x | {(c[2]-s[2])/1000:+.2f} ms | {per_cpu(c)/per_cpu(s)*100:.0f}% | {s[4]:.0f} / {c[4]:.0f} |")
EOF
echo "== route propagation (subscribe on B, first message from A)"
python3 scripts/route-latency.py 127.0.0.1 "$AP" 127.0.0.1 "$BP" 100 | tee "$OUT/route.txt"
echo "bench-cluster: results in $OUT"
