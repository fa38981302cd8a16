#!/usr/bin/env bash
# Bounded fuzz run of the codec decoder (fuzz_targets/decode.rs).
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     (default 60 s)
#
# Installs cargo-fuzz if it is missing, seeds the corpus with valid encodings
# of every packet type in every version, runs libFuzzer for SECONDS and exits
# non-zero if it finds a crash (the input is saved under fuzz/artifacts/decode/
# and the command to reproduce it is printed). The corpus grows in
# fuzz/corpus/decode/ across runs; both folders are git-ignored.
#
# Only a stable toolchain is installed, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its -Z flags (AddressSanitizer, sanitizer coverage) to stable rustc.
set -euo pipefail

secs=${1:-60}
shift || true
case $secs in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [libFuzzer flags...]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "run.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version '^0.13'
fi
export RUSTC_BOOTSTRAP=1

corpus=$here/corpus/decode
mkdir -p "$corpus" "$here/artifacts/decode"

# Seeds: valid frames produced by vmqtt's encoder (name, hex). Writing them
# again each run is idempotent.
while read -r name hex; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2059 # the format is the data: \xHH escapes
  printf "$(printf '%s' "$hex" | sed 's/../\\x&/g')" >"$corpus/seed-$name"
done <<'EOF'
v31-connect 102d00064d514973647003ee003c0008636c69656e742d31000677696c6c2f74000362796500047573657200027077
v31-connack 20020000
v311-connect 102b00044d51545404ee003c0008636c69656e742d31000677696c6c2f74000362796500047573657200027077
v311-connack 20020100
v3-publish 3d0c0003612f62000a68656c6c6f
v3-puback 4002000a
v3-pubrel 6202000a
v3-subscribe 8219000a0005612f2b2f6301000c2473686172652f672f782f2302
v3-suback 9004000a0180
v3-unsubscribe a207000a0003612f23
v3-unsuback b002000a
v3-ping-disconnect c000d000e000
v5-connect 105400044d51545405ee003c1b110000003c150005534352414d1600016421000a2600016b0001760008636c69656e742d310c080004726573701800000005000677696c6c2f74000362796500047573657200027077
v5-connack 201101000e1200066175746f2d3122000a2401
v5-publish 3d2f0003612f62000a22010103000a746578742f706c61696e090001630b010bac022300032600016b00017668656c6c6f
v5-puback 4008000a10041f000172
v5-subscribe 821c000a020b070005612f2b2f6315000c2473686172652f672f782f2302
v5-suback 9005000a000180
v5-unsubscribe a208000a000003612f23
v5-unsuback b005000a000011
v5-disconnect e00704051100000000
v5-auth f010180e150005534352414d16000378797a
v5-publish-puback 3d2f0003612f62000a22010103000a746578742f706c61696e090001630b010bac022300032600016b00017668656c6c6f4008000a10041f000172
EOF

start=$(date +%s)
status=0
cargo fuzz run decode "$corpus" -- \
  -max_total_time="$secs" -max_len=2048 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "$@" || status=$?
echo "run.sh: fuzzing finished in $(($(date +%s) - start)) s (build included), exit $status" >&2
exit "$status"
