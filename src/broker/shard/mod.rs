//! [`ShardCore`]: the sans-IO state of one shard.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::alias::{AliasPlan, OutboundAliases};
use super::persist::{OutState, QueueImage, Restored, SessionImage, StoreOp};
use super::session::{Delivery, Dropped, Gauges, Rec, Stage, StoreRef, StoredBounds, Subscription};
use super::{
    home_shard, Authorizer, ConnId, Identity, Limit, Message, MessageUid, NodeId, QueueBudget,
    RetainVersion, RetainedStore, Session, ShardId, ShardMsg, ShardStats,
};
use crate::codec::{
    self, AckProperties, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::topic::{TopicFilter, TopicName};
use crate::trie::SubscriptionTrie;
use crate::{BatchId, ByteStr, ClientId, MessageId, PacketId};

mod cluster;
mod connect;
mod connection;
mod durable;
mod groups;
mod moving;
mod publish;
mod registration;
mod router;
mod session_msg;
mod shared;
mod stats;
mod subscribe;
mod takeover;
mod timers;

use cluster::ClusterState;
pub use cluster::{ClusterOut, ClusterStatus};
use connect::peek_connect_level;
use connection::{no_subscribers, outbound_publish, quota_exceeded, Conn, ConnState};
use durable::Store;
pub use groups::{
    glob_match, AcrossNodes, GroupInfo, GroupMsg, MemberState, SharedConfig, Strategy,
};
use groups::{group_home, Dispatch, GroupTable, Offer};
pub use moving::{Forward, MOVE_GRACE};
use moving::{Moved, Seen};
use publish::Outcome;
use router::{Agg, Pending, RouteTable, Targets, Waiter};
pub use session_msg::{SessionMsg, SessionTransfer, TransferEntry};
use subscribe::same_authorizer;
pub use takeover::{CLAIM_RETRY, CLAIM_TIMEOUT, REGISTER_RETRY};
use timers::Timer;

/// Limits and settings of one shard's MQTT behaviour.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Largest packet accepted from clients, in bytes (sent as Maximum Packet
    /// Size in CONNACK).
    pub max_packet_size: u32,
    /// If non-zero, the largest keep alive granted; a client asking for more
    /// (or for 0) gets this as Server Keep Alive (v5).
    pub max_keepalive: u16,
    /// Receive Maximum: inbound QoS 2 messages awaiting PUBREL per client.
    pub receive_maximum: u16,
    /// Topic Alias Maximum accepted from clients (0 disables aliases).
    pub topic_alias_maximum: u16,
    /// Whether the broker uses topic aliases towards v5 clients that allow
    /// them (Topic Alias Maximum in CONNECT): a per-connection LRU of the
    /// topics it delivers, at most the client's maximum.
    pub outbound_topic_aliases: bool,
    /// Outbound QoS 1/2 messages in flight per session (further bounded by
    /// the client's Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session behind the inflight window or while the
    /// client is away; beyond it messages are dropped and counted.
    pub max_queued_messages: usize,
    /// QoS 1/2 messages queued for one persistent session (they are in the
    /// log); more are refused, counted ([`Limit::StoredMessages`]) and
    /// reported. 0 = no limit.
    pub max_stored_messages: usize,
    /// Bytes of messages ([`queue_cost`](super::session)) queued for one
    /// persistent session; 0 = no limit ([`Limit::StoredBytes`]).
    pub max_stored_bytes: u64,
    /// The process-wide budget of bytes queued for persistent sessions
    /// ([`Limit::QueueBudget`]); `None` = no limit.
    pub queue_budget: Option<Arc<QueueBudget>>,
    /// Retained messages a session may have waiting to be sent for its new
    /// subscriptions (they go out paced by the window and the socket); more
    /// are dropped and counted ([`Limit::RetainedBacklog`]). 0 = no limit.
    pub max_retained_backlog: usize,
    /// Bytes of encoded output buffered per connection before QoS 0 messages
    /// are dropped and QoS 1/2 wait in the session queue.
    pub max_output_buffer: usize,
    /// A connection that has not sent CONNECT by then is closed.
    pub connect_timeout: Duration,
    /// Largest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Interval of `$SYS` updates.
    pub sys_interval: Duration,
    /// Distinguishes server-assigned client ids of this process from those
    /// of earlier runs (e.g. the start time).
    pub instance: u64,
    /// Whether durable storage is attached: persistent sessions and
    /// retained messages become [`StoreOp`]s, and replies wait for them
    /// ([`ShardCore::poll_store`]). Fixed for the life of the core.
    pub persistence: bool,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: u32,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: u32,
    /// Subscriptions one session may hold; 0 = no limit.
    pub max_subscriptions: u32,
    /// Publish and subscribe permissions; `None` allows everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Connections this shard serves at once; 0 = no limit. Enforced by the
    /// I/O layer (which reports firings with [`ShardCore::note_limit`]).
    pub max_connections: u32,
    /// New connections accepted per second by this shard; 0 = no limit.
    /// Enforced by the I/O layer.
    pub max_connect_rate: u32,
    /// Shared subscriptions: strategies, redelivery, the groups' queues.
    pub shared: SharedConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_keepalive: 0,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            outbound_topic_aliases: true,
            max_inflight: 1024,
            max_queued_messages: 1000,
            max_output_buffer: 256 * 1024,
            max_retained_backlog: 1_000_000,
            max_stored_messages: 100_000,
            max_stored_bytes: 64 << 20,
            queue_budget: None,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: u32::MAX,
            retain_available: true,
            sys_interval: Duration::from_secs(10),
            instance: 0,
            persistence: false,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            max_subscriptions: 10_000,
            authorizer: None,
            max_connections: 0,
            max_connect_rate: 0,
            shared: SharedConfig::default(),
        }
    }
}

