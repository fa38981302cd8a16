//! [`MemStorage`]: the in-memory [`Storage`], for tests. Same encoding,
//! same atomicity and the same durability model as RocksDB, so a test can
//! simulate the two kinds of crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use vmqtt::broker::ShardId;

use crate::codec::{decode_meta_u32, encode_meta_u32};
use crate::error::{Result, StorageError};
use crate::keys::{shard_cf, END_KEY, FIRST_KEY, SHARDS_KEY};
use crate::raw::{decode_entry, encode_ops, RawSink};
use crate::record::WriteBatch;
use crate::state::ReshardPlan;
use crate::{RecordIter, Storage};

type Keyspace = BTreeMap<Vec<u8>, Bytes>;

/// A keyspace: a column family of the RocksDB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cf {
    Meta,
    Shard(ShardId),
}

type Db = BTreeMap<Cf, Keyspace>;

#[derive(Debug, Clone)]
enum RawOp {
    Put(Vec<u8>, Bytes),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
    Create,
    Drop,
}

/// Encoded operations, each on a keyspace.
struct Ops {
    cf: Cf,
    ops: Vec<(Cf, RawOp)>,
}

impl RawSink for Ops {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let op = RawOp::Put(key.to_vec(), Bytes::copy_from_slice(value));
        self.ops.push((self.cf, op));
    }
    fn delete(&mut self, key: &[u8]) {
        self.ops.push((self.cf, RawOp::Delete(key.to_vec())));
    }
    fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        let op = RawOp::DeleteRange(start.to_vec(), end.to_vec());
        self.ops.push((self.cf, op));
    }
}

