//! Durability across crashes and restarts, with the real binary and its
//! RocksDB data directory: `kill -9` under QoS 1/2 load loses no message a
//! publisher was told was accepted and delivers no QoS 2 message twice;
//! retained messages survive `kill -9`; a restart with another `--cores`
//! keeps sessions and queues; a session that expired while the broker was
//! stopped is gone and its will sent; a damaged or newer data directory is
//! refused with a clear error and left byte for byte as it was.
//!
//! vmqtt only: the harness runs Mosquitto without persistence.
//!
//! The subscribers here are raw clients that keep their receiver state as
//! an MQTT client keeps its session: the QoS 2 packet ids they answered with
//! PUBREC and whose PUBREL has not come yet are remembered across the crash
//! and the reconnect, and a PUBLISH carrying one of them is the same message
//! again, acknowledged but not counted. (rumqttc 0.25 cannot check
//! exactly-once: it hands every QoS 2 PUBLISH to the application, resends
//! included, and keeps no state across a new client.)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vmqtt::broker::ShardId;
use vmqtt::codec::LastWill;
use vmqtt::PacketId;

use crate::common::http::free_port;
use crate::common::process::exit_within;
use crate::common::raw::{persistent, pid, RecvError};
use crate::common::shard::id_on_shard;
use crate::common::*;

/// How long the publishers run before the broker is killed.
const LOAD: Duration = Duration::from_millis(1500);
/// QoS 1/2 PUBLISH packets a load publisher keeps unacknowledged.
const WINDOW: usize = 32;
/// Upper bound of messages per load publisher (not reached in `LOAD` on
/// this machine; it bounds the work on a much faster one).
const MAX_PER_PUBLISHER: u64 = 50_000;
/// How long a restarted broker may go without sending anything while
/// acknowledged messages are still missing (a slow broker keeps sending; a
/// lossy one falls silent).
const STALL: Duration = Duration::from_secs(30);
/// Upper bound on delivering everything that was queued after a restart.
const DRAIN: Duration = Duration::from_secs(240);
/// Silence after the last expected message before a subscriber stops
/// listening (late resends would show here).
const SETTLE: Duration = Duration::from_secs(1);
/// How long a stopping broker may take (SIGTERM to exit).
const STOP: Duration = Duration::from_secs(20);
/// How long a broker may take to refuse a data directory and exit.
const REFUSE: Duration = Duration::from_secs(30);

/// `"{source}:{seq}"`, the payload of every numbered message here.
fn numbered(source: &str, seq: u64) -> Bytes {
    Bytes::from(format!("{source}:{seq}"))
}

fn parse_numbered(p: &Publish) -> (String, u64) {
    let s = text(p);
    s.rsplit_once(':')
        .and_then(|(src, n)| Some((src.to_owned(), n.parse().ok()?)))
        .unwrap_or_else(|| panic!("unexpected PUBLISH on {:?}: {s:?}", p.topic.as_str()))
}

// ------------------------------------------------------------ subscribers

/// What one subscriber received, and the receiver state a real MQTT client
/// keeps with its session (kept across crash and reconnect).
#[derive(Debug, Default)]
struct Receipts {
    /// For messages.
    name: String,
    /// QoS 2 packet ids answered with PUBREC whose PUBREL has not come: a
    /// PUBLISH with one of them is a resend of a message already received.
    unreleased: HashSet<PacketId>,
    /// Per source: the first receipt of each sequence number, in order.
    first: BTreeMap<String, Vec<u64>>,
    /// Per source: every sequence number received.
    seen: BTreeMap<String, HashSet<u64>>,
    /// Per source: deliveries of a sequence number already received.
    dups: BTreeMap<String, u64>,
    /// Per source: first receipts smaller than the one before (previous, this).
    disorder: BTreeMap<String, Vec<(u64, u64)>>,
    /// QoS 2 PUBLISHes resent with an unreleased packet id (the protocol's
    /// resend, acknowledged and not delivered again).
    qos2_resends: u64,
    /// Deliveries, duplicates included.
    deliveries: u64,
    /// Per source: the sequence numbers expected (see `expect`).
    wanted: HashMap<String, HashSet<u64>>,
    /// How many of `wanted` have not been received yet.
    missing: usize,
}

/// Why `pump` returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The connection closed (the broker died or stopped).
    Closed,
    /// `done` held and nothing more came for the settle time.
    Done,
    /// `done` did not hold and nothing came for the stall time.
    Stalled,
    /// The deadline passed first.
    Deadline,
}

