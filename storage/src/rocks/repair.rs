//! The operator's way past a damaged write-ahead log: [`check`] says what
//! is wrong without writing anything; [`repair_wal`] recovers everything
//! before the damage (RocksDB's point-in-time recovery) and reports what it
//! dropped. Never run at start: the broker refuses the directory, and the
//! operator decides (`vmqtt-shard repair`, which keeps a copy first).

use super::*;
use crate::state::ShardState;
use crate::wal::{self, WalScan};

/// Counts of what a data directory holds, over every shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Shard column families.
    pub shards: usize,
    /// Persistent sessions.
    pub sessions: usize,
    /// Their subscriptions.
    pub subscriptions: usize,
    /// Queue entries (queued or in flight) of all sessions.
    pub queued: usize,
    /// Messages stored (once per shard, shared by the entries).
    pub messages: usize,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: usize,
    /// Retained messages.
    pub retained: usize,
    /// Records left out because what they refer to is missing.
    pub dangling: usize,
}

impl Census {
    fn add(&mut self, st: &ShardState) {
        self.shards += 1;
        self.sessions += st.clients.len();
        for c in st.clients.values() {
            self.subscriptions += c.subscriptions.len();
            self.queued += c.queue.len();
            self.inbound_qos2 += c.inbound_qos2.len();
        }
        self.messages += st.messages.len();
        self.retained += st.retained.len();
        self.dangling += st.dangling.len();
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions, {} subscriptions, {} queued or in-flight messages ({} stored), {} \
             inbound QoS 2 ids, {} retained messages",
            self.sessions,
            self.subscriptions,
            self.queued,
            self.messages,
            self.inbound_qos2,
            self.retained
        )?;
        if self.dangling > 0 {
            write!(f, ", {} dangling records", self.dangling)?;
        }
        Ok(())
    }
}

/// What [`repair_wal`] did.
#[derive(Debug, Clone)]
pub struct WalRepair {
    /// The refusal that made the repair necessary
    /// ([`StorageError::CorruptWal`]), as text.
    pub damage: String,
    /// Every write-ahead log file as it was found.
    pub scans: Vec<WalScan>,
    /// What the damaged directory holds when every record that still
    /// verifies is read, the damaged ones skipped (`None` if even that
    /// cannot be read). An upper bound of what could be kept; not a
    /// consistent state.
    pub readable: Option<Census>,
    /// What the repaired directory holds: everything before the damage.
    pub kept: Census,
    /// Log bytes not replayed: from the damage to the end of its file, and
    /// every later log file.
    pub dropped_bytes: u64,
    /// Write batches after the damage that still verified and were dropped
    /// with it.
    pub dropped_batches: u64,
}

/// Runs the checks [`RocksStorage::open`] runs before it writes, writing
/// nothing: `Ok` if the directory would open, else the error it would be
/// refused with ([`StorageError::CorruptWal`] for a damaged write-ahead
/// log, the one thing [`repair_wal`] repairs).
pub fn check(path: impl AsRef<Path>) -> Result<()> {
    inspect(path.as_ref()).map(|_| ())
}

/// Counts what the shard column families of an open database hold.
fn census(db: &Db, path: &Path, cfs: &[String]) -> Result<Census> {
    let mut c = Census::default();
    for name in cfs {
        let Some(shard) = parse_shard_cf(name) else {
            continue;
        };
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| open_err(path, format!("column family {name} missing")))?;
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_verify_checksums(true);
        let mut it = db.raw_iterator_cf_opt(&cf, ro);
        it.seek_to_first();
        let scan = Scan {
            it,
            location: format!("{}/{name}", path.display()),
            path: path.to_path_buf(),
            done: false,
        };
        c.add(&ShardState::from_records(shard, scan)?);
    }
    Ok(c)
}

/// Reads `path` read-only (no file written) with `mode` and counts it.
fn census_read_only(path: &Path, mode: DBRecoveryMode) -> Result<Census> {
    let mut probe = probe_options();
    probe.set_wal_recovery_mode(mode);
    let cfs = Db::list_cf(&probe, path).map_err(|e| open_err(path, e))?;
    let db = Db::open_cf_for_read_only(&probe, path, &cfs, false).map_err(|e| open_err(path, e))?;
    census(&db, path, &cfs)
}

/// Repairs a data directory whose write-ahead log is damaged
/// ([`StorageError::CorruptWal`]): replays the log up to the damage
/// (point-in-time recovery), writes what it recovered to table files, and
/// so drops the damaged log and everything after the damage. `Ok(None)` if
/// the directory is not damaged that way ([`check`] passes): nothing is
/// done. Any other refusal is returned unchanged, nothing done.
///
/// **This drops data** (what the report says). Keep a copy of the
/// directory first; `vmqtt-shard repair` does.
pub fn repair_wal(path: impl AsRef<Path>, options: &RocksOptions) -> Result<Option<WalRepair>> {
    let path = path.as_ref();
    let damage = match inspect(path) {
        Ok(_) => return Ok(None),
        Err(e @ StorageError::CorruptWal { .. }) => e.to_string(),
        Err(e) => return Err(e),
    };
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let scans = wal::scan_dir(path).map_err(io)?;
    let (mut dropped_bytes, mut dropped_batches) = (0, 0);
    let mut past = false;
    for s in &scans {
        if past {
            dropped_bytes += s.len;
            dropped_batches += s.records;
        } else if let Some(d) = &s.damage {
            dropped_bytes += d.bytes_after;
            dropped_batches += d.records_after;
            past = true;
        }
    }
    let readable = census_read_only(path, DBRecoveryMode::SkipAnyCorruptedRecord).ok();

    let mut opts = db_options(options);
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    let cfs = Db::list_cf(&opts, path).map_err(|e| open_err(path, e))?;
    let descriptors = cfs.iter().map(|name| {
        let o = match parse_shard_cf(name) {
            Some(shard) => cf_options(options, shard),
            None => Options::default(),
        };
        ColumnFamilyDescriptor::new(name, o)
    });
    let db = Db::open_cf_descriptors(&opts, path, descriptors).map_err(|e| open_err(path, e))?;
    // What was recovered goes to table files: the damaged log is then no
    // longer needed, and RocksDB deletes it.
    for name in &cfs {
        if let Some(cf) = db.cf_handle(name) {
            db.flush_cf(&cf).map_err(|e| open_err(path, e))?;
        }
    }
    db.flush_wal(true).map_err(|e| open_err(path, e))?;
    drop(db);

    // The repaired directory must pass the checks of a normal open.
    let storage = RocksStorage::open(path, options)?;
    let mut kept = Census::default();
    for st in storage.load_all()? {
        kept.add(&st);
    }
    Ok(Some(WalRepair {
        damage,
        scans,
        readable,
        kept,
        dropped_bytes,
        dropped_batches,
    }))
}
