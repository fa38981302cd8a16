use bytes::Bytes;
use vmqtt::codec::{ProtocolVersion, PublishProperties, QoS, SubscriptionOptions};
use vmqtt::ByteStr;

use super::*;
use crate::record::{Op, SubscriptionRecord};
use vmqtt::broker::RetainVersion;

fn cid(s: &str) -> ClientId {
    ClientId::new(ByteStr::from(s))
}

fn session(disconnected_at_ms: Option<u64>, expiry_interval: u32) -> SessionRecord {
    SessionRecord {
        protocol: ProtocolVersion::V5,
        expiry_interval,
        will: None,
        disconnected_at_ms,
    }
}

fn msg(topic: &'static str, expires_at_ms: Option<u64>) -> Arc<StoredMessage> {
    Arc::new(StoredMessage {
        topic: TopicName::from_static(topic).unwrap(),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        expires_at_ms,
        origin: None,
    })
}

fn entry(id: u64, state: DeliveryState) -> QueueEntry {
    QueueEntry {
        message: MessageId(id),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        state,
    }
}

fn ok(r: Record) -> Result<Record> {
    Ok(r)
}

#[test]
fn message_refs_count_to_zero() {
    let mut r = MessageRefs::new();
    let id = MessageId(3);
    assert!(r.retain(id), "first reference stores the message");
    assert!(!r.retain(id));
    assert_eq!(r.count(id), 2);
    assert!(!r.release(id));
    assert!(r.release(id), "last reference deletes the message");
    assert!(!r.release(id), "unknown ids are not released twice");
    assert!(r.is_empty());
}

#[test]
fn enqueue_and_dequeue_write_the_message_once() {
    let mut refs = MessageRefs::new();
    let m = msg("t", None);
    let mut b = WriteBatch::new();
    b.enqueue(&mut refs, cid("a"), 1, entry(1, DeliveryState::Queued), &m);
    b.enqueue(&mut refs, cid("b"), 1, entry(1, DeliveryState::Queued), &m);
    let puts = b
        .ops()
        .iter()
        .filter(|o| matches!(o, Op::Put(Record::Message { .. })))
        .count();
    assert_eq!(puts, 1);
    let mut b = WriteBatch::new();
    b.dequeue(&mut refs, cid("a"), 1, MessageId(1));
    assert_eq!(b.len(), 1, "still referenced by b");
    b.dequeue(&mut refs, cid("b"), 1, MessageId(1));
    assert_eq!(
        b.ops().last(),
        Some(&Op::Delete(RecordKey::Message(MessageId(1))))
    );
}

#[test]
fn from_records_joins_and_reports_what_does_not_fit() {
    let f = TopicFilter::from_static("a/+").unwrap();
    let sub = SubscriptionRecord {
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        id: None,
    };
    let records = vec![
        // Order does not matter.
        ok(Record::QueueEntry {
            client_id: cid("a"),
            seq: 2,
            entry: entry(10, DeliveryState::Queued),
        }),
        ok(Record::Session {
            client_id: cid("a"),
            session: session(None, 60),
        }),
        ok(Record::Message {
            id: MessageId(10),
            message: msg("x", None),
        }),
        ok(Record::Message {
            id: MessageId(11),
            message: msg("unreferenced", None),
        }),
        ok(Record::Subscription {
            client_id: cid("a"),
            filter: f.clone(),
            subscription: sub,
        }),
        ok(Record::Subscription {
            client_id: cid("nobody"),
            filter: f.clone(),
            subscription: sub,
        }),
        ok(Record::QueueEntry {
            client_id: cid("a"),
            seq: 3,
            entry: entry(99, DeliveryState::Queued),
        }),
        ok(Record::InboundQos2 {
            client_id: cid("a"),
            packet_id: PacketId::new(4).unwrap(),
        }),
        ok(Record::Retained {
            message: msg("r", None),
            version: RetainVersion {
                ms: 5,
                ..RetainVersion::default()
            },
        }),
    ];
    let st = ShardState::from_records(ShardId::new(0), records).unwrap();
    let a = &st.clients[&cid("a")];
    assert_eq!(a.subscriptions.len(), 1);
    assert_eq!(a.queue.len(), 1);
    assert_eq!(a.queue[&2].message.topic.as_str(), "x");
    assert_eq!(a.next_seq(), 3);
    assert_eq!(a.inbound_qos2.len(), 1);
    assert_eq!(st.retained.len(), 1);
    assert_eq!(st.messages.len(), 1);
    assert_eq!(st.next_message_id(), MessageId(11));
    assert_eq!(
        st.garbage.ops(),
        &[Op::Delete(RecordKey::Message(MessageId(11)))]
    );
    assert_eq!(
        st.dangling,
        vec![
            RecordKey::Subscription(cid("nobody"), f),
            RecordKey::QueueEntry(cid("a"), 3)
        ]
    );
    // records() yields what was kept, and a reload of them is identical.
    let again = ShardState::from_records(ShardId::new(0), st.records().map(Ok)).unwrap();
    assert_eq!(again.clients, st.clients);
    assert_eq!(again.messages, st.messages);
    assert_eq!(again.retained, st.retained);
    assert!(again.garbage.is_empty() && again.dangling.is_empty());
}

