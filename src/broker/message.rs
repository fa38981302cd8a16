//! What crosses shards: application messages and the typed [`ShardMsg`]
//! enum. Everything here is `Send`; shard-local state never is.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{GroupMsg, RetainVersion, ShardId};
use crate::codec::{PublishProperties, QoS};
use crate::topic::{TopicFilter, TopicName};
use crate::ClientId;

/// An application message after it was accepted from a publisher. Shared
/// (behind an `Arc`) by every shard and session it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never empty: topic aliases are resolved on arrival).
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// v5 properties to forward: payload format, content type, response
    /// topic, correlation data, user properties. Topic alias and
    /// subscription identifiers are per delivery and kept empty here; the
    /// message expiry interval is recomputed from `expires_at` per delivery.
    pub properties: PublishProperties,
    /// When the message expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local; `None` for wills published
    /// after their session ended and for `$SYS` messages.
    pub origin: Option<ClientId>,
    /// Its identity across a cluster (set where a client published it, in
    /// a cluster only): lets a session that just moved between nodes take
    /// a message once when it arrives both directly and forwarded by the
    /// node it left. `None` on one node, and for messages read back from
    /// storage.
    pub uid: Option<MessageUid>,
}

/// A message's identity across the cluster: the node and shard where a
/// client published it, and that shard's sequence number (seeded from
/// the wall clock when the cluster starts, so a node's next life does not
/// reuse the numbers of its last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageUid {
    /// The publishing node.
    pub node: u16,
    /// Its shard.
    pub shard: u16,
    /// The shard's number for it.
    pub seq: u64,
}

impl Message {
    /// `true` once `now` has reached the expiry time.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// The Message Expiry Interval to send at `now`: the remaining whole
    /// seconds, rounded up (v5 §3.3.2.3.3).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// Counters a shard reports to shard 0 for `$SYS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Open, connected MQTT connections.
    pub connections: u64,
    /// Sessions (connected or not).
    pub sessions: u64,
    /// Subscriptions of those sessions.
    pub subscriptions: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages dropped: queue full, too large for the client, expired.
    pub messages_dropped: u64,
    /// Retained messages held (each shard holds a full replica).
    pub retained: u64,
    /// Messages forwarded to other shards.
    pub forwarded: u64,
    /// QoS 1/2 messages in flight to clients (sent, not yet acknowledged).
    pub inflight: u64,
    /// Messages waiting in session queues.
    pub queued: u64,
    /// `messages_received` by QoS (index 0, 1, 2).
    pub received_by_qos: [u64; 3],
    /// `messages_sent` by delivered QoS.
    pub sent_by_qos: [u64; 3],
    /// `messages_dropped` by delivery QoS.
    pub dropped_by_qos: [u64; 3],
    /// Storage batches written.
    pub store_writes: u64,
    /// Their total write time, in microseconds.
    pub store_write_us: u64,
    /// The longest write since the previous report, in microseconds.
    pub store_write_max_us: u64,
    /// Times each [`Limit`] fired, indexed by `Limit as usize`. The I/O layer
    /// counts the limits it enforces itself (connections, connect rate) in
    /// its own metrics; the core counts the others.
    pub limit_hits: [u64; Limit::COUNT],
    /// PUBLISHes (index 0, wills included) and subscription filters (index 1)
    /// the ACL denied, and subscriptions removed because a changed ACL (or
    /// the identity of a resumed session) no longer allows them (index 2).
    pub acl_denied: [u64; 3],
    /// CONNECTs refused for their credentials: bad user name or password
    /// (index 0), not authorized, e.g. anonymous (index 1).
    pub auth_refused: [u64; 2],
}

/// A limit that refused, dropped or held back something; each firing is
/// counted (`vmqtt_limit_hits_total{limit="…"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections` of a shard or of the process: a new connection closed.
    Connections,
    /// `max_connect_rate`: a new connection closed.
    ConnectRate,
    /// `connect_timeout_ms`: no CONNECT in time.
    ConnectTimeout,
    /// `max_packet_size`: a packet larger than allowed.
    PacketSize,
    /// `max_topic_length`: a topic name or filter too long.
    TopicLength,
    /// `max_topic_levels`: a topic name or filter with too many levels.
    TopicLevels,
    /// `max_subscriptions`: a filter refused.
    Subscriptions,
    /// `receive_maximum`: a client sent more unacknowledged QoS 2 PUBLISHes.
    ReceiveMaximum,
    /// `max_inflight` (or the client's Receive Maximum): a message waits in
    /// the queue because the window is full.
    Inflight,
    /// `max_queued_messages`: a message dropped because the queue is full.
    Queued,
    /// `max_retained_backlog`: retained messages for a new subscription
    /// beyond what may wait to be sent.
    RetainedBacklog,
    /// `max_stored_messages`: a persistent session's queue holds that many.
    StoredMessages,
    /// `max_stored_bytes`: a persistent session's queue holds that many bytes.
    StoredBytes,
    /// `[storage] max_queued_bytes`: the process's persistent queues hold
    /// that many bytes in all.
    QueueBudget,
}