fn apply(db: &mut Db, ops: &[(Cf, RawOp)]) {
    for (cf, op) in ops {
        match op {
            RawOp::Create => {
                db.entry(*cf).or_default();
            }
            RawOp::Drop => {
                db.remove(cf);
            }
            RawOp::Put(k, v) => {
                if let Some(ks) = db.get_mut(cf) {
                    ks.insert(k.clone(), v.clone());
                }
            }
            RawOp::Delete(k) => {
                if let Some(ks) = db.get_mut(cf) {
                    ks.remove(k);
                }
            }
            RawOp::DeleteRange(a, b) => {
                if let Some(ks) = db.get_mut(cf) {
                    let doomed: Vec<Vec<u8>> = ks
                        .range(a.clone()..b.clone())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        ks.remove(&k);
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// What reads see: the process's view, as if every write were in the
    /// WAL in the page cache.
    live: Db,
    /// What survives power loss: the state as of the last synced write.
    durable: Db,
    /// Writes since the last sync, in order, to replay onto `durable`.
    unsynced: Vec<Vec<(Cf, RawOp)>>,
}

impl Default for Inner {
    fn default() -> Self {
        let db: Db = [(Cf::Meta, Keyspace::new())].into_iter().collect();
        Self {
            live: db.clone(),
            durable: db,
            unsynced: Vec::new(),
        }
    }
}

impl Inner {
    fn commit(&mut self, ops: Vec<(Cf, RawOp)>, sync: bool) {
        apply(&mut self.live, &ops);
        self.unsynced.push(ops);
        if sync {
            self.sync();
        }
    }

    fn sync(&mut self) {
        for ops in std::mem::take(&mut self.unsynced) {
            apply(&mut self.durable, &ops);
        }
    }
}

/// In-memory [`Storage`] for tests: the same key and value encoding as
/// [`crate::RocksStorage`], atomic batches, and the same durability model.
/// Clones share the data, like handles of one database.
///
/// - [`MemStorage::crash_process`] keeps every write that returned (as
///   RocksDB's WAL in the page cache does across `kill -9`);
/// - [`MemStorage::crash_power`] keeps only synced writes (and every write
///   before a synced one, as the WAL is a log).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Arc<Mutex<Inner>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: every
        // mutation is applied whole before anything else can observe it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates a process crash (`kill -9`) and restart: every write that
    /// returned survives. Returns a handle to the restarted store.
    pub fn crash_process(&self) -> MemStorage {
        let g = self.lock();
        let inner = Inner {
            live: g.live.clone(),
            durable: g.durable.clone(),
            unsynced: g.unsynced.clone(),
        };
        MemStorage {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Simulates power loss and restart: only synced writes survive.
    /// Returns a handle to the restarted store.
    pub fn crash_power(&self) -> MemStorage {
        let g = self.lock();
        let inner = Inner {
            live: g.durable.clone(),
            durable: g.durable.clone(),
            unsynced: Vec::new(),
        };
        MemStorage {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// The raw key/value pairs of `shard` (for tests of the encoding).
    pub fn raw_entries(&self, shard: ShardId) -> Vec<(Vec<u8>, Bytes)> {
        self.lock()
            .live
            .get(&Cf::Shard(shard))
            .map(|ks| ks.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

impl Storage for MemStorage {
    fn shards(&self) -> Result<Vec<ShardId>> {
        Ok(self
            .lock()
            .live
            .keys()
            .filter_map(|cf| match cf {
                Cf::Shard(s) => Some(*s),
                Cf::Meta => None,
            })
            .collect())
    }

    fn layout(&self) -> Result<Option<usize>> {
        let g = self.lock();
        let v = g.live.get(&Cf::Meta).and_then(|m| m.get(SHARDS_KEY));
        match v {
            None => Ok(None),
            Some(v) => decode_meta_u32(v)
                .map(|n| Some(n as usize))
                .map_err(|e| e.at("memory/meta", SHARDS_KEY)),
        }
    }

    fn write(&mut self, shard: ShardId, batch: WriteBatch, sync: bool) -> Result<()> {
        let cf = Cf::Shard(shard);
        let mut ops = Ops {
            cf,
            ops: Vec::with_capacity(batch.len()),
        };
        encode_ops(batch.ops(), &mut ops)?;
        let mut g = self.lock();
        if !g.live.contains_key(&cf) {
            return Err(StorageError::UnknownShard(shard));
        }
        g.commit(ops.ops, sync);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.lock().sync();
        Ok(())
    }

    fn scan_shard(&self, shard: ShardId) -> Result<RecordIter<'_>> {
        let entries = {
            let g = self.lock();
            let ks = g
                .live
                .get(&Cf::Shard(shard))
                .ok_or(StorageError::UnknownShard(shard))?;
            ks.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let location = move || format!("memory/{}", shard_cf(shard));
        let mut failed = false;
        Ok(Box::new(entries.into_iter().map_while(move |(k, v)| {
            if failed {
                return None;
            }
            let r = decode_entry(&location, &k, v);
            failed = r.is_err();
            Some(r)
        })))
    }

    fn apply_reshard(&mut self, plan: &ReshardPlan) -> Result<()> {
        let mut g = self.lock();
        let present: Vec<ShardId> = g
            .live
            .keys()
            .filter_map(|cf| match cf {
                Cf::Shard(s) => Some(*s),
                Cf::Meta => None,
            })
            .collect();
        if present != plan.old_shards {
            return Err(StorageError::StalePlan {
                planned: plan.old_shards.clone(),
                present,
            });
        }
        // Encode everything first: nothing is applied if anything fails.
        let mut ops = Ops {
            cf: Cf::Meta,
            ops: Vec::new(),
        };
        for &s in &present {
            ops.cf = Cf::Shard(s);
            ops.delete_range(FIRST_KEY, END_KEY);
        }
        for st in &plan.states {
            ops.cf = Cf::Shard(st.shard);
            encode_ops(st.to_batch().ops(), &mut ops)?;
        }
        let n =
            u32::try_from(plan.states.len()).map_err(|_| StorageError::TooLarge("shard count"))?;
        ops.cf = Cf::Meta;
        ops.put(SHARDS_KEY, &encode_meta_u32(n));
        // Keyspaces are created first (each synced, like RocksDB's MANIFEST).
        for st in &plan.states {
            if !g.live.contains_key(&Cf::Shard(st.shard)) {
                g.commit(vec![(Cf::Shard(st.shard), RawOp::Create)], true);
            }
        }
        g.commit(ops.ops, true);
        for &s in &plan.drop {
            g.commit(vec![(Cf::Shard(s), RawOp::Drop)], true);
        }
        Ok(())
    }
}
