//! Not a benchmark: a quick measurement of queue-entry writes on this
//! machine, printed. `cargo test -p vmqtt-storage --release --test timing
//! -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Instant;

use common::*;
use vmqtt::codec::QoS;
use vmqtt_storage::{
    recover, DeliveryState, MessageId, MessageRefs, QueueEntry, RocksOptions, RocksStorage,
    Storage, WriteBatch,
};

fn entry(i: u64) -> QueueEntry {
    QueueEntry {
        message: MessageId(1 + i % 10),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![1],
        state: DeliveryState::Queued,
    }
}

#[test]
#[ignore = "timing, run by hand"]
fn queue_entry_write_timings() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    recover(&mut s, 1).unwrap();
    // The messages the entries refer to.
    let mut refs = MessageRefs::new();
    let mut b = WriteBatch::new();
    for i in 0..10 {
        b.enqueue(&mut refs, cid("warmup"), i, entry(i), &message(i as usize));
    }
    s.write(shard(0), b, true).unwrap();
    let mut seq = 1_000u64;
    for round in 0..3 {
        for sync in [false, true] {
            // One batch of 1,000 queue entries.
            let mut b = WriteBatch::new();
            for i in 0..1000 {
                seq += 1;
                b.put_queue_entry(cid(&format!("client-{}", i % 100)), seq, entry(seq));
            }
            let t = Instant::now();
            s.write(shard(0), b, sync).unwrap();
            let one_batch = t.elapsed();
            // 1,000 writes of one queue entry each.
            let t = Instant::now();
            for i in 0..1000 {
                seq += 1;
                let mut b = WriteBatch::new();
                b.put_queue_entry(cid(&format!("client-{}", i % 100)), seq, entry(seq));
                s.write(shard(0), b, sync).unwrap();
            }
            let separate = t.elapsed();
            eprintln!(
                "round {round} sync={sync}: one batch of 1000 entries {:?}; 1000 single-entry writes {:?} ({:?} each)",
                one_batch,
                separate,
                separate / 1000
            );
        }
    }
}

#[test]
#[ignore = "timing, run by hand"]
fn recovery_timing() {
    let dir = tempfile::tempdir().unwrap();
    let clients = 100_000;
    {
        let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
        recover(&mut s, 2).unwrap();
        let t = Instant::now();
        populate(&mut s, 2, clients, 1000, 1000);
        eprintln!(
            "wrote {clients} sessions (2 subscriptions, 3 queue entries each) in {:?}",
            t.elapsed()
        );
        s.flush().unwrap();
    }
    let t = Instant::now();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let opened = t.elapsed();
    let r = recover(&mut s, 2).unwrap();
    let n: usize = r.states.iter().map(|s| s.clients.len()).sum();
    assert_eq!(n, clients);
    eprintln!(
        "open {opened:?}, open + recover {:?} for {clients} sessions (one thread)",
        t.elapsed()
    );
}
