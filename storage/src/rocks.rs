//! [`RocksStorage`]: one RocksDB database per node, a column family per
//! shard (`shard-{n}`) and a `meta` column family (schema version, shard
//! layout).
//!
//! Opening checks before it changes anything: the path, then RocksDB's
//! `CURRENT`/`MANIFEST` (listing the column families), then the schema
//! version through a read-only open that writes no file (not even RocksDB's
//! `LOG`). Only a directory that passes is opened for writing; a newer,
//! damaged or foreign one is refused with an error naming it, untouched.
//!
//! The write-ahead log is recovered with RocksDB's
//! `TolerateCorruptedTailRecords`: a record cut short at the end of the log
//! (a crash mid-write: that write never returned, so nothing acknowledged
//! is in it) is dropped, and anything else that does not verify refuses the
//! open ([`StorageError::CorruptWal`], naming the file and offset). RocksDB's
//! default, point-in-time recovery, would instead stop replaying at the
//! damage and silently drop every acknowledged write after it; that is
//! done only by the operator's explicit [`repair_wal`], after a backup.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIteratorWithThreadMode, DBRecoveryMode, DBWithThreadMode, InfoLogger, LogLevel,
    MultiThreaded, Options, ReadOptions, WriteOptions,
};
use vmqtt::broker::ShardId;

use crate::codec::{decode_meta_u32, encode_meta_u32, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};
use crate::error::{Result, StorageError};
use crate::keys::{
    parse_shard_cf, shard_cf, END_KEY, FIRST_KEY, META_CF, SCHEMA_VERSION_KEY, SHARDS_KEY,
};
use crate::raw::{decode_entry, encode_ops, RawSink};
use crate::record::{Record, WriteBatch};
use crate::state::ReshardPlan;
use crate::{RecordIter, Storage};

type Db = DBWithThreadMode<MultiThreaded>;

/// RocksDB tuning. The defaults suit a broker node; every field is a
/// plain value so the configuration crate can fill it.
///
/// The memtable and block cache sizes apply to each shard column family
/// (each has its own), with per-shard exceptions in
/// [`shard_overrides`](Self::shard_overrides); read them with
/// [`write_buffer_size_for`](Self::write_buffer_size_for) and
/// [`block_cache_size_for`](Self::block_cache_size_for). They are applied
/// whenever a shard column family is opened or created, so a change takes
/// effect at the next start and nothing about them is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksOptions {
    /// Table files kept open (RocksDB `max_open_files`); `-1` keeps all
    /// open. Bounded by default so the broker's connections keep the file
    /// descriptors.
    pub max_open_files: i32,
    /// Memtable size per shard column family, in bytes (RocksDB keeps up
    /// to two per column family: the one filling and one being flushed).
    pub write_buffer_size: usize,
    /// LRU block cache per shard column family, in bytes; `0` runs without
    /// a block cache (every read of a table block goes to the file system).
    pub block_cache_size: usize,
    /// Per-shard exceptions to `write_buffer_size` and `block_cache_size`,
    /// by shard index (as in `[shards.N]`). An entry for a shard the node
    /// does not run is ignored.
    pub shard_overrides: BTreeMap<usize, CfTuning>,
    /// Background flush and compaction threads for the whole database.
    pub max_background_jobs: i32,
    /// LZ4-compress table files.
    pub compression: bool,
}

/// The tuning of one shard column family that differs from the
/// [`RocksOptions`] defaults; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CfTuning {
    /// Memtable size in bytes.
    pub write_buffer_size: Option<usize>,
    /// Block cache size in bytes (`0`: none).
    pub block_cache_size: Option<usize>,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            max_open_files: 1024,
            write_buffer_size: 64 << 20,
            block_cache_size: 32 << 20,
            shard_overrides: BTreeMap::new(),
            max_background_jobs: 2,
            compression: true,
        }
    }
}

impl RocksOptions {
    /// The memtable size of `shard`'s column family: its override, else
    /// [`write_buffer_size`](Self::write_buffer_size).
    pub fn write_buffer_size_for(&self, shard: ShardId) -> usize {
        self.shard_overrides
            .get(&shard.get())
            .and_then(|t| t.write_buffer_size)
            .unwrap_or(self.write_buffer_size)
    }

