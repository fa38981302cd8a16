#!/usr/bin/env python3
"""MQTT 5 checks of a broker with paho-mqtt 2.x, after the Eclipse Paho 5.0
interoperability tests test_session_expiry and test_server_topic_alias.

Run by shards/tests/e2e/v5.rs as

    python3 shards/tests/python/paho_v5.py --port N --check CHECK \
        --id-a A --id-b B --prefix P

where A (the publisher) and B (the subscriber) are client ids on different
broker shards. CHECK is one of:

  session-expiry  the steps of Paho's test_session_expiry on one client id:
                  expiry 0 ends a session at disconnect, expiry 5 keeps it
                  2 s but not 6 s; CONNECT (clean start) with Session Expiry
                  Interval 1, subscribe, DISCONNECT with 5, a QoS 1 message
                  queued meanwhile, reconnect after 3 s: session present and
                  the message delivered (the DISCONNECT value replaced the
                  CONNECT one, MQTT-3.14.2-2); DISCONNECT with 0 ends it.
                  The last steps once more at once: the session with expiry 1
                  that just ended must not end the new one after 1 s.
  topic-alias     the subscriber announces Topic Alias Maximum 2 and gets
                  messages on more topics than that: the broker's aliases
                  (never above 2, some PUBLISHes with an empty topic) resolve
                  to the topics published, in order. paho-mqtt 2.1 does not
                  resolve incoming aliases itself, so this script does what a
                  client must (MQTT 5.0 section 3.3.2.3.4). A subscriber that
                  announces no maximum gets every topic in full.

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


def connect_props(**values):
    p = Properties(PacketTypes.CONNECT)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Client:
    """A paho v5 client on a background loop; received messages in a queue."""

    def __init__(self, port, client_id):
        self.port = port
        self.id = client_id
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.msgs = queue.Queue()
        self.events = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.events.put(
            ("connack", rc, flags.session_present)
        )
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.events.put(("suback", mid, rcs))
        self.c.on_message = lambda c, u, msg: self.msgs.put(msg)
        self.c.on_publish = lambda c, u, mid, rc, props: self.events.put(("puback", mid))
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.events.put(("closed", rc))

    def connect(self, clean_start, properties=None):
        """Connects; returns whether the CONNACK said session present."""
        self.c.connect(
            "127.0.0.1",
            self.port,
            keepalive=30,
            clean_start=clean_start,
            properties=properties,
        )
        self.c.loop_start()
        ev = self.wait_event("connack")
        check(not ev[1].is_failure, f"{self.id}: CONNACK {ev[1]}")
        return ev[2]

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

    def publish(self, topic, payload, qos):
        info = self.c.publish(topic, payload, qos=qos)
        if qos > 0:
            self.wait_event("puback", info.mid)

    def recv(self, what):
        try:
            return self.msgs.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.id}: no message within {WAIT}s ({what})")

    def expect_nothing(self, what):
        try:
            m = self.msgs.get(timeout=QUIET)
        except queue.Empty:
            return
        raise Failure(f"{self.id}: unexpected message on {m.topic!r}: {m.payload!r} ({what})")

    def disconnect(self, properties=None):
        self.c.disconnect(properties=properties)
        self.wait_event("closed")
        self.c.loop_stop()


def check_session_expiry(args):
    """The steps of Paho's test_session_expiry, back to back on one client
    id, with a QoS 1 message queued while the session waits."""
    topic = f"{args.prefix}/expiry"
    sub = Client(args.port, args.id_b)

    def session(clean_start, expiry, disconnect_expiry=None, subscribe=False):
        props = connect_props(SessionExpiryInterval=expiry)
        present = sub.connect(clean_start, props)
        if subscribe:
            sub.subscribe(topic, 1)
        d = None
        if disconnect_expiry is not None:
            d = Properties(PacketTypes.DISCONNECT)
            d.SessionExpiryInterval = disconnect_expiry
        sub.disconnect(properties=d)
        return present

    check(not session(True, 0, subscribe=True), "expiry 0, clean start: present")
    check(not session(False, 0), "expiry 0 ends the session at disconnect")
    check(not session(True, 5, subscribe=True), "expiry 5, clean start: present")
    time.sleep(2)
    check(session(False, 5), "expiry 5: gone after 2 s")
    time.sleep(6)
    check(not session(False, 5), "expiry 5: still there after 6 s")

    def replaced_by_disconnect(what):
        # The DISCONNECT's 5 replaces the CONNECT's 1 (MQTT-3.14.2-2).
        present = session(True, 1, disconnect_expiry=5, subscribe=True)
        check(not present, f"{what}: clean start: present")
        pub = Client(args.port, args.id_a)
        pub.connect(True)
        pub.publish(topic, b"while away", 1)
        pub.disconnect()
        time.sleep(3)
        present = sub.connect(False, connect_props(SessionExpiryInterval=1))
        check(
            present,
            f"{what}: reconnect 3 s after DISCONNECT with Session Expiry Interval 5 "
            "(CONNECT said 1): session present 0",
        )
        m = sub.recv(f"{what}: the message queued while away")
        check(
            (m.topic, m.payload) == (topic, b"while away"),
            f"{what}: queued message: {m.topic} {m.payload!r}",
        )
        d = Properties(PacketTypes.DISCONNECT)
        d.SessionExpiryInterval = 0
        sub.disconnect(properties=d)
        check(not session(False, 1), f"{what}: DISCONNECT with expiry 0 ended the session")

    replaced_by_disconnect("after the expiry 5 steps")
    # Paho's test ends as above: a session with expiry 1 disconnected just
    # now. The same steps again at once (as when the test runs twice) must
    # not see that session's expiry end the new one after 1 s.
    replaced_by_disconnect("right after a session with expiry 1")


class Resolver:
    """A client's side of topic aliases (MQTT 5.0 section 3.3.2.3.4)."""

    def __init__(self, maximum):
        self.maximum = maximum
        self.topics = {}
        self.full = 0
        self.aliased = 0

    def resolve(self, m):
        alias = getattr(m.properties, "TopicAlias", None)
        topic = m.topic
        if alias is None:
            check(topic != "", "empty topic without a Topic Alias")
            self.full += 1
            return topic
        check(
            1 <= alias <= self.maximum,
            f"Topic Alias {alias} outside 1..{self.maximum} (the client's maximum)",
        )
        if topic:
            self.topics[alias] = topic
            self.full += 1
            return topic
        check(alias in self.topics, f"Topic Alias {alias} used before it was set")
        self.aliased += 1
        return self.topics[alias]