impl Receipts {
    fn new(name: &str) -> Self {
        Receipts {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// From now on, counts how many of `expected` (per source) have not
    /// been received (`missing`).
    fn expect(&mut self, expected: &[(String, BTreeSet<u64>)]) {
        self.wanted = expected
            .iter()
            .map(|(src, seqs)| (src.clone(), seqs.iter().copied().collect()))
            .collect();
        self.missing = expected
            .iter()
            .map(|(src, seqs)| {
                let seen = self.seen.get(src);
                seqs.iter()
                    .filter(|s| !seen.is_some_and(|seen| seen.contains(s)))
                    .count()
            })
            .sum();
    }

    fn record(&mut self, source: String, seq: u64) {
        self.deliveries += 1;
        let seen = self.seen.entry(source.clone()).or_default();
        if !seen.insert(seq) {
            *self.dups.entry(source).or_default() += 1;
            return;
        }
        if self.wanted.get(&source).is_some_and(|w| w.contains(&seq)) {
            self.missing -= 1;
        }
        let first = self.first.entry(source.clone()).or_default();
        if let Some(&prev) = first.last() {
            if seq < prev {
                self.disorder.entry(source).or_default().push((prev, seq));
            }
        }
        first.push(seq);
    }

    /// Answers one packet as an MQTT client does; `Err` if the answer could
    /// not be written (the broker is gone).
    async fn handle(&mut self, raw: &mut Raw, packet: Packet) -> std::io::Result<()> {
        match packet {
            Packet::Publish(p) => {
                let (source, seq) = parse_numbered(&p);
                match (p.qos, p.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => {
                        if self.unreleased.insert(id) {
                            self.record(source, seq);
                        } else {
                            self.qos2_resends += 1;
                        }
                        raw.try_send(&Packet::PubRec(PubResponse::new(id))).await
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.record(source, seq);
                        raw.try_send(&Packet::PubAck(PubResponse::new(id))).await
                    }
                    _ => {
                        self.record(source, seq);
                        Ok(())
                    }
                }
            }
            Packet::PubRel(r) => {
                self.unreleased.remove(&r.packet_id);
                raw.try_send(&Packet::PubComp(PubResponse::new(r.packet_id)))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Reads and answers packets until the connection closes, or `done`
    /// holds and nothing arrives for `settle`, or it does not hold and
    /// nothing arrives for `stall`, or `deadline` passes.
    async fn pump(
        &mut self,
        raw: &mut Raw,
        done: impl Fn(&Receipts) -> bool,
        (settle, stall): (Duration, Duration),
        deadline: Instant,
    ) -> Ended {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ended::Deadline;
            }
            let finished = done(self);
            let wait = if finished { settle } else { stall }.min(deadline - now);
            match raw.recv(wait).await {
                Ok(p) => {
                    if self.handle(raw, p).await.is_err() {
                        return Ended::Closed;
                    }
                }
                Err(RecvError::Timeout) if finished => return Ended::Done,
                Err(RecvError::Timeout) if Instant::now() < deadline => return Ended::Stalled,
                Err(RecvError::Timeout) => {}
                Err(RecvError::Closed | RecvError::Io(_)) => return Ended::Closed,
                Err(RecvError::Decode(e)) => panic!("[{}] undecodable packet: {e:?}", self.name),
            }
        }
    }

    fn unique(&self) -> usize {
        self.seen.values().map(HashSet::len).sum()
    }
}

// ------------------------------------------------------------- publishers

/// A load publisher.
#[derive(Debug, Clone)]
struct PubSpec {
    source: String,
    id: String,
    version: ProtocolVersion,
    qos: QoS,
}

/// What a load publisher sent and what it was told, over every round.
#[derive(Debug)]
struct PubReport {
    spec: PubSpec,
    /// PUBLISH packets sent.
    sent: u64,
    /// The next sequence number to send (the last sent + 1).
    next_seq: u64,
    /// Sequence numbers acknowledged: PUBACK (QoS 1) or PUBREC (QoS 2, the
    /// point from which the broker owns the message), reason < 0x80.
    acked: BTreeSet<u64>,
    /// QoS 2 flows completed (PUBCOMP).
    completed: u64,
    /// Acknowledgements with an error reason code.
    refused: u64,
    /// How each round ended.
    ends: Vec<String>,
}

impl PubReport {
    fn new(spec: PubSpec) -> Self {
        PubReport {
            spec,
            sent: 0,
            next_seq: 1,
            acked: BTreeSet::new(),
            completed: 0,
            refused: 0,
            ends: Vec::new(),
        }
    }
}

fn topic_of(source: &str) -> String {
    format!("dur/{source}")
}

/// Publishes numbered messages, from `r.next_seq` on, as fast as a window
/// of `WINDOW` outstanding QoS 1/2 flows allows, until the connection breaks
/// (the broker is killed) or `MAX_PER_PUBLISHER` messages were sent.
async fn publisher(port: u16, mut r: PubReport) -> PubReport {
    let spec = r.spec.clone();
    let (mut raw, _) = Raw::connect_ok(port, connect_packet(spec.version, &spec.id)).await;
    let topic = topic_of(&spec.source);
    // Packet id → sequence number, waiting for PUBACK or PUBREC.
    let mut waiting: HashMap<PacketId, u64> = HashMap::new();
    // Packet ids released (PUBREL sent), waiting for PUBCOMP.
    let mut releasing: HashSet<PacketId> = HashSet::new();
    let mut last_id = pid(u16::MAX);
    let end = 'run: loop {
        while waiting.len() + releasing.len() < WINDOW && r.next_seq <= MAX_PER_PUBLISHER {
            let mut id = last_id.next();
            while waiting.contains_key(&id) || releasing.contains(&id) {
                id = id.next();
            }
            last_id = id;
            let mut p = publish(&topic, numbered(&spec.source, r.next_seq), spec.qos, false);
            p.packet_id = Some(id);
            if let Err(e) = raw.try_send(&Packet::Publish(p)).await {
                break 'run format!("write failed: {e}");
            }
            waiting.insert(id, r.next_seq);
            r.sent += 1;
            r.next_seq += 1;
        }
        match raw.recv(Duration::from_secs(60)).await {
            Ok(Packet::PubAck(a)) => {
                if let Some(seq) = waiting.remove(&a.packet_id) {
                    if a.reason.0 < 0x80 {
                        r.acked.insert(seq);
                    } else {
                        r.refused += 1;
                    }
                }
            }
            Ok(Packet::PubRec(a)) => {
                if let Some(seq) = waiting.remove(&a.packet_id) {
                    if a.reason.0 < 0x80 {
                        r.acked.insert(seq);
                        releasing.insert(a.packet_id);
                        if let Err(e) = raw
                            .try_send(&Packet::PubRel(PubResponse::new(a.packet_id)))
                            .await
                        {
                            break format!("write failed: {e}");
                        }
                    } else {
                        r.refused += 1;
                    }
                }
            }
            Ok(Packet::PubComp(c)) => {
                if releasing.remove(&c.packet_id) {
                    r.completed += 1;
                }
            }
            Ok(Packet::Disconnect(d)) => break format!("DISCONNECT {:#04x}", d.reason.0),
            Ok(_) => {}
            Err(e) => break format!("{e:?}"),
        }
    };
    r.ends.push(end);
    r
}

// ------------------------------------------------------------------ tests

/// One persistent subscriber of the load test.
#[derive(Debug, Clone)]
struct LoadSub {
    id: String,
    version: ProtocolVersion,
    /// Connected (and receiving) during the first round of load; the others
    /// subscribe, leave, and only come back after the first crash.
    online: bool,
}

/// Rounds of load, each ended by `kill -9` and a restart.
const ROUNDS: usize = 2;

/// Rounds of `kill -9` while 4 publishers (QoS 1 and 2, 3.1.1 and 5, homed
/// on both shards) send as fast as their windows allow to 4 persistent
/// subscribers (3.1.1 and 5): in the first round two are connected and
/// receiving and two offline; in the next, all four are back, receiving
/// their recovered queues and resent in-flight messages while new load
/// arrives, when the broker is killed again. After the last restart every
/// message acknowledged to a publisher has reached every subscriber, QoS 2
/// ones exactly once, and each publisher's messages were first received in
/// order.
/// How a load round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: a crash.
    Kill9,
    /// SIGTERM: a graceful stop, which must exit 0 in bounded time.
    Term,
}

async fn kill9_under_load(test: &str, durability: &'static str) {
    stop_under_load(test, durability, Stop::Kill9).await;
}

async fn stop_under_load(test: &str, durability: &'static str, stop: Stop) {
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    let started = Instant::now();
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            durability: Some(durability),
            // The offline subscribers queue everything: no drops.
            max_queued_messages: Some(1_000_000),
            ..Default::default()
        },
    );
    let port = b.port();
    let subs: Vec<LoadSub> = [
        ("online", V311, 0, true),
        ("online", V5P, 1, true),
        ("offline", V5P, 0, false),
        ("offline", V311, 1, false),
    ]
    .into_iter()
    .map(|(what, version, shard, online)| LoadSub {
        id: id_on_shard(
            &format!("{test}-sub-{what}-{}", if version.is_v5() { 5 } else { 3 }),
            ShardId::new(shard),
        ),
        version,
        online,
    })
    .collect();
    let filter = "dur/#";

    // Subscribe; the offline ones leave.
    let mut connected: Vec<(LoadSub, Raw)> = Vec::new();
    for s in &subs {
        let (mut raw, ack) = Raw::connect_ok(port, persistent(s.version, &s.id, true, 3600)).await;
        assert!(!ack.session_present, "[{}] a fresh session", s.id);
        raw.subscribe(filter, QoS::ExactlyOnce).await;
        if s.online {
            connected.push((s.clone(), raw));
        } else {
            raw.disconnect().await;
        }
    }
    let mut receipts: HashMap<String, Receipts> = subs
        .iter()
        .map(|s| (s.id.clone(), Receipts::new(&s.id)))
        .collect();

    let mut reports: Vec<PubReport> = [
        (V311, QoS::AtLeastOnce, 0),
        (V5P, QoS::ExactlyOnce, 0),
        (V5P, QoS::AtLeastOnce, 1),
        (V311, QoS::ExactlyOnce, 1),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (version, qos, shard))| {
        PubReport::new(PubSpec {
            source: format!("p{i}"),
            id: id_on_shard(&format!("{test}-pub{i}"), ShardId::new(shard)),
            version,
            qos,
        })
    })
    .collect();

    let mut failures = Vec::new();
    let mut out = String::new();
    for round in 1..=ROUNDS {
        // Connected subscribers receive (and acknowledge) until the crash.
        let sub_tasks: Vec<_> = connected
            .drain(..)
            .map(|(s, mut raw)| {
                let mut r = receipts.remove(&s.id).expect("receipts");
                tokio::spawn(async move {
                    let end = r
                        .pump(
                            &mut raw,
                            |_| false,
                            (SETTLE, Duration::from_secs(120)),
                            Instant::now() + Duration::from_secs(120),
                        )
                        .await;
                    (r, end)
                })
            })
            .collect();
        let pub_tasks: Vec<_> = reports
            .drain(..)
            .map(|r| tokio::spawn(publisher(port, r)))
            .collect();

        tokio::time::sleep(LOAD).await;
        match stop {
            Stop::Kill9 => b.kill9(),
            Stop::Term => b.stop_gracefully(STOP),
        }

        for p in pub_tasks {
            reports.push(
                tokio::time::timeout(Duration::from_secs(60), p)
                    .await
                    .expect("a publisher did not notice the crash within 60 s")
                    .expect("publisher task"),
            );
        }
        for t in sub_tasks {
            let (r, end) = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a subscriber did not notice the crash within 60 s")
                .expect("subscriber task");
            assert_eq!(
                end,
                Ended::Closed,
                "[{}] the crash closes the connection",
                r.name
            );
            receipts.insert(r.name.clone(), r);
        }
        let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
        let received: Vec<usize> = subs.iter().map(|s| receipts[&s.id].unique()).collect();
        let _ = writeln!(
            out,
            "  round {round}: {LOAD:?} of load, then {stop:?}; acknowledged so far {acked}, distinct received so far per subscriber {received:?}"
        );
        for r in &reports {
            if r.acked.is_empty() {
                failures.push(format!(
                    "publisher {} got no acknowledgement in round {round}",
                    r.spec.source
                ));
            }
            if r.next_seq > MAX_PER_PUBLISHER {
                eprintln!(
                    "[{test}] note: publisher {} reached its limit of {MAX_PER_PUBLISHER} messages before the kill",
                    r.spec.source
                );
            }
        }

        let t = Instant::now();
        b.restart();
        let _ = writeln!(out, "  restart {round}: {:?}", t.elapsed());
        if round == ROUNDS {
            break;
        }
        // Everyone back for the next round.
        for s in &subs {
            let (raw, ack) = Raw::connect_ok(port, persistent(s.version, &s.id, false, 3600)).await;
            if !ack.session_present {
                failures.push(format!(
                    "{}: CONNACK session present = 0 after restart {round}",
                    s.id
                ));
            }
            connected.push((s.clone(), raw));
        }
    }

    // The last restart: everybody resumes and receives until everything
    // acknowledged has come.
    let expected: Vec<(String, BTreeSet<u64>)> = reports
        .iter()
        .map(|r| (r.spec.source.clone(), r.acked.clone()))
        .collect();
    let mut drains = Vec::new();
    for s in &subs {
        let mut r = receipts.remove(&s.id).expect("receipts");
        let connect = persistent(s.version, &s.id, false, 3600);
        let expected = expected.clone();
        drains.push(tokio::spawn(async move {
            let t = Instant::now();
            let (mut raw, ack) = Raw::connect_ok(port, connect).await;
            let present = ack.session_present;
            let before = r.unique();
            r.expect(&expected);
            let end = r
                .pump(
                    &mut raw,
                    |r| r.missing == 0,
                    (SETTLE, STALL),
                    Instant::now() + DRAIN,
                )
                .await;
            let took = t.elapsed();
            if end == Ended::Done {
                raw.disconnect().await;
            }
            (r, present, before, end, took)
        }));
    }
    let mut drained = Vec::new();
    for d in drains {
        drained.push(d.await.expect("subscriber task"));
    }
    b.assert_alive();

    // A graceful stop tells MQTT 5 clients why (DISCONNECT 0x8B), after
    // the acknowledgements it owes them.
    if stop == Stop::Term {
        for r in reports.iter().filter(|r| r.spec.version.is_v5()) {
            if r.ends.iter().any(|e| e != "DISCONNECT 0x8b") {
                failures.push(format!(
                    "publisher {} (MQTT 5) did not get DISCONNECT 0x8B at SIGTERM: {:?}",
                    r.spec.source, r.ends
                ));
            }
        }
    }

    // Figures.
    let _ = writeln!(out, "  total {:?}", started.elapsed());
    for r in &reports {
        let _ = writeln!(
            out,
            "  publisher {} ({:?}, {:?}, {}): sent {}, acknowledged {}, QoS 2 completed {}, refused {}, rounds ended by {:?}",
            r.spec.source,
            r.spec.version,
            r.spec.qos,
            r.spec.id,
            r.sent,
            r.acked.len(),
            r.completed,
            r.refused,
            r.ends
        );
    }
    for (r, present, before, end, took) in &drained {
        let id = &r.name;
        let dups: u64 = r.dups.values().sum();
        let _ = writeln!(
            out,
            "  subscriber {id}: received {} distinct ({before} before the last crash), {} deliveries, {} duplicates, {} QoS 2 resends answered; session present {present}; after the last restart: {end:?} in {took:?}",
            r.unique(),
            r.deliveries,
            dups,
            r.qos2_resends,
        );
        if !present {
            failures.push(format!(
                "{id}: CONNACK session present = 0 after the last restart"
            ));
        }
        for rep in &reports {
            let src = &rep.spec.source;
            let empty = HashSet::new();
            let seen = r.seen.get(src).unwrap_or(&empty);
            let missing: Vec<u64> = rep
                .acked
                .iter()
                .copied()
                .filter(|s| !seen.contains(s))
                .collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "{id}: LOST {} of the {} messages acknowledged to publisher {src} ({:?}): seqs {:?}{}",
                    missing.len(),
                    rep.acked.len(),
                    rep.spec.qos,
                    &missing[..missing.len().min(30)],
                    if missing.len() > 30 { " …" } else { "" }
                ));
            }
            let bogus: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|&s| s == 0 || s >= rep.next_seq)
                .collect();
            if !bogus.is_empty() {
                failures.push(format!(
                    "{id}: received seqs of {src} that were never sent: {bogus:?}"
                ));
            }
            let d = r.dups.get(src).copied().unwrap_or(0);
            if rep.spec.qos == QoS::ExactlyOnce && d > 0 {
                failures.push(format!(
                    "{id}: {d} QoS 2 message(s) of {src} delivered twice (exactly once broken)"
                ));
            }
            if let Some(dis) = r.disorder.get(src) {
                failures.push(format!(
                    "{id}: {} first receipts of {src} out of order, e.g. (previous, this) {:?}",
                    dis.len(),
                    &dis[..dis.len().min(10)]
                ));
            }
        }
        if !r.unreleased.is_empty() {
            failures.push(format!(
                "{id}: QoS 2 packet ids answered with PUBREC never released (no PUBREL): {:?}",
                r.unreleased
            ));
        }
        if *end != Ended::Done {
            failures.push(format!("{id}: receiving ended with {end:?}"));
        }
    }
    eprint!("[{test}] durability {durability:?}, {ROUNDS} rounds of load and {stop:?}:\n{out}");
    if !failures.is_empty() {
        panic!(
            "[{test}] durability broken after {stop:?} (broker logs below, data in {}):\n{}",
            b.dir().display(),
            failures.join("\n")
        );
    }
}