    /// The block cache size of `shard`'s column family: its override, else
    /// [`block_cache_size`](Self::block_cache_size).
    pub fn block_cache_size_for(&self, shard: ShardId) -> usize {
        self.shard_overrides
            .get(&shard.get())
            .and_then(|t| t.block_cache_size)
            .unwrap_or(self.block_cache_size)
    }
}

struct Inner {
    db: Db,
    path: PathBuf,
    /// For the options of shard column families created later.
    options: RocksOptions,
    /// The shard column families, kept in step with the database under
    /// this lock (creates and drops happen only in `apply_reshard`).
    shards: Mutex<BTreeSet<ShardId>>,
}

/// The RocksDB [`Storage`]: one database per node, one column family per
/// shard. Clones are handles to the same open database (`Send + Sync`), so
/// each shard's storage thread can own one; writes to different shards
/// proceed in parallel and RocksDB groups concurrent commits.
#[derive(Clone)]
pub struct RocksStorage {
    inner: Arc<Inner>,
}

impl fmt::Debug for RocksStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStorage")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn open_err(path: &Path, e: impl fmt::Display) -> StorageError {
    StorageError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The error for RocksDB refusing to open `path`: if it reports corruption
/// and a write-ahead log is damaged, [`StorageError::CorruptWal`] naming
/// the file and offset (RocksDB's message names neither); otherwise
/// [`StorageError::Open`].
fn open_failed(path: &Path, e: impl fmt::Display) -> StorageError {
    let message = e.to_string();
    if message.contains("Corruption") {
        if let Ok(scans) = crate::wal::scan_dir(path) {
            if let Some(err) = corrupt_wal(path, &scans, &message) {
                return err;
            }
        }
    }
    open_err(path, message)
}

