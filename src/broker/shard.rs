//! [`ShardCore`]: the sans-IO state of one shard.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::alias::{AliasPlan, OutboundAliases};
use super::persist::{OutState, QueueImage, Restored, SessionImage, StoreOp};
use super::session::{Delivery, Dropped, Rec, Stage, StoreRef, StoredBounds, Subscription};
use super::{
    home_shard, Authorizer, ConnId, Identity, Limit, Message, QueueBudget, RetainedStore, Session,
    ShardId, ShardMsg, ShardStats,
};
use crate::codec::{
    self, AckProperties, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::topic::{TopicFilter, TopicName};
use crate::trie::SubscriptionTrie;
use crate::{ByteStr, ClientId, PacketId};

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

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    AwaitConnect,
    Connected,
    Closing,
}

/// A network connection on this shard.
#[derive(Debug)]
struct Conn {
    state: ConnState,
    /// The session this connection is attached to.
    client_id: Option<ClientId>,
    version: ProtocolVersion,
    keep_alive: Duration,
    last_rx: Instant,
    out: BytesMut,
    /// Output held back until storage batches are written: `(offset,
    /// batch)` = the bytes of `out` from `offset` on wait for `batch`.
    gates: VecDeque<(usize, u64)>,
    woken: bool,
    aliases_in: HashMap<u16, TopicName, crate::hash::FastState>,
    /// Topic aliases towards the client (none until CONNECT allows them).
    aliases_out: OutboundAliases,
    client_receive_max: u16,
    client_max_packet: u32,
    problem_info: bool,
    /// Session Expiry Interval in CONNECT was 0 (a DISCONNECT may not raise it).
    connect_expiry_zero: bool,
    /// Receive Maximum granted in CONNACK.
    receive_max: u16,
    /// Topic Alias Maximum granted in CONNACK.
    alias_max: u16,
    /// Maximum Packet Size accepted from this client (sent in CONNACK).
    max_packet: u32,
    /// Who the I/O layer found this connection to be.
    identity: Identity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    shard: ShardId,
    /// For a shared subscription, its full filter.
    shared: Option<TopicFilter>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<ClientId>,
    next: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ConnectTimeout(ConnId),
    KeepAlive(ConnId),
    Will(ClientId, u64),
    SessionExpiry(ClientId, u64),
    Sys,
}

#[derive(Debug, Default)]
struct Agg {
    qos: u8,
    retain_as_published: bool,
    ids: Vec<u32>,
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
    /// Non-shared subscriptions of local sessions.
    subs: SubscriptionTrie<ClientId, Subscription>,
    /// Shared subscriptions with members on this shard, by full filter.
    shared: HashMap<TopicFilter, SharedGroup, crate::hash::FastState>,
    /// Local subscriber count per full filter (route announcements).
    local_filters: HashMap<TopicFilter, usize, crate::hash::FastState>,
    /// This shard's copy of the route table: filter → shards.
    routes: SubscriptionTrie<RouteKey, ()>,
    /// Round-robin position per shared filter, for publishes from here.
    shared_rr: HashMap<TopicFilter, usize, crate::hash::FastState>,
    retained: RetainedStore,
    outbox: Vec<Vec<ShardMsg>>,
    events: VecDeque<IoEvent>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    stats: ShardStats,
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
    /// Subscriptions the ACL no longer allows, removed and not yet taken by
    /// [`ShardCore::take_revoked`] (for logs), and how many more were.
    revoked: (Vec<(ClientId, TopicFilter)>, u64),
}

/// The shard's side of durable storage: changes not yet written, batch
/// numbers, stored messages and their reference counts.
#[derive(Debug, Default)]
struct Store {
    /// Changes not yet taken by [`ShardCore::poll_store`].
    ops: Vec<StoreOp>,
    /// The number the next batch gets (from 1).
    next_batch: u64,
    /// The last batch taken.
    taken: u64,
    /// The last batch written.
    durable: u64,
    /// The next stored message id.
    next_msg_id: u64,
    /// Queue entries referring to each stored message.
    refs: HashMap<u64, u32, crate::hash::FastState>,
    /// The message stored last, so that one routed to many sessions of
    /// this shard is stored once.
    last: Option<(Arc<Message>, u64)>,
    /// Acknowledgements to other shards held until storage caught up:
    /// `(batch, shard, token)`.
    held_acks: VecDeque<(u64, ShardId, ShardMsg)>,
    /// Connections with output held back.
    gated: HashSet<ConnId, crate::hash::FastState>,
    /// `ops.len()` when the current input (packet, shard message, timer)
    /// began: ops past it are this input's own changes.
    mark: usize,
    /// While replies held in a [`Pending`] go out: the batch they wait for.
    replying_after: Option<u64>,
}

impl Store {
    /// The batch that output produced now must wait for, if any.
    fn barrier(&self) -> Option<u64> {
        if !self.ops.is_empty() {
            Some(self.next_batch)
        } else if self.taken > self.durable {
            Some(self.taken)
        } else {
            None
        }
    }

    /// A new input begins: changes from here on are its own.
    fn begin_input(&mut self) {
        self.mark = self.ops.len();
    }

    /// The batch that output caused by the current input must wait for:
    /// the one its own changes go into, if it made any. Clean sessions wait
    /// only for this (and for what a [`Pending`] reply waited for), so a
    /// stalled log (a full disk) holds no traffic that needs no storage.
    fn own_barrier(&self) -> Option<u64> {
        let own = (self.ops.len() > self.mark).then_some(self.next_batch);
        let pending = self.replying_after.filter(|b| *b > self.durable);
        own.max(pending)
    }

    /// One more queue entry refers to `msg`; returns its id, storing it
    /// first if needed.
    fn retain(&mut self, msg: &Arc<Message>) -> u64 {
        let id = match &self.last {
            Some((m, id)) if Arc::ptr_eq(m, msg) => *id,
            _ => {
                let id = self.next_msg_id;
                self.next_msg_id += 1;
                self.ops.push(StoreOp::PutMessage {
                    id,
                    msg: msg.clone(),
                });
                self.last = Some((msg.clone(), id));
                id
            }
        };
        *self.refs.entry(id).or_insert(0) += 1;
        id
    }

    /// One queue entry less refers to message `id`; the last one deletes it.
    fn release(&mut self, id: u64) {
        let Some(n) = self.refs.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&id);
            self.ops.push(StoreOp::DeleteMessage(id));
            if self.last.as_ref().is_some_and(|(_, l)| *l == id) {
                self.last = None;
            }
        }
    }

    /// Deletes a queue entry and releases its message.
    fn dequeue(&mut self, client_id: &ClientId, r: StoreRef) {
        self.ops.push(StoreOp::DeleteQueueEntry {
            client_id: client_id.clone(),
            seq: r.seq,
        });
        self.release(r.msg_id);
    }

    /// Writes the queue entry of `d` at `state`.
    fn put_entry(&mut self, client_id: &ClientId, d: &Delivery, state: OutState) {
        let Some(r) = d.store else { return };
        self.ops.push(StoreOp::PutQueueEntry {
            client_id: client_id.clone(),
            seq: r.seq,
            entry: QueueImage {
                message: r.msg_id,
                qos: d.qos,
                retain: d.retain,
                sub_ids: d.sub_ids.clone(),
                state,
            },
        });
    }
}

/// What became of the message being routed on this shard: sessions that
/// took it, and sessions whose queue bound refused it.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    delivered: u32,
    refused: u32,
}

/// A PUBACK or PUBREC like `packet`, with reason 0x97 (quota exceeded).
fn quota_exceeded(packet: &Packet) -> Packet {
    let rc = ReasonCode::QUOTA_EXCEEDED;
    match packet {
        Packet::PubAck(r) => Packet::PubAck(PubResponse::with_reason(r.packet_id, rc)),
        Packet::PubRec(r) => Packet::PubRec(PubResponse::with_reason(r.packet_id, rc)),
        other => other.clone(),
    }
}

/// Replies to a client that wait for acknowledgements from other shards.
#[derive(Debug)]
struct Pending {
    remaining: usize,
    /// A publish whose acknowledgement says 0x97 (quota exceeded) if it
    /// reached no session and a queue bound refused it (v5, every target
    /// reports).
    quota_check: bool,
    /// Some target delivered the message.
    delivered: bool,
    /// Some target's queue bound refused it.
    refused: bool,
    /// The storage batch the replies also wait for (the changes the
    /// request made on this shard), if any.
    after: Option<u64>,
    conn: ConnId,
    client: ClientId,
    replies: Vec<Packet>,
    /// Filters whose retained messages go out after the SUBACK.
    retained_for: Vec<(TopicFilter, Subscription)>,
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
            subs: SubscriptionTrie::new(),
            shared: HashMap::default(),
            local_filters: HashMap::default(),
            routes: SubscriptionTrie::new(),
            shared_rr: HashMap::default(),
            retained: RetainedStore::new(),
            outbox: (0..shards).map(|_| Vec::new()).collect(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            stats: ShardStats::default(),
            sys_stats: vec![ShardStats::default(); shards],
            started: now,
            scratch: HashMap::default(),
            next_token: 0,
            pending: HashMap::default(),
            store: Store {
                next_batch: 1,
                next_msg_id: 1,
                ..Store::default()
            },
            outcome: Outcome::default(),
            config,
            revoked: (Vec::new(), 0),
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
        if acl_changed {
            self.recheck_subscriptions();
        }
    }

