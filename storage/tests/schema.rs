//! Schema version checks and damaged directories: a clear error naming
//! the directory, no panic, nothing deleted (and, where the error comes
//! from the checks before opening for writing, not a byte changed).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rocksdb::{DBWithThreadMode, MultiThreaded, Options};
use vmqtt_storage::{recover, RocksOptions, RocksStorage, Storage, StorageError, SCHEMA_VERSION};

type Db = DBWithThreadMode<MultiThreaded>;

/// A data directory with some of everything; `flush` moves it from the WAL
/// into table files.
fn base(dir: &Path, flush: bool) -> PathBuf {
    let path = dir.join("base");
    let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    recover(&mut s, 2).unwrap();
    populate(&mut s, 2, 200, 20, 10);
    if flush {
        s.flush().unwrap();
    }
    path
}

fn set_schema_version(path: &Path, v: u32) {
    let cfs = Db::list_cf(&Options::default(), path).unwrap();
    let db = Db::open_cf(&Options::default(), path, &cfs).unwrap();
    let meta = db.cf_handle("meta").unwrap();
    db.put_cf(&meta, b"schema_version", v.to_be_bytes())
        .unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_the_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for flush in [false, true] {
        let path = base(dir.path(), flush);
        set_schema_version(&path, SCHEMA_VERSION + 1);
        let before = snapshot(&path);
        let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
        match &err {
            StorageError::NewerSchema {
                path: p,
                found,
                supported,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("newer"),
            "{msg}"
        );
        assert!(snapshot(&path) == before, "the directory changed");
        // Twice: still nothing.
        assert!(RocksStorage::open(&path, &RocksOptions::default()).is_err());
        assert!(snapshot(&path) == before, "the directory changed");
        std::fs::remove_dir_all(&path).unwrap();
    }
}

#[test]
fn schema_version_zero_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = base(dir.path(), false);
    set_schema_version(&path, 0);
    let before = snapshot(&path);
    let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
    assert!(
        matches!(err, StorageError::OlderSchema { found: 0, .. }),
        "{err}"
    );
    assert!(snapshot(&path) == before);
}

enum Expect {
    /// Refused by the checks before opening for writing: not a byte changed.
    Untouched,
    /// Refused at load: every table file still there, unchanged.
    Kept,
}

/// Corrupts a copy of `base` with `damage`, then opens and loads it:
/// expects an error naming the directory, and the files kept.
fn damaged(name: &str, base: &Path, damage: impl FnOnce(&Path), expect: Expect) -> String {
    let copy = base.with_file_name(name);
    copy_dir(base, &copy);
    damage(&copy);
    let before = snapshot(&copy);
    let result = RocksStorage::open(&copy, &RocksOptions::default()).and_then(|mut s| {
        recover(&mut s, 2)?;
        Ok(())
    });
    let err = result.expect_err(name);
    let msg = err.to_string();
    assert!(
        msg.contains(&copy.display().to_string()),
        "{name}: error does not name the directory: {msg}"
    );
    match expect {
        Expect::Untouched => assert!(snapshot(&copy) == before, "{name}: directory changed"),
        Expect::Kept => {
            // Opened for writing before the damage showed: RocksDB's own
            // housekeeping may have replaced its MANIFEST and removed WAL
            // files already flushed into tables; every table file is kept,
            // byte for byte.
            let after = snapshot(&copy);
            for (f, bytes) in before
                .iter()
                .filter(|(f, _)| f.extension().is_some_and(|e| e == "sst"))
            {
                assert_eq!(
                    after.get(f),
                    Some(bytes),
                    "{name}: {} deleted or changed",
                    f.display()
                );
            }
        }
    }
    eprintln!("{name}: {msg}");
    msg
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| pred(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_directories_give_clear_errors_and_keep_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path(), true);
    assert!(!files_with(&base, |n| n.ends_with(".sst")).is_empty());

    damaged(
        "garbage-current",
        &base,
        |p| std::fs::write(p.join("CURRENT"), b"\x00\x01garbage").unwrap(),
        Expect::Untouched,
    );
    damaged(
        "current-names-missing-manifest",
        &base,
        |p| std::fs::write(p.join("CURRENT"), b"MANIFEST-999999\n").unwrap(),
        Expect::Untouched,
    );
    damaged(
        "garbage-manifest",
        &base,
        |p| {
            for m in files_with(p, |n| n.starts_with("MANIFEST-")) {
                let len = std::fs::metadata(&m).unwrap().len() as usize;
                std::fs::write(&m, vec![0xa5; len]).unwrap();
            }
        },
        Expect::Untouched,
    );
    damaged(
        "truncated-sst",
        &base,
        |p| {
            for f in files_with(p, |n| n.ends_with(".sst")) {
                let len = std::fs::metadata(&f).unwrap().len();
                let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                file.set_len(len / 2).unwrap();
            }
        },
        Expect::Untouched,
    );
    damaged(
        "missing-current",
        &base,
        |p| std::fs::remove_file(p.join("CURRENT")).unwrap(),
        Expect::Untouched,
    );
    damaged(
        "current-is-a-directory",
        &base,
        |p| {
            std::fs::remove_file(p.join("CURRENT")).unwrap();
            std::fs::create_dir(p.join("CURRENT")).unwrap();
        },
        Expect::Untouched,
    );
    damaged(
        "flipped-bytes-in-sst",
        &base,
        |p| {
            for f in files_with(p, |n| n.ends_with(".sst")) {
                let mut b = std::fs::read(&f).unwrap();
                // The first data block: past the start, before the index.
                for x in &mut b[8..40] {
                    *x ^= 0xff;
                }
                std::fs::write(&f, b).unwrap();
            }
        },
        Expect::Kept,
    );
}

#[test]
fn a_corrupt_block_deep_in_a_table_is_reported_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    {
        let mut s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        recover(&mut s, 1).unwrap();
        populate(&mut s, 1, 5000, 50, 10);
        s.flush().unwrap();
    }
    let largest = files_with(&path, |n| n.ends_with(".sst"))
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&largest).unwrap().len() as usize;
    assert!(len > 64 << 10, "several blocks: {len}");
    damaged(
        "deep-corrupt-block",
        &path,
        |p| {
            let f = p.join(largest.file_name().unwrap());
            let mut b = std::fs::read(&f).unwrap();
            for x in &mut b[len / 2..len / 2 + 64] {
                *x ^= 0x5a;
            }
            std::fs::write(f, b).unwrap();
        },
        Expect::Kept,
    );
}

#[test]
fn a_file_where_the_directory_should_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = RocksStorage::open(&file, &RocksOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::NotADirectory { .. }), "{err}");
    assert!(err.to_string().contains(&file.display().to_string()));
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    // And as a component of the path.
    let below = file.join("shard");
    let err = RocksStorage::open(&below, &RocksOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::NotADirectory { .. }), "{err}");
    assert!(err.to_string().contains(&below.display().to_string()));
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = base(dir.path(), false);
    let _first = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::Open { .. }), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("lock"),
        "{msg}"
    );
}

#[test]
fn reopening_keeps_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = base(dir.path(), false);
    for _ in 0..3 {
        let s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
        assert_eq!(s.layout().unwrap(), Some(2));
    }
}
