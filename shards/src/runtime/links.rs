//! One shard's node links (`[cluster]`): a stream to each peer node,
//! dialed lazily (shard 0 dials every peer at once: its stream carries the
//! node's routes), and the streams other nodes' shards opened to this one.
//! The protocol is `vmqtt-cluster`'s (sans-IO); this moves its bytes.
//!
//! Shard `s` of this node streams to shard `s % their shards` of a peer, at
//! the peer's port + that shard. A message crosses once per node; the
//! receiving shard hands it to the node's other shards over the mesh.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer;
use tracing::{debug, info, warn};

use vmqtt::broker::{ClusterOut, Epoch, Message, NodeId, RetainVersion, SessionMsg};
use vmqtt::codec::QoS;
use vmqtt::topic::TopicFilter;
use vmqtt_cluster::{
    Accept, AcceptStep, Acceptor, DialStep, Dialer, Frame, Hello, Inbound, Item, LinkSecret,
    Member, Membership, OutItem, Outbound, Seq, PROTOCOL_VERSION,
};

use super::shard::{spawn_into, Shard};
use super::MeshMsg;
use crate::notify::Notify;

/// A batch is cut at once when this much waits.
const CUT_BYTES: usize = 64 * 1024;
/// The handshake's bound.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Dialing's bound.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Redial backoff: first and longest wait.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Between two pings of an established link (its round trip, measured).
const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping unanswered this long: the peer is gone or the path is (a
/// half-open connection): the link is closed and dialed again.
const PING_DEAD: Duration = Duration::from_secs(10);

/// What a shard needs to be a member of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster's name.
    pub name: String,
    /// This node.
    pub node: NodeId,
    /// The links' shared secret.
    pub secret: Arc<LinkSecret>,
    /// The node's peer address; this shard listens on its port + index.
    pub listen: SocketAddr,
    /// The longest a message waits in a batch.
    pub flush: Duration,
    /// Bytes a stream holds for one peer.
    pub max_link_bytes: usize,
    /// The membership when the shard starts.
    pub membership: Arc<Membership>,
    /// The node's lease TTL: cut off from etcd longer (and from most
    /// peers), the node fences itself.
    pub lease_ttl: Duration,
}

/// This shard's address on the peer port.
pub fn shard_listen(base: SocketAddr, index: usize) -> SocketAddr {
    let mut a = base;
    a.set_port(base.port().wrapping_add(index as u16));
    a
}

/// The stream to one life (epoch) of a peer node.
struct Peer {
    node: NodeId,
    member: Member,
    out: RefCell<Outbound>,
    /// Something waits to be written (or the peer is gone).
    notify: Notify,
    gone: Cell<bool>,
    dialing: Cell<bool>,
    connected_once: Cell<bool>,
    /// The link's last measured round trip (ping to pong).
    rtt: Cell<Option<Duration>>,
    /// (Shard 0) the retained replica still to send this life of the
    /// peer, which may have missed updates while it was away; fed into
    /// the stream as it has room ([`Peer::feed_resync`]).
    resync: RefCell<VecDeque<(Arc<Message>, RetainVersion)>>,
}

impl Peer {
    /// Moves retained messages of the resync into the stream while it holds
    /// less than half its bound (the rest waits for acknowledgements).
    fn feed_resync(&self, max_bytes: usize) {
        let mut resync = self.resync.borrow_mut();
        if resync.is_empty() {
            return;
        }
        let mut out = self.out.borrow_mut();
        while out.held_bytes() < max_bytes / 2 {
            let Some((msg, version)) = resync.pop_front() else {
                break;
            };
            if out.push(OutItem::Retain(msg, version), None).is_err() {
                break;
            }
        }
        if resync.is_empty() {
            debug!(node = self.node.0, "node link: retained replica sent");
        }
    }
}

/// One other node's stream into this shard.
struct InStream {
    epoch: Epoch,
    inbound: Inbound,
    /// An acknowledgement is ready to go (wakes the connection's writer).
    ack_ready: Rc<Notify>,
}

impl InStream {
    fn new(epoch: Epoch) -> InStream {
        InStream {
            epoch,
            inbound: Inbound::new(),
            ack_ready: Rc::new(Notify::default()),
        }
    }
}

/// Where a ticket's batch is: the stream and the batch.
type StreamKey = (NodeId, u16);