/// `kill -9` under QoS 1/2 load with `durability = "wal"`: nothing
/// acknowledged is lost, no QoS 2 message is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_no_acknowledged_message() {
    kill9_under_load("kill9_under_load_loses_no_acknowledged_message", "wal").await;
}

/// The same with `durability = "fsync"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_no_acknowledged_message_fsync() {
    kill9_under_load(
        "kill9_under_load_loses_no_acknowledged_message_fsync",
        "fsync",
    )
    .await;
}

/// SIGTERM under QoS 1/2 load (issue 6): the broker stops within its bound
/// and exits 0, and nothing it acknowledged is lost across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_message() {
    stop_under_load(
        "sigterm_under_load_loses_no_acknowledged_message",
        "wal",
        Stop::Term,
    )
    .await;
}

/// Retained messages (set, replaced, one deleted by an empty payload, on
/// topics homed on both shards) are intact after `kill -9`: a new subscriber
/// gets exactly the remaining ones, with their payloads and properties.
#[tokio::test]
async fn retained_messages_survive_kill9() {
    let test = "retained_messages_survive_kill9";
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    let mut b = Broker::start(test);
    // Topics whose home shards (where each is stored) cover both shards.
    let topics: Vec<String> = (0..6).map(|i| format!("keep/{i}")).collect();
    let homes: BTreeSet<ShardId> = topics.iter().map(|t| home_shard(t, SHARDS)).collect();
    assert_eq!(homes.len(), SHARDS, "retained topics on every shard");

    let (pub_id, _) = ids_on_different_shards(test);
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (i, t) in topics.iter().enumerate() {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let v = format!("value {i}");
        publ.publish_ok(t, &v, qos, true).await;
        want.insert(t.clone(), v);
    }
    // Replaced, deleted, and one with v5 properties.
    publ.publish_ok(&topics[1], "value 1, replaced", QoS::AtLeastOnce, true)
        .await;
    want.insert(topics[1].clone(), "value 1, replaced".into());
    publ.publish_ok(&topics[2], "", QoS::AtLeastOnce, true)
        .await;
    want.remove(&topics[2]);
    let mut p = publish(&topics[4], "with properties", QoS::ExactlyOnce, true);
    p.properties.content_type = Some("text/x-e2e".into());
    p.properties.user_properties = vec![("k".into(), "v".into())];
    let ack = publ.publish(p).await.expect("PUBREC");
    assert!(ack.reason.0 < 0x80, "{ack:?}");
    want.insert(topics[4].clone(), "with properties".into());

    b.kill9();
    b.restart();

    let sub_id = format!("{test}-sub");
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("keep/#", QoS::AtLeastOnce).await;
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..want.len() {
        let p = sub.recv_publish_acked().await;
        assert!(p.retain, "a retained message is sent with RETAIN=1: {p:?}");
        if p.topic.as_str() == topics[4] {
            assert_eq!(
                p.properties.content_type.as_deref(),
                Some("text/x-e2e"),
                "content type of the retained message"
            );
            assert_eq!(
                p.properties.user_properties,
                vec![("k".into(), "v".into())],
                "user properties of the retained message"
            );
        }
        let dup = got.insert(p.topic.as_str().to_owned(), text(&p));
        assert!(dup.is_none(), "{} sent twice", p.topic.as_str());
    }
    sub.expect_no_publish(QUIET, "only the remaining retained messages")
        .await;
    assert_eq!(got, want, "retained messages after kill -9 and restart");
}