/// What the I/O layer must do for a connection, or should log about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoEvent {
    /// A CONNECT was accepted (for logs and metrics).
    Connected {
        /// The connection.
        conn: ConnId,
        /// The client identifier (assigned one included).
        client_id: ClientId,
        /// Its protocol version.
        version: ProtocolVersion,
        /// Whether a stored session was resumed.
        session_present: bool,
    },
    /// Messages for a session were dropped at a limit (for a log line; at
    /// most one per session per [`LIMITED_LOG_INTERVAL`], with the count
    /// since the last one).
    Limited {
        /// The session.
        client_id: ClientId,
        /// The limit that dropped them.
        limit: Limit,
        /// Messages dropped at it since the last event for this session.
        dropped: u64,
    },
    /// Output is waiting: call [`ShardCore::take_output`] and write it.
    Wake(ConnId),
    /// Write what output is left, then close the socket and call
    /// [`ShardCore::handle_closed`].
    Close(ConnId, CloseReason),
}

/// Shortest time between two [`IoEvent::Limited`] of one session.
pub const LIMITED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// A malformed packet or a protocol error (v5 reason code).
    ProtocolError(ReasonCode),
    /// No packet within 1.5 × keep alive.
    KeepAliveTimeout,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Another connection took over the session.
    TakenOver,
    /// CONNECT refused (CONNACK with a failure code was sent).
    Refused(ReasonCode),
    /// The broker is stopping.
    ShuttingDown,
}

/// The state of one shard: its connections and sessions, their
/// subscriptions, its copy of the route table and of the retained messages.
///
/// Lives on one core; reached only from that core's executor.
#[derive(Debug)]
pub struct ShardCore {
    id: ShardId,
    shards: usize,
    config: CoreConfig,
    /// Boxed, as are sessions: a map's spare buckets then cost a pointer,
    /// not a whole entry (memory per idle connection).
    conns: HashMap<ConnId, Box<Conn>, crate::hash::FastState>,
    next_conn: u64,
    next_assigned: u64,
    /// The last session generation given out (see `Session::generation`):
    /// unique on this shard, so a timer of an ended session never fires for
    /// a later session of the same client id. Restored sessions have 1.
    generations: u64,
    sessions: HashMap<ClientId, Box<Session>, crate::hash::FastState>,
    /// Local subscriptions and every shard's routes.
    routes: RouteTable,
    /// The shared-subscription groups whose home is this shard.
    groups: GroupTable,
    /// Reports for groups whose home is this shard, applied in order by
    /// [`ShardCore::tell_group_home`] (never recursively).
    group_local: VecDeque<GroupMsg>,
    group_flushing: bool,
    /// The time of the latest input, for the few paths that change groups
    /// without being handed the time (an unsubscribe).
    clock: Instant,
    retained: RetainedStore,
    outbox: Vec<Vec<ShardMsg>>,
    events: VecDeque<IoEvent>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Counters, and the gauges `connections` and `subscriptions`, kept as
    /// things change (see [`ShardCore::stats`]).
    stats: ShardStats,
    /// In-flight and queued messages over the sessions, which count into it.
    gauges: std::rc::Rc<Gauges>,
    /// On shard 0: latest counters from every shard.
    sys_stats: Vec<ShardStats>,
    started: Instant,
    scratch: HashMap<ClientId, Agg, crate::hash::FastState>,
    next_token: u64,
    /// Replies held until every other shard has applied an update.
    pending: HashMap<u64, Pending, crate::hash::FastState>,
    /// Durable storage (see [`super::persist`]).
    store: Store,
    /// The fate of the message routed by the current input.
    outcome: Outcome,
    /// The token deliveries forwarded to a moved session's new node carry
    /// during the current input (see `moving.rs`): what waits for the
    /// input's acknowledgement waits for theirs too.
    relay: Option<u64>,
    /// Subscriptions the ACL no longer allows, removed and not yet taken by
    /// [`ShardCore::take_revoked`] (for logs), and how many more were.
    revoked: (Vec<(ClientId, TopicFilter)>, u64),
    /// Other nodes' routes and what goes to them; `None` on a single node.
    cluster: Option<Box<ClusterState>>,
}

