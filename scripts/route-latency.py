#!/usr/bin/env python3
"""Route propagation across a cluster: how long from a subscriber's SUBACK
on node B until a message published on node A reaches it (the new route
had to cross from B to A first). Used by scripts/bench-cluster.sh.

    route-latency.py HOST_A PORT_A HOST_B PORT_B [ROUNDS]

Each round subscribes to a fresh topic on B and, from the SUBACK on,
publishes to it on A every 0.5 ms (QoS 0) until B receives one; prints
P50, P99 and max in ms (an upper bound by at most the 0.5 ms step).
Needs paho-mqtt 2.x (scripts/install-test-deps.sh).
"""
import socket
import statistics
import sys
import threading
import time

import paho.mqtt.client as mqtt


def client(cid, host, port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.connect(host, port, keepalive=30)
    # paho leaves Nagle on: small publishes would wait for ACKs.
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.loop_start()
    return c


def main():
    host_a, port_a, host_b, port_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    tag = f"rl{int(time.time() * 1000) % 1000000}"
    pub = client(f"{tag}-pub", host_a, port_a)
    sub = client(f"{tag}-sub", host_b, port_b)
    subacked = threading.Event()
    got = threading.Event()
    sub.on_subscribe = lambda c, u, mid, rc, props: subacked.set()
    sub.on_message = lambda c, u, m: got.set()
    time.sleep(0.5)
    samples = []
    for i in range(rounds):
        topic = f"{tag}/route/{i}"
        subacked.clear()
        got.clear()
        sub.subscribe(topic, qos=0)
        if not subacked.wait(5):
            sys.exit("no SUBACK")
        t0 = time.monotonic()
        while not got.is_set():
            pub.publish(topic, b"r", qos=0)
            if got.wait(0.0005):
                break
            if time.monotonic() - t0 > 5:
                sys.exit(f"round {i}: no message within 5 s")
        samples.append(((time.monotonic() - t0) * 1000, i))
        sub.unsubscribe(topic)
        time.sleep(0.02)
    slowest = sorted(samples, reverse=True)[:3]
    ms = sorted(s for s, _ in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"route propagation over {rounds} rounds: P50 {statistics.median(ms):.2f} ms, "
          f"P99 {p99:.2f} ms, max {ms[-1]:.2f} ms; slowest rounds: "
          + ", ".join(f"#{i} {s:.2f} ms" for s, i in slowest))
    pub.loop_stop()
    sub.loop_stop()


if __name__ == "__main__":
    main()
