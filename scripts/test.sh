#!/usr/bin/env bash
# The test suite: installs what the tests need (mosquitto clients, paho-mqtt),
# checks formatting and lints, runs every test (unit, sans-IO broker,
# end-to-end with real clients) and a bounded fuzz run of the decoder.
#   FUZZ_SECONDS=0 skips the fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

bash scripts/install-build-deps.sh
bash scripts/install-test-deps.sh

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
export VMQTT_REQUIRE_EXTERNAL_CLIENTS=1
cargo test --workspace
echo "== benches compile"
# vmqtt-storage has no benches; skipping it avoids a second (release) RocksDB build.
cargo bench --workspace --exclude vmqtt-storage --no-run
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  echo "== fuzz (${FUZZ_SECONDS:-60} s)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" bash fuzz/run.sh "${FUZZ_SECONDS:-60}"
fi
echo "== all tests passed"
