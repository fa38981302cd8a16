//! One session per client id across the cluster: the claim a CONNECT makes
//! at the owner of its client id's partition, the registry the owner keeps,
//! and the session handed from the node that held it to the node the
//! client connected to ([`SessionMsg`]). Off until the runtime gives the
//! core a partition map ([`ShardCore::set_partition_map`]).
//!
//! Everything about client `X` happens on `X`'s home shard of each node:
//! the registry of `X` on the owner node, the session on the holder, the
//! CONNECT on the claimant. A message arriving on another shard is passed
//! on to that one ([`ShardMsg::Session`]).
//!
//! The flow of a CONNECT of `X` on node B, when the owner O says node A
//! holds `X`: B → O `Claim`; O → B `Granted{previous: A}`; B → A `Take`; A
//! closes its connection of `X` (v5: DISCONNECT 0x8E) and deletes its
//! session, → B `Handover{session}`; B stores the session and sends
//! CONNACK with session present. One claim per CONNECT, no etcd write.

use super::*;
use crate::broker::partition::{partition_of, Registration, Registry, Reregistered};

/// How long a CONNECT waits for the owner's answer (and the previous
/// holder's session) before it is refused with Server Unavailable.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a claim whose CONNECT was refused at [`CLAIM_TIMEOUT`] is
/// still followed: if it is granted meanwhile the session still moves here
/// (the owner's registry says it is here), detached, so the chain of
/// handovers stays whole.
pub const CLAIM_FOLLOW: Duration = Duration::from_secs(30);

/// After a [`SessionMsg::NotOwner`] (the two nodes' maps differ while the
/// map changes), the claim is sent again this much later to the owner the
/// claimant's map names then.
pub const CLAIM_RETRY: Duration = Duration::from_millis(100);

/// A session this node kept rather than hand it to a node it knows is
/// gone (the owner, not knowing yet, named that node): it registers again
/// this much later, until the owner has forgotten the gone node.
pub const REGISTER_RETRY: Duration = Duration::from_millis(500);

/// A CONNECT waiting for its claim.
#[derive(Debug)]
pub(super) struct PendingClaim {
    conn: ConnId,
    connect: Box<Connect>,
    /// The node asked to hand the session over, once granted.
    taking: Option<NodeId>,
    /// The epoch granted (once it is).
    epoch: Option<u64>,
    /// Granted with the session here (or none anywhere), waiting for an
    /// older claim of the same client here whose session is on its way.
    ready: bool,
    /// Its CONNECT was refused at [`CLAIM_TIMEOUT`]; the claim is still
    /// followed (see [`CLAIM_FOLLOW`]).
    refused: bool,
    /// This node handed the session to a claim of this epoch while this
    /// one was not granted yet: a grant below it is stale (lost already).
    superseded_below: u64,
}

