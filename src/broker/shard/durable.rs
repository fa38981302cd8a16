//! The shard's side of durable storage ([`Store`]): the store-op queue,
//! batch barriers, recovery, and what a session or retained message writes.

use super::*;

/// The shard's side of durable storage: changes not yet written, batch
/// numbers, stored messages and their reference counts.
#[derive(Debug, Default)]
pub(super) struct Store {
    /// Changes not yet taken by [`ShardCore::poll_store`].
    pub(super) ops: Vec<StoreOp>,
    /// The number the next batch gets (from 1).
    pub(super) next_batch: BatchId,
    /// The last batch taken.
    pub(super) taken: BatchId,
    /// The last batch written.
    pub(super) durable: BatchId,
    /// The next stored message id.
    pub(super) next_msg_id: MessageId,
    /// Queue entries referring to each stored message.
    pub(super) refs: HashMap<MessageId, u32, crate::hash::FastState>,
    /// The message stored last, so that one routed to many sessions of
    /// this shard is stored once.
    pub(super) last: Option<(Arc<Message>, MessageId)>,
    /// Acknowledgements to other shards held until storage caught up:
    /// `(batch, shard, token)`.
    pub(super) held_acks: VecDeque<(BatchId, ShardId, ShardMsg)>,
    /// Node links' messages held until storage caught up: `(batch,
    /// ticket)`, released into the cluster's done tickets.
    pub(super) held_remote: VecDeque<(BatchId, u64)>,
    /// Held acknowledgements to this shard itself, released by storage:
    /// applied at the end of [`ShardCore::handle_stored`].
    pub(super) loopback: Vec<ShardMsg>,
    /// Connections with output held back.
    pub(super) gated: HashSet<ConnId, crate::hash::FastState>,
    /// `ops.len()` when the current input (packet, shard message, timer)
    /// began: ops past it are this input's own changes.
    pub(super) mark: usize,
    /// While replies held in a [`Pending`] go out: the batch they wait for.
    pub(super) replying_after: Option<BatchId>,
}

impl Store {
    /// The batch that output produced now must wait for, if any.
    pub(super) fn barrier(&self) -> Option<BatchId> {
        if !self.ops.is_empty() {
            Some(self.next_batch)
        } else if self.taken > self.durable {
            Some(self.taken)
        } else {
            None
        }
    }

    /// A new input begins: changes from here on are its own.
    pub(super) fn begin_input(&mut self) {
        self.mark = self.ops.len();
    }

    /// The batch that output caused by the current input must wait for:
    /// the one its own changes go into, if it made any. Clean sessions wait
    /// only for this (and for what a [`Pending`] reply waited for), so a
    /// stalled log (a full disk) holds no traffic that needs no storage.
    pub(super) fn own_barrier(&self) -> Option<BatchId> {
        let own = (self.ops.len() > self.mark).then_some(self.next_batch);
        let pending = self.replying_after.filter(|b| *b > self.durable);
        own.max(pending)
    }

