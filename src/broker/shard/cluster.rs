//! The core's side of a cluster: other nodes' routes (filter → node), what a
//! shard hands its node links ([`ClusterOut`]), and messages and routes
//! arriving from other nodes. Off unless [`ShardCore::enable_cluster`] was
//! called: a single node pays nothing.
//!
//! A message crosses to a node once, whatever its number of subscribers
//! there, and never crosses again from the node that received it (no
//! loops). `$SYS` topics are each node's own and never cross (clients may
//! not publish `$` topics at all). Shard 0 is
//! the node's speaker: it sees every shard's routes (the route table is
//! replicated to every shard) and reports the node's 0 ↔ 1 transitions.
//!
//! A shared subscription's group is one group across the cluster: a node
//! announces `$share/{group}/{filter}` while it has members, and the
//! publishing shard picks the one node that takes each message for the
//! group ([`AcrossNodes`]: its own where it has members, by default). The
//! message carries the groups the receiving node is to serve; a node
//! offers a message from another node only to those groups, so each
//! message reaches one member cluster-wide.

use super::*;

/// What a shard hands its cluster links, taken by
/// [`ShardCore::take_cluster_out`].
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterOut {
    /// Send `msg` to `node`'s subscribers; if `token` is set, the
    /// publisher's acknowledgement waits for
    /// [`ShardCore::handle_cluster_ack`] with it (the link's
    /// acknowledgement of the batch that carried it).
    Publish {
        /// The node.
        node: NodeId,
        /// The message.
        msg: Arc<Message>,
        /// The publisher's token.
        token: Option<u64>,
        /// The shared groups (`$share/...` filters) whose member on that
        /// node is to take the message.
        groups: Vec<TopicFilter>,
    },
    /// For `node`'s members of the shared groups `groups` only (not its
    /// plain subscribers): what a member here that dropped left unfinished,
    /// while no member of its group is online on this node. Nothing waits
    /// for it (its publisher was answered long ago).
    GroupPublish {
        /// The node.
        node: NodeId,
        /// The message.
        msg: Arc<Message>,
        /// The groups.
        groups: Vec<TopicFilter>,
    },
    /// A retained update (an empty payload clears the topic) and its
    /// version, for every other node.
    Retain(Arc<Message>, RetainVersion),
    /// (Shard 0) this node now has subscribers of the filter.
    RouteAdd(TopicFilter),
    /// (Shard 0) this node has no subscriber of the filter any more.
    RouteRemove(TopicFilter),
}

/// Other nodes' routes as one shard knows them, and the node's own
/// filters (counted over its shards) on the speaker.
#[derive(Debug, Default)]
pub(super) struct ClusterState {
    /// This node.
    node: NodeId,
    /// filter → nodes with subscribers.
    remote: SubscriptionTrie<NodeId, ()>,
    /// filter → (node, `$share/{group}/{filter}`): nodes with members of
    /// a group.
    remote_groups: SubscriptionTrie<(NodeId, TopicFilter), ()>,
    /// Per group, the turn of the next node (round robin across nodes).
    turns: HashMap<TopicFilter, usize, crate::hash::FastState>,
    /// For groups with the `random` strategy.
    rng: u64,
    /// The last [`MessageUid`] sequence number given here.
    uid_seq: u64,
    /// While a message from another node is routed: the groups it is
    /// for here.
    pub(super) serve_groups: Vec<TopicFilter>,
    /// Per node, its filters (to drop them all when it leaves).
    by_node: HashMap<NodeId, HashSet<TopicFilter>>,
    /// On shard 0: shards of this node with a plain subscriber, per filter.
    node_filters: HashMap<TopicFilter, usize, crate::hash::FastState>,
    pub(super) out: Vec<ClusterOut>,
    /// Tickets of messages from other nodes now delivered and stored here
    /// ([`ShardCore::take_cluster_done`]).
    pub(super) done: Vec<u64>,
    /// Set while a message from another node is routed: it goes to this
    /// node's shards only.
    pub(super) from_remote: bool,
    /// Set while a [`ClusterOut::GroupPublish`] from another node is
    /// routed: for the groups named only, not plain subscribers.
    pub(super) groups_only: bool,
    /// What the runtime last said of the cluster (for `$SYS`).
    pub(super) status: ClusterStatus,
    /// Claims, the registry, sessions moving between nodes.
    pub(super) takeover: super::takeover::Takeover,
    /// The wall clock: an instant and its unix milliseconds (retained
    /// versions).
    wall: Option<(Instant, u64)>,
}