    /// Current counters.
    /// Gauges are computed by walking the connections and sessions, so call
    /// this about once a second, not per packet.
    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats;
        (s.subscriptions, s.inflight, s.queued) = (0, 0, 0);
        s.connections = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Connected)
            .count() as u64;
        s.sessions = self.sessions.len() as u64;
        for session in self.sessions.values() {
            s.subscriptions += session.subscriptions.len() as u64;
            s.inflight += session.inflight_len() as u64;
            s.queued += session.queued_len() as u64;
        }
        s.retained = self.retained.len() as u64;
        s
    }

    /// Gives back the room of maps that once held many more entries than
    /// now (after a mass disconnect): a map at a quarter of its capacity or
    /// less shrinks to fit. Called about once a second; O(1) when nothing
    /// shrinks.
    pub fn release_memory(&mut self) {
        shrink_if_sparse(&mut self.conns);
        shrink_if_sparse(&mut self.sessions);
        shrink_if_sparse(&mut self.local_filters);
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
        loop {
            self.store.begin_input();
            let (version, max_packet, state) = match self.conns.get(&conn_id) {
                Some(c) => (c.version, c.max_packet, &c.state),
                None => return,
            };
            if *state == ConnState::Closing {
                buf.clear();
                return;
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
        self.store.begin_input();
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        if let Some(cid) = conn.client_id {
            // Closed without a DISCONNECT from the client: abnormal.
            self.detach(now, &cid, conn_id, true);
        }
    }

    /// The broker is stopping: every connection is closed, MQTT 5 clients
    /// first get DISCONNECT 0x8B (Server shutting down). Wills are not
    /// published: the client did nothing wrong, and the server is going away.
    pub fn handle_shutdown(&mut self, now: Instant) {
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
            conn.state = ConnState::Closing;
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
        self.store.begin_input();
        self.outcome = Outcome::default();
        match msg {
            ShardMsg::Publish(m) => self.deliver_local(now, &m),
            ShardMsg::PublishAcked { msg, from, token } => {
                self.deliver_local(now, &msg);
                self.ack(from, Some(token));
            }
            ShardMsg::SharedPublish { filter, msg, ack } => {
                self.deliver_shared(now, &filter, &msg);
                if let Some((from, token)) = ack {
                    self.ack(from, Some(token));
                }
            }
            ShardMsg::Retain { msg, from, token } => {
                self.store_retained(&msg);
                self.retained.apply(msg);
                self.ack(from, token);
            }
            ShardMsg::RouteAdd {
                filter,
                from,
                token,
            } => {
                self.route_add(&filter, from);
                self.ack(from, token);
            }
            ShardMsg::Ack {
                token,
                delivered,
                refused,
            } => self.handle_ack(now, token, delivered, refused),
            ShardMsg::RouteRemove { filter, from } => self.route_remove(&filter, from),
            ShardMsg::Stats { from, stats } => {
                if let Some(slot) = self.sys_stats.get_mut(from.get()) {
                    *slot = *stats;
                }
            }
        }
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
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

    /// Storage batch `batch` (from [`ShardCore::poll_store`]) and every
    /// earlier one are written: releases the output and acknowledgements
    /// that waited for them.
    pub fn handle_stored(&mut self, batch: u64) {
        let store = &mut self.store;
        if batch <= store.durable {
            return;
        }
        store.durable = batch.min(store.taken);
        let durable = store.durable;
        while store.held_acks.front().is_some_and(|(b, ..)| *b <= durable) {
            let Some((_, to, ack)) = store.held_acks.pop_front() else {
                break;
            };
            if let Some(q) = self.outbox.get_mut(to.get()) {
                q.push(ack);
            }
        }
        let gated: Vec<ConnId> = store.gated.drain().collect();
        for id in gated {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            while conn.gates.front().is_some_and(|g| g.1 <= durable) {
                conn.gates.pop_front();
            }
            let ready = conn.gates.front().map_or(conn.out.len(), |g| g.0);
            if !conn.gates.is_empty() {
                self.store.gated.insert(id);
            }
            if ready > 0 && !conn.woken {
                conn.woken = true;
                self.events.push_back(IoEvent::Wake(id));
            }
        }
    }

    /// Restores the durable state read at start: retained messages, routes
    /// of every shard's stored subscriptions, and this shard's sessions —
    /// all disconnected, with their queues, in-flight messages and inbound
    /// QoS 2 ids. A session that was connected when the broker stopped lost
    /// its connection then: its will goes out (after its delay).
    /// `expired_wills` are the wills of sessions that expired while the
    /// broker was down; they are published now.
    pub fn restore(&mut self, now: Instant, restored: Restored) {
        let Restored {
            sessions,
            retained,
            routes,
            next_message_id,
            expired_wills,
        } = restored;
        self.store.next_msg_id = self.store.next_msg_id.max(next_message_id);
        for m in retained {
            self.retained.apply(m);
        }
        for (filter, shard) in routes {
            if shard != self.id && shard.get() < self.shards {
                self.route_add(&filter, shard);
            }
        }
        for r in sessions {
            let cid = r.client_id;
            let mut s = Session::new(cid.clone(), r.session.protocol);
            s.budget = self.config.queue_budget.clone();
            s.expiry_interval = r.session.expiry_interval;
            s.will = r.session.will.map(Box::new);
            s.stored = true;
            s.generation = 1;
            let was_connected = r.session.disconnected_at.is_none();
            let at = r.session.disconnected_at.unwrap_or(now);
            s.disconnected_at = Some(at);
            for (filter, sub) in r.subscriptions {
                self.index_subscription(&cid, &filter, sub, false);
                let n = self.local_filters.entry(filter.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.route_add(&filter, self.id);
                }
                s.subscriptions.insert(filter, sub);
            }
            for e in r.queue {
                s.store_seq = s.store_seq.max(e.seq + 1);
                *self.store.refs.entry(e.message_id).or_insert(0) += 1;
                let d = Delivery {
                    msg: e.msg,
                    qos: e.qos,
                    retain: e.retain,
                    sub_ids: e.sub_ids,
                    store: Some(StoreRef {
                        msg_id: e.message_id,
                        seq: e.seq,
                    }),
                };
                match e.state {
                    OutState::Queued => s.restore_queued(d),
                    OutState::AwaitPubAck(id) => s.restore_inflight(id, d, Stage::AwaitAck),
                    OutState::AwaitPubRec(id) => s.restore_inflight(id, d, Stage::AwaitRec),
                    OutState::AwaitPubComp(id) => s.restore_inflight(id, d, Stage::AwaitComp),
                }
            }
            for id in r.inbound_qos2 {
                s.restore_incoming_qos2(id);
            }
            // Timers as if the connection ended at `at`.
            if let Some(w) = &s.will {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                let due = at + Duration::from_secs(u64::from(delay.min(s.expiry_interval)));
                self.timers
                    .push(Reverse((due.max(now), Timer::Will(cid.clone(), 1))));
            }
            if s.expiry_interval != u32::MAX {
                let due = at + Duration::from_secs(u64::from(s.expiry_interval));
                self.timers.push(Reverse((
                    due.max(now),
                    Timer::SessionExpiry(cid.clone(), 1),
                )));
            }
            self.sessions.insert(cid.clone(), Box::new(s));
            if was_connected {
                self.store_session(&cid);
            }
        }
        for (cid, will) in expired_wills {
            self.publish_will(now, &cid, will);
        }
    }

    // ----------------------------------------------------------- outputs

    /// The next batch of storage changes, numbered in increasing order; write
    /// it, then report it with [`ShardCore::handle_stored`]. Changes made
    /// while a batch is being written gather in the next one (group commit).
    pub fn poll_store(&mut self) -> Option<(u64, Vec<StoreOp>)> {
        if self.store.ops.is_empty() {
            return None;
        }
        let batch = self.store.next_batch;
        self.store.next_batch += 1;
        self.store.taken = batch;
        self.store.mark = 0;
        Some((batch, std::mem::take(&mut self.store.ops)))
    }

    /// The runtime wrote a storage batch in `took` (for `$SYS` and
    /// [`ShardCore::stats`]).
    pub fn note_store_write(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.stats.store_writes += 1;
        self.stats.store_write_us = self.stats.store_write_us.saturating_add(us);
        self.stats.store_write_max_us = self.stats.store_write_max_us.max(us);
    }

    /// Whether `conn_id` has output not yet taken (e.g. held until a
    /// storage batch is written): a closing connection waits for it.
    pub fn has_output(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| !c.out.is_empty())
    }

    /// Whether storage changes wait for [`ShardCore::poll_store`].
    pub fn has_store_ops(&self) -> bool {
        !self.store.ops.is_empty()
    }

    /// Whether every storage change made so far has been reported written.
    pub fn store_idle(&self) -> bool {
        self.store.barrier().is_none()
    }

    /// The next I/O event.
    pub fn poll_event(&mut self) -> Option<IoEvent> {
        self.events.pop_front()
    }

    /// Takes the bytes to write to `conn_id`, then refills its buffer from
    /// the session queue for the next write.
    /// Output that waits for storage stays (see [`ShardCore::poll_store`]).
    pub fn take_output(&mut self, now: Instant, conn_id: ConnId) -> Option<BytesMut> {
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

    // ----------------------------------------------------------- packets

    fn handle_packet(&mut self, now: Instant, conn_id: ConnId, packet: Packet) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        if conn.state == ConnState::AwaitConnect {
            match packet {
                Packet::Connect(c) => self.on_connect(now, conn_id, *c),
                // [MQTT-3.1.0-1]: the first packet must be CONNECT.
                _ => self.close(
                    now,
                    conn_id,
                    CloseReason::ProtocolError(ReasonCode::PROTOCOL_ERROR),
                ),
            }
            return;
        }
        let Some(cid) = conn.client_id.clone() else {
            return;
        };
        let v5 = conn.version.is_v5();
        match packet {
            Packet::Publish(p) => self.on_publish(now, conn_id, &cid, p),
            Packet::PubAck(r) => {
                let done = self
                    .sessions
                    .get_mut(&cid)
                    .and_then(|s| s.puback(r.packet_id));
                if let Some(sr) = done.and_then(|d| d.store) {
                    self.store.dequeue(&cid, sr);
                }
                self.pump(now, &cid);
            }
            Packet::PubRec(r) => {
                let rec = match self.sessions.get_mut(&cid) {
                    Some(s) => s.pubrec(r.packet_id, r.reason.is_success()),
                    None => Rec::Unknown,
                };
                let known = match rec {
                    Rec::Unknown => false,
                    Rec::Release { delivery, changed } => {
                        if changed {
                            let state = OutState::AwaitPubComp(r.packet_id);
                            self.store.put_entry(&cid, &delivery, state);
                        }
                        true
                    }
                    Rec::Ended(d) => {
                        if let Some(sr) = d.store {
                            self.store.dequeue(&cid, sr);
                        }
                        false
                    }
                };
                if known {
                    self.send(conn_id, &Packet::PubRel(PubResponse::new(r.packet_id)));
                } else if r.reason.is_success() {
                    let rc = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    self.send(
                        conn_id,
                        &Packet::PubRel(PubResponse::with_reason(r.packet_id, rc)),
                    );
                }
                self.pump(now, &cid);
            }
            Packet::PubRel(r) => {
                let (known, stored) = match self.sessions.get_mut(&cid) {
                    Some(s) => (s.release_incoming_qos2(r.packet_id), s.stored),
                    None => (false, false),
                };
                if known && stored {
                    self.store.ops.push(StoreOp::DeleteInboundQos2 {
                        client_id: cid.clone(),
                        packet_id: r.packet_id,
                    });
                }
                let rc = if known || !v5 {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(
                    conn_id,
                    &Packet::PubComp(PubResponse::with_reason(r.packet_id, rc)),
                );
            }
            Packet::PubComp(r) => {
                let done = self
                    .sessions
                    .get_mut(&cid)
                    .and_then(|s| s.pubcomp(r.packet_id));
                if let Some(sr) = done.and_then(|d| d.store) {
                    self.store.dequeue(&cid, sr);
                }
                self.pump(now, &cid);
            }
            Packet::Subscribe(s) => self.on_subscribe(now, conn_id, &cid, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(conn_id, &cid, u),
            Packet::PingReq => self.send(conn_id, &Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(now, conn_id, &cid, d),
            // No enhanced authentication method is offered, so AUTH is
            // unexpected; so is a second CONNECT and any server-to-client packet.
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.close(
                now,
                conn_id,
                CloseReason::ProtocolError(ReasonCode::PROTOCOL_ERROR),
            ),
        }
    }

    fn decode_failed(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        awaiting_connect: bool,
        level: Option<u8>,
        e: &DecodeError,
    ) {
        if matches!(e, DecodeError::PacketTooLarge { .. }) {
            self.stats.limit_hits[Limit::PacketSize as usize] += 1;
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if awaiting_connect {
            // Answer the CONNECT in the version it asked for, where the spec
            // gives an answer; otherwise just close.
            let reply = match (level, e.v3_connack_code()) {
                (Some(5), _) => Some((ProtocolVersion::V5, e.reason_code())),
                (_, Some(_)) => Some((ProtocolVersion::V3_1_1, e.reason_code())),
                _ => None,
            };
            if let Some((version, rc)) = reply {
                conn.version = version;
                let mut ack = ConnAck::refuse(rc);
                ack.properties.reason_string = Some(ByteStr::from(e.to_string()));
                self.send(conn_id, &Packet::ConnAck(ack));
                self.close(now, conn_id, CloseReason::Refused(rc));
            } else {
                self.close(now, conn_id, CloseReason::ProtocolError(e.reason_code()));
            }
        } else {
            let reason = CloseReason::ProtocolError(e.reason_code());
            self.close_with(now, conn_id, reason, Some(e.to_string()));
        }
    }

    fn on_connect(&mut self, now: Instant, conn_id: ConnId, c: Connect) {
        if let Some(rc) = self.connect_refusal(conn_id, &c) {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.version = c.protocol;
            }
            self.send(conn_id, &Packet::ConnAck(ConnAck::refuse(rc)));
            self.close(now, conn_id, CloseReason::Refused(rc));
            return;
        }
        let v5 = c.protocol.is_v5();
        let assigned = c.client_id.is_empty();
        let client_id = if assigned {
            self.assign_client_id()
        } else {
            ClientId::new(c.client_id.clone())
        };

        let mut ack = ConnAck::accept(false);
        let mut keep_alive = c.keep_alive;
        if self.config.max_keepalive > 0
            && (keep_alive == 0 || keep_alive > self.config.max_keepalive)
        {
            keep_alive = self.config.max_keepalive;
            if v5 {
                ack.properties.server_keep_alive = Some(keep_alive);
            }
        }
        let expiry = if v5 {
            let asked = c.properties.session_expiry_interval.unwrap_or(0);
            let granted = asked.min(self.config.max_session_expiry);
            if granted != asked {
                ack.properties.session_expiry_interval = Some(granted);
            }
            granted
        } else if c.clean_start {
            0
        } else {
            self.config.max_session_expiry
        };

        // Take over: close the connection that holds the session now.
        if let Some(old) = self
            .sessions
            .get_mut(&client_id)
            .and_then(|s| s.conn.take())
        {
            if let Some(oc) = self.conns.get_mut(&old) {
                oc.client_id = None;
                let old_v5 = oc.version.is_v5();
                if old_v5 {
                    let d = Disconnect::new(ReasonCode::SESSION_TAKEN_OVER);
                    self.send(old, &Packet::Disconnect(d));
                }
                self.close(now, old, CloseReason::TakenOver);
            }
        }
        let session_present = !c.clean_start && self.sessions.contains_key(&client_id);
        if c.clean_start {
            // The old session ends: its will (if any) goes out now.
            if let Some(will) = self
                .sessions
                .get_mut(&client_id)
                .and_then(|s| s.will.take())
            {
                self.publish_will(now, &client_id, *will);
            }
            self.remove_session(&client_id);
        }
        let session = self.sessions.entry(client_id.clone()).or_insert_with(|| {
            let mut s = Session::new(client_id.clone(), c.protocol);
            s.budget = self.config.queue_budget.clone();
            Box::new(s)
        });
        session.version = c.protocol;
        session.conn = Some(conn_id);
        self.generations += 1;
        session.generation = self.generations;
        session.expiry_interval = expiry;
        // A reconnect cancels a pending will of the previous connection.
        session.will = c.will.map(Box::new);
        session.disconnected_at = None;
        self.store_session(&client_id);

        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.state = ConnState::Connected;
        conn.client_id = Some(client_id.clone());
        conn.version = c.protocol;
        conn.keep_alive = Duration::from_secs(u64::from(keep_alive));
        conn.client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
        conn.client_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let aliases_out = match (v5, self.config.outbound_topic_aliases) {
            (true, true) => c.properties.topic_alias_maximum.unwrap_or(0),
            _ => 0,
        };
        conn.aliases_out = OutboundAliases::new(aliases_out);
        conn.problem_info = c.properties.request_problem_information.unwrap_or(true);
        conn.connect_expiry_zero = expiry == 0;
        conn.receive_max = self.config.receive_maximum.max(1);
        conn.alias_max = self.config.topic_alias_maximum;
        if keep_alive > 0 {
            let deadline = now + conn.keep_alive.mul_f32(1.5);
            self.timers
                .push(Reverse((deadline, Timer::KeepAlive(conn_id))));
        }

        ack.session_present = session_present;
        self.events.push_back(IoEvent::Connected {
            conn: conn_id,
            client_id: client_id.clone(),
            version: c.protocol,
            session_present,
        });
        if v5 {
            let p = &mut ack.properties;
            p.receive_maximum = Some(conn.receive_max);
            p.maximum_packet_size = Some(conn.max_packet);
            p.topic_alias_maximum = Some(conn.alias_max);
            if !self.config.retain_available {
                p.retain_available = Some(false);
            }
            if assigned {
                p.assigned_client_identifier = Some(client_id.as_bytestr().clone());
            }
        }
        // A resumed session keeps only what this identity may still read.
        self.recheck_session(&client_id);
        self.send(conn_id, &Packet::ConnAck(ack));
        self.resend_inflight(now, conn_id, &client_id);
        self.pump(now, &client_id);
    }

    /// Why a CONNECT is refused, if it is: credentials the I/O layer
    /// refused, an authentication method (enhanced authentication is not
    /// supported), or a will the client could not publish.
    fn connect_refusal(&mut self, conn_id: ConnId, c: &Connect) -> Option<ReasonCode> {
        let conn = self.conns.get(&conn_id)?;
        if let Identity::Refused(rc) = conn.identity {
            let i = usize::from(rc != ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            self.stats.auth_refused[i] += 1;
            return Some(rc);
        }
        if c.protocol.is_v5() && c.properties.authentication_method.is_some() {
            return Some(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let will = c.will.as_ref()?;
        let topic = will.topic.as_str();
        if let Err(limit) = self.check_topic(topic, topic) {
            self.stats.limit_hits[limit as usize] += 1;
            return Some(ReasonCode::TOPIC_NAME_INVALID);
        }
        let client_id = if c.client_id.is_empty() {
            None
        } else {
            Some(c.client_id.as_str())
        };
        if !self.may_publish(conn_id, client_id, topic) {
            return Some(ReasonCode::NOT_AUTHORIZED);
        }
        None
    }

    /// Checks a topic name or filter against `max_topic_length` (the whole
    /// string) and `max_topic_levels` (`levels_of`: the filter without a
    /// `$share/group/` prefix).
    fn check_topic(&self, whole: &str, levels_of: &str) -> Result<(), Limit> {
        if whole.len() > self.config.max_topic_length as usize {
            return Err(Limit::TopicLength);
        }
        let levels = memchr::memchr_iter(b'/', levels_of.as_bytes()).count() + 1;
        if levels > self.config.max_topic_levels as usize {
            return Err(Limit::TopicLevels);
        }
        Ok(())
    }

    /// Asks the ACL whether the client of `conn_id` may publish to `topic`
    /// (counting a denial). `client_id`: `None` while a CONNECT with an empty
    /// one is checked (a pattern with `%c` then matches nothing).
    fn may_publish(&mut self, conn_id: ConnId, client_id: Option<&str>, topic: &str) -> bool {
        let Some(acl) = &self.config.authorizer else {
            return true;
        };
        let username = self.conns.get(&conn_id).and_then(|c| c.identity.username());
        let allowed = acl.allow_publish(client_id.unwrap_or(""), username, topic);
        if !allowed {
            self.stats.acl_denied[0] += 1;
        }
        allowed
    }

    /// Why one filter of a SUBSCRIBE is refused, if it is: a topic limit,
    /// the ACL, or `max_subscriptions`.
    fn subscribe_refusal(
        &mut self,
        conn_id: ConnId,
        cid: &ClientId,
        filter: &TopicFilter,
    ) -> Option<ReasonCode> {
        if let Err(limit) = self.check_topic(filter.as_str(), filter.matching_filter()) {
            self.stats.limit_hits[limit as usize] += 1;
            return Some(ReasonCode::TOPIC_FILTER_INVALID);
        }
        if let Some(acl) = &self.config.authorizer {
            let username = self.conns.get(&conn_id).and_then(|c| c.identity.username());
            if !acl.allow_subscribe(cid.as_str(), username, filter.matching_filter()) {
                self.stats.acl_denied[1] += 1;
                return Some(ReasonCode::NOT_AUTHORIZED);
            }
        }
        let max = self.config.max_subscriptions as usize;
        let session = self.sessions.get(cid)?;
        if max > 0
            && session.subscriptions.len() >= max
            && !session.subscriptions.contains_key(filter)
        {
            self.stats.limit_hits[Limit::Subscriptions as usize] += 1;
            return Some(ReasonCode::QUOTA_EXCEEDED);
        }
        None
    }

    /// Answers a PUBLISH the broker does not route: v5 QoS 1/2 get `rc` in
    /// their PUBACK/PUBREC. MQTT 3 has no negative acknowledgement: the
    /// message is acknowledged and dropped, or with `v3_close` the
    /// connection is closed. QoS 0 is dropped.
    fn refuse_publish(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        qos: QoS,
        packet_id: Option<PacketId>,
        rc: ReasonCode,
        v3_close: bool,
    ) {
        let v5 = self.conns.get(&conn_id).is_some_and(|c| c.version.is_v5());
        if !v5 && v3_close {
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        let reason = if v5 { rc } else { ReasonCode::SUCCESS };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(
                conn_id,
                &Packet::PubAck(PubResponse::with_reason(id, reason)),
            ),
            (QoS::ExactlyOnce, Some(id)) => self.send(
                conn_id,
                &Packet::PubRec(PubResponse::with_reason(id, reason)),
            ),
            _ => {}
        }
    }

    /// A server-assigned client id that hashes to this shard.
    fn assign_client_id(&mut self) -> ClientId {
        loop {
            self.next_assigned += 1;
            let id = format!(
                "vmqtt-{:x}-{:x}-{}",
                self.config.instance,
                self.id.get(),
                self.next_assigned
            );
            if home_shard(&id, self.shards) == self.id && !self.sessions.contains_key(id.as_str()) {
                return ClientId::new(ByteStr::from(id));
            }
        }
    }

    fn on_publish(&mut self, now: Instant, conn_id: ConnId, cid: &ClientId, mut p: Publish) {
        self.stats.messages_received += 1;
        self.stats.received_by_qos[p.qos as usize] += 1;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let v5 = conn.version.is_v5();
        let receive_max = usize::from(conn.receive_max.max(1));
        // Topic alias (v5 §3.3.2.3.4).
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias > conn.alias_max {
                let rc = ReasonCode::TOPIC_ALIAS_INVALID;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if p.topic.is_empty() {
                match conn.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        let rc = ReasonCode::PROTOCOL_ERROR;
                        return self.close(now, conn_id, CloseReason::ProtocolError(rc));
                    }
                }
            } else {
                conn.aliases_in.insert(alias, p.topic.clone());
            }
        }
        // [MQTT-3.3.4-6]: clients do not send subscription identifiers.
        if !p.properties.subscription_identifiers.is_empty() {
            let rc = ReasonCode::PROTOCOL_ERROR;
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        if p.retain && !self.config.retain_available {
            let rc = ReasonCode::RETAIN_NOT_SUPPORTED;
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        if v5 && !p.payload_format_valid() {
            let rc = ReasonCode::PAYLOAD_FORMAT_INVALID;
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    self.send(conn_id, &Packet::PubAck(PubResponse::with_reason(id, rc)))
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    self.send(conn_id, &Packet::PubRec(PubResponse::with_reason(id, rc)))
                }
                _ => self.close(now, conn_id, CloseReason::ProtocolError(rc)),
            }
            return;
        }
        if p.topic.as_str().starts_with('$') {
            // Clients may not publish into $-topics (reserved for the server).
            let rc = ReasonCode::TOPIC_NAME_INVALID;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, false);
        }
        if let Err(limit) = self.check_topic(p.topic.as_str(), p.topic.as_str()) {
            self.stats.limit_hits[limit as usize] += 1;
            let rc = ReasonCode::TOPIC_NAME_INVALID;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, true);
        }
        if !self.may_publish(conn_id, Some(cid.as_str()), p.topic.as_str()) {
            let rc = ReasonCode::NOT_AUTHORIZED;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, false);
        }
        if p.qos == QoS::ExactlyOnce {
            let Some(id) = p.packet_id else { return };
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            if session.incoming_qos2_len() >= receive_max && !session.has_incoming_qos2(id) {
                self.stats.limit_hits[Limit::ReceiveMaximum as usize] += 1;
                let rc = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if !session.begin_incoming_qos2(id) {
                // A resend of a message already accepted: acknowledge, do not
                // deliver twice.
                self.send(conn_id, &Packet::PubRec(PubResponse::new(id)));
                return;
            }
            if session.stored {
                self.store.ops.push(StoreOp::PutInboundQos2 {
                    client_id: cid.clone(),
                    packet_id: id,
                });
            }
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let msg = self.message_from_publish(now, cid, p);
        // A retained QoS 1/2 message is acknowledged once every replica has
        // it, so a subscriber anywhere sees it after the publisher's PUBACK.
        let wait_replicas = msg.retain && packet_id.is_some() && self.shards > 1;
        // With storage, the publisher is acknowledged once every shard that
        // takes the message has stored it for its persistent sessions.
        let wait_stores = self.config.persistence && packet_id.is_some() && self.shards > 1;
        let token = (wait_replicas || wait_stores).then(|| self.new_token());
        self.outcome = Outcome::default();
        let forwards_before = self.stats.forwarded;
        let (matched, forwarded) = self.publish_with_token(now, msg, token, wait_stores);
        let local = self.outcome;
        // Every target says whether it took the message only if each
        // forward is acknowledged.
        let all_report = (self.stats.forwarded - forwards_before) as usize == forwarded;
        let remaining = forwarded + if wait_replicas { self.shards - 1 } else { 0 };
        let rc = if !v5 {
            ReasonCode::SUCCESS
        } else if !matched {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else if forwarded == 0 && all_report && local.delivered == 0 && local.refused > 0 {
            // It reached no subscriber: every queue it was for is full.
            ReasonCode::QUOTA_EXCEEDED
        } else {
            ReasonCode::SUCCESS
        };
        let reply = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(PubResponse::with_reason(id, rc)),
            (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(PubResponse::with_reason(id, rc)),
            _ => return,
        };
        match token {
            Some(token) if remaining > 0 => {
                let pending = Pending {
                    remaining,
                    quota_check: v5 && matched && all_report,
                    delivered: local.delivered > 0,
                    refused: local.refused > 0,
                    after: self.store.own_barrier(),
                    conn: conn_id,
                    client: cid.clone(),
                    replies: vec![reply],
                    retained_for: Vec::new(),
                };
                self.pending.insert(token, pending);
            }
            _ => self.send(conn_id, &reply),
        }
    }

    fn message_from_publish(&self, now: Instant, cid: &ClientId, p: Publish) -> Arc<Message> {
        let mut properties = p.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        properties.topic_alias = None;
        Arc::new(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin: Some(cid.clone()),
        })
    }

    fn on_subscribe(&mut self, now: Instant, conn_id: ConnId, cid: &ClientId, sub: Subscribe) {
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for = Vec::new();
        let token = self.new_token();
        let mut announced = 0;
        for (filter, options) in sub.filters {
            if let Some(rc) = self.subscribe_refusal(conn_id, cid, &filter) {
                reasons.push(rc);
                continue;
            }
            let entry = Subscription {
                options,
                id: sub.properties.subscription_identifier,
            };
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            let existed = session
                .subscriptions
                .insert(filter.clone(), entry)
                .is_some();
            if session.stored {
                self.store.ops.push(StoreOp::PutSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                    sub: entry,
                });
            }
            self.index_subscription(cid, &filter, entry, existed);
            if !filter.is_shared() {
                let send = match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
                if send {
                    retained_for.push((filter.clone(), entry));
                }
            }
            if !existed && self.add_local_filter(&filter, Some(token)) {
                announced += 1;
            }
            reasons.push(ReasonCode(options.qos as u8));
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: AckProperties::default(),
            reasons,
        };
        let replies = vec![Packet::SubAck(ack)];
        if announced > 0 && self.shards > 1 {
            // The SUBACK goes out once every shard routes the new filters, so
            // a message published anywhere after it is delivered.
            let pending = Pending {
                remaining: announced * (self.shards - 1),
                quota_check: false,
                delivered: false,
                refused: false,
                after: self.store.own_barrier(),
                conn: conn_id,
                client: cid.clone(),
                replies,
                retained_for,
            };
            self.pending.insert(token, pending);
            return;
        }
        for p in &replies {
            self.send(conn_id, p);
        }
        self.send_retained(now, cid, retained_for);
    }

    /// Makes a subscription of `cid` findable when routing: the trie for a
    /// plain filter, the group's members for a shared one (`existed`: the
    /// session already had it, so it is a member already).
    fn index_subscription(
        &mut self,
        cid: &ClientId,
        filter: &TopicFilter,
        sub: Subscription,
        existed: bool,
    ) {
        if filter.is_shared() {
            if !existed {
                self.shared
                    .entry(filter.clone())
                    .or_default()
                    .members
                    .push(cid.clone());
            }
        } else {
            self.subs.insert(filter.matching_filter(), cid.clone(), sub);
        }
    }

    /// Sends the retained messages matching new subscriptions
    /// ([MQTT-3.3.1-9]: with RETAIN set).
    fn send_retained(
        &mut self,
        now: Instant,
        cid: &ClientId,
        filters: Vec<(TopicFilter, Subscription)>,
    ) {
        if filters.is_empty() {
            return;
        }
        let limit = self.config.max_retained_backlog;
        for (filter, entry) in filters {
            let mut found = VecDeque::new();
            let no_local = entry.options.no_local;
            self.retained
                .for_each_match(now, filter.matching_filter(), |m| {
                    if !(no_local && m.origin.as_ref() == Some(cid)) {
                        found.push_back(m.clone());
                    }
                });
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            // They wait in the session's backlog and go out as the window
            // and the socket take them (`pump`): none is lost to a full
            // output buffer, however many match.
            let over = session.push_retained(filter, entry, found, limit);
            if over > 0 {
                session.dropped += over as u64;
                self.stats.limit_hits[Limit::RetainedBacklog as usize] += over as u64;
                self.stats.messages_dropped += over as u64;
                self.note_limited(now, cid, Limit::RetainedBacklog, over as u64);
            }
        }
        self.pump(now, cid);
    }

    fn on_unsubscribe(&mut self, conn_id: ConnId, cid: &ClientId, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let stored = self.sessions.get(cid).is_some_and(|s| s.stored);
        for filter in &u.filters {
            let removed = self.unsubscribe(cid, filter);
            if removed && stored {
                self.store.ops.push(StoreOp::DeleteSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                });
            }
            reasons.push(if removed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        };
        self.send(conn_id, &Packet::UnsubAck(ack));
    }

    fn unsubscribe(&mut self, cid: &ClientId, filter: &TopicFilter) -> bool {
        if let Some(s) = self.sessions.get_mut(cid) {
            s.drop_retained_for(filter);
        }
        let Some(session) = self.sessions.get_mut(cid) else {
            return false;
        };
        if session.subscriptions.remove(filter).is_none() {
            return false;
        }
        if filter.is_shared() {
            if let Some(g) = self.shared.get_mut(filter) {
                g.members.retain(|m| m != cid);
                if g.members.is_empty() {
                    self.shared.remove(filter);
                }
            }
        } else {
            self.subs.remove(filter.matching_filter(), cid);
        }
        self.remove_local_filter(filter);
        true
    }

    fn on_disconnect(&mut self, now: Instant, conn_id: ConnId, cid: &ClientId, d: Disconnect) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(exp) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2]: a session that had expiry 0 cannot get one now.
            if conn.connect_expiry_zero && exp != 0 {
                let rc = ReasonCode::PROTOCOL_ERROR;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if let Some(s) = self.sessions.get_mut(cid) {
                s.expiry_interval = exp.min(self.config.max_session_expiry);
            }
        }
        let with_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL;
        conn.client_id = None;
        conn.state = ConnState::Closing;
        self.events
            .push_back(IoEvent::Close(conn_id, CloseReason::ClientDisconnect));
        self.detach(now, cid, conn_id, with_will);
    }

    // -------------------------------------------------------- sessions

    /// The connection of `cid` ended; `abnormal` publishes the will.
    fn detach(&mut self, now: Instant, cid: &ClientId, conn_id: ConnId, abnormal: bool) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if session.conn != Some(conn_id) {
            return;
        }
        session.conn = None;
        self.generations += 1;
        session.generation = self.generations;
        let generation = session.generation;
        let expiry = session.expiry_interval;
        let will = session.will.take().filter(|_| abnormal);
        if expiry == 0 {
            if let Some(w) = will {
                self.publish_will(now, cid, *w);
            }
            self.remove_session(cid);
            return;
        }
        if let Some(s) = self.sessions.get_mut(cid) {
            s.disconnected_at = Some(now);
        }
        if let Some(w) = will {
            let delay = w.properties.will_delay_interval.unwrap_or(0).min(expiry);
            if delay == 0 {
                self.publish_will(now, cid, *w);
            } else if let Some(s) = self.sessions.get_mut(cid) {
                s.will = Some(w);
                let at = now + Duration::from_secs(u64::from(delay));
                self.timers
                    .push(Reverse((at, Timer::Will(cid.clone(), generation))));
            }
        }
        self.store_session(cid);
        if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            self.timers
                .push(Reverse((at, Timer::SessionExpiry(cid.clone(), generation))));
        }
    }

    fn remove_session(&mut self, cid: &ClientId) {
        self.unstore_session(cid);
        let Some(session) = self.sessions.get(cid) else {
            return;
        };
        let filters: Vec<TopicFilter> = session.subscriptions.keys().cloned().collect();
        for f in &filters {
            self.unsubscribe(cid, f);
        }
        self.sessions.remove(cid);
    }

    /// Writes the session record of `cid` if the session is persistent
    /// (expiry > 0); one that is no longer persistent is deleted. A session
    /// stored for the first time also stores its subscriptions and queue.
    fn store_session(&mut self, cid: &ClientId) {
        if !self.config.persistence {
            return;
        }
        let Some(s) = self.sessions.get_mut(cid) else {
            return;
        };
        if s.expiry_interval == 0 {
            self.unstore_session(cid);
            return;
        }
        let first = !s.stored;
        s.stored = true;
        self.store.ops.push(StoreOp::PutSession {
            client_id: cid.clone(),
            session: SessionImage {
                protocol: s.version,
                expiry_interval: s.expiry_interval,
                will: s.will.as_deref().cloned(),
                disconnected_at: s.disconnected_at,
            },
        });
        if !first {
            return;
        }
        for (filter, sub) in &s.subscriptions {
            self.store.ops.push(StoreOp::PutSubscription {
                client_id: cid.clone(),
                filter: filter.clone(),
                sub: *sub,
            });
        }
        for packet_id in s.incoming_qos2_ids() {
            self.store.ops.push(StoreOp::PutInboundQos2 {
                client_id: cid.clone(),
                packet_id,
            });
        }
        let mut next = s.store_seq;
        for d in s.unstored_queue() {
            let seq = next;
            next += 1;
            let msg_id = self.store.retain(&d.msg);
            d.store = Some(StoreRef { msg_id, seq });
            self.store.put_entry(cid, d, OutState::Queued);
        }
        s.store_seq = next;
        s.recount_queued_bytes();
    }

    /// Deletes what is stored of `cid` (its session ends or stops being
    /// persistent).
    fn unstore_session(&mut self, cid: &ClientId) {
        let Some(s) = self.sessions.get_mut(cid) else {
            return;
        };
        if !s.stored {
            return;
        }
        s.stored = false;
        self.store.ops.push(StoreOp::DeleteClient(cid.clone()));
        for r in s.clear_store_refs() {
            self.store.release(r.msg_id);
        }
    }

    /// The shard that is home to a retained message's topic stores it.
    fn store_retained(&mut self, msg: &Arc<Message>) {
        if !self.config.persistence
            || msg.topic.as_str().starts_with('$')
            || home_shard(msg.topic.as_str(), self.shards) != self.id
        {
            return;
        }
        self.store.ops.push(if msg.payload.is_empty() {
            StoreOp::DeleteRetained(msg.topic.clone())
        } else {
            StoreOp::PutRetained(msg.clone())
        });
    }

    fn publish_will(&mut self, now: Instant, cid: &ClientId, w: LastWill) {
        let mut properties = PublishProperties {
            payload_format_indicator: w.properties.payload_format_indicator,
            content_type: w.properties.content_type,
            response_topic: w.properties.response_topic,
            correlation_data: w.properties.correlation_data,
            user_properties: w.properties.user_properties,
            ..PublishProperties::default()
        };
        let expires_at = properties
            .message_expiry_interval
            .take()
            .or(w.properties.message_expiry_interval)
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain && self.config.retain_available,
            properties,
            expires_at,
            origin: Some(cid.clone()),
        });
        self.publish(now, msg);
    }

    // --------------------------------------------------------- routing

    /// Publishes `msg` from this shard: updates the retained replicas and
    /// routes it to every shard with matching subscribers. Returns whether
    /// any subscription matched.
    fn publish(&mut self, now: Instant, msg: Arc<Message>) -> bool {
        self.publish_with_token(now, msg, None, false).0
    }

    /// [`ShardCore::publish`], asking every other replica to acknowledge a
    /// retained update with `token`, and with `ack_forwards` every shard
    /// the message is forwarded to. Returns whether any subscription matched
    /// and the number of forwards that will be acknowledged.
    fn publish_with_token(
        &mut self,
        now: Instant,
        msg: Arc<Message>,
        token: Option<u64>,
        ack_forwards: bool,
    ) -> (bool, usize) {
        if msg.retain {
            self.store_retained(&msg);
            self.retained.apply(msg.clone());
            for s in 0..self.shards {
                if s != self.id.get() {
                    let from = self.id;
                    self.outbox[s].push(ShardMsg::Retain {
                        msg: msg.clone(),
                        from,
                        token,
                    });
                }
            }
        }
        let ack = token.filter(|_| ack_forwards);
        self.route(now, msg, ack)
    }

    fn route(&mut self, now: Instant, msg: Arc<Message>, ack: Option<u64>) -> (bool, usize) {
        let mut acked = 0;
        let mut shards = [false; 64];
        let mut wide: Vec<ShardId> = Vec::new();
        let mut shared: Vec<(TopicFilter, ShardId)> = Vec::new();
        self.routes
            .for_each_match(&msg.topic, |key, _| match &key.shared {
                None if key.shard.get() < 64 => shards[key.shard.get()] = true,
                None => wide.push(key.shard),
                Some(f) => shared.push((f.clone(), key.shard)),
            });
        let mut matched = !shared.is_empty() || !wide.is_empty();
        let targets = (0..self.shards.min(64))
            .filter(|&s| shards[s])
            .map(|s| ShardId::new(s as u16))
            .chain(wide);
        for shard in targets {
            matched = true;
            if shard == self.id {
                self.deliver_local(now, &msg);
            } else if let Some(q) = self.outbox.get_mut(shard.get()) {
                q.push(match ack {
                    Some(token) => {
                        acked += 1;
                        ShardMsg::PublishAcked {
                            msg: msg.clone(),
                            from: self.id,
                            token,
                        }
                    }
                    None => ShardMsg::Publish(msg.clone()),
                });
                self.stats.forwarded += 1;
            }
        }
        if !shared.is_empty() {
            shared.sort();
            let mut i = 0;
            while i < shared.len() {
                let j = i + shared[i..]
                    .iter()
                    .take_while(|(f, _)| *f == shared[i].0)
                    .count();
                let filter = shared[i].0.clone();
                let rr = self.shared_rr.entry(filter.clone()).or_insert(0);
                let target = shared[i + *rr % (j - i)].1;
                *rr = rr.wrapping_add(1);
                if target == self.id {
                    self.deliver_shared(now, &filter, &msg);
                } else if let Some(q) = self.outbox.get_mut(target.get()) {
                    acked += usize::from(ack.is_some());
                    q.push(ShardMsg::SharedPublish {
                        filter,
                        msg: msg.clone(),
                        ack: ack.map(|t| (self.id, t)),
                    });
                    self.stats.forwarded += 1;
                }
                i = j;
            }
        }
        (matched, acked)
    }

    /// Delivers to this shard's non-shared subscribers of `msg.topic`, once
    /// per session whatever the number of its matching subscriptions (with
    /// the highest QoS and every subscription identifier, v5 §3.3.4).
    fn deliver_local(&mut self, now: Instant, msg: &Arc<Message>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.subs.for_each_match(&msg.topic, |cid, sub| {
            if sub.options.no_local && msg.origin.as_ref() == Some(cid) {
                return;
            }
            let agg = scratch.entry(cid.clone()).or_default();
            agg.qos = agg.qos.max(sub.options.qos as u8);
            agg.retain_as_published |= sub.options.retain_as_published;
            if let Some(id) = sub.id {
                agg.ids.push(id);
            }
        });
        for (cid, agg) in scratch.drain() {
            let qos = msg
                .qos
                .min(QoS::from_u8(agg.qos).unwrap_or(QoS::ExactlyOnce));
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain: msg.retain && agg.retain_as_published,
                sub_ids: agg.ids,
                store: None,
            };
            self.deliver(now, &cid, d);
        }
        self.scratch = scratch;
    }

    /// Delivers to one local member of a shared subscription, round robin,
    /// preferring connected members.
    fn deliver_shared(&mut self, now: Instant, filter: &TopicFilter, msg: &Arc<Message>) {
        let Some(group) = self.shared.get_mut(filter) else {
            return;
        };
        let n = group.members.len();
        if n == 0 {
            return;
        }
        let start = group.next;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.sessions
                    .get(&group.members[i])
                    .is_some_and(|s| s.conn.is_some())
            })
            .unwrap_or(start % n);
        group.next = pick + 1;
        let cid = group.members[pick].clone();
        let Some(sub) = self
            .sessions
            .get(&cid)
            .and_then(|s| s.subscriptions.get(filter))
            .copied()
        else {
            return;
        };
        let d = Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(sub.options.qos),
            retain: msg.retain && sub.options.retain_as_published,
            sub_ids: sub.id.into_iter().collect(),
            store: None,
        };
        self.deliver(now, &cid, d);
    }

    fn deliver(&mut self, now: Instant, cid: &ClientId, d: Delivery) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if d.qos == QoS::AtMostOnce {
            // QoS 0 is not kept for an absent client. For a connected one it
            // goes straight out when nothing is queued ahead of it and the
            // output buffer has room; otherwise it waits in the bounded
            // session queue like QoS 1/2, absorbing bursts.
            let Some(conn_id) = session.conn else {
                session.dropped += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[0] += 1;
                return;
            };
            let direct = session.queued_len() == 0
                && self
                    .conns
                    .get(&conn_id)
                    .is_some_and(|c| c.out.len() < self.config.max_output_buffer);
            if direct {
                let version = self
                    .conns
                    .get(&conn_id)
                    .map_or(ProtocolVersion::V5, |c| c.version);
                if let Some(p) = outbound_publish(now, &d, None, false, version) {
                    if self.send_publish(conn_id, p) {
                        self.outcome.delivered += 1;
                    } else {
                        self.count_drop(cid, QoS::AtMostOnce);
                    }
                }
                return;
            }
        }
        let connected = session.conn.is_some();
        self.enqueue_delivery(now, cid, d);
        if connected {
            self.pump(now, cid);
        }
    }

    /// Puts `d` in the session queue of `cid` (storing it for a persistent
    /// session), or drops and counts it if the queue is full.
    fn enqueue_delivery(&mut self, now: Instant, cid: &ClientId, d: Delivery) {
        self.enqueue_delivery_bounded(now, cid, d, self.config.max_queued_messages);
    }

    fn enqueue_delivery_bounded(
        &mut self,
        now: Instant,
        cid: &ClientId,
        mut d: Delivery,
        limit: usize,
    ) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if let Some(conn) = session.conn.and_then(|c| self.conns.get(&c)) {
            let window = conn.client_receive_max.min(self.config.max_inflight).max(1);
            if d.qos != QoS::AtMostOnce && session.inflight_len() >= usize::from(window) {
                self.stats.limit_hits[Limit::Inflight as usize] += 1;
            }
        }
        if session.stored && d.qos != QoS::AtMostOnce {
            // A persistent session's QoS 1/2 messages are in the log: they
            // are bounded by what the log may hold for it, not by the
            // in-memory `max_queued_messages`.
            let bounds = StoredBounds {
                messages: self.config.max_stored_messages,
                bytes: self.config.max_stored_bytes,
            };
            if let Err(limit) = session.admit_stored(&d.msg, bounds) {
                self.stats.limit_hits[limit as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[d.qos as usize] += 1;
                self.outcome.refused += 1;
                self.note_limited(now, cid, limit, 1);
                return;
            }
            let seq = session.store_seq;
            session.store_seq += 1;
            let msg_id = self.store.retain(&d.msg);
            d.store = Some(StoreRef { msg_id, seq });
            self.store.put_entry(cid, &d, OutState::Queued);
            if let Some(session) = self.sessions.get_mut(cid) {
                session.push_stored(d);
            }
            self.outcome.delivered += 1;
            return;
        }
        match session.enqueue(d, limit) {
            Ok(()) => self.outcome.delivered += 1,
            Err(Dropped::Displaced) => {
                self.outcome.delivered += 1;
                self.stats.limit_hits[Limit::Queued as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[0] += 1;
                self.note_limited(now, cid, Limit::Queued, 1);
            }
            Err(Dropped::New(d)) => {
                self.outcome.refused += 1;
                self.stats.limit_hits[Limit::Queued as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[d.qos as usize] += 1;
                self.note_limited(now, cid, Limit::Queued, 1);
            }
        }
    }

    /// Moves queued QoS 1/2 messages of `cid` into flight while the window and
    /// the connection's output buffer allow.
    fn pump(&mut self, now: Instant, cid: &ClientId) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        let Some(conn_id) = session.conn else { return };
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let version = conn.version;
        let window = usize::from(conn.client_receive_max.min(self.config.max_inflight).max(1));
        loop {
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            if conn.out.len() >= self.config.max_output_buffer {
                return;
            }
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            if session.queued_len() == 0 {
                if let Some((m, sub)) = session.next_retained() {
                    let d = Delivery {
                        qos: m.qos.min(sub.options.qos),
                        retain: true,
                        sub_ids: sub.id.into_iter().collect(),
                        msg: m,
                        store: None,
                    };
                    // The queue is empty: this one always fits.
                    self.enqueue_delivery_bounded(now, cid, d, usize::MAX);
                    continue;
                }
            }
            let Some((id, d)) = session.start_next(window) else {
                return;
            };
            let publish = outbound_publish(now, &d, id, false, version);
            if let (Some(_), Some(id)) = (&publish, id) {
                // Stored before it is sent (the output waits for it), so a
                // restart resends it with the same packet id.
                let state = match d.qos {
                    QoS::ExactlyOnce => OutState::AwaitPubRec(id),
                    _ => OutState::AwaitPubAck(id),
                };
                self.store.put_entry(cid, &d, state);
            }
            let sent = match publish {
                Some(p) => self.send_publish(conn_id, p),
                None => false,
            };
            if !sent {
                if let (Some(session), Some(id)) = (self.sessions.get_mut(cid), id) {
                    session.abandon(id);
                }
                if let Some(r) = d.store {
                    self.store.dequeue(cid, r);
                }
                self.count_drop(cid, d.qos);
            }
        }
    }

    /// Reports `dropped` messages of `cid` dropped at `limit`, as an
    /// [`IoEvent::Limited`] at most every [`LIMITED_LOG_INTERVAL`].
    fn note_limited(&mut self, now: Instant, cid: &ClientId, limit: Limit, dropped: u64) {
        let Some(s) = self.sessions.get_mut(cid) else {
            return;
        };
        s.unlogged_drops += dropped;
        if s.last_limit_log
            .is_some_and(|t| now < t + LIMITED_LOG_INTERVAL)
        {
            return;
        }
        s.last_limit_log = Some(now);
        let dropped = std::mem::take(&mut s.unlogged_drops);
        self.events.push_back(IoEvent::Limited {
            client_id: cid.clone(),
            limit,
            dropped,
        });
    }

    fn count_drop(&mut self, cid: &ClientId, qos: QoS) {
        if let Some(session) = self.sessions.get_mut(cid) {
            session.dropped += 1;
        }
        self.stats.messages_dropped += 1;
        self.stats.dropped_by_qos[qos as usize] += 1;
    }

    /// On reconnect, resends what was in flight ([MQTT-4.4.0-1]).
    fn resend_inflight(&mut self, now: Instant, conn_id: ConnId, cid: &ClientId) {
        let Some(session) = self.sessions.get(cid) else {
            return;
        };
        let Some(version) = self.conns.get(&conn_id).map(|c| c.version) else {
            return;
        };
        let mut packets = Vec::new();
        for f in session.inflight() {
            match f.stage {
                Stage::AwaitComp => {
                    packets.push(Packet::PubRel(PubResponse::new(f.packet_id)));
                }
                Stage::AwaitAck | Stage::AwaitRec => {
                    // An expired message is still resent: its packet id is in
                    // use until acknowledged, and the spec does not allow
                    // dropping a message that is partway through delivery.
                    let mut d = f.delivery.clone();
                    if d.msg.is_expired(now) {
                        let mut m = (*d.msg).clone();
                        m.expires_at = None;
                        d.msg = Arc::new(m);
                    }
                    if let Some(p) = outbound_publish(now, &d, Some(f.packet_id), true, version) {
                        packets.push(Packet::Publish(p));
                    }
                }
            }
        }
        for p in packets {
            match p {
                Packet::Publish(p) => {
                    self.send_publish(conn_id, p);
                }
                other => self.send(conn_id, &other),
            }
        }
    }

    /// Counts a local subscriber of `filter`; the first one is announced to
    /// every shard (returns `true` then).
    fn add_local_filter(&mut self, filter: &TopicFilter, token: Option<u64>) -> bool {
        let n = self.local_filters.entry(filter.clone()).or_insert(0);
        *n += 1;
        if *n != 1 {
            return false;
        }
        self.route_add(filter, self.id);
        for s in 0..self.shards {
            if s != self.id.get() {
                let from = self.id;
                self.outbox[s].push(ShardMsg::RouteAdd {
                    filter: filter.clone(),
                    from,
                    token,
                });
            }
        }
        true
    }

    fn new_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Answers a `RouteAdd`, `Retain` or forwarded publish that asked for
    /// it. Held until the storage changes it caused here are written.
    fn ack(&mut self, to: ShardId, token: Option<u64>) {
        let Some(token) = token else { return };
        let ack = ShardMsg::Ack {
            token,
            delivered: self.outcome.delivered > 0,
            refused: self.outcome.refused > 0,
        };
        if let Some(batch) = self.store.own_barrier() {
            self.store.held_acks.push_back((batch, to, ack));
        } else if let Some(q) = self.outbox.get_mut(to.get()) {
            q.push(ack);
        }
    }

    fn handle_ack(&mut self, now: Instant, token: u64, delivered: bool, refused: bool) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        p.delivered |= delivered;
        p.refused |= refused;
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining > 0 {
            return;
        }
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        // The client may have gone meanwhile; its replies go nowhere then.
        let attached =
            self.conns.get(&p.conn).and_then(|c| c.client_id.as_ref()) == Some(&p.client);
        if !attached {
            return;
        }
        self.store.replying_after = p.after;
        let quota = p.quota_check && p.refused && !p.delivered;
        for packet in &p.replies {
            if quota {
                self.send(p.conn, &quota_exceeded(packet));
            } else {
                self.send(p.conn, packet);
            }
        }
        self.store.replying_after = None;
        // Not for a filter unsubscribed meanwhile.
        let mut retained_for = p.retained_for;
        if let Some(s) = self.sessions.get(&p.client) {
            retained_for.retain(|(f, _)| s.subscriptions.contains_key(f));
        }
        self.send_retained(now, &p.client, retained_for);
    }

    fn remove_local_filter(&mut self, filter: &TopicFilter) {
        let Some(n) = self.local_filters.get_mut(filter) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.local_filters.remove(filter);
            self.route_remove(filter, self.id);
            for s in 0..self.shards {
                if s != self.id.get() {
                    let msg = ShardMsg::RouteRemove {
                        filter: filter.clone(),
                        from: self.id,
                    };
                    self.outbox[s].push(msg);
                }
            }
        }
    }

    fn route_add(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.insert(filter.matching_filter(), key, ());
    }

    fn route_remove(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.remove(filter.matching_filter(), &key);
        if filter.is_shared() && self.routes.subscriber_count(filter.matching_filter()) == 0 {
            self.shared_rr.remove(filter);
        }
    }

    // ---------------------------------------------------------- output

    /// Encodes `packet` into the connection's output buffer.
    fn send(&mut self, conn_id: ConnId, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let was_empty = conn.out.is_empty();
        // A persistent session's output waits for every change made before
        // it (conservative: its state is in the log). A clean session's waits
        // only for the changes its cause made (e.g. a QoS 1 message it
        // published, stored for a persistent subscriber; a stored session
        // its clean start removed); a message delivered to it waits for
        // nothing, since nothing it is told depends on the log.
        let persistent = conn
            .client_id
            .as_ref()
            .and_then(|c| self.sessions.get(c))
            .is_some_and(|s| s.stored);
        let barrier = if persistent {
            self.store.barrier()
        } else if matches!(packet, Packet::Publish(_)) {
            None
        } else {
            self.store.own_barrier()
        };
        if let Some(batch) = barrier {
            // Whatever is said after a change waits until it is written.
            if conn.gates.back().map_or(true, |g| g.1 != batch) {
                conn.gates.push_back((conn.out.len(), batch));
            }
        }
        let stripped;
        let packet = if !conn.problem_info && has_problem_info(packet) {
            // [MQTT-3.1.2-29]: without Request Problem Information, reason
            // strings and user properties go only in PUBLISH, CONNACK and
            // DISCONNECT.
            stripped = strip_problem_info(packet);
            &stripped
        } else {
            packet
        };
        if packet.encode(conn.version, &mut conn.out).is_err() {
            return;
        }
        if was_empty && !conn.woken {
            conn.woken = true;
            self.events.push_back(IoEvent::Wake(conn_id));
        }
    }

    /// Encodes a PUBLISH unless it exceeds the client's Maximum Packet Size
    /// ([MQTT-3.1.2-25]: such a message is discarded). Returns whether it was
    /// written. Towards a client that allows topic aliases, the topic is
    /// replaced by its alias when the client knows it, or sent with a new
    /// (or the least recently used) alias; an alias is bound only by a
    /// PUBLISH that is written.
    fn send_publish(&mut self, conn_id: ConnId, mut p: Publish) -> bool {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return false;
        };
        let qos = p.qos;
        let max = u64::from(conn.client_max_packet);
        let version = conn.version;
        let mut plan = conn.aliases_out.plan(p.topic.as_str());
        // The topic a Known alias stands for, put back if that form is
        // refused.
        let mut topic = None;
        match plan {
            AliasPlan::None => p.properties.topic_alias = None,
            AliasPlan::Known(a) => {
                p.properties.topic_alias = Some(a);
                topic = Some(std::mem::replace(&mut p.topic, TopicName::empty()));
            }
            AliasPlan::Bind(a) => p.properties.topic_alias = Some(a),
        }
        let fits = |p: &Packet| matches!(p.encoded_len(version), Ok(len) if len as u64 <= max);
        let mut packet = Packet::Publish(p);
        if !fits(&packet) {
            if let (AliasPlan::Bind(_), Packet::Publish(p)) = (plan, &mut packet) {
                // Three bytes less without the alias.
                p.properties.topic_alias = None;
                plan = AliasPlan::None;
            }
            if !fits(&packet) {
                return false;
            }
        }
        if let (Some(conn), Packet::Publish(p)) = (self.conns.get_mut(&conn_id), &packet) {
            let t = topic.as_ref().unwrap_or(&p.topic);
            conn.aliases_out.commit(t.as_str(), plan);
        }
        self.send(conn_id, &packet);
        self.stats.messages_sent += 1;
        self.stats.sent_by_qos[qos as usize] += 1;
        true
    }

    /// Closes a connection from the server side: v5 clients get DISCONNECT
    /// with the reason first; the session is detached at once.
    fn close(&mut self, now: Instant, conn_id: ConnId, reason: CloseReason) {
        self.close_with(now, conn_id, reason, None);
    }

    /// [`ShardCore::close`] with a reason string for the v5 DISCONNECT
    /// (allowed whatever Request Problem Information says, §3.1.2.11.7).
    fn close_with(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        reason: CloseReason,
        text: Option<String>,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        let connected = conn.state == ConnState::Connected;
        let v5 = conn.version.is_v5();
        conn.state = ConnState::Closing;
        let rc = match reason {
            CloseReason::ProtocolError(rc) => Some(rc),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            _ => None,
        };
        if let (true, true, Some(rc)) = (connected, v5, rc) {
            // The DISCONNECT goes out even if the buffer is otherwise full.
            let mut d = Disconnect::new(rc);
            d.properties.reason_string = text.map(ByteStr::from);
            self.send(conn_id, &Packet::Disconnect(d));
        }
        let cid = self
            .conns
            .get_mut(&conn_id)
            .and_then(|c| c.client_id.take());
        self.events.push_back(IoEvent::Close(conn_id, reason));
        if let Some(cid) = cid {
            self.detach(now, &cid, conn_id, true);
        }
    }

    // ---------------------------------------------------------- timers

    fn fire(&mut self, now: Instant, timer: Timer) {
        self.store.begin_input();
        match timer {
            Timer::ConnectTimeout(id) => {
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.state == ConnState::AwaitConnect)
                {
                    self.stats.limit_hits[Limit::ConnectTimeout as usize] += 1;
                    self.close(now, id, CloseReason::ConnectTimeout);
                }
            }
            Timer::KeepAlive(id) => {
                let Some(c) = self.conns.get(&id) else { return };
                if c.state != ConnState::Connected || c.keep_alive.is_zero() {
                    return;
                }
                let deadline = c.last_rx + c.keep_alive.mul_f32(1.5);
                if now >= deadline {
                    self.close(now, id, CloseReason::KeepAliveTimeout);
                } else {
                    self.timers.push(Reverse((deadline, Timer::KeepAlive(id))));
                }
            }
            Timer::Will(cid, generation) => {
                let will = match self.sessions.get_mut(&cid) {
                    Some(s) if s.generation == generation && s.conn.is_none() => s.will.take(),
                    _ => None,
                };
                if let Some(w) = will {
                    self.publish_will(now, &cid, *w);
                    if self.sessions.get(&cid).is_some_and(|s| s.stored) {
                        self.store_session(&cid);
                    }
                }
            }
            Timer::SessionExpiry(cid, generation) => {
                let will = match self.sessions.get_mut(&cid) {
                    Some(s) if s.generation == generation && s.conn.is_none() => {
                        Some(s.will.take())
                    }
                    _ => None,
                };
                if let Some(will) = will {
                    if let Some(w) = will {
                        self.publish_will(now, &cid, *w);
                    }
                    self.remove_session(&cid);
                }
            }
            Timer::Sys => {
                self.timers
                    .push(Reverse((now + self.config.sys_interval, Timer::Sys)));
                let stats = self.stats();
                self.stats.store_write_max_us = 0;
                if self.id.get() == 0 {
                    self.sys_stats[0] = stats;
                    self.publish_sys(now);
                } else {
                    self.outbox[0].push(ShardMsg::Stats {
                        from: self.id,
                        stats: Box::new(stats),
                    });
                }
            }
        }
    }

    /// Shard 0 publishes the `$SYS` topics, retained, from every shard's
    /// latest counters.
    fn publish_sys(&mut self, now: Instant) {
        let mut total = ShardStats::default();
        for s in &self.sys_stats {
            total.connections += s.connections;
            total.sessions += s.sessions;
            total.subscriptions += s.subscriptions;
            total.messages_received += s.messages_received;
            total.messages_sent += s.messages_sent;
            total.messages_dropped += s.messages_dropped;
            total.forwarded += s.forwarded;
            total.inflight += s.inflight;
            total.queued += s.queued;
            total.store_writes += s.store_writes;
            total.store_write_us += s.store_write_us;
            total.store_write_max_us = total.store_write_max_us.max(s.store_write_max_us);
            for (t, n) in total.limit_hits.iter_mut().zip(s.limit_hits) {
                *t += n;
            }
            for (t, n) in total.acl_denied.iter_mut().zip(s.acl_denied) {
                *t += n;
            }
            for i in 0..2 {
                total.auth_refused[i] += s.auth_refused[i];
            }
            for q in 0..3 {
                total.received_by_qos[q] += s.received_by_qos[q];
                total.sent_by_qos[q] += s.sent_by_qos[q];
                total.dropped_by_qos[q] += s.dropped_by_qos[q];
            }
        }
        total.retained = self.retained.len() as u64;
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let mut items: Vec<(&'static str, String)> = vec![
            (
                "$SYS/broker/version",
                concat!("vmqtt ", env!("CARGO_PKG_VERSION")).to_string(),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                total.connections.to_string(),
            ),
            ("$SYS/broker/sessions/count", total.sessions.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                total.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                total.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", total.messages_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                total.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/messages/forwarded",
                total.forwarded.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                total.retained.to_string(),
            ),
            ("$SYS/broker/messages/inflight", total.inflight.to_string()),
            ("$SYS/broker/messages/queued", total.queued.to_string()),
            ("$SYS/broker/storage/writes", total.store_writes.to_string()),
            (
                "$SYS/broker/storage/write time/mean us",
                (total.store_write_us / total.store_writes.max(1)).to_string(),
            ),
            (
                "$SYS/broker/storage/write time/max us",
                total.store_write_max_us.to_string(),
            ),
        ];
        const BY_QOS: [[&str; 3]; 3] = [
            [
                "$SYS/broker/messages/received/qos0",
                "$SYS/broker/messages/received/qos1",
                "$SYS/broker/messages/received/qos2",
            ],
            [
                "$SYS/broker/messages/sent/qos0",
                "$SYS/broker/messages/sent/qos1",
                "$SYS/broker/messages/sent/qos2",
            ],
            [
                "$SYS/broker/messages/dropped/qos0",
                "$SYS/broker/messages/dropped/qos1",
                "$SYS/broker/messages/dropped/qos2",
            ],
        ];
        let counts = [
            total.received_by_qos,
            total.sent_by_qos,
            total.dropped_by_qos,
        ];
        for (topics, values) in BY_QOS.iter().zip(counts) {
            for (topic, v) in topics.iter().zip(values) {
                items.push((topic, v.to_string()));
            }
        }
        let mut named: Vec<(String, u64)> = Limit::ALL
            .iter()
            .map(|l| {
                let topic = format!("$SYS/broker/limits/{}", l.as_str());
                (topic, total.limit_hits[*l as usize])
            })
            .collect();
        named.extend([
            (
                "$SYS/broker/acl/denied/publish".to_owned(),
                total.acl_denied[0],
            ),
            (
                "$SYS/broker/acl/denied/subscribe".to_owned(),
                total.acl_denied[1],
            ),
            (
                "$SYS/broker/acl/denied/revoked".to_owned(),
                total.acl_denied[2],
            ),
            (
                "$SYS/broker/auth/refused/bad credentials".to_owned(),
                total.auth_refused[0],
            ),
            (
                "$SYS/broker/auth/refused/not authorized".to_owned(),
                total.auth_refused[1],
            ),
        ]);
        let items = items
            .into_iter()
            .map(|(t, v)| (TopicName::from_static(t), v))
            .chain(
                named
                    .into_iter()
                    .map(|(t, v)| (TopicName::new(ByteStr::from(t)), v.to_string())),
            );
        for (topic, value) in items {
            let Ok(topic) = topic else {
                continue;
            };
            let msg = Arc::new(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: None,
            });
            self.publish(now, msg);
        }
    }
}