impl ShardCore {
    /// Shard `id` of `shards`, starting at `now`.
    pub fn new(id: ShardId, shards: usize, config: CoreConfig, now: Instant) -> Self {
        let shards = shards.max(1);
        let mut core = Self {
            id,
            shards,
            conns: HashMap::default(),
            next_conn: 0,
            next_assigned: 0,
            generations: 1,
            sessions: HashMap::default(),
            routes: RouteTable::default(),
            groups: GroupTable::with_seed(
                (config.instance ^ ((id.get() as u64) << 48)).wrapping_add(0x9e37_79b9),
            ),
            group_local: VecDeque::new(),
            group_flushing: false,
            clock: now,
            retained: RetainedStore::new(),
            outbox: (0..shards).map(|_| Vec::new()).collect(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            stats: ShardStats::default(),
            gauges: std::rc::Rc::default(),
            sys_stats: vec![ShardStats::default(); shards],
            started: now,
            scratch: HashMap::default(),
            next_token: 0,
            relay: None,
            pending: HashMap::default(),
            store: Store {
                next_batch: BatchId(1),
                next_msg_id: MessageId(1),
                ..Store::default()
            },
            outcome: Outcome::default(),
            config,
            revoked: (Vec::new(), 0),
            cluster: None,
        };
        // `$SYS` is published (retained) at once, then every interval, so
        // a subscriber after start finds every topic without waiting.
        core.timers.push(Reverse((now, Timer::Sys)));
        core
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The settings.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// New settings (a configuration reload). Limits apply from now on;
    /// what was granted in an earlier CONNACK (keep alive, receive maximum,
    /// topic alias maximum) stays as granted for connections already open.
    pub fn set_config(&mut self, config: CoreConfig) {
        let instance = self.config.instance;
        let persistence = self.config.persistence;
        let queue_budget = self.config.queue_budget.clone();
        let acl_changed = !same_authorizer(&self.config.authorizer, &config.authorizer);
        self.config = CoreConfig {
            instance,
            persistence,
            queue_budget,
            ..config
        };
        self.groups.reconfigure(&self.config.shared);
        if acl_changed {
            self.recheck_subscriptions();
        }
    }

    /// Gives back the room of maps that once held many more entries than
    /// now (after a mass disconnect): a map at a quarter of its capacity or
    /// less shrinks to fit. Called about once a second; O(1) when nothing
    /// shrinks.
    pub fn release_memory(&mut self) {
        shrink_if_sparse(&mut self.conns);
        shrink_if_sparse(&mut self.sessions);
        self.routes.release_memory();
        if is_sparse(self.timers.len(), self.timers.capacity()) {
            self.timers.shrink_to_fit();
        }
        if is_sparse(self.events.len(), self.events.capacity()) {
            self.events.shrink_to_fit();
        }
    }

    /// Counts a limit the I/O layer enforced (connections, connect rate, a
    /// CONNECT that did not arrive in time), for the metrics and `$SYS`.
    pub fn note_limit(&mut self, limit: Limit) {
        self.stats.limit_hits[limit as usize] += 1;
    }

    /// The session of `client_id`, if it lives here.
    pub fn session(&self, client_id: &str) -> Option<&Session> {
        self.sessions.get(client_id).map(|s| &**s)
    }

    // ------------------------------------------------------------ inputs

    /// A new network connection, anonymous (no verified user name); it must
    /// send CONNECT within the connect timeout.
    pub fn handle_open(&mut self, now: Instant) -> ConnId {
        self.handle_open_as(now, Identity::Anonymous)
    }

    /// A new network connection whose credentials the I/O layer has already
    /// checked: `identity` is what its CONNECT is answered with (refused) or
    /// what the ACL sees (user name).
    pub fn handle_open_as(&mut self, now: Instant, identity: Identity) -> ConnId {
        self.clock = now;
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(
            id,
            Box::new(Conn {
                state: ConnState::AwaitConnect,
                client_id: None,
                version: ProtocolVersion::V3_1_1,
                keep_alive: Duration::ZERO,
                last_rx: now,
                out: BytesMut::new(),
                held: None,
                gates: VecDeque::new(),
                woken: false,
                aliases_in: HashMap::default(),
                aliases_out: OutboundAliases::default(),
                client_receive_max: u16::MAX,
                client_max_packet: u32::MAX,
                problem_info: true,
                connect_expiry_zero: true,
                receive_max: 0,
                alias_max: 0,
                max_packet: self.config.max_packet_size,
                identity,
            }),
        );
        self.timers.push(Reverse((
            now + self.config.connect_timeout,
            Timer::ConnectTimeout(id),
        )));
        id
    }

    /// Bytes read from a connection: decodes and handles every complete
    /// packet in `buf`, leaving a partial one there.
    pub fn handle_bytes(&mut self, now: Instant, conn_id: ConnId, buf: &mut BytesMut) {
        self.clock = now;
        loop {
            self.store.begin_input();
            let (version, max_packet, state) = match self.conns.get(&conn_id) {
                Some(c) => (c.version, c.max_packet, c.state),
                None => return,
            };
            let state = &state;
            if *state == ConnState::Closing {
                buf.clear();
                return;
            }
            if *state == ConnState::Claiming {
                // Behind a CONNECT being claimed: kept for when it is done.
                if let Some(c) = self.conns.get_mut(&conn_id) {
                    c.held.get_or_insert_default().extend_from_slice(buf);
                }
                buf.clear();
                return;
            }
            if let Some(c) = self.conns.get_mut(&conn_id) {
                if let Some(mut held) = c.held.take() {
                    held.extend_from_slice(buf);
                    *buf = *held;
                }
            }
            let awaiting_connect = *state == ConnState::AwaitConnect;
            let level = if awaiting_connect {
                peek_connect_level(buf)
            } else {
                None
            };
            match codec::decode(buf, version, max_packet) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    // Keep alive counts whole packets, not bytes
                    // ([MQTT-3.1.2-24]): a client dribbling one packet
                    // byte by byte is still closed in time.
                    if let Some(c) = self.conns.get_mut(&conn_id) {
                        c.last_rx = now;
                    }
                    self.handle_packet(now, conn_id, packet);
                }
                Err(e) => {
                    buf.clear();
                    self.decode_failed(now, conn_id, awaiting_connect, level, &e);
                    return;
                }
            }
        }
    }

