//! [`Session`]: the state MQTT keeps for a client identifier across network
//! connections (MQTT 5.0 §4.1): subscriptions, the outbound QoS 1/2 flows
//! with their packet identifiers, the queue of messages waiting for the
//! inflight window (or for the client to come back), and the inbound QoS 2
//! packet identifiers awaiting PUBREL.
//!
//! Lives on the home shard of its client identifier, and only there.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use super::persist::OutState;
use super::{ConnId, Limit, Message, QueueBudget};
use crate::codec::{LastWill, ProtocolVersion, QoS, SubscriptionOptions};
use crate::topic::TopicFilter;
use crate::{ClientId, MessageId, PacketId};

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Options from SUBSCRIBE (maximum QoS, no local, retain as published,
    /// retain handling).
    pub options: SubscriptionOptions,
    /// Subscription Identifier (v5).
    pub id: Option<u32>,
}

/// A message on its way to this session, with the per-delivery fields.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) msg: Arc<Message>,
    /// min(published QoS, subscription maximum QoS).
    pub(crate) qos: QoS,
    /// RETAIN flag to send.
    pub(crate) retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub(crate) sub_ids: Vec<u32>,
    /// Where this delivery is stored, for a persistent session's QoS 1/2.
    pub(crate) store: Option<StoreRef>,
    /// The shared subscription (full filter) whose group sent it: its home
    /// shard counts it against the member's window until it is finished.
    pub(crate) group: Option<TopicFilter>,
}

/// A delivery's place in durable storage: the shard's stored message and
/// the queue entry of this session that refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreRef {
    /// The shard's id of the stored message.
    pub(crate) msg_id: MessageId,
    /// The queue entry's position in the session's queue.
    pub(crate) seq: u64,
}

/// The bounds of a persistent session's queue of stored QoS 1/2 messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredBounds {
    /// Messages queued at most; 0 = no limit.
    pub(crate) messages: usize,
    /// Bytes queued at most ([`queue_cost`]); 0 = no limit.
    pub(crate) bytes: u64,
}

/// What a queued message counts against the queue bounds: its topic and
/// payload plus a fixed overhead for its stored records.
pub(crate) fn queue_cost(msg: &Message) -> u64 {
    (msg.topic.as_str().len() + msg.payload.len() + 64) as u64
}

/// Why [`Session::enqueue`] refused.
#[derive(Debug)]
pub(crate) enum Dropped {
    /// The new delivery was dropped (returned).
    New(Box<Delivery>),
    /// A queued QoS 0 delivery made room for the new one.
    Displaced,
}

/// What a PUBREC did to an outbound QoS 2 flow.
#[derive(Debug)]
pub(crate) enum Rec {
    /// No QoS 2 flow has that packet id.
    Unknown,
    /// Answer with PUBREL; `changed` if the flow just moved to PUBCOMP (not
    /// a repeated PUBREC).
    Release {
        /// The delivery, now awaiting PUBCOMP.
        delivery: Delivery,
        /// `false` for a repeated PUBREC.
        changed: bool,
    },
    /// A failure code ended the flow.
    Ended(Delivery),
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the spec names them "awaiting …"
pub(crate) enum Stage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) packet_id: PacketId,
    pub(crate) delivery: Delivery,
    pub(crate) stage: Stage,
}

/// Retained messages matched by one SUBSCRIBE filter, waiting to be sent
/// (paced by the inflight window and the connection's output buffer).
#[derive(Debug)]
struct RetainedBatch {
    filter: TopicFilter,
    sub: Subscription,
    messages: VecDeque<Arc<Message>>,
}

/// A shard's totals of in-flight and queued messages over all its
/// sessions, kept as they change so that `ShardCore::stats` is O(1), not
/// O(sessions). Shared by the sessions of one shard (one core: `Rc`, `Cell`).
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    inflight: Cell<u64>,
    queued: Cell<u64>,
}

impl Gauges {
    /// Messages in flight over the sessions sharing this.
    pub(crate) fn inflight(&self) -> u64 {
        self.inflight.get()
    }

