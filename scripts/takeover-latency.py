#!/usr/bin/env python3
"""Takeover and failover timings of a vmqtt cluster, with paho-mqtt (v5).

takeover: a persistent session (session expiry 1 h, QoS 1 subscription)
with QUEUED messages waiting is resumed by a CONNECT on ANOTHER node (the
session moves) and, as the baseline in the same run, on the SAME node;
measured: CONNECT -> CONNACK, and CONNECT -> the last queued message.

failover: a client on node A (its pid given), a publisher on B sending
QoS 1 every 20 ms; A is killed with -9; the client reconnects to B every
100 ms until accepted, subscribes, and the time from the kill to its first
message is measured (the session lived only on A: a fresh one).

Prints one line per measurement and a summary:
  takeover-cross connack p50 .. p99 .. ms  drained p50 .. p99 .. ms
"""
import argparse
import os
import signal
import statistics
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


class Client:
    """A paho v5 client with events for CONNACK and message counting."""

    def __init__(self, cid, addr, clean, expiry=3600):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                             protocol=mqtt.MQTTv5)
        self.connacked = threading.Event()
        self.reason = None
        self.got = 0
        self.want = None
        self.done = threading.Event()
        self.first = threading.Event()
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.addr = addr
        self.clean = clean
        self.props = props

    def _on_connect(self, c, u, flags, reason, props):
        self.reason = reason
        self.connacked.set()

    def _on_message(self, c, u, msg):
        with self.lock:
            self.got += 1
            self.first.set()
            if self.want is not None and self.got >= self.want:
                self.done.set()

    def connect(self, timeout=10):
        h, p = self.addr
        self.c.connect(h, p, keepalive=30, clean_start=self.clean,
                       properties=self.props)
        self.c.loop_start()
        if not self.connacked.wait(timeout):
            raise RuntimeError("no CONNACK")
        return self.reason

    def stop(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


def publish_n(addr, topic, n, cid):
    p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5)
    h, port = addr
    p.max_inflight_messages_set(100)
    p.connect(h, port)
    p.loop_start()
    infos = [p.publish(topic, b"x" * 64, qos=1) for _ in range(n)]
    for i in infos:
        i.wait_for_publish(30)
    p.disconnect()
    p.loop_stop()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def takeover(nodes, rounds, queued):
    results = {"cross": ([], []), "same": ([], [])}
    cid = "tk-bench"
    first = Client(cid, nodes[0], clean=True)
    first.connect()
    first.c.subscribe("tkb/#", qos=1)
    time.sleep(0.3)
    first.stop()
    at = 0
    for r in range(rounds):
        for kind in ("same", "cross"):
            nxt = at if kind == "same" else (at + 1) % len(nodes)
            publish_n(nodes[(at + 2) % len(nodes)], "tkb/1", queued, f"tk-pub-{r}-{kind}")
            c = Client(cid, nodes[nxt], clean=False)
            c.want = queued
            t0 = time.monotonic()
            reason = c.connect()
            t1 = time.monotonic()
            if reason != 0:
                raise RuntimeError(f"CONNACK {reason}")
            if not c.done.wait(30):
                raise RuntimeError(f"{kind}: got {c.got} of {queued}")
            t2 = time.monotonic()
            c.stop()
            at = nxt
            results[kind][0].append((t1 - t0) * 1000)
            results[kind][1].append((t2 - t0) * 1000)
            print(f"takeover-{kind} round {r}: connack {(t1-t0)*1000:.1f} ms "
                  f"drained {(t2-t0)*1000:.1f} ms", flush=True)
    for kind in ("same", "cross"):
        ca, dr = results[kind]
        print(f"takeover-{kind} queued {queued} rounds {rounds}: connack p50 {pct(ca,.5):.1f} "
              f"p99 {pct(ca,.99):.1f} ms  drained p50 {pct(dr,.5):.1f} p99 {pct(dr,.99):.1f} ms",
              flush=True)


def failover(victim, survivor, pid):
    c = Client("fo-bench", victim, clean=True)
    c.connect()
    c.c.subscribe("fob/#", qos=1)
    time.sleep(0.5)
    stop = threading.Event()

    def pump():
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fo-pub",
                        protocol=mqtt.MQTTv5)
        p.connect(*survivor)
        p.loop_start()
        while not stop.is_set():
            p.publish("fob/1", b"tick", qos=1)
            time.sleep(0.02)
        p.disconnect()
        p.loop_stop()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    time.sleep(0.5)
    c.c.loop_stop()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    refused = 0
    while True:
        n = Client("fo-bench", survivor, clean=True)
        try:
            reason = n.connect(timeout=5)
        except Exception:
            reason = None
        if reason == 0:
            break
        refused += 1
        n.stop()
        time.sleep(0.1)
    t1 = time.monotonic()
    n.c.subscribe("fob/#", qos=1)
    if not n.first.wait(30):
        raise RuntimeError("no message after failover")
    t2 = time.monotonic()
    stop.set()
    n.stop()
    print(f"failover: accepted {(t1-t0)*1000:.0f} ms after kill -9 ({refused} refused), "
          f"receiving {(t2-t0)*1000:.0f} ms after", flush=True)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--nodes", nargs="+", required=True, type=hostport)
    a.add_argument("--rounds", type=int, default=20)
    a.add_argument("--queued", type=int, default=1000)
    a.add_argument("--failover-pid", type=int, help="pid of the first node")
    o = a.parse_args()
    takeover(o.nodes, o.rounds, o.queued)
    if o.failover_pid:
        failover(o.nodes[0], o.nodes[1], o.failover_pid)


if __name__ == "__main__":
    sys.exit(main())
