//! [`StorageError`]: everything the storage layer can fail with.

use std::path::PathBuf;

use vmqtt::broker::ShardId;

/// The result type of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// An error of the storage layer. Every error about a data directory names
/// it; none of them is raised after deleting anything.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data directory was written by a newer vmqtt: its schema version is
    /// higher than this build understands. Nothing was changed on disk.
    #[error(
        "data directory {path}: schema version {found} is newer than the {supported} this \
         build supports; upgrade vmqtt or point it at another directory (nothing was changed)"
    )]
    NewerSchema {
        /// The data directory.
        path: PathBuf,
        /// The version found in `meta/schema_version`.
        found: u32,
        /// The newest version this build reads and writes.
        supported: u32,
    },
    /// The data directory's schema version is older than any this build
    /// can migrate from. Nothing was changed on disk.
    #[error(
        "data directory {path}: schema version {found} is older than {oldest}, the oldest this \
         build can upgrade (nothing was changed)"
    )]
    OlderSchema {
        /// The data directory.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The oldest version this build migrates from.
        oldest: u32,
    },
    /// The path exists but is not a directory (or a path component is a
    /// file).
    #[error("data directory {path}: exists but is not a directory")]
    NotADirectory {
        /// The data directory.
        path: PathBuf,
    },
    /// The directory is not empty and is not a vmqtt data directory (no
    /// RocksDB `CURRENT` file, or no vmqtt `meta` column family or schema
    /// version). vmqtt refuses to create a database among unknown files.
    #[error("data directory {path}: not a vmqtt data directory: {reason} (nothing was changed)")]
    NotVmqttData {
        /// The data directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// RocksDB could not open the directory: damaged `CURRENT`/`MANIFEST`,
    /// a truncated or corrupt table file, permissions, a lock held by
    /// another process. Nothing was deleted.
    #[error("data directory {path}: cannot open: {message} (nothing was deleted)")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// RocksDB's or the OS's message.
        message: String,
    },
    /// A write-ahead log file (`*.log`) is damaged before its end: RocksDB
    /// could replay it only up to the damage, silently dropping every
    /// acknowledged write after it, so the directory is refused instead.
    /// (A record merely cut short at the end of the last log, what a crash
    /// mid-write leaves, is not this: it is dropped, as it was never
    /// acknowledged.) Nothing was changed.
    #[error(
        "data directory {path}: write-ahead log {file} is damaged at byte offset {offset} \
         ({reason}); replaying it would stop there and drop the {bytes_after} bytes after it \
         ({records_after} intact write batches){later} (RocksDB: {rocksdb}; nothing was changed)"
    )]
    CorruptWal {
        /// The data directory.
        path: PathBuf,
        /// The damaged log file.
        file: PathBuf,
        /// Byte offset of the first record in `file` that does not verify.
        offset: u64,
        /// What is wrong there.
        reason: String,
        /// Bytes from `offset` to the end of `file`.
        bytes_after: u64,
        /// Write batches after the damage that still verify.
        records_after: u64,
        /// What later log files would be dropped too (empty if none).
        later: String,
        /// RocksDB's own message.
        rocksdb: String,
    },
    /// The database lists vmqtt's shard column families but its
    /// `meta/schema_version`, written when the directory was created, is
    /// missing: the write-ahead log that still held it (and the newest
    /// writes) was emptied, truncated or removed. Nothing was changed.
    #[error(
        "data directory {path}: meta/schema_version is missing although the database has \
         vmqtt column families ({column_families}): its write-ahead log lost what it held \
         ({wal}); this is damage, not a foreign directory (nothing was changed)"
    )]
    LostWal {
        /// The data directory.
        path: PathBuf,
        /// The column families the MANIFEST lists.
        column_families: String,
        /// What the write-ahead log files look like (names and sizes).
        wal: String,
    },
    /// A file-system operation on the data directory failed.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A RocksDB operation on an open database failed (write, read,
    /// iteration, column family creation or drop).
    #[error("data directory {path}: {op}: {message}")]
    Rocks {
        /// The data directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// RocksDB's message.
        message: String,
    },
    /// A stored key or value does not decode: the directory is damaged or
    /// was written by incompatible software.
    #[error("{location}: corrupt record (key {key}): {reason}")]
    Corrupt {
        /// The data directory and column family.
        location: String,
        /// The key, in hex.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A write or load named a shard that has no column family. Call
    /// [`crate::recover`] first.
    #[error("shard {0} has no column family in this data directory")]
    UnknownShard(ShardId),
    /// [`crate::Storage::apply_reshard`] got a plan computed from other
    /// shards than those present (the data changed since it was planned).
    #[error("reshard plan is for shards {planned:?} but the data has shards {present:?}")]
    StalePlan {
        /// The shards the plan was computed from.
        planned: Vec<ShardId>,
        /// The shards present.
        present: Vec<ShardId>,
    },
    /// A value is too large for its length field (a string over 65,535
    /// bytes, a payload over 4 GiB, more than 65,535 list items); the batch
    /// was not written.
    #[error("cannot encode {0}: too large for its length field")]
    TooLarge(&'static str),
}

/// A decoding failure without context; [`StorageError::Corrupt`] adds the
/// location and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

pub(crate) type DecodeResult<T> = std::result::Result<T, DecodeError>;

impl DecodeError {
    /// Adds the location and key.
    pub(crate) fn at(self, location: impl Into<String>, key: &[u8]) -> StorageError {
        StorageError::Corrupt {
            location: location.into(),
            key: hex(key),
            reason: self.0,
        }
    }
}

/// Lower-case hex of `bytes`, at most 64 bytes of it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len().min(64) * 2 + 3);
    for b in bytes.iter().take(64) {
        let _ = write!(s, "{b:02x}");
    }
    if bytes.len() > 64 {
        s.push_str("...");
    }
    s
}
