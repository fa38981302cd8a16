//! The typed records that persist, and the typed write operations
//! ([`Op`], [`WriteBatch`]) that change them.
//!
//! Times are wall-clock milliseconds since the Unix epoch (`u64`): an
//! `Instant` means nothing after a restart. The broker converts at the edge
//! ([`StoredMessage::from_message`], [`StoredMessage::to_message`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vmqtt::broker::{Message, RetainVersion};
use vmqtt::codec::{LastWill, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ClientId, PacketId};

/// The core's id of a stored message: one name for it in the core, the
/// storage and the records.
pub use vmqtt::MessageId;

/// A session: what survives of a client identifier between connections,
/// apart from its subscriptions, queue and inbound QoS 2 state (their own
/// records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The protocol level of the last connection.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// The will of the current (or last) connection, with its v5
    /// properties (will delay included).
    pub will: Option<LastWill>,
    /// When the client disconnected (ms since the Unix epoch); `None` while
    /// it is connected. A session recovered with `None` was connected when
    /// the broker stopped: the broker treats it as disconnected at restart.
    pub disconnected_at_ms: Option<u64>,
}

impl SessionRecord {
    /// When the session expires (ms since the Unix epoch): `None` while
    /// connected or for an interval of `u32::MAX`.
    pub fn expires_at_ms(&self) -> Option<u64> {
        if self.expiry_interval == u32::MAX {
            return None;
        }
        let at = self.disconnected_at_ms?;
        Some(at.saturating_add(u64::from(self.expiry_interval) * 1000))
    }

    /// `true` once `now_ms` has reached the expiry time.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|t| now_ms >= t)
    }
}

/// One subscription of a session, keyed by its full filter (`$share/...`
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Subscription options: maximum QoS, no local, retain as published,
    /// retain handling.
    pub options: SubscriptionOptions,
    /// Subscription Identifier (v5), `None` if absent.
    pub id: Option<u32>,
}

/// An application message as stored: once per shard, however many queue
/// entries refer to it; retained messages are stored the same way under
/// their topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// v5 properties to forward (stored as given, every field).
    pub properties: PublishProperties,
    /// When the message expires (ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
    /// The publishing client, for No Local.
    pub origin: Option<ClientId>,
}

impl StoredMessage {
    /// `true` once `now_ms` has reached the expiry time.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| now_ms >= t)
    }

    /// The stored form of a broker message, given the same moment as an
    /// `Instant` and as wall-clock ms.
    pub fn from_message(msg: &Message, now: Instant, now_ms: u64) -> Self {
        let expires_at_ms = msg.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            now_ms.saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
        });
        Self {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            properties: msg.properties.clone(),
            expires_at_ms,
            origin: msg.origin.clone(),
        }
    }

    /// The broker message, given the same moment as an `Instant` and as
    /// wall-clock ms. A message already expired gets `expires_at = now`.
    pub fn to_message(&self, now: Instant, now_ms: u64) -> Message {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_at: self
                .expires_at_ms
                .map(|t| now + Duration::from_millis(t.saturating_sub(now_ms))),
            origin: self.origin.clone(),
            // (Not stored: only the handover window deduplicates by it.)
            uid: None,
        }
    }
}

/// Where an outbound message is in its flow to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for the inflight window or for the client.
    Queued,
    /// QoS 1 PUBLISH sent with this packet id, waiting for PUBACK.
    AwaitPubAck(PacketId),
    /// QoS 2 PUBLISH sent with this packet id, waiting for PUBREC.
    AwaitPubRec(PacketId),
    /// PUBREL sent for this packet id, waiting for PUBCOMP.
    AwaitPubComp(PacketId),
}

impl DeliveryState {
    /// The packet id, if the message is in flight.
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            DeliveryState::Queued => None,
            DeliveryState::AwaitPubAck(p)
            | DeliveryState::AwaitPubRec(p)
            | DeliveryState::AwaitPubComp(p) => Some(p),
        }
    }
}

/// A message on its way to one session: a reference to the shard's stored
/// message plus the per-delivery fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The stored message (same column family).
    pub message: MessageId,
    /// QoS of this delivery: min(published, subscription maximum).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Flow state.
    pub state: DeliveryState,
}