    /// The socket closed (EOF, error, or after an [`IoEvent::Close`]).
    pub fn handle_closed(&mut self, now: Instant, conn_id: ConnId) {
        self.clock = now;
        self.store.begin_input();
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return;
        };
        conn.set_state(ConnState::Closing, &mut self.stats.connections);
        if let Some(cid) = conn.client_id {
            // Closed without a DISCONNECT from the client: abnormal.
            self.detach(now, &cid, conn_id, true);
        }
    }

    /// The broker is stopping: every connection is closed, MQTT 5 clients
    /// first get DISCONNECT 0x8B (Server shutting down). Wills are not
    /// published: the client did nothing wrong, and the server is going away.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.clock = now;
        self.store.begin_input();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.state == ConnState::Closing {
                continue;
            }
            let notify = conn.state == ConnState::Connected && conn.version.is_v5();
            conn.set_state(ConnState::Closing, &mut self.stats.connections);
            let cid = conn.client_id.take();
            if notify {
                let d = Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN);
                self.send(id, &Packet::Disconnect(d));
            }
            self.events
                .push_back(IoEvent::Close(id, CloseReason::ShuttingDown));
            if let Some(cid) = cid {
                self.detach(now, &cid, id, false);
            }
        }
    }

    /// A batch of messages from another shard.
    pub fn handle_shard_msgs(&mut self, now: Instant, msgs: Vec<ShardMsg>) {
        for msg in msgs {
            self.handle_shard_msg(now, msg);
        }
    }

    /// One message from another shard.
    pub fn handle_shard_msg(&mut self, now: Instant, msg: ShardMsg) {
        self.clock = now;
        self.store.begin_input();
        self.outcome = Outcome::default();
        match msg {
            ShardMsg::Publish(m) => self.deliver_local(now, &m),
            ShardMsg::Session { from, msg } => self.handle_session_msg(now, from, msg),
            ShardMsg::Fenced(f) => {
                if let Some(t) = self.takeover() {
                    t.fenced = f;
                }
            }
            ShardMsg::PublishAcked { msg, from, token } => {
                let relay = self.new_token();
                self.relay = Some(relay);
                self.deliver_local(now, &msg);
                self.relay = None;
                self.relay_done(Some(relay), Waiter::Shard { to: from, token });
            }
            ShardMsg::Forwarded { fwd, ack } => self.handle_forwarded(now, *fwd, ack),
            ShardMsg::SharedPublish { filter, msg, ack } => {
                self.group_publish(now, &filter, msg, ack);
            }
            ShardMsg::Group(m) => self.tell_group_home(now, m),
            ShardMsg::GroupDeliver {
                filter,
                client,
                msg,
                ack,
            } => {
                self.deliver_group(now, &filter, &client, msg);
                if let Some((from, token)) = ack {
                    self.ack(now, from, Some(token));
                }
            }
            ShardMsg::Retain {
                msg,
                version,
                from,
                token,
            } => {
                self.apply_retained(&msg, version);
                self.ack(now, from, token);
            }
            ShardMsg::RouteAdd {
                filter,
                from,
                token,
            } => {
                self.routes.add_route(&filter, from);
                self.cluster_route(&filter, true);
                self.ack(now, from, token);
            }
            ShardMsg::Ack {
                token,
                delivered,
                refused,
            } => self.handle_ack(now, token, delivered, refused),
            ShardMsg::RouteRemove { filter, from } => {
                self.routes.remove_route(&filter, from);
                self.cluster_route(&filter, false);
            }
            ShardMsg::Stats { from, stats } => {
                if let Some(slot) = self.sys_stats.get_mut(from.get()) {
                    *slot = *stats;
                }
            }
        }
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            self.fire(now, timer);
        }
    }

    /// Whether `conn_id` has output not yet taken (e.g. held until a
    /// storage batch is written): a closing connection waits for it.
    pub fn has_output(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| !c.out.is_empty())
    }

    /// The next I/O event.
    pub fn poll_event(&mut self) -> Option<IoEvent> {
        self.events.pop_front()
    }

    /// Takes the bytes to write to `conn_id`, then refills its buffer from
    /// the session queue for the next write.
    /// Output that waits for storage stays (see [`ShardCore::poll_store`]).
    pub fn take_output(&mut self, now: Instant, conn_id: ConnId) -> Option<BytesMut> {
        self.clock = now;
        self.store.begin_input();
        let conn = self.conns.get_mut(&conn_id)?;
        conn.woken = false;
        let durable = self.store.durable;
        while conn.gates.front().is_some_and(|g| g.1 <= durable) {
            conn.gates.pop_front();
        }
        let ready = conn.gates.front().map_or(conn.out.len(), |g| g.0);
        let out = conn.out.split_to(ready);
        if !conn.gates.is_empty() {
            for g in conn.gates.iter_mut() {
                g.0 -= ready;
            }
            self.store.gated.insert(conn_id);
        }
        if let Some(cid) = conn.client_id.clone() {
            self.pump(now, &cid);
        }
        (!out.is_empty()).then_some(out)
    }

    /// Batches for other shards, as `(destination, messages)`.
    pub fn poll_shard_msgs(&mut self) -> impl Iterator<Item = (ShardId, Vec<ShardMsg>)> + '_ {
        self.outbox
            .iter_mut()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (ShardId::new(i as u16), std::mem::take(v)))
    }

    /// The next deadline: call [`ShardCore::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

/// Shrinks `map` to fit when it holds a quarter of its capacity or less
/// (and more than a handful of buckets would be freed).
pub fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if is_sparse(map.len(), map.capacity()) {
        map.shrink_to_fit();
    }
}

/// A collection at a quarter of its capacity or less, with more than a
/// handful of slots to give back.
fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len * 4 <= capacity
}
#[cfg(test)]
#[test]
fn per_connection_state_stays_small() {
    // Every idle connection holds one `Conn` and (usually) one `Session`:
    // what is rare (a will, big maps) is boxed or lazily allocated. A field
    // added inline shows here (docs/BENCHMARKS.md, memory per connection).
    assert!(
        std::mem::size_of::<Conn>() <= 256,
        "{}",
        std::mem::size_of::<Conn>()
    );
    assert!(
        std::mem::size_of::<Session>() <= 384,
        "{}",
        std::mem::size_of::<Session>()
    );
}
