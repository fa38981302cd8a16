//! Writing, reopening and loading every record kind, through RocksDB and
//! the in-memory store, with the same results.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeSet;

use common::*;
use vmqtt::broker::home_shard;
use vmqtt::codec::QoS;
use vmqtt_storage::{
    recover, DeliveryState, MemStorage, MessageId, MessageRefs, QueueEntry, Record, RocksOptions,
    RocksStorage, Storage, StorageError, WriteBatch,
};

const CLIENTS: usize = 300;
const MESSAGES: usize = 40;
const RETAINED: usize = 25;

fn expected_messages_stored(shards: usize) -> usize {
    let mut per: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shards];
    for i in 0..CLIENTS {
        let s = home_shard(&format!("client-{i}"), shards).get();
        for k in 0..3 {
            per[s].insert((i * 7 + k * 13) % MESSAGES);
        }
    }
    per.iter().map(BTreeSet::len).sum()
}

#[test]
fn rocksdb_and_memory_store_and_reload_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut rocks = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let mut mem = MemStorage::new();
    for s in [&mut rocks as &mut dyn Storage, &mut mem] {
        let r = recover(s, 2).unwrap();
        assert!(r.states.iter().all(|s| s.clients.is_empty()));
        populate(s, 2, CLIENTS, MESSAGES, RETAINED);
    }
    let from_mem = canon(&recover(&mut mem, 2).unwrap().states);
    drop(rocks);
    let mut rocks = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let r = recover(&mut rocks, 2).unwrap();
    assert!(r.resharded_from.is_none());
    let from_rocks = canon(&r.states);
    assert_eq!(from_rocks, from_mem);
    assert_eq!(from_rocks.clients.len(), CLIENTS);
    assert_eq!(from_rocks.retained.len(), RETAINED);
    assert_eq!(from_rocks.messages_stored, expected_messages_stored(2));
    for (i, c) in (0..CLIENTS).map(|i| (i, &from_rocks.clients[&format!("client-{i}")])) {
        assert_eq!(c.session, session(i));
        assert_eq!(c.subscriptions.len(), 2);
        assert_eq!(c.queue.len(), 3);
        assert_eq!(c.inbound.len(), usize::from(i % 3 == 0));
        for (k, q) in c.queue.iter().enumerate() {
            assert_eq!(q.0, k as u64 + 1);
            assert_eq!(q.5, *message((i * 7 + k * 13) % MESSAGES));
        }
    }
    for n in 0..RETAINED {
        assert_eq!(
            from_rocks.retained[&format!("status/{n}")],
            ((*retained(n)).clone(), retained_version(n))
        );
    }
    // Flushed to table files, the same again.
    rocks.flush().unwrap();
    drop(rocks);
    let mut rocks = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    assert_eq!(canon(&recover(&mut rocks, 2).unwrap().states), from_mem);
}

#[test]
fn scan_yields_records_in_key_order() {
    let mut mem = MemStorage::new();
    recover(&mut mem, 1).unwrap();
    populate(&mut mem, 1, 20, 5, 3);
    let kinds: Vec<u8> = mem
        .scan_shard(shard(0))
        .unwrap()
        .map(|r| match r.unwrap() {
            Record::Session { .. } => 1,
            Record::Subscription { .. } => 2,
            Record::Message { .. } => 3,
            Record::QueueEntry { .. } => 4,
            Record::InboundQos2 { .. } => 5,
            Record::Retained { .. } => 6,
        })
        .collect();
    assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "{kinds:?}");
    assert_eq!(kinds.iter().copied().collect::<BTreeSet<_>>().len(), 6);
}

fn count_messages(s: &dyn Storage) -> usize {
    s.scan_shard(shard(0))
        .unwrap()
        .filter(|r| matches!(r, Ok(Record::Message { .. })))
        .count()
}

/// A message queued for N sessions is stored once and deleted with its
/// last queue entry.
fn message_stored_once(s: &mut dyn Storage) {
    recover(s, 1).unwrap();
    let m = message(1);
    let id = MessageId(1);
    let mut refs = MessageRefs::new();
    let mut b = WriteBatch::new();
    for i in 0..50 {
        let c = cid(&format!("s{i}"));
        b.put_session(c.clone(), session(i));
        let entry = QueueEntry {
            message: id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            state: DeliveryState::Queued,
        };
        b.enqueue(&mut refs, c, 1, entry, &m);
    }
    s.write(shard(0), b, true).unwrap();
    assert_eq!(count_messages(s), 1);
    assert_eq!(refs.count(id), 50);
    let st = s.load_shard(shard(0)).unwrap();
    assert_eq!(st.message_refs(), refs, "refcounts rebuilt at load");
    assert_eq!(st.messages.len(), 1);
    for i in 0..49 {
        let mut b = WriteBatch::new();
        b.dequeue(&mut refs, cid(&format!("s{i}")), 1, id);
        s.write(shard(0), b, false).unwrap();
    }
    assert_eq!(count_messages(s), 1, "one entry left");
    let mut b = WriteBatch::new();
    b.dequeue(&mut refs, cid("s49"), 1, id);
    s.write(shard(0), b, false).unwrap();
    assert_eq!(count_messages(s), 0, "deleted with the last entry");
    assert!(refs.is_empty());
}

