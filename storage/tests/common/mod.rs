//! Shared helpers of the integration tests: a populated data set written
//! through the public API, a canonical view of loaded state that ignores
//! shard and message-id assignment, and directory snapshots.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use vmqtt::broker::{home_shard, NodeId, RetainVersion, ShardId};
use vmqtt::codec::{
    LastWill, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions, WillProperties,
};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId, PacketId};
use vmqtt_storage::{
    retained_home, DeliveryState, MessageId, MessageRefs, QueueEntry, SessionRecord, ShardState,
    Storage, StoredMessage, SubscriptionRecord, WriteBatch,
};

pub fn cid(s: &str) -> ClientId {
    ClientId::new(ByteStr::from(s))
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(ByteStr::from(s)).unwrap()
}

pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(ByteStr::from(s)).unwrap()
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn session(i: usize) -> SessionRecord {
    SessionRecord {
        protocol: if i.is_multiple_of(2) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        },
        expiry_interval: if i.is_multiple_of(5) { u32::MAX } else { 3600 },
        will: i.is_multiple_of(3).then(|| LastWill {
            topic: topic(&format!("will/{i}")),
            payload: Bytes::from(format!("offline {i}")),
            qos: QoS::AtLeastOnce,
            retain: i.is_multiple_of(2),
            properties: WillProperties {
                will_delay_interval: Some(i as u32),
                user_properties: vec![("k".into(), "v".into())],
                ..WillProperties::default()
            },
        }),
        disconnected_at_ms: (!i.is_multiple_of(4)).then_some(1_700_000_000_000 + i as u64),
    }
}

pub fn message(n: usize) -> Arc<StoredMessage> {
    Arc::new(StoredMessage {
        topic: topic(&format!("sensors/{n}/temp")),
        payload: Bytes::from(vec![n as u8; 10 + n % 7]),
        qos: if n.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        },
        retain: false,
        properties: PublishProperties {
            content_type: Some("application/octet-stream".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            ..PublishProperties::default()
        },
        expires_at_ms: n.is_multiple_of(3).then_some(2_000_000_000_000),
        origin: Some(cid(&format!("publisher-{n}"))),
    })
}

/// The version `populate` stores retained message `n` with.
pub fn retained_version(n: usize) -> RetainVersion {
    RetainVersion {
        ms: 1_800_000_000_000 + n as u64,
        node: NodeId(1 + (n % 3) as u16),
        shard: ShardId::new((n % 2) as u16),
    }
}

pub fn retained(n: usize) -> Arc<StoredMessage> {
    let mut m = (*message(n)).clone();
    m.topic = topic(&format!("status/{n}"));
    m.retain = true;
    Arc::new(m)
}

/// A data set: `clients` sessions with 2 subscriptions each, 3 queue
/// entries each drawn from `messages` shared messages (so most messages are
/// queued for many sessions), an inbound QoS 2 id for every third, and
/// `retained` retained messages. Written through `storage` laid out for
/// `shards` shards, each client in its home shard, one batch per client.
pub fn populate(
    storage: &mut dyn Storage,
    shards: usize,
    clients: usize,
    messages: usize,
    retained_n: usize,
) {
    let mut refs: Vec<MessageRefs> = (0..shards).map(|_| MessageRefs::new()).collect();
    let mut ids: Vec<BTreeMap<usize, MessageId>> = (0..shards).map(|_| BTreeMap::new()).collect();
    for i in 0..clients {
        let c = cid(&format!("client-{i}"));
        let shard = home_shard(c.as_str(), shards);
        let s = shard.get();
        let mut b = WriteBatch::new();
        b.put_session(c.clone(), session(i));
        b.put_subscription(
            c.clone(),
            filter("sensors/+/temp"),
            SubscriptionRecord {
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                id: Some(i as u32 + 1),
            },
        );
        b.put_subscription(
            c.clone(),
            filter("$share/g/alerts/#"),
            SubscriptionRecord {
                options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                id: None,
            },
        );
        for k in 0..3 {
            let n = (i * 7 + k * 13) % messages;
            let next = MessageId(ids[s].len() as u64 + 1);
            let id = *ids[s].entry(n).or_insert(next);
            let state = match k {
                0 => DeliveryState::AwaitPubAck(pid(k as u16 + 1)),
                1 if i % 2 == 0 => DeliveryState::AwaitPubComp(pid(k as u16 + 1)),
                _ => DeliveryState::Queued,
            };
            let entry = QueueEntry {
                message: id,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![i as u32 + 1],
                state,
            };
            b.enqueue(&mut refs[s], c.clone(), k as u64 + 1, entry, &message(n));
        }
        if i % 3 == 0 {
            b.put_inbound_qos2(c.clone(), pid(100 + i as u16 % 100));
        }
        storage.write(shard, b, false).unwrap();
    }
    for n in 0..retained_n {
        let m = retained(n);
        let shard = retained_home(m.topic.as_str(), shards);
        let mut b = WriteBatch::new();
        b.put_retained(m, retained_version(n));
        storage.write(shard, b, false).unwrap();
    }
}

/// A client's state with message ids replaced by the messages themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonClient {
    pub session: SessionRecord,
    pub subscriptions: BTreeMap<String, SubscriptionRecord>,
    pub queue: Vec<(u64, QoS, bool, Vec<u32>, String, StoredMessage)>,
    pub inbound: BTreeSet<u16>,
}

/// Everything of all shards, independent of how it is sharded; panics if a
/// client appears twice or lives outside its home shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Canon {
    pub clients: BTreeMap<String, CanonClient>,
    pub retained: BTreeMap<String, (StoredMessage, RetainVersion)>,
    pub messages_stored: usize,
}

pub fn canon(states: &[ShardState]) -> Canon {
    let n = states.len();
    let mut out = Canon::default();
    for st in states {
        out.messages_stored += st.messages.len();
        for (c, cs) in &st.clients {
            assert_eq!(home_shard(c.as_str(), n), st.shard, "{c} outside its home");
            let queue = cs
                .queue
                .iter()
                .map(|(seq, q)| {
                    assert_eq!(*st.messages[&q.entry.message], *q.message);
                    (
                        *seq,
                        q.entry.qos,
                        q.entry.retain,
                        q.entry.subscription_ids.clone(),
                        format!("{:?}", q.entry.state),
                        (*q.message).clone(),
                    )
                })
                .collect();
            let prev = out.clients.insert(
                c.as_str().to_owned(),
                CanonClient {
                    session: cs.session.clone(),
                    subscriptions: cs
                        .subscriptions
                        .iter()
                        .map(|(f, s)| (f.as_str().to_owned(), *s))
                        .collect(),
                    queue,
                    inbound: cs.inbound_qos2.iter().map(|p| p.get()).collect(),
                },
            );
            assert!(prev.is_none(), "{c} stored twice");
        }
        for (t, (m, version)) in &st.retained {
            assert_eq!(
                retained_home(t.as_str(), n),
                st.shard,
                "retained {t} outside its home"
            );
            let prev = out
                .retained
                .insert(t.as_str().to_owned(), ((**m).clone(), *version));
            assert!(prev.is_none(), "retained {t} stored twice");
        }
    }
    out
}

/// Every file under `dir` with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Copies a directory tree (files only, recursively).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

pub fn shard(n: u16) -> ShardId {
    ShardId::new(n)
}
