//! Deterministic broker tests: several [`ShardCore`]s wired together in
//! memory, clients that speak bytes, and simulated time (quinn's `Pair`
//! idea, for a cluster of shards). Every pub/sub test puts publisher and
//! subscriber on different shards.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::*;
use crate::topic::{TopicFilter, TopicName};
use crate::{ByteStr, MessageId, PacketId};

struct Cluster {
    cores: Vec<ShardCore>,
    now: Instant,
    inbox: HashMap<(usize, ConnId), BytesMut>,
    closed: HashSet<(usize, ConnId)>,
    /// Storage batches taken from each shard, in order.
    batches: Vec<Vec<(crate::BatchId, Vec<persist::StoreOp>)>>,
    /// Leave storage batches unwritten until [`Cluster::write_store`].
    hold_store: bool,
}

#[derive(Debug, Clone)]
struct Client {
    shard: usize,
    conn: ConnId,
    version: ProtocolVersion,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(ByteStr::from(s)).unwrap()
}

fn topic(s: &str) -> TopicName {
    TopicName::new(ByteStr::from(s)).unwrap()
}

/// Two client ids whose home shards differ (for a 2-shard cluster).
fn ids_apart(prefix: &str) -> (String, String) {
    let a = format!("{prefix}-a");
    let sa = home_shard(&a, 2);
    let b = (0..)
        .map(|i| format!("{prefix}-b{i}"))
        .find(|b| home_shard(b, 2) != sa)
        .unwrap();
    (a, b)
}

impl Cluster {
    /// With storage attached (batches written at once), so every test
    /// also runs the persistence paths.
    fn new(shards: usize) -> Self {
        Self::with_config(
            shards,
            CoreConfig {
                persistence: true,
                ..CoreConfig::default()
            },
        )
    }

    fn with_config(shards: usize, config: CoreConfig) -> Self {
        let now = Instant::now();
        let cores = (0..shards)
            .map(|i| ShardCore::new(ShardId::new(i as u16), shards, config.clone(), now))
            .collect();
        Self {
            cores,
            now,
            inbox: HashMap::new(),
            closed: HashSet::new(),
            batches: vec![Vec::new(); shards],
            hold_store: false,
        }
    }

    /// Reports every batch taken from `shard` as written.
    fn write_store(&mut self, shard: usize) {
        if let Some((b, _)) = self.batches[shard].last() {
            let b = *b;
            self.cores[shard].handle_stored(b);
        }
        self.run();
    }

    /// Every storage change `shard` made, in order.
    fn store_ops(&self, shard: usize) -> Vec<persist::StoreOp> {
        self.batches[shard]
            .iter()
            .flat_map(|(_, ops)| ops.iter().cloned())
            .collect()
    }

    /// Moves shard messages and output until nothing is left to move.
    fn run(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.cores.len() {
                if let Some((b, ops)) = self.cores[i].poll_store() {
                    progress = true;
                    self.batches[i].push((b, ops));
                    if !self.hold_store {
                        self.cores[i].handle_stored(b);
                    }
                }
                let batches: Vec<_> = self.cores[i].poll_shard_msgs().collect();
                for (to, msgs) in batches {
                    progress = true;
                    self.cores[to.get()].handle_shard_msgs(self.now, msgs);
                }
                while let Some(ev) = self.cores[i].poll_event() {
                    progress = true;
                    match ev {
                        IoEvent::Wake(c) => {
                            if let Some(out) = self.cores[i].take_output(self.now, c) {
                                self.inbox
                                    .entry((i, c))
                                    .or_default()
                                    .extend_from_slice(&out);
                            }
                        }
                        IoEvent::Connected { .. } | IoEvent::Limited { .. } => {}
                        IoEvent::Close(c, _) => {
                            if let Some(out) = self.cores[i].take_output(self.now, c) {
                                self.inbox
                                    .entry((i, c))
                                    .or_default()
                                    .extend_from_slice(&out);
                            }
                            self.closed.insert((i, c));
                            self.cores[i].handle_closed(self.now, c);
                        }
                    }
                }
            }
            if !progress {
                // Every test checks the kept gauges against a recount.
                for core in &self.cores {
                    let s = core.stats();
                    assert_eq!(
                        (s.connections, s.subscriptions, s.inflight, s.queued),
                        core.recounted_gauges(),
                        "stats() gauges (connections, subscriptions, inflight, queued)"
                    );
                }
                // Every group's home counts exactly what each member holds
                // unfinished (its prefetch window).
                for core in &self.cores {
                    for g in core.groups() {
                        for (cid, _, outstanding) in &g.member_inflight {
                            let home = home_shard(cid.as_str(), self.cores.len()).get();
                            let held = self.cores[home].recounted_outstanding(cid, &g.filter);
                            assert_eq!(
                                held,
                                Some(*outstanding),
                                "{} of {}: held by its session vs counted at the home",
                                cid.as_str(),
                                g.filter.as_str()
                            );
                        }
                    }
                }
                return;
            }
        }
    }

    fn open(&mut self, shard: usize, version: ProtocolVersion) -> Client {
        let conn = self.cores[shard].handle_open(self.now);
        Client {
            shard,
            conn,
            version,
        }
    }

    fn send_bytes(&mut self, c: &Client, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.cores[c.shard].handle_bytes(self.now, c.conn, &mut buf);
        self.run();
    }

    fn send(&mut self, c: &Client, p: Packet) {
        let mut buf = BytesMut::new();
        p.encode(c.version, &mut buf).unwrap();
        self.send_bytes(c, &buf);
    }

    fn connect_with(&mut self, connect: Connect) -> (Client, ConnAck) {
        let shard = if connect.client_id.is_empty() {
            0
        } else {
            home_shard(&connect.client_id, self.cores.len()).get()
        };
        let c = self.open(shard, connect.protocol);
        self.send(&c, Packet::Connect(Box::new(connect)));
        match self.recv_one(&c) {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn connect(&mut self, version: ProtocolVersion, id: &str) -> Client {
        self.connect_with(Connect::new(version, id)).0
    }

    /// The next packet the client received, leaving the rest.
    fn recv_one(&mut self, c: &Client) -> Option<Packet> {
        let buf = self.inbox.entry((c.shard, c.conn)).or_default();
        decode(buf, c.version, u32::MAX).unwrap()
    }

    fn recv(&mut self, c: &Client) -> Vec<Packet> {
        let buf = self.inbox.entry((c.shard, c.conn)).or_default();
        let mut out = vec![];
        while let Some(p) = decode(buf, c.version, u32::MAX).unwrap() {
            out.push(p);
        }
        out
    }

    fn publishes(&mut self, c: &Client) -> Vec<Publish> {
        self.recv(c)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn closed(&self, c: &Client) -> bool {
        self.closed.contains(&(c.shard, c.conn))
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for core in &mut self.cores {
            core.handle_timeout(self.now);
        }
        self.run();
    }

    fn drop_socket(&mut self, c: &Client) {
        self.cores[c.shard].handle_closed(self.now, c.conn);
        self.closed.insert((c.shard, c.conn));
        self.run();
    }

    fn subscribe(&mut self, c: &Client, f: &str, options: SubscriptionOptions) {
        self.subscribe_with(c, f, options, None);
    }

    fn subscribe_with(
        &mut self,
        c: &Client,
        f: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        let sub = Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties {
                subscription_identifier: id,
                ..Default::default()
            },
            filters: vec![(filter(f), options)],
        };
        self.send(c, Packet::Subscribe(sub));
        let got = self.recv_one(c);
        assert!(
            matches!(&got, Some(Packet::SubAck(a)) if a.reasons[0] == ReasonCode(options.qos as u8)),
            "SUBACK: {got:?}"
        );
    }

    fn publish(&mut self, c: &Client, t: &str, payload: &'static [u8], qos: QoS, id: u16) {
        let mut p = Publish::new(topic(t), Bytes::from_static(payload));
        p.qos = qos;
        if qos != QoS::AtMostOnce {
            p.packet_id = Some(pid(id));
        }
        self.send(c, Packet::Publish(p));
    }
}

use ProtocolVersion::{V3_1_1, V5};

fn q(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

#[test]
fn home_shard_is_stable_and_spreads() {
    assert_eq!(home_shard("client-1", 8), home_shard("client-1", 8));
    let mut seen = HashSet::new();
    for i in 0..100 {
        seen.insert(home_shard(&format!("c{i}"), 4));
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(home_shard("anything", 1), ShardId::new(0));
}

#[test]
fn route_connect_finds_the_home_shard() {
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V5, "abc")))
        .encode(V5, &mut buf)
        .unwrap();
    assert_eq!(route_connect(&buf[..3], 4, 1024), ConnectRoute::NeedMore);
    assert_eq!(
        route_connect(&buf, 4, 1024),
        ConnectRoute::Shard(home_shard("abc", 4))
    );
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V5, "")))
        .encode(V5, &mut buf)
        .unwrap();
    assert_eq!(route_connect(&buf, 4, 1024), ConnectRoute::Local);
    assert_eq!(route_connect(b"\x30\x00", 4, 1024), ConnectRoute::Local);
}