/// Receives `n` messages, acknowledging each, and returns their payloads.
async fn receive_texts(raw: &mut Raw, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let p = raw.recv_publish_acked().await;
        out.push(text(&p));
    }
    out
}

fn batch(tag: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{tag}{i}")).collect()
}

/// Persistent sessions with queued messages on both shards survive a
/// `kill -9` and a restart with `--cores 1`, and then a clean stop and a
/// restart with `--cores 2` again: each time the sessions are present and
/// the queued messages delivered in order, retained messages kept, and the
/// subscriptions route new messages.
#[tokio::test]
async fn restart_with_a_different_core_count() {
    let test = "restart_with_a_different_core_count";
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    let mut b = Broker::start(test);
    let s0 = id_on_shard(&format!("{test}-s0"), ShardId::new(0));
    let s1 = id_on_shard(&format!("{test}-s1"), ShardId::new(1));
    let subs = [(s0.clone(), V311), (s1.clone(), V5P)];
    for (id, v) in &subs {
        let (mut raw, _) = Raw::connect_ok(b.port(), persistent(*v, id, true, 3600)).await;
        raw.subscribe("cores/#", QoS::ExactlyOnce).await;
        raw.disconnect().await;
    }
    let pub_id = format!("{test}-pub");
    let n = 10;
    {
        let mut publ = Raw::v5(b.port(), &pub_id).await;
        for m in batch("a", n) {
            publ.publish_ok("cores/x", &m, QoS::AtLeastOnce, false)
                .await;
        }
        publ.publish_ok("kept/r", "retained", QoS::AtLeastOnce, true)
            .await;
    }

    b.kill9();
    b.restart_with_cores(1);
    eprintln!("[{test}] restarted with --cores 1 after kill -9");
    let (mut c0, ack) = Raw::connect_ok(b.port(), persistent(V311, &s0, false, 3600)).await;
    assert!(ack.session_present, "{s0}: session present with --cores 1");
    assert_eq!(receive_texts(&mut c0, n).await, batch("a", n), "{s0}");
    c0.expect_no_publish(QUIET, "queue delivered").await;
    c0.disconnect().await;
    {
        let mut publ = Raw::v5(b.port(), &pub_id).await;
        for m in batch("b", n) {
            publ.publish_ok("cores/x", &m, QoS::ExactlyOnce, false)
                .await;
        }
    }

    b.stop_gracefully(STOP);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let back = if cpus >= 2 { 2 } else { 1 };
    b.restart_with_cores(back);
    eprintln!("[{test}] restarted with --cores {back} after a clean stop");
    let (mut c0, ack) = Raw::connect_ok(b.port(), persistent(V311, &s0, false, 3600)).await;
    assert!(
        ack.session_present,
        "{s0}: session present with --cores {back}"
    );
    assert_eq!(receive_texts(&mut c0, n).await, batch("b", n), "{s0}");
    let (mut c1, ack) = Raw::connect_ok(b.port(), persistent(V5P, &s1, false, 3600)).await;
    assert!(
        ack.session_present,
        "{s1}: session present with --cores {back}"
    );
    let mut all = batch("a", n);
    all.extend(batch("b", n));
    assert_eq!(receive_texts(&mut c1, 2 * n).await, all, "{s1}");
    c0.expect_no_publish(QUIET, "queue delivered").await;
    c1.expect_no_publish(QUIET, "queue delivered").await;

    // The restored subscriptions route new messages, and the retained
    // message is there.
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("cores/x", "live", QoS::AtLeastOnce, false)
        .await;
    for c in [&mut c0, &mut c1] {
        let p = c.recv_publish_acked().await;
        assert_eq!(text(&p), "live", "[{}] live message after restarts", c.name);
    }
    publ.subscribe("kept/#", QoS::AtLeastOnce).await;
    let r = publ.recv_publish_acked().await;
    assert_eq!(
        (r.topic.as_str(), text(&r).as_str(), r.retain),
        ("kept/r", "retained", true)
    );
}

