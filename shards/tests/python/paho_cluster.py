#!/usr/bin/env python3
"""paho-mqtt 2.x across two nodes of a vmqtt cluster: a subscriber on node
B gets what a publisher on node A sends, at QoS 0, 1 and 2, for MQTT 3.1.1
and 5 — each message once, in order, with its QoS. Run by the e2e test
`cluster::cluster_paho_clients_across_nodes`.

    paho_cluster.py --port-a A --port-b B --prefix P
"""
import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt

WAIT = 10


def client(cid, port, v5):
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def run(port_a, port_b, prefix, v5):
    tag = f"{prefix}-{'v5' if v5 else 'v311'}"
    got = []
    lock = threading.Condition()
    subacked = threading.Event()

    def on_message(c, u, m):
        with lock:
            got.append((m.topic, m.payload.decode(), m.qos))
            lock.notify_all()

    sub = client(f"{tag}-sub", port_b, v5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subacked.set()
    sub.subscribe(f"{tag}/#", qos=2)
    if not subacked.wait(WAIT):
        sys.exit(f"{tag}: no SUBACK")
    pub = client(f"{tag}-pub", port_a, v5)
    # The route crosses from B to A: probe until it has.
    deadline = time.monotonic() + 20
    while True:
        pub.publish(f"{tag}/probe", b"probe", qos=0)
        with lock:
            lock.wait(0.1)
            if any(p == "probe" for _, p, _ in got):
                break
        if time.monotonic() > deadline:
            sys.exit(f"{tag}: the route never reached node A")
    time.sleep(0.3)
    with lock:
        got.clear()
    want = []
    for q in (0, 1, 2):
        for i in range(5):
            payload = f"q{q}-{i}"
            info = pub.publish(f"{tag}/t", payload.encode(), qos=q)
            info.wait_for_publish(WAIT)
            want.append((f"{tag}/t", payload, q))
    deadline = time.monotonic() + WAIT
    with lock:
        while len([g for g in got if g[1] != "probe"]) < len(want) and time.monotonic() < deadline:
            lock.wait(0.2)
        real = [g for g in got if g[1] != "probe"]
    time.sleep(0.5)
    with lock:
        real = [g for g in got if g[1] != "probe"]
    if real != want:
        sys.exit(f"{tag}: got {real}, want {want}")
    print(f"{tag}: {len(want)} messages across nodes, once each, in order, QoS kept")
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-a", type=int, required=True)
    ap.add_argument("--port-b", type=int, required=True)
    ap.add_argument("--prefix", required=True)
    a = ap.parse_args()
    for v5 in (False, True):
        run(a.port_a, a.port_b, a.prefix, v5)


if __name__ == "__main__":
    main()