    /// Messages queued over the sessions sharing this.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.get()
    }

    fn add(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get() + n as u64);
    }

    fn sub(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get().saturating_sub(n as u64));
    }
}

/// The session of one client identifier.
#[derive(Debug)]
pub struct Session {
    pub(crate) client_id: ClientId,
    pub(crate) version: ProtocolVersion,
    /// Subscriptions by full filter (`$share/…` included).
    pub(crate) subscriptions: HashMap<TopicFilter, Subscription, crate::hash::FastState>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub(crate) expiry_interval: u32,
    /// The will of the current (or last) connection.
    pub(crate) will: Option<Box<LastWill>>,
    /// The connection this session is attached to.
    pub(crate) conn: Option<ConnId>,
    /// New on every attach and detach, from a counter of the shard (so never
    /// reused by a later session of the same client id); timers carry it to
    /// detect staleness.
    pub(crate) generation: u64,
    /// Outbound QoS 1/2 messages sent and not yet fully acknowledged, in
    /// send order (the key is a sequence number).
    inflight: BTreeMap<u64, Inflight>,
    inflight_by_id: HashMap<PacketId, u64, crate::hash::FastState>,
    seq: u64,
    /// Messages waiting for a free inflight slot or for the client.
    queue: VecDeque<Delivery>,
    /// [`queue_cost`] of the stored deliveries in `queue`.
    queued_bytes: u64,
    /// The process-wide budget `queued_bytes` is taken from.
    pub(crate) budget: Option<Arc<QueueBudget>>,
    /// Retained messages of new subscriptions not yet handed to the queue,
    /// oldest subscription first (memory only: a restart does not resend them).
    retained_backlog: VecDeque<RetainedBatch>,
    /// Messages in `retained_backlog`.
    retained_backlog_len: usize,
    /// Inbound QoS 2 packet identifiers received and not yet released.
    incoming_qos2: HashSet<PacketId, crate::hash::FastState>,
    next_packet_id: PacketId,
    /// Messages dropped for this session (queue full, too large, expired).
    pub(crate) dropped: u64,
    /// Drops at a limit not yet reported in an `IoEvent::Limited`.
    pub(crate) unlogged_drops: u64,
    /// When the last `IoEvent::Limited` of this session was emitted.
    pub(crate) last_limit_log: Option<std::time::Instant>,
    /// Whether the session has a record in durable storage.
    pub(crate) stored: bool,
    /// Next position in the stored queue.
    pub(crate) store_seq: u64,
    /// When the client went away; `None` while connected.
    pub(crate) disconnected_at: Option<std::time::Instant>,
    /// The shard's totals `inflight` and `queue` count into.
    gauges: Rc<Gauges>,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: ClientId, version: ProtocolVersion) -> Self {
        Self {
            client_id,
            version,
            subscriptions: HashMap::default(),
            expiry_interval: 0,
            will: None,
            conn: None,
            generation: 0,
            inflight: BTreeMap::new(),
            inflight_by_id: HashMap::default(),
            seq: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            budget: None,
            retained_backlog: VecDeque::new(),
            retained_backlog_len: 0,
            incoming_qos2: HashSet::default(),
            next_packet_id: PacketId::new(1).unwrap_or_else(|| unreachable!()),
            dropped: 0,
            unlogged_drops: 0,
            last_limit_log: None,
            stored: false,
            store_seq: 1,
            disconnected_at: None,
            gauges: Rc::default(),
        }
    }

    /// Counts this session's in-flight and queued messages in `gauges` (the
    /// shard's) from now on, instead of its own.
    pub(crate) fn share_gauges(&mut self, gauges: Rc<Gauges>) {
        let (inflight, queued) = (self.inflight.len(), self.queue.len());
        Gauges::sub(&self.gauges.inflight, inflight);
        Gauges::sub(&self.gauges.queued, queued);
        Gauges::add(&gauges.inflight, inflight);
        Gauges::add(&gauges.queued, queued);
        self.gauges = gauges;
    }

    /// The client identifier.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// Number of outbound messages in flight.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Number of messages queued behind the inflight window.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Queues a delivery behind those already queued. When the queue holds
    /// `limit` messages, a QoS 1/2 delivery displaces the oldest queued QoS 0
    /// one (QoS 0 is the expendable kind); otherwise the new delivery is
    /// dropped. Returns `Err` with the new delivery if it was dropped, and
    /// counts every drop.
    pub(crate) fn enqueue(&mut self, d: Delivery, limit: usize) -> Result<(), Dropped> {
        if self.queue.len() >= limit {
            self.dropped += 1;
            let qos0 = self.queue.iter().position(|q| q.qos == QoS::AtMostOnce);
            return match qos0 {
                Some(i) if d.qos != QoS::AtMostOnce => {
                    // QoS 0 is never stored: nothing to clean up.
                    self.queue.remove(i);
                    self.queue.push_back(d);
                    Err(Dropped::Displaced)
                }
                _ => Err(Dropped::New(Box::new(d))),
            };
        }
        self.queue.push_back(d);
        Gauges::add(&self.gauges.queued, 1);
        Ok(())
    }

    /// Adds the retained messages matched by a new subscription to the
    /// backlog, keeping at most `limit` messages waiting in all (0 = no
    /// limit). Returns how many did not fit.
    pub(crate) fn push_retained(
        &mut self,
        filter: TopicFilter,
        sub: Subscription,
        mut messages: VecDeque<Arc<Message>>,
        limit: usize,
    ) -> usize {
        let room = if limit == 0 {
            usize::MAX
        } else {
            limit.saturating_sub(self.retained_backlog_len)
        };
        let over = messages.len().saturating_sub(room);
        messages.truncate(messages.len() - over);
        if !messages.is_empty() {
            self.retained_backlog_len += messages.len();
            self.retained_backlog.push_back(RetainedBatch {
                filter,
                sub,
                messages,
            });
        }
        over
    }

    /// The next retained message of the backlog, with the subscription that
    /// matched it.
    pub(crate) fn next_retained(&mut self) -> Option<(Arc<Message>, Subscription)> {
        loop {
            let batch = self.retained_backlog.front_mut()?;
            if let Some(m) = batch.messages.pop_front() {
                self.retained_backlog_len -= 1;
                return Some((m, batch.sub));
            }
            self.retained_backlog.pop_front();
        }
    }

    /// Forgets the retained messages still waiting for `filter` (it was
    /// unsubscribed or replaced).
    pub(crate) fn drop_retained_for(&mut self, filter: &TopicFilter) {
        let mut dropped = 0;
        self.retained_backlog.retain(|b| {
            let keep = &b.filter != filter;
            if !keep {
                dropped += b.messages.len();
            }
            keep
        });
        self.retained_backlog_len -= dropped;
    }

    /// Retained messages waiting in the backlog.
    pub fn retained_backlog_len(&self) -> usize {
        self.retained_backlog_len
    }

    /// Whether a persistent session's queue takes one more stored message
    /// within `bounds` and the process-wide budget. On `Ok` the budget is
    /// taken for it and [`Session::push_stored`] must follow; `Err` names
    /// the bound that refused it (and counts the drop).
    pub(crate) fn admit_stored(
        &mut self,
        msg: &Message,
        bounds: StoredBounds,
    ) -> Result<(), Limit> {
        let cost = queue_cost(msg);
        let refused = if bounds.messages != 0 && self.queue.len() >= bounds.messages {
            Some(Limit::StoredMessages)
        } else if bounds.bytes != 0 && self.queued_bytes + cost > bounds.bytes {
            Some(Limit::StoredBytes)
        } else if self.budget.as_ref().is_some_and(|b| !b.try_take(cost)) {
            Some(Limit::QueueBudget)
        } else {
            None
        };
        match refused {
            Some(limit) => {
                self.dropped += 1;
                Err(limit)
            }
            None => Ok(()),
        }
    }

    /// Queues a stored delivery admitted by [`Session::admit_stored`].
    pub(crate) fn push_stored(&mut self, d: Delivery) {
        self.queued_bytes += queue_cost(&d.msg);
        self.queue.push_back(d);
        Gauges::add(&self.gauges.queued, 1);
    }

    /// Bytes ([`queue_cost`]) of the stored deliveries queued.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Recomputes `queued_bytes` after deliveries were stored or unstored
    /// (the session became persistent or stopped being so).
    pub(crate) fn recount_queued_bytes(&mut self) {
        let now: u64 = self
            .queue
            .iter()
            .filter(|d| d.store.is_some())
            .map(|d| queue_cost(&d.msg))
            .sum();
        if let Some(b) = &self.budget {
            if now > self.queued_bytes {
                b.take(now - self.queued_bytes);
            } else {
                b.give(self.queued_bytes - now);
            }
        }
        self.queued_bytes = now;
    }

    /// Takes the queued (not yet sent) deliveries for which `keep` is false
    /// out of the queue.
    pub(crate) fn take_queued_unless(
        &mut self,
        mut keep: impl FnMut(&Delivery) -> bool,
    ) -> Vec<Delivery> {
        let mut taken = Vec::new();
        for d in std::mem::take(&mut self.queue) {
            if keep(&d) {
                self.queue.push_back(d);
            } else {
                taken.push(d);
            }
        }
        Gauges::sub(&self.gauges.queued, taken.len());
        if !taken.is_empty() {
            // The stored ones taken give their bytes back to the budget.
            self.recount_queued_bytes();
        }
        taken
    }

    /// Takes the in-flight deliveries for which `keep` is false out of
    /// flight (their packet ids become free): a shared subscription's
    /// messages handed back to the group when the connection dropped.
    pub(crate) fn take_inflight_unless(
        &mut self,
        mut keep: impl FnMut(&Inflight) -> bool,
    ) -> Vec<Delivery> {
        let seqs: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| !keep(f))
            .map(|(seq, _)| *seq)
            .collect();
        let mut taken = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(f) = self.inflight.remove(&seq) {
                self.inflight_by_id.remove(&f.packet_id);
                Gauges::sub(&self.gauges.inflight, 1);
                taken.push(f.delivery);
            }
        }
        taken
    }

    /// The queued (not yet sent) deliveries, in order.
    pub(crate) fn queued(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    /// Forgets where the deliveries are stored (the session's stored
    /// record was deleted), returning what they referred to.
    pub(crate) fn clear_store_refs(&mut self) -> Vec<StoreRef> {
        let mut refs = Vec::new();
        for d in self.queue.iter_mut() {
            refs.extend(d.store.take());
        }
        for f in self.inflight.values_mut() {
            refs.extend(f.delivery.store.take());
        }
        self.recount_queued_bytes();
        refs
    }

    /// What moves with the session to another node: the deliveries in
    /// flight (in send order, with their packet ids), then the queue. A
    /// shared group's deliveries stay: the group hands them to another
    /// member (or this one again, once it has joined on the other node).
    pub(crate) fn transfer_entries(&self) -> Vec<super::TransferEntry> {
        let entry = |d: &Delivery, state| super::TransferEntry {
            msg: d.msg.clone(),
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
            state,
        };
        let inflight = self
            .inflight
            .values()
            .filter(|f| f.delivery.group.is_none())
            .map(|f| {
                let state = match f.stage {
                    Stage::AwaitAck => OutState::AwaitPubAck(f.packet_id),
                    Stage::AwaitRec => OutState::AwaitPubRec(f.packet_id),
                    Stage::AwaitComp => OutState::AwaitPubComp(f.packet_id),
                };
                entry(&f.delivery, state)
            });
        let queued = self
            .queue
            .iter()
            .filter(|d| d.group.is_none())
            .map(|d| entry(d, OutState::Queued));
        inflight.chain(queued).collect()
    }

    /// In-flight QoS 1/2 deliveries not stored yet, with their state (a
    /// session that just became persistent, or came from another node).
    pub(crate) fn unstored_inflight(&mut self) -> impl Iterator<Item = (&mut Delivery, OutState)> {
        self.inflight
            .values_mut()
            .filter(|f| f.delivery.store.is_none())
            .map(|f| {
                let state = match f.stage {
                    Stage::AwaitAck => OutState::AwaitPubAck(f.packet_id),
                    Stage::AwaitRec => OutState::AwaitPubRec(f.packet_id),
                    Stage::AwaitComp => OutState::AwaitPubComp(f.packet_id),
                };
                (&mut f.delivery, state)
            })
    }

    /// Queued QoS 1/2 deliveries not stored yet (a session that just became
    /// persistent).
    pub(crate) fn unstored_queue(&mut self) -> impl Iterator<Item = &mut Delivery> {
        self.queue
            .iter_mut()
            .filter(|d| d.store.is_none() && d.qos != QoS::AtMostOnce)
    }

    /// Recovery: puts back a delivery that was in flight at `stage`.
    pub(crate) fn restore_inflight(
        &mut self,
        packet_id: PacketId,
        delivery: Delivery,
        stage: Stage,
    ) {
        if self.inflight_by_id.contains_key(&packet_id) {
            return;
        }
        self.push_inflight(packet_id, delivery, stage);
        self.next_packet_id = packet_id.next();
    }

    /// Recovery: appends a queued delivery (no limit: it was accepted).
    pub(crate) fn restore_queued(&mut self, delivery: Delivery) {
        if delivery.store.is_some() {
            let cost = queue_cost(&delivery.msg);
            self.queued_bytes += cost;
            if let Some(b) = &self.budget {
                b.take(cost);
            }
        }
        self.queue.push_back(delivery);
        Gauges::add(&self.gauges.queued, 1);
    }

    /// Recovery: an inbound QoS 2 packet id awaiting PUBREL.
    pub(crate) fn restore_incoming_qos2(&mut self, packet_id: PacketId) {
        self.incoming_qos2.insert(packet_id);
    }

    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub(crate) fn incoming_qos2_ids(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.incoming_qos2.iter().copied()
    }

    /// Takes the next queued delivery if fewer than `window` are in flight,
    /// assigning it a packet identifier and recording it as in flight.
    /// A QoS 0 delivery at the front needs no slot and gets no packet id.
    pub(crate) fn start_next(&mut self, window: usize) -> Option<(Option<PacketId>, Delivery)> {
        if self.queue.front()?.qos == QoS::AtMostOnce {
            Gauges::sub(&self.gauges.queued, 1);
            return self.queue.pop_front().map(|d| (None, d));
        }
        if self.inflight.len() >= window {
            return None;
        }
        let d = self.queue.pop_front()?;
        Gauges::sub(&self.gauges.queued, 1);
        if d.store.is_some() {
            let cost = queue_cost(&d.msg);
            self.queued_bytes = self.queued_bytes.saturating_sub(cost);
            if let Some(b) = &self.budget {
                b.give(cost);
            }
        }
        let packet_id = self.allocate_packet_id()?;
        let stage = if d.qos == QoS::ExactlyOnce {
            Stage::AwaitRec
        } else {
            Stage::AwaitAck
        };
        self.push_inflight(packet_id, d.clone(), stage);
        Some((Some(packet_id), d))
    }

    /// Records `delivery` as in flight with `packet_id`, last in send order.
    fn push_inflight(&mut self, packet_id: PacketId, delivery: Delivery, stage: Stage) {
        self.seq += 1;
        self.inflight_by_id.insert(packet_id, self.seq);
        let replaced = self.inflight.insert(
            self.seq,
            Inflight {
                packet_id,
                delivery,
                stage,
            },
        );
        if replaced.is_none() {
            Gauges::add(&self.gauges.inflight, 1);
        }
    }

    /// Puts back a delivery that could not be sent after [`Session::start_next`]
    /// (e.g. too large for the client): forgets its packet identifier.
    pub(crate) fn abandon(&mut self, packet_id: PacketId) {
        if let Some(seq) = self.inflight_by_id.remove(&packet_id) {
            if self.inflight.remove(&seq).is_some() {
                Gauges::sub(&self.gauges.inflight, 1);
            }
        }
    }

    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        // At most 65,535 identifiers can be in use; the window is smaller.
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            if !self.inflight_by_id.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// PUBACK: completes a QoS 1 flow. Returns the delivery, `None` for an
    /// unknown id.
    pub(crate) fn puback(&mut self, packet_id: PacketId) -> Option<Delivery> {
        self.finish(packet_id, Stage::AwaitAck)
    }

    /// PUBREC: a success moves the QoS 2 flow to PUBREL; a failure code
    /// ends the flow.
    pub(crate) fn pubrec(&mut self, packet_id: PacketId, success: bool) -> Rec {
        let Some(seq) = self.inflight_by_id.get(&packet_id).copied() else {
            return Rec::Unknown;
        };
        let Some(entry) = self.inflight.get_mut(&seq) else {
            return Rec::Unknown;
        };
        match entry.stage {
            Stage::AwaitRec if success => {
                entry.stage = Stage::AwaitComp;
                Rec::Release {
                    delivery: entry.delivery.clone(),
                    changed: true,
                }
            }
            Stage::AwaitRec => match self.finish(packet_id, Stage::AwaitRec) {
                Some(d) => Rec::Ended(d),
                None => Rec::Unknown,
            },
            // A repeated PUBREC: answer with PUBREL again.
            Stage::AwaitComp => Rec::Release {
                delivery: entry.delivery.clone(),
                changed: false,
            },
            Stage::AwaitAck => Rec::Unknown,
        }
    }

    /// PUBCOMP: completes a QoS 2 flow.
    pub(crate) fn pubcomp(&mut self, packet_id: PacketId) -> Option<Delivery> {
        self.finish(packet_id, Stage::AwaitComp)
    }

    fn finish(&mut self, packet_id: PacketId, stage: Stage) -> Option<Delivery> {
        let seq = self.inflight_by_id.get(&packet_id).copied()?;
        if self.inflight.get(&seq).map(|e| e.stage) != Some(stage) {
            return None;
        }
        self.inflight_by_id.remove(&packet_id);
        let f = self.inflight.remove(&seq)?;
        Gauges::sub(&self.gauges.inflight, 1);
        Some(f.delivery)
    }

    /// The in-flight messages in send order, for resending on reconnect
    /// ([MQTT-4.4.0-1]: PUBLISH with DUP=1 before PUBREC, PUBREL after).
    pub(crate) fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.values()
    }

    /// Inbound QoS 2: records `packet_id`; `false` if it was already there
    /// (a resent PUBLISH that must not be delivered twice).
    pub(crate) fn begin_incoming_qos2(&mut self, packet_id: PacketId) -> bool {
        self.incoming_qos2.insert(packet_id)
    }

    /// `true` if `packet_id` is an inbound QoS 2 message awaiting PUBREL.
    pub(crate) fn has_incoming_qos2(&self, packet_id: PacketId) -> bool {
        self.incoming_qos2.contains(&packet_id)
    }

    /// Inbound PUBREL: releases `packet_id`; `false` if unknown.
    pub(crate) fn release_incoming_qos2(&mut self, packet_id: PacketId) -> bool {
        self.incoming_qos2.remove(&packet_id)
    }

    /// Inbound QoS 2 messages awaiting PUBREL (they count against the
    /// server's Receive Maximum).
    pub(crate) fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        Gauges::sub(&self.gauges.inflight, self.inflight.len());
        Gauges::sub(&self.gauges.queued, self.queue.len());
        if let Some(b) = &self.budget {
            b.give(self.queued_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PublishProperties;
    use crate::topic::TopicName;
    use crate::ByteStr;
    use bytes::Bytes;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: TopicName::from_static("t").unwrap(),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: None,
                uid: None,
            }),
            qos,
            retain: false,
            sub_ids: vec![],
            store: None,
            group: None,
        }
    }

    fn session() -> Session {
        Session::new(
            ClientId::new(ByteStr::from_static("c")),
            ProtocolVersion::V5,
        )
    }

    #[test]
    fn window_limits_inflight_and_acks_free_slots() {
        let mut s = session();
        for _ in 0..3 {
            assert!(s.enqueue(delivery(QoS::AtLeastOnce), 10).is_ok());
        }
        let (Some(a), _) = s.start_next(2).unwrap() else {
            panic!()
        };
        let (Some(b), _) = s.start_next(2).unwrap() else {
            panic!()
        };
        assert!(s.start_next(2).is_none(), "window of 2 is full");
        assert_ne!(a, b);
        assert!(s.puback(a).is_some());
        assert!(s.puback(a).is_none(), "a second PUBACK is ignored");
        let (Some(c), _) = s.start_next(2).unwrap() else {
            panic!()
        };
        assert_ne!(c, b);
        assert_eq!((s.inflight_len(), s.queued_len()), (2, 0));
    }

    #[test]
    fn queue_is_bounded_and_counts_drops() {
        let mut s = session();
        assert!(s.enqueue(delivery(QoS::AtLeastOnce), 1).is_ok());
        assert!(s.enqueue(delivery(QoS::AtLeastOnce), 1).is_err());
        assert_eq!(s.dropped, 1);
    }

    #[test]
    fn full_queue_drops_qos0_before_qos1() {
        let mut s = session();
        assert!(s.enqueue(delivery(QoS::AtMostOnce), 2).is_ok());
        assert!(s.enqueue(delivery(QoS::AtMostOnce), 2).is_ok());
        assert!(
            matches!(
                s.enqueue(delivery(QoS::AtLeastOnce), 2),
                Err(Dropped::Displaced)
            ),
            "a drop is reported"
        );
        let qos: Vec<_> = s.queue.iter().map(|d| d.qos).collect();
        assert_eq!(qos, [QoS::AtMostOnce, QoS::AtLeastOnce]);
        assert!(matches!(
            s.enqueue(delivery(QoS::AtMostOnce), 2),
            Err(Dropped::New(_))
        ));
        assert_eq!(s.queued_len(), 2);
        assert_eq!(s.dropped, 2);
    }

    #[test]
    fn qos2_flow_and_resend_state() {
        let mut s = session();
        let _ = s.enqueue(delivery(QoS::ExactlyOnce), 10);
        let (Some(id), _) = s.start_next(10).unwrap() else {
            panic!()
        };
        assert!(
            s.puback(id).is_none(),
            "PUBACK does not complete a QoS 2 flow"
        );
        assert!(s.pubcomp(id).is_none(), "PUBCOMP before PUBREC is ignored");
        assert!(matches!(
            s.pubrec(id, true),
            Rec::Release { changed: true, .. }
        ));
        assert_eq!(s.inflight().next().map(|e| e.stage), Some(Stage::AwaitComp));
        assert!(
            matches!(s.pubrec(id, true), Rec::Release { changed: false, .. }),
            "a repeated PUBREC gets PUBREL again"
        );
        assert!(s.pubcomp(id).is_some());
        assert_eq!(s.inflight_len(), 0);
        // A failed PUBREC ends the flow.
        let _ = s.enqueue(delivery(QoS::ExactlyOnce), 10);
        let (Some(id), _) = s.start_next(10).unwrap() else {
            panic!()
        };
        assert!(matches!(s.pubrec(id, false), Rec::Ended(_)));
        assert_eq!(s.inflight_len(), 0);
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut s = session();
        s.next_packet_id = PacketId::new(65535).unwrap();
        let _ = s.enqueue(delivery(QoS::AtLeastOnce), 10);
        let _ = s.enqueue(delivery(QoS::AtLeastOnce), 10);
        let (Some(a), _) = s.start_next(10).unwrap() else {
            panic!()
        };
        let (Some(b), _) = s.start_next(10).unwrap() else {
            panic!()
        };
        assert_eq!((a.get(), b.get()), (65535, 1));
    }

    #[test]
    fn incoming_qos2_is_exactly_once() {
        let mut s = session();
        let id = PacketId::new(9).unwrap();
        assert!(s.begin_incoming_qos2(id));
        assert!(!s.begin_incoming_qos2(id));
        assert!(s.release_incoming_qos2(id));
        assert!(!s.release_incoming_qos2(id));
        assert!(
            s.begin_incoming_qos2(id),
            "the id is free again after PUBREL"
        );
    }
}
