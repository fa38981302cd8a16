#!/usr/bin/env bash
# Restart time against the number of stored sessions.
#
# For every N in $SESSIONS: writes a data directory of N persistent sessions
# laid out for $SHARDS shards (the `populate` example of vmqtt-storage), then
# times, $REPEATS times each, and prints the medians as a markdown table:
#   - `recover_time`: open the directory, recover every shard, purge what
#     expired (what the broker does in storage before it serves), one thread;
#   - if $VMQTT_BIN is set (a vmqtt-shard binary): start it with
#     `--cores $SHARDS --data-dir DIR` and time until its port accepts a TCP
#     connection and until it answers an MQTT CONNECT with CONNACK (python3),
#     then stop it (SIGTERM, SIGKILL after 60 s). The CONNACK is the restart
#     time: the kernel completes TCP handshakes as soon as a shard listens.
#
# Environment (defaults in brackets):
#   SESSIONS ["10000 100000 1000000"]   session counts
#   SHARDS [2]                          shards (column families, --cores)
#   REPEATS [3]                         timed runs per measurement
#   SUBSCRIPTIONS_PER_SESSION [1]       subscriptions of each session
#   QUEUED_PER_SESSION [0]              queued QoS 1 messages of each session
#   VMQTT_BIN [unset]                   also time broker starts with this binary
#   BENCH_TMP [${TMPDIR:-/tmp}]         where the data directories go (on the
#                                       disk to measure; removed at exit)
#   BENCH_PORT [18930]                  first port to try for the broker
#   BENCH_TIMEOUT [900]                 seconds allowed to each populate,
#                                       recovery or broker start
#   BENCH_SKIP_BUILD [0]                1: use the examples already built
#
# The examples are built in release mode in $CARGO_TARGET_DIR (scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

SESSIONS=${SESSIONS:-"10000 100000 1000000"}
SHARDS=${SHARDS:-2}
REPEATS=${REPEATS:-3}
SUBS=${SUBSCRIPTIONS_PER_SESSION:-1}
QUEUED=${QUEUED_PER_SESSION:-0}
BASE=${BENCH_TMP:-${TMPDIR:-/tmp}}
PORT=${BENCH_PORT:-18930}
LIMIT=${BENCH_TIMEOUT:-900}

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  echo "== building the examples (release)" >&2
  cargo build --release -q -p vmqtt-storage --example populate --example recover_time
fi
POPULATE="$CARGO_TARGET_DIR/release/examples/populate"
RECOVER="$CARGO_TARGET_DIR/release/examples/recover_time"
if [ -n "${VMQTT_BIN:-}" ] && [ ! -x "$VMQTT_BIN" ]; then
  echo "VMQTT_BIN=$VMQTT_BIN is not an executable" >&2
  exit 2
fi

