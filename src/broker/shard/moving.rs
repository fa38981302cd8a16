//! A session on the move between nodes. The node it left keeps a stub for
//! [`MOVE_GRACE`] ([`Moved`]): messages that still arrive for the client
//! there (publishers elsewhere had not yet learned its new node's routes)
//! are forwarded to the new node ([`SessionMsg::Forward`]), and its
//! durable copy stays until the new node says it has the session on disk
//! ([`SessionMsg::Took`]), so a node dying mid-handover loses nothing. The
//! new node remembers the ids of messages it took for the client in that
//! time ([`Seen`]), so one that comes both directly and forwarded (or was
//! in the handover too) is delivered once.

use super::*;

/// How long the node a session left forwards what still arrives for it,
/// and how long the new node deduplicates. Route changes cross the
/// cluster in milliseconds; this covers a link that was down and resends.
pub const MOVE_GRACE: Duration = Duration::from_secs(10);

/// After [`MOVE_GRACE`], how long the node a session left still passes on
/// a forwarded delivery that reaches it late (the session moved on from
/// here, where this node sent it): the chain of forwards ends at the
/// session whatever the links' delays.
pub const MOVE_TRAIL: Duration = Duration::from_secs(300);

/// Message ids a moved session remembers at most (the oldest go first).
const SEEN_MAX: usize = 8192;

/// A delivery forwarded from the node a session left to the node it went
/// to: what the subscriptions there matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The client.
    pub client: ClientId,
    /// The message.
    pub msg: Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
}

/// What is left here of a session handed to another node.
#[derive(Debug)]
pub(super) struct Moved {
    /// Where it went.
    to: NodeId,
    /// The claim it went to (0: handed over on the owner's `Drop`).
    claim: u64,
    /// Its plain filters, still indexed here (and still announced to the
    /// other nodes) so that messages for it come here and are forwarded.
    filters: Vec<TopicFilter>,
    /// Until the new node has it stored: what was handed over (restored
    /// here if the new node is gone or silent) and the durable copy here.
    unacked: Option<Unacked>,
    /// Tells this stub's timer from a later stub's.
    generation: u64,
    /// Past [`MOVE_GRACE`]: its filters are gone; it only passes on
    /// forwarded deliveries that come late.
    trailing: bool,
    /// The QoS 1/2 deliveries forwarded to `to` whose link has not
    /// acknowledged them, with their link tokens. If `to` is gone the
    /// session comes back here, and these with it.
    inflight: Vec<(u64, Forward)>,
    /// Once `to` stored the session: what was handed over without its
    /// messages (they are on `to`'s disk). Should `to` be gone with
    /// forwards unacknowledged, a session of these subscriptions takes
    /// them here; it merges with `to`'s copy when `to` returns.
    took: Option<SessionTransfer>,
}

/// A handed-over session the new node has not yet stored.
#[derive(Debug)]
struct Unacked {
    transfer: SessionTransfer,
    /// The stored copy's queue entries (if it was stored here).
    refs: Option<Vec<StoreRef>>,
}

/// Ids of messages a session took since it arrived from another node.
#[derive(Debug)]
pub(super) struct Seen {
    until: Instant,
    ids: HashSet<MessageUid>,
    order: VecDeque<MessageUid>,
}