#[test]
fn connack_v5_advertises_limits_and_assigns_an_id_on_this_shard() {
    let mut cl = Cluster::new(2);
    let (c, ack) = cl.connect_with(Connect::new(V5, ""));
    assert!(!ack.session_present);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert_eq!(
        home_shard(&id, 2).get(),
        c.shard,
        "assigned ids live where they connected"
    );
    assert_eq!(ack.properties.receive_maximum, Some(1024));
    assert_eq!(ack.properties.maximum_packet_size, Some(1024 * 1024));
    assert_eq!(ack.properties.topic_alias_maximum, Some(64));
    assert!(cl.cores[c.shard].session(&id).is_some());
}

#[test]
fn first_packet_must_be_connect() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V3_1_1);
    cl.send(&c, Packet::PingReq);
    assert!(cl.closed(&c));
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V3_1_1);
    cl.send_bytes(&c, b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01c");
    assert_eq!(
        cl.recv(&c),
        vec![Packet::ConnAck(ConnAck::refuse(ReasonCode(0x84)))]
    );
    assert!(cl.closed(&c));
}

#[test]
fn malformed_connect_v5_gets_connack_with_reason() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V5);
    // Reserved connect flag set.
    cl.send_bytes(&c, b"\x10\x0e\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01c");
    let got = cl.recv(&c);
    let [Packet::ConnAck(ack)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(ack.reason, ReasonCode::MALFORMED_PACKET);
    assert_eq!(
        ack.properties.reason_string.as_deref(),
        Some("CONNECT reserved flag set")
    );
    assert!(cl.closed(&c));
}

#[test]
fn malformed_packet_v5_disconnect_0x81_v3_close() {
    let mut cl = Cluster::new(2);
    let a = cl.connect(V5, "a");
    cl.send_bytes(&a, b"\x63\x02\x00\x01"); // PUBREL with flags 0011
    let got = cl.recv(&a);
    let [Packet::Disconnect(d)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(d.reason, ReasonCode::MALFORMED_PACKET);
    let text = d.properties.reason_string.as_deref().unwrap_or_default();
    assert!(text.contains("fixed header flags"), "reason string: {text}");
    assert!(cl.closed(&a));
    let b = cl.connect(V3_1_1, "b");
    cl.send_bytes(&b, b"\x63\x02\x00\x01");
    assert!(cl.recv(&b).is_empty());
    assert!(cl.closed(&b));
}

#[test]
fn oversized_packet_gets_0x95() {
    let config = CoreConfig {
        max_packet_size: 64,
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(1, config);
    let a = cl.connect(V5, "a");
    cl.publish(&a, "t", &[b'x'; 100], QoS::AtMostOnce, 0);
    let got = cl.recv(&a);
    let [Packet::Disconnect(d)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(d.reason, ReasonCode::PACKET_TOO_LARGE);
    assert!(d.properties.reason_string.is_some());
    assert!(cl.closed(&a));
}

#[test]
fn qos_0_1_2_across_shards_both_versions() {
    for version in [V3_1_1, V5] {
        let mut cl = Cluster::new(2);
        let (pubid, subid) = ids_apart("x");
        let p = cl.connect(version, &pubid);
        let s = cl.connect(version, &subid);
        assert_ne!(p.shard, s.shard);
        cl.subscribe(&s, "a/+", q(QoS::ExactlyOnce));
        cl.publish(&p, "a/0", b"zero", QoS::AtMostOnce, 0);
        cl.publish(&p, "a/1", b"one", QoS::AtLeastOnce, 1);
        assert_eq!(cl.recv(&p), vec![Packet::PubAck(PubResponse::new(pid(1)))]);
        cl.publish(&p, "a/2", b"two", QoS::ExactlyOnce, 2);
        assert_eq!(cl.recv(&p), vec![Packet::PubRec(PubResponse::new(pid(2)))]);
        // A resent QoS 2 PUBLISH is not delivered twice.
        let mut dup = Publish::new(topic("a/2"), Bytes::from_static(b"two"));
        dup.qos = QoS::ExactlyOnce;
        dup.dup = true;
        dup.packet_id = Some(pid(2));
        cl.send(&p, Packet::Publish(dup));
        assert_eq!(cl.recv(&p), vec![Packet::PubRec(PubResponse::new(pid(2)))]);
        cl.send(&p, Packet::PubRel(PubResponse::new(pid(2))));
        assert_eq!(cl.recv(&p), vec![Packet::PubComp(PubResponse::new(pid(2)))]);

        let got = cl.publishes(&s);
        let summary: Vec<_> = got.iter().map(|m| (m.topic.to_string(), m.qos)).collect();
        assert_eq!(
            summary,
            vec![
                ("a/0".into(), QoS::AtMostOnce),
                ("a/1".into(), QoS::AtLeastOnce),
                ("a/2".into(), QoS::ExactlyOnce)
            ]
        );
        // Complete the outbound flows.
        cl.send(
            &s,
            Packet::PubAck(PubResponse::new(got[1].packet_id.unwrap())),
        );
        let id2 = got[2].packet_id.unwrap();
        cl.send(&s, Packet::PubRec(PubResponse::new(id2)));
        assert_eq!(cl.recv(&s), vec![Packet::PubRel(PubResponse::new(id2))]);
        cl.send(&s, Packet::PubComp(PubResponse::new(id2)));
        assert_eq!(cl.cores[s.shard].session(&subid).unwrap().inflight_len(), 0);
    }
}

#[test]
fn qos_downgraded_to_subscription_maximum() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("d");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.publish(&p, "t", b"x", QoS::ExactlyOnce, 1);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[test]
fn v5_puback_says_no_matching_subscribers() {
    let mut cl = Cluster::new(2);
    let p = cl.connect(V5, "p");
    cl.publish(&p, "nobody", b"x", QoS::AtLeastOnce, 1);
    let rc = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(
        cl.recv(&p),
        vec![Packet::PubAck(PubResponse::with_reason(pid(1), rc))]
    );
}

#[test]
fn duplicate_client_id_takes_over_with_0x8e() {
    let mut cl = Cluster::new(2);
    let old = cl.connect(V5, "dup");
    let (new, ack) = cl.connect_with(Connect {
        clean_start: false,
        ..Connect::new(V5, "dup")
    });
    assert!(ack.session_present);
    assert_eq!(
        cl.recv(&old),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::SESSION_TAKEN_OVER
        ))]
    );
    assert!(cl.closed(&old));
    assert!(!cl.closed(&new));
    cl.send(&new, Packet::PingReq);
    assert_eq!(cl.recv(&new), vec![Packet::PingResp]);
}

#[test]
fn resend_with_dup_after_reconnect() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("r");
    let p = cl.connect(V3_1_1, &a);
    let persistent = Connect {
        clean_start: false,
        ..Connect::new(V3_1_1, &b)
    };
    let (s, _) = cl.connect_with(persistent.clone());
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.publish(&p, "t", b"first", QoS::AtLeastOnce, 1);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert!(!got[0].dup);
    cl.drop_socket(&s);
    cl.publish(&p, "t", b"while-away", QoS::AtLeastOnce, 2);
    let (s2, ack) = cl.connect_with(persistent);
    assert!(ack.session_present);
    let again = cl.publishes(&s2);
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, got[0].packet_id);
    assert_eq!(&again[0].payload[..], b"first");
    assert!(!again[1].dup);
    assert_eq!(&again[1].payload[..], b"while-away");
}

#[test]
fn qos2_pubrel_resent_after_reconnect() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("r2");
    let p = cl.connect(V5, &a);
    let mut persistent = Connect {
        clean_start: false,
        ..Connect::new(V5, &b)
    };
    persistent.properties.session_expiry_interval = Some(60);
    let (s, _) = cl.connect_with(persistent.clone());
    cl.subscribe(&s, "t", q(QoS::ExactlyOnce));
    cl.publish(&p, "t", b"x", QoS::ExactlyOnce, 1);
    let id = cl.publishes(&s)[0].packet_id.unwrap();
    cl.send(&s, Packet::PubRec(PubResponse::new(id)));
    assert_eq!(cl.recv(&s), vec![Packet::PubRel(PubResponse::new(id))]);
    cl.drop_socket(&s);
    let (s2, _) = cl.connect_with(persistent);
    assert_eq!(cl.recv(&s2), vec![Packet::PubRel(PubResponse::new(id))]);
}

#[test]
fn clean_start_discards_the_session() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("c");
    let p = cl.connect(V3_1_1, &a);
    let s = cl.connect(V3_1_1, &b);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.send(&s, Packet::Disconnect(Disconnect::default()));
    assert!(cl.cores[s.shard].session(&b).is_none());
    let (s2, ack) = cl.connect_with(Connect::new(V3_1_1, &b));
    assert!(!ack.session_present);
    cl.publish(&p, "t", b"x", QoS::AtLeastOnce, 1);
    assert!(cl.publishes(&s2).is_empty());
}

#[test]
fn session_expiry() {
    let mut cl = Cluster::new(2);
    let mut c = Connect {
        clean_start: false,
        ..Connect::new(V5, "e")
    };
    c.properties.session_expiry_interval = Some(5);
    let (s, _) = cl.connect_with(c.clone());
    cl.drop_socket(&s);
    cl.advance(Duration::from_secs(4));
    assert!(cl.cores[s.shard].session("e").is_some());
    let (s2, ack) = cl.connect_with(c.clone());
    assert!(ack.session_present);
    cl.drop_socket(&s2);
    cl.advance(Duration::from_secs(6));
    assert!(cl.cores[s.shard].session("e").is_none());
    let (_, ack) = cl.connect_with(c);
    assert!(!ack.session_present);
}

