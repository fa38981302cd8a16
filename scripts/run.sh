#!/usr/bin/env bash
# Builds and runs the broker on its embedded default configuration
# (0.0.0.0:1883, data under ./data, one shard per available CPU).
# Extra arguments go to vmqtt-shard, e.g. `--cores 2 --listen 127.0.0.1:1884`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/install-build-deps.sh
cargo build --release -p vmqtt-shard
exec "$CARGO_TARGET_DIR/release/vmqtt-shard" "$@"