/// The cluster as this node sees it, for `$SYS/broker/cluster/...`
/// ([`ShardCore::set_cluster_status`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Members, this node included.
    pub nodes: u64,
    /// Peers this node's speaker has a link up to.
    pub peers_linked: u64,
    /// etcd answers.
    pub etcd_up: bool,
}

/// `$SYS/...`: each node's own, never sent to another.
fn is_sys(topic: &TopicName) -> bool {
    let t = topic.as_str();
    t == "$SYS" || t.starts_with("$SYS/")
}

/// Adds `node`'s route `f` (a plain filter, or a group it has members of).
fn route(
    plain: &mut SubscriptionTrie<NodeId, ()>,
    groups: &mut SubscriptionTrie<(NodeId, TopicFilter), ()>,
    node: NodeId,
    f: &TopicFilter,
) {
    if f.is_shared() {
        groups.insert(f.matching_filter(), (node, f.clone()), ());
    } else {
        plain.insert(f.as_str(), node, ());
    }
}

/// Removes `node`'s route `f`.
fn unroute(
    plain: &mut SubscriptionTrie<NodeId, ()>,
    groups: &mut SubscriptionTrie<(NodeId, TopicFilter), ()>,
    node: NodeId,
    f: &TopicFilter,
) {
    if f.is_shared() {
        groups.remove(f.matching_filter(), &(node, f.clone()));
    } else {
        plain.remove(f.as_str(), &node);
    }
}

impl ClusterState {
    /// Which of `nodes` (sorted, not empty) takes a message of `group`:
    /// the hash strategies and `sticky` by rendezvous hashing (the same
    /// node from every publisher, moving only a departed node's share),
    /// `random` at random, the others in turn.
    fn pick_node(
        &mut self,
        group: &TopicFilter,
        nodes: &[NodeId],
        msg: &Message,
        strategy: Strategy,
    ) -> NodeId {
        let Some(&first) = nodes.first() else {
            return self.node;
        };
        let by_hash = |key: &str| {
            nodes
                .iter()
                .copied()
                .max_by_key(|n| super::groups::rendezvous(key, &n.0.to_string()))
                .unwrap_or(first)
        };
        match strategy {
            Strategy::HashClient => by_hash(msg.origin.as_ref().map_or("", |c| c.as_str())),
            Strategy::HashTopic => by_hash(msg.topic.as_str()),
            Strategy::Sticky => by_hash(group.as_str()),
            Strategy::Random => {
                let r = super::groups::next_random(&mut self.rng);
                nodes[(r % nodes.len() as u64) as usize]
            }
            Strategy::RoundRobin | Strategy::LeastInflight => {
                let turn = self.turns.entry(group.clone()).or_insert(0);
                let node = nodes[*turn % nodes.len()];
                *turn = turn.wrapping_add(1);
                node
            }
        }
    }

    /// The nodes with subscribers matching `topic`.
    pub(super) fn nodes(&self, topic: &TopicName) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        self.remote.for_each_match(topic, |n, _| nodes.push(*n));
        if nodes.len() > 1 {
            nodes.sort_unstable();
            nodes.dedup();
        }
        nodes
    }
}

