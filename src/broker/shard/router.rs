//! [`RouteTable`]: where a message published on this shard goes (local
//! subscriptions, shared groups, other shards' routes), and the
//! acknowledgements of route updates other shards apply.

use super::*;

/// The routes one shard knows: its local sessions' subscriptions (plain
/// ones in a trie, shared ones as groups of members by full filter), how
/// many local subscribers each filter has (announced to the other shards
/// on 0 ↔ 1), and its copy of every shard's routes (filter → shards).
///
/// Lives on every shard, each with its own copy; kept in step by
/// `ShardMsg::RouteAdd`/`RouteRemove`. The seam where other nodes' routes
/// will plug in.
#[derive(Debug, Default)]
pub(super) struct RouteTable {
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
}

/// Where one message goes, as [`RouteTable::targets`] found it.
#[derive(Debug)]
pub(super) struct Targets {
    /// Shards below 64 with a plain subscriber (by index).
    pub(super) shards: [bool; 64],
    /// Shards from 64 on with a plain subscriber.
    pub(super) wide: Vec<ShardId>,
    /// One pick per shared filter: the filter and the shard whose turn it is.
    pub(super) shared: Vec<(TopicFilter, ShardId)>,
}

impl RouteTable {
    /// Counts a local subscriber of `filter`; `true` for the first one
    /// (the route to this shard appears then).
    pub(super) fn count_local(&mut self, filter: &TopicFilter, here: ShardId) -> bool {
        let n = self.local_filters.entry(filter.clone()).or_insert(0);
        *n += 1;
        if *n != 1 {
            return false;
        }
        self.add_route(filter, here);
        true
    }

    /// One local subscriber of `filter` less; `true` when it was the last
    /// (the route to this shard is gone then).
    pub(super) fn uncount_local(&mut self, filter: &TopicFilter, here: ShardId) -> bool {
        let Some(n) = self.local_filters.get_mut(filter) else {
            return false;
        };
        *n -= 1;
        if *n != 0 {
            return false;
        }
        self.local_filters.remove(filter);
        self.remove_route(filter, here);
        true
    }

    /// Shard `from` has subscribers of `filter`.
    pub(super) fn add_route(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.insert(filter.matching_filter(), key, ());
    }

    /// Shard `from` has no subscriber of `filter` any more.
    pub(super) fn remove_route(&mut self, filter: &TopicFilter, from: ShardId) {
        let key = RouteKey {
            shard: from,
            shared: filter.is_shared().then(|| filter.clone()),
        };
        self.routes.remove(filter.matching_filter(), &key);
        if filter.is_shared() && self.routes.subscriber_count(filter.matching_filter()) == 0 {
            self.shared_rr.remove(filter);
        }
    }

    /// Makes a subscription of `cid` findable when routing: the trie for a
    /// plain filter, the group's members for a shared one (`existed`: the
    /// session already had it, so it is a member already).
    pub(super) fn index(
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

    /// The opposite of [`RouteTable::index`].
    pub(super) fn unindex(&mut self, cid: &ClientId, filter: &TopicFilter) {
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
    }

    /// The shards a message on `topic` goes to, with this shard's
    /// round-robin pick for each shared filter (which advances).
    pub(super) fn targets(&mut self, topic: &TopicName) -> Targets {
        let mut t = Targets {
            shards: [false; 64],
            wide: Vec::new(),
            shared: Vec::new(),
        };
        let mut shared: Vec<(TopicFilter, ShardId)> = Vec::new();
        self.routes
            .for_each_match(topic, |key, _| match &key.shared {
                None if key.shard.get() < 64 => t.shards[key.shard.get()] = true,
                None => t.wide.push(key.shard),
                Some(f) => shared.push((f.clone(), key.shard)),
            });
        if !shared.is_empty() {
            shared.sort();
            let mut i = 0;
            while i < shared.len() {
                let j = i + shared[i..]
                    .iter()
                    .take_while(|(f, _)| *f == shared[i].0)
                    .count();
                let rr = self.shared_rr.entry(shared[i].0.clone()).or_insert(0);
                let target = shared[i + *rr % (j - i)].1;
                *rr = rr.wrapping_add(1);
                t.shared.push((shared[i].0.clone(), target));
                i = j;
            }
        }
        t
    }

    /// Calls `f` with every local plain subscription matching `topic`.
    pub(super) fn for_each_local(
        &self,
        topic: &TopicName,
        f: impl FnMut(&ClientId, &Subscription),
    ) {
        self.subs.for_each_match(topic, f);
    }

    /// The local members of shared filter `filter`.
    pub(super) fn group_mut(&mut self, filter: &TopicFilter) -> Option<&mut SharedGroup> {
        self.shared.get_mut(filter)
    }

    /// Gives back the room of maps that once held many more entries.
    pub(super) fn release_memory(&mut self) {
        shrink_if_sparse(&mut self.local_filters);
    }
}

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
    pub(super) after: Option<BatchId>,
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
        if !self.routes.count_local(filter, self.id) {
            return false;
        }
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
        if self.routes.uncount_local(filter, self.id) {
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
}