/// [`StorageError::CorruptWal`] for the first damaged log in `scans`.
fn corrupt_wal(path: &Path, scans: &[crate::wal::WalScan], rocksdb: &str) -> Option<StorageError> {
    let i = scans.iter().position(|s| s.damage.is_some())?;
    let d = scans[i].damage.as_ref()?;
    let later: Vec<String> = scans[i + 1..]
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| format!("{} ({} bytes)", file_name(&s.file), s.len))
        .collect();
    Some(StorageError::CorruptWal {
        path: path.to_path_buf(),
        file: scans[i].file.clone(),
        offset: d.offset,
        reason: d.reason.to_owned(),
        bytes_after: d.bytes_after,
        records_after: d.records_after,
        later: if later.is_empty() {
            String::new()
        } else {
            format!(", and the later log files {}", later.join(", "))
        },
        rocksdb: rocksdb.to_owned(),
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The write-ahead log files of `path` with their sizes, for messages.
fn describe_wal(path: &Path) -> String {
    match crate::wal::wal_files(path) {
        Ok(files) if files.is_empty() => "no *.log file is left".to_owned(),
        Ok(files) => files
            .iter()
            .map(|f| match std::fs::metadata(f).map(|m| m.len()) {
                Ok(0) => format!("{} is empty (0 bytes)", file_name(f)),
                Ok(n) => format!("{} has {n} bytes", file_name(f)),
                Err(e) => format!("{}: {e}", file_name(f)),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("cannot list the log files: {e}"),
    }
}

fn db_options(o: &RocksOptions) -> Options {
    let mut opts = Options::default();
    opts.set_max_open_files(o.max_open_files);
    opts.set_max_background_jobs(o.max_background_jobs);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(16 << 20);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts
}

/// The options of `shard`'s column family, with its own block cache.
fn cf_options(o: &RocksOptions, shard: ShardId) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(o.write_buffer_size_for(shard));
    let mut table = BlockBasedOptions::default();
    match o.block_cache_size_for(shard) {
        0 => table.disable_cache(),
        // The table options hold a reference to the cache: it lives as
        // long as the column family does.
        n => table.set_block_cache(&Cache::new_lru_cache(n)),
    }
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(if o.compression {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::None
    });
    opts
}

/// Options for the read-only check: RocksDB's diagnostics go to a callback
/// that drops them instead of a `LOG` file in the directory, and every
/// table file is opened (and its size checked) at open.
fn probe_options() -> Options {
    let mut opts = Options::default();
    opts.set_info_logger(InfoLogger::new_callback_logger(LogLevel::Fatal, |_, _| {}));
    opts.set_max_open_files(-1);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts
}

/// What the checks found in an existing directory.
struct Existing {
    cfs: Vec<String>,
    version: u32,
}

enum DirState {
    Fresh,
    Existing(Existing),
    /// `meta` exists but no schema version and no shard: the creation of a
    /// new directory was interrupted.
    Unfinished(Vec<String>),
}

/// Looks at `path` without changing anything.
fn inspect(path: &Path) -> Result<DirState> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Fresh),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            // A component of the path is a file.
            return Err(StorageError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(m) if !m.is_dir() => {
            return Err(StorageError::NotADirectory {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(path).map_err(io)?;
    if entries.next().transpose().map_err(io)?.is_none() {
        return Ok(DirState::Fresh);
    }
    let current = path.join("CURRENT");
    if std::fs::symlink_metadata(&current).is_err() {
        return Err(StorageError::NotVmqttData {
            path: path.to_path_buf(),
            reason: "the directory has files but no RocksDB CURRENT file (damaged, or not a \
                     data directory)"
                .into(),
        });
    }
    let probe = probe_options();
    let cfs = Db::list_cf(&probe, path).map_err(|e| open_err(path, e))?;
    // Opened before judging the column families, so that a damaged MANIFEST
    // is reported as damage rather than as a foreign database.
    let db =
        Db::open_cf_for_read_only(&probe, path, &cfs, false).map_err(|e| open_failed(path, e))?;
    if !cfs.iter().any(|c| c == META_CF) {
        return Err(StorageError::NotVmqttData {
            path: path.to_path_buf(),
            reason: "a RocksDB database without the vmqtt \"meta\" column family (not a vmqtt \
                     data directory, or its MANIFEST is damaged)"
                .into(),
        });
    }
    let meta = db
        .cf_handle(META_CF)
        .ok_or_else(|| open_err(path, "meta column family missing"))?;
    let raw = db
        .get_cf(&meta, SCHEMA_VERSION_KEY)
        .map_err(|e| open_err(path, e))?;
    drop(meta);
    drop(db);
    let Some(raw) = raw else {
        if cfs.iter().all(|c| c == META_CF || c == "default") {
            return Ok(DirState::Unfinished(cfs));
        }
        if cfs.iter().any(|c| parse_shard_cf(c).is_some()) {
            // vmqtt's own layout, minus what only the log held.
            return Err(StorageError::LostWal {
                path: path.to_path_buf(),
                column_families: cfs.join(", "),
                wal: describe_wal(path),
            });
        }
        return Err(StorageError::NotVmqttData {
            path: path.to_path_buf(),
            reason: "no meta/schema_version".into(),
        });
    };
    let version = decode_meta_u32(&raw)
        .map_err(|e| e.at(format!("{}/{META_CF}", path.display()), SCHEMA_VERSION_KEY))?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < OLDEST_SCHEMA_VERSION {
        return Err(StorageError::OlderSchema {
            path: path.to_path_buf(),
            found: version,
            oldest: OLDEST_SCHEMA_VERSION,
        });
    }
    Ok(DirState::Existing(Existing { cfs, version }))
}

impl RocksStorage {
    /// Opens the data directory at `path`, creating it if it does not
    /// exist or is empty.
    ///
    /// An existing directory is checked before anything is written to it:
    /// - not a directory: [`StorageError::NotADirectory`];
    /// - files but no RocksDB database, or a database that is not vmqtt's:
    ///   [`StorageError::NotVmqttData`];
    /// - damaged (`CURRENT`, `MANIFEST`, a table file): [`StorageError::Open`];
    /// - a write-ahead log damaged before its end:
    ///   [`StorageError::CorruptWal`] (a record cut short at the end, what
    ///   a crash mid-write leaves, is dropped instead);
    /// - shard column families but no schema version (the log that held it
    ///   emptied or removed): [`StorageError::LostWal`];
    /// - schema newer than [`SCHEMA_VERSION`]: [`StorageError::NewerSchema`].
    ///
    /// In all of these cases nothing in the directory is changed or
    /// deleted. An older schema (version 1) is migrated to the current one
    /// in one atomic, synced write.
    pub fn open(path: impl AsRef<Path>, options: &RocksOptions) -> Result<Self> {
        let path = path.as_ref();
        let state = inspect(path)?;
        let mut opts = db_options(options);
        let (db, fresh, version) = match state {
            DirState::Fresh => {
                std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                opts.create_if_missing(true);
                opts.create_missing_column_families(true);
                let cfs = [ColumnFamilyDescriptor::new(META_CF, Options::default())];
                let db =
                    Db::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_err(path, e))?;
                (db, true, SCHEMA_VERSION)
            }
            DirState::Unfinished(cfs) => {
                let db = open_existing(&opts, options, path, &cfs)?;
                (db, true, SCHEMA_VERSION)
            }
            DirState::Existing(e) => {
                let db = open_existing(&opts, options, path, &e.cfs)?;
                (db, false, e.version)
            }
        };
        let shards = list_shards(path, &opts)?;
        let storage = Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                options: options.clone(),
                shards: Mutex::new(shards),
            }),
        };
        if fresh {
            storage.put_meta(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
        } else if version < SCHEMA_VERSION {
            crate::migrate::migrate(&storage.inner.db, path, version)?;
        }
        Ok(storage)
    }

    /// The schema version recorded in the directory (after `open`, always
    /// [`SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<u32> {
        self.get_meta(SCHEMA_VERSION_KEY)?
            .ok_or_else(|| self.err("read meta", "no schema version"))
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Flushes every memtable to table files (the WAL is then no longer
    /// needed for recovery); for tests and shutdown.
    pub fn flush(&self) -> Result<()> {
        let db = &self.inner.db;
        for name in std::iter::once(META_CF.to_owned())
            .chain(self.lock_shards().iter().map(|s| shard_cf(*s)))
        {
            if let Some(cf) = db.cf_handle(&name) {
                db.flush_cf(&cf).map_err(|e| self.err("flush", e))?;
            }
        }
        Ok(())
    }

    fn err(&self, op: &'static str, e: impl fmt::Display) -> StorageError {
        StorageError::Rocks {
            path: self.inner.path.clone(),
            op,
            message: e.to_string(),
        }
    }

    fn lock_shards(&self) -> MutexGuard<'_, BTreeSet<ShardId>> {
        // The set is updated whole after each RocksDB call succeeds.
        self.inner.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cf(&self, name: &str) -> Option<Arc<BoundColumnFamily<'_>>> {
        self.inner.db.cf_handle(name)
    }

    fn put_meta(&self, key: &[u8], value: u32) -> Result<()> {
        let meta = self
            .cf(META_CF)
            .ok_or_else(|| self.err("write meta", "meta column family missing"))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.inner
            .db
            .put_cf_opt(&meta, key, encode_meta_u32(value), &wo)
            .map_err(|e| self.err("write meta", e))
    }

    pub(crate) fn get_meta(&self, key: &[u8]) -> Result<Option<u32>> {
        let meta = self
            .cf(META_CF)
            .ok_or_else(|| self.err("read meta", "meta column family missing"))?;
        let raw = self
            .inner
            .db
            .get_pinned_cf(&meta, key)
            .map_err(|e| self.err("read meta", e))?;
        raw.map(|v| {
            decode_meta_u32(&v)
                .map_err(|e| e.at(format!("{}/{META_CF}", self.inner.path.display()), key))
        })
        .transpose()
    }
}

fn open_existing(
    opts: &Options,
    options: &RocksOptions,
    path: &Path,
    cfs: &[String],
) -> Result<Db> {
    let descriptors = cfs.iter().map(|name| {
        let o = match parse_shard_cf(name) {
            Some(shard) => cf_options(options, shard),
            None => Options::default(),
        };
        ColumnFamilyDescriptor::new(name, o)
    });
    Db::open_cf_descriptors(opts, path, descriptors).map_err(|e| open_failed(path, e))
}

fn list_shards(path: &Path, opts: &Options) -> Result<BTreeSet<ShardId>> {
    let cfs = Db::list_cf(opts, path).map_err(|e| open_err(path, e))?;
    Ok(cfs.iter().filter_map(|c| parse_shard_cf(c)).collect())
}

/// Encodes into a RocksDB batch for one column family.
struct CfSink<'a, 'b> {
    wb: &'a mut rocksdb::WriteBatch,
    cf: &'a Arc<BoundColumnFamily<'b>>,
}

impl RawSink for CfSink<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.cf, key, value);
    }
    fn delete(&mut self, key: &[u8]) {
        self.wb.delete_cf(self.cf, key);
    }
    fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        self.wb.delete_range_cf(self.cf, start, end);
    }
}