/// A v5 session with a 2 s expiry and a will (delayed past the expiry, so
/// it goes when the session ends) is disconnected; the broker stops for
/// longer than that. At restart the session is gone (session present 0,
/// its subscription too) and its will was published exactly once (to a
/// persistent watcher).
#[tokio::test]
async fn session_expired_while_stopped_is_gone_and_its_will_sent() {
    let test = "session_expired_while_stopped_is_gone_and_its_will_sent";
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    const EXPIRY: u32 = 2;
    let mut b = Broker::start(test);
    let (watch_id, client_id) = ids_on_different_shards(test);
    let (mut watcher, _) = Raw::connect_ok(b.port(), persistent(V5P, &watch_id, true, 3600)).await;
    watcher.subscribe("gone/will", QoS::ExactlyOnce).await;

    let mut c = persistent(V5P, &client_id, true, EXPIRY);
    let mut w: LastWill = will("gone/will", "will:1", QoS::ExactlyOnce, false);
    w.properties.will_delay_interval = Some(3600);
    c.will = Some(w);
    let (mut client, _) = Raw::connect_ok(b.port(), c).await;
    client.subscribe("gone/topic", QoS::AtLeastOnce).await;
    // Disconnect with the will: it goes when the session ends, in 2 s.
    client
        .disconnect_with(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
        .await;
    let stop_at = Instant::now();
    b.stop_gracefully(STOP);

    // What the watcher got before the broker stopped (normally nothing: the
    // stop is quicker than the expiry).
    let mut r = Receipts::new(&watch_id);
    let end = r
        .pump(
            &mut watcher,
            |_| false,
            (SETTLE, Duration::from_secs(30)),
            Instant::now() + Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        end,
        Ended::Closed,
        "the stop closes the watcher's connection"
    );
    let before = r.unique();

    // Stopped for longer than the expiry.
    let down = Duration::from_secs(u64::from(EXPIRY) + 2);
    if let Some(left) = down.checked_sub(stop_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    b.restart();

    let (mut again, ack) =
        Raw::connect_ok(b.port(), persistent(V5P, &client_id, false, EXPIRY)).await;
    assert!(
        !ack.session_present,
        "the session expired while the broker was stopped: session present must be 0"
    );

    let (mut watcher, ack) =
        Raw::connect_ok(b.port(), persistent(V5P, &watch_id, false, 3600)).await;
    assert!(ack.session_present, "the watcher's session is kept");
    let end = r
        .pump(
            &mut watcher,
            |r| r.seen.get("will").is_some_and(|s| s.contains(&1)),
            (QUIET, Duration::from_secs(30)),
            Instant::now() + Duration::from_secs(30),
        )
        .await;
    eprintln!(
        "[{test}] will received {} time(s) before the stop, {} after the restart ({end:?})",
        before,
        r.unique() - before
    );
    assert_eq!(end, Ended::Done, "the will of the expired session arrives");
    assert_eq!(
        r.deliveries, 1,
        "the will is published exactly once: {:?}",
        r.seen
    );

    // The expired session's subscription is gone with it.
    watcher
        .publish_ok("gone/topic", "after", QoS::AtLeastOnce, false)
        .await;
    again
        .expect_no_publish(QUIET, "the subscription ended with the session")
        .await;
}

// ------------------------------------------------- refused data directories

/// Every file under `dir` (relative path → bytes), directories included
/// (as empty entries ending in `/`).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_owned();
            if e.file_type().expect("file type").is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).expect("read file")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What changed between two snapshots, for the failure message.
fn diff(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => d.push(format!("removed {}", p.display())),
            Some(a) if a != b => d.push(format!("changed {}", p.display())),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        d.push(format!("added {}", p.display()));
    }
    d
}

