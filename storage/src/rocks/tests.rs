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

/// `write_buffer_size` of every column family, from the newest `OPTIONS-*`
/// file RocksDB wrote into the directory (it writes one at every open and
/// column family creation).
fn options_file_write_buffer_sizes(p: &Path) -> BTreeMap<String, usize> {
    let newest = ls(p)
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix("OPTIONS-")?.parse::<u64>().ok()?, n)))
        .max()
        .unwrap()
        .1;
    let text = std::fs::read_to_string(p.join(newest)).unwrap();
    let mut out = BTreeMap::new();
    let mut cf = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[CFOptions \"") {
            cf = name.strip_suffix("\"]").map(str::to_owned);
        } else if line.starts_with('[') {
            cf = None;
        } else if let (Some(cf), Some(v)) = (&cf, line.strip_prefix("write_buffer_size=")) {
            out.insert(cf.clone(), v.parse().unwrap());
        }
    }
    out
}

fn block_cache_capacity(s: &RocksStorage, shard: u16) -> Option<u64> {
    let cf = s.cf(&shard_cf(ShardId::new(shard))).unwrap();
    s.inner
        .db
        .property_int_value_cf(&cf, "rocksdb.block-cache-capacity")
        .unwrap()
}

#[test]
fn per_shard_tuning_is_applied_when_shards_are_created_and_opened() {
    let dir = tmp();
    let mut options = RocksOptions {
        write_buffer_size: 8 << 20,
        block_cache_size: 16 << 20,
        ..RocksOptions::default()
    };
    options.shard_overrides.insert(
        1,
        CfTuning {
            write_buffer_size: Some(2 << 20),
            block_cache_size: Some(0),
        },
    );
    options.shard_overrides.insert(
        2,
        CfTuning {
            write_buffer_size: None,
            block_cache_size: Some(4 << 20),
        },
    );
    // An override for a shard that does not exist is ignored.
    options.shard_overrides.insert(7, CfTuning::default());
    assert_eq!(options.write_buffer_size_for(ShardId::new(1)), 2 << 20);
    assert_eq!(options.write_buffer_size_for(ShardId::new(2)), 8 << 20);
    assert_eq!(options.block_cache_size_for(ShardId::new(2)), 4 << 20);
    assert_eq!(options.block_cache_size_for(ShardId::new(7)), 16 << 20);

    let check = |s: &RocksStorage, o: &RocksOptions| {
        for n in 0..3u16 {
            let shard = ShardId::new(n);
            let want = o.block_cache_size_for(shard) as u64;
            let got = block_cache_capacity(s, n);
            if want == 0 {
                // No block cache: the property has nothing to report.
                assert_eq!(got, None, "shard {n}");
            } else {
                assert_eq!(got, Some(want), "shard {n}");
            }
        }
        let sizes = options_file_write_buffer_sizes(s.path());
        for n in 0..3u16 {
            let shard = ShardId::new(n);
            assert_eq!(
                sizes.get(&shard_cf(shard)),
                Some(&o.write_buffer_size_for(shard)),
                "shard {n} in {sizes:?}"
            );
        }
    };

    // Created by the first `recover` (apply_reshard creates the families).
    let mut s = RocksStorage::open(dir.path(), &options).unwrap();
    recover(&mut s, 3).unwrap();
    check(&s, &options);
    drop(s);

    // Opened again with other values: the new ones apply.
    options.write_buffer_size = 4 << 20;
    options.shard_overrides.insert(
        0,
        CfTuning {
            write_buffer_size: Some(1 << 20),
            block_cache_size: Some(1 << 20),
        },
    );
    options.shard_overrides.remove(&1);
    let s = RocksStorage::open(dir.path(), &options).unwrap();
    check(&s, &options);
    assert_eq!(block_cache_capacity(&s, 1), Some(16 << 20));
    assert_eq!(
        options_file_write_buffer_sizes(s.path()).get("shard-0"),
        Some(&(1 << 20))
    );
}