/// The records of one column family, decoded as the iterator moves.
struct Scan<'a> {
    it: DBRawIteratorWithThreadMode<'a, Db>,
    location: String,
    path: PathBuf,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.done {
            return None;
        }
        let (Some(k), Some(v)) = (self.it.key(), self.it.value()) else {
            self.done = true;
            return match self.it.status() {
                Ok(()) => None,
                Err(e) => Some(Err(StorageError::Rocks {
                    path: self.path.clone(),
                    op: "read",
                    message: format!("{}: {e}", self.location),
                })),
            };
        };
        let location = || self.location.clone();
        let rec = decode_entry(&location, k, Bytes::copy_from_slice(v));
        if rec.is_err() {
            self.done = true;
        } else {
            self.it.next();
        }
        Some(rec)
    }
}

impl Storage for RocksStorage {
    fn shards(&self) -> Result<Vec<ShardId>> {
        Ok(self.lock_shards().iter().copied().collect())
    }

    fn layout(&self) -> Result<Option<usize>> {
        Ok(self.get_meta(SHARDS_KEY)?.map(|n| n as usize))
    }

    fn write(&mut self, shard: ShardId, batch: WriteBatch, sync: bool) -> Result<()> {
        let cf = self
            .cf(&shard_cf(shard))
            .ok_or(StorageError::UnknownShard(shard))?;
        let mut wb = rocksdb::WriteBatch::default();
        encode_ops(
            batch.ops(),
            &mut CfSink {
                wb: &mut wb,
                cf: &cf,
            },
        )?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.inner
            .db
            .write_opt(wb, &wo)
            .map_err(|e| self.err("write", e))
    }

