//! Crash consistency, tested rather than assumed: a child process (this
//! test binary, re-run with an environment variable) writes with
//! `sync = false` (durability "wal") and reports each write after
//! `write()` returned; it is then killed with SIGKILL, or aborts itself.
//! After reopening, every reported write must be there, whole, and every
//! batch must be all-or-nothing.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use vmqtt::broker::home_shard;
use vmqtt::codec::{QoS, SubscriptionOptions};
use vmqtt_storage::{
    recover, DeliveryState, MessageId, QueueEntry, RocksOptions, RocksStorage, ShardState, Storage,
    StoredMessage, SubscriptionRecord, WriteBatch,
};

const ENV: &str = "VMQTT_STORAGE_CRASH_CHILD";
const SHARDS: usize = 2;
const WRITERS: usize = 2;

fn client(t: usize, i: u64) -> String {
    format!("c{t}-{i}")
}

/// One batch: a session, a subscription, a message and a queue entry.
fn batch(t: usize, i: u64) -> WriteBatch {
    let c = cid(&client(t, i));
    let mut b = WriteBatch::new();
    b.put_session(c.clone(), session(i as usize));
    b.put_subscription(
        c.clone(),
        filter("crash/#"),
        SubscriptionRecord {
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            id: Some(i as u32 + 1),
        },
    );
    let id = MessageId(((t as u64) << 32) | (i + 1));
    let m: Arc<StoredMessage> = message(i as usize);
    b.put_message(id, m);
    b.put_queue_entry(
        c,
        1,
        QueueEntry {
            message: id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            state: DeliveryState::Queued,
        },
    );
    b
}

/// The child: runs only when re-invoked by a parent test with `ENV` set to
/// `{mode}:{dir}`.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let (mode, dir) = spec.split_once(':').unwrap();
    // "small": 64 KiB memtables, so that flushes and compactions run while
    // the process is killed.
    let options = if mode.contains("small") {
        RocksOptions {
            write_buffer_size: 64 << 10,
            ..RocksOptions::default()
        }
    } else {
        RocksOptions::default()
    };
    let mut storage = RocksStorage::open(dir, &options).unwrap();
    recover(&mut storage, SHARDS).unwrap();
    let abort_after: Option<u64> = mode.strip_prefix("abort").map(|n| n.parse().unwrap());
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let mut s = storage.clone();
            std::thread::spawn(move || {
                for i in 0..5_000_000u64 {
                    let shard = home_shard(&client(t, i), SHARDS);
                    s.write(shard, batch(t, i), false).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {t} {i}").unwrap();
                    out.flush().unwrap();
                    if t == 0 && abort_after == Some(i) {
                        std::process::abort();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

/// Runs the child; `kill_after` acknowledgements (counted over all
/// writers) it is SIGKILLed, else it aborts itself. Returns the
/// acknowledged writes per writer and the signal that ended the child.
fn run_child(dir: &std::path::Path, mode: &str, kill_after: Option<usize>) -> (Vec<Vec<u64>>, i32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut acked = vec![Vec::new(); WRITERS];
    let mut n = 0;
    let mut killed = false;
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        // libtest prints "test crash_child ... " without a newline before
        // the test runs: the first report shares its line.
        let Some(rest) = line.find("ACK ").map(|p| &line[p + 4..]) else {
            continue;
        };
        let (t, i) = rest.split_once(' ').unwrap();
        acked[t.parse::<usize>().unwrap()].push(i.parse().unwrap());
        n += 1;
        if !killed && kill_after.is_some_and(|k| n >= k) {
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    (acked, status.signal().unwrap_or(0))
}

fn check(dir: &std::path::Path, acked: &[Vec<u64>]) -> usize {
    let mut storage = RocksStorage::open(dir, &RocksOptions::default()).unwrap();
    let r = recover(&mut storage, SHARDS).unwrap();
    let states: &[ShardState] = &r.states;
    let mut present = 0;
    let mut names = Vec::new();
    for st in states {
        assert!(st.dangling.is_empty(), "torn batch: {:?}", st.dangling);
        assert!(st.garbage.is_empty(), "already collected");
        for (c, cs) in &st.clients {
            // Whole batches only: a session always has its subscription and
            // queue entry (whose message is present, or it would be dangling).
            assert_eq!(cs.subscriptions.len(), 1, "{c}");
            assert_eq!(cs.queue.len(), 1, "{c}");
            present += 1;
            names.push(c.as_str().to_owned());
        }
    }
    for (t, acks) in acked.iter().enumerate() {
        for &i in acks {
            let c = cid(&client(t, i));
            let shard = home_shard(c.as_str(), SHARDS).get();
            let cs = states[shard]
                .clients
                .get(&c)
                .unwrap_or_else(|| panic!("acknowledged write {t}/{i} lost"));
            assert_eq!(cs.session, session(i as usize));
            assert_eq!(*cs.queue[&1].message, *message(i as usize));
        }
    }
    let acked_names: std::collections::BTreeSet<String> = acked
        .iter()
        .enumerate()
        .flat_map(|(t, a)| a.iter().map(move |i| client(t, *i)))
        .collect();
    let extra: Vec<&String> = names.iter().filter(|n| !acked_names.contains(*n)).collect();
    // At most one write per writer was done but not yet reported when the
    // process died.
    assert!(
        extra.len() <= WRITERS,
        "present but never acknowledged: {extra:?}"
    );
    present
}

#[test]
fn sigkill_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (acked, signal) = run_child(dir.path(), "kill", Some(4000));
    assert_eq!(signal, 9, "child killed by SIGKILL");
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total >= 4000);
    let present = check(dir.path(), &acked);
    assert!(present >= total, "{present} present < {total} acknowledged");
    // At most one write per writer was in flight when the signal came.
    assert!(
        present <= total + WRITERS,
        "{present} present, {total} acknowledged"
    );
    eprintln!("kill -9: {total} acknowledged, {present} present");
}

#[test]
fn abort_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (acked, signal) = run_child(dir.path(), "abort1500", None);
    assert_eq!(signal, 6, "child ended by SIGABRT");
    assert!(acked[0].contains(&1500));
    let total: usize = acked.iter().map(Vec::len).sum();
    let present = check(dir.path(), &acked);
    assert!(present >= total && present <= total + WRITERS);
}

#[test]
fn repeated_kills_lose_nothing_acknowledged() {
    // Three runs into the same directory, each killed mid-load with small
    // memtables (flushes and compactions in progress); each run starts from
    // what the last one left and writes the same client ids again.
    let dir = tempfile::tempdir().unwrap();
    for k in [500, 3000, 6000] {
        let (acked, signal) = run_child(dir.path(), "kill-small", Some(k));
        assert_eq!(signal, 9);
        check(dir.path(), &acked);
    }
}