#[test]
fn message_stored_once_for_many_sessions_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    message_stored_once(&mut s);
}

#[test]
fn message_stored_once_for_many_sessions_memory() {
    message_stored_once(&mut MemStorage::new());
}

#[test]
fn unreferenced_messages_are_collected_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    recover(&mut s, 1).unwrap();
    // A message written without its queue entries (as a crash between two
    // batches could leave it).
    let mut b = WriteBatch::new();
    b.put_message(MessageId(9), message(9));
    s.write(shard(0), b, false).unwrap();
    drop(s);
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let r = recover(&mut s, 1).unwrap();
    assert!(r.states[0].messages.is_empty());
    assert_eq!(count_messages(&s), 0, "garbage deleted by recover");
}

fn delete_client_is_exact(s: &mut dyn Storage) {
    recover(s, 1).unwrap();
    let mut refs = MessageRefs::new();
    for c in ["a", "ab", "b", ""] {
        let mut b = WriteBatch::new();
        b.put_session(cid(c), session(1));
        b.put_subscription(
            cid(c),
            filter("x/#"),
            vmqtt_storage::SubscriptionRecord {
                options: vmqtt::codec::SubscriptionOptions::default(),
                id: None,
            },
        );
        let entry = QueueEntry {
            message: MessageId(1),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            state: DeliveryState::Queued,
        };
        b.enqueue(&mut refs, cid(c), u64::MAX, entry, &message(1));
        b.put_inbound_qos2(cid(c), pid(65535));
        s.write(shard(0), b, false).unwrap();
    }
    let mut b = WriteBatch::new();
    b.delete_client(cid("a"));
    s.write(shard(0), b, false).unwrap();
    let st = s.load_shard(shard(0)).unwrap();
    let left: Vec<&str> = st.clients.keys().map(|c| c.as_str()).collect();
    assert_eq!(left, ["", "ab", "b"]);
    for c in st.clients.values() {
        assert_eq!(
            (c.subscriptions.len(), c.queue.len(), c.inbound_qos2.len()),
            (1, 1, 1)
        );
    }
    assert!(st.dangling.is_empty(), "{:?}", st.dangling);
}

#[test]
fn delete_client_removes_exactly_one_client_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    delete_client_is_exact(&mut s);
}

#[test]
fn delete_client_removes_exactly_one_client_memory() {
    delete_client_is_exact(&mut MemStorage::new());
}

#[test]
fn a_batch_that_cannot_be_encoded_is_not_written_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut rocks = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let mut mem = MemStorage::new();
    for s in [&mut rocks as &mut dyn Storage, &mut mem] {
        recover(s, 1).unwrap();
        let mut b = WriteBatch::new();
        b.put_session(cid("ok"), session(1));
        b.put_session(cid(&"x".repeat(70_000)), session(2));
        let err = s.write(shard(0), b, true).unwrap_err();
        assert!(matches!(err, StorageError::TooLarge(_)), "{err}");
        assert!(s.load_shard(shard(0)).unwrap().clients.is_empty());
    }
}

#[test]
fn purge_expired_deletes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    recover(&mut s, 1).unwrap();
    populate(&mut s, 1, 40, 6, 4);
    let mut st = s.load_shard(shard(0)).unwrap();
    // Sessions with a 3600 s interval, disconnected: gone an hour later;
    // those still connected (i % 4 == 0) or never expiring (i % 5 == 0) stay.
    let now = 1_700_000_000_000 + 3_600_000 + 1_000;
    let purged = st.purge_expired(now);
    let expected: Vec<usize> = (0..40).filter(|i| i % 4 != 0 && i % 5 != 0).collect();
    assert_eq!(purged.sessions.len(), expected.len());
    s.write(shard(0), purged.batch, true).unwrap();
    let after = s.load_shard(shard(0)).unwrap();
    assert_eq!(after.clients, st.clients);
    assert_eq!(after.messages, st.messages);
    assert!(after.garbage.is_empty() && after.dangling.is_empty());
}

#[test]
fn memory_crashes_keep_what_each_durability_promises() {
    let mut s = MemStorage::new();
    recover(&mut s, 1).unwrap();
    let mut b = WriteBatch::new();
    b.put_session(cid("synced"), session(1));
    s.write(shard(0), b, true).unwrap();
    let mut b = WriteBatch::new();
    b.put_session(cid("wal-only"), session(2));
    s.write(shard(0), b, false).unwrap();

    let after_kill = s.crash_process();
    let names = |s: &MemStorage| -> Vec<String> {
        s.load_shard(shard(0))
            .unwrap()
            .clients
            .keys()
            .map(|c| c.as_str().to_owned())
            .collect()
    };
    assert_eq!(names(&after_kill), ["synced", "wal-only"]);
    assert_eq!(names(&s.crash_power()), ["synced"]);
    s.sync().unwrap();
    assert_eq!(names(&s.crash_power()), ["synced", "wal-only"]);
}