/// A shard's links. Shard-local.
pub(crate) struct Links {
    spec: ClusterSpec,
    membership: RefCell<Arc<Membership>>,
    peers: RefCell<HashMap<NodeId, Rc<Peer>>>,
    /// (node, its shard) → its stream into this shard.
    inbound: RefCell<HashMap<StreamKey, InStream>>,
    /// Messages from other nodes whose publishers wait: ticket → their
    /// batch, acknowledged once all its tickets are done.
    tickets: RefCell<HashMap<u64, (StreamKey, Seq)>>,
    next_ticket: Cell<u64>,
    /// The partition map the core has (claims are off until it has one).
    map: RefCell<Option<Arc<vmqtt_cluster::PartitionMap>>>,
    /// Since when etcd has not answered (as the etcd thread last said).
    etcd_lost_at: Cell<Option<Instant>>,
    /// (Shard 0) whether the node is fenced now.
    fenced: Cell<bool>,
}

impl Links {
    pub(super) fn new(spec: ClusterSpec) -> Links {
        let membership = spec.membership.clone();
        Links {
            spec,
            membership: RefCell::new(membership),
            peers: RefCell::new(HashMap::new()),
            inbound: RefCell::new(HashMap::new()),
            tickets: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            map: RefCell::new(None),
            etcd_lost_at: Cell::new(None),
            fenced: Cell::new(false),
        }
    }

    fn new_ticket(&self, key: StreamKey, seq: Seq) -> u64 {
        let t = self.next_ticket.get() + 1;
        self.next_ticket.set(t);
        self.tickets.borrow_mut().insert(t, (key, seq));
        t
    }

    /// The core is done with these tickets (stored where needed): their
    /// batches may be acknowledged.
    pub(super) fn tickets_done(&self, done: Vec<u64>) {
        let mut tickets = self.tickets.borrow_mut();
        let mut inbound = self.inbound.borrow_mut();
        for t in done {
            let Some((key, seq)) = tickets.remove(&t) else {
                continue;
            };
            if let Some(s) = inbound.get_mut(&key) {
                s.inbound.item_done(seq);
                s.ack_ready.notify();
            }
        }
    }

    /// Each peer stream's state and counters, for the endpoint.
    pub(super) fn link_infos(&self, shard: usize) -> Vec<crate::http::LinkInfo> {
        let mut v: Vec<_> = self
            .peers
            .borrow()
            .values()
            .map(|p| {
                let out = p.out.borrow();
                crate::http::LinkInfo {
                    peer: p.node.0,
                    epoch: p.member.epoch.0,
                    addr: p
                        .member
                        .shard_addr(p.member.shard_for(shard as u16))
                        .to_string(),
                    up: out.is_connected(),
                    queued_bytes: out.held_bytes() as u64,
                    unacked: out.unacked() as u64,
                    stats: out.stats(),
                    rtt: p.rtt.get(),
                }
            })
            .collect();
        v.sort_by_key(|l| l.peer);
        v
    }

    /// The cluster as `$SYS` reports it.
    pub(super) fn status(&self) -> vmqtt::broker::ClusterStatus {
        let m = self.membership.borrow();
        vmqtt::broker::ClusterStatus {
            nodes: m.nodes.len() as u64,
            peers_linked: self
                .peers
                .borrow()
                .values()
                .filter(|p| p.out.borrow().is_connected())
                .count() as u64,
            etcd_up: m.etcd_up,
        }
    }

    /// The membership for the endpoint.
    pub(super) fn cluster_info(&self) -> crate::http::ClusterInfo {
        crate::http::ClusterInfo {
            node: self.spec.node.0,
            name: self.spec.name.clone(),
            membership: Membership::clone(&self.membership.borrow()),
        }
    }

    /// The membership now.
    pub(super) fn membership(&self) -> Arc<Membership> {
        self.membership.borrow().clone()
    }

    fn my_epoch(&self) -> Epoch {
        self.membership
            .borrow()
            .epoch_of(self.spec.node)
            .unwrap_or_default()
    }

    fn hello(&self, shard: usize) -> Option<Hello> {
        Some(Hello {
            version: PROTOCOL_VERSION,
            cluster: self.spec.name.clone(),
            node: self.spec.node,
            epoch: self.my_epoch(),
            shard: shard as u16,
            nonce: vmqtt_cluster::nonce()?,
        })
    }

