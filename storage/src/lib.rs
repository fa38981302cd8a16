//! `vmqtt-storage`: durable broker state.
//!
//! One RocksDB database per node ([`RocksStorage`]) with a column family per
//! shard (`shard-{n}`) and a `meta` column family holding the schema
//! version; an in-memory implementation with the same semantics for tests
//! ([`MemStorage`]). Both sit behind the [`Storage`] trait.
//!
//! - What is stored: typed records ([`Record`]) — sessions, subscriptions,
//!   messages (once per shard), queue entries, inbound QoS 2 ids, retained
//!   messages. Keys are built in [`keys`], values in [`codec`];
//!   `docs/STORAGE.md` draws the layout.
//! - Writes: a [`WriteBatch`] of typed [`Op`]s, atomic, with `sync` chosen
//!   per write from the [`Durability`] setting.
//! - Start: [`recover`] opens every shard's state ([`ShardState`]),
//!   resharding first if the shard count changed ([`plan_reshard`]).
//! - Schema: version [`SCHEMA_VERSION`]; a newer directory is refused
//!   untouched, version 1 is migrated ([`RocksStorage::open`]).
//! - Damage: a write-ahead log damaged before its end is refused
//!   ([`StorageError::CorruptWal`], file and offset from [`wal`]); the
//!   operator's [`repair_wal`] recovers what precedes the damage.
//!
//! Nothing here reads a clock: times are passed in as wall-clock
//! milliseconds since the Unix epoch ([`unix_ms`]).

// `StorageError` carries the diagnostics of a damaged data directory (file,
// offset, what follows the damage); it is returned on cold paths only (open,
// recovery, repair, a failed batch), never per message, so its size costs
// nothing that matters.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod arb;
pub mod codec;
mod error;
pub mod keys;
mod mem;
mod migrate;
mod raw;
mod record;
mod rocks;
mod state;
pub mod wal;

use vmqtt::broker::ShardId;

pub use codec::{OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};
pub use error::{Result, StorageError};
pub use mem::MemStorage;
pub use record::{
    unix_ms, DeliveryState, Durability, MessageId, Op, QueueEntry, Record, RecordKey,
    SessionRecord, StoredMessage, SubscriptionRecord, WriteBatch,
};
pub use rocks::{check, repair_wal, Census, CfTuning, RocksOptions, RocksStorage, WalRepair};
pub use state::{
    plan_reshard, retained_home, ClientState, MessageRefs, Purged, QueuedMessage, ReshardPlan,
    ShardState,
};

/// A stream of records read back from one shard, in key order (see
/// [`Storage::scan_shard`]).
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<Record>> + 'a>;

/// Durable storage of the broker's state, one keyspace per shard.
///
/// Implementations are `Send` and cheap to clone (the data is shared), so
/// each shard's storage thread can own a handle; handles of the same
/// database may write to different shards concurrently.
pub trait Storage: Send {
    /// The shards that have a keyspace (column family), in order.
    fn shards(&self) -> Result<Vec<ShardId>>;

    /// The shard count the stored data is laid out for (`meta/shards`),
    /// `None` for a new directory. Written atomically with the data by
    /// [`Storage::apply_reshard`].
    fn layout(&self) -> Result<Option<usize>>;

    /// Applies `batch` to `shard` atomically: after a crash, all of it or
    /// none of it is there. With `sync`, returns only once the batch (and
    /// every earlier write) is on stable storage (`durability = "fsync"`);
    /// without, once it is in the write-ahead log in the OS page cache
    /// (`"wal"`: survives a process crash, not power loss). A batch that
    /// cannot be encoded is refused whole.
    fn write(&mut self, shard: ShardId, batch: WriteBatch, sync: bool) -> Result<()>;

    /// Makes every write that has returned durable against power loss
    /// (fsync of the write-ahead log): group commit for `sync = false`
    /// writes, and the last step of a graceful shutdown.
    fn sync(&mut self) -> Result<()>;

    /// Streams the records of `shard` in key order: sessions,
    /// subscriptions, messages, queue entries, inbound QoS 2 ids, retained
    /// messages. A record that does not decode is an error item
    /// ([`StorageError::Corrupt`]), after which the stream ends.
    fn scan_shard(&self, shard: ShardId) -> Result<RecordIter<'_>>;

    /// Everything of `shard`, joined ([`ShardState::from_records`]).
    fn load_shard(&self, shard: ShardId) -> Result<ShardState> {
        ShardState::from_records(shard, self.scan_shard(shard)?)
    }

    /// Every shard's state, in shard order, for resharding.
    fn load_all(&self) -> Result<Vec<ShardState>> {
        self.shards()?
            .into_iter()
            .map(|s| self.load_shard(s))
            .collect()
    }

    /// Replaces the contents of every shard with `plan.states` and records
    /// the new layout, in one atomic, synced write (keyspaces it needs are
    /// created first), then drops the keyspaces of `plan.drop`. Refused if
    /// the shards present are not `plan.old_shards`.
    ///
    /// A crash before the write leaves the old data and layout (plus empty
    /// new keyspaces); after it, the new data and layout (plus, until the
    /// drop, empty old keyspaces). Either way [`recover`] sees that the
    /// keyspaces do not match the layout and reshards again.
    fn apply_reshard(&mut self, plan: &ReshardPlan) -> Result<()>;
}

/// What [`recover`] found.
#[derive(Debug)]
pub struct Recovered {
    /// The state of every shard, `states[i]` for shard `i`, with its
    /// `garbage` already deleted.
    pub states: Vec<ShardState>,
    /// The shards the data had before, if it was resharded.
    pub resharded_from: Option<Vec<ShardId>>,
}

/// Brings `storage` to `shards` shards and loads them.
///
/// - keyspaces `0..shards` and a layout of `shards`: loads them;
/// - an empty directory: creates the keyspaces and records the layout;
/// - anything else (another shard count, or a reshard interrupted by a
///   crash): loads every keyspace present and reshards
///   ([`plan_reshard`]: each session to [`vmqtt::broker::home_shard`] of its
///   client id, each retained message to [`retained_home`] of its topic).
///
/// Then deletes the messages no queue entry refers to (the
/// garbage-collection rule). Expired sessions and messages are left for
/// the caller ([`ShardState::purge_expired`]), which knows the time.
pub fn recover(storage: &mut dyn Storage, shards: usize) -> Result<Recovered> {
    let shards = shards.clamp(1, usize::from(u16::MAX));
    let wanted: Vec<ShardId> = (0..shards).map(|i| ShardId::new(i as u16)).collect();
    let present = storage.shards()?;
    let layout = storage.layout()?;
    let (mut states, resharded_from) = if present == wanted && layout == Some(shards) {
        (storage.load_all()?, None)
    } else {
        let old = if present.is_empty() {
            Vec::new()
        } else {
            storage.load_all()?
        };
        let plan = plan_reshard(old, shards);
        storage.apply_reshard(&plan)?;
        let from = (!present.is_empty()).then_some(present);
        (plan.states, from)
    };
    for st in &mut states {
        if !st.garbage.is_empty() {
            let garbage = std::mem::take(&mut st.garbage);
            storage.write(st.shard, garbage, true)?;
        }
    }
    Ok(Recovered {
        states,
        resharded_from,
    })
}