#[test]
fn disconnect_cannot_raise_a_zero_session_expiry() {
    let mut cl = Cluster::new(1);
    let a = cl.connect(V5, "a");
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(10);
    cl.send(&a, Packet::Disconnect(d));
    assert_eq!(
        cl.recv(&a),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::PROTOCOL_ERROR
        ))]
    );
}

fn will(t: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: topic(t),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

#[test]
fn will_sent_on_abnormal_close_not_on_disconnect() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("w");
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "will/#", q(QoS::AtLeastOnce));
    let (w, _) = cl.connect_with(Connect {
        will: Some(will("will/a", None)),
        ..Connect::new(V5, &a)
    });
    cl.drop_socket(&w);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"gone");
    let (w, _) = cl.connect_with(Connect {
        will: Some(will("will/a", None)),
        ..Connect::new(V5, &a)
    });
    cl.send(&w, Packet::Disconnect(Disconnect::default()));
    cl.drop_socket(&w);
    assert!(cl.publishes(&s).is_empty());
    // v5 reason 0x04: disconnect with will.
    let (w, _) = cl.connect_with(Connect {
        will: Some(will("will/a", None)),
        ..Connect::new(V5, &a)
    });
    cl.send(
        &w,
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
    );
    assert_eq!(cl.publishes(&s).len(), 1);
}

#[test]
fn will_on_keepalive_timeout() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("k");
    let s = cl.connect(V3_1_1, &b);
    cl.subscribe(&s, "will", q(QoS::AtMostOnce));
    let c = Connect {
        keep_alive: 2,
        will: Some(will("will", None)),
        ..Connect::new(V5, &a)
    };
    let (w, _) = cl.connect_with(c);
    cl.advance(Duration::from_millis(2900));
    assert!(!cl.closed(&w));
    cl.send(&w, Packet::PingReq);
    cl.advance(Duration::from_millis(2900));
    assert!(!cl.closed(&w), "activity pushes the deadline");
    cl.advance(Duration::from_millis(200));
    assert!(cl.closed(&w));
    let got = cl.recv(&w);
    assert_eq!(
        got.last(),
        Some(&Packet::Disconnect(Disconnect::new(
            ReasonCode::KEEP_ALIVE_TIMEOUT
        )))
    );
    assert_eq!(cl.publishes(&s).len(), 1);
}

#[test]
fn will_delay_and_cancel_by_reconnect() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("wd");
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "will", q(QoS::AtLeastOnce));
    let mut c = Connect {
        clean_start: false,
        will: Some(will("will", Some(5))),
        ..Connect::new(V5, &a)
    };
    c.properties.session_expiry_interval = Some(100);
    let (w, _) = cl.connect_with(c.clone());
    cl.drop_socket(&w);
    cl.advance(Duration::from_secs(4));
    assert!(cl.publishes(&s).is_empty(), "not before the delay");
    cl.advance(Duration::from_secs(2));
    assert_eq!(cl.publishes(&s).len(), 1, "after the delay");
    // Reconnect within the delay cancels it.
    let (w, _) = cl.connect_with(c.clone());
    cl.drop_socket(&w);
    cl.advance(Duration::from_secs(2));
    let (_w2, _) = cl.connect_with(Connect { will: None, ..c });
    cl.advance(Duration::from_secs(10));
    assert!(cl.publishes(&s).is_empty());
}

#[test]
fn will_published_when_session_ends_before_delay() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("we");
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "will", q(QoS::AtLeastOnce));
    let mut c = Connect {
        will: Some(will("will", Some(60))),
        ..Connect::new(V5, &a)
    };
    c.properties.session_expiry_interval = Some(2);
    let (w, _) = cl.connect_with(c);
    cl.drop_socket(&w);
    cl.advance(Duration::from_secs(1));
    assert!(cl.publishes(&s).is_empty());
    cl.advance(Duration::from_secs(2));
    assert_eq!(cl.publishes(&s).len(), 1);
}

#[test]
fn retained_store_delete_and_retain_handling() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("ret");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    let mut m = Publish::new(topic("r/1"), Bytes::from_static(b"kept"));
    m.retain = true;
    cl.send(&p, Packet::Publish(m));
    cl.subscribe(&s, "r/+", q(QoS::AtLeastOnce));
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain, "retained on subscribe has RETAIN set");
    assert_eq!(got[0].qos, QoS::AtMostOnce);
    // Retain handling 1: only for a new subscription.
    let rh1 = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..q(QoS::AtLeastOnce)
    };
    cl.subscribe(&s, "r/+", rh1);
    assert!(cl.publishes(&s).is_empty());
    cl.subscribe(&s, "r/#", rh1);
    assert_eq!(cl.publishes(&s).len(), 1);
    // Retain handling 2: never.
    let rh2 = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..q(QoS::AtLeastOnce)
    };
    cl.subscribe(&s, "+/1", rh2);
    assert!(cl.publishes(&s).is_empty());
    // Delete with an empty retained payload.
    let mut del = Publish::new(topic("r/1"), Bytes::new());
    del.retain = true;
    cl.send(&p, Packet::Publish(del));
    let live = cl.publishes(&s);
    assert_eq!(
        live.len(),
        1,
        "the delete is delivered live once (deduplicated)"
    );
    cl.subscribe(&s, "r/1", q(QoS::AtMostOnce));
    assert!(cl.publishes(&s).is_empty());
}

#[test]
fn retain_as_published() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("rap");
    let p = cl.connect(V5, &a);
    let s1 = cl.connect(V5, &b);
    cl.subscribe(
        &s1,
        "t",
        SubscriptionOptions {
            retain_as_published: true,
            ..q(QoS::AtMostOnce)
        },
    );
    let s2 = cl.connect(V5, &format!("{b}-2"));
    cl.subscribe(&s2, "t", q(QoS::AtMostOnce));
    let mut m = Publish::new(topic("t"), Bytes::from_static(b"x"));
    m.retain = true;
    cl.send(&p, Packet::Publish(m));
    assert!(cl.publishes(&s1)[0].retain);
    assert!(!cl.publishes(&s2)[0].retain);
}

#[test]
fn dollar_topics_not_matched_by_leading_wildcards() {
    let mut cl = Cluster::with_config(
        2,
        CoreConfig {
            sys_interval: Duration::from_secs(1),
            ..CoreConfig::default()
        },
    );
    let s = cl.connect(V5, "s");
    cl.subscribe(&s, "#", q(QoS::AtMostOnce));
    let sys = cl.connect(V5, "sys");
    cl.subscribe(&sys, "$SYS/broker/clients/connected", q(QoS::AtMostOnce));
    cl.advance(Duration::from_secs(1));
    assert!(cl.publishes(&s).is_empty(), "# does not match $SYS");
    let got = cl.publishes(&sys);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"2");
    // Clients cannot publish into $-topics.
    cl.publish(&s, "$SYS/fake", b"x", QoS::AtLeastOnce, 1);
    let rc = ReasonCode::TOPIC_NAME_INVALID;
    assert_eq!(
        cl.recv(&s),
        vec![Packet::PubAck(PubResponse::with_reason(pid(1), rc))]
    );
}

#[test]
fn sys_counters_aggregate_every_shard() {
    let mut cl = Cluster::with_config(
        2,
        CoreConfig {
            sys_interval: Duration::from_secs(1),
            ..CoreConfig::default()
        },
    );
    let (a, b) = ids_apart("sys");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "$SYS/broker/messages/received", q(QoS::AtMostOnce));
    for i in 0..5 {
        cl.publish(&p, "x", b"1", QoS::AtLeastOnce, i + 1);
    }
    cl.publish(&p, "x", b"1", QoS::ExactlyOnce, 9);
    cl.publish(&p, "x", b"1", QoS::AtMostOnce, 0);
    cl.subscribe(&s, "$SYS/broker/messages/received/+", q(QoS::AtMostOnce));
    cl.advance(Duration::from_secs(1)); // every shard reports
    cl.advance(Duration::from_secs(1)); // shard 0 publishes the sum
    let got = cl.publishes(&s);
    let last = |t: &str| {
        got.iter()
            .rev()
            .find(|p| p.topic.as_str() == t)
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
    };
    assert_eq!(last("$SYS/broker/messages/received").as_deref(), Some("7"));
    assert_eq!(
        last("$SYS/broker/messages/received/qos0").as_deref(),
        Some("1")
    );
    assert_eq!(
        last("$SYS/broker/messages/received/qos1").as_deref(),
        Some("5")
    );
    assert_eq!(
        last("$SYS/broker/messages/received/qos2").as_deref(),
        Some("1")
    );
    let stats = cl.cores[home_shard(&a, 2).get()].stats();
    assert_eq!(stats.received_by_qos, [1, 5, 1]);
}