    /// Hands what the core produced to the streams; tokens that will never
    /// be acknowledged by a link (no such peer, stream full) go to `done`.
    pub(super) fn dispatch(&self, shard: &Rc<Shard>, out: Vec<ClusterOut>, done: &mut Vec<u64>) {
        let peers = self.peers.borrow();
        let mut touched: Vec<Rc<Peer>> = Vec::new();
        for o in out {
            match o {
                ClusterOut::Publish {
                    node,
                    msg,
                    token,
                    groups,
                } => match peers.get(&node) {
                    Some(p) => push(p, OutItem::Publish(msg, groups), token, done, &mut touched),
                    None => done.extend(token),
                },
                ClusterOut::GroupPublish { node, msg, groups } => {
                    if let Some(p) = peers.get(&node) {
                        let item = OutItem::GroupPublish(msg, groups);
                        push(p, item, None, done, &mut touched);
                    }
                }
                ClusterOut::Retain(msg, version) => {
                    for p in peers.values() {
                        let item = OutItem::Retain(msg.clone(), version);
                        push(p, item, None, done, &mut touched);
                    }
                }
                ClusterOut::RouteAdd(f) => {
                    for p in peers.values() {
                        push(p, OutItem::RouteAdd(f.clone()), None, done, &mut touched);
                    }
                }
                ClusterOut::RouteRemove(f) => {
                    for p in peers.values() {
                        push(p, OutItem::RouteRemove(f.clone()), None, done, &mut touched);
                    }
                }
            }
        }
        drop(peers);
        for p in &touched {
            p.notify.notify();
            self.ensure_dialing(shard, p);
        }
    }

    fn ensure_dialing(&self, shard: &Rc<Shard>, peer: &Rc<Peer>) {
        if !peer.dialing.replace(true) {
            spawn_into(shard.queues.mesh, dial_loop(shard.clone(), peer.clone()));
        }
    }

    /// A new membership snapshot: streams to nodes that left (or began a
    /// new life) end, their tokens done and their routes dropped; new
    /// nodes get a stream (dialed now by shard 0, for the routes).
    pub(super) fn on_membership(
        &self,
        shard: &Rc<Shard>,
        new: Arc<Membership>,
        done: &mut Vec<u64>,
    ) {
        let me = self.spec.node;
        let mine_changed = {
            let old = self.membership.borrow();
            new.epoch_of(me).is_some() && new.epoch_of(me) != old.epoch_of(me)
        };
        let new_map = match (&*self.map.borrow(), &new.partitions) {
            (Some(a), Some(b)) if a.revision == b.revision && a.same_owners(b) => None,
            (_, Some(b)) => Some(b.clone()),
            (_, None) => None,
        };
        if let Some(m) = &new_map {
            *self.map.borrow_mut() = Some(m.clone());
        }
        if new.etcd_up {
            self.etcd_lost_at.set(None);
        } else if self.etcd_lost_at.get().is_none() {
            self.etcd_lost_at.set(Some(Instant::now()));
        }
        *self.membership.borrow_mut() = new.clone();
        let mut gone = Vec::new();
        // This node's new life: what the old streams held for peers still
        // in theirs goes on the new streams (acknowledged publishes must
        // reach them after a partition heals).
        let mut carried = HashMap::new();
        {
            let mut peers = self.peers.borrow_mut();
            peers.retain(|node, p| {
                let same = new.epoch_of(*node) == Some(p.member.epoch);
                if same && !mine_changed {
                    return true;
                }
                p.gone.set(true);
                if same {
                    carried.insert(*node, p.out.borrow_mut().take_carried());
                } else {
                    p.out.borrow_mut().peer_gone(done);
                }
                p.notify.notify();
                if !same {
                    gone.push(*node);
                }
                false
            });
            for (node, m) in &new.nodes {
                if *node == me || peers.contains_key(node) {
                    continue;
                }
                info!(shard = shard.index, node = node.0, peer = %m.peer, "node link: new peer");
                peers.insert(
                    *node,
                    Rc::new(Peer {
                        node: *node,
                        member: m.clone(),
                        out: RefCell::new(Outbound::new(self.spec.max_link_bytes)),
                        notify: Notify::default(),
                        gone: Cell::new(false),
                        dialing: Cell::new(false),
                        connected_once: Cell::new(false),
                        rtt: Cell::new(None),
                        resync: RefCell::new(VecDeque::new()),
                    }),
                );
            }
            for (node, (items, tokens)) in carried {
                match peers.get(&node) {
                    Some(p) => p.out.borrow_mut().carry(items, tokens),
                    None => done.extend(tokens),
                }
            }
        }
        // (A new life of this node: every peer starts a new stream to it,
        // numbered from 1, so nothing of the old streams may count as
        // received.)
        self.inbound
            .borrow_mut()
            .retain(|(node, _), s| !mine_changed && new.epoch_of(*node) == Some(s.epoch));
        {
            let inbound = self.inbound.borrow();
            self.tickets
                .borrow_mut()
                .retain(|_, (key, _)| inbound.contains_key(key));
        }
        if !gone.is_empty() {
            let mut core = shard.core.borrow_mut();
            for node in gone {
                info!(
                    shard = shard.index,
                    node = node.0,
                    "node gone: its routes dropped"
                );
                core.handle_node_gone(node);
            }
        }
        {
            // (After the gone ones: a node's new life is a member again.)
            let nodes: Vec<NodeId> = new.nodes.keys().copied().collect();
            shard.core.borrow_mut().set_members(&nodes);
        }
        if let Some(map) = new_map {
            if shard.index == 0 {
                info!(
                    epoch = map.revision,
                    owned = map.owned_by(me),
                    "partition map: claims of client ids go to their partition's owner"
                );
            }
            shard
                .core
                .borrow_mut()
                .set_partition_map(Instant::now(), map);
        } else if mine_changed {
            shard.core.borrow_mut().reregister_all(Instant::now());
        }
        if shard.index == 0 {
            let peers: Vec<_> = self.peers.borrow().values().cloned().collect();
            for p in &peers {
                self.ensure_dialing(shard, p);
            }
            self.check_fence(shard);
        }
    }