/// One stored record, as read back in key order by
/// [`crate::Storage::scan_shard`]: sessions, subscriptions, messages, queue
/// entries, inbound QoS 2 ids, retained messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A session.
    Session {
        /// Its client identifier.
        client_id: ClientId,
        /// The session.
        session: SessionRecord,
    },
    /// A subscription of a session.
    Subscription {
        /// The session's client identifier.
        client_id: ClientId,
        /// The full filter.
        filter: TopicFilter,
        /// Options and identifier.
        subscription: SubscriptionRecord,
    },
    /// A message referred to by queue entries.
    Message {
        /// Its identifier.
        id: MessageId,
        /// The message.
        message: Arc<StoredMessage>,
    },
    /// A message queued for (or in flight to) a session.
    QueueEntry {
        /// The session's client identifier.
        client_id: ClientId,
        /// Position in the session's queue (increasing).
        seq: u64,
        /// The entry.
        entry: QueueEntry,
    },
    /// An inbound QoS 2 packet id received and not yet released by PUBREL.
    InboundQos2 {
        /// The session's client identifier.
        client_id: ClientId,
        /// The packet id.
        packet_id: PacketId,
    },
    /// The retained message of its topic with its version; an empty
    /// payload is a tombstone (a topic cleared in a cluster).
    Retained {
        /// The message; its topic is the key.
        message: Arc<StoredMessage>,
        /// Which update it is (newest wins across replicas).
        version: RetainVersion,
    },
}

impl Record {
    /// The key this record is stored under.
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Session { client_id, .. } => RecordKey::Session(client_id.clone()),
            Record::Subscription {
                client_id, filter, ..
            } => RecordKey::Subscription(client_id.clone(), filter.clone()),
            Record::Message { id, .. } => RecordKey::Message(*id),
            Record::QueueEntry { client_id, seq, .. } => {
                RecordKey::QueueEntry(client_id.clone(), *seq)
            }
            Record::InboundQos2 {
                client_id,
                packet_id,
            } => RecordKey::InboundQos2(client_id.clone(), *packet_id),
            Record::Retained { message, .. } => RecordKey::Retained(message.topic.clone()),
        }
    }
}

/// The key of a record, typed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    /// A session.
    Session(ClientId),
    /// A subscription: client id, full filter.
    Subscription(ClientId, TopicFilter),
    /// A message.
    Message(MessageId),
    /// A queue entry: client id, sequence.
    QueueEntry(ClientId, u64),
    /// An inbound QoS 2 id: client id, packet id.
    InboundQos2(ClientId, PacketId),
    /// A retained message: topic.
    Retained(TopicName),
}

/// One typed write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store (insert or overwrite) a record.
    Put(Record),
    /// Delete one record (no error if absent).
    Delete(RecordKey),
    /// Delete a client's session, subscriptions, queue entries and inbound
    /// QoS 2 ids (range deletes). Messages are not touched: the caller
    /// releases their references (see [`crate::MessageRefs`]).
    DeleteClient(ClientId),
}