/// How many revoked subscriptions [`ShardCore::take_revoked`] lists at most
/// (the others are only counted).
const REVOKED_LISTED: usize = 100;

/// Whether two ACL settings are the same one (a reload makes a new one).
fn same_authorizer(a: &Option<Arc<dyn Authorizer>>, b: &Option<Arc<dyn Authorizer>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Revoked rights: subscriptions re-checked against the ACL in force.
impl ShardCore {
    /// Re-checks the subscriptions of every session attached to a
    /// connection against the ACL in force (called when the ACL changes)
    /// and removes those it no longer allows. A session without a
    /// connection is checked when it reconnects, with the identity it then
    /// has (a restored session's user name is known only then): until
    /// then nothing is delivered to it, and what was queued for a revoked
    /// subscription is dropped before anything is sent.
    pub fn recheck_subscriptions(&mut self) {
        if self.config.authorizer.is_none() {
            return;
        }
        let attached: Vec<ClientId> = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some())
            .map(|s| s.client_id.clone())
            .collect();
        for cid in attached {
            self.recheck_session(&cid);
        }
    }

    /// Re-checks the subscriptions of `cid`'s session against the ACL with
    /// the identity of its connection; removes (and unstores) the ones no
    /// longer allowed, counts them (`acl_denied[2]`), and drops the queued,
    /// not yet sent deliveries that no remaining subscription matches.
    /// Returns how many were removed.
    fn recheck_session(&mut self, cid: &ClientId) -> usize {
        let Some(acl) = self.config.authorizer.clone() else {
            return 0;
        };
        let Some(session) = self.sessions.get(cid) else {
            return 0;
        };
        let Some(conn) = session.conn.and_then(|c| self.conns.get(&c)) else {
            return 0;
        };
        let username = conn.identity.username();
        let revoked: Vec<TopicFilter> = session
            .subscriptions
            .keys()
            .filter(|f| !acl.allow_subscribe(cid.as_str(), username, f.matching_filter()))
            .cloned()
            .collect();
        if revoked.is_empty() {
            return 0;
        }
        let stored = session.stored;
        for filter in &revoked {
            if self.unsubscribe(cid, filter) && stored {
                self.store.ops.push(StoreOp::DeleteSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                });
            }
            self.stats.acl_denied[2] += 1;
            if self.revoked.0.len() < REVOKED_LISTED {
                self.revoked.0.push((cid.clone(), filter.clone()));
            } else {
                self.revoked.1 += 1;
            }
        }
        let dropped = match self.sessions.get_mut(cid) {
            Some(session) => {
                let filters: Vec<TopicFilter> = session.subscriptions.keys().cloned().collect();
                session.take_queued_unless(|d| {
                    let topic = d.msg.topic.as_str();
                    filters.iter().any(|f| f.matches(topic))
                })
            }
            None => Vec::new(),
        };
        for d in dropped {
            if let Some(r) = d.store {
                self.store.dequeue(cid, r);
            }
            self.count_drop(cid, d.qos);
        }
        revoked.len()
    }

    /// The subscriptions removed because the ACL no longer allowed them
    /// since the last call (at most [`REVOKED_LISTED`]), and how many more
    /// were removed beyond those, for the I/O layer to log.
    pub fn take_revoked(&mut self) -> (Vec<(ClientId, TopicFilter)>, u64) {
        std::mem::take(&mut self.revoked)
    }
}