    /// (Shard 0) Fencing: a node that has not reached etcd for longer than
    /// its lease TTL (its peers have dropped it and given its partitions
    /// away) and has links up to fewer than half of the other members (it
    /// is on the minority side of a split, not merely without etcd like
    /// everyone) accepts no CONNECT and grants no claim until either comes
    /// back. Told to every shard's core.
    pub(super) fn check_fence(&self, shard: &Rc<Shard>) {
        let now = Instant::now();
        let cut_off = self
            .etcd_lost_at
            .get()
            .is_some_and(|t| now.duration_since(t) >= self.spec.lease_ttl);
        let (others, linked) = {
            let m = self.membership.borrow();
            let others = m.nodes.keys().filter(|n| **n != self.spec.node).count();
            let linked = self
                .peers
                .borrow()
                .values()
                .filter(|p| p.out.borrow().is_connected())
                .count();
            (others, linked)
        };
        let fenced = cut_off && (linked + 1) * 2 <= others + 1;
        if fenced == self.fenced.replace(fenced) {
            return;
        }
        if fenced {
            warn!(
                linked,
                others,
                "fenced: cut off from etcd longer than the lease TTL and from most peers; \
                 refusing new connections (Server Unavailable) until etcd or the peers are back"
            );
        } else {
            info!("no longer fenced: accepting connections again");
        }
        shard.core.borrow_mut().set_fenced(now, fenced);
        shard.after();
    }

    /// Puts what the core says about sessions on the streams to their
    /// nodes (one to a node that is not a member is dropped: the claim it
    /// belonged to times out). Tokens of forwarded deliveries no link will
    /// carry go to `done`.
    pub(super) fn send_sessions(
        &self,
        shard: &Rc<Shard>,
        out: Vec<(NodeId, SessionMsg, Option<u64>)>,
        done: &mut Vec<u64>,
    ) {
        let peers = self.peers.borrow();
        let mut touched: Vec<Rc<Peer>> = Vec::new();
        for (node, m, token) in out {
            debug!(to = node.0, msg = m.summary(), "session message: sent");
            match peers.get(&node) {
                Some(p) => push(p, OutItem::Session(m), token, done, &mut touched),
                None => {
                    done.extend(token);
                    debug!(
                        node = node.0,
                        client_id = m.client().as_str(),
                        "session message for a node that is not a member: dropped"
                    );
                }
            }
        }
        drop(peers);
        for p in &touched {
            p.notify.notify();
            self.ensure_dialing(shard, p);
        }
    }
}

/// Queues `item` on `peer`'s stream (a refused token goes to `done`) and
/// notes the peer for a wake-up.
fn push(
    peer: &Rc<Peer>,
    item: OutItem,
    token: Option<u64>,
    done: &mut Vec<u64>,
    touched: &mut Vec<Rc<Peer>>,
) {
    if let Err(t) = peer.out.borrow_mut().push(item, token) {
        done.extend(t);
    }
    if !touched.iter().any(|p| Rc::ptr_eq(p, peer)) {
        touched.push(peer.clone());
    }
}

