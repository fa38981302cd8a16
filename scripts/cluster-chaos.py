#!/usr/bin/env python3
"""Chaos run against a 3-node vmqtt cluster (started by cluster-chaos.sh).

SUBS persistent subscribers (MQTT 5, session expiry 1 h, QoS 1) each
reconnect to a random node every few seconds (or when their node dies);
one QoS 1 publisher per subscriber topic publishes numbered messages at
RATE msg/s each, to a random live node, recording which were acknowledged
with Success. A node is killed with -9 and restarted every KILL_EVERY
seconds for DURATION seconds. At the end every subscriber drains, and the
run reports, per subscriber and in total: acknowledged, received,
acknowledged but never received (lost), and duplicates. A subscriber that
reconnects to find no session (session present 0: it lived only on a dead
node) subscribes again; the report counts these as fresh sessions.

The nodes are given as HOST:PORT and restarted by sending a line to the
wrapper (the wrapper owns the processes): "kill I" / "start I" on stdout,
and it answers on stdin.
"""
import argparse
import random
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


class Sub:
    def __init__(self, i, nodes):
        self.i = i
        self.nodes = nodes
        self.got = {}
        self.lock = threading.Lock()
        self.c = None
        # Reconnects that found no session (session present 0): it lived
        # only on a dead node; the subscription is made again.
        self.fresh = 0

    def connect(self, first=False):
        for _ in range(200):
            node = random.randrange(len(self.nodes))
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-sub-{self.i}",
                            protocol=mqtt.MQTTv5)
            c.on_message = self.on_message
            ok = threading.Event()
            res = {}

            def on_connect(cl, u, flags, reason, props):
                res["r"] = reason
                res["present"] = bool(getattr(flags, "session_present", False))
                ok.set()

            c.on_connect = on_connect
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            try:
                c.connect(*self.nodes[node], keepalive=10, clean_start=first, properties=props)
            except OSError:
                time.sleep(0.2)
                continue
            c.loop_start()
            if ok.wait(5) and res.get("r") == 0:
                if first or not res.get("present"):
                    if not first:
                        self.fresh += 1
                    c.subscribe(f"chaos/{self.i}", qos=1)
                    time.sleep(0.5)
                self.c = c
                return
            c.loop_stop()
            try:
                c.disconnect()
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"sub {self.i} could not connect")

    def on_message(self, c, u, msg):
        n = int(msg.payload)
        with self.lock:
            self.got[n] = self.got.get(n, 0) + 1

    def drop(self):
        if self.c is not None:
            self.c.loop_stop()
            try:
                self.c.disconnect()
            except Exception:
                pass
            self.c = None


class Pub:
    def __init__(self, i, nodes, rate):
        self.i = i
        self.nodes = nodes
        self.rate = rate
        # number -> (wall time acknowledged, node index published to)
        self.acked = {}
        self.n = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            node = random.randrange(len(self.nodes))
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-pub-{self.i}",
                            protocol=mqtt.MQTTv5)
            pending = {}
            lock = threading.Lock()

            def on_publish(cl, u, mid, reason, props, node=node):
                with lock:
                    n = pending.pop(mid, None)
                if n is not None and (reason is None or reason.value == 0):
                    self.acked[n] = (time.time(), node)

            c.on_publish = on_publish
            ok = threading.Event()
            c.on_connect = lambda cl, u, f, r, p: ok.set() if r == 0 else None
            try:
                c.connect(*self.nodes[node], keepalive=10)
            except OSError:
                time.sleep(0.2)
                continue
            c.loop_start()
            if not ok.wait(5):
                c.loop_stop()
                time.sleep(0.2)
                continue
            until = time.monotonic() + random.uniform(2, 6)
            while time.monotonic() < until and not self.stop.is_set() and c.is_connected():
                self.n += 1
                info = c.publish(f"chaos/{self.i}", str(self.n).encode(), qos=1)
                with lock:
                    pending[info.mid] = self.n
                time.sleep(1.0 / self.rate)
            time.sleep(0.5)
            c.loop_stop()
            try:
                c.disconnect()
            except Exception:
                pass


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--nodes", nargs="+", type=hostport, required=True)
    a.add_argument("--subs", type=int, default=10)
    a.add_argument("--rate", type=float, default=20)
    a.add_argument("--duration", type=float, default=180)
    a.add_argument("--kill-every", type=float, default=20)
    o = a.parse_args()
    random.seed(7)
    subs = [Sub(i, o.nodes) for i in range(o.subs)]
    for s in subs:
        s.connect(first=True)
    pubs = [Pub(i, o.nodes, o.rate) for i in range(o.subs)]
    threads = [threading.Thread(target=p.run, daemon=True) for p in pubs]
    for t in threads:
        t.start()
    start = time.monotonic()
    next_kill = start + o.kill_every
    victim = None
    while time.monotonic() - start < o.duration:
        now = time.monotonic()
        if now >= next_kill:
            if victim is not None:
                print(f"start {victim}", flush=True)
                sys.stdin.readline()
            victim = random.randrange(len(o.nodes))
            print(f"kill {victim}", flush=True)
            sys.stdin.readline()
            next_kill = now + o.kill_every
        s = random.choice(subs)
        s.drop()
        s.connect()
        time.sleep(random.uniform(0.2, 1.0))
    if victim is not None:
        print(f"start {victim}", flush=True)
        sys.stdin.readline()
    for p in pubs:
        p.stop.set()
    for t in threads:
        t.join(30)
    time.sleep(3)
    for s in subs:
        s.drop()
        s.connect()
    time.sleep(10)
    total = {"acked": 0, "received": 0, "lost": 0, "dups": 0}
    for s, p in zip(subs, pubs):
        with s.lock:
            got = dict(s.got)
        lost = sorted(n for n in p.acked if n not in got)
        dups = sum(c - 1 for c in got.values() if c > 1)
        total["acked"] += len(p.acked)
        total["received"] += len(got)
        total["lost"] += len(lost)
        total["dups"] += dups
        print(f"# sub {s.i}: acked {len(p.acked)} received {len(got)} lost {len(lost)} "
              f"dups {dups} fresh sessions {s.fresh}" + (f" first lost {lost[:5]}" if lost else ""),
              file=sys.stderr, flush=True)
        for n in lost[:3] + lost[-1:]:
            at, node = p.acked[n]
            stamp = time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
            print(f"#   lost {n}: acknowledged {stamp} by node {node + 1}", file=sys.stderr, flush=True)
        s.drop()
    print(f"# total: acked {total['acked']} received {total['received']} lost {total['lost']} "
          f"duplicates {total['dups']}", file=sys.stderr, flush=True)
    print("done", flush=True)
    return 1 if total["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