#[test]
fn sys_reports_queue_depths() {
    let mut cl = Cluster::with_config(
        2,
        CoreConfig {
            sys_interval: Duration::from_secs(1),
            ..CoreConfig::default()
        },
    );
    let (a, b) = ids_apart("sysq");
    let (s, _) = cl.connect_with(Connect {
        clean_start: false,
        ..Connect::new(V3_1_1, &b)
    });
    cl.subscribe(&s, "q", q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
    let p = cl.connect(V5, &a);
    for i in 0..3 {
        cl.publish(&p, "q", b"1", QoS::AtLeastOnce, i + 1);
    }
    let w = cl.connect(V5, "watcher");
    cl.subscribe(&w, "$SYS/broker/messages/queued", q(QoS::AtMostOnce));
    cl.advance(Duration::from_secs(1));
    cl.advance(Duration::from_secs(1));
    let got = cl.publishes(&w);
    assert_eq!(got.last().map(|p| &p.payload[..]), Some(&b"3"[..]));
}

#[test]
fn wildcards_and_unsubscribe() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("wc");
    let p = cl.connect(V3_1_1, &a);
    let s = cl.connect(V3_1_1, &b);
    cl.subscribe(&s, "a/+/c", q(QoS::AtMostOnce));
    cl.subscribe(&s, "x/#", q(QoS::AtMostOnce));
    for t in ["a/b/c", "a/b/d", "x", "x/y/z", "y"] {
        cl.publish(&p, t, b"1", QoS::AtMostOnce, 0);
    }
    let topics: Vec<_> = cl
        .publishes(&s)
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(topics, ["a/b/c", "x", "x/y/z"]);
    let u = Unsubscribe {
        packet_id: pid(3),
        properties: Default::default(),
        filters: vec![filter("x/#")],
    };
    cl.send(&s, Packet::Unsubscribe(u));
    assert!(matches!(cl.recv(&s).as_slice(), [Packet::UnsubAck(_)]));
    cl.publish(&p, "x/y", b"1", QoS::AtMostOnce, 0);
    assert!(cl.publishes(&s).is_empty());
    // v5 UNSUBACK says whether the subscription existed.
    let s5 = cl.connect(V5, &format!("{b}-5"));
    let u = Unsubscribe {
        packet_id: pid(4),
        properties: Default::default(),
        filters: vec![filter("nope")],
    };
    cl.send(&s5, Packet::Unsubscribe(u));
    let got = cl.recv(&s5);
    assert!(
        matches!(got.as_slice(), [Packet::UnsubAck(a)] if a.reasons == [ReasonCode::NO_SUBSCRIPTION_EXISTED])
    );
}

#[test]
fn overlapping_subscriptions_deliver_once_with_all_ids() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("ov");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe_with(&s, "t/+", q(QoS::AtMostOnce), Some(7));
    cl.subscribe_with(&s, "t/#", q(QoS::AtLeastOnce), Some(9));
    cl.publish(&p, "t/x", b"1", QoS::AtLeastOnce, 1);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    let mut ids = got[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
}

#[test]
fn no_local() {
    let mut cl = Cluster::new(2);
    let c = cl.connect(V5, "self");
    cl.subscribe(
        &c,
        "t",
        SubscriptionOptions {
            no_local: true,
            ..q(QoS::AtMostOnce)
        },
    );
    cl.publish(&c, "t", b"x", QoS::AtMostOnce, 0);
    assert!(cl.publishes(&c).is_empty());
    let other = cl.connect(V5, "other-client");
    cl.publish(&other, "t", b"x", QoS::AtMostOnce, 0);
    assert_eq!(cl.publishes(&c).len(), 1);
}

#[test]
fn properties_pass_through() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("pp");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "t", q(QoS::AtMostOnce));
    let mut m = Publish::new(topic("t"), Bytes::from_static(b"{}"));
    m.properties = PublishProperties {
        payload_format_indicator: Some(true),
        content_type: Some(ByteStr::from("application/json")),
        response_topic: Some(topic("reply")),
        correlation_data: Some(Bytes::from_static(b"c1")),
        user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
        ..Default::default()
    };
    cl.send(&p, Packet::Publish(m.clone()));
    let got = cl.publishes(&s);
    assert_eq!(got[0].properties, m.properties);
}

#[test]
fn payload_format_invalid_gets_0x99() {
    let mut cl = Cluster::new(1);
    let p = cl.connect(V5, "p");
    let mut m = Publish::new(topic("t"), Bytes::from_static(b"\xff"));
    m.properties.payload_format_indicator = Some(true);
    m.qos = QoS::AtLeastOnce;
    m.packet_id = Some(pid(1));
    cl.send(&p, Packet::Publish(m.clone()));
    let rc = ReasonCode::PAYLOAD_FORMAT_INVALID;
    assert_eq!(
        cl.recv(&p),
        vec![Packet::PubAck(PubResponse::with_reason(pid(1), rc))]
    );
    m.qos = QoS::AtMostOnce;
    m.packet_id = None;
    cl.send(&p, Packet::Publish(m));
    assert_eq!(cl.recv(&p), vec![Packet::Disconnect(Disconnect::new(rc))]);
}

#[test]
fn topic_alias_inbound() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("ta");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "long/topic", q(QoS::AtMostOnce));
    let mut m = Publish::new(topic("long/topic"), Bytes::from_static(b"1"));
    m.properties.topic_alias = Some(3);
    cl.send(&p, Packet::Publish(m));
    let mut m = Publish::new(TopicName::empty(), Bytes::from_static(b"2"));
    m.properties.topic_alias = Some(3);
    cl.send(&p, Packet::Publish(m));
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].topic.as_str(), "long/topic");
    assert_eq!(got[1].properties.topic_alias, None);
    // Unknown alias: protocol error; alias above the maximum: 0x94.
    let mut m = Publish::new(TopicName::empty(), Bytes::from_static(b"3"));
    m.properties.topic_alias = Some(4);
    cl.send(&p, Packet::Publish(m));
    assert_eq!(
        cl.recv(&p),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::PROTOCOL_ERROR
        ))]
    );
    let p2 = cl.connect(V5, "p2");
    let mut m = Publish::new(topic("x"), Bytes::new());
    m.properties.topic_alias = Some(65);
    cl.send(&p2, Packet::Publish(m));
    assert_eq!(
        cl.recv(&p2),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::TOPIC_ALIAS_INVALID
        ))]
    );
}

#[test]
fn message_expiry() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("me");
    let p = cl.connect(V5, &a);
    let mut c = Connect {
        clean_start: false,
        ..Connect::new(V5, &b)
    };
    c.properties.session_expiry_interval = Some(300);
    let (s, _) = cl.connect_with(c.clone());
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
    for (payload, expiry) in [(&b"short"[..], 1), (&b"long"[..], 10)] {
        let mut m = Publish::new(topic("t"), Bytes::from_static(payload));
        m.qos = QoS::AtLeastOnce;
        m.packet_id = Some(pid(expiry as u16));
        m.properties.message_expiry_interval = Some(expiry);
        cl.send(&p, Packet::Publish(m));
    }
    cl.advance(Duration::from_secs(2));
    let (s2, _) = cl.connect_with(c);
    let got = cl.publishes(&s2);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(8));
}

#[test]
fn client_maximum_packet_size_is_respected() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("mps");
    let p = cl.connect(V5, &a);
    let mut c = Connect::new(V5, &b);
    c.properties.maximum_packet_size = Some(32);
    let (s, _) = cl.connect_with(c);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.publish(&p, "t", &[b'x'; 64], QoS::AtLeastOnce, 1);
    cl.publish(&p, "t", b"small", QoS::AtLeastOnce, 2);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"small");
}

#[test]
fn shared_subscription_spreads_across_shards() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("sh");
    let s1 = cl.connect(V5, &a);
    let s2 = cl.connect(V5, &b);
    assert_ne!(s1.shard, s2.shard);
    cl.subscribe(&s1, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    cl.subscribe(&s2, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    let p = cl.connect(V5, "producer");
    for i in 0..100u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 1);
    }
    let mut n1 = 0;
    let mut n2 = 0;
    for _ in 0..100 {
        for (c, n) in [(&s1, &mut n1), (&s2, &mut n2)] {
            for m in cl.publishes(c) {
                *n += 1;
                cl.send(c, Packet::PubAck(PubResponse::new(m.packet_id.unwrap())));
            }
        }
    }
    assert_eq!(n1 + n2, 100);
    assert!(n1 >= 30 && n2 >= 30, "split {n1}/{n2}");
}

