# Sourced by the cluster benchmarks and the chaos run: one etcd and vmqtt
# nodes on 127.0.0.1, all under $OUT, stopped by `local_cluster_stop` (an
# EXIT trap the caller sets). Needs $OUT; `local_cluster_prepare` sets $BIN.
#   start_etcd; start_node 1 [TTL]; kill_node 1; start_node 1 [TTL]
LC_PIDS=()
declare -A NODE_PID NODE_MQTT NODE_PEER

# local_cluster_prepare NAME: builds the release binary (unless
# BENCH_SKIP_BUILD=1), sets $BIN, checks etcd and paho-mqtt are there.
local_cluster_prepare() {
    if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
        bash scripts/install-build-deps.sh
        cargo build --release -q -p vmqtt-shard
    fi
    BIN="$CARGO_TARGET_DIR/release/vmqtt-shard"
    command -v etcd >/dev/null || { echo "$1: needs etcd (Debian etcd-server)" >&2; exit 1; }
    python3 -c 'import paho.mqtt' 2>/dev/null || { echo "$1: needs paho-mqtt" >&2; exit 1; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

local_cluster_stop() {
    for p in "${LC_PIDS[@]}" "${NODE_PID[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${LC_PIDS[@]}" "${NODE_PID[@]}"; do wait "$p" 2>/dev/null || true; done
}

start_etcd() {
    ETCD_PORT=$(free_port)
    # (Its own free port: the one after ETCD_PORT may be a client's.)
    local peer
    peer=$(free_port)
    etcd --name=lc --data-dir="$OUT/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
        --initial-cluster="lc=http://127.0.0.1:$peer" \
        --log-level=warn >"$OUT/etcd.log" 2>&1 &
    LC_PIDS+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null && break
        sleep 0.1
    done
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/secret"
}

# start_node I [TTL]: node I (same ports and data directory on a restart),
# waits until it has a partition map.
start_node() {
    local i=$1 ttl=${2:-3}
    if [ -z "${NODE_MQTT[$i]:-}" ]; then
        NODE_MQTT[$i]=$(free_port)
        NODE_PEER[$i]=$(free_port)
    fi
    cat >"$OUT/node$i.toml" <<TOML
data_dir = "$OUT/data$i"
[cluster]
name = "lc"
node_id = $i
etcd = ["http://127.0.0.1:$ETCD_PORT"]
listen = "127.0.0.1:${NODE_PEER[$i]}"
secret_file = "$OUT/secret"
lease_ttl_seconds = $ttl
TOML
    # Every run of a node appends to one log (the chaos run restarts
    # nodes; what a killed run said is what explains a loss).
    local log="$OUT/node$i.log"
    local from
    echo "=== start of node $i ($(date -u +%FT%TZ))" >>"$log"
    from=$(wc -l <"$log")
    "$BIN" --cores 1 --listen "127.0.0.1:${NODE_MQTT[$i]}" --config "$OUT/node$i.toml" >>"$log" 2>&1 &
    NODE_PID[$i]=$!
    for _ in $(seq 400); do
        tail -n +"$from" "$log" | grep -q "partition map: claims" && break
        sleep 0.1
    done
}

kill_node() {
    kill -9 "${NODE_PID[$1]}" 2>/dev/null || true
    wait "${NODE_PID[$1]}" 2>/dev/null || true
}