#[test]
fn from_records_stops_at_the_first_error() {
    let recs = vec![Err(crate::StorageError::UnknownShard(ShardId::new(3)))];
    assert!(ShardState::from_records(ShardId::new(0), recs).is_err());
}

#[test]
fn purge_removes_expired_sessions_messages_and_retained() {
    let mut st = ShardState::new(ShardId::new(0));
    let shared = msg("shared", Some(500));
    let fresh = msg("fresh", None);
    st.messages.insert(MessageId(1), shared.clone());
    st.messages.insert(MessageId(2), fresh.clone());
    // "old" disconnected at 0 with a 1 s expiry: gone at 1000.
    let mut old = ClientState::new(session(Some(0), 1));
    old.queue.insert(
        1,
        QueuedMessage {
            entry: entry(2, DeliveryState::Queued),
            message: fresh.clone(),
        },
    );
    st.clients.insert(cid("old"), old);
    // "live" is connected: never expires here. Its queued copy of the
    // expired message goes; its in-flight copy stays.
    let mut live = ClientState::new(session(None, 1));
    live.queue.insert(
        1,
        QueuedMessage {
            entry: entry(1, DeliveryState::AwaitPubAck(PacketId::new(1).unwrap())),
            message: shared.clone(),
        },
    );
    live.queue.insert(
        2,
        QueuedMessage {
            entry: entry(1, DeliveryState::Queued),
            message: shared.clone(),
        },
    );
    st.clients.insert(cid("live"), live);
    // "forever" never expires.
    st.clients
        .insert(cid("forever"), ClientState::new(session(Some(0), u32::MAX)));
    st.retained.insert(
        TopicName::from_static("r").unwrap(),
        (msg("r", Some(999)), RetainVersion::default()),
    );

    let p = st.purge_expired(1000);
    assert_eq!(p.sessions.len(), 1);
    assert_eq!(p.sessions[0].0, cid("old"));
    assert_eq!(p.queue_entries, 2);
    assert_eq!(p.messages, 1, "message 2 had only old's reference");
    assert_eq!(p.retained, 1);
    assert!(
        st.messages.contains_key(&MessageId(1)),
        "still in flight to live"
    );
    assert!(!st.messages.contains_key(&MessageId(2)));
    assert_eq!(st.clients[&cid("live")].queue.len(), 1);
    assert!(st.clients.contains_key(&cid("forever")));
    assert!(st.retained.is_empty());
    assert!(p.batch.ops().contains(&Op::DeleteClient(cid("old"))));
    assert!(p
        .batch
        .ops()
        .contains(&Op::Delete(RecordKey::Message(MessageId(2)))));
    assert!(p
        .batch
        .ops()
        .contains(&Op::Delete(RecordKey::QueueEntry(cid("live"), 2))));
}

#[test]
fn plan_reshard_rehomes_and_stores_each_message_once_per_shard() {
    // One old shard, many clients queued on the same message.
    let mut st = ShardState::new(ShardId::new(0));
    let m = msg("m", None);
    st.messages.insert(MessageId(42), m.clone());
    for i in 0..40 {
        let mut c = ClientState::new(session(None, 10));
        c.queue.insert(
            7,
            QueuedMessage {
                entry: entry(42, DeliveryState::Queued),
                message: m.clone(),
            },
        );
        st.clients.insert(cid(&format!("c{i}")), c);
    }
    st.retained.insert(
        TopicName::from_static("r1").unwrap(),
        (msg("r1", None), RetainVersion::default()),
    );
    st.retained.insert(
        TopicName::from_static("r2").unwrap(),
        (msg("r2", None), RetainVersion::default()),
    );
    let plan = plan_reshard(vec![st], 3);
    assert_eq!(plan.old_shards, vec![ShardId::new(0)]);
    assert!(plan.drop.is_empty());
    assert_eq!(plan.new_shards(), 3);
    let mut clients = 0;
    for (i, s) in plan.states.iter().enumerate() {
        assert_eq!(s.shard.get(), i);
        for (c, cs) in &s.clients {
            assert_eq!(home_shard(c.as_str(), 3), s.shard);
            let q = &cs.queue[&7];
            assert_eq!(s.messages[&q.entry.message], q.message);
        }
        clients += s.clients.len();
        assert_eq!(s.messages.len(), usize::from(!s.clients.is_empty()));
        for t in s.retained.keys() {
            assert_eq!(retained_home(t.as_str(), 3), s.shard);
        }
    }
    assert_eq!(clients, 40);
    let back = plan_reshard(plan.states, 1);
    assert_eq!(back.drop, vec![ShardId::new(1), ShardId::new(2)]);
    assert_eq!(back.states[0].clients.len(), 40);
    assert_eq!(
        back.states[0].messages.len(),
        1,
        "the copies of the old shards become one again"
    );
    assert_eq!(back.states[0].retained.len(), 2);
}
