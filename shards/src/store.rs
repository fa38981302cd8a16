//! The broker's side of durable storage: opening the data directory and
//! recovering every shard's state at start ([`open`]), and turning the
//! core's [`StoreOp`]s into `vmqtt-storage` write batches
//! ([`to_write_batch`]); the write loop of each shard is in `store/writer.rs`.

pub(crate) mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tracing::{info, warn};
use vmqtt::broker::persist::{
    OutState, QueueImage, Restored, RestoredEntry, RestoredSession, SessionImage, StoreOp,
};
use vmqtt::broker::{Message, ShardId, Subscription};
use vmqtt::topic::TopicFilter;
use vmqtt_config::{Config, Durability};
use vmqtt_storage::{
    recover, unix_ms, CfTuning, DeliveryState, MessageId, QueueEntry, RocksOptions, RocksStorage,
    SessionRecord, ShardState, Storage, StorageError, StoredMessage, SubscriptionRecord,
    WriteBatch,
};

/// The RocksDB options of `config`, per-shard overrides included.
pub fn rocks_options(config: &Config, shards: usize) -> RocksOptions {
    let s = &config.storage;
    let mut shard_overrides = std::collections::BTreeMap::new();
    for i in 0..shards {
        let t = config.storage_for_shard(i);
        if t.write_buffer_size != s.write_buffer_size || t.block_cache_size != s.block_cache_size {
            shard_overrides.insert(
                i,
                CfTuning {
                    write_buffer_size: Some(t.write_buffer_size),
                    block_cache_size: Some(t.block_cache_size),
                },
            );
        }
    }
    RocksOptions {
        max_open_files: s.max_open_files,
        write_buffer_size: s.write_buffer_size,
        block_cache_size: s.block_cache_size,
        shard_overrides,
        max_background_jobs: i32::try_from(s.max_background_jobs).unwrap_or(i32::MAX),
        compression: s.compression,
    }
}

/// Whether any shard persists (`durability` other than `"off"`).
pub fn enabled(config: &Config, shards: usize) -> bool {
    (0..shards).any(|i| config.storage_for_shard(i).durability != Durability::Off)
}

/// Opens the data directory, brings it to `shards` shards (resharding if
/// it was written with another count), purges what expired while the
/// broker was down, and returns each shard's state as the core restores it.
pub fn open(config: &Config, shards: usize) -> anyhow::Result<(RocksStorage, Vec<Restored>)> {
    let started = Instant::now();
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let mut storage = RocksStorage::open(dir, &rocks_options(config, shards))
        .map_err(|e| with_remedy(e, dir))
        .with_context(|| format!("opening the data directory {}", dir.display()))?;
    let restored = restore_all(&mut storage, shards)
        .with_context(|| format!("recovering the data directory {}", dir.display()))?;
    let sessions: usize = restored.iter().map(|r| r.sessions.len()).sum();
    info!(
        dir = %dir.display(),
        sessions,
        retained = restored.first().map_or(0, |r| r
            .retained
            .iter()
            .filter(|(m, _)| !m.payload.is_empty())
            .count()),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage recovered"
    );
    Ok((storage, restored))
}

/// A refusal, with what the operator can do about it where there is
/// something (a damaged write-ahead log: `vmqtt-shard repair`).
fn with_remedy(e: StorageError, dir: &std::path::Path) -> anyhow::Error {
    match e {
        e @ StorageError::CorruptWal { .. } => anyhow::anyhow!(
            "{e}. To recover everything before the damage, knowingly dropping the rest: \
             `vmqtt-shard repair {}` (it first copies the whole directory to a backup and \
             reports what it dropped)",
            dir.display()
        ),
        e => e.into(),
    }
}

/// [`recover`]s `storage` to `shards` shards, purges what expired, and
/// returns each shard's state as its core restores it.
pub fn restore_all(storage: &mut dyn Storage, shards: usize) -> anyhow::Result<Vec<Restored>> {
    let recovered = recover(storage, shards)?;
    if let Some(from) = &recovered.resharded_from {
        info!(
            from = from.len(),
            to = shards,
            "data directory resharded to the new core count"
        );
    }
    let now = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    let mut states = recovered.states;
    let mut expired = Vec::with_capacity(states.len());
    for st in &mut states {
        let purged = st.purge_expired(now_ms);
        if !purged.batch.is_empty() {
            storage
                .write(st.shard, purged.batch, true)
                .context("deleting expired sessions and messages")?;
        }
        if !purged.sessions.is_empty() || purged.retained > 0 {
            info!(
                shard = st.shard.get(),
                sessions = purged.sessions.len(),
                messages = purged.messages,
                retained = purged.retained,
                "purged what expired while stopped"
            );
        }
        expired.push(purged.sessions);
    }
    // Every shard holds every retained message and routes every stored
    // subscription.
    let mut retained = Vec::new();
    let mut routes = BTreeSet::new();
    for st in &states {
        for (m, version) in st.retained.values() {
            retained.push((Arc::new(m.to_message(now, now_ms)), *version));
        }
        for c in st.clients.values() {
            for f in c.subscriptions.keys() {
                routes.insert((f.clone(), st.shard));
            }
        }
    }
    let routes: Vec<(TopicFilter, ShardId)> = routes.into_iter().collect();
    Ok(states
        .into_iter()
        .zip(expired)
        .map(|(st, expired)| {
            let mut r = restore_shard(st, now, now_ms);
            r.retained.clone_from(&retained);
            r.routes.clone_from(&routes);
            r.expired_wills = expired
                .into_iter()
                .filter_map(|(id, s)| s.will.map(|w| (id, w)))
                .collect();
            r
        })
        .collect())
}