impl Limit {
    /// How many limits there are.
    pub const COUNT: usize = 14;
    /// Every limit, in `as usize` order.
    pub const ALL: [Limit; Limit::COUNT] = [
        Limit::Connections,
        Limit::ConnectRate,
        Limit::ConnectTimeout,
        Limit::PacketSize,
        Limit::TopicLength,
        Limit::TopicLevels,
        Limit::Subscriptions,
        Limit::ReceiveMaximum,
        Limit::Inflight,
        Limit::Queued,
        Limit::RetainedBacklog,
        Limit::StoredMessages,
        Limit::StoredBytes,
        Limit::QueueBudget,
    ];

    /// Its name in metrics: `connections`, `connect_rate`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectRate => "connect_rate",
            Limit::ConnectTimeout => "connect_timeout",
            Limit::PacketSize => "packet_size",
            Limit::TopicLength => "topic_length",
            Limit::TopicLevels => "topic_levels",
            Limit::Subscriptions => "subscriptions",
            Limit::ReceiveMaximum => "receive_maximum",
            Limit::Inflight => "inflight",
            Limit::Queued => "queued",
            Limit::RetainedBacklog => "retained_backlog",
            Limit::StoredMessages => "stored_messages",
            Limit::StoredBytes => "stored_bytes",
            Limit::QueueBudget => "queue_budget",
        }
    }
}

/// Work sent from one shard to another, in batches, over the channel mesh.
#[derive(Debug, Clone)]
pub enum ShardMsg {
    /// Deliver to this shard's non-shared subscribers whose filters match.
    Publish(Arc<Message>),
    /// [`ShardMsg::Publish`], answered with [`ShardMsg::Ack`] once the
    /// deliveries are stored: the publisher's PUBACK/PUBREC waits for it.
    PublishAcked {
        /// The message.
        msg: Arc<Message>,
        /// The publishing shard.
        from: ShardId,
        /// The token to answer with.
        token: u64,
    },
    /// To the client's home shard: a delivery another node forwarded for
    /// a session that left it (see `shard/moving.rs`); with `ack`, answered
    /// with [`ShardMsg::Ack`] once stored.
    Forwarded {
        /// The delivery.
        fwd: Box<super::Forward>,
        /// The shard and token to answer.
        ack: Option<(ShardId, u64)>,
    },
    /// To the home shard of the shared subscription `filter`
    /// (`$share/{group}/{filter}`): a message for one of its members.
    SharedPublish {
        /// The full shared filter.
        filter: TopicFilter,
        /// The message.
        msg: Arc<Message>,
        /// If set, the shard and token to answer [`ShardMsg::Ack`] to once
        /// the member that takes it has stored it (or the group queued it).
        ack: Option<(ShardId, u64)>,
    },
    /// To a group's home shard: a member joined, left, connected,
    /// disconnected, finished messages or handed some back.
    Group(GroupMsg),
    /// From a group's home shard: deliver `msg` to member `client`, a
    /// session on this shard.
    GroupDeliver {
        /// The full shared filter.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
        /// The message.
        msg: Arc<Message>,
        /// As in [`ShardMsg::SharedPublish`]: answered once stored.
        ack: Option<(ShardId, u64)>,
    },
    /// Update the retained replica: store, or delete for an empty payload.
    Retain {
        /// The message.
        msg: Arc<Message>,
        /// The update's version: applied only if newer than the replica's.
        version: RetainVersion,
        /// The publishing shard.
        from: ShardId,
        /// If set, answer [`ShardMsg::Ack`] once applied: the publisher's
        /// PUBACK waits until every replica has the message.
        token: Option<u64>,
    },
    /// Shard `from` now has subscribers for `filter`.
    RouteAdd {
        /// The filter (full, `$share/…` included).
        filter: TopicFilter,
        /// The shard that has subscribers.
        from: ShardId,
        /// If set, answer [`ShardMsg::Ack`] once applied: the SUBACK waits
        /// until every shard routes the filter.
        token: Option<u64>,
    },
    /// A `RouteAdd`, `Retain`, `PublishAcked` or `SharedPublish` with this
    /// token was applied (and stored).
    Ack {
        /// The token.
        token: u64,
        /// A forwarded publish reached at least one session here.
        delivered: bool,
        /// A forwarded publish was refused by at least one session's queue
        /// bound here.
        refused: bool,
    },
    /// Shard `from` no longer has subscribers for `filter`.
    RouteRemove {
        /// The filter.
        filter: TopicFilter,
        /// The shard.
        from: ShardId,
    },
    /// A session message from node `from` for the home shard of its
    /// client (passed on by the shard that received it).
    Session {
        /// The sending node.
        from: super::NodeId,
        /// The message.
        msg: super::SessionMsg,
    },
    /// From shard 0: this node is fenced (cut off from etcd longer than
    /// its lease and from most of its peers) or no longer.
    Fenced(bool),
    /// Periodic counters for `$SYS`, sent to shard 0.
    Stats {
        /// The reporting shard.
        from: ShardId,
        /// Its counters.
        stats: Box<ShardStats>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cross_shard_types_are_send() {
        assert_send_sync::<Message>();
        assert_send_sync::<ShardMsg>();
    }

    #[test]
    fn remaining_expiry_rounds_up() {
        let now = Instant::now();
        let m = Message {
            topic: TopicName::from_static("a").unwrap(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: Some(now + Duration::from_millis(1500)),
            origin: None,
            uid: None,
        };
        assert_eq!(m.remaining_expiry(now), Some(2));
        assert!(!m.is_expired(now));
        assert!(m.is_expired(now + Duration::from_secs(2)));
        assert_eq!(m.remaining_expiry(now + Duration::from_secs(3)), Some(0));
    }
}
