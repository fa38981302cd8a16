//! Resharding: the data written for one shard count, opened with another,
//! keeps every session, subscription, queue entry and retained message
//! exactly once, each in its new home shard; messages stay stored once per
//! shard.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::*;
use rocksdb::{DBWithThreadMode, MultiThreaded, Options};
use vmqtt_storage::{
    plan_reshard, recover, MemStorage, RocksOptions, RocksStorage, Storage, StorageError,
};

const CLIENTS: usize = 500;

/// Distinct messages each shard must store: one per message referenced by
/// its clients (no copy per session).
fn distinct_messages(c: &Canon, shards: usize) -> usize {
    let mut per = vec![std::collections::BTreeSet::new(); shards];
    for (id, cl) in &c.clients {
        let s = vmqtt::broker::home_shard(id, shards).get();
        for q in &cl.queue {
            per[s].insert(q.5.topic.as_str().to_owned());
        }
    }
    per.iter().map(|s| s.len()).sum()
}

/// Writes 2 shards, then restarts with 3, then with 1, then with 1 again;
/// `open` returns a fresh handle on the same data (a restart).
fn two_three_one(open: &mut dyn FnMut() -> Box<dyn Storage>) {
    let mut s = open();
    recover(s.as_mut(), 2).unwrap();
    populate(s.as_mut(), 2, CLIENTS, 30, 40);
    let original = canon(&recover(s.as_mut(), 2).unwrap().states);
    assert_eq!(original.clients.len(), CLIENTS);
    assert_eq!(original.retained.len(), 40);
    drop(s);

    let mut s = open();
    let r = recover(s.as_mut(), 3).unwrap();
    assert_eq!(r.resharded_from, Some(vec![shard(0), shard(1)]));
    assert_eq!(r.states.len(), 3);
    let three = canon(&r.states);
    assert_eq!(three.clients, original.clients);
    assert_eq!(three.retained, original.retained);
    assert_eq!(three.messages_stored, distinct_messages(&three, 3));
    assert_eq!(s.shards().unwrap(), [shard(0), shard(1), shard(2)]);
    assert_eq!(s.layout().unwrap(), Some(3));
    drop(s);

    let mut s = open();
    // Reloaded from disk, not just the plan.
    assert!(recover(s.as_mut(), 3).unwrap().resharded_from.is_none());
    assert_eq!(canon(&s.load_all().unwrap()), three);
    let r = recover(s.as_mut(), 1).unwrap();
    assert_eq!(r.resharded_from, Some(vec![shard(0), shard(1), shard(2)]));
    let one = canon(&r.states);
    assert_eq!(one.clients, original.clients);
    assert_eq!(one.retained, original.retained);
    assert_eq!(one.messages_stored, distinct_messages(&one, 1));
    assert_eq!(
        s.shards().unwrap(),
        [shard(0)],
        "old column families dropped"
    );
    assert_eq!(s.layout().unwrap(), Some(1));
    drop(s);

    let mut s = open();
    let r = recover(s.as_mut(), 1).unwrap();
    assert!(r.resharded_from.is_none());
    assert_eq!(canon(&r.states), one);
}

#[test]
fn reshard_2_3_1_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    two_three_one(&mut || Box::new(RocksStorage::open(&path, &RocksOptions::default()).unwrap()));
}

#[test]
fn reshard_2_3_1_memory() {
    // Each "restart" keeps what the last handle wrote (a process crash).
    let mut last = MemStorage::new();
    two_three_one(&mut || {
        last = last.crash_process();
        Box::new(last.clone())
    });
}

type Db = DBWithThreadMode<MultiThreaded>;

/// Adds an empty column family behind the storage's back, as a crash in
/// the middle of a reshard leaves one.
fn add_empty_cf(path: &std::path::Path, name: &str) {
    let cfs = Db::list_cf(&Options::default(), path).unwrap();
    let db = Db::open_cf(&Options::default(), path, &cfs).unwrap();
    db.create_cf(name, &Options::default()).unwrap();
}

#[test]
fn a_reshard_interrupted_before_its_write_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let original = {
        let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        recover(&mut s, 2).unwrap();
        populate(&mut s, 2, 200, 10, 10);
        canon(&s.load_all().unwrap())
    };
    // 2 -> 3 created shard-2 and crashed before the data write: the
    // keyspaces say 3 but the data is laid out for 2.
    add_empty_cf(&path, "shard-2");
    let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    assert_eq!(s.layout().unwrap(), Some(2));
    let r = recover(&mut s, 3).unwrap();
    assert!(r.resharded_from.is_some(), "layout 2 != 3: resharded");
    let c = canon(&r.states);
    assert_eq!(
        (c.clients, c.retained),
        (original.clients, original.retained)
    );
}

#[test]
fn a_reshard_interrupted_before_its_drop_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let original = {
        let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        recover(&mut s, 2).unwrap();
        populate(&mut s, 2, 200, 10, 10);
        canon(&s.load_all().unwrap())
    };
    // An old, emptied keyspace left behind.
    add_empty_cf(&path, "shard-7");
    let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    let r = recover(&mut s, 2).unwrap();
    assert_eq!(r.resharded_from, Some(vec![shard(0), shard(1), shard(7)]));
    assert_eq!(s.shards().unwrap(), [shard(0), shard(1)]);
    let c = canon(&r.states);
    assert_eq!(
        (c.clients, c.retained),
        (original.clients, original.retained)
    );
}

#[test]
fn a_stale_plan_is_refused() {
    let mut a = MemStorage::new();
    recover(&mut a, 2).unwrap();
    populate(&mut a, 2, 20, 5, 2);
    let plan = plan_reshard(a.load_all().unwrap(), 3);
    let mut b = MemStorage::new();
    recover(&mut b, 1).unwrap();
    let err = b.apply_reshard(&plan).unwrap_err();
    assert!(matches!(err, StorageError::StalePlan { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let mut r = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    recover(&mut r, 1).unwrap();
    let err = r.apply_reshard(&plan).unwrap_err();
    assert!(matches!(err, StorageError::StalePlan { .. }), "{err}");
    assert_eq!(r.shards().unwrap(), [shard(0)], "nothing created");
}
