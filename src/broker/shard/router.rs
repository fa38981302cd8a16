//! The route table's local side (filter → shards, shared groups) and the
//! acknowledgements of updates other shards apply.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct RouteKey {
    pub(super) shard: ShardId,
    /// For a shared subscription, its full filter.
    pub(super) shared: Option<TopicFilter>,
}

#[derive(Debug, Default)]
pub(super) struct SharedGroup {
    pub(super) members: Vec<ClientId>,
    pub(super) next: usize,
}

#[derive(Debug, Default)]
pub(super) struct Agg {
    pub(super) qos: u8,
    pub(super) retain_as_published: bool,
    pub(super) ids: Vec<u32>,
}

/// Replies to a client that wait for acknowledgements from other shards.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) remaining: usize,
    /// A publish whose acknowledgement says 0x97 (quota exceeded) if it
    /// reached no session and a queue bound refused it (v5, every target
    /// reports).
    pub(super) quota_check: bool,
    /// Some target delivered the message.
    pub(super) delivered: bool,
    /// Some target's queue bound refused it.
    pub(super) refused: bool,
    /// The storage batch the replies also wait for (the changes the
    /// request made on this shard), if any.
    pub(super) after: Option<u64>,
    pub(super) conn: ConnId,
    pub(super) client: ClientId,
    pub(super) replies: Vec<Packet>,
    /// Filters whose retained messages go out after the SUBACK.
    pub(super) retained_for: Vec<(TopicFilter, Subscription)>,
}

impl ShardCore {
    /// Counts a local subscriber of `filter`; the first one is announced to
    /// every shard (returns `true` then).
    pub(super) fn add_local_filter(&mut self, filter: &TopicFilter, token: Option<u64>) -> bool {
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

    pub(super) fn new_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Answers a `RouteAdd`, `Retain` or forwarded publish that asked for
    /// it. Held until the storage changes it caused here are written.
    pub(super) fn ack(&mut self, to: ShardId, token: Option<u64>) {
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

    pub(super) fn handle_ack(&mut self, now: Instant, token: u64, delivered: bool, refused: bool) {
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

    pub(super) fn remove_local_filter(&mut self, filter: &TopicFilter) {
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

    pub(super) fn route_add(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.insert(filter.matching_filter(), key, ());
    }

    pub(super) fn route_remove(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.remove(filter.matching_filter(), &key);
        if filter.is_shared() && self.routes.subscriber_count(filter.matching_filter()) == 0 {
            self.shared_rr.remove(filter);
        }
    }
}
