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
    /// Non-shared subscriptions of local sessions (shared ones are
    /// members of their group, kept by its home shard's `GroupTable`).
    subs: SubscriptionTrie<ClientId, Subscription>,
    /// Local subscriber count per full filter (route announcements).
    local_filters: HashMap<TopicFilter, usize, crate::hash::FastState>,
    /// This shard's copy of the route table: filter → shards.
    routes: SubscriptionTrie<RouteKey, ()>,
}

/// Where one message goes, as [`RouteTable::targets`] found it.
#[derive(Debug)]
pub(super) struct Targets {
    /// Shards below 64 with a plain subscriber (by index).
    pub(super) shards: [bool; 64],
    /// Shards from 64 on with a plain subscriber.
    pub(super) wide: Vec<ShardId>,
    /// The shared filters (groups) that match, once each.
    pub(super) shared: Vec<TopicFilter>,
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
    }

    /// Makes a plain subscription of `cid` findable when routing (a
    /// shared one is found through its group's home shard).
    pub(super) fn index(&mut self, cid: &ClientId, filter: &TopicFilter, sub: Subscription) {
        if !filter.is_shared() {
            self.subs.insert(filter.matching_filter(), cid.clone(), sub);
        }
    }

    /// The opposite of [`RouteTable::index`].
    pub(super) fn unindex(&mut self, cid: &ClientId, filter: &TopicFilter) {
        if !filter.is_shared() {
            self.subs.remove(filter.matching_filter(), cid);
        }
    }

    /// The shards a message on `topic` goes to, and the shared groups
    /// (once each, whatever the number of shards with members).
    pub(super) fn targets(&self, topic: &TopicName) -> Targets {
        let mut t = Targets {
            shards: [false; 64],
            wide: Vec::new(),
            shared: Vec::new(),
        };
        self.routes
            .for_each_match(topic, |key, _| match &key.shared {
                None if key.shard.get() < 64 => t.shards[key.shard.get()] = true,
                None => t.wide.push(key.shard),
                Some(f) => t.shared.push(f.clone()),
            });
        if t.shared.len() > 1 {
            t.shared.sort();
            t.shared.dedup();
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
    /// Who the acknowledgement is for.
    pub(super) waiter: Waiter,
}

/// Who waits for a [`Pending`] acknowledgement.
#[derive(Debug)]
pub(super) enum Waiter {
    /// A client of this shard: its replies (PUBACK, PUBREC, SUBACK) and,
    /// after a SUBACK, the retained messages of its new filters.
    Client {
        conn: ConnId,
        client: ClientId,
        replies: Vec<Packet>,
        retained_for: Vec<(TopicFilter, Subscription)>,
    },
    /// A node link: a message another node sent, now stored by every shard
    /// here that took it ([`ShardCore::take_cluster_done`]).
    Node(u64),
    /// Another shard's request (`token`), answered once what it caused
    /// here is acknowledged (a delivery forwarded to a moved session).
    Shard { to: ShardId, token: u64 },
}

impl ShardCore {
    /// Counts a local subscriber of `filter`; the first one is announced to
    /// every shard (returns `true` then).
    pub(super) fn add_local_filter(&mut self, filter: &TopicFilter, token: Option<u64>) -> bool {
        if !self.routes.count_local(filter, self.id) {
            return false;
        }
        self.cluster_route(filter, true);
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
    /// it. Held until the storage changes it caused here are written. An
    /// answer to this shard itself (a group's member here took a message
    /// published here, through the group's home) is applied at once.
    pub(super) fn ack(&mut self, now: Instant, to: ShardId, token: Option<u64>) {
        let Some(token) = token else { return };
        let (delivered, refused) = (self.outcome.delivered > 0, self.outcome.refused > 0);
        let ack = ShardMsg::Ack {
            token,
            delivered,
            refused,
        };
        if let Some(batch) = self.store.own_barrier() {
            self.store.held_acks.push_back((batch, to, ack));
        } else if to == self.id {
            self.handle_ack(now, token, delivered, refused);
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
        let (conn, client, replies, retained_for) = match p.waiter {
            Waiter::Node(ticket) => {
                self.node_done(ticket, p.after);
                return;
            }
            Waiter::Shard { to, token } => {
                let ack = ShardMsg::Ack {
                    token,
                    delivered: p.delivered,
                    refused: p.refused,
                };
                match p.after {
                    Some(b) if b > self.store.durable => {
                        self.store.held_acks.push_back((b, to, ack))
                    }
                    _ if to == self.id => self.handle_ack(now, token, p.delivered, p.refused),
                    _ => {
                        if let Some(q) = self.outbox.get_mut(to.get()) {
                            q.push(ack);
                        }
                    }
                }
                return;
            }
            Waiter::Client {
                conn,
                client,
                replies,
                retained_for,
            } => (conn, client, replies, retained_for),
        };
        // The client may have gone meanwhile; its replies go nowhere then.
        let attached = self.conns.get(&conn).and_then(|c| c.client_id.as_ref()) == Some(&client);
        if !attached {
            return;
        }
        self.store.replying_after = p.after;
        let quota = p.quota_check && p.refused && !p.delivered;
        for packet in &replies {
            if quota {
                self.send(conn, &quota_exceeded(packet));
            } else if !p.delivered {
                // Every target that was to take it did not (a node gone,
                // subscribers gone meanwhile): MQTT 5 says so.
                self.send(conn, &no_subscribers(packet));
            } else {
                self.send(conn, packet);
            }
        }
        self.store.replying_after = None;
        // Not for a filter unsubscribed meanwhile.
        let mut retained_for = retained_for;
        if let Some(s) = self.sessions.get(&client) {
            retained_for.retain(|(f, _)| s.subscriptions.contains_key(f));
        }
        self.send_retained(now, &client, retained_for);
    }

    pub(super) fn remove_local_filter(&mut self, filter: &TopicFilter) {
        if self.routes.uncount_local(filter, self.id) {
            self.cluster_route(filter, false);
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
