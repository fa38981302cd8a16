#!/usr/bin/env bash
# Installs what the end-to-end suite (shards/tests) needs besides Rust:
#   - mosquitto          the reference broker (VMQTT_E2E_BROKER=mosquitto)
#   - mosquitto-clients  mosquitto_pub / mosquitto_sub (non-Rust client tests)
#   - python3-pip        to install paho-mqtt
#   - openssl            certificates for the TLS tests and scripts/security-example.sh
#   - etcd-server        the cluster's coordinator; each cluster test starts its own
#                        etcd on free ports with a temporary data directory
#   - iproute2           `ip netns` for the partition test (cluster/split.rs,
#                        which runs as root and makes its own namespace)
#   - paho-mqtt 2.1.0    for shards/tests/python/*.py, installed for the
#                        `python3` first on PATH (the one the tests run)
#
# Idempotent: does nothing when everything is present; runs `apt-get update`
# only when a Debian package is missing. Meant for root on Debian bookworm
# (CI and developer machines); uses sudo when not root and sudo exists.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -E"
    else
        echo "install-test-deps: not root and no sudo; cannot install packages" >&2
        exit 1
    fi
fi

missing=()
for pkg in mosquitto mosquitto-clients python3-pip openssl etcd-server iproute2; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-test-deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    # The Debian package may start a system mosquitto on port 1883; the tests
    # never use it (each test starts its own broker on a free port), but stop
    # it so that 1883 stays free for a vmqtt started by hand.
    if command -v service >/dev/null 2>&1; then
        $SUDO service mosquitto stop >/dev/null 2>&1 || true
        # etcd-server starts a system etcd on 2379; the tests start their own.
        $SUDO service etcd stop >/dev/null 2>&1 || true
    fi
else
    echo "install-test-deps: mosquitto, mosquitto-clients, python3-pip present"
fi

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "install-test-deps: $PY not found" >&2
    exit 1
fi

paho_version() {
    "$PY" -c 'import paho.mqtt; print(paho.mqtt.__version__)' 2>/dev/null || true
}

if [ "$(paho_version)" = "2.1.0" ]; then
    echo "install-test-deps: paho-mqtt 2.1.0 present for $PY"
else
    echo "install-test-deps: installing paho-mqtt==2.1.0 for $PY"
    # Debian's python3 is "externally managed" (PEP 668): allow pip to install
    # into it. Older pips ignore this variable.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        $SUDO "$PY" -m pip install -q "paho-mqtt==2.1.0"
    got="$(paho_version)"
    if [ "$got" != "2.1.0" ]; then
        echo "install-test-deps: paho-mqtt 2.1.0 not importable by $PY (got '${got}')" >&2
        exit 1
    fi
fi

echo "install-test-deps: done"