/// The takeover state of one shard (inside [`ClusterState`]).
#[derive(Debug, Default)]
pub(super) struct Takeover {
    /// The partition map; `None` until the runtime gives one (claims off).
    pub(super) map: Option<Arc<crate::broker::partition::PartitionMap>>,
    /// The registry of the clients whose partition this node owns and
    /// whose home is this shard.
    pub(super) registry: Registry,
    /// CONNECTs waiting, by claim number.
    claims: HashMap<u64, PendingClaim>,
    next_claim: u64,
    /// The epoch of each session held here, as granted.
    pub(super) epochs: HashMap<ClientId, u64>,
    /// `Take`s that came while a CONNECT of the same client was being
    /// claimed here with an older epoch (a later claim elsewhere): answered
    /// once it is done, so the session moves on from here instead of both
    /// going on.
    /// (from, client, claim, the Take's epoch, clean)
    deferred: Vec<(NodeId, ClientId, u64, u64, bool)>,
    /// What goes to other nodes, with the token of a forwarded delivery
    /// whose acknowledgement something waits for.
    pub(super) out: Vec<(NodeId, SessionMsg, Option<u64>)>,
    /// Messages held until storage catches up: `(batch, node, message)`.
    held: VecDeque<(BatchId, NodeId, SessionMsg)>,
    /// Sessions that left this shard for another node, for a grace.
    pub(super) moved: HashMap<ClientId, Moved>,
    /// Sessions that arrived from another node: the message ids they took
    /// since.
    pub(super) seen: HashMap<ClientId, Seen>,
    /// Cut off (see [`ShardCore::set_fenced`]): no CONNECT is accepted
    /// and no claim granted.
    pub(super) fenced: bool,
    /// Link tokens of QoS 1/2 forwards not yet acknowledged, to the
    /// clients whose stubs hold them (see `Moved::inflight`).
    pub(super) forwarding: HashMap<u64, Vec<ClientId>>,
    /// Nodes this node found gone (their lives ended) and not seen back
    /// since (see [`ShardCore::set_members`]): nothing is handed to them.
    pub(super) gone: HashSet<NodeId>,
    /// What happened to sessions here, one line each, while the runtime
    /// asks for it ([`ShardCore::trace_sessions`]).
    trace: Option<Vec<String>>,
}

impl ShardCore {
    /// (Shard 0) this node is cut off from etcd for longer than its lease
    /// and from most of its peers: the others have given its partitions
    /// away, so it accepts no CONNECT (Server Unavailable) and grants no
    /// claim until it is back; its connected clients carry on. Every shard
    /// of the node is told.
    pub fn set_fenced(&mut self, now: Instant, fenced: bool) {
        self.clock = now;
        let Some(t) = self.takeover() else { return };
        t.fenced = fenced;
        for s in 0..self.shards {
            if s != self.id.get() {
                self.outbox[s].push(ShardMsg::Fenced(fenced));
            }
        }
    }

    /// Keeps a line about each thing that happens to a session here
    /// (taken, handed over, restored, replaced, a message this node sends
    /// itself) for the runtime's debug log, or stops ([`Self::take_trace`]).
    pub fn trace_sessions(&mut self, on: bool) {
        if let Some(t) = self.takeover() {
            t.trace = on.then(Vec::new);
        }
    }

    /// The lines kept since the last call.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.takeover()
            .and_then(|t| t.trace.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    /// Keeps the line `f` makes, if tracing.
    pub(super) fn trace(&mut self, f: impl FnOnce() -> String) {
        if let Some(lines) = self.takeover().and_then(|t| t.trace.as_mut()) {
            lines.push(f());
        }
    }

    /// Whether this node is fenced.
    pub fn is_fenced(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.takeover.fenced)
    }

    pub(super) fn takeover(&mut self) -> Option<&mut Takeover> {
        self.cluster.as_mut().map(|c| &mut c.takeover)
    }

    /// The node that owns `client`'s registry, while claims are on.
    pub(super) fn registry_owner(&self, client: &str) -> Option<NodeId> {
        let c = self.cluster.as_ref()?;
        let map = c.takeover.map.as_ref()?;
        Some(map.owner(partition_of(client)).node)
    }

    /// Sends `msg` to `node` (to its home shard of the client), handling it
    /// here when `node` is this one.
    pub(super) fn send_to_node(&mut self, now: Instant, node: NodeId, msg: SessionMsg) {
        if node == self.node() {
            self.trace(|| format!("to this node: {}", msg.summary()));
            self.handle_session_msg(now, node, msg);
        } else if let Some(t) = self.takeover() {
            t.out.push((node, msg, None));
        }
    }

    /// [`ShardCore::send_to_node`] once what the current input stored is
    /// written.
    fn send_when_stored(&mut self, now: Instant, node: NodeId, msg: SessionMsg) {
        let durable = self.store.durable;
        match self.store.own_barrier() {
            Some(b) if b > durable => {
                if let Some(t) = self.takeover() {
                    t.held.push_back((b, node, msg));
                }
            }
            _ => self.send_to_node(now, node, msg),
        }
    }

