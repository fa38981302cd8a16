#!/usr/bin/env bash
# Starts a local cluster to try: one etcd (temporary data directory) and N
# vmqtt nodes, node i on 127.0.0.i (MQTT :1883, peer port :1884 and up),
# each with CORES shards (default 1) and its own data directory. Prints one
# line per node once all are ready:
#   node ID mqtt HOST:PORT pid PID
# and stops everything on Ctrl-C / SIGTERM (the temporary directory too).
#   scripts/cluster-up.sh 3
#   mosquitto_sub -h 127.0.0.2 -t 'demo/#' -v &   # on node 2
#   mosquitto_pub -h 127.0.0.1 -t demo/x -m hi    # on node 1
# Environment: CORES, ETCD_PORT (default 23790), KEEP=1 keeps the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

N="${1:-3}"
CORES="${CORES:-1}"
ETCD_PORT="${ETCD_PORT:-23790}"
case "$N" in
    ''|*[!0-9]*) echo "usage: $0 N   (N nodes, 1 to 9)" >&2; exit 2 ;;
esac
if [ "$N" -lt 1 ] || [ "$N" -gt 9 ]; then
    echo "usage: $0 N   (N nodes, 1 to 9)" >&2
    exit 2
fi

bash scripts/install-build-deps.sh
if ! command -v etcd >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo -E"
    echo "cluster-up: installing etcd-server"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends etcd-server
    $SUDO service etcd stop >/dev/null 2>&1 || true
fi
cargo build --release -q -p vmqtt-shard
BIN="$CARGO_TARGET_DIR/release/vmqtt-shard"

DIR="$(mktemp -d /tmp/vmqtt-cluster.XXXXXX)"
PIDS=()
stop() {
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "cluster-up: logs and data kept in $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap stop INT TERM EXIT

etcd --name=local --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls="http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster="local=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --log-level=warn >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null && break
    sleep 0.1
done

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/cluster.secret"
for i in $(seq "$N"); do
    mkdir -p "$DIR/node$i"
    cat >"$DIR/node$i/vmqtt.toml" <<EOF
listen = ["127.0.0.$i:1883"]
data_dir = "$DIR/node$i/data"

[cluster]
name = "local"
node_id = $i
etcd = ["http://127.0.0.1:$ETCD_PORT"]
listen = "127.0.0.$i:1884"
secret_file = "$DIR/cluster.secret"
EOF
    "$BIN" --cores "$CORES" --config "$DIR/node$i/vmqtt.toml" >"$DIR/node$i/log" 2>&1 &
    PIDS+=($!)
done
for i in $(seq "$N"); do
    ready=0
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.$i/1883") 2>/dev/null; then ready=1; break; fi
        sleep 0.1
    done
    if [ "$ready" != 1 ]; then
        echo "cluster-up: node $i did not start; its log:" >&2
        cat "$DIR/node$i/log" >&2
        exit 1
    fi
done
for i in $(seq "$N"); do
    echo "node $i mqtt 127.0.0.$i:1883 pid ${PIDS[$i]}"
done
echo "cluster-up: $N nodes ready (logs in $DIR); Ctrl-C stops them"
wait