def check_topic_alias(args):
    maximum = 2
    sub = Client(args.port, args.id_b)
    sub.connect(True, connect_props(TopicAliasMaximum=maximum))
    sub.subscribe(f"{args.prefix}/#", 1)
    plain = Client(args.port, f"{args.id_b}-plain")
    plain.connect(True)
    plain.subscribe(f"{args.prefix}/#", 0)
    pub = Client(args.port, args.id_a)
    pub.connect(True)
    # Three topics through two aliases: repeats reuse one, a third topic
    # takes over the least recently used.
    names = ["a", "a", "b", "a", "b", "c", "c", "a", "b", "b", "c", "a"]
    sent = []
    for i, n in enumerate(names):
        t = f"{args.prefix}/{n}"
        sent.append((t, f"m{i}".encode()))
        pub.publish(t, f"m{i}".encode(), 1)
    r = Resolver(maximum)
    got = []
    for i in range(len(sent)):
        m = sub.recv(f"message {i}")
        got.append((r.resolve(m), m.payload))
    check(got == sent, f"resolved topics/payloads {got}, want {sent}")
    check(r.aliased > 0, "no PUBLISH used an alias (empty topic)")
    check(r.full >= 3, f"only {r.full} PUBLISHes carried a topic")
    sub.expect_nothing("after the last message")
    for i, want in enumerate(sent):
        m = plain.recv(f"plain message {i}")
        check(
            getattr(m.properties, "TopicAlias", None) is None,
            "Topic Alias sent to a client that announced no maximum",
        )
        check((m.topic, m.payload) == want, f"plain: {m.topic} {m.payload!r}, want {want}")
    for c in (sub, plain, pub):
        c.disconnect()


CHECKS = {
    "session-expiry": check_session_expiry,
    "topic-alias": check_topic_alias,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--check", choices=sorted(CHECKS), required=True)
    ap.add_argument("--id-a", required=True)
    ap.add_argument("--id-b", required=True)
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args()
    try:
        CHECKS[args.check](args)
    except Failure as e:
        print(f"FAIL {args.check}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"ok {args.check}")


if __name__ == "__main__":
    main()