/// A list of typed operations applied atomically by
/// [`crate::Storage::write`]: all or none of them survive a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operations, in order (later ones win).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Consumes the batch, returning its operations.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// `true` if there is no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends an operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Appends every operation of `other` (group commit: several callers'
    /// batches written as one).
    pub fn append(&mut self, other: WriteBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// Removes every operation, keeping the allocation.
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    /// Stores a session.
    pub fn put_session(&mut self, client_id: ClientId, session: SessionRecord) -> &mut Self {
        self.push(Op::Put(Record::Session { client_id, session }))
    }

    /// Deletes a session record only (see [`WriteBatch::delete_client`]).
    pub fn delete_session(&mut self, client_id: ClientId) -> &mut Self {
        self.push(Op::Delete(RecordKey::Session(client_id)))
    }

    /// Deletes everything of a client except messages.
    pub fn delete_client(&mut self, client_id: ClientId) -> &mut Self {
        self.push(Op::DeleteClient(client_id))
    }

    /// Stores a subscription.
    pub fn put_subscription(
        &mut self,
        client_id: ClientId,
        filter: TopicFilter,
        subscription: SubscriptionRecord,
    ) -> &mut Self {
        self.push(Op::Put(Record::Subscription {
            client_id,
            filter,
            subscription,
        }))
    }

    /// Deletes a subscription.
    pub fn delete_subscription(&mut self, client_id: ClientId, filter: TopicFilter) -> &mut Self {
        self.push(Op::Delete(RecordKey::Subscription(client_id, filter)))
    }

    /// Stores a message.
    pub fn put_message(&mut self, id: MessageId, message: Arc<StoredMessage>) -> &mut Self {
        self.push(Op::Put(Record::Message { id, message }))
    }

    /// Deletes a message.
    pub fn delete_message(&mut self, id: MessageId) -> &mut Self {
        self.push(Op::Delete(RecordKey::Message(id)))
    }

    /// Stores a queue entry (or its new state).
    pub fn put_queue_entry(
        &mut self,
        client_id: ClientId,
        seq: u64,
        entry: QueueEntry,
    ) -> &mut Self {
        self.push(Op::Put(Record::QueueEntry {
            client_id,
            seq,
            entry,
        }))
    }

    /// Deletes a queue entry.
    pub fn delete_queue_entry(&mut self, client_id: ClientId, seq: u64) -> &mut Self {
        self.push(Op::Delete(RecordKey::QueueEntry(client_id, seq)))
    }

    /// Records an inbound QoS 2 packet id.
    pub fn put_inbound_qos2(&mut self, client_id: ClientId, packet_id: PacketId) -> &mut Self {
        self.push(Op::Put(Record::InboundQos2 {
            client_id,
            packet_id,
        }))
    }

    /// Releases an inbound QoS 2 packet id.
    pub fn delete_inbound_qos2(&mut self, client_id: ClientId, packet_id: PacketId) -> &mut Self {
        self.push(Op::Delete(RecordKey::InboundQos2(client_id, packet_id)))
    }

    /// Stores the retained message of `message.topic` made at `version`;
    /// an empty payload stores a tombstone (a clear in a cluster; on one
    /// node a clear is [`WriteBatch::delete_retained`]).
    pub fn put_retained(
        &mut self,
        message: Arc<StoredMessage>,
        version: RetainVersion,
    ) -> &mut Self {
        self.push(Op::Put(Record::Retained { message, version }))
    }

    /// Deletes the retained message of a topic.
    pub fn delete_retained(&mut self, topic: TopicName) -> &mut Self {
        self.push(Op::Delete(RecordKey::Retained(topic)))
    }
}

impl From<Vec<Op>> for WriteBatch {
    fn from(ops: Vec<Op>) -> Self {
        Self { ops }
    }
}

impl Extend<Op> for WriteBatch {
    fn extend<T: IntoIterator<Item = Op>>(&mut self, iter: T) {
        self.ops.extend(iter);
    }
}

/// Whether a write returns before or after its WAL record reaches stable
/// storage: the `durability` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `"wal"`: the write is in RocksDB's write-ahead log in the OS page
    /// cache when `write` returns. Survives a crash of the process
    /// (`kill -9`, abort, panic); the last writes can be lost on power
    /// loss or an OS crash.
    #[default]
    Wal,
    /// `"fsync"`: the WAL is fsynced before `write` returns. Also survives
    /// power loss and OS crashes (given honest disks).
    Fsync,
}

impl Durability {
    /// The `sync` argument of [`crate::Storage::write`] for this setting.
    pub const fn sync(self) -> bool {
        matches!(self, Durability::Fsync)
    }

    /// The setting's name in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Durability::Wal => "wal",
            Durability::Fsync => "fsync",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wal" => Ok(Durability::Wal),
            "fsync" => Ok(Durability::Fsync),
            other => Err(format!(
                "unknown durability {other:?}: expected \"wal\" or \"fsync\""
            )),
        }
    }
}

/// Milliseconds since the Unix epoch of a `SystemTime` (0 before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
