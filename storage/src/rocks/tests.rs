use super::*;
use crate::{recover, WriteBatch};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_new_directory_gets_meta_and_schema_version() {
    let dir = tmp();
    let path = dir.path().join("a/b/data");
    let s = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    assert_eq!(s.path(), path);
    assert_eq!(
        s.get_meta(SCHEMA_VERSION_KEY).unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert_eq!(s.layout().unwrap(), None);
    assert!(s.shards().unwrap().is_empty());
    drop(s);
    let cfs = Db::list_cf(&Options::default(), &path).unwrap();
    assert!(cfs.contains(&META_CF.to_owned()));
    // An empty existing directory is fine too.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    RocksStorage::open(&empty, &RocksOptions::default()).unwrap();
}

#[test]
fn writes_to_an_unknown_shard_are_refused() {
    let dir = tmp();
    let mut s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let err = s
        .write(ShardId::new(0), WriteBatch::new(), false)
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownShard(_)), "{err}");
    recover(&mut s, 2).unwrap();
    s.write(ShardId::new(1), WriteBatch::new(), false).unwrap();
    assert!(s.write(ShardId::new(2), WriteBatch::new(), false).is_err());
}

#[test]
fn an_interrupted_creation_is_completed() {
    let dir = tmp();
    {
        // What a crash between creating the database and writing the
        // schema version leaves.
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        Db::open_cf_descriptors(
            &opts,
            dir.path(),
            [ColumnFamilyDescriptor::new(META_CF, Options::default())],
        )
        .unwrap();
    }
    let s = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    assert_eq!(
        s.get_meta(SCHEMA_VERSION_KEY).unwrap(),
        Some(SCHEMA_VERSION)
    );
}

#[test]
fn a_foreign_rocksdb_database_is_refused() {
    let dir = tmp();
    {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = Db::open(&opts, dir.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let err = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::NotVmqttData { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn unknown_files_without_current_are_refused() {
    let dir = tmp();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::NotVmqttData { .. }), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "nothing created next to them");
}

#[test]
fn the_probe_writes_no_file() {
    let dir = tmp();
    RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap();
    let before: Vec<_> = ls(dir.path());
    assert!(matches!(
        inspect(dir.path()).unwrap(),
        DirState::Existing(_)
    ));
    assert_eq!(ls(dir.path()), before);
}

fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn handles_and_states_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RocksStorage>();
    send_sync::<crate::MemStorage>();
    send_sync::<crate::ShardState>();
    send_sync::<WriteBatch>();
    // Object safety: a storage thread may hold `Box<dyn Storage>`.
    let dir = tmp();
    let boxed: Box<dyn Storage> =
        Box::new(RocksStorage::open(dir.path(), &RocksOptions::default()).unwrap());
    std::thread::spawn(move || boxed.shards().unwrap())
        .join()
        .unwrap();
}
