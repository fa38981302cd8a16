#!/usr/bin/env bash
# The README's "Secure it" walk-through, run end to end with the real
# clients: certificates, a password file, an ACL, MQTT over TLS with a
# password, mutual TLS with the certificate as the user name, and the
# refusals. scripts/test.sh runs it after the tests; by hand:
#
#   bash scripts/security-example.sh [path/to/vmqtt-shard]
#
# Needs openssl and mosquitto-clients (scripts/install-test-deps.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$HOME/.cache/vmqtt-target}
bin=${1:-$target/debug/vmqtt-shard}
[ -x "$bin" ] || { echo "no broker binary at $bin (build it: cargo build -p vmqtt-shard)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
PLAIN=${PLAIN_PORT:-18830}
TLS=${TLS_PORT:-18831}

work=$(mktemp -d)
broker=
cleanup() {
  [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; echo "--- broker log:" >&2; cat broker.log >&2 || true; exit 1; }

step "1. Certificates: a CA, the broker's (localhost, 127.0.0.1), a device's (CN=device-1)"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -days 365 -subj "/CN=Example MQTT CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req $ec -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile server.ext -out server.crt 2>/dev/null
openssl req $ec -subj "/CN=device-1" -keyout device-1.key -out device-1.csr 2>/dev/null
# (Extensions make these X.509 v3 certificates: rustls accepts no other.)
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in device-1.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile client.ext -out device-1.crt 2>/dev/null
ls *.crt

step "2. Users: vmqtt-shard passwd FILE USER (password from stdin here; asked twice on a terminal)"
echo 'alice-secret' | "$bin" passwd passwd alice
echo 'bob-secret' | "$bin" passwd passwd bob
cut -d: -f1 passwd

step "3. The ACL"
cat > acl <<'EOF'
# alice: reads and writes everything under sensors/, and may read $SYS
user alice
topic readwrite sensors/#
topic read $SYS/#

# bob: reads sensors/ only
user bob
topic read sensors/#

# the device of certificate CN=device-1 writes its own readings
user device-1
topic write sensors/device-1/#

# every client: its own inbox
pattern readwrite clients/%c/#
EOF
cat acl

step "4. The configuration, checked"
cat > vmqtt.toml <<EOF
listen = ["127.0.0.1:$PLAIN"]
data_dir = "data"

[tls]
listen = ["127.0.0.1:$TLS"]
cert_file = "server.crt"
key_file = "server.key"
client_ca_file = "ca.crt"
use_identity_as_username = true

[auth]
anonymous = "deny"
password_file = "passwd"
acl_file = "acl"
EOF
"$bin" check-config vmqtt.toml

step "5. The broker"
"$bin" --config vmqtt.toml --cores 2 2> broker.log &
broker=$!
for _ in $(seq 100); do
  grep -q "vmqtt listening" broker.log && break
  kill -0 "$broker" 2>/dev/null || fail "the broker did not start"
  sleep 0.1
done

step "6. Over TLS with passwords: bob subscribes, alice publishes"
mosquitto_sub -h localhost -p "$TLS" --cafile ca.crt -u bob -P bob-secret \
  -t 'sensors/#' -v -q 1 -C 2 -W 20 > received &
sub=$!
sleep 1
mosquitto_pub -h localhost -p "$TLS" --cafile ca.crt -u alice -P alice-secret \
  -t sensors/room1 -m 21.5 -q 1

step "7. Mutual TLS: the device's certificate is its user name (device-1), no password"
mosquitto_pub -h localhost -p "$TLS" --cafile ca.crt --cert device-1.crt --key device-1.key \
  -t sensors/device-1/temp -m 19.0 -q 1
wait "$sub" || fail "bob did not receive both messages"
cat received
grep -qx 'sensors/room1 21.5' received || fail "sensors/room1 missing"
grep -qx 'sensors/device-1/temp 19.0' received || fail "sensors/device-1/temp missing"

step "8. Refusals"
# A wrong password: CONNACK 0x86 (MQTT 3.1.1: 0x04).
if out=$(mosquitto_pub -h localhost -p "$TLS" --cafile ca.crt -u alice -P wrong \
    -t sensors/x -m no 2>&1); then fail "a wrong password was accepted"; fi
echo "wrong password: $out"
echo "$out" | grep -qi "bad user name or password" || fail "expected 'bad user name or password'"
# No credentials at all (anonymous = "deny"): 0x87 / 0x05.
if out=$(mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -t sensors/x -m no 2>&1); then
  fail "an anonymous client was accepted"
fi
echo "anonymous: $out"
echo "$out" | grep -qi "not authori[sz]ed" || fail "expected 'not authorised'"
# Plain TCP to the TLS port: no MQTT without TLS.
if mosquitto_pub -h 127.0.0.1 -p "$TLS" -u alice -P alice-secret -t sensors/x -m no \
    2>/dev/null; then fail "plain MQTT was accepted on the TLS port"; fi
echo "plain MQTT on the TLS port: refused"
# A certificate the CA did not sign: the handshake fails.
openssl req -x509 $ec -days 1 -subj "/CN=device-1" -keyout rogue.key -out rogue.crt 2>/dev/null
if mosquitto_pub -h localhost -p "$TLS" --cafile ca.crt --cert rogue.crt --key rogue.key \
    -t sensors/device-1/temp -m no 2>/dev/null; then fail "a self-signed client certificate was accepted"; fi
echo "self-signed client certificate: refused"
# ACL: bob may not publish; MQTT 5 says so in the PUBACK (0x87).
out=$(mosquitto_pub -V mqttv5 -h localhost -p "$TLS" --cafile ca.crt -u bob -P bob-secret \
  -t sensors/room1 -m no -q 1 2>&1 || true)
echo "bob publishing (MQTT 5): $out"
echo "$out" | grep -qi "not authori[sz]ed" || fail "expected the PUBACK to say 'not authorized'"
# ACL: bob may not read $SYS; alice may.
out=$(mosquitto_sub -V mqttv5 -h localhost -p "$TLS" --cafile ca.crt -u bob -P bob-secret \
  -t '$SYS/broker/uptime' -C 1 -W 3 2>&1 || true)
echo "bob subscribing to \$SYS: $out"
echo "$out" | grep -qi "denied" || fail "expected the SUBACK to refuse bob"
mosquitto_sub -h localhost -p "$TLS" --cafile ca.crt -u alice -P alice-secret \
  -t '$SYS/broker/uptime' -C 1 -W 20 -v | grep -q '^\$SYS/broker/uptime' \
  || fail "alice did not read \$SYS"
echo "alice reads \$SYS: ok"

step "All security examples passed"