    /// Storage wrote up to `durable`: session messages that waited go.
    pub(super) fn release_held_session_msgs(&mut self, durable: BatchId) {
        let now = self.clock;
        loop {
            let Some(t) = self.takeover() else { return };
            if t.held.front().is_none_or(|(b, ..)| *b > durable) {
                return;
            }
            let Some((_, node, msg)) = t.held.pop_front() else {
                return;
            };
            self.send_to_node(now, node, msg);
        }
    }

    /// What this shard sends other nodes about sessions (the runtime puts
    /// each on the link to its node).
    pub fn take_session_out(&mut self) -> Vec<(NodeId, SessionMsg, Option<u64>)> {
        self.takeover()
            .map(|t| std::mem::take(&mut t.out))
            .unwrap_or_default()
    }

    /// Whether a CONNECT of `client` must claim it first: claims are on
    /// (a partition map is known) and the client chose its id.
    pub(super) fn must_claim(&self, client: &str) -> Option<NodeId> {
        if client.is_empty() {
            return None;
        }
        self.registry_owner(client)
    }

    /// Starts the claim of a CONNECT at `owner`; the CONNECT goes on when
    /// it is granted and the session (if any) is here.
    pub(super) fn begin_claim(&mut self, now: Instant, conn_id: ConnId, owner: NodeId, c: Connect) {
        let client_id = ClientId::new(c.client_id.clone());
        let Some(t) = self.takeover() else {
            return;
        };
        t.next_claim += 1;
        let claim = t.next_claim;
        t.claims.insert(
            claim,
            PendingClaim {
                conn: conn_id,
                connect: Box::new(c),
                taking: None,
                epoch: None,
                ready: false,
                refused: false,
                superseded_below: 0,
            },
        );
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.set_state(ConnState::Claiming, &mut self.stats.connections);
        }
        self.timers
            .push(Reverse((now + CLAIM_TIMEOUT, Timer::Claim(claim))));
        self.send_to_node(
            now,
            owner,
            SessionMsg::Claim {
                client: client_id,
                claim,
            },
        );
    }

    /// A claim refused by a node that does not own its partition: sent
    /// again, to the owner of the map now.
    pub(super) fn retry_claim(&mut self, now: Instant, claim: u64) {
        let Some(t) = self.takeover() else { return };
        let Some(p) = t.claims.get(&claim) else {
            return;
        };
        if p.taking.is_some() {
            return;
        }
        let client = ClientId::new(p.connect.client_id.clone());
        if let Some(owner) = self.registry_owner(client.as_str()) {
            self.send_to_node(now, owner, SessionMsg::Claim { client, claim });
        }
    }

    /// A claim's time is up: its CONNECT is refused (Server Unavailable),
    /// the client retries.
    pub(super) fn claim_timed_out(&mut self, now: Instant, claim: u64) {
        let Some(t) = self.takeover() else { return };
        let Some(p) = t.claims.get_mut(&claim) else {
            return;
        };
        if p.refused {
            if p.taking.is_some() {
                // Granted, its Take answered on a link (or its node found
                // gone): the session is on its way, later claims here wait
                // for it.
                self.timers
                    .push(Reverse((now + CLAIM_FOLLOW, Timer::Claim(claim))));
                return;
            }
            // Followed long enough: the owner never answered.
            if let Some(p) = t.claims.remove(&claim) {
                let client = ClientId::new(p.connect.client_id.clone());
                self.after_claim(now, &client);
            }
            return;
        }
        // No answer (or no session) in time: the CONNECT is refused, the
        // claim still followed.
        p.refused = true;
        let (conn, protocol) = (p.conn, p.connect.protocol);
        self.timers
            .push(Reverse((now + CLAIM_FOLLOW, Timer::Claim(claim))));
        self.refuse_connect(now, conn, protocol);
    }

    fn refuse_connect(&mut self, now: Instant, conn_id: ConnId, protocol: ProtocolVersion) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.state != ConnState::Claiming {
            return;
        }
        conn.version = protocol;
        self.send(
            conn_id,
            &Packet::ConnAck(ConnAck::refuse(ReasonCode::SERVER_UNAVAILABLE)),
        );
        self.close(
            now,
            conn_id,
            CloseReason::Refused(ReasonCode::SERVER_UNAVAILABLE),
        );
    }

    /// Whether a `Take` of `client` granted `epoch` must wait: a claim of
    /// the same client here was granted before it (a lower epoch: the
    /// session is on its way here, to be passed on), or is not granted yet
    /// (its grant, which comes whatever happens elsewhere, says which of
    /// the two is older; if this one is newer, the session is handed over
    /// and taken back).
    fn take_waits(&self, client: &ClientId, epoch: u64) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.takeover.claims.values().any(|p| {
                p.connect.client_id == *client.as_bytestr()
                    && match p.epoch {
                        Some(e) => e < epoch,
                        // Not granted yet: its grant says which of the two
                        // is older (refused ones too: they are followed
                        // until granted or `CLAIM_FOLLOW`).
                        None => true,
                    }
            })
        })
    }

    /// The `Take`s of `client` that waited for a claim here.
    fn run_deferred_takes(&mut self, now: Instant, client: &ClientId) {
        self.after_claim(now, client);
    }

    /// Answers the oldest waiting `Take` of `client` if nothing older is
    /// under way here.
    fn run_one_deferred_take(&mut self, now: Instant, client: &ClientId) {
        let Some(t) = self.takeover() else { return };
        let next = t
            .deferred
            .iter()
            .enumerate()
            .filter(|(_, d)| d.1 == *client)
            .min_by_key(|(_, d)| d.3)
            .map(|(i, d)| (i, d.3));
        let Some((i, epoch)) = next else { return };
        if self.take_waits(client, epoch) {
            return;
        }
        let Some(t) = self.takeover() else { return };
        let (from, client, claim, epoch, clean) = t.deferred.remove(i);
        self.answer_take(now, from, client, claim, epoch, clean);
    }

    fn answer_take(
        &mut self,
        now: Instant,
        from: NodeId,
        client: ClientId,
        claim: u64,
        epoch: u64,
        clean: bool,
    ) {
        // Claims of the client here not granted yet: a grant older than
        // this Take lost to it (the session left for a later CONNECT).
        if let Some(t) = self.takeover() {
            for p in t.claims.values_mut() {
                if p.connect.client_id == *client.as_bytestr() && p.epoch.is_none() {
                    p.superseded_below = p.superseded_below.max(epoch);
                }
            }
        }
        if self.node_gone(from) {
            // (A Take that waited here for an older claim, from a node
            // gone since: its claim died with it. The owner forgets that
            // node; the session stays here and registers again.)
            self.trace(|| format!("kept {client}: Take from gone node {}", from.0));
            self.register_later(now, client);
            return;
        }
        let session = self.hand_over(now, &client, clean, from, claim);
        self.send_to_node(
            now,
            from,
            SessionMsg::Handover {
                client,
                claim,
                session,
            },
        );
    }

    /// Ends a claim: the CONNECT goes on here (the session, if one was
    /// handed over, is here now).
    fn finish_claim(&mut self, now: Instant, p: PendingClaim) {
        let client = ClientId::new(p.connect.client_id.clone());
        self.connect_claimed(now, p);
        self.after_claim(now, &client);
    }

    /// A claim of `client` ended here: later ones that waited for it go
    /// on (in epoch order), then `Take`s that waited.
    fn after_claim(&mut self, now: Instant, client: &ClientId) {
        // Ready claims and waiting Takes of the client, oldest epoch first:
        // the session goes through them in the order the owner granted.
        loop {
            let Some(t) = self.takeover() else { return };
            let ready = t
                .claims
                .iter()
                .filter(|(_, p)| p.ready && p.connect.client_id == *client.as_bytestr())
                .map(|(k, p)| (p.epoch.unwrap_or(0), *k))
                .min();
            let take = t
                .deferred
                .iter()
                .filter(|d| d.1 == *client)
                .map(|d| d.3)
                .min();
            match (ready, take) {
                (Some((e, claim)), t) if t.is_none_or(|t| e < t) => {
                    if self.older_claim_here(client, e) {
                        return;
                    }
                    let Some(p) = self.takeover().and_then(|t| t.claims.remove(&claim)) else {
                        return;
                    };
                    self.connect_claimed(now, p);
                }
                (_, Some(_)) => {
                    let before = self.takeover().map_or(0, |t| t.deferred.len());
                    self.run_one_deferred_take(now, client);
                    if self.takeover().map_or(0, |t| t.deferred.len()) == before {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Whether a claim of `client` granted before `epoch` is still under
    /// way here.
    fn older_claim_here(&self, client: &ClientId, epoch: u64) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            c.takeover.claims.values().any(|p| {
                p.connect.client_id == *client.as_bytestr() && p.epoch.is_some_and(|e| e < epoch)
            })
        })
    }

    fn connect_claimed(&mut self, now: Instant, p: PendingClaim) {
        let alive = self
            .conns
            .get(&p.conn)
            .is_some_and(|c| c.state == ConnState::Claiming);
        if !alive {
            return;
        }
        if let Some(conn) = self.conns.get_mut(&p.conn) {
            conn.set_state(ConnState::AwaitConnect, &mut self.stats.connections);
        }
        self.accept_connect(now, p.conn, *p.connect);
        // Packets the client sent behind its CONNECT.
        let held = self.conns.get_mut(&p.conn).and_then(|c| c.held.take());
        if let Some(mut held) = held {
            self.handle_bytes(now, p.conn, &mut held);
            if let Some(c) = self.conns.get_mut(&p.conn) {
                if !held.is_empty() {
                    c.held = Some(held);
                }
            }
        }
    }

    /// A session message from `from` (this node included), for `client`'s
    /// home shard: handled here, or passed on to that shard.
    pub fn handle_session_msg(&mut self, now: Instant, from: NodeId, msg: SessionMsg) {
        self.clock = now;
        self.store.begin_input();
        let home = home_shard(msg.client().as_str(), self.shards);
        if home != self.id {
            self.outbox[home.get()].push(ShardMsg::Session { from, msg });
            return;
        }
        if self.cluster.is_none() {
            return;
        }
        match msg {
            SessionMsg::Claim { client, claim } => self.on_claim(now, from, client, claim),
            SessionMsg::Granted {
                client,
                claim,
                epoch,
                previous,
            } => self.on_granted(now, client, claim, epoch, previous),
            SessionMsg::NotOwner { claim, .. } => {
                self.timers
                    .push(Reverse((now + CLAIM_RETRY, Timer::ClaimRetry(claim))));
            }
            SessionMsg::Take {
                client,
                claim,
                epoch,
                clean,
            } => {
                if self.take_waits(&client, epoch) {
                    if let Some(t) = self.takeover() {
                        t.deferred.push((from, client, claim, epoch, clean));
                    }
                    return;
                }
                self.answer_take(now, from, client, claim, epoch, clean);
            }
            SessionMsg::Handover {
                client,
                claim,
                session,
            } => {
                if let Some(s) = session {
                    self.import_session(now, Some((from, claim)), &client, *s);
                }
                // Done, unless an older claim here is still bringing the
                // session (then this one waits its turn).
                let epoch = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.takeover.claims.get(&claim))
                    .and_then(|p| p.epoch);
                if let Some(e) = epoch {
                    if self.older_claim_here(&client, e) {
                        if let Some(p) = self.takeover().and_then(|t| t.claims.get_mut(&claim)) {
                            p.ready = true;
                            p.taking = None;
                        }
                        return;
                    }
                }
                if let Some(p) = self.takeover().and_then(|t| t.claims.remove(&claim)) {
                    self.finish_claim(now, p);
                }
            }
            SessionMsg::Register { client, epoch } => {
                let me = self.node();
                if self.is_fenced() || self.registry_owner(client.as_str()) != Some(me) {
                    return;
                }
                let reg = Registration {
                    node: from,
                    shard: 0,
                    epoch,
                };
                let Some(t) = self.takeover() else { return };
                match t.registry.reregister(client.as_str(), reg) {
                    Reregistered::Accepted => {}
                    Reregistered::Refused(cur) => {
                        let into = cur.node;
                        self.send_to_node(now, from, SessionMsg::Drop { client, into });
                    }
                    Reregistered::Replaced(prev) => {
                        if prev.node != from {
                            let into = from;
                            self.send_to_node(now, prev.node, SessionMsg::Drop { client, into });
                        }
                    }
                }
            }
            SessionMsg::Release { client } => {
                if let Some(t) = self.takeover() {
                    t.registry.release(client.as_str(), from);
                }
            }
            SessionMsg::Took { client, claim } => self.on_took(from, &client, claim),
            SessionMsg::Forward(f) => self.handle_forwarded(now, *f, None),
            SessionMsg::Drop { client, into } => {
                // (A clean-start handover of nothing: the later session
                // gets the messages, merged; claim 0 is no claim.)
                if into == self.node() {
                    return;
                }
                if self.node_gone(into) {
                    // The owner has not learned yet that `into` is gone:
                    // the session stays here and registers again.
                    self.trace(|| format!("kept {client}: Drop into gone node {}", into.0));
                    self.register_later(now, client);
                    return;
                }
                let session = self.hand_over(now, &client, false, into, 0);
                if session.is_some() {
                    self.send_to_node(
                        now,
                        into,
                        SessionMsg::Handover {
                            client,
                            claim: 0,
                            session,
                        },
                    );
                }
            }
        }
    }

    fn on_claim(&mut self, now: Instant, from: NodeId, client: ClientId, claim: u64) {
        let me = self.node();
        if self.is_fenced() || self.registry_owner(client.as_str()) != Some(me) {
            self.send_to_node(now, from, SessionMsg::NotOwner { client, claim });
            return;
        }
        let Some(t) = self.takeover() else { return };
        let (reg, prev) = t.registry.claim(client.as_str(), from, 0);
        let previous = prev.map(|p| p.node).filter(|&n| n != from);
        self.send_to_node(
            now,
            from,
            SessionMsg::Granted {
                client,
                claim,
                epoch: reg.epoch,
                previous,
            },
        );
    }

    fn on_granted(
        &mut self,
        now: Instant,
        client: ClientId,
        claim: u64,
        epoch: u64,
        previous: Option<NodeId>,
    ) {
        let me = self.node();
        let Some(t) = self.takeover() else { return };
        let Some(p) = t.claims.get_mut(&claim) else {
            // No longer followed (its CONNECT long refused): the owner names
            // this node the holder now, so the session still comes here
            // (detached, it expires like any other) — the chain of
            // handovers stays whole.
            if let Some(node) = previous.filter(|&n| n != me) {
                let msg = SessionMsg::Take {
                    client,
                    claim,
                    epoch,
                    clean: false,
                };
                self.send_to_node(now, node, msg);
            }
            return;
        };
        if epoch < p.superseded_below {
            // Granted before a later CONNECT that this node already
            // handed the session to: this one lost the race.
            let (conn, protocol) = (p.conn, p.connect.protocol);
            t.claims.remove(&claim);
            self.refuse_connect(now, conn, protocol);
            self.after_claim(now, &client);
            return;
        }
        t.epochs.insert(client.clone(), epoch);
        p.epoch = Some(epoch);
        match previous {
            Some(node) if node != me => {
                p.taking = Some(node);
                let clean = p.connect.clean_start;
                self.send_to_node(
                    now,
                    node,
                    SessionMsg::Take {
                        client: client.clone(),
                        claim,
                        epoch,
                        clean,
                    },
                );
            }
            _ => {
                // The session is here (or nowhere): unless an older claim
                // here is still bringing it.
                if self.older_claim_here(&client, epoch) {
                    if let Some(p) = self.takeover().and_then(|t| t.claims.get_mut(&claim)) {
                        p.ready = true;
                    }
                } else if let Some(p) = self.takeover().and_then(|t| t.claims.remove(&claim)) {
                    self.finish_claim(now, p);
                    return;
                }
            }
        }
        // Takes that waited to learn this claim's epoch (older ones go now).
        self.run_deferred_takes(now, &client);
    }

    /// Closes connection `old` of a session taken over (v5: DISCONNECT
    /// 0x8E first).
    pub(super) fn close_taken_over(&mut self, now: Instant, old: ConnId) {
        if let Some(oc) = self.conns.get_mut(&old) {
            oc.client_id = None;
            if oc.version.is_v5() {
                let d = Disconnect::new(ReasonCode::SESSION_TAKEN_OVER);
                self.send(old, &Packet::Disconnect(d));
            }
            self.close(now, old, CloseReason::TakenOver);
        }
    }

    /// Node `to` takes `client` over (for its `claim`): its connection here
    /// is closed and its session leaves this node (a clean start ends it:
    /// its will goes out). Returns what moves.
    fn hand_over(
        &mut self,
        now: Instant,
        client: &ClientId,
        clean: bool,
        to: NodeId,
        claim: u64,
    ) -> Option<Box<SessionTransfer>> {
        if let Some(t) = self.takeover() {
            t.epochs.remove(client);
        }
        let s = self.sessions.get_mut(client)?;
        let old = s.conn.take();
        if let Some(old) = old {
            self.close_taken_over(now, old);
        }
        if clean {
            if let Some(will) = self.sessions.get_mut(client).and_then(|s| s.will.take()) {
                self.publish_will(now, client, *will);
            }
            self.remove_session(client);
            return None;
        }
        let queued = self.sessions.get(client)?.transfer_entries();
        self.trace(|| {
            format!(
                "handing {client} over to node {} claim={claim} queued={}",
                to.0,
                queued.len()
            )
        });
        let s = self.sessions.get(client)?;
        let transfer = SessionTransfer {
            protocol: s.version,
            expiry_interval: s.expiry_interval,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, sub)| (f.clone(), *sub))
                .collect(),
            queue: queued,
            inbound_qos2: s.incoming_qos2_ids().collect(),
        };
        self.group_member_offline(now, client);
        self.leave_for(now, client, to, claim, &transfer);
        Some(Box::new(transfer))
    }

    /// A session handed over from another node (`from`, answering its
    /// claim: told once the session is stored) becomes this shard's, and
    /// durable here (when it is persistent) before the CONNACK.
    pub(super) fn import_session(
        &mut self,
        now: Instant,
        from: Option<(NodeId, u64)>,
        client: &ClientId,
        t: SessionTransfer,
    ) {
        self.end_moved(now, client);
        // (Merged into a session here, the messages are delivered anew and
        // noted then; a session made from them has them all.)
        let brought: Vec<MessageUid> = if self.sessions.contains_key(client) {
            Vec::new()
        } else {
            t.queue.iter().filter_map(|e| e.msg.uid).collect()
        };
        self.begin_seen(now, client, &brought);
        if let Some((node, claim)) = from {
            let took = SessionMsg::Took {
                client: client.clone(),
                claim,
            };
            // (After what this import stores, below, in the same input.)
            self.import_session_inner(now, client, t);
            self.send_when_stored(now, node, took);
        } else {
            self.import_session_inner(now, client, t);
        }
    }

    fn import_session_inner(&mut self, now: Instant, client: &ClientId, t: SessionTransfer) {
        let here = self.sessions.contains_key(client);
        self.trace(|| {
            format!(
                "{} {client}: subs={} queued={}",
                if here { "merging into" } else { "importing" },
                t.subscriptions.len(),
                t.queue.len()
            )
        });
        if here {
            // A session of this client is here already (a CONNECT here went
            // on while this one was on its way: it should not, but nothing
            // acknowledged may be lost): the messages join it, queued, with
            // the subscriptions it lacks.
            self.merge_session(now, client, t);
            return;
        }
        let mut s = Session::new(client.clone(), t.protocol);
        s.share_gauges(self.gauges.clone());
        s.budget = self.config.queue_budget.clone();
        s.expiry_interval = t.expiry_interval;
        self.generations += 1;
        s.generation = self.generations;
        let generation = s.generation;
        s.disconnected_at = Some(now);
        for e in t.queue {
            let (d, state) = e.into_delivery();
            match state {
                OutState::Queued => s.restore_queued(d),
                OutState::AwaitPubAck(id) => s.restore_inflight(id, d, Stage::AwaitAck),
                OutState::AwaitPubRec(id) => s.restore_inflight(id, d, Stage::AwaitRec),
                OutState::AwaitPubComp(id) => s.restore_inflight(id, d, Stage::AwaitComp),
            }
        }
        for id in t.inbound_qos2 {
            s.restore_incoming_qos2(id);
        }
        self.sessions.insert(client.clone(), Box::new(s));
        for (filter, sub) in t.subscriptions {
            let Some(s) = self.sessions.get_mut(client) else {
                return;
            };
            if s.subscriptions.insert(filter.clone(), sub).is_some() {
                continue;
            }
            self.stats.subscriptions += 1;
            self.routes.index(client, &filter, sub);
            if filter.is_shared() {
                self.group_join(now, client, &filter);
            }
            self.add_local_filter(&filter, None);
        }
        self.store_session(client);
        // Detached until the CONNECT that asked for it attaches it (a
        // newer generation then): expires like any detached session.
        if t.expiry_interval != u32::MAX {
            let at = now + Duration::from_secs(u64::from(t.expiry_interval));
            self.timers.push(Reverse((
                at,
                Timer::SessionExpiry(client.clone(), generation),
            )));
        }
    }

    pub(super) fn merge_session(&mut self, now: Instant, client: &ClientId, t: SessionTransfer) {
        for (filter, sub) in t.subscriptions {
            let Some(s) = self.sessions.get_mut(client) else {
                return;
            };
            if s.subscriptions.contains_key(&filter) {
                continue;
            }
            s.subscriptions.insert(filter.clone(), sub);
            self.stats.subscriptions += 1;
            if s.stored {
                self.store.ops.push(StoreOp::PutSubscription {
                    client_id: client.clone(),
                    filter: filter.clone(),
                    sub,
                });
            }
            self.routes.index(client, &filter, sub);
            if filter.is_shared() {
                self.group_join(now, client, &filter);
            }
            self.add_local_filter(&filter, None);
        }
        for e in t.queue {
            // (Queued anew: its packet id, if any, is this session's to give.)
            self.deliver(now, client, e.into_delivery().0);
        }
    }

    /// `node` left the cluster: its registrations go, and CONNECTs waiting
    /// for its session go on without it (the session lived only there: the
    /// client gets a fresh one).
    pub(super) fn takeover_node_gone(&mut self, now: Instant, node: NodeId) {
        let Some(t) = self.takeover() else { return };
        t.gone.insert(node);
        t.registry.forget_node(node);
        let waiting: Vec<u64> = t
            .claims
            .iter()
            .filter(|(_, p)| p.taking == Some(node))
            .map(|(k, _)| *k)
            .collect();
        for claim in waiting {
            if let Some(p) = self.takeover().and_then(|t| t.claims.remove(&claim)) {
                self.finish_claim(now, p);
            }
        }
    }
}
