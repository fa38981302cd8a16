//! The core's changes through the storage codec and back: a shard that
//! stored its sessions, queues and retained messages, crashed
//! ([`MemStorage::crash_process`]) and restarted gives its clients what
//! they had — with the same or another number of shards.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use vmqtt::broker::{home_shard, ConnId, CoreConfig, IoEvent, ShardCore, ShardId};
use vmqtt::codec::{
    decode, Connect, Packet, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscribeProperties, SubscriptionOptions,
};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, PacketId};
use vmqtt_storage::{MemStorage, Storage};

use super::{restore_all, to_write_batch};

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;

/// One shard of a node whose every storage batch is written to `storage`
/// at once; clients are driven by bytes.
struct Node {
    cores: Vec<ShardCore>,
    storage: MemStorage,
    now: Instant,
    inbox: std::collections::HashMap<(usize, ConnId), BytesMut>,
}

impl Node {
    fn start(storage: MemStorage, shards: usize) -> Node {
        let now = Instant::now();
        let mut st = storage.clone();
        let restored = restore_all(&mut st, shards).unwrap();
        let config = CoreConfig {
            persistence: true,
            ..CoreConfig::default()
        };
        let mut cores: Vec<ShardCore> = (0..shards)
            .map(|i| ShardCore::new(ShardId::new(i as u16), shards, config.clone(), now))
            .collect();
        for (core, r) in cores.iter_mut().zip(restored) {
            core.restore(now, r);
        }
        let mut node = Node {
            cores,
            storage,
            now,
            inbox: Default::default(),
        };
        node.run();
        node
    }