WORK=$(mktemp -d "$BASE/vmqtt-restart.XXXXXX")
BPID=""
cleanup() {
  if [ -n "$BPID" ]; then kill -KILL "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The value of KEY in a line of key=value pairs.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# A port nothing uses, not even TIME-WAIT sockets of an earlier start, in
# $FREE. (Functions that set globals are not called in $(...) subshells.)
free_port() {
  local p=$PORT
  while [ -n "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ]; do p=$((p + 1)); done
  PORT=$((p + 1))
  FREE=$p
}

# Waits until the broker (pid, port) answers an MQTT 3.1.1 CONNECT with a
# CONNACK and prints two wall-clock times: when its port first accepted a TCP
# connection (a listening socket completes handshakes before the broker
# serves: the kernel queues them) and when the CONNACK came. Exit status 1 if
# the broker exited, 2 on timeout.
PROBE='
import os, socket, sys, time
pid, port, deadline = int(sys.argv[1]), int(sys.argv[2]), time.time() + float(sys.argv[3])
connect = b"\x10\x1c\x00\x04MQTT\x04\x02\x00\x3c\x00\x10bench-restart-pr"
tcp = None
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            tcp = tcp or time.time()
            s.settimeout(max(0.1, deadline - time.time()))
            s.sendall(connect)
            reply = b""
            while len(reply) < 4:
                chunk = s.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
            if reply[:2] == b"\x20\x02" and reply[3:4] == b"\x00":
                print(f"{tcp:.6f} {time.time():.6f}")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit(2)
'

# Starts the broker on DIR, sets $TOOK_TCP and $TOOK to the seconds until its
# port accepted a connection and until it answered CONNECT, and stops it
# again (SIGTERM; SIGKILL after 60 s).
broker_start() {
  local dir=$1 port log t0 times rc
  free_port
  port=$FREE
  log="$WORK/broker.log"
  t0=$(now)
  "$VMQTT_BIN" --cores "$SHARDS" --listen "127.0.0.1:$port" --data-dir "$dir" >"$log" 2>&1 &
  BPID=$!
  rc=0
  times=$(python3 -c "$PROBE" "$BPID" "$port" "$LIMIT") || rc=$?
  if [ "$rc" != 0 ]; then
    if [ "$rc" = 1 ]; then
      echo "broker exited before answering CONNECT:" >&2
    else
      echo "broker did not answer CONNECT within ${LIMIT}s:" >&2
    fi
    tail -n 20 "$log" >&2
    return 1
  fi
  TOOK_TCP=$(elapsed "$t0" "${times% *}")
  TOOK=$(elapsed "$t0" "${times#* }")
  kill -TERM "$BPID" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
  BPID=""
}

ROWS=()
for n in $SESSIONS; do
  dir="$WORK/data-$n"
  echo "== $n sessions, $SHARDS shards: populate" >&2
  line=$(timeout "$LIMIT" "$POPULATE" "$dir" --sessions "$n" --shards "$SHARDS" \
    --subscriptions-per-session "$SUBS" --queued-per-session "$QUEUED") ||
    { echo "populate failed (or took over ${LIMIT}s)" >&2; exit 1; }
  echo "$line" >&2
  pop_s=$(field total_s "$line")
  records=$(field records "$line")
  size=$(du -sh "$dir" | cut -f1)
  rec=()
  open=()
  rss=""
  for r in $(seq 1 "$REPEATS"); do
    line=$(timeout "$LIMIT" "$RECOVER" "$dir" --shards "$SHARDS") ||
      { echo "recover_time failed (or took over ${LIMIT}s)" >&2; exit 1; }
    echo "   recover_time run $r: $line" >&2
    got=$(field sessions "$line")
    if [ "$got" != "$n" ]; then
      echo "recover_time loaded $got sessions, expected $n" >&2
      exit 1
    fi
    rec+=("$(field total_s "$line")")
    open+=("$(field open_s "$line")")
    rss=$(field peak_rss_mib "$line")
  done
  start="n/a"
  start_tcp="n/a"
  if [ -n "${VMQTT_BIN:-}" ]; then
    starts=()
    tcps=()
    for r in $(seq 1 "$REPEATS"); do
      broker_start "$dir"
      echo "   broker start run $r: port open ${TOOK_TCP}s, CONNACK ${TOOK}s" >&2
      starts+=("$TOOK")
      tcps+=("$TOOK_TCP")
    done
    start=$(median "${starts[@]}")
    start_tcp=$(median "${tcps[@]}")
  fi
  ROWS+=("| $n | $records | $size | $pop_s | $(median "${rec[@]}") | $(median "${open[@]}") | $rss | $start_tcp | $start |")
  rm -rf "$dir"
done

echo
echo "Restart with $SHARDS shards, $SUBS subscription(s) and $QUEUED queued message(s) per session;"
echo "median of $REPEATS runs; $(nproc) CPUs, data under $BASE ($(df -PT "$BASE" | awk 'NR == 2 { print $2 }'))."
echo
echo "| sessions | records | data dir | populate (s) | open + recover + purge (s) | of which open (s) | recover peak RSS (MiB) | broker: port open (s) | broker: first CONNACK (s) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
