#!/usr/bin/env python3
"""End-to-end checks of an MQTT broker with paho-mqtt 2.x.

Run by shards/tests/e2e/external.rs as

    python3 shards/tests/python/paho_e2e.py --port N --protocol v5|v311 \
        --id-a A --id-b B --prefix P

where A and B are client ids on different broker shards (A publishes, B
subscribes). Checks: QoS 1 and QoS 2 delivery (QoS 2 exactly once), retained
messages (store, deliver on subscribe, delete), the will on an abnormal
disconnect and not after a normal one, and (v5) user properties, response
topic, correlation data and content type passing through.

Exit code 0 when every check passes, 1 on the first failure (with a message
on stderr), 2 on bad arguments, 3 when paho-mqtt 2.x is not importable.
"""

import argparse
import queue
import sys
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as e:  # pragma: no cover - environment check
    print(f"paho-mqtt is not installed: {e}", file=sys.stderr)
    sys.exit(3)

if not paho.mqtt.__version__.startswith("2."):
    print(f"paho-mqtt 2.x required, found {paho.mqtt.__version__}", file=sys.stderr)
    sys.exit(3)

WAIT = 5.0
QUIET = 0.5


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Client:
    """A paho client on a background loop, with received messages in a queue."""

    def __init__(self, args, client_id, will=None):
        self.protocol = mqtt.MQTTv5 if args.protocol == "v5" else mqtt.MQTTv311
        kwargs = {}
        if self.protocol == mqtt.MQTTv311:
            kwargs["clean_session"] = True
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        self.id = client_id
        self.msgs = queue.Queue()
        self.events = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.events.put(("connack", rc))
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.events.put(("suback", mid, rcs))
        self.c.on_message = lambda c, u, msg: self.msgs.put(msg)
        self.c.on_publish = lambda c, u, mid, rc, props: self.events.put(("puback", mid))
        if will is not None:
            self.c.will_set(*will)
        self.c.connect("127.0.0.1", args.port, keepalive=30)
        self.c.loop_start()
        ev = self.wait_event("connack")
        check(not ev[1].is_failure, f"{client_id}: CONNACK {ev[1]}")

    def wait_event(self, kind, mid=None):
        deadline = time.time() + WAIT
        stash = []
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    raise Failure(f"{self.id}: no {kind} (mid {mid}) within {WAIT}s")
                try:
                    ev = self.events.get(timeout=left)
                except queue.Empty:
                    continue
                if ev[0] == kind and (mid is None or ev[1] == mid):
                    return ev
                stash.append(ev)
        finally:
            for ev in stash:
                self.events.put(ev)

    def subscribe(self, topic, qos):
        _, mid = self.c.subscribe(topic, qos)
        ev = self.wait_event("suback", mid)
        codes = [int(getattr(rc, "value", rc)) for rc in ev[2]]
        check(codes == [qos], f"{self.id}: SUBACK for {topic}: {codes}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            self.wait_event("puback", info.mid)

    def recv(self, what):
        try:
            return self.msgs.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.id}: no message within {WAIT}s ({what})")

    def expect_nothing(self, what, quiet=QUIET):
        try:
            m = self.msgs.get(timeout=quiet)
        except queue.Empty:
            return
        raise Failure(f"{self.id}: unexpected message on {m.topic}: {m.payload!r} ({what})")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Close the socket without DISCONNECT (abnormal disconnect)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def check_qos(args):
    sub = Client(args, args.id_b)
    pub = Client(args, args.id_a)
    for qos in (1, 2):
        t = f"{args.prefix}/qos{qos}"
        sub.subscribe(t, qos)
        n = 20
        for i in range(n):
            pub.publish(t, f"m{i}".encode(), qos)
        got = [sub.recv(f"QoS {qos} message {i}") for i in range(n)]
        check(
            [m.payload.decode() for m in got] == [f"m{i}" for i in range(n)],
            f"QoS {qos}: payloads/order {[m.payload for m in got]}",
        )
        check(all(m.qos == qos for m in got), f"QoS {qos}: delivered QoS {[m.qos for m in got]}")
        sub.expect_nothing(f"QoS {qos} duplicates")
    pub.disconnect()
    sub.disconnect()


def check_retained(args):
    pub = Client(args, args.id_a)
    t = f"{args.prefix}/retained"
    pub.publish(t, b"keep me", 1, retain=True)
    sub = Client(args, args.id_b)
    sub.subscribe(f"{args.prefix}/+", 1)
    m = sub.recv("retained on subscribe")
    check(m.payload == b"keep me" and m.retain, f"retained: {m.payload!r} retain={m.retain}")
    sub.expect_nothing("a single retained message")
    sub.disconnect()
    # Delete it; a new subscriber gets nothing.
    pub.publish(t, b"", 1, retain=True)
    sub = Client(args, args.id_b)
    sub.subscribe(t, 1)
    sub.expect_nothing("deleted retained message")
    sub.disconnect()
    pub.disconnect()


def check_will(args):
    t = f"{args.prefix}/will"
    sub = Client(args, args.id_b)
    sub.subscribe(t, 1)
    w = Client(args, f"{args.id_a}-will", will=(t, b"gone", 1, False))
    w.drop()
    m = sub.recv("will after abnormal disconnect")
    check(m.payload == b"gone" and m.qos == 1, f"will: {m.payload!r} qos {m.qos}")
    w = Client(args, f"{args.id_a}-will2", will=(t, b"must not", 1, False))
    w.disconnect()
    sub.expect_nothing("will after a normal DISCONNECT", quiet=1.0)
    sub.disconnect()


def check_properties(args):
    t = f"{args.prefix}/props"
    sub = Client(args, args.id_b)
    sub.subscribe(t, 1)
    pub = Client(args, args.id_a)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    props.ResponseTopic = f"{args.prefix}/response"
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "text/plain"
    pub.publish(t, b"with properties", 1, properties=props)
    m = sub.recv("message with properties")
    p = m.properties
    check(m.payload == b"with properties", f"payload {m.payload!r}")
    check(
        getattr(p, "UserProperty", None) == [("a", "1"), ("b", "2"), ("a", "3")],
        f"user properties {getattr(p, 'UserProperty', None)}",
    )
    check(getattr(p, "ResponseTopic", None) == f"{args.prefix}/response", "response topic")
    check(getattr(p, "CorrelationData", None) == b"\x00\x01corr", "correlation data")
    check(getattr(p, "ContentType", None) == "text/plain", "content type")
    pub.disconnect()
    sub.disconnect()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", choices=["v5", "v311"], default="v5")
    ap.add_argument("--id-a", default="paho-a")
    ap.add_argument("--id-b", default="paho-b")
    ap.add_argument("--prefix", default="paho")
    args = ap.parse_args()
    checks = [check_qos, check_retained, check_will]
    if args.protocol == "v5":
        checks.append(check_properties)
    for f in checks:
        try:
            f(args)
        except Failure as e:
            print(f"FAIL {args.protocol} {f.__name__}: {e}", file=sys.stderr)
            return 1
        print(f"ok {args.protocol} {f.__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