#[test]
fn receive_maximum_window_and_queue_bound() {
    let config = CoreConfig {
        max_queued_messages: 5,
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(2, config);
    let (a, b) = ids_apart("rm");
    let p = cl.connect(V5, &a);
    let mut c = Connect::new(V5, &b);
    c.properties.receive_maximum = Some(2);
    let (s, _) = cl.connect_with(c);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    for i in 0..10u16 {
        cl.publish(&p, "t", b"m", QoS::AtLeastOnce, i + 1);
    }
    let first = cl.publishes(&s);
    assert_eq!(first.len(), 2, "receive maximum 2");
    let sess = cl.cores[s.shard].session(&b).unwrap();
    assert_eq!((sess.inflight_len(), sess.queued_len()), (2, 5));
    assert_eq!(cl.cores[s.shard].stats().messages_dropped, 3);
    cl.send(
        &s,
        Packet::PubAck(PubResponse::new(first[0].packet_id.unwrap())),
    );
    assert_eq!(cl.publishes(&s).len(), 1, "one slot freed, one sent");
}

#[test]
fn slow_consumer_output_is_bounded() {
    let config = CoreConfig {
        max_output_buffer: 1024,
        max_queued_messages: 100,
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(2, config);
    let (a, b) = ids_apart("slow");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "t", q(QoS::AtMostOnce));
    // The I/O layer does not take output for `s` (its socket is not
    // writable): deliveries stop at the buffer limit and are counted.
    let core = &mut cl.cores[s.shard];
    let mut sink = BytesMut::new();
    let now = cl.now;
    for _ in 0..1000 {
        let mut m = BytesMut::new();
        let publish = Publish::new(topic("t"), Bytes::from_static(&[0u8; 100]));
        Packet::Publish(publish).encode(V5, &mut m).unwrap();
        sink.extend_from_slice(&m);
    }
    let _ = core;
    let (ps, pc) = (p.shard, p.conn);
    cl.cores[ps].handle_bytes(now, pc, &mut sink);
    // Move shard messages but do not take `s`'s output.
    for _ in 0..3 {
        let batches: Vec<_> = cl.cores[ps].poll_shard_msgs().collect();
        for (to, msgs) in batches {
            cl.cores[to.get()].handle_shard_msgs(now, msgs);
        }
    }
    let stats = cl.cores[s.shard].stats();
    // Output buffer (~1 KiB) plus 100 queued; the rest is dropped and counted.
    assert!(
        stats.messages_dropped > 850,
        "dropped {}",
        stats.messages_dropped
    );
    assert!(stats.messages_sent < 20, "sent {}", stats.messages_sent);
    assert_eq!(cl.cores[s.shard].session(&b).unwrap().queued_len(), 100);
}

#[test]
fn connect_timeout() {
    let config = CoreConfig {
        connect_timeout: Duration::from_secs(3),
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(1, config);
    let c = cl.open(0, V3_1_1);
    cl.advance(Duration::from_secs(2));
    assert!(!cl.closed(&c));
    cl.advance(Duration::from_secs(2));
    assert!(cl.closed(&c));
}

#[test]
fn server_keep_alive() {
    let config = CoreConfig {
        max_keepalive: 30,
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(1, config);
    let (_, ack) = cl.connect_with(Connect {
        keep_alive: 0,
        ..Connect::new(V5, "k")
    });
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let (_, ack) = cl.connect_with(Connect {
        keep_alive: 10,
        ..Connect::new(V5, "k2")
    });
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[test]
fn qos2_receive_maximum_exceeded() {
    let config = CoreConfig {
        receive_maximum: 2,
        ..CoreConfig::default()
    };
    let mut cl = Cluster::with_config(1, config);
    let p = cl.connect(V5, "p");
    for i in 1..=3 {
        cl.publish(&p, "t", b"x", QoS::ExactlyOnce, i);
    }
    let got = cl.recv(&p);
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2],
        Packet::Disconnect(Disconnect::new(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED))
    );
}

#[test]
fn suback_and_retained_puback_wait_for_every_shard() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("bar");
    let p = cl.connect(V5, &a);
    let s = cl.connect(V5, &b);
    let now = cl.now;
    let sub = Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        filters: vec![(filter("t/#"), q(QoS::AtLeastOnce))],
    };
    let mut buf = BytesMut::new();
    Packet::Subscribe(sub.clone()).encode(V5, &mut buf).unwrap();
    cl.cores[s.shard].handle_bytes(now, s.conn, &mut buf);
    assert!(
        cl.cores[s.shard].take_output(now, s.conn).is_none(),
        "no SUBACK before the other shard routes the filter"
    );
    cl.run();
    assert!(matches!(cl.recv_one(&s), Some(Packet::SubAck(_))));
    // Subscribing again to a filter already routed answers at once.
    let mut buf = BytesMut::new();
    Packet::Subscribe(sub).encode(V5, &mut buf).unwrap();
    cl.cores[s.shard].handle_bytes(now, s.conn, &mut buf);
    assert!(cl.cores[s.shard].take_output(now, s.conn).is_some());

    let mut m = Publish::new(topic("r"), Bytes::from_static(b"kept"));
    m.retain = true;
    m.qos = QoS::AtLeastOnce;
    m.packet_id = Some(pid(5));
    let mut buf = BytesMut::new();
    Packet::Publish(m).encode(V5, &mut buf).unwrap();
    cl.cores[p.shard].handle_bytes(now, p.conn, &mut buf);
    assert!(
        cl.cores[p.shard].take_output(now, p.conn).is_none(),
        "no PUBACK before every replica holds the retained message"
    );
    cl.run();
    assert!(matches!(cl.recv_one(&p), Some(Packet::PubAck(_))));
}

#[test]
fn shutdown_sends_0x8b_to_v5_and_closes_everyone_without_wills() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("sd");
    let w = Connect {
        will: Some(will("will", None)),
        ..Connect::new(V5, &a)
    };
    let (c5, _) = cl.connect_with(w);
    let c3 = cl.connect(V3_1_1, &b);
    for core in &mut cl.cores {
        core.handle_shutdown(cl.now);
    }
    cl.run();
    assert_eq!(
        cl.recv(&c5),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::SERVER_SHUTTING_DOWN
        ))]
    );
    assert!(cl.recv(&c3).is_empty());
    assert!(cl.closed(&c5) && cl.closed(&c3));
    assert_eq!(
        cl.cores[0].stats().connections + cl.cores[1].stats().connections,
        0
    );
}

#[test]
fn reloaded_limits_apply_to_new_connections_and_keep_what_was_granted() {
    let mut cl = Cluster::new(1);
    let old = cl.connect(V5, "old");
    let mut config = cl.cores[0].config().clone();
    config.topic_alias_maximum = 2;
    config.max_packet_size = 64;
    cl.cores[0].set_config(config);
    // The old connection keeps the alias maximum (64) and packet size it was granted.
    let mut m = Publish::new(topic("t"), Bytes::from_static(&[b'x'; 80]));
    m.properties.topic_alias = Some(10);
    cl.send(&old, Packet::Publish(m.clone()));
    assert!(cl.recv(&old).is_empty() && !cl.closed(&old));
    let (new, ack) = cl.connect_with(Connect::new(V5, "new"));
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    assert_eq!(ack.properties.maximum_packet_size, Some(64));
    cl.send(&new, Packet::Publish(m));
    assert!(cl.closed(&new));
}

// ------------------------------------------------------------ persistence

use crate::ClientId;
use persist::{OutState, Restored, RestoredEntry, RestoredSession, SessionImage, StoreOp};
use std::sync::Arc;

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = Connect::new(version, id);
    c.clean_start = false;
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn count_ops(ops: &[StoreOp], f: impl Fn(&StoreOp) -> bool) -> usize {
    ops.iter().filter(|op| f(op)).count()
}

#[test]
fn puback_waits_until_every_target_shard_stored_the_message() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("dur");
    let (s, ack) = cl.connect_with(persistent(V3_1_1, &b));
    assert!(!ack.session_present);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
    let p = cl.connect(V3_1_1, &a);
    cl.hold_store = true;
    cl.publish(&p, "t", b"m", QoS::AtLeastOnce, 7);
    assert_eq!(
        cl.recv(&p),
        vec![],
        "no PUBACK before the subscriber's shard stored it"
    );
    let home = home_shard(&b, 2).get();
    let ops = cl.store_ops(home);
    assert!(
        matches!(ops.last(), Some(StoreOp::PutQueueEntry { entry, .. }) if entry.state == OutState::Queued)
    );
    cl.write_store(home);
    assert_eq!(cl.recv(&p), vec![Packet::PubAck(PubResponse::new(pid(7)))]);
}

#[test]
fn clean_sessions_write_nothing_and_are_not_held() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("clean");
    let s = cl.connect(V3_1_1, &b);
    cl.subscribe(&s, "t", q(QoS::ExactlyOnce));
    let p = cl.connect(V3_1_1, &a);
    cl.hold_store = true;
    cl.publish(&p, "t", b"m", QoS::AtLeastOnce, 1);
    assert_eq!(cl.recv(&p), vec![Packet::PubAck(PubResponse::new(pid(1)))]);
    assert_eq!(cl.publishes(&s).len(), 1);
    assert!(cl.store_ops(0).is_empty() && cl.store_ops(1).is_empty());
}