/// A broker whose data directory holds a persistent session with a queued
/// message and a retained message, stopped cleanly.
async fn populated(test: &str) -> Broker {
    let mut b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let (mut sub, _) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, true, 3600)).await;
    sub.subscribe("x/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok("x/queued", "q", QoS::AtLeastOnce, false)
        .await;
    publ.publish_ok("x/retained", "r", QoS::AtLeastOnce, true)
        .await;
    b.stop_gracefully(STOP);
    b
}

/// Opens the data directory with RocksDB itself (every column family) and
/// runs `f` on it; the database is closed after.
fn with_rocksdb(dir: &Path, f: impl FnOnce(&rocksdb::DB)) {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, dir).expect("list column families");
    let db = rocksdb::DB::open_cf(&opts, dir, &cfs).expect("open the data directory");
    f(&db);
    for cf in &cfs {
        let h = db.cf_handle(cf).expect("column family");
        db.flush_cf(h).expect("flush");
    }
}

/// Starts the broker on its (damaged or newer) data directory: it must exit
/// unsuccessfully within `REFUSE`, say on stderr what is wrong with which
/// directory, and leave every file as it was. Returns stderr.
fn expect_refusal(b: &mut Broker, what: &str, words: &[&str]) -> String {
    let dir = b.data_dir();
    let before = snapshot(&dir);
    let t = Instant::now();
    let (status, stderr) = b.run_expecting_failure(REFUSE);
    let took = t.elapsed();
    eprintln!(
        "[{what}] refused in {took:?} with {status}; stderr: {}",
        stderr.trim()
    );
    assert!(!status.success(), "[{what}] the broker must exit non-zero");
    assert!(
        stderr.contains(&dir.display().to_string()),
        "[{what}] stderr must name the data directory {}:\n{stderr}",
        dir.display()
    );
    let lower = stderr.to_lowercase();
    for w in words {
        assert!(
            lower.contains(w),
            "[{what}] stderr must say {w:?}:\n{stderr}"
        );
    }
    assert!(
        !lower.contains("panicked"),
        "[{what}] a refusal is an error, not a panic:\n{stderr}"
    );
    let after = snapshot(&dir);
    let changes = diff(&before, &after);
    assert!(
        changes.is_empty(),
        "[{what}] the refused data directory was modified: {changes:?}"
    );
    stderr
}

/// A data directory whose schema version is newer than this build's is
/// refused: non-zero exit, an error naming the directory, nothing changed.
#[tokio::test]
async fn newer_data_directory_is_refused_untouched() {
    let test = "newer_data_directory_is_refused_untouched";
    if skip_on_mosquitto(test, "vmqtt's data directory") {
        return;
    }
    let mut b = populated(test).await;
    let newer = vmqtt_storage::SCHEMA_VERSION + 1;
    with_rocksdb(&b.data_dir(), |db| {
        let meta = db.cf_handle("meta").expect("meta column family");
        db.put_cf(meta, b"schema_version", newer.to_be_bytes())
            .expect("write meta/schema_version");
    });
    expect_refusal(&mut b, test, &["newer", &newer.to_string()]);
    // Twice: still refused, still untouched.
    expect_refusal(&mut b, test, &["newer"]);
}

/// A way to damage a data directory.
type Damage = Box<dyn Fn(&Path)>;

/// Damaged data directories (garbage `CURRENT`, truncated `MANIFEST`, a
/// truncated table file) are refused: non-zero exit, an error naming the
/// directory, not a byte changed.
#[tokio::test]
async fn damaged_data_directory_is_refused_untouched() {
    let test = "damaged_data_directory_is_refused_untouched";
    if skip_on_mosquitto(test, "vmqtt's data directory") {
        return;
    }
    let mut b = populated(test).await;
    let data = b.data_dir();
    // Table files too (the broker's data is in the write-ahead log so far).
    with_rocksdb(&data, |_| {});
    let pristine = snapshot(&data);
    assert!(
        pristine
            .keys()
            .any(|p| p.extension().is_some_and(|e| e == "sst")),
        "no table file to damage: {:?}",
        pristine.keys().collect::<Vec<_>>()
    );

    let restore = |data: &Path| {
        std::fs::remove_dir_all(data).expect("remove the data directory");
        for (p, bytes) in &pristine {
            let to = data.join(p);
            match bytes {
                None => std::fs::create_dir_all(&to).expect("mkdir"),
                Some(bytes) => {
                    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&to, bytes).expect("write");
                }
            }
        }
    };
    let named = |prefix: &str| -> PathBuf {
        pristine
            .keys()
            .filter(|p| p.to_string_lossy().starts_with(prefix))
            .max()
            .unwrap_or_else(|| panic!("no {prefix}* file in the data directory"))
            .clone()
    };
    let manifest = named("MANIFEST-");
    let table = pristine
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|(_, b)| b.as_ref().map_or(0, Vec::len))
        .map(|(p, _)| p.clone())
        .expect("a table file");

    let damages: Vec<(&str, Damage)> = vec![
        (
            "garbage CURRENT",
            Box::new(|d: &Path| {
                std::fs::write(d.join("CURRENT"), b"\x00\xffnot a manifest name")
                    .expect("write CURRENT");
            }),
        ),
        (
            "truncated MANIFEST",
            Box::new(move |d: &Path| {
                let p = d.join(&manifest);
                let len = std::fs::metadata(&p).expect("MANIFEST").len();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open MANIFEST");
                f.set_len(len / 2).expect("truncate MANIFEST");
            }),
        ),
        (
            "truncated table file",
            Box::new(move |d: &Path| {
                let p = d.join(&table);
                let len = std::fs::metadata(&p).expect("table file").len();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open table file");
                f.set_len(len / 2).expect("truncate table file");
            }),
        ),
    ];
    for (what, damage) in &damages {
        restore(&data);
        damage(&data);
        expect_refusal(&mut b, &format!("{test}: {what}"), &["data directory"]);
    }
    // The undamaged directory still starts (the damage was the reason).
    restore(&data);
    b.restart();
}