/// Builds the PUBLISH for one delivery at `now`, or `None` if the message
/// has expired ([MQTT-3.3.2-5]).
fn outbound_publish(
    now: Instant,
    d: &Delivery,
    packet_id: Option<PacketId>,
    dup: bool,
    version: ProtocolVersion,
) -> Option<Publish> {
    if d.msg.is_expired(now) {
        return None;
    }
    let properties = if version.is_v5() {
        let mut p = d.msg.properties.clone();
        p.message_expiry_interval = d.msg.remaining_expiry(now);
        p.subscription_identifiers.clone_from(&d.sub_ids);
        p
    } else {
        PublishProperties::default()
    };
    Some(Publish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.clone(),
        packet_id,
        properties,
        payload: d.msg.payload.clone(),
    })
}

fn has_problem_info(packet: &Packet) -> bool {
    match packet {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            !r.properties.is_empty()
        }
        Packet::SubAck(a) => !a.properties.is_empty(),
        Packet::UnsubAck(a) => !a.properties.is_empty(),
        _ => false,
    }
}

fn strip_problem_info(packet: &Packet) -> Packet {
    let mut p = packet.clone();
    match &mut p {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.properties = AckProperties::default();
        }
        Packet::SubAck(a) => a.properties = AckProperties::default(),
        Packet::UnsubAck(a) => a.properties = AckProperties::default(),
        _ => {}
    }
    p
}

/// The protocol level of a CONNECT at the start of `buf`, if enough of it is
/// there, so a refusal can be answered in the client's version.
fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]));
    buf.get(i + 3 + name_len).copied()
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
