#!/usr/bin/env python3
"""Consumer groups ($share/{group}/{filter}) with paho-mqtt 2.x workers.

Run by shards/tests/e2e/groups.rs as

    python3 shards/tests/python/paho_groups.py --port N --protocol v5|v311 \
        --scenario even|kill|slow --prefix P

Scenarios (each worker is a paho client with manual acknowledgements: a
message counts as processed once the worker has sent its PUBACK):

  even  4 workers of equal speed, round_robin: every QoS 1 message processed
        exactly once, and each worker's count within 10% of the mean.
  kill  4 workers; one is killed (SIGKILL of its process, so its unacknowledged
        messages are stuck with it) mid-stream: every message is still
        processed at least once by the survivors, none is left with the dead
        worker.
  slow  least_inflight, 2 workers, one 10x slower than the other (v5, Receive
        Maximum 5 each): the slow one processes about a tenth as many.

Prints one summary line; exit code 0 when the checks pass, 1 on a failure
(message on stderr), 2 on bad arguments, 3 without paho-mqtt 2.x.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
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

WAIT = 20.0


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def connect(args, client_id, receive_maximum=None):
    v5 = args.protocol == "v5"
    kwargs = {} if v5 else {"clean_session": True}
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=True,
        **kwargs,
    )
    c.max_inflight_messages_set(1000)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    props = None
    if v5 and receive_maximum:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = receive_maximum
    if v5:
        c.connect("127.0.0.1", args.port, keepalive=30, clean_start=True, properties=props)
    else:
        c.connect("127.0.0.1", args.port, keepalive=30)
    c.loop_start()
    check(connected.wait(WAIT), f"{client_id}: no CONNACK")
    return c


def worker_main(args):
    """One worker process: prints `sub` once subscribed, then `done <payload>`
    for every message it processed (after its PUBACK went out)."""
    c = connect(args, args.id, receive_maximum=args.receive_maximum)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()

    def on_message(client, userdata, msg):
        if args.delay_ms:
            time.sleep(args.delay_ms / 1000.0)
        client.ack(msg.mid, msg.qos)
        print(f"done {msg.payload.decode()}", flush=True)

    c.on_message = on_message
    c.subscribe(args.filter, qos=1)
    check(subscribed.wait(WAIT), "no SUBACK")
    print("sub", flush=True)
    # Until the parent closes stdin (or kills us).
    sys.stdin.read()
    c.disconnect()
    c.loop_stop()


class Worker:
    def __init__(self, args, name, filter_, delay_ms=0, receive_maximum=None):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--port",
            str(args.port),
            "--protocol",
            args.protocol,
            "--worker",
            "--id",
            f"{args.prefix}-{name}",
            "--filter",
            filter_,
            "--delay-ms",
            str(delay_ms),
        ]
        if receive_maximum:
            cmd += ["--receive-maximum", str(receive_maximum)]
        self.name = name
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.done = []
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            line = line.strip()
            if line == "sub":
                self.subscribed.set()
            elif line.startswith("done "):
                with self.lock:
                    self.done.append(line[5:])

    def count(self):
        with self.lock:
            return len(self.done)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()


def publish_all(args, n, topic, pace_s=0.0, on_sent=None):
    pub = connect(args, f"{args.prefix}-publisher")
    for i in range(n):
        info = pub.publish(topic, f"m{i}", qos=1)
        info.wait_for_publish(WAIT)
        check(info.is_published(), f"m{i} was not acknowledged")
        if on_sent:
            on_sent(i)
        if pace_s:
            time.sleep(pace_s)
    pub.disconnect()
    pub.loop_stop()


def wait_until(cond, what, within=WAIT):
    deadline = time.time() + within
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise Failure(what)


def scenario_even(args):
    n = 400
    workers = [Worker(args, f"even{i}", "$share/even/jobs/#") for i in range(4)]
    try:
        for w in workers:
            check(w.subscribed.wait(WAIT), f"{w.name}: not subscribed")
        publish_all(args, n, "jobs/even")
        wait_until(lambda: sum(w.count() for w in workers) >= n, "not every message processed")
        time.sleep(0.5)
        done = [m for w in workers for m in w.done]
        check(len(done) == n, f"{len(done)} processed for {n} published")
        check(len(set(done)) == n, "a message processed twice")
        counts = [w.count() for w in workers]
        mean = n / len(workers)
        check(
            all(abs(c - mean) <= mean * 0.10 for c in counts),
            f"round_robin split {counts}: not within 10% of {mean}",
        )
        print(f"even: {counts}")
    finally:
        for w in workers:
            w.stop()


def scenario_kill(args):
    n = 400
    # The victim is slow: when it dies it holds messages it has not
    # acknowledged (in flight to it, and queued behind its window).
    workers = [
        Worker(args, f"kill{i}", "$share/kill/jobs/#", delay_ms=200 if i == 0 else 2)
        for i in range(4)
    ]
    try:
        for w in workers:
            check(w.subscribed.wait(WAIT), f"{w.name}: not subscribed")
        victim = workers[0]
        held = []

        def maybe_kill(i):
            if i == n // 4:
                held.append(i // 4 - victim.count())
                victim.kill()

        publish_all(args, n, "jobs/kill", pace_s=0.002, on_sent=maybe_kill)
        expected = {f"m{i}" for i in range(n)}
        processed = lambda: set(m for w in workers for m in w.done)
        wait_until(
            lambda: expected <= processed(),
            "messages stuck with the dead worker",
        )
        missing = expected - processed()
        check(not missing, f"never processed: {sorted(missing)[:10]}")
        check(held and held[0] > 0, "the victim held nothing when it died: not a test")
        dups = sum(w.count() for w in workers) - len(expected)
        print(
            f"kill: every one of {n} processed; victim {victim.count()} before it died "
            f"(holding ~{held[0]} unacknowledged), "
            f"survivors {[w.count() for w in workers[1:]]}, {dups} processed twice"
        )
    finally:
        for w in workers:
            w.stop()


def scenario_slow(args):
    n = 600
    fast = Worker(args, "fast", "$share/slow/jobs/#", delay_ms=4, receive_maximum=5)
    slow = Worker(args, "slow", "$share/slow/jobs/#", delay_ms=40, receive_maximum=5)
    try:
        for w in (fast, slow):
            check(w.subscribed.wait(WAIT), f"{w.name}: not subscribed")
        publish_all(args, n, "jobs/slow")
        wait_until(lambda: fast.count() + slow.count() >= n, "not every message processed", 60)
        f, s = fast.count(), slow.count()
        check(f + s == n, f"{f} + {s} processed for {n}")
        # 10x slower: about a tenth as many (loosely: under a fifth).
        check(s * 5 < f, f"least_inflight gave the slow worker {s}, the fast {f}")
        check(s > 0, "the slow worker got nothing")
        print(f"slow: fast {f}, slow {s} (ratio {f / max(s, 1):.1f})")
    finally:
        for w in (fast, slow):
            w.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", choices=["v5", "v311"], default="v5")
    ap.add_argument("--scenario", choices=["even", "kill", "slow"])
    ap.add_argument("--prefix", default="groups")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--id")
    ap.add_argument("--filter")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--receive-maximum", type=int)
    args = ap.parse_args()
    try:
        if args.worker:
            worker_main(args)
        elif args.scenario == "even":
            scenario_even(args)
        elif args.scenario == "kill":
            scenario_kill(args)
        elif args.scenario == "slow":
            scenario_slow(args)
        else:
            ap.error("--scenario or --worker")
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