// --------------------------------------------- a damaged write-ahead log

/// The first number after `word` in `text`.
fn number_after(text: &str, word: &str) -> Option<u64> {
    let rest = &text[text.find(word)? + word.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Topic and payload of queued message `i` of the WAL test (padded, so
/// that the log spans several 32 KiB blocks).
fn wal_queued(i: usize) -> (String, String) {
    (
        format!("wal/q/{i}"),
        format!("wal-q-{i:06}:{}", "x".repeat(200)),
    )
}

/// 300 QoS 1 messages queued for an offline persistent session and 50
/// retained messages, then `kill -9`: all of it only in the write-ahead
/// log. 64 bytes in the middle of the log are overwritten. The broker must
/// refuse to start (non-zero exit, the error naming the log file and the
/// offset, pointing to `repair`, the directory byte for byte as it was);
/// RocksDB's default recovery would start and silently drop everything
/// after the damage. `vmqtt-shard repair` keeps a byte-identical backup and
/// reports what it keeps; the broker then starts and serves exactly that:
/// the session, the first queued messages in order, nothing else.
#[tokio::test]
async fn wal_damaged_in_the_middle_is_refused_then_repaired() {
    let test = "wal_damaged_in_the_middle_is_refused_then_repaired";
    if skip_on_mosquitto(test, "vmqtt's data directory") {
        return;
    }
    const QUEUED: usize = 300;
    const RETAINED: usize = 50;
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            // Memtables far larger than the data: nothing is flushed to
            // table files, all of it stays in the write-ahead log.
            extra_toml: "[storage]\nwrite_buffer_size = 268435456\n".into(),
            ..BrokerConfig::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let (mut sub, _) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, true, 3600)).await;
    sub.subscribe("wal/q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..QUEUED {
        let (t, p) = wal_queued(i);
        publ.publish_ok(&t, &p, QoS::AtLeastOnce, false).await;
    }
    for i in 0..RETAINED {
        publ.publish_ok(
            &format!("wal/r/{i}"),
            &format!("wal-r-{i:03}"),
            QoS::AtLeastOnce,
            true,
        )
        .await;
    }
    b.kill9();

    let data = b.data_dir();
    let wal = vmqtt_storage::wal::wal_files(&data)
        .expect("list the log files")
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .expect("a write-ahead log file");
    let mut bytes = std::fs::read(&wal).expect("read the log");
    let holds = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        holds(&bytes, &wal_queued(QUEUED - 1).1) && holds(&bytes, "wal-r-049"),
        "the write-ahead log {} should hold every message ({} bytes)",
        wal.display(),
        bytes.len()
    );
    assert!(bytes.len() > 3 * 32768, "several blocks: {}", bytes.len());
    let at = bytes.len() / 2;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for byte in &mut bytes[at..at + 64] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    std::fs::write(&wal, &bytes).expect("damage the log");
    let name = wal
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();

    let stderr = expect_refusal(
        &mut b,
        test,
        &[
            "write-ahead log",
            &name.to_lowercase(),
            "offset",
            "nothing was changed",
            "vmqtt-shard repair",
        ],
    );
    let offset = number_after(&stderr, "offset").expect("the offset in the error") as usize;
    assert!(
        offset <= at && at - offset < 32768,
        "offset {offset} should be the damaged record's, at or before byte {at}, in its block"
    );
    // Twice: still refused, still untouched.
    expect_refusal(&mut b, test, &["write-ahead log"]);

    let damaged = snapshot(&data);
    let backup = b.dir().join("data-backup");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmqtt-shard"))
        .arg("repair")
        .arg(&data)
        .arg("--backup")
        .arg(&backup)
        .output()
        .expect("run vmqtt-shard repair");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "[{test}] repair: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "repair failed");
    for w in [
        "found:", "backup:", "dropped:", "before:", "after:", "lost:",
    ] {
        assert!(stdout.contains(w), "the report says {w:?}:\n{stdout}");
    }
    let changes = diff(&damaged, &snapshot(&backup));
    assert!(
        changes.is_empty(),
        "the backup differs from the damaged directory: {changes:?}"
    );
    let after = stdout
        .lines()
        .find(|l| l.starts_with("after:"))
        .expect("after: line");
    let kept = number_after(after, "subscriptions,").expect("queued count") as usize;
    let kept_retained = number_after(after, "ids,").expect("retained count") as usize;
    assert!(
        kept > 0 && kept < QUEUED,
        "the repair keeps what precedes the damage and says it: {after}"
    );

    b.restart();
    let (mut sub, ack) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, false, 3600)).await;
    assert!(ack.session_present, "the session precedes the damage");
    let got: Vec<String> = receive_texts(&mut sub, kept).await;
    let want: Vec<String> = (0..kept).map(|i| wal_queued(i).1).collect();
    assert_eq!(got, want, "the queued messages before the damage, in order");
    sub.expect_no_publish(QUIET, "nothing past what the repair reported kept")
        .await;
    let mut watcher = Raw::v5(b.port(), &format!("{test}-watch")).await;
    watcher.subscribe("wal/r/#", QoS::AtLeastOnce).await;
    let retained = receive_texts(&mut watcher, kept_retained).await;
    watcher
        .expect_no_publish(QUIET, "only the retained messages the repair kept")
        .await;
    eprintln!(
        "[{test}] kept {kept} of {QUEUED} queued and {} of {RETAINED} retained",
        retained.len()
    );
}