#[test]
fn message_for_many_offline_sessions_of_a_shard_is_stored_once() {
    let mut cl = Cluster::new(2);
    let ids: Vec<String> = (0..)
        .map(|i| format!("many-{i}"))
        .filter(|id| home_shard(id, 2).get() == 1)
        .take(3)
        .collect();
    for id in &ids {
        let (s, _) = cl.connect_with(persistent(V5, id));
        cl.subscribe(&s, "fleet/#", q(QoS::AtLeastOnce));
        cl.drop_socket(&s);
    }
    let before = cl.store_ops(1).len();
    let p = cl.connect(V5, "pub");
    cl.publish(&p, "fleet/a", b"m", QoS::AtLeastOnce, 1);
    let ops = cl.store_ops(1)[before..].to_vec();
    assert_eq!(
        count_ops(&ops, |o| matches!(o, StoreOp::PutMessage { .. })),
        1
    );
    assert_eq!(
        count_ops(&ops, |o| matches!(o, StoreOp::PutQueueEntry { .. })),
        3
    );
    // Each session takes its copy; the last acknowledgement deletes it.
    for (i, id) in ids.iter().enumerate() {
        let (s, ack) = cl.connect_with(persistent(V5, id));
        assert!(ack.session_present);
        let got = cl.publishes(&s);
        assert_eq!(got.len(), 1);
        let deleted =
            |cl: &Cluster| count_ops(&cl.store_ops(1), |o| matches!(o, StoreOp::DeleteMessage(_)));
        assert_eq!(deleted(&cl), 0);
        cl.send(
            &s,
            Packet::PubAck(PubResponse::new(got[0].packet_id.unwrap())),
        );
        assert_eq!(deleted(&cl), usize::from(i == 2), "after {} acks", i + 1);
    }
}

#[test]
fn outbound_qos2_is_stored_with_its_packet_id_before_it_is_sent() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("q2");
    let (s, _) = cl.connect_with(persistent(V5, &b));
    cl.subscribe(&s, "t", q(QoS::ExactlyOnce));
    let p = cl.connect(V5, &a);
    cl.hold_store = true;
    cl.publish(&p, "t", b"m", QoS::ExactlyOnce, 1);
    assert!(
        cl.publishes(&s).is_empty(),
        "held until its state is stored"
    );
    let home = home_shard(&b, 2).get();
    let ops = cl.store_ops(home);
    let sent_state = ops.iter().rev().find_map(|o| match o {
        StoreOp::PutQueueEntry { entry, .. } => Some(entry.state),
        _ => None,
    });
    cl.write_store(home);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    let id = got[0].packet_id.unwrap();
    assert_eq!(sent_state, Some(OutState::AwaitPubRec(id)));
    cl.send(&s, Packet::PubRec(PubResponse::new(id)));
    assert!(
        cl.recv(&s).is_empty(),
        "PUBREL waits for the state change too"
    );
    cl.write_store(home);
    assert_eq!(cl.recv(&s), vec![Packet::PubRel(PubResponse::new(id))]);
    let last = cl.store_ops(home).last().cloned();
    assert!(
        matches!(last, Some(StoreOp::PutQueueEntry { entry, .. }) if entry.state == OutState::AwaitPubComp(id))
    );
    cl.send(&s, Packet::PubComp(PubResponse::new(id)));
    cl.write_store(home);
    let tail: Vec<_> = cl.store_ops(home).into_iter().rev().take(2).collect();
    assert!(matches!(tail[0], StoreOp::DeleteMessage(_)));
    assert!(matches!(tail[1], StoreOp::DeleteQueueEntry { .. }));
}

#[test]
fn inbound_qos2_id_is_stored_before_pubrec_and_deleted_before_pubcomp() {
    let mut cl = Cluster::new(1);
    let (p, _) = cl.connect_with(persistent(V3_1_1, "q2in"));
    cl.hold_store = true;
    cl.publish(&p, "t", b"m", QoS::ExactlyOnce, 5);
    assert!(cl.recv(&p).is_empty());
    assert!(
        matches!(cl.store_ops(0).last(), Some(StoreOp::PutInboundQos2 { packet_id, .. }) if *packet_id == pid(5))
    );
    cl.write_store(0);
    assert_eq!(cl.recv(&p), vec![Packet::PubRec(PubResponse::new(pid(5)))]);
    cl.send(&p, Packet::PubRel(PubResponse::new(pid(5))));
    assert!(cl.recv(&p).is_empty());
    cl.write_store(0);
    assert_eq!(cl.recv(&p), vec![Packet::PubComp(PubResponse::new(pid(5)))]);
}

#[test]
fn suback_and_connack_of_a_persistent_session_wait_for_storage() {
    let mut cl = Cluster::new(1);
    cl.hold_store = true;
    let c = cl.open(0, V5);
    cl.send(&c, Packet::Connect(Box::new(persistent(V5, "held"))));
    assert!(
        cl.recv(&c).is_empty(),
        "CONNACK after the session is stored"
    );
    cl.write_store(0);
    assert!(matches!(cl.recv_one(&c), Some(Packet::ConnAck(_))));
    let sub = Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        filters: vec![(filter("a/#"), q(QoS::AtLeastOnce))],
    };
    cl.send(&c, Packet::Subscribe(sub));
    assert!(cl.recv(&c).is_empty());
    assert!(matches!(
        cl.store_ops(0).last(),
        Some(StoreOp::PutSubscription { .. })
    ));
    cl.write_store(0);
    assert!(matches!(cl.recv_one(&c), Some(Packet::SubAck(_))));
}

#[test]
fn session_end_deletes_what_was_stored() {
    let mut cl = Cluster::new(1);
    let mut conn = persistent(V5, "short");
    conn.properties.session_expiry_interval = Some(5);
    let (s, _) = cl.connect_with(conn);
    cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
    let p = cl.connect(V5, "p");
    cl.publish(&p, "t", b"m", QoS::AtLeastOnce, 1);
    cl.advance(Duration::from_secs(6));
    let ops = cl.store_ops(0);
    let n = ops.len();
    assert!(
        matches!(
            &ops[n - 2..],
            [StoreOp::DeleteClient(_), StoreOp::DeleteMessage(_)]
        ),
        "{:?}",
        &ops[n - 2..]
    );
    // v5: a DISCONNECT that sets the expiry to 0 ends persistence too.
    let (s, _) = cl.connect_with(persistent(V5, "again"));
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(0);
    cl.send(&s, Packet::Disconnect(d));
    assert!(
        matches!(cl.store_ops(0).last(), Some(StoreOp::DeleteClient(c)) if c.as_str() == "again")
    );
}

#[test]
fn retained_messages_are_stored_by_the_home_shard_of_their_topic() {
    let mut cl = Cluster::new(2);
    let p = cl.connect(V5, "rp");
    for t in ["r/1", "r/2", "r/3", "r/4"] {
        let mut m = Publish::new(topic(t), Bytes::from_static(b"v"));
        m.retain = true;
        cl.send(&p, Packet::Publish(m));
    }
    for shard in 0..2 {
        for op in cl.store_ops(shard) {
            if let StoreOp::PutRetained(m, _) = op {
                assert_eq!(home_shard(m.topic.as_str(), 2).get(), shard);
            }
        }
    }
    let stored: usize = (0..2)
        .map(|s| count_ops(&cl.store_ops(s), |o| matches!(o, StoreOp::PutRetained(..))))
        .sum();
    assert_eq!(stored, 4, "each once");
    let mut del = Publish::new(topic("r/1"), Bytes::new());
    del.retain = true;
    cl.send(&p, Packet::Publish(del));
    let home = home_shard("r/1", 2).get();
    assert!(
        matches!(cl.store_ops(home).last(), Some(StoreOp::DeleteRetained(t)) if t.as_str() == "r/1")
    );
}

fn message(t: &str, payload: &'static [u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic(t),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: PublishProperties::default(),
        expires_at: None,
        origin: None,
        uid: None,
    })
}

#[test]
fn restored_session_resends_in_flight_with_same_ids_then_its_queue() {
    let mut cl = Cluster::new(1);
    let now = cl.now;
    let m1 = message("t", b"one", QoS::ExactlyOnce);
    let m2 = message("t", b"two", QoS::ExactlyOnce);
    let m3 = message("t", b"three", QoS::AtLeastOnce);
    let entry = |seq, id: u64, msg: &Arc<Message>, state| RestoredEntry {
        seq,
        message_id: MessageId(id),
        msg: msg.clone(),
        qos: msg.qos,
        retain: false,
        sub_ids: vec![],
        state,
    };
    let restored = Restored {
        sessions: vec![RestoredSession {
            client_id: ClientId::new(ByteStr::from("back")),
            session: SessionImage {
                protocol: V3_1_1,
                expiry_interval: u32::MAX,
                will: None,
                disconnected_at: Some(now),
            },
            subscriptions: vec![(
                filter("t"),
                Subscription {
                    options: q(QoS::ExactlyOnce),
                    id: None,
                },
            )],
            queue: vec![
                entry(4, 10, &m1, OutState::AwaitPubComp(pid(40))),
                entry(5, 11, &m2, OutState::AwaitPubRec(pid(41))),
                entry(6, 12, &m3, OutState::Queued),
            ],
            inbound_qos2: vec![pid(9)],
        }],
        retained: vec![],
        routes: vec![],
        next_message_id: MessageId(13),
        expired_wills: vec![],
    };
    cl.cores[0].restore(now, restored);
    cl.run();
    let (s, ack) = cl.connect_with(persistent(V3_1_1, "back"));
    assert!(ack.session_present);
    let got = cl.recv(&s);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Packet::PubRel(PubResponse::new(pid(40))));
    let Packet::Publish(two) = &got[1] else {
        panic!("{got:?}")
    };
    assert!(two.dup && two.packet_id == Some(pid(41)) && &two.payload[..] == b"two");
    let Packet::Publish(three) = &got[2] else {
        panic!("{got:?}")
    };
    assert!(
        !three.dup
            && three
                .packet_id
                .is_some_and(|id| id != pid(40) && id != pid(41))
    );
    // The inbound QoS 2 id is still held: a resend is acknowledged, not delivered.
    let watcher = cl.connect(V3_1_1, "w");
    cl.subscribe(&watcher, "in", q(QoS::AtLeastOnce));
    let mut again = Publish::new(topic("in"), Bytes::from_static(b"x"));
    again.qos = QoS::ExactlyOnce;
    again.packet_id = Some(pid(9));
    again.dup = true;
    cl.send(&s, Packet::Publish(again));
    assert_eq!(cl.recv(&s), vec![Packet::PubRec(PubResponse::new(pid(9)))]);
    assert!(cl.publishes(&watcher).is_empty());
    // The live subscription routes new messages; new message ids follow the restored ones.
    let p = cl.connect(V3_1_1, "p2");
    cl.publish(&p, "t", b"four", QoS::AtLeastOnce, 1);
    assert!(cl.store_ops(0).iter().any(|o| matches!(
        o,
        StoreOp::PutMessage {
            id: MessageId(13),
            ..
        }
    )));
}