/// Writes one frame.
async fn send(stream: &mut TcpStream, frame: &Frame) -> bool {
    let mut buf = BytesMut::new();
    frame.encode(Instant::now(), &mut buf);
    stream.write_all(&buf).await.is_ok()
}

/// Tells the other side why the handshake failed; returns the reason.
async fn refuse(stream: &mut TcpStream, why: String) -> String {
    let _ = send(stream, &Frame::Refuse(why.clone())).await;
    why
}

/// A handshake, bounded by [`HANDSHAKE_TIMEOUT`].
async fn bounded<T>(
    handshake: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let timeout = async {
        timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err("handshake timed out".to_string())
    };
    futures_lite::future::or(handshake, timeout).await
}

/// Reads until a whole frame is in `buf`; `None` on EOF, error or a bad
/// frame.
async fn next_frame<R: futures_lite::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> Option<Frame> {
    loop {
        match Frame::decode(buf, Instant::now()) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "node link: bad frame, closing");
                return None;
            }
        }
        match rd.read(scratch).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
        }
    }
}

/// Completes tokens and lets the shard act on what that produced.
/// Publishes with these tokens will not reach their node (it is gone, or
/// no stream could take them): their publishers' acknowledgements wait no
/// more, counting them as not delivered.
pub(super) fn lost(shard: &Rc<Shard>, tokens: Vec<u64>) {
    if tokens.is_empty() {
        return;
    }
    let now = Instant::now();
    {
        let mut core = shard.core.borrow_mut();
        for t in tokens {
            core.handle_cluster_lost(now, t);
        }
    }
    shard.after();
}

pub(super) fn complete(shard: &Rc<Shard>, done: Vec<u64>) {
    if done.is_empty() {
        return;
    }
    let now = Instant::now();
    {
        let mut core = shard.core.borrow_mut();
        for t in done {
            core.handle_cluster_ack(now, t);
        }
    }
    shard.after();
}

