//! Schema upgrades, run by [`crate::RocksStorage::open`] on a directory
//! whose schema version is older than [`SCHEMA_VERSION`]. Every step a
//! directory needs is done in one atomic, synced RocksDB write with the
//! new `meta/schema_version`: a crash leaves the old version or the new
//! one, never a mix (which could not be told apart).
//!
//! Version 1 → 2: version 1 did not store the will delay interval (wills
//! were published at once after a restart). Version 2 stores it as a fixed
//! `u32` right after the will's flags byte, plus a flag bit saying whether
//! the property was present. The migration rewrites every session value of
//! every shard (decoded with the version 1 layout, encoded with version 2,
//! with no will delay).
//!
//! Version 2 → 3: a retained value starts with its version (what replicas
//! in a cluster compare, see `vmqtt::broker::RetainVersion`). The
//! migration prefixes every retained value with version 0, older than any
//! update made since.

use std::path::Path;

use bytes::Bytes;
use rocksdb::{DBWithThreadMode, MultiThreaded, WriteOptions};

use crate::codec::{
    decode_session_v1, encode_meta_u32, encode_session, RETAIN_VERSION_LEN, SCHEMA_VERSION,
};
use crate::error::{Result, StorageError};
use crate::keys::{parse_shard_cf, tag, META_CF, SCHEMA_VERSION_KEY};

type Db = DBWithThreadMode<MultiThreaded>;

fn rocks_err(path: &Path, op: &'static str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Rocks {
        path: path.to_path_buf(),
        op,
        message: e.to_string(),
    }
}

/// Upgrades the open database at `path` from schema `from` to
/// [`SCHEMA_VERSION`].
pub(crate) fn migrate(db: &Db, path: &Path, from: u32) -> Result<()> {
    if !(1..=2).contains(&from) || SCHEMA_VERSION != 3 {
        return Err(StorageError::OlderSchema {
            path: path.to_path_buf(),
            found: from,
            oldest: crate::codec::OLDEST_SCHEMA_VERSION,
        });
    }
    let cfs = Db::list_cf(&rocksdb::Options::default(), path)
        .map_err(|e| rocks_err(path, "migrate: list column families", e))?;
    let mut wb = rocksdb::WriteBatch::default();
    let mut value = Vec::with_capacity(256);
    for name in cfs.iter().filter(|n| parse_shard_cf(n).is_some()) {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| rocks_err(path, "migrate", format!("column family {name} missing")))?;
        let mut it = db.raw_iterator_cf(&cf);
        if from == 1 {
            it.seek([tag::SESSION]);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k.first() != Some(&tag::SESSION) {
                    break;
                }
                let session = decode_session_v1(Bytes::copy_from_slice(v))
                    .map_err(|e| e.at(format!("{}/{name} (schema 1)", path.display()), k))?;
                value.clear();
                encode_session(&session, &mut value)?;
                wb.put_cf(&cf, k, &value);
                it.next();
            }
            it.status()
                .map_err(|e| rocks_err(path, "migrate: read sessions", e))?;
        }
        it.seek([tag::RETAINED]);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.first() != Some(&tag::RETAINED) {
                break;
            }
            value.clear();
            value.resize(RETAIN_VERSION_LEN, 0);
            value.extend_from_slice(v);
            wb.put_cf(&cf, k, &value);
            it.next();
        }
        it.status()
            .map_err(|e| rocks_err(path, "migrate: read retained messages", e))?;
    }
    let meta = db
        .cf_handle(META_CF)
        .ok_or_else(|| rocks_err(path, "migrate", "meta column family missing"))?;
    wb.put_cf(&meta, SCHEMA_VERSION_KEY, encode_meta_u32(SCHEMA_VERSION));
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo)
        .map_err(|e| rocks_err(path, "migrate: write", e))
}

#[cfg(test)]
mod tests;