    fn sync(&mut self) -> Result<()> {
        self.inner
            .db
            .flush_wal(true)
            .map_err(|e| self.err("sync WAL", e))
    }

    fn scan_shard(&self, shard: ShardId) -> Result<RecordIter<'_>> {
        let name = shard_cf(shard);
        let cf = self.cf(&name).ok_or(StorageError::UnknownShard(shard))?;
        let mut ro = ReadOptions::default();
        // A recovery scan reads everything once: keep it out of the cache.
        ro.fill_cache(false);
        ro.set_verify_checksums(true);
        let mut it = self.inner.db.raw_iterator_cf_opt(&cf, ro);
        it.seek_to_first();
        Ok(Box::new(Scan {
            it,
            location: format!("{}/{name}", self.inner.path.display()),
            path: self.inner.path.clone(),
            done: false,
        }))
    }

    fn apply_reshard(&mut self, plan: &ReshardPlan) -> Result<()> {
        let mut shards = self.lock_shards();
        let present: Vec<ShardId> = shards.iter().copied().collect();
        if present != plan.old_shards {
            return Err(StorageError::StalePlan {
                planned: plan.old_shards.clone(),
                present,
            });
        }
        let db = &self.inner.db;
        for st in &plan.states {
            if !shards.contains(&st.shard) {
                db.create_cf(
                    shard_cf(st.shard),
                    &cf_options(&self.inner.options, st.shard),
                )
                .map_err(|e| self.err("create column family", e))?;
                shards.insert(st.shard);
            }
        }
        let mut wb = rocksdb::WriteBatch::default();
        for s in present {
            let cf = self.cf(&shard_cf(s)).ok_or(StorageError::UnknownShard(s))?;
            wb.delete_range_cf(&cf, FIRST_KEY, END_KEY);
        }
        for st in &plan.states {
            let cf = self
                .cf(&shard_cf(st.shard))
                .ok_or(StorageError::UnknownShard(st.shard))?;
            encode_ops(
                st.to_batch().ops(),
                &mut CfSink {
                    wb: &mut wb,
                    cf: &cf,
                },
            )?;
        }
        let meta = self
            .cf(META_CF)
            .ok_or_else(|| self.err("reshard", "meta column family missing"))?;
        let n =
            u32::try_from(plan.states.len()).map_err(|_| StorageError::TooLarge("shard count"))?;
        wb.put_cf(&meta, SHARDS_KEY, encode_meta_u32(n));
        drop(meta);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(wb, &wo).map_err(|e| self.err("reshard", e))?;
        for &s in &plan.drop {
            db.drop_cf(&shard_cf(s))
                .map_err(|e| self.err("drop column family", e))?;
            shards.remove(&s);
        }
        Ok(())
    }
}

mod repair;
pub use repair::{check, repair_wal, Census, WalRepair};

#[cfg(test)]
mod tests;