    fn run(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.cores.len() {
                if let Some((b, ops)) = self.cores[i].poll_store() {
                    progress = true;
                    let batch = to_write_batch(ops, self.now, 1_000_000);
                    self.storage
                        .write(ShardId::new(i as u16), batch, false)
                        .unwrap();
                    self.cores[i].handle_stored(b);
                }
                let out: Vec<_> = self.cores[i].poll_shard_msgs().collect();
                for (to, msgs) in out {
                    progress = true;
                    self.cores[to.get()].handle_shard_msgs(self.now, msgs);
                }
                while let Some(ev) = self.cores[i].poll_event() {
                    progress = true;
                    let c = match ev {
                        IoEvent::Wake(c) | IoEvent::Close(c, _) => c,
                        IoEvent::Connected { .. } | IoEvent::Limited { .. } => continue,
                    };
                    if let Some(out) = self.cores[i].take_output(self.now, c) {
                        self.inbox
                            .entry((i, c))
                            .or_default()
                            .extend_from_slice(&out);
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn send(&mut self, client: (usize, ConnId), p: Packet) {
        let mut buf = BytesMut::new();
        p.encode(V4, &mut buf).unwrap();
        self.cores[client.0].handle_bytes(self.now, client.1, &mut buf);
        self.run();
    }

    fn connect(&mut self, id: &str, clean: bool) -> ((usize, ConnId), bool) {
        let shard = home_shard(id, self.cores.len()).get();
        let conn = self.cores[shard].handle_open(self.now);
        let mut c = Connect::new(V4, id);
        c.clean_start = clean;
        self.send((shard, conn), Packet::Connect(Box::new(c)));
        let buf = self.inbox.entry((shard, conn)).or_default();
        match decode(buf, V4, u32::MAX).unwrap() {
            Some(Packet::ConnAck(a)) => ((shard, conn), a.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn recv(&mut self, c: &(usize, ConnId)) -> Vec<Packet> {
        let buf = self.inbox.entry(*c).or_default();
        let mut out = vec![];
        while let Some(p) = decode(buf, V4, u32::MAX).unwrap() {
            out.push(p);
        }
        out
    }

    fn subscribe(&mut self, c: (usize, ConnId), f: &str, qos: QoS) {
        let sub = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: SubscribeProperties::default(),
            filters: vec![(
                TopicFilter::new(ByteStr::from(f)).unwrap(),
                SubscriptionOptions::qos(qos),
            )],
        };
        self.send(c, Packet::Subscribe(sub));
        let buf = self.inbox.entry(c).or_default();
        let ack = decode(buf, V4, u32::MAX).unwrap();
        assert!(matches!(ack, Some(Packet::SubAck(_))), "{ack:?}");
    }

    fn publish(
        &mut self,
        c: (usize, ConnId),
        t: &str,
        payload: &str,
        qos: QoS,
        id: u16,
        retain: bool,
    ) {
        let mut p = Publish::new(
            TopicName::new(ByteStr::from(t)).unwrap(),
            Bytes::from(payload.to_owned()),
        );
        p.qos = qos;
        p.retain = retain;
        p.packet_id = PacketId::new(id);
        self.send(c, Packet::Publish(p));
    }

    fn drop_conn(&mut self, c: (usize, ConnId)) {
        self.cores[c.0].handle_closed(self.now, c.1);
        self.run();
    }
}

fn payloads(packets: &[Packet]) -> Vec<(String, bool, Option<u16>)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.dup,
                p.packet_id.map(PacketId::get),
            )),
            _ => None,
        })
        .collect()
}

/// A node of `before` shards stores; after a crash, a node of `after`
/// shards gives the subscriber everything, in order, with QoS 2 in flight
/// resent under its packet id.
fn crash_and_restart(before: usize, after: usize) {
    let storage = MemStorage::new();
    let mut node = Node::start(storage.clone(), before);
    let (sub, present) = node.connect("dashboard", false);
    assert!(!present);
    node.subscribe(sub, "fleet/#", QoS::ExactlyOnce);
    // One QoS 2 message reaches the subscriber and is PUBRECed: in flight
    // awaiting PUBCOMP. Another is sent but not acknowledged.
    let (publ, _) = node.connect("sensor", true);
    node.publish(publ, "fleet/1", "m1", QoS::ExactlyOnce, 1, false);
    node.publish(publ, "fleet/2", "m2", QoS::ExactlyOnce, 2, false);
    let got = node.recv(&sub);
    let ids: Vec<u16> = payloads(&got).iter().filter_map(|p| p.2).collect();
    assert_eq!(ids.len(), 2);
    let first = PacketId::new(ids[0]).unwrap();
    node.send(sub, Packet::PubRec(PubResponse::new(first)));
    assert_eq!(
        node.recv(&sub),
        vec![Packet::PubRel(PubResponse::new(first))]
    );
    node.drop_conn(sub);
    // Offline: queued, and a retained message.
    for (i, m) in ["m3", "m4", "m5"].iter().enumerate() {
        node.publish(publ, "fleet/3", m, QoS::AtLeastOnce, 10 + i as u16, false);
    }
    node.publish(publ, "status", "up", QoS::AtLeastOnce, 20, true);
    let acks = node.recv(&publ);
    assert_eq!(acks.len(), 6, "every publish acknowledged: {acks:?}");

    // kill -9: only what reached the log survives.
    let storage = storage.crash_process();
    let mut node = Node::start(storage, after);
    let (sub, present) = node.connect("dashboard", false);
    assert!(present, "the session survived");
    let got = node.recv(&sub);
    assert_eq!(got[0], Packet::PubRel(PubResponse::new(first)), "{got:?}");
    let p = payloads(&got);
    assert_eq!(
        p[0],
        ("m2".to_owned(), true, Some(ids[1])),
        "resent with DUP"
    );
    let rest: Vec<&str> = p[1..].iter().map(|x| x.0.as_str()).collect();
    assert_eq!(rest, ["m3", "m4", "m5"]);
    // Retained, for a new subscriber.
    let (other, _) = node.connect("viewer", true);
    node.subscribe(other, "status", QoS::AtMostOnce);
    let got = payloads(&node.recv(&other));
    assert_eq!(got, [("up".to_owned(), false, None)]);
    // The live subscription still routes, from any shard.
    let (publ, _) = node.connect("sensor", true);
    node.publish(publ, "fleet/9", "m6", QoS::AtLeastOnce, 1, false);
    let got = payloads(&node.recv(&sub));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "m6");
}

#[test]
fn crash_and_restart_on_one_shard() {
    crash_and_restart(1, 1);
}

#[test]
fn crash_and_restart_on_two_shards() {
    crash_and_restart(2, 2);
}

#[test]
fn restart_with_more_shards_reshards() {
    crash_and_restart(1, 3);
}

#[test]
fn restart_with_fewer_shards_reshards() {
    crash_and_restart(3, 2);
}

#[test]
fn acknowledged_messages_are_deleted_once_delivered() {
    let storage = MemStorage::new();
    let mut node = Node::start(storage.clone(), 2);
    let (sub, _) = node.connect("s", false);
    node.subscribe(sub, "t", QoS::AtLeastOnce);
    let (publ, _) = node.connect("p", true);
    node.publish(publ, "t", "x", QoS::AtLeastOnce, 1, false);
    let got = payloads(&node.recv(&sub));
    let id = PacketId::new(got[0].2.unwrap()).unwrap();
    node.send(sub, Packet::PubAck(PubResponse::new(id)));
    let mut st = storage.crash_process();
    let state = st.load_shard(home_shard("s", 2)).unwrap();
    let c = state.clients.get("s").unwrap();
    assert!(c.queue.is_empty() && state.messages.is_empty());
    assert_eq!(c.subscriptions.len(), 1);
    let _ = restore_all(&mut st, 2).unwrap();
}