    /// One more queue entry refers to `msg`; returns its id, storing it
    /// first if needed.
    pub(super) fn retain(&mut self, msg: &Arc<Message>) -> MessageId {
        let id = match &self.last {
            Some((m, id)) if Arc::ptr_eq(m, msg) => *id,
            _ => {
                let id = self.next_msg_id;
                self.next_msg_id = id.next();
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
    pub(super) fn release(&mut self, id: MessageId) {
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
    pub(super) fn dequeue(&mut self, client_id: &ClientId, r: StoreRef) {
        self.ops.push(StoreOp::DeleteQueueEntry {
            client_id: client_id.clone(),
            seq: r.seq,
        });
        self.release(r.msg_id);
    }

    /// Writes the queue entry of `d` at `state`.
    pub(super) fn put_entry(&mut self, client_id: &ClientId, d: &Delivery, state: OutState) {
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

impl ShardCore {
    /// Storage batch `batch` (from [`ShardCore::poll_store`]) and every
    /// earlier one are written: releases the output and acknowledgements
    /// that waited for them.
    pub fn handle_stored(&mut self, batch: BatchId) {
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
            if to == self.id {
                store.loopback.push(ack);
            } else if let Some(q) = self.outbox.get_mut(to.get()) {
                q.push(ack);
            }
        }
        while store
            .held_remote
            .front()
            .is_some_and(|(b, _)| *b <= durable)
        {
            if let Some((_, ticket)) = store.held_remote.pop_front() {
                if let Some(c) = self.cluster.as_mut() {
                    c.done.push(ticket);
                }
            }
        }
        self.release_held_session_msgs(durable);
        let store = &mut self.store;
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
        // Only publishes' acknowledgements come back here, and their
        // replies carry no retained messages: no clock is needed.
        for ack in std::mem::take(&mut self.store.loopback) {
            if let ShardMsg::Ack {
                token,
                delivered,
                refused,
            } = ack
            {
                self.handle_ack(self.started, token, delivered, refused);
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
        self.clock = now;
        let Restored {
            sessions,
            retained,
            routes,
            next_message_id,
            expired_wills,
        } = restored;
        self.store.next_msg_id = self.store.next_msg_id.max(next_message_id);
        for (m, version) in retained {
            if m.payload.is_empty()
                && self.cluster.is_none()
                && home_shard(m.topic.as_str(), self.shards) == self.id
            {
                // A tombstone of a cluster, now one node: not needed.
                self.store
                    .ops
                    .push(StoreOp::DeleteRetained(m.topic.clone()));
            }
            self.retained.apply(m, version);
        }
        for (filter, shard) in routes {
            if shard != self.id && shard.get() < self.shards {
                self.routes.add_route(&filter, shard);
                self.cluster_route(&filter, true);
            }
        }
        for r in sessions {
            let cid = r.client_id;
            let mut s = Session::new(cid.clone(), r.session.protocol);
            s.share_gauges(self.gauges.clone());
            s.budget = self.config.queue_budget.clone();
            s.expiry_interval = r.session.expiry_interval;
            s.will = r.session.will.map(Box::new);
            s.stored = true;
            s.generation = 1;
            let was_connected = r.session.disconnected_at.is_none();
            let at = r.session.disconnected_at.unwrap_or(now);
            s.disconnected_at = Some(at);
            for (filter, sub) in r.subscriptions {
                self.routes.index(&cid, &filter, sub);
                if self.routes.count_local(&filter, self.id) {
                    self.cluster_route(&filter, true);
                }
                if s.subscriptions.insert(filter, sub).is_none() {
                    self.stats.subscriptions += 1;
                }
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
                    group: None,
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
            let shared: Vec<TopicFilter> = s
                .subscriptions
                .keys()
                .filter(|f| f.is_shared())
                .cloned()
                .collect();
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
            for filter in &shared {
                self.group_join(now, &cid, filter);
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
    pub fn poll_store(&mut self) -> Option<(BatchId, Vec<StoreOp>)> {
        if self.store.ops.is_empty() {
            return None;
        }
        let batch = self.store.next_batch;
        self.store.next_batch = batch.next();
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

    /// Whether storage changes wait for [`ShardCore::poll_store`].
    pub fn has_store_ops(&self) -> bool {
        !self.store.ops.is_empty()
    }

    /// Whether every storage change made so far has been reported written.
    pub fn store_idle(&self) -> bool {
        self.store.barrier().is_none()
    }

    /// Writes the session record of `cid` if the session is persistent
    /// (expiry > 0); one that is no longer persistent is deleted. A session
    /// stored for the first time also stores its subscriptions and queue.
    pub(super) fn store_session(&mut self, cid: &ClientId) {
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
        for (d, state) in s.unstored_inflight() {
            let seq = next;
            next += 1;
            let msg_id = self.store.retain(&d.msg);
            d.store = Some(StoreRef { msg_id, seq });
            self.store.put_entry(cid, d, state);
        }
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
    pub(super) fn unstore_session(&mut self, cid: &ClientId) {
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

    /// Applies a retained update made at `version` to this shard's replica;
    /// the shard that is home to its topic stores it. Returns `false` (and
    /// changes nothing) if the replica holds a newer one.
    pub(super) fn apply_retained(&mut self, msg: &Arc<Message>, version: RetainVersion) -> bool {
        if !self.retained.apply(msg.clone(), version) {
            return false;
        }
        if !self.config.persistence
            || msg.topic.as_str().starts_with('$')
            || home_shard(msg.topic.as_str(), self.shards) != self.id
        {
            return true;
        }
        // In a cluster a clear is stored as a tombstone (see `retain.rs`).
        self.store
            .ops
            .push(if msg.payload.is_empty() && self.cluster.is_none() {
                StoreOp::DeleteRetained(msg.topic.clone())
            } else {
                StoreOp::PutRetained(msg.clone(), version)
            });
        true
    }
}