/// Dials a peer and carries its stream, redialing with backoff, until
/// the peer is gone or the shard stops.
async fn dial_loop(shard: Rc<Shard>, peer: Rc<Peer>) {
    let Some(links) = shard.links.clone() else {
        return;
    };
    let to = peer.member.shard_for(shard.index as u16);
    let addr = peer.member.shard_addr(to);
    let mut backoff = BACKOFF_MIN;
    let mut scratch = vec![0u8; CUT_BYTES];
    while !peer.gone.get() && !shard.stopping.get() {
        match dial(&shard, &links, &peer, addr, &mut scratch).await {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                carry(&shard, &peer, stream, &mut scratch).await;
                peer.out.borrow_mut().on_disconnected();
                peer.rtt.set(None);
                if !peer.gone.get() {
                    info!(shard = shard.index, node = peer.node.0, %addr, "node link: down, redialing");
                }
            }
            Err(why) => {
                debug!(shard = shard.index, node = peer.node.0, %addr, why, "node link: dial failed");
                timer::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Connects and runs the handshake as the dialer.
async fn dial(
    shard: &Rc<Shard>,
    links: &Links,
    peer: &Rc<Peer>,
    addr: SocketAddr,
    scratch: &mut [u8],
) -> Result<(TcpStream, BytesMut), String> {
    let mut stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let me = links
        .hello(shard.index)
        .ok_or("no randomness for a nonce")?;
    let (mut dialer, hello) = Dialer::new(me, peer.node, peer.member.epoch);
    let handshake = async {
        if !send(&mut stream, &hello).await {
            return Err("write failed".to_string());
        }
        let mut buf = BytesMut::new();
        loop {
            let frame = next_frame(&mut stream, &mut buf, scratch)
                .await
                .ok_or("closed during the handshake")?;
            match dialer.on_frame(frame, &links.spec.secret) {
                Ok(DialStep::Send(f)) => {
                    if !send(&mut stream, &f).await {
                        return Err("write failed".into());
                    }
                }
                Ok(DialStep::Wait) => {}
                Ok(DialStep::Established { received, .. }) => return Ok((received, buf)),
                Err(refused) => return Err(refuse(&mut stream, refused.to_string()).await),
            }
        }
    };
    let (received, buf) = bounded(handshake).await?;
    // A fresh stream to this life of the peer: it knows none of this
    // node's routes yet (only shard 0's stream carries them).
    let fresh = (!peer.connected_once.replace(true) && shard.index == 0)
        .then(|| shard.core.borrow().node_filters());
    if fresh.is_some() {
        // Nor may it have every retained update (it may have been away):
        // it gets this node's replica, versions included, and keeps what
        // is newer than its own.
        let replica = shard.core.borrow().retained_snapshot();
        if !replica.is_empty() {
            info!(
                node = peer.node.0,
                retained = replica.len(),
                "node link: sending the retained replica to a new life of the peer"
            );
        }
        *peer.resync.borrow_mut() = replica.into();
    }
    peer.out.borrow_mut().on_connected(received, fresh);
    peer.notify.notify();
    info!(shard = shard.index, node = peer.node.0, %addr, resumed_after = received.0, "node link: up");
    Ok((stream, buf))
}

/// Writes batches and reads acknowledgements until the connection fails
/// or the peer is gone.
async fn carry(
    shard: &Rc<Shard>,
    peer: &Rc<Peer>,
    (stream, mut buf): (TcpStream, BytesMut),
    scratch: &mut [u8],
) {
    let (flush, max_link_bytes) = shard
        .links
        .as_ref()
        .map_or((Duration::from_micros(200), usize::MAX), |l| {
            (l.spec.flush, l.spec.max_link_bytes)
        });
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    // The ping in flight: its number and when it went.
    let ping: Cell<Option<(u64, Instant)>> = Cell::new(None);
    let writer = async {
        let mut out = BytesMut::new();
        let mut pings = 0u64;
        let mut last_ping = Instant::now();
        loop {
            let due = PING_EVERY.saturating_sub(last_ping.elapsed());
            futures_lite::future::or(peer.notify.wait(), timer::sleep(due)).await;
            if peer.gone.get() || shard.stopping.get() {
                return;
            }
            if last_ping.elapsed() >= PING_EVERY {
                last_ping = Instant::now();
                match ping.get() {
                    Some((_, sent)) if sent.elapsed() >= PING_DEAD => {
                        warn!(
                            shard = shard.index,
                            node = peer.node.0,
                            "node link: no answer to a ping for {} s, closing",
                            PING_DEAD.as_secs()
                        );
                        return;
                    }
                    Some(_) => {}
                    None => {
                        pings += 1;
                        ping.set(Some((pings, Instant::now())));
                        Frame::Ping(pings).encode(Instant::now(), &mut out);
                    }
                }
            }
            // Gather: until enough waits, the longest wait passed, or a
            // turn of the executor brought nothing new (the shard is idle).
            let started = Instant::now();
            loop {
                let before = peer.out.borrow().waiting_bytes();
                if before >= CUT_BYTES || started.elapsed() >= flush {
                    break;
                }
                futures_lite::future::yield_now().await;
                if peer.out.borrow().waiting_bytes() == before {
                    break;
                }
            }
            peer.feed_resync(max_link_bytes);
            {
                let mut o = peer.out.borrow_mut();
                o.cut();
                if !o.is_connected() {
                    return;
                }
                o.poll_transmit(Instant::now(), &mut out);
            }
            if !out.is_empty() {
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                if out.capacity() > 4 * CUT_BYTES {
                    out = BytesMut::new();
                }
            }
        }
    };
    let reader = async {
        while let Some(frame) = next_frame(&mut rd, &mut buf, scratch).await {
            match frame {
                Frame::Ack(seq) => {
                    let mut done = Vec::new();
                    peer.out.borrow_mut().on_ack(seq, &mut done);
                    complete(shard, done);
                    if !peer.resync.borrow().is_empty() {
                        peer.notify.notify();
                    }
                }
                Frame::Pong(n) => {
                    if let Some((sent_n, sent)) = ping.get() {
                        if sent_n == n {
                            peer.rtt.set(Some(sent.elapsed()));
                            ping.set(None);
                        }
                    }
                }
                other => {
                    warn!(shard = shard.index, node = peer.node.0, frame = ?std::mem::discriminant(&other), "node link: unexpected frame from the acceptor");
                    return;
                }
            }
        }
    };
    futures_lite::future::or(writer, reader).await;
}

/// Accepts other nodes' links on this shard's peer port.
pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(_) | Err(_) if shard.stopping.get() => return,
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                spawn_into(shard.queues.mesh, serve_link(shard.clone(), stream));
            }
            Err(e) => {
                warn!(shard = shard.index, error = %e, "node link: accept failed");
                timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the acceptor's handshake, then takes the stream's batches.
async fn serve_link(shard: Rc<Shard>, mut stream: TcpStream) {
    let Some(links) = shard.links.clone() else {
        return;
    };
    let peer_addr = stream.peer_addr().ok();
    let mut scratch = vec![0u8; CUT_BYTES];
    let mut buf = BytesMut::new();
    let Some(me) = links.hello(shard.index) else {
        return;
    };
    let mut acceptor = Acceptor::new(me);
    let handshake = async {
        loop {
            let frame = next_frame(&mut stream, &mut buf, &mut scratch)
                .await
                .ok_or("closed during the handshake")?;
            let step = acceptor.on_frame(frame, &links.spec.secret, |node| {
                links.membership.borrow().epoch_of(node)
            });
            match step {
                Ok(AcceptStep::Send(f)) => {
                    if !send(&mut stream, &f).await {
                        return Err("write failed".to_string());
                    }
                }
                Ok(AcceptStep::Proven { peer, proof }) => {
                    // Only a current member's current life may send.
                    if links.membership.borrow().epoch_of(peer.node) != Some(peer.epoch) {
                        let why = format!(
                            "node {} epoch {:x} is not a current member here",
                            peer.node.0, peer.epoch.0
                        );
                        return Err(refuse(&mut stream, why).await);
                    }
                    return Ok((peer, proof));
                }
                Err(refused) => return Err(refuse(&mut stream, refused.to_string()).await),
            }
        }
    };
    let (peer, proof) = match bounded(handshake).await {
        Ok(x) => x,
        Err(why) => {
            warn!(shard = shard.index, from = ?peer_addr, why, "node link: refused");
            return;
        }
    };
    let key = (peer.node, peer.shard);
    let (received, done_mark, ack_ready) = {
        let mut inbound = links.inbound.borrow_mut();
        let s = inbound
            .entry(key)
            .or_insert_with(|| InStream::new(peer.epoch));
        if s.epoch != peer.epoch {
            *s = InStream::new(peer.epoch);
        }
        (
            s.inbound.received(),
            s.inbound.done_mark(),
            s.ack_ready.clone(),
        )
    };
    if !send(&mut stream, &proof).await || !send(&mut stream, &Frame::Welcome { received }).await {
        return;
    }
    // An acknowledgement sent on a connection that broke may be lost.
    if done_mark.0 > 0 && !send(&mut stream, &Frame::Ack(done_mark)).await {
        return;
    }
    debug!(
        shard = shard.index,
        node = peer.node.0,
        from_shard = peer.shard,
        resumes_after = received.0,
        "node link: accepted"
    );
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    // A ping to answer.
    let pong: Cell<Option<u64>> = Cell::new(None);
    let writer = async {
        let mut acks = BytesMut::new();
        loop {
            ack_ready.wait().await;
            if let Some(n) = pong.take() {
                acks.clear();
                Frame::Pong(n).encode(Instant::now(), &mut acks);
                if wr.write_all(&acks).await.is_err() {
                    return;
                }
            }
            let ack = links
                .inbound
                .borrow_mut()
                .get_mut(&key)
                .filter(|s| s.epoch == peer.epoch)
                .map(|s| s.inbound.take_ack());
            match ack {
                None => return,
                Some(None) => {}
                Some(Some(f)) => {
                    acks.clear();
                    f.encode(Instant::now(), &mut acks);
                    if wr.write_all(&acks).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let reader = async {
        loop {
            let Some(frame) = next_frame(&mut rd, &mut buf, &mut scratch).await else {
                return;
            };
            let mut frames = vec![frame];
            // Everything already read is taken before the shard acts.
            loop {
                match Frame::decode(&mut buf, Instant::now()) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(shard = shard.index, node = peer.node.0, error = %e, "node link: bad frame, closing");
                        return;
                    }
                }
            }
            for frame in frames {
                if let Frame::Ping(n) = frame {
                    pong.set(Some(n));
                    ack_ready.notify();
                    continue;
                }
                let Frame::Batch { seq, items } = frame else {
                    warn!(
                        shard = shard.index,
                        node = peer.node.0,
                        "node link: unexpected frame from the dialer"
                    );
                    return;
                };
                if links.membership.borrow().epoch_of(peer.node) != Some(peer.epoch) {
                    info!(
                        shard = shard.index,
                        node = peer.node.0,
                        "node link: the peer's life ended, closing"
                    );
                    return;
                }
                let accepted = {
                    let mut inbound = links.inbound.borrow_mut();
                    let Some(s) = inbound.get_mut(&key).filter(|s| s.epoch == peer.epoch) else {
                        return;
                    };
                    s.inbound.on_batch(seq)
                };
                match accepted {
                    Ok(Accept::New) => {
                        let awaited = apply(&shard, &links, key, seq, items);
                        if let Some(s) = links.inbound.borrow_mut().get_mut(&key) {
                            s.inbound.processed(seq, awaited);
                        }
                        let done = shard.core.borrow_mut().take_cluster_done();
                        links.tickets_done(done);
                    }
                    // Acknowledged when done (or already, then again now).
                    Ok(Accept::Duplicate) => {}
                    Err(gap) => {
                        warn!(shard = shard.index, node = peer.node.0, error = %gap, "node link: closing");
                        return;
                    }
                }
            }
            ack_ready.notify();
            shard.after();
        }
    };
    futures_lite::future::or(reader, writer).await;
}

/// A batch's items, for this node; returns how many the batch's
/// acknowledgement waits for (QoS 1/2 messages, until stored here).
fn apply(shard: &Rc<Shard>, links: &Links, key: StreamKey, seq: Seq, items: Vec<Item>) -> usize {
    let node = key.0;
    let now = Instant::now();
    let mut awaited = 0;
    for item in items {
        match item {
            Item::Publish(msg, groups) => {
                awaited += publish_here(shard, links, (key, seq), now, msg, groups, false);
            }
            Item::GroupPublish(msg, groups) => {
                awaited += publish_here(shard, links, (key, seq), now, msg, groups, true);
            }
            Item::Retain(msg, version) => shard
                .core
                .borrow_mut()
                .handle_cluster_retain(now, msg, version),
            Item::Routes(all) => node_routes(shard, node, Some(all), Vec::new(), Vec::new()),
            Item::RouteAdd(f) => node_routes(shard, node, None, vec![f], Vec::new()),
            Item::RouteRemove(f) => node_routes(shard, node, None, Vec::new(), vec![f]),
            Item::Session(SessionMsg::Forward(f)) if f.qos != QoS::AtMostOnce => {
                awaited += 1;
                let ticket = links.new_ticket(key, seq);
                shard
                    .core
                    .borrow_mut()
                    .handle_forward(now, *f, Some(ticket));
            }
            Item::Session(m) => {
                debug!(
                    from = node.0,
                    msg = m.summary(),
                    "session message: received"
                );
                shard.core.borrow_mut().handle_session_msg(now, node, m)
            }
        }
    }
    awaited
}

/// A message from another node for this node's subscribers (only the
/// members of `groups`, if `groups_only`); a QoS 1/2 one gets a ticket the
/// batch's acknowledgement waits for. Returns how many it waits for.
fn publish_here(
    shard: &Rc<Shard>,
    links: &Links,
    (key, seq): (StreamKey, Seq),
    now: Instant,
    msg: Message,
    groups: Vec<TopicFilter>,
    groups_only: bool,
) -> usize {
    let ticket = (msg.qos != QoS::AtMostOnce).then(|| links.new_ticket(key, seq));
    let mut core = shard.core.borrow_mut();
    if groups_only {
        core.handle_cluster_group_publish(now, msg, ticket, groups);
    } else {
        core.handle_cluster_publish(now, msg, ticket, groups);
    }
    usize::from(ticket.is_some())
}

/// Another node's routes: for this shard's core and every other shard's.
fn node_routes(
    shard: &Rc<Shard>,
    node: NodeId,
    snapshot: Option<Vec<TopicFilter>>,
    add: Vec<TopicFilter>,
    remove: Vec<TopicFilter>,
) {
    shard
        .core
        .borrow_mut()
        .handle_node_routes(node, snapshot.clone(), &add, &remove);
    for s in 0..shard.shards {
        if s != shard.index {
            shard.outq.push(
                s,
                MeshMsg::NodeRoutes {
                    node,
                    snapshot: snapshot.clone(),
                    add: add.clone(),
                    remove: remove.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_listens_on_the_base_port_plus_its_index() {
        let base: SocketAddr = "127.0.0.1:1884".parse().unwrap();
        assert_eq!(shard_listen(base, 0), base);
        assert_eq!(shard_listen(base, 3).to_string(), "127.0.0.1:1887");
    }
}