#[test]
fn restored_session_that_was_connected_publishes_its_will() {
    let mut cl = Cluster::new(2);
    let now = cl.now;
    let (a, b) = ids_apart("crash");
    let w = cl.connect(V5, &a);
    cl.subscribe(&w, "wills/#", q(QoS::AtLeastOnce));
    let will = LastWill {
        topic: topic("wills/b"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    let home = home_shard(&b, 2).get();
    let restored = Restored {
        sessions: vec![RestoredSession {
            client_id: ClientId::new(ByteStr::from(b.clone())),
            session: SessionImage {
                protocol: V5,
                expiry_interval: 60,
                will: Some(will),
                disconnected_at: None,
            },
            subscriptions: vec![],
            queue: vec![],
            inbound_qos2: vec![],
        }],
        ..Restored::default()
    };
    cl.cores[home].restore(now, restored);
    cl.run();
    cl.advance(Duration::from_millis(1));
    let got = cl.publishes(&w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"gone");
    // Stored again as disconnected, without the will.
    let last_put = cl.store_ops(home).into_iter().rev().find_map(|o| match o {
        StoreOp::PutSession { session, .. } => Some(session),
        _ => None,
    });
    let last_put = last_put.unwrap();
    assert!(last_put.will.is_none() && last_put.disconnected_at.is_some());
    // And it expires on time.
    cl.advance(Duration::from_secs(61));
    assert!(cl.cores[home].session(&b).is_none());
}

#[test]
fn sys_reports_storage_write_times() {
    let mut cl = Cluster::with_config(
        2,
        CoreConfig {
            sys_interval: Duration::from_secs(1),
            ..CoreConfig::default()
        },
    );
    cl.cores[0].note_store_write(Duration::from_micros(100));
    cl.cores[1].note_store_write(Duration::from_micros(300));
    cl.cores[1].note_store_write(Duration::from_micros(500));
    let w = cl.connect(V5, "watcher");
    cl.subscribe(&w, "$SYS/broker/storage/#", q(QoS::AtMostOnce));
    cl.advance(Duration::from_secs(1));
    cl.advance(Duration::from_secs(1));
    let got = cl.publishes(&w);
    let last = |t: &str| {
        got.iter()
            .rev()
            .find(|p| p.topic.as_str() == t)
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
    };
    assert_eq!(last("$SYS/broker/storage/writes").as_deref(), Some("3"));
    assert_eq!(
        last("$SYS/broker/storage/write time/mean us").as_deref(),
        Some("300")
    );
    // The maximum is per reporting interval: shard 1 reported 500 first, then 0.
    let maxes: Vec<String> = got
        .iter()
        .filter(|p| p.topic.as_str() == "$SYS/broker/storage/write time/max us")
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert!(maxes.iter().any(|m| m == "500"), "{maxes:?}");
}

mod security;

mod stalled_store;

mod retained_backlog;

mod stored_queues;

#[test]
fn sys_topics_are_retained_from_the_start() {
    let mut cl = Cluster::new(2);
    // The first timer round publishes them (no sys interval waited).
    cl.advance(Duration::ZERO);
    let (a, _) = ids_apart("sys-start");
    let s = cl.connect(V5, &a);
    cl.subscribe(&s, "$SYS/broker/version", q(QoS::AtMostOnce));
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].retain);
    assert!(String::from_utf8_lossy(&got[0].payload).starts_with("vmqtt "));
}

// --------------------------- Session Expiry Interval in DISCONNECT (v5)

/// [MQTT-3.14.2-2], §3.1.2.11.2: a Session Expiry Interval in DISCONNECT
/// replaces the one of CONNECT (unless that was 0): CONNECT 1 s, DISCONNECT
/// 5 s, reconnect after 3 s finds the session (Paho `test_session_expiry`).
#[test]
fn disconnect_session_expiry_replaces_the_connect_value() {
    for persistence in [false, true] {
        let mut cl = Cluster::with_config(
            2,
            CoreConfig {
                persistence,
                ..CoreConfig::default()
            },
        );
        let (a, b) = ids_apart("dse");
        let p = cl.connect(V5, &a);
        let mut c = Connect::new(V5, &b);
        c.properties.session_expiry_interval = Some(1);
        let (s, _) = cl.connect_with(c);
        cl.subscribe(&s, "dse/t", q(QoS::AtLeastOnce));
        let mut d = Disconnect::default();
        d.properties.session_expiry_interval = Some(5);
        cl.send(&s, Packet::Disconnect(d));
        assert!(cl.closed(&s));
        cl.publish(&p, "dse/t", b"kept", QoS::AtLeastOnce, 1);
        cl.advance(Duration::from_secs(3));
        assert!(
            cl.cores[s.shard].session(&b).is_some(),
            "persistence {persistence}: expired after the CONNECT's 1 s"
        );
        let again = Connect {
            clean_start: false,
            ..Connect::new(V5, &b)
        };
        let (s2, ack) = cl.connect_with(again.clone());
        assert!(ack.session_present, "persistence {persistence}");
        let got = cl.publishes(&s2);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(&got[0].payload[..], b"kept");
        // That connection asked for expiry 0: its session ends with it.
        cl.send(&s2, Packet::Disconnect(Disconnect::default()));
        let (_, ack) = cl.connect_with(again);
        assert!(!ack.session_present, "persistence {persistence}");
    }
}

/// What made the DISCONNECT value look ignored end to end: a session of
/// the same client id that ended shortly before (here expiry 1, disconnected
/// 0.5 s earlier) left its expiry timer behind, and a new session's
/// generation count started again at 0, so that timer matched the new
/// session and ended it after 1 s.
#[test]
fn a_timer_of_an_ended_session_does_not_fire_for_the_next_one() {
    let mut cl = Cluster::new(1);
    let mut c = Connect::new(V5, "gen");
    c.properties.session_expiry_interval = Some(1);
    let (first, _) = cl.connect_with(c.clone());
    cl.send(&first, Packet::Disconnect(Disconnect::default()));
    cl.advance(Duration::from_millis(500));
    // Clean start: a new session, with expiry 1, then 5 from DISCONNECT.
    let (s, ack) = cl.connect_with(c);
    assert!(!ack.session_present);
    cl.subscribe(&s, "gen/t", q(QoS::AtLeastOnce));
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(5);
    cl.send(&s, Packet::Disconnect(d));
    cl.advance(Duration::from_secs(3));
    let again = Connect {
        clean_start: false,
        ..Connect::new(V5, "gen")
    };
    let (_, ack) = cl.connect_with(again);
    assert!(ack.session_present, "ended by the first session's timer");
}

/// The same for a delayed will: the will timer of an ended session does
/// not publish the will of the next session of that client id early.
#[test]
fn a_will_timer_of_an_ended_session_does_not_fire_for_the_next_one() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("gw");
    let s = cl.connect(V5, &b);
    cl.subscribe(&s, "gw/#", q(QoS::AtLeastOnce));
    let mut c = Connect {
        will: Some(will("gw/first", Some(5))),
        ..Connect::new(V5, &a)
    };
    c.properties.session_expiry_interval = Some(100);
    let (w, _) = cl.connect_with(c.clone());
    cl.drop_socket(&w);
    // A clean start ends that session: its will goes out now.
    c.will = Some(will("gw/second", Some(10)));
    let (w, _) = cl.connect_with(c);
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "gw/first");
    cl.advance(Duration::from_secs(1));
    cl.drop_socket(&w);
    cl.advance(Duration::from_secs(5));
    assert!(
        cl.publishes(&s).is_empty(),
        "the second will is due 10 s after its drop, not at the first one's 5 s"
    );
    cl.advance(Duration::from_secs(6));
    let got = cl.publishes(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "gw/second");
}

/// The DISCONNECT value also counts when it is shorter than the CONNECT's,
/// and it is what the session record says (a restart keeps it).
#[test]
fn disconnect_session_expiry_can_shorten_it() {
    let mut cl = Cluster::new(1);
    let mut c = Connect::new(V5, "short");
    c.properties.session_expiry_interval = Some(60);
    let (s, _) = cl.connect_with(c);
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(2);
    cl.send(&s, Packet::Disconnect(d));
    let last_put = cl.store_ops(0).into_iter().rev().find_map(|o| match o {
        StoreOp::PutSession { session, .. } => Some(session),
        _ => None,
    });
    assert_eq!(last_put.map(|s| s.expiry_interval), Some(2));
    cl.advance(Duration::from_secs(1));
    assert!(cl.cores[0].session("short").is_some());
    cl.advance(Duration::from_secs(2));
    assert!(cl.cores[0].session("short").is_none());
}

