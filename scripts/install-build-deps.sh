#!/usr/bin/env bash
# Installs what building vmqtt needs besides the Rust toolchain, when missing:
#   - libclang-dev   bindgen, for the RocksDB bindings (vmqtt-storage)
#   - g++            RocksDB's C++ sources
#   - protobuf-compiler, libprotobuf-dev  protoc and its well-known types
#                    (google/protobuf/*.proto), for etcd-client's gRPC bindings
# Idempotent: no apt-get at all when everything is present. Root on Debian
# (CI, developer machines); uses sudo when not root and sudo exists.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in libclang-dev g++ protobuf-compiler libprotobuf-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -E"
    else
        echo "install-build-deps: need ${missing[*]} but not root and no sudo" >&2
        exit 1
    fi
fi
echo "install-build-deps: installing ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
