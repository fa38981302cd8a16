//! What a shard asks durable storage to keep, and what it gets back at
//! start.
//!
//! The core does no I/O: it describes each change of durable state as a
//! [`StoreOp`] and collects them into numbered batches
//! ([`super::ShardCore::poll_store`]). The runtime writes a batch (to
//! `vmqtt-storage`, off the reactor) and reports it with
//! [`super::ShardCore::handle_stored`]. Until then, every reply that may
//! depend on it is held back: output to clients produced after the change
//! (PUBACK, PUBREC, PUBCOMP, SUBACK, CONNACK, outbound QoS 1/2 PUBLISH) and
//! acknowledgements to other shards. That is the durability contract: what a
//! client was told was accepted is in the write-ahead log first.
//!
//! What is persistent: sessions with a Session Expiry Interval > 0 (v5) or
//! clean session 0 (v3), with their will, subscriptions, outbound QoS 1/2
//! messages (queued and in flight, with their packet ids), inbound QoS 2
//! packet ids; and retained messages (each by the shard
//! [`super::home_shard`] of its topic). QoS 0 messages are not kept.

use std::sync::Arc;
use std::time::Instant;

use super::session::Subscription;
use super::{Message, RetainVersion, ShardId};
use crate::codec::{LastWill, ProtocolVersion, QoS};
use crate::topic::{TopicFilter, TopicName};
use crate::{ClientId, MessageId, PacketId};

/// Where an outbound QoS 1/2 message is in its flow to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutState {
    /// Waiting for the inflight window or for the client.
    Queued,
    /// QoS 1 PUBLISH sent with this packet id, waiting for PUBACK.
    AwaitPubAck(PacketId),
    /// QoS 2 PUBLISH sent with this packet id, waiting for PUBREC.
    AwaitPubRec(PacketId),
    /// PUBREL sent for this packet id, waiting for PUBCOMP.
    AwaitPubComp(PacketId),
}

/// The stored form of a session, apart from its subscriptions, queue and
/// inbound QoS 2 ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImage {
    /// Protocol level of the last connection.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// The will (published when the connection ends abnormally, possibly
    /// after its delay).
    pub will: Option<LastWill>,
    /// When the client disconnected; `None` while connected.
    pub disconnected_at: Option<Instant>,
}

/// One message queued for (or in flight to) a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueImage {
    /// The shard's id of the stored message.
    pub message: MessageId,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// Flow state.
    pub state: OutState,
}

/// One change of durable state.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Create or replace a session record.
    PutSession {
        /// The client.
        client_id: ClientId,
        /// The record.
        session: SessionImage,
    },
    /// Delete everything of a client: session, subscriptions, queue
    /// entries, inbound QoS 2 ids (messages are deleted by their own ops).
    DeleteClient(ClientId),
    /// Create or replace a subscription.
    PutSubscription {
        /// The client.
        client_id: ClientId,
        /// The full filter.
        filter: TopicFilter,
        /// Options and identifier.
        sub: Subscription,
    },
    /// Delete a subscription.
    DeleteSubscription {
        /// The client.
        client_id: ClientId,
        /// The full filter.
        filter: TopicFilter,
    },
    /// Store a message once for this shard (its first queue entry refers
    /// to it).
    PutMessage {
        /// The shard's id for it.
        id: MessageId,
        /// The message.
        msg: Arc<Message>,
    },
    /// Delete a message no queue entry refers to any more.
    DeleteMessage(MessageId),
    /// Create or update a queue entry.
    PutQueueEntry {
        /// The client.
        client_id: ClientId,
        /// Position in the client's queue (increasing).
        seq: u64,
        /// The entry.
        entry: QueueImage,
    },
    /// Delete a queue entry (delivered, dropped or expired).
    DeleteQueueEntry {
        /// The client.
        client_id: ClientId,
        /// Its position.
        seq: u64,
    },
    /// An inbound QoS 2 packet id awaiting PUBREL.
    PutInboundQos2 {
        /// The client.
        client_id: ClientId,
        /// The packet id.
        packet_id: PacketId,
    },
    /// An inbound QoS 2 packet id was released.
    DeleteInboundQos2 {
        /// The client.
        client_id: ClientId,
        /// The packet id.
        packet_id: PacketId,
    },
    /// Store the retained message of its topic with its version; an empty
    /// payload is a tombstone (a cleared topic, in a cluster).
    PutRetained(Arc<Message>, RetainVersion),
    /// Delete the retained message of a topic.
    DeleteRetained(TopicName),
}

/// A queue entry as recovered.
#[derive(Debug, Clone)]
pub struct RestoredEntry {
    /// Its position in the client's queue.
    pub seq: u64,
    /// The shard's id of the stored message.
    pub message_id: MessageId,
    /// The message (one `Arc` per stored message).
    pub msg: Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// Flow state.
    pub state: OutState,
}

/// A session as recovered.
#[derive(Debug, Clone)]
pub struct RestoredSession {
    /// The client.
    pub client_id: ClientId,
    /// The stored record (`disconnected_at: None`: it was connected when
    /// the broker stopped; it is treated as disconnected at restart, and its
    /// will goes out as for any connection lost).
    pub session: SessionImage,
    /// Its subscriptions.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// Its queue in order; entries in flight first.
    pub queue: Vec<RestoredEntry>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<PacketId>,
}

/// Everything a shard gets back at start.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The sessions whose home is this shard.
    pub sessions: Vec<RestoredSession>,
    /// Every retained message of the node (each shard holds a replica),
    /// with its version; tombstones (empty payloads) too.
    pub retained: Vec<(Arc<Message>, RetainVersion)>,
    /// Every stored subscription filter of the node with the shard that has
    /// it, so routes exist before the first publish.
    pub routes: Vec<(TopicFilter, ShardId)>,
    /// The first message id this shard may use.
    pub next_message_id: MessageId,
    /// Wills of sessions of this shard that expired while the broker was
    /// down: published at start.
    pub expired_wills: Vec<(ClientId, LastWill)>,
}