impl Seen {
    fn new(until: Instant) -> Self {
        Seen {
            until,
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Notes `uid`; `false` if it was noted already.
    fn insert(&mut self, uid: MessageUid) -> bool {
        if !self.ids.insert(uid) {
            return false;
        }
        self.order.push_back(uid);
        if self.order.len() > SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

impl ShardCore {
    /// `client`'s session (just taken out of `sessions` by the caller's
    /// transfer) leaves for `to`: its shared subscriptions end here, its
    /// plain ones stay indexed for [`MOVE_GRACE`] to forward, and its
    /// stored copy stays until `to` acknowledges.
    pub(super) fn leave_for(
        &mut self,
        now: Instant,
        client: &ClientId,
        to: NodeId,
        claim: u64,
        transfer: &SessionTransfer,
    ) {
        self.end_moved(now, client);
        self.forget_seen(client);
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let refs = if s.stored {
            s.stored = false;
            Some(s.clear_store_refs())
        } else {
            None
        };
        let persistent = s.expiry_interval > 0;
        let (shared, plain): (Vec<TopicFilter>, Vec<TopicFilter>) = s
            .subscriptions
            .keys()
            .cloned()
            .partition(TopicFilter::is_shared);
        for f in &shared {
            self.unsubscribe(client, f);
        }
        // (No longer a session's subscriptions here, though still indexed.)
        self.stats.subscriptions -= plain.len() as u64;
        // What is queued went with the transfer: dropped here unsent.
        self.sessions.remove(client);
        self.generations += 1;
        let generation = self.generations;
        let unacked = persistent.then(|| Unacked {
            transfer: transfer.clone(),
            refs,
        });
        let Some(t) = self.takeover() else { return };
        t.moved.insert(
            client.clone(),
            Moved {
                to,
                claim,
                filters: plain,
                unacked,
                generation,
                trailing: false,
                inflight: Vec::new(),
                took: None,
            },
        );
        self.timers.push(Reverse((
            now + MOVE_GRACE,
            Timer::Moved(client.clone(), generation),
        )));
    }

    /// The stub of `client` here ends (its grace is over, or the client's
    /// session is here again): its filters go, and its stored copy if the
    /// new node never acknowledged (a session of the client is made here
    /// now, or restored from what was handed over).
    pub(super) fn end_moved(&mut self, _now: Instant, client: &ClientId) {
        let Some(m) = self.takeover().and_then(|t| t.moved.remove(client)) else {
            return;
        };
        if m.unacked.is_some() {
            let to = m.to.0;
            self.trace(|| format!("ending {client}'s copy never acknowledged by node {to}"));
        }
        if let Some(refs) = m.unacked.and_then(|u| u.refs) {
            self.unstore_refs(client, refs);
        }
        for f in &m.filters {
            self.routes.unindex(client, f);
            self.remove_local_filter(f);
        }
    }

    fn unstore_refs(&mut self, client: &ClientId, refs: Vec<StoreRef>) {
        self.store.ops.push(StoreOp::DeleteClient(client.clone()));
        for r in refs {
            self.store.release(r.msg_id);
        }
    }

    /// `from` has `client`'s session stored (the handover of `claim`): the
    /// copy here is deleted; forwarding goes on until the grace ends.
    pub(super) fn on_took(&mut self, from: NodeId, client: &ClientId, claim: u64) {
        let Some(t) = self.takeover() else { return };
        let Some(m) = t.moved.get_mut(client) else {
            return;
        };
        if m.to != from || m.claim != claim {
            return;
        }
        let Some(u) = m.unacked.take() else { return };
        let mut copy = u.transfer;
        copy.queue.clear();
        copy.inbound_qos2.clear();
        m.took = Some(copy);
        if let Some(refs) = u.refs {
            self.unstore_refs(client, refs);
        }
    }

    /// A stub's timer: its grace is over, forwarding ends. Unless the new
    /// node acknowledged, the stored copy stays (until it does, or is gone:
    /// then the session comes back here, see
    /// [`ShardCore::moved_node_gone`]; a copy found on disk at the next
    /// start registers and merges into the later session).
    /// After [`MOVE_TRAIL`] more, the stub goes (unless still unacknowledged).
    pub(super) fn moved_timer(&mut self, now: Instant, client: &ClientId, generation: u64) {
        let Some(t) = self.takeover() else { return };
        let Some(m) = t
            .moved
            .get_mut(client)
            .filter(|m| m.generation == generation)
        else {
            return;
        };
        if !m.trailing {
            m.trailing = true;
            self.timers.push(Reverse((
                now + MOVE_TRAIL,
                Timer::Moved(client.clone(), generation),
            )));
        } else if m.unacked.is_none() {
            t.moved.remove(client);
            return;
        }
        let Some(m) = self.takeover().and_then(|t| t.moved.get_mut(client)) else {
            return;
        };
        let filters = std::mem::take(&mut m.filters);
        for f in &filters {
            self.routes.unindex(client, f);
            self.remove_local_filter(f);
        }
    }

    /// A CONNECT of `client` goes on here and finds no session here (its
    /// claim found no later holder: the owner names none, or this node).
    /// What is left of a session that left for another node ends, unless
    /// that node never acknowledged it and the CONNECT does not start
    /// clean: the copy handed over, with what was forwarded since, is the
    /// session then.
    pub(super) fn reclaim_moved(&mut self, now: Instant, client: &ClientId, clean: bool) {
        let unacked = self
            .cluster
            .as_ref()
            .and_then(|c| c.takeover.moved.get(client))
            .is_some_and(|m| m.unacked.is_some());
        if unacked && !clean {
            self.trace(|| format!("connect takes {client}'s copy never acknowledged"));
            self.restore_or_end(now, client, false);
        } else {
            self.end_moved(now, client);
        }
    }

    /// The stub of `client` ends; an unacknowledged one is restored, with
    /// the deliveries forwarded to it that its node never acknowledged
    /// (and registers with the owner, if `register`).
    fn restore_or_end(&mut self, now: Instant, client: &ClientId, register: bool) {
        let (unacked, inflight, took) = self
            .takeover()
            .and_then(|t| t.moved.get_mut(client))
            .map(|m| {
                (
                    m.unacked.take(),
                    std::mem::take(&mut m.inflight),
                    m.took.take(),
                )
            })
            .unwrap_or_default();
        self.end_moved(now, client);
        let u = match (unacked, took) {
            (Some(u), _) => u,
            (None, Some(copy)) if !inflight.is_empty() => Unacked {
                transfer: copy,
                refs: None,
            },
            _ => return,
        };
        if let Some(refs) = u.refs {
            self.unstore_refs(client, refs);
        }
        if self.sessions.contains_key(client) {
            // (A session of the client is here already: it gets the
            // messages, merged.)
            self.merge_session(now, client, u.transfer);
        } else {
            self.import_session(now, None, client, u.transfer);
            if let Some(owner) = self.registry_owner(client.as_str()).filter(|_| register) {
                let client = client.clone();
                self.send_to_node(now, owner, SessionMsg::Register { client, epoch: 0 });
            }
        }
        self.rescue_forwards(now, inflight);
    }

    /// Deliveries forwarded to a node that is gone, for a session restored
    /// here: delivered to it, and their publishers' acknowledgements (which
    /// the lost link tokens release next) count them as delivered, once
    /// stored here.
    fn rescue_forwards(&mut self, now: Instant, inflight: Vec<(u64, Forward)>) {
        if inflight.is_empty() {
            return;
        }
        let mut tokens = Vec::with_capacity(inflight.len());
        for (token, f) in inflight {
            tokens.push(token);
            self.deliver_forwarded(now, f);
        }
        let after = self.store.own_barrier();
        for token in tokens {
            if let Some(p) = self.pending.get_mut(&token) {
                p.delivered = true;
                p.after = p.after.max(after);
            }
        }
    }

    /// The link acknowledged (or lost) the forwards sent with `token`:
    /// their stubs no longer hold them.
    pub(super) fn forward_settled(&mut self, token: u64) {
        let Some(t) = self.takeover() else { return };
        if t.forwarding.is_empty() {
            return;
        }
        let Some(clients) = t.forwarding.remove(&token) else {
            return;
        };
        for c in clients {
            if let Some(m) = t.moved.get_mut(&c) {
                m.inflight.retain(|(tk, _)| *tk != token);
            }
        }
    }

    /// `node` left the cluster: sessions handed to it that it never
    /// acknowledged come back here; other stubs forwarding there end.
    pub(super) fn moved_node_gone(&mut self, now: Instant, node: NodeId) {
        let gone: Vec<ClientId> = self
            .cluster
            .as_ref()
            .map(|c| {
                c.takeover
                    .moved
                    .iter()
                    .filter(|(_, m)| m.to == node)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for client in gone {
            self.trace(|| format!("{client}'s new node {} is gone", node.0));
            self.restore_or_end(now, &client, true);
        }
    }

    /// A delivery for `client`, whose session is not here: forwarded if
    /// it just left for another node. Returns whether it was.
    pub(super) fn forward_moved(&mut self, client: &ClientId, d: &Delivery) -> bool {
        let relay = self.relay.filter(|_| d.qos != QoS::AtMostOnce);
        let Some(t) = self.takeover() else {
            return false;
        };
        let Some(m) = t.moved.get_mut(client) else {
            return false;
        };
        let fwd = Forward {
            client: client.clone(),
            msg: d.msg.clone(),
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
        };
        if let Some(token) = relay.filter(|_| m.unacked.is_some() || m.took.is_some()) {
            m.inflight.push((token, fwd.clone()));
            let clients = t.forwarding.entry(token).or_default();
            if clients.last() != Some(client) {
                clients.push(client.clone());
            }
        }
        t.out
            .push((m.to, SessionMsg::Forward(Box::new(fwd)), relay));
        if relay.is_some() {
            self.outcome.forwards += 1;
        }
        true
    }

    /// A message forwarded by the node `client` left (this node's home
    /// shard of the client takes it); with a `ticket` (QoS 1/2), the link
    /// acknowledges once it is stored here (see
    /// [`ShardCore::take_cluster_done`]).
    pub fn handle_forward(&mut self, now: Instant, f: Forward, ticket: Option<u64>) {
        self.clock = now;
        self.store.begin_input();
        self.outcome = Outcome::default();
        let home = home_shard(f.client.as_str(), self.shards);
        if home != self.id {
            let ack = ticket.map(|ticket| {
                let token = self.new_token();
                self.pending.insert(
                    token,
                    Pending {
                        remaining: 1,
                        quota_check: false,
                        delivered: false,
                        refused: false,
                        after: None,
                        waiter: Waiter::Node(ticket),
                    },
                );
                (self.id, token)
            });
            self.outbox[home.get()].push(ShardMsg::Forwarded {
                fwd: Box::new(f),
                ack,
            });
            return;
        }
        let token = ticket.map(|_| self.new_token());
        self.relay = token;
        self.deliver_forwarded(now, f);
        self.relay = None;
        if let Some(ticket) = ticket {
            self.relay_done(token, Waiter::Node(ticket));
        }
    }

    /// A forwarded message that reached the client's home shard (from the
    /// shard its link arrived on, acknowledged with `ack`).
    pub(super) fn handle_forwarded(
        &mut self,
        now: Instant,
        f: Forward,
        ack: Option<(ShardId, u64)>,
    ) {
        let token = ack.map(|_| self.new_token());
        self.relay = token;
        self.deliver_forwarded(now, f);
        self.relay = None;
        if let Some((to, t)) = ack {
            self.relay_done(token, Waiter::Shard { to, token: t });
        }
    }

    /// After an input that may have forwarded (`token` its relay): the
    /// waiter is answered now, or once the forwards are acknowledged.
    pub(super) fn relay_done(&mut self, token: Option<u64>, waiter: Waiter) {
        let forwards = self.outcome.forwards as usize;
        let after = self.store.own_barrier();
        match (token, forwards) {
            (Some(token), n) if n > 0 => {
                let pending = Pending {
                    remaining: n,
                    quota_check: false,
                    delivered: self.outcome.delivered > 0,
                    refused: self.outcome.refused > 0,
                    after,
                    waiter,
                };
                self.pending.insert(token, pending);
            }
            _ => match waiter {
                Waiter::Node(ticket) => self.node_done(ticket, after),
                Waiter::Shard { to, token } => {
                    let now = self.clock;
                    self.ack(now, to, Some(token));
                }
                Waiter::Client { .. } => {}
            },
        }
    }

    fn deliver_forwarded(&mut self, now: Instant, f: Forward) {
        let d = Delivery {
            msg: f.msg,
            qos: f.qos,
            retain: f.retain,
            sub_ids: f.sub_ids,
            store: None,
            group: None,
        };
        self.deliver(now, &f.client, d);
    }

    /// `client`'s session arrived from another node: messages it takes in
    /// the next [`MOVE_GRACE`] are noted, starting with those it brought.
    pub(super) fn begin_seen(&mut self, now: Instant, client: &ClientId, brought: &[MessageUid]) {
        let Some(t) = self.takeover() else { return };
        let seen = t
            .seen
            .entry(client.clone())
            .or_insert_with(|| Seen::new(now + MOVE_GRACE));
        seen.until = now + MOVE_GRACE;
        for uid in brought {
            seen.insert(*uid);
        }
        self.timers
            .push(Reverse((now + MOVE_GRACE, Timer::Seen(client.clone()))));
    }

    /// Whether `client` took the message `uid` already since it arrived
    /// from another node (noting it if not).
    pub(super) fn seen_before(&mut self, client: &ClientId, uid: MessageUid) -> bool {
        let Some(t) = self.takeover() else {
            return false;
        };
        if t.seen.is_empty() {
            return false;
        }
        t.seen.get_mut(client).is_some_and(|s| !s.insert(uid))
    }

    /// The ids noted for `client` go (its session left or ended here: a
    /// later one here has none of those messages).
    pub(super) fn forget_seen(&mut self, client: &ClientId) {
        if let Some(t) = self.takeover() {
            t.seen.remove(client);
        }
    }

    /// A seen-ids timer: forgotten once its time is up.
    pub(super) fn seen_timer(&mut self, now: Instant, client: &ClientId) {
        if let Some(t) = self.takeover() {
            if t.seen.get(client).is_some_and(|s| s.until <= now) {
                t.seen.remove(client);
            }
        }
    }
}
