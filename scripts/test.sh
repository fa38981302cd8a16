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
echo "== the README's security walk-through (TLS, passwords, ACL)"
bash scripts/security-example.sh "$CARGO_TARGET_DIR/debug/vmqtt-shard"
echo "== benches build"
# In the dev profile, so the debug RocksDB of the tests is reused: a release
# build (`cargo bench --no-run`) would compile RocksDB's C++ again (vmqtt-shard
# depends on it), about 15 minutes on 2 cores. The benchmarks themselves run
# with `cargo bench` (README).
cargo build --workspace --benches
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  echo "== fuzz (${FUZZ_SECONDS:-60} s)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" bash fuzz/run.sh "${FUZZ_SECONDS:-60}"
fi
echo "== all tests passed"
