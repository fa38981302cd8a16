//! The write-ahead log, damaged: a log damaged before its end is refused
//! with an error naming the file and the offset, nothing changed (RocksDB's
//! default point-in-time recovery would silently drop every acknowledged
//! write after the damage); a log cut short inside its last record (a crash
//! mid-write) recovers everything before it; an emptied log is reported as
//! what it is; `repair_wal` recovers what precedes the damage and says what
//! it dropped.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vmqtt::broker::home_shard;
use vmqtt_storage::{
    check, recover, repair_wal, MemStorage, RocksOptions, RocksStorage, Storage, StorageError,
    WriteBatch,
};

const SHARDS: usize = 2;
const CLIENTS: usize = 300;
const MESSAGES: usize = 30;
const RETAINED: usize = 50;

/// A data directory whose data is all in the write-ahead log (never
/// flushed, as after `kill -9`): 300 sessions with queues, then 50
/// retained messages.
fn in_the_log(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let path = dir.join(name);
    {
        let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        recover(&mut s, SHARDS).unwrap();
        populate(&mut s, SHARDS, CLIENTS, MESSAGES, RETAINED);
    }
    assert!(
        !std::fs::read_dir(&path).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sst")),
        "the data should be in the log only"
    );
    let wal = largest_log(&path);
    (path, wal)
}

fn largest_log(path: &Path) -> PathBuf {
    vmqtt_storage::wal::wal_files(path)
        .unwrap()
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .expect("a write-ahead log file")
}

/// Writes 64 pseudo-random bytes at the middle of `file`; returns where.
fn damage_middle(file: &Path) -> u64 {
    let mut b = std::fs::read(file).unwrap();
    let at = b.len() / 2;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut b[at..at + 64] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    std::fs::write(file, b).unwrap();
    at as u64
}

fn load(path: &Path) -> Canon {
    let mut s = RocksStorage::open(path, &RocksOptions::default()).unwrap();
    canon(&recover(&mut s, SHARDS).unwrap().states)
}

/// The state `populate` leaves with only its first `clients` clients and
/// `retained` retained messages.
fn expected(clients: usize, retained: usize) -> Canon {
    let mut mem = MemStorage::new();
    recover(&mut mem, SHARDS).unwrap();
    populate(&mut mem, SHARDS, clients, MESSAGES, retained);
    canon(&recover(&mut mem, SHARDS).unwrap().states)
}

#[test]
fn a_log_damaged_in_the_middle_is_refused_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, wal) = in_the_log(dir.path(), "mid");
    let len = std::fs::metadata(&wal).unwrap().len();
    let at = damage_middle(&wal);
    let before = snapshot(&path);
    for _ in 0..2 {
        let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        match &err {
            StorageError::CorruptWal {
                path: p,
                file,
                offset,
                bytes_after,
                records_after,
                ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(file, &wal);
                // The damaged record starts at or before the damage, in
                // the same 32 KiB block.
                assert!(
                    *offset <= at && at - *offset < 32768,
                    "offset {offset}, damage at {at}"
                );
                assert_eq!(*bytes_after, len - offset);
                assert!(*records_after > 0, "intact batches after the damage: {msg}");
            }
            other => panic!("expected CorruptWal, got {other:?}"),
        }
        let name = wal.file_name().unwrap().to_string_lossy().into_owned();
        let offset = match &err {
            StorageError::CorruptWal { offset, .. } => *offset,
            _ => unreachable!(),
        };
        for word in [
            path.display().to_string(),
            name,
            format!("offset {offset}"),
            "nothing was changed".to_owned(),
        ] {
            assert!(msg.contains(&word), "{word:?} not in {msg}");
        }
        assert!(snapshot(&path) == before, "the refused directory changed");
        // `check` says the same, and writes nothing either.
        assert!(matches!(check(&path), Err(StorageError::CorruptWal { .. })));
        assert!(snapshot(&path) == before, "check changed the directory");
    }
}