impl ShardCore {
    /// Makes this shard a member of a cluster: messages matching other
    /// nodes' routes go out through [`ShardCore::take_cluster_out`]. Called
    /// before [`ShardCore::restore`] and any connection, so the speaker
    /// counts every route from the start.
    ///
    /// `wall` is an instant with its wall-clock time (unix milliseconds):
    /// retained updates made here are versioned by it, so the newest wins
    /// on every node (see [`RetainVersion`]); nodes' clocks should be kept
    /// in sync (NTP).
    pub fn enable_cluster(&mut self, node: NodeId, wall: (Instant, u64)) {
        if self.cluster.is_none() {
            self.cluster = Some(Box::new(ClusterState {
                node,
                rng: 0x9e37_79b9_7f4a_7c15 ^ (u64::from(node.0) << 16) ^ self.id.get() as u64,
                wall: Some(wall),
                // Above every number of this shard's earlier lives, as long
                // as they averaged under a million messages a millisecond.
                uid_seq: wall.1.saturating_mul(1_000_000),
                ..ClusterState::default()
            }));
            self.retained.keep_tombstones();
        }
    }

    /// A new [`MessageUid`] for a message published here (none outside a
    /// cluster).
    pub(super) fn next_uid(&mut self) -> Option<MessageUid> {
        let shard = self.id.get() as u16;
        let c = self.cluster.as_mut()?;
        c.uid_seq += 1;
        Some(MessageUid {
            node: c.node.0,
            shard,
            seq: c.uid_seq,
        })
    }

    /// This node (0 outside a cluster).
    pub(super) fn node(&self) -> NodeId {
        self.cluster.as_ref().map_or(NodeId(0), |c| c.node)
    }