// ------------------------------------------- outbound topic aliases (v5)

/// A v5 subscriber on its home shard that allows `max` topic aliases.
fn alias_client(cl: &mut Cluster, id: &str, max: Option<u16>, expiry: u32) -> Client {
    let mut c = Connect {
        clean_start: expiry == 0,
        ..Connect::new(V5, id)
    };
    c.properties.topic_alias_maximum = max;
    c.properties.session_expiry_interval = (expiry > 0).then_some(expiry);
    cl.connect_with(c).0
}

/// (topic, alias, payload) of each PUBLISH the client got.
fn alias_view(got: &[Publish]) -> Vec<(String, Option<u16>, String)> {
    got.iter()
        .map(|p| {
            (
                p.topic.as_str().to_owned(),
                p.properties.topic_alias,
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect()
}

fn aliased(t: &str, alias: Option<u16>, payload: &str) -> (String, Option<u16>, String) {
    (t.to_owned(), alias, payload.to_owned())
}

#[test]
fn outbound_topic_alias_bound_then_reused_with_an_empty_topic() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("oa");
    let p = cl.connect(V5, &a);
    let s = alias_client(&mut cl, &b, Some(4), 0);
    cl.subscribe(&s, "oa/#", q(QoS::AtLeastOnce));
    cl.publish(&p, "oa/one", b"1", QoS::AtMostOnce, 0);
    cl.publish(&p, "oa/one", b"2", QoS::AtLeastOnce, 1);
    cl.publish(&p, "oa/two", b"3", QoS::AtMostOnce, 0);
    cl.publish(&p, "oa/one", b"4", QoS::ExactlyOnce, 2);
    cl.publish(&p, "oa/two", b"5", QoS::AtLeastOnce, 3);
    assert_eq!(
        alias_view(&cl.publishes(&s)),
        vec![
            aliased("oa/one", Some(1), "1"),
            aliased("", Some(1), "2"),
            aliased("oa/two", Some(2), "3"),
            aliased("", Some(1), "4"),
            aliased("", Some(2), "5"),
        ]
    );
}

#[test]
fn outbound_topic_alias_lru_rebinds_the_least_recently_used() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("ol");
    let p = cl.connect(V5, &a);
    let s = alias_client(&mut cl, &b, Some(2), 0);
    cl.subscribe(&s, "ol/#", q(QoS::AtMostOnce));
    for (t, m) in [
        ("ol/a", b"1"),
        ("ol/b", b"2"),
        ("ol/a", b"3"),
        ("ol/c", b"4"),
        ("ol/b", b"5"),
        ("ol/c", b"6"),
        ("ol/b", b"7"),
    ] {
        cl.publish(&p, t, m, QoS::AtMostOnce, 0);
    }
    assert_eq!(
        alias_view(&cl.publishes(&s)),
        vec![
            aliased("ol/a", Some(1), "1"),
            aliased("ol/b", Some(2), "2"),
            aliased("", Some(1), "3"),
            // Full: ol/b (alias 2) is the least recently used.
            aliased("ol/c", Some(2), "4"),
            // Now ol/a (alias 1) is.
            aliased("ol/b", Some(1), "5"),
            aliased("", Some(2), "6"),
            aliased("", Some(1), "7"),
        ]
    );
}

#[test]
fn no_outbound_topic_alias_without_the_clients_consent_or_when_off() {
    // Maximum 0, no maximum, MQTT 3.1.1, and the switch off.
    for (max, version, on) in [
        (Some(0), V5, true),
        (None, V5, true),
        (Some(10), V3_1_1, true),
        (Some(10), V5, false),
    ] {
        let mut cl = Cluster::with_config(
            2,
            CoreConfig {
                persistence: true,
                outbound_topic_aliases: on,
                ..CoreConfig::default()
            },
        );
        let (a, b) = ids_apart("on");
        let p = cl.connect(V5, &a);
        let mut c = Connect::new(version, &b);
        c.properties.topic_alias_maximum = max;
        let (s, _) = cl.connect_with(c);
        cl.subscribe(&s, "t", q(QoS::AtLeastOnce));
        cl.publish(&p, "t", b"1", QoS::AtLeastOnce, 1);
        cl.publish(&p, "t", b"2", QoS::AtLeastOnce, 2);
        assert_eq!(
            alias_view(&cl.publishes(&s)),
            vec![aliased("t", None, "1"), aliased("t", None, "2")],
            "max {max:?} {version:?} switch {on}"
        );
    }
}

/// [MQTT-3.3.2-7]: aliases end with the connection. A reconnect starts with
/// none: what was in flight is resent (DUP) with its topic, and binds the
/// alias anew on this connection.
#[test]
fn outbound_topic_aliases_start_fresh_on_reconnect() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("orc");
    let p = cl.connect(V5, &a);
    let s = alias_client(&mut cl, &b, Some(8), 300);
    cl.subscribe(&s, "orc/t", q(QoS::AtLeastOnce));
    cl.publish(&p, "orc/t", b"1", QoS::AtLeastOnce, 1);
    cl.publish(&p, "orc/t", b"2", QoS::AtLeastOnce, 2);
    assert_eq!(
        alias_view(&cl.publishes(&s)),
        vec![aliased("orc/t", Some(1), "1"), aliased("", Some(1), "2")]
    );
    // Not acknowledged: both are in flight when the connection drops.
    cl.drop_socket(&s);
    let s2 = alias_client(&mut cl, &b, Some(8), 300);
    let got = cl.publishes(&s2);
    assert!(got.iter().all(|p| p.dup), "{got:?}");
    assert_eq!(
        alias_view(&got),
        vec![aliased("orc/t", Some(1), "1"), aliased("", Some(1), "2")]
    );
    // A reconnect that allows no aliases gets full topics only.
    cl.drop_socket(&s2);
    let s3 = alias_client(&mut cl, &b, None, 300);
    assert_eq!(
        alias_view(&cl.publishes(&s3)),
        vec![aliased("orc/t", None, "1"), aliased("orc/t", None, "2")]
    );
    cl.publish(&p, "orc/t", b"3", QoS::AtLeastOnce, 3);
    assert_eq!(
        alias_view(&cl.publishes(&s3)),
        vec![aliased("orc/t", None, "3")]
    );
}

/// The alias property counts towards the client's Maximum Packet Size: a
/// PUBLISH that fits only without it goes without it (and binds nothing);
/// one that does not fit at all is discarded without binding the alias.
#[test]
fn outbound_topic_alias_respects_maximum_packet_size() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("omp");
    let p = cl.connect(V5, &a);
    // PUBLISH QoS 0 "omp/t" + "xy": 2 + (2 + 5) + 1 (no properties) + 2 = 12
    // bytes; with a Topic Alias property: 15.
    let mut c = Connect::new(V5, &b);
    c.properties.topic_alias_maximum = Some(4);
    c.properties.maximum_packet_size = Some(12);
    let (s, _) = cl.connect_with(c);
    cl.subscribe(&s, "omp/#", q(QoS::AtMostOnce));
    cl.publish(&p, "omp/t", b"xy", QoS::AtMostOnce, 0);
    cl.publish(&p, "omp/t", b"xy", QoS::AtMostOnce, 0);
    cl.publish(&p, "omp/t", b"too big", QoS::AtMostOnce, 0);
    // "omp/u" + "z" with the alias: 14 bytes; without: 11, fits.
    cl.publish(&p, "omp/u", b"z", QoS::AtMostOnce, 0);
    // "omp" + "z" with the alias: 2 + (2 + 3) + 4 + 1 = 12, fits; then the
    // alias alone: 9.
    cl.publish(&p, "omp", b"z", QoS::AtMostOnce, 0);
    cl.publish(&p, "omp", b"z", QoS::AtMostOnce, 0);
    assert_eq!(
        alias_view(&cl.publishes(&s)),
        vec![
            aliased("omp/t", None, "xy"),
            aliased("omp/t", None, "xy"),
            aliased("omp/u", None, "z"),
            aliased("omp", Some(1), "z"),
            aliased("", Some(1), "z"),
        ]
    );
}

/// Retained messages sent on SUBSCRIBE and wills use the aliases too.
#[test]
fn outbound_topic_alias_for_retained_messages() {
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("ort");
    let p = cl.connect(V5, &a);
    let mut r = Publish::new(topic("ort/x"), Bytes::from_static(b"kept"));
    r.retain = true;
    cl.send(&p, Packet::Publish(r));
    let s = alias_client(&mut cl, &b, Some(4), 0);
    cl.subscribe(&s, "ort/#", q(QoS::AtMostOnce));
    cl.publish(&p, "ort/x", b"live", QoS::AtMostOnce, 0);
    assert_eq!(
        alias_view(&cl.publishes(&s)),
        vec![
            aliased("ort/x", Some(1), "kept"),
            aliased("", Some(1), "live")
        ]
    );
}

mod groups;

mod nodes;
