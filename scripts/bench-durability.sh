#!/usr/bin/env bash
# Durable QoS 1 with the bundled load generator: vmqtt in each durability
# mode ("off", "wal", "fsync") next to Mosquitto with persistence on, same
# machine, same run.
#
# Broker on CPU $BROKER_CPU (`taskset -c`; vmqtt `--cores 1`), generator on
# CPU $GEN_CPU. Sessions are persistent (`--persistent`: clean session 0),
# so every message is stored for its subscriber before the publisher's
# PUBACK (vmqtt "wal"/"fsync"). Two scenarios per broker:
#   max   — p2p, $PAIRS pairs, QoS 1, each publisher as fast as its inflight
#           window ($INFLIGHT) allows: throughput, and P50/P99 under it;
#   rate  — the same pairs at $RATE msgs/s in total: P50/P99 at moderate load.
# Each is repeated $REPEATS times; the table shows medians. Mosquitto writes
# its state only at autosave (default every 30 min) or exit, so it acknowledges
# from memory: it is the "no durability cost" baseline, comparable to
# vmqtt "off", not to "wal"/"fsync".
#
# Environment: BENCH_OUT, BENCH_REPEATS (3), BENCH_SECONDS (5), BENCH_PAIRS
# (10), BENCH_INFLIGHT (64), BENCH_RATE (5000), BENCH_BROKER_CPU (0),
# BENCH_GEN_CPU (1), BENCH_SKIP_BUILD=1, BENCH_VMQTT_BIN, BENCH_PORT (18930),
# BENCH_DATA (directory for the data dirs; default under BENCH_OUT — put it on
# the disk you want to measure).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/vmqtt-durability-$(date -u +%Y%m%dT%H%M%SZ)}
REPEATS=${BENCH_REPEATS:-3}
SECS=${BENCH_SECONDS:-5}
PAIRS=${BENCH_PAIRS:-10}
INFLIGHT=${BENCH_INFLIGHT:-64}
RATE=${BENCH_RATE:-5000}
BROKER_CPU=${BENCH_BROKER_CPU:-0}
GEN_CPU=${BENCH_GEN_CPU:-1}
BASE_PORT=${BENCH_PORT:-18930}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=${BENCH_DATA:-$OUT/data}
mkdir -p "$DATA"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need mosquitto || ! need python3 || ! need taskset; then
  apt-get update -qq && apt-get install -y -qq mosquitto python3 util-linux >/dev/null
fi
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  echo "== building (release)"
  cargo build --release -q -p vmqtt-shard -p vmqtt-loadtest
fi
LT="$CARGO_TARGET_DIR/release/vmqtt-loadtest"
mkdir -p "$OUT/bin"
cp "${BENCH_VMQTT_BIN:-$CARGO_TARGET_DIR/release/vmqtt-shard}" "$OUT/bin/bench-vbroker"
cp "$(command -v mosquitto || echo /usr/sbin/mosquitto)" "$OUT/bin/bench-mbroker"

PID=""
PORT=0
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  local p=$1
  while [ -n "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; do p=$((p + 1)); done
  echo "$p"
}

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

stop() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  PID=""
}

# start BROKER: vmqtt-off | vmqtt-wal | vmqtt-fsync | mosquitto, on a fresh
# data directory and port.
start() {
  stop
  PORT=$(free_port $((BASE_PORT + RANDOM % 500)))
  local dir="$DATA/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  case $1 in
    vmqtt-*)
      cat >"$OUT/$1.toml" <<EOF
data_dir = "$dir"
[storage]
durability = "${1#vmqtt-}"
EOF
      RUST_LOG=warn taskset -c "$BROKER_CPU" "$OUT/bin/bench-vbroker" --cores 1 \
        --listen "127.0.0.1:$PORT" --config "$OUT/$1.toml" >>"$OUT/$1.log" 2>&1 &
      ;;
    mosquitto)
      cat >"$OUT/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
max_queued_messages 1000
max_inflight_messages 1024
log_dest stderr
log_type error
log_type warning
EOF
      taskset -c "$BROKER_CPU" "$OUT/bin/bench-mbroker" -c "$OUT/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
      ;;
  esac
  PID=$!
  wait_port "$PORT"
}

# run NAME ARGS...: one generator run (JSON in $OUT/NAME.json); prints
# "delivered/s p50_us p99_us lost".
run() {
  local name=$1
  shift
  "$LT" pubsub --port "$PORT" --broker-pid "$PID" --cpus "$GEN_CPU" --quiet \
    --shape p2p --publishers "$PAIRS" --qos 1 --persistent --payload 64 \
    --warmup 1 --duration "$SECS" --drain 10 --json "$OUT/$name.json" "$@" \
    >"$OUT/$name.txt" 2>&1 || true
  python3 - "$OUT/$name.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print("0 0 0 ?"); sys.exit()
l = r.get("latency") or {}
loss = r.get("loss") or {}
print(int(r["rates"]["delivered_per_s"]), int(l.get("p50_us", 0)), int(l.get("p99_us", 0)), loss.get("lost", "?"))
EOF
}

median() { python3 -c "import statistics,sys; print(int(statistics.median(map(float, sys.argv[1:]))))" "$@"; }

printf '| broker | durable QoS 1 msgs/s (window %s) | P50 / P99 at max | P50 / P99 at %s msgs/s | acknowledged but lost |\n' "$INFLIGHT" "$RATE" >"$OUT/table.md"
printf '|---|---:|---:|---:|---:|\n' >>"$OUT/table.md"
for broker in vmqtt-off vmqtt-wal vmqtt-fsync mosquitto; do
  echo "== $broker"
  declare -a tput=() p50m=() p99m=() p50r=() p99r=()
  lost=0
  for i in $(seq 1 "$REPEATS"); do
    start "$broker"
    read -r d a b l <<<"$(run "$broker-max-$i" --inflight "$INFLIGHT")"
    echo "  max  #$i: $d msgs/s, P50 ${a} us, P99 ${b} us, lost $l"
    tput+=("$d"); p50m+=("$a"); p99m+=("$b")
    [ "$l" = "?" ] || lost=$((lost + l))
    start "$broker"
    per=$(python3 -c "print(round($RATE / $PAIRS, 1))")
    read -r d a b l <<<"$(run "$broker-rate-$i" --rate "$per" --inflight "$INFLIGHT")"
    echo "  rate #$i: $d msgs/s, P50 ${a} us, P99 ${b} us, lost $l"
    p50r+=("$a"); p99r+=("$b")
    [ "$l" = "?" ] || lost=$((lost + l))
  done
  stop
  printf '| %s | %s | %s / %s us | %s / %s us | %s |\n' "$broker" "$(median "${tput[@]}")" \
    "$(median "${p50m[@]}")" "$(median "${p99m[@]}")" "$(median "${p50r[@]}")" \
    "$(median "${p99r[@]}")" "$lost" >>"$OUT/table.md"
done
echo
cat "$OUT/table.md"
echo "(results in $OUT)"