    /// Unix milliseconds at `now` (0 outside a cluster: there a retained
    /// version only counts up).
    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        match self.cluster.as_ref().and_then(|c| c.wall) {
            Some((at, ms)) if now >= at => ms.saturating_add(
                u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX),
            ),
            Some((at, ms)) => ms.saturating_sub(
                u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX),
            ),
            None => 0,
        }
    }

    /// Every retained entry of this shard's replica with its version,
    /// tombstones included: what a node that rejoins the cluster is sent
    /// (by shard 0's link to it), so it learns of updates made while it was
    /// away.
    pub fn retained_snapshot(&self) -> Vec<(Arc<Message>, RetainVersion)> {
        self.retained.snapshot(self.clock)
    }

    /// Drops tombstones older than [`crate::broker::TOMBSTONE_KEEP_MS`]
    /// (the `$SYS` tick, in a cluster); the topic's home shard deletes its
    /// record.
    pub(super) fn purge_tombstones(&mut self, now: Instant) {
        if self.cluster.is_none() {
            return;
        }
        let before = self
            .wall_ms(now)
            .saturating_sub(crate::broker::TOMBSTONE_KEEP_MS);
        for topic in self.retained.purge_tombstones(before) {
            if self.config.persistence && home_shard(topic.as_str(), self.shards) == self.id {
                self.store.ops.push(StoreOp::DeleteRetained(topic));
            }
        }
    }

    /// The runtime's view of the cluster, published in `$SYS` by shard 0.
    pub fn set_cluster_status(&mut self, status: ClusterStatus) {
        if let Some(c) = self.cluster.as_mut() {
            c.status = status;
        }
    }

    /// `$SYS/broker/cluster/...` values, in a cluster.
    pub(super) fn cluster_sys(&self) -> Vec<(&'static str, String)> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        vec![
            ("$SYS/broker/cluster/nodes", c.status.nodes.to_string()),
            (
                "$SYS/broker/cluster/peers linked",
                c.status.peers_linked.to_string(),
            ),
            (
                "$SYS/broker/cluster/etcd",
                if c.status.etcd_up { "up" } else { "down" }.to_owned(),
            ),
            (
                "$SYS/broker/cluster/routes",
                c.node_filters.len().to_string(),
            ),
        ]
    }

    /// What the links should carry, since the last call.
    pub fn take_cluster_out(&mut self) -> Vec<ClusterOut> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    /// The filters this node has subscribers of (shard 0): the snapshot a
    /// fresh peer gets first.
    pub fn node_filters(&self) -> Vec<TopicFilter> {
        self.cluster
            .as_ref()
            .map(|c| c.node_filters.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A route of shard `from` appeared (`add`) or went; on the speaker,
    /// the node's own 0 ↔ 1 transitions go to the links.
    pub(super) fn cluster_route(&mut self, filter: &TopicFilter, add: bool) {
        // (`$SYS` never crosses: its filters are not announced.)
        if self.id.get() != 0 || filter.matching_filter().starts_with("$SYS") {
            return;
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if add {
            let n = c.node_filters.entry(filter.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                c.out.push(ClusterOut::RouteAdd(filter.clone()));
            }
        } else if let Some(n) = c.node_filters.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                c.node_filters.remove(filter);
                c.out.push(ClusterOut::RouteRemove(filter.clone()));
            }
        }
    }

    /// Of the shared groups matching `msg` (`local`: those with members on
    /// this node), the ones this node serves; the others go to the node
    /// picked for each, returned as (node, group). A message from another
    /// node is for the groups it named only.
    pub(super) fn split_groups(
        &mut self,
        msg: &Message,
        local: Vec<TopicFilter>,
    ) -> (Vec<TopicFilter>, Vec<(NodeId, TopicFilter)>) {
        let Some(c) = self.cluster.as_mut() else {
            return (local, Vec::new());
        };
        if c.from_remote {
            return (std::mem::take(&mut c.serve_groups), Vec::new());
        }
        let mut remote: Vec<(TopicFilter, NodeId)> = Vec::new();
        c.remote_groups
            .for_each_match(msg.topic.as_str(), |(n, g), _| remote.push((g.clone(), *n)));
        if remote.is_empty() || is_sys(&msg.topic) {
            return (local, Vec::new());
        }
        remote.sort_unstable();
        remote.dedup();
        let mut groups: Vec<TopicFilter> = remote.iter().map(|(g, _)| g.clone()).collect();
        groups.extend(local.iter().cloned());
        groups.sort_unstable();
        groups.dedup();
        let (mut here, mut away) = (Vec::new(), Vec::new());
        for g in groups {
            let has_local = local.contains(&g);
            if has_local && self.config.shared.across_nodes == AcrossNodes::LocalFirst {
                here.push(g);
                continue;
            }
            let mut nodes: Vec<NodeId> = remote
                .iter()
                .filter(|(rg, _)| *rg == g)
                .map(|(_, n)| *n)
                .collect();
            if has_local {
                nodes.push(c.node);
                nodes.sort_unstable();
            }
            let strategy = self
                .config
                .shared
                .strategy_for(g.share_group().unwrap_or(""));
            let node = c.pick_node(&g, &nodes, msg, strategy);
            if node == c.node {
                here.push(g);
            } else {
                away.push((node, g));
            }
        }
        (here, away)
    }

    /// The other nodes a message goes to (none for `$SYS`, for a message
    /// that came from another node, or without a cluster): those with
    /// subscribers and those picked for a group (`groups`, from
    /// [`ShardCore::split_groups`]); each once, handed to the links with
    /// the publisher's `token`. Returns how many.
    pub(super) fn route_to_nodes(
        &mut self,
        msg: &Arc<Message>,
        token: Option<u64>,
        mut groups: Vec<(NodeId, TopicFilter)>,
    ) -> usize {
        let Some(c) = self.cluster.as_mut() else {
            return 0;
        };
        if c.from_remote || is_sys(&msg.topic) {
            return 0;
        }
        let mut nodes = c.nodes(&msg.topic);
        if !groups.is_empty() {
            nodes.extend(groups.iter().map(|(n, _)| *n));
            nodes.sort_unstable();
            nodes.dedup();
            groups.sort_unstable();
        }
        for &node in &nodes {
            let groups = groups
                .iter()
                .filter(|(n, _)| *n == node)
                .map(|(_, g)| g.clone())
                .collect();
            c.out.push(ClusterOut::Publish {
                node,
                msg: msg.clone(),
                token,
                groups,
            });
        }
        nodes.len()
    }

    /// A retained update made here goes to every other node's replicas.
    pub(super) fn cluster_retain(&mut self, msg: &Arc<Message>, version: RetainVersion) {
        if let Some(c) = self.cluster.as_mut() {
            if !c.from_remote && !is_sys(&msg.topic) {
                c.out.push(ClusterOut::Retain(msg.clone(), version));
            }
        }
    }

    /// A message from another node, for this node's subscribers: routed
    /// to this node's shards only. Returns whether it matched here.
    ///
    /// With a `ticket` (a QoS 1/2 message the sending node's publisher
    /// waits for), the ticket comes back from
    /// [`ShardCore::take_cluster_done`] once every shard here that took the
    /// message has it in its log, as a publisher on this node would wait:
    /// the link acknowledges the batch only then.
    pub fn handle_cluster_publish(
        &mut self,
        now: Instant,
        msg: Message,
        ticket: Option<u64>,
        groups: Vec<TopicFilter>,
    ) -> bool {
        self.clock = now;
        if msg.is_expired(now) {
            if let Some(t) = ticket {
                self.node_done(t, None);
            }
            return false;
        }
        let msg = Arc::new(msg);
        if let Some(c) = self.cluster.as_mut() {
            c.from_remote = true;
            c.serve_groups = groups.into_iter().filter(TopicFilter::is_shared).collect();
        }
        self.outcome = Outcome::default();
        let token = ticket.map(|_| self.new_token());
        self.relay = token;
        let (matched, acked) = self.route(now, msg, token);
        self.relay = None;
        let acked = acked + self.outcome.forwards as usize;
        if let Some(c) = self.cluster.as_mut() {
            c.from_remote = false;
            c.serve_groups.clear();
        }
        if let (Some(token), Some(ticket)) = (token, ticket) {
            let after = self.store.own_barrier();
            if acked > 0 {
                let pending = Pending {
                    remaining: acked,
                    quota_check: false,
                    delivered: self.outcome.delivered > 0,
                    refused: self.outcome.refused > 0,
                    after,
                    waiter: Waiter::Node(ticket),
                };
                self.pending.insert(token, pending);
            } else {
                self.node_done(ticket, after);
            }
        }
        matched
    }

    /// A message from another node for this node's members of `groups`
    /// only ([`ClusterOut::GroupPublish`]), acknowledged like
    /// [`ShardCore::handle_cluster_publish`].
    pub fn handle_cluster_group_publish(
        &mut self,
        now: Instant,
        msg: Message,
        ticket: Option<u64>,
        groups: Vec<TopicFilter>,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.groups_only = true;
        }
        self.handle_cluster_publish(now, msg, ticket, groups);
        if let Some(c) = self.cluster.as_mut() {
            c.groups_only = false;
        }
    }

    /// Whether the message being routed is for shared groups only.
    pub(super) fn groups_only(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.groups_only)
    }

    /// Another node with members of group `filter` (in turn), if any.
    pub(super) fn remote_group_node(&mut self, filter: &TopicFilter) -> Option<NodeId> {
        let c = self.cluster.as_mut()?;
        let mut nodes: Vec<NodeId> = c
            .by_node
            .iter()
            .filter(|(_, fs)| fs.contains(filter))
            .map(|(n, _)| *n)
            .collect();
        if nodes.is_empty() {
            return None;
        }
        nodes.sort_unstable();
        let turn = c.turns.entry(filter.clone()).or_insert(0);
        let node = nodes[*turn % nodes.len()];
        *turn = turn.wrapping_add(1);
        Some(node)
    }

    /// Sends `msg` to `node`'s members of group `filter` only.
    pub(super) fn cluster_publish_to_group(
        &mut self,
        node: NodeId,
        msg: Arc<Message>,
        filter: TopicFilter,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.out.push(ClusterOut::GroupPublish {
                node,
                msg,
                groups: vec![filter],
            });
        }
    }

    /// A node link's message is done here once storage batch `after` (if
    /// any) is written.
    pub(super) fn node_done(&mut self, ticket: u64, after: Option<BatchId>) {
        match after {
            Some(b) if b > self.store.durable => self.store.held_remote.push_back((b, ticket)),
            _ => {
                if let Some(c) = self.cluster.as_mut() {
                    c.done.push(ticket);
                }
            }
        }
    }

    /// Tickets of [`ShardCore::handle_cluster_publish`] now done, since the
    /// last call.
    pub fn take_cluster_done(&mut self) -> Vec<u64> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.done))
            .unwrap_or_default()
    }

    /// A retained update from another node, made at `version`: applied to
    /// this shard's replica (stored if this shard is the topic's home) and
    /// to every other shard's — unless this replica holds a newer one (a
    /// rejoining node's stale copy, or updates crossing each other): then
    /// it is ignored here and everywhere.
    pub fn handle_cluster_retain(&mut self, now: Instant, msg: Message, version: RetainVersion) {
        self.clock = now;
        let msg = Arc::new(msg);
        if !self.apply_retained(&msg, version) {
            return;
        }
        for s in 0..self.shards {
            if s != self.id.get() {
                let from = self.id;
                self.outbox[s].push(ShardMsg::Retain {
                    msg: msg.clone(),
                    version,
                    from,
                    token: None,
                });
            }
        }
    }

    /// `node`'s routes: a whole snapshot (`Some`, replacing what was known)
    /// or changes. Every shard of this node gets them (the runtime hands
    /// them to each).
    pub fn handle_node_routes(
        &mut self,
        node: NodeId,
        snapshot: Option<Vec<TopicFilter>>,
        add: &[TopicFilter],
        remove: &[TopicFilter],
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let c = &mut **c;
        let known = c.by_node.entry(node).or_default();
        if let Some(all) = snapshot {
            let all: HashSet<TopicFilter> = all.into_iter().collect();
            for gone in known.difference(&all) {
                unroute(&mut c.remote, &mut c.remote_groups, node, gone);
            }
            for new in all.difference(known) {
                route(&mut c.remote, &mut c.remote_groups, node, new);
            }
            *known = all;
        }
        for f in add {
            if known.insert(f.clone()) {
                route(&mut c.remote, &mut c.remote_groups, node, f);
            }
        }
        for f in remove {
            if known.remove(f) {
                unroute(&mut c.remote, &mut c.remote_groups, node, f);
            }
        }
    }

    /// `node` left the cluster (its lease expired): its routes are dropped.
    pub fn handle_node_gone(&mut self, node: NodeId) {
        if let Some(c) = self.cluster.as_mut() {
            if let Some(filters) = c.by_node.remove(&node) {
                for f in filters {
                    unroute(&mut c.remote, &mut c.remote_groups, node, &f);
                }
            }
        }
        let now = self.clock;
        self.store.begin_input();
        self.takeover_node_gone(now, node);
        self.moved_node_gone(now, node);
    }

    /// The link to a node acknowledged the batch that carried a publish
    /// with `token` (or the node is gone, or the link dropped it): the
    /// publisher's acknowledgement waits for one target less.
    pub fn handle_cluster_ack(&mut self, now: Instant, token: u64) {
        self.clock = now;
        self.forward_settled(token);
        self.handle_ack(now, token, true, false);
    }

    /// A publish with `token` will not reach its node (the node is gone,
    /// no link can take it): the publisher's acknowledgement waits for it
    /// no more, and counts it as not delivered there (MQTT 5: No matching
    /// subscribers, unless another target took it).
    pub fn handle_cluster_lost(&mut self, now: Instant, token: u64) {
        self.clock = now;
        self.forward_settled(token);
        self.handle_ack(now, token, false, false);
    }
}