#[test]
fn a_log_cut_inside_its_last_record_recovers_everything_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn");
    {
        let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        recover(&mut s, SHARDS).unwrap();
        populate(&mut s, SHARDS, CLIENTS, MESSAGES, RETAINED);
        // The last write: a session whose batch is torn below.
        let c = cid("torn-last");
        let mut b = WriteBatch::new();
        b.put_session(c.clone(), session(1));
        s.write(home_shard(c.as_str(), SHARDS), b, false).unwrap();
    }
    let wal = largest_log(&path);
    let len = std::fs::metadata(&wal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let scan = &vmqtt_storage::wal::scan_dir(&path).unwrap();
    let s = scan.iter().find(|s| s.file == wal).unwrap();
    assert!(s.torn_tail.is_some() && s.damage.is_none(), "{s:?}");

    check(&path).unwrap();
    let got = load(&path);
    assert!(
        !got.clients.contains_key("torn-last"),
        "the torn write is dropped"
    );
    assert_eq!(
        got,
        expected(CLIENTS, RETAINED),
        "everything before the torn write"
    );
}

#[test]
fn an_emptied_log_is_reported_as_a_lost_log_not_a_foreign_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = in_the_log(dir.path(), "emptied");
    let logs = vmqtt_storage::wal::wal_files(&path).unwrap();
    for f in &logs {
        std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let before = snapshot(&path);
    let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, StorageError::LostWal { .. }), "{err:?}");
    assert!(!msg.contains("not a vmqtt data directory"), "{msg}");
    let name = logs[0].file_name().unwrap().to_string_lossy().into_owned();
    for word in [
        path.display().to_string(),
        format!("{name} is empty (0 bytes)"),
        "write-ahead log".into(),
        "shard-0".into(),
        "nothing was changed".into(),
    ] {
        assert!(msg.contains(&word), "{word:?} not in {msg}");
    }
    assert!(snapshot(&path) == before, "the refused directory changed");

    // The log removed altogether: the same, saying so.
    for f in &logs {
        std::fs::remove_file(f).unwrap();
    }
    let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
    assert!(
        matches!(err, StorageError::LostWal { .. }) && err.to_string().contains("no *.log file"),
        "{err}"
    );
}

#[test]
fn repair_keeps_what_precedes_the_damage_and_reports_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, wal) = in_the_log(dir.path(), "repair");
    damage_middle(&wal);
    let report = repair_wal(&path, &RocksOptions::default())
        .unwrap()
        .expect("something to repair");
    eprintln!("{report:#?}");
    assert!(report.damage.contains("offset"), "{}", report.damage);
    let kept = report.kept;
    assert!(
        kept.sessions > 0 && kept.sessions < CLIENTS,
        "a prefix of the sessions is kept: {kept}"
    );
    // The retained messages were written last, after the damage.
    assert_eq!(kept.retained, 0, "{kept}");
    assert!(
        report.dropped_batches > 0 && report.dropped_bytes > 0,
        "{report:?}"
    );
    let readable = report
        .readable
        .expect("the damaged directory reads with skips");
    assert_eq!(readable.retained, RETAINED, "{readable}");
    assert!(readable.sessions > kept.sessions, "{readable} vs {kept}");

    // The directory opens normally now and holds exactly the first
    // `kept.sessions` clients, as they were written.
    check(&path).unwrap();
    assert!(
        vmqtt_storage::wal::scan_dir(&path)
            .unwrap()
            .iter()
            .all(|s| s.damage.is_none()),
        "the damaged log is gone"
    );
    assert_eq!(load(&path), expected(kept.sessions, 0));
    // Nothing more to repair, and nothing done.
    let before = snapshot(&path);
    assert!(repair_wal(&path, &RocksOptions::default())
        .unwrap()
        .is_none());
    assert!(snapshot(&path) == before);
}

#[test]
fn repair_refuses_other_damage_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = in_the_log(dir.path(), "manifest");
    for e in std::fs::read_dir(&path).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("MANIFEST-")
        {
            let len = std::fs::metadata(&p).unwrap().len() as usize;
            std::fs::write(&p, vec![0xa5; len]).unwrap();
        }
    }
    let before = snapshot(&path);
    let err = repair_wal(&path, &RocksOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Open { .. }), "{err:?}");
    assert!(snapshot(&path) == before);
}