/// A broker stopped cleanly keeps its newest writes in the write-ahead log;
/// that log emptied (truncated to 0 bytes) is refused saying so — which
/// file, that it is empty, that the schema version it held is gone — not
/// as "not a vmqtt data directory"; nothing is changed.
#[tokio::test]
async fn emptied_wal_is_refused_saying_what_is_wrong() {
    let test = "emptied_wal_is_refused_saying_what_is_wrong";
    if skip_on_mosquitto(test, "vmqtt's data directory") {
        return;
    }
    let mut b = populated(test).await;
    let data = b.data_dir();
    let logs = vmqtt_storage::wal::wal_files(&data).expect("list the log files");
    assert!(!logs.is_empty(), "a write-ahead log");
    for f in &logs {
        std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .and_then(|f| f.set_len(0))
            .expect("empty the log");
    }
    let name = logs[0]
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .to_lowercase();
    let stderr = expect_refusal(
        &mut b,
        test,
        &[
            "write-ahead log",
            &format!("{name} is empty (0 bytes)"),
            "schema_version",
        ],
    );
    assert!(
        !stderr.contains("not a vmqtt data directory"),
        "the directory is vmqtt's, damaged:\n{stderr}"
    );
}

// ------------------------------------------------- restarts and the port

/// Spawns `vmqtt-shard --cores 2 --listen 127.0.0.1:port --data-dir data`
/// with its output to `log`.
fn spawn_broker(port: u16, data: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).expect("create the log");
    std::process::Command::new(env!("CARGO_BIN_EXE_vmqtt-shard"))
        .args(["--cores", &SHARDS.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("spawn vmqtt-shard")
}

/// SIGTERM and at once a new broker on the same port and data directory,
/// 20 times in a row: every start succeeds (no "address already in use":
/// the stopped broker ends its listening sockets before it exits, and a
/// start waits for sockets of an exited process), serves a CONNECT with
/// its session from the run before, and every stop exits 0.
#[tokio::test]
async fn restart_right_after_a_clean_stop_always_works() {
    let test = "restart_right_after_a_clean_stop_always_works";
    if skip_on_mosquitto(test, "vmqtt's own restarts") {
        return;
    }
    const RUNS: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let id = format!("{test}-c");
    let mut waits = 0;
    for run in 0..RUNS {
        let log = dir.path().join(format!("run-{run}.log"));
        let mut child = spawn_broker(port, &data, &log);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!(
                    "[{test}] run {run} exited during start-up with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "[{test}] run {run} not accepting after 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (raw, ack) = Raw::connect_ok(port, persistent(V311, &id, false, 0)).await;
        assert_eq!(
            ack.session_present,
            run > 0,
            "[{test}] run {run}: the session"
        );
        raw.disconnect().await;
        // SAFETY: kill(2) with our own child's pid and a valid signal.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = exit_within(&mut child, STOP).expect("the broker exits after SIGTERM");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success(),
            "[{test}] run {run} exited with {status}:\n{text}"
        );
        if text.contains("waited for the sockets of an exited process") {
            waits += 1;
        }
    }
    eprintln!("[{test}] {RUNS} restarts, {waits} of them waited for the old sockets");
}

/// Something else listening on the port: the broker refuses at once, and
/// the error names the process (pid and name), not "another process".
#[tokio::test]
async fn a_foreign_listener_is_named_in_the_refusal() {
    let test = "a_foreign_listener_is_named_in_the_refusal";
    if skip_on_mosquitto(test, "vmqtt's error") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = foreign.local_addr().expect("local_addr").port();
    let log = dir.path().join("refused.log");
    let mut child = spawn_broker(port, &dir.path().join("data"), &log);
    let status = exit_within(&mut child, REFUSE).expect("the broker exits");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("[{test}] {status}: {}", text.trim());
    assert!(!status.success(), "the broker must refuse a taken port");
    let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
    let want = format!(
        "cannot listen on 127.0.0.1:{port}: address already in use by pid {} ({})",
        std::process::id(),
        me.trim_end()
    );
    assert!(text.contains(&want), "expected {want:?} in:\n{text}");
    drop(foreign);
}

/// Issue 13: at the default configuration, 4,000 QoS 1 messages
/// acknowledged for an offline persistent session came back as 1,000 after
/// a restart, silently. They all come back now (its queue is bounded by
/// `max_stored_messages`, 100,000, not by `max_queued_messages`).
#[tokio::test]
async fn four_thousand_acknowledged_messages_for_an_offline_session_survive_kill9() {
    let test = "four_thousand_survive_kill9";
    if skip_on_mosquitto(test, "needs vmqtt's persistence and a restart") {
        return;
    }
    const N: usize = 4_000;
    let mut b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let (mut sub, _) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, true, 3600)).await;
    sub.subscribe("many/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..N {
        let ack = publ
            .publish(publish("many/t", format!("m{i}"), QoS::AtLeastOnce, false))
            .await
            .expect("PUBACK");
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "message {i}: {ack:?}");
    }
    b.kill9();
    b.restart();
    let (mut sub, ack) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, false, 3600)).await;
    assert!(ack.session_present);
    let got = receive_texts(&mut sub, N).await;
    assert_eq!(got, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    sub.expect_no_publish(QUIET, "each message once").await;
}

/// A persistent session's queue at its bound: the publisher (v5) hears 0x97
/// when its message reached no one, the broker logs the client id once, and
/// what was acknowledged before is all there.
#[tokio::test]
async fn a_full_persistent_queue_says_quota_exceeded_and_is_logged() {
    let test = "full_persistent_queue";
    if skip_on_mosquitto(test, "vmqtt's max_stored_messages") {
        return;
    }
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            extra_mqtt: "max_stored_messages = 50".into(),
            ..BrokerConfig::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let (mut sub, _) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, true, 3600)).await;
    sub.subscribe("full/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut codes = Vec::new();
    for i in 0..60 {
        let ack = publ
            .publish(publish("full/t", format!("m{i}"), QoS::AtLeastOnce, false))
            .await
            .expect("PUBACK");
        codes.push(ack.reason);
    }
    assert!(
        codes[..50].iter().all(|c| *c == ReasonCode::SUCCESS),
        "{codes:?}"
    );
    assert!(
        codes[50..].iter().all(|c| *c == ReasonCode::QUOTA_EXCEEDED),
        "{codes:?}"
    );
    let (mut sub, ack) = Raw::connect_ok(b.port(), persistent(V5P, &sub_id, false, 3600)).await;
    assert!(ack.session_present);
    let got = receive_texts(&mut sub, 50).await;
    assert_eq!(got, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let log = b.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped at a limit") && l.contains(sub_id.as_str()))
        .collect();
    assert_eq!(lines.len(), 1, "one report, rate-limited: {lines:?}");
    assert!(lines[0].contains("stored_messages"), "{}", lines[0]);
    b.assert_alive();
}