/// `at_ms` (wall clock) as an `Instant` relative to `now`. A time before
/// the monotonic clock's origin (the machine booted since) becomes `now`.
fn instant_of(at_ms: u64, now: Instant, now_ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(now_ms.saturating_sub(at_ms)))
        .unwrap_or(now)
}

/// One shard's stored state in the core's terms.
fn restore_shard(st: ShardState, now: Instant, now_ms: u64) -> Restored {
    let mut messages: HashMap<MessageId, Arc<Message>> = HashMap::new();
    let next_message_id = st.next_message_id();
    let mut sessions = Vec::with_capacity(st.clients.len());
    for (client_id, c) in st.clients {
        let queue = c
            .queue
            .into_iter()
            .map(|(seq, q)| {
                let msg = messages
                    .entry(q.entry.message)
                    .or_insert_with(|| Arc::new(q.message.to_message(now, now_ms)))
                    .clone();
                RestoredEntry {
                    seq,
                    message_id: q.entry.message,
                    msg,
                    qos: q.entry.qos,
                    retain: q.entry.retain,
                    sub_ids: q.entry.subscription_ids,
                    state: match q.entry.state {
                        DeliveryState::Queued => OutState::Queued,
                        DeliveryState::AwaitPubAck(p) => OutState::AwaitPubAck(p),
                        DeliveryState::AwaitPubRec(p) => OutState::AwaitPubRec(p),
                        DeliveryState::AwaitPubComp(p) => OutState::AwaitPubComp(p),
                    },
                }
            })
            .collect();
        sessions.push(RestoredSession {
            client_id,
            session: SessionImage {
                protocol: c.session.protocol,
                expiry_interval: c.session.expiry_interval,
                will: c.session.will,
                disconnected_at: c
                    .session
                    .disconnected_at_ms
                    .map(|at| instant_of(at, now, now_ms)),
            },
            subscriptions: c
                .subscriptions
                .into_iter()
                .map(|(f, s)| {
                    let sub = Subscription {
                        options: s.options,
                        id: s.id,
                    };
                    (f, sub)
                })
                .collect(),
            queue,
            inbound_qos2: c.inbound_qos2.into_iter().collect(),
        });
    }
    Restored {
        sessions,
        next_message_id,
        ..Restored::default()
    }
}

/// The core's changes as one storage batch; times become wall-clock
/// milliseconds (`now` and `now_ms` are the same moment).
pub fn to_write_batch(ops: Vec<StoreOp>, now: Instant, now_ms: u64) -> WriteBatch {
    let ms_of = |t: Instant| {
        let ago = now.saturating_duration_since(t);
        now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
    };
    let stored = |m: &Message| Arc::new(StoredMessage::from_message(m, now, now_ms));
    let mut b = WriteBatch::new();
    for op in ops {
        match op {
            StoreOp::PutSession { client_id, session } => {
                let record = SessionRecord {
                    protocol: session.protocol,
                    expiry_interval: session.expiry_interval,
                    will: session.will,
                    disconnected_at_ms: session.disconnected_at.map(ms_of),
                };
                b.put_session(client_id, record);
            }
            StoreOp::DeleteClient(c) => {
                b.delete_client(c);
            }
            StoreOp::PutSubscription {
                client_id,
                filter,
                sub,
            } => {
                let record = SubscriptionRecord {
                    options: sub.options,
                    id: sub.id,
                };
                b.put_subscription(client_id, filter, record);
            }
            StoreOp::DeleteSubscription { client_id, filter } => {
                b.delete_subscription(client_id, filter);
            }
            StoreOp::PutMessage { id, msg } => {
                b.put_message(id, stored(&msg));
            }
            StoreOp::DeleteMessage(id) => {
                b.delete_message(id);
            }
            StoreOp::PutQueueEntry {
                client_id,
                seq,
                entry,
            } => {
                b.put_queue_entry(client_id, seq, queue_entry(entry));
            }
            StoreOp::DeleteQueueEntry { client_id, seq } => {
                b.delete_queue_entry(client_id, seq);
            }
            StoreOp::PutInboundQos2 {
                client_id,
                packet_id,
            } => {
                b.put_inbound_qos2(client_id, packet_id);
            }
            StoreOp::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => {
                b.delete_inbound_qos2(client_id, packet_id);
            }
            StoreOp::PutRetained(m, version) => {
                b.put_retained(stored(&m), version);
            }
            StoreOp::DeleteRetained(t) => {
                b.delete_retained(t);
            }
        }
    }
    b
}

fn queue_entry(e: QueueImage) -> QueueEntry {
    QueueEntry {
        message: e.message,
        qos: e.qos,
        retain: e.retain,
        subscription_ids: e.sub_ids,
        state: match e.state {
            OutState::Queued => DeliveryState::Queued,
            OutState::AwaitPubAck(p) => DeliveryState::AwaitPubAck(p),
            OutState::AwaitPubRec(p) => DeliveryState::AwaitPubRec(p),
            OutState::AwaitPubComp(p) => DeliveryState::AwaitPubComp(p),
        },
    }
}

/// Logs, once, that storage is off.
pub fn warn_off() {
    warn!("storage.durability = \"off\": sessions and retained messages are lost at exit");
}

#[cfg(test)]
mod tests;
