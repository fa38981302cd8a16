//! [`GroupTable`]: the shared-subscription groups whose home is this shard —
//! their members, strategy, prefetch windows and the group's own queue — and
//! which member takes each message.
//!
//! Every `$share/{group}/{filter}` has one home shard (a hash of the full
//! filter). Publishing shards send the group's messages there, once per
//! group; the home picks a member by the group's [`Strategy`] among members
//! that are connected and have room in their window (Receive Maximum /
//! `max_inflight`, counted here as dispatched minus completed), and sends
//! the message to the member's shard. Member shards tell the home when a
//! member joins, leaves, connects, disconnects (handing back what it had not
//! finished) and completes a message ([`GroupMsg`]). Pure bookkeeping: no
//! sessions, no time, no I/O.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::Arc;

use crate::broker::{Message, ShardId};
use crate::codec::QoS;
use crate::topic::TopicFilter;
use crate::ClientId;

/// How a group picks the member that takes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// In turn over the members that can take it, across the whole group.
    #[default]
    RoundRobin,
    /// Any member that can take it, at random.
    Random,
    /// One member takes everything until it leaves or disconnects (then
    /// another is chosen): order across the group's messages is kept.
    Sticky,
    /// By the publisher's client id (rendezvous hashing over the connected
    /// members): one publisher's messages go to one member, in order.
    HashClient,
    /// By topic (rendezvous hashing): one topic's messages go to one member.
    HashTopic,
    /// The member with the most free room in its window: a slow member gets
    /// less.
    LeastInflight,
}

impl Strategy {
    /// Every strategy, for documentation and parsing.
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Sticky,
        Strategy::HashClient,
        Strategy::HashTopic,
        Strategy::LeastInflight,
    ];

    /// Its name in the configuration: `round_robin`, `random`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Sticky => "sticky",
            Strategy::HashClient => "hash_client",
            Strategy::HashTopic => "hash_topic",
            Strategy::LeastInflight => "least_inflight",
        }
    }

    /// The strategy named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// In a cluster, which node takes a message of a group with members on
/// several nodes (every node's members are one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcrossNodes {
    /// A member on the publisher's node where the group has one; else the
    /// other nodes' members, picked by the group's strategy.
    #[default]
    LocalFirst,
    /// Every node with members, the publisher's included, picked by the
    /// group's strategy.
    Spread,
}

/// How shared subscriptions behave (`[shared_subscriptions]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// The strategy of a group no rule names.
    pub strategy: Strategy,
    /// `(group-name pattern, strategy)`, first match wins; `*` in a pattern
    /// matches any run of characters.
    pub rules: Vec<(String, Strategy)>,
    /// QoS 1 messages in flight to a member whose connection drops go to
    /// another member at once (MQTT 5 §4.8.2 allows it); otherwise they wait
    /// for the member's session to resume.
    pub redeliver_on_disconnect: bool,
    /// Messages a group holds while no member can take them; more are
    /// dropped and counted.
    pub max_pending: usize,
    /// In a cluster, which node's members take a message.
    pub across_nodes: AcrossNodes,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            rules: Vec::new(),
            redeliver_on_disconnect: true,
            max_pending: 10_000,
            across_nodes: AcrossNodes::LocalFirst,
        }
    }
}

impl SharedConfig {
    /// The strategy of group `group`.
    pub fn strategy_for(&self, group: &str) -> Strategy {
        self.rules
            .iter()
            .find(|(pattern, _)| glob_match(pattern, group))
            .map_or(self.strategy, |(_, s)| *s)
    }
}

/// `pattern` with `*` matching any run of characters (none included).
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return s.is_empty();
    };
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole string.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a member shard tells a group's home shard.
#[derive(Debug, Clone)]
pub enum GroupMsg {
    /// `client` (a session on `shard`) subscribed to the group, or its
    /// session was restored.
    Join {
        /// The full filter, `$share/{group}/{filter}`.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
        /// The member's state.
        state: MemberState,
    },
    /// `client` left the group (unsubscribed, or its session ended).
    Leave {
        /// The full filter.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
    },
    /// `client` connected or disconnected.
    Status {
        /// The full filter.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
        /// The member's state now.
        state: MemberState,
    },
    /// `client` finished `n` of the group's QoS 1/2 messages (acknowledged,
    /// sent at QoS 0, or dropped): room in its window again.
    Credit {
        /// The full filter.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
        /// How many.
        n: u32,
    },
    /// Messages `client` had not finished, handed back to the group (its
    /// connection dropped, or it was gone when they arrived). `true`: the
    /// message had been sent to it (the new member may see a duplicate).
    Return {
        /// The full filter.
        filter: TopicFilter,
        /// The member.
        client: ClientId,
        /// The messages in their order, and whether each was in flight.
        msgs: Vec<(Arc<Message>, bool)>,
    },
}

/// A member as its shard reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState {
    /// The member's shard.
    pub shard: ShardId,
    /// Connected.
    pub online: bool,
    /// Its prefetch window: QoS 1/2 messages it may hold unfinished.
    pub window: u16,
    /// The group's QoS 1/2 messages it holds unfinished now.
    pub outstanding: u32,
    /// Its session outlives the connection and is in the log: with storage,
    /// QoS 1/2 messages nobody can take now go to it (durable) rather than to
    /// the group's in-memory queue.
    pub persistent: bool,
}

/// A message the home sends to a member.
#[derive(Debug, Clone)]
pub(super) struct Dispatch {
    pub(super) filter: TopicFilter,
    pub(super) client: ClientId,
    pub(super) shard: ShardId,
    pub(super) msg: Arc<Message>,
    /// The publisher's acknowledgement waits for the member's shard.
    pub(super) ack: Option<(ShardId, u64)>,
}

/// What became of a message offered to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// Sent to a member (see the [`Dispatch`]).
    Dispatched,
    /// Held in the group's queue.
    Queued,
    /// The group's queue is full, or nobody can take a QoS 0 message.
    Dropped,
    /// No such group here.
    NoGroup,
}

/// One group's counters and state, for metrics and `$SYS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The full filter, `$share/{group}/{filter}`.
    pub filter: TopicFilter,
    /// Its strategy.
    pub strategy: Strategy,
    /// Members.
    pub members: u32,
    /// Connected members.
    pub online: u32,
    /// Messages in the group's queue.
    pub pending: u64,
    /// Messages sent to members.
    pub dispatched: u64,
    /// Messages in flight to a member that left, sent to another (possible
    /// duplicates: at least once).
    pub redelivered: u64,
    /// Messages dropped: the group's queue full, nobody to take QoS 0, the
    /// group gone.
    pub dropped: u64,
    /// `(member, connected, unfinished QoS 1/2 messages)`.
    pub member_inflight: Vec<(ClientId, bool, u32)>,
}

#[derive(Debug)]
struct Member {
    client: ClientId,
    state: MemberState,
}

impl Member {
    fn has_room(&self) -> bool {
        self.state.outstanding < u32::from(self.state.window.max(1))
    }
    fn free(&self) -> u32 {
        u32::from(self.state.window.max(1)).saturating_sub(self.state.outstanding)
    }
}

#[derive(Debug)]
struct Group {
    strategy: Strategy,
    members: Vec<Member>,
    /// Round-robin position.
    next: usize,
    /// The sticky member.
    sticky: Option<ClientId>,
    pending: VecDeque<Arc<Message>>,
    dispatched: u64,
    redelivered: u64,
    dropped: u64,
}

impl Group {
    fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            members: Vec::new(),
            next: 0,
            sticky: None,
            pending: VecDeque::new(),
            dispatched: 0,
            redelivered: 0,
            dropped: 0,
        }
    }

    fn member(&mut self, client: &ClientId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.client == *client)
    }

    /// Whether member `i` can take `msg` now: connected, and for QoS 1/2
    /// with room in its window.
    fn can_take(&self, i: usize, msg: &Message) -> bool {
        let m = &self.members[i];
        m.state.online && (msg.qos == QoS::AtMostOnce || m.has_room())
    }

    /// The member that takes `msg` now, if any (`rng` for `random`).
    fn pick(&mut self, msg: &Message, rng: &mut u64) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        match self.strategy {
            Strategy::RoundRobin => {
                let i = (0..n)
                    .map(|k| (self.next + k) % n)
                    .find(|&i| self.can_take(i, msg))?;
                self.next = i + 1;
                Some(i)
            }
            Strategy::Random => {
                let able: Vec<usize> = (0..n).filter(|&i| self.can_take(i, msg)).collect();
                if able.is_empty() {
                    return None;
                }
                Some(able[(next_random(rng) % able.len() as u64) as usize])
            }
            Strategy::Sticky => {
                let current = self
                    .sticky
                    .as_ref()
                    .and_then(|c| self.members.iter().position(|m| m.client == *c))
                    .filter(|&i| self.members[i].state.online);
                if let Some(i) = current {
                    // Stays with its member: waits while its window is full.
                    return self.can_take(i, msg).then_some(i);
                }
                let i = (0..n)
                    .map(|k| (self.next + k) % n)
                    .find(|&i| self.can_take(i, msg))?;
                self.next = i + 1;
                self.sticky = Some(self.members[i].client.clone());
                Some(i)
            }
            Strategy::HashClient | Strategy::HashTopic => {
                let key = match self.strategy {
                    Strategy::HashClient => msg.origin.as_ref().map_or("", |c| c.as_str()),
                    _ => msg.topic.as_str(),
                };
                // Rendezvous hashing over the connected members: a member
                // joining or leaving moves only its own share of keys.
                let i = (0..n)
                    .filter(|&i| self.members[i].state.online)
                    .max_by_key(|&i| rendezvous(key, self.members[i].client.as_str()))?;
                // The key's member, or wait for it (order per key).
                self.can_take(i, msg).then_some(i)
            }
            Strategy::LeastInflight => {
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.next + k) % n;
                    if !self.can_take(i, msg) {
                        continue;
                    }
                    match best {
                        Some(b) if self.members[i].free() <= self.members[b].free() => {}
                        _ => best = Some(i),
                    }
                }
                let i = best?;
                self.next = i + 1;
                Some(i)
            }
        }
    }

    /// A member to hold a QoS 1/2 message nobody can take now: with
    /// storage, a persistent member (its session queue is in the log, the
    /// group's queue is not), the connected one with the fewest unfinished
    /// first, then the away one with the fewest.
    fn pick_persistent(&mut self) -> Option<usize> {
        let n = self.members.len();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .filter(|&i| self.members[i].state.persistent)
            .min_by_key(|&i| {
                let m = &self.members[i].state;
                (!m.online, m.outstanding)
            })?;
        self.next = i + 1;
        Some(i)
    }

    fn any_online(&self) -> bool {
        self.members.iter().any(|m| m.state.online)
    }
}

/// A 64-bit xorshift step: a cheap, seeded, reproducible choice (not for
/// anything secret).
pub(super) fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// The rendezvous weight of `member` for `key`: stable across processes (a
/// keyed hasher would move keys between members at every restart).
pub(super) fn rendezvous(key: &str, member: &str) -> u64 {
    let mut h = FnvHasher(0xcbf2_9ce4_8422_2325);
    h.write(key.as_bytes());
    h.write_u8(0xff);
    h.write(member.as_bytes());
    // FNV mixes its last bytes poorly: finish with a multiply-xorshift.
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The groups whose home is this shard.
#[derive(Debug)]
pub(super) struct GroupTable {
    groups: HashMap<TopicFilter, Group, crate::hash::FastState>,
    rng: u64,
}

impl Default for GroupTable {
    fn default() -> Self {
        Self::with_seed(0x9e37_79b9_7f4a_7c15)
    }
}

impl GroupTable {
    /// A table whose `random` choices follow `seed`.
    pub(super) fn with_seed(seed: u64) -> Self {
        Self {
            groups: HashMap::default(),
            rng: seed.max(1),
        }
    }

    /// Applies a member shard's report; messages it frees for members go to
    /// `out`. Returns the messages dropped (a group gone with its queue).
    pub(super) fn apply(
        &mut self,
        msg: GroupMsg,
        config: &SharedConfig,
        persistence: bool,
        out: &mut Vec<Dispatch>,
    ) -> u64 {
        let mut dropped = 0;
        let filter = match msg {
            GroupMsg::Join {
                filter,
                client,
                state,
            } => {
                let group = self.groups.entry(filter.clone()).or_insert_with(|| {
                    Group::new(config.strategy_for(filter.share_group().unwrap_or("")))
                });
                match group.member(&client) {
                    Some(m) => m.state = state,
                    None => group.members.push(Member { client, state }),
                }
                filter
            }
            GroupMsg::Leave { filter, client } => {
                let Some(group) = self.groups.get_mut(&filter) else {
                    return 0;
                };
                group.members.retain(|m| m.client != client);
                if group.sticky.as_ref() == Some(&client) {
                    group.sticky = None;
                }
                if group.members.is_empty() {
                    if let Some(g) = self.groups.remove(&filter) {
                        dropped += g.pending.len() as u64;
                    }
                    return dropped;
                }
                filter
            }
            GroupMsg::Status {
                filter,
                client,
                state,
            } => {
                let Some(group) = self.groups.get_mut(&filter) else {
                    return 0;
                };
                if let Some(m) = group.member(&client) {
                    m.state = state;
                }
                if !state.online && group.sticky.as_ref() == Some(&client) {
                    group.sticky = None;
                }
                filter
            }
            GroupMsg::Credit { filter, client, n } => {
                let Some(group) = self.groups.get_mut(&filter) else {
                    return 0;
                };
                if let Some(m) = group.member(&client) {
                    m.state.outstanding = m.state.outstanding.saturating_sub(n);
                }
                filter
            }
            GroupMsg::Return {
                filter,
                client: _,
                msgs,
            } => {
                let Some(group) = self.groups.get_mut(&filter) else {
                    return msgs.len() as u64;
                };
                // Ahead of what is waiting: they were older.
                for (m, inflight) in msgs.into_iter().rev() {
                    group.redelivered += u64::from(inflight);
                    group.pending.push_front(m);
                }
                filter
            }
        };
        self.drain(&filter, persistence, out);
        dropped
    }

    /// Offers a message published to group `filter` (`ack`: the
    /// publisher's acknowledgement waits for the member that takes it).
    pub(super) fn offer(
        &mut self,
        filter: &TopicFilter,
        msg: Arc<Message>,
        ack: Option<(ShardId, u64)>,
        config: &SharedConfig,
        persistence: bool,
        out: &mut Vec<Dispatch>,
    ) -> Offer {
        let Some(group) = self.groups.get_mut(filter) else {
            return Offer::NoGroup;
        };
        if group.pending.is_empty() {
            if let Some(i) = group.pick(&msg, &mut self.rng) {
                out.push(dispatch(group, i, filter, msg, ack));
                return Offer::Dispatched;
            }
        }
        let online = group.any_online();
        if msg.qos == QoS::AtMostOnce && !online {
            // QoS 0 is not kept for absent clients.
            group.dropped += 1;
            return Offer::Dropped;
        }
        if persistence && msg.qos != QoS::AtMostOnce {
            // An acknowledged message is never held only in memory.
            if let Some(i) = group.pick_persistent() {
                out.push(dispatch(group, i, filter, msg, ack));
                return Offer::Dispatched;
            }
        }
        if group.pending.len() >= config.max_pending {
            group.dropped += 1;
            return Offer::Dropped;
        }
        group.pending.push_back(msg);
        self.drain(filter, persistence, out);
        Offer::Queued
    }

    /// Sends what the group holds to members while they can take it.
    fn drain(&mut self, filter: &TopicFilter, persistence: bool, out: &mut Vec<Dispatch>) {
        let Some(group) = self.groups.get_mut(filter) else {
            return;
        };
        while let Some(msg) = group.pending.front().cloned() {
            let i = match group.pick(&msg, &mut self.rng) {
                Some(i) => i,
                None if persistence && msg.qos != QoS::AtMostOnce => {
                    match group.pick_persistent() {
                        Some(i) => i,
                        None => break,
                    }
                }
                None => break,
            };
            group.pending.pop_front();
            out.push(dispatch(group, i, filter, msg, None));
        }
    }

    /// Re-reads the strategies after a configuration change.
    pub(super) fn reconfigure(&mut self, config: &SharedConfig) {
        for (filter, g) in self.groups.iter_mut() {
            let s = config.strategy_for(filter.share_group().unwrap_or(""));
            if s != g.strategy {
                g.strategy = s;
                g.sticky = None;
            }
        }
    }

    /// Whether group `filter` has a member online on this node.
    pub(super) fn has_online(&self, filter: &TopicFilter) -> bool {
        self.groups.get(filter).is_some_and(Group::any_online)
    }

    /// Counts `n` messages of group `filter` redelivered elsewhere.
    pub(super) fn note_redelivered(&mut self, filter: &TopicFilter, n: u64) {
        if let Some(g) = self.groups.get_mut(filter) {
            g.redelivered += n;
        }
    }

    /// Every group's state.
    pub(super) fn info(&self) -> Vec<GroupInfo> {
        let mut v: Vec<GroupInfo> = self
            .groups
            .iter()
            .map(|(filter, g)| GroupInfo {
                filter: filter.clone(),
                strategy: g.strategy,
                members: g.members.len() as u32,
                online: g.members.iter().filter(|m| m.state.online).count() as u32,
                pending: g.pending.len() as u64,
                dispatched: g.dispatched,
                redelivered: g.redelivered,
                dropped: g.dropped,
                member_inflight: g
                    .members
                    .iter()
                    .map(|m| (m.client.clone(), m.state.online, m.state.outstanding))
                    .collect(),
            })
            .collect();
        v.sort_by(|a, b| a.filter.cmp(&b.filter));
        v
    }

    /// Messages held in group queues.
    #[cfg(test)]
    pub(super) fn pending(&self, filter: &TopicFilter) -> usize {
        self.groups.get(filter).map_or(0, |g| g.pending.len())
    }
}

fn dispatch(
    group: &mut Group,
    i: usize,
    filter: &TopicFilter,
    msg: Arc<Message>,
    ack: Option<(ShardId, u64)>,
) -> Dispatch {
    let m = &mut group.members[i];
    if msg.qos != QoS::AtMostOnce {
        m.state.outstanding += 1;
    }
    group.dispatched += 1;
    Dispatch {
        filter: filter.clone(),
        client: m.client.clone(),
        shard: m.state.shard,
        msg,
        ack,
    }
}

/// A hash of the full filter: the group's home shard (every shard computes
/// the same).
pub(super) fn group_home(filter: &TopicFilter, shards: usize) -> ShardId {
    crate::broker::home_shard(filter.as_str(), shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::codec::PublishProperties;
    use crate::topic::TopicName;
    use crate::ByteStr;

    fn filter(s: &'static str) -> TopicFilter {
        TopicFilter::from_static(s).unwrap()
    }
    fn cid(s: &str) -> ClientId {
        ClientId::new(ByteStr::from(s.to_string()))
    }
    fn msg(qos: QoS, topic: &'static str, from: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::from_static(topic).unwrap(),
            payload: Bytes::new(),
            qos,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: Some(cid(from)),
            uid: None,
        })
    }
    fn state(online: bool, window: u16) -> MemberState {
        MemberState {
            shard: ShardId::new(0),
            online,
            window,
            outstanding: 0,
            persistent: false,
        }
    }

    struct T {
        table: GroupTable,
        config: SharedConfig,
        f: TopicFilter,
        out: Vec<Dispatch>,
    }

    impl T {
        fn new(strategy: Strategy, members: &[(&str, bool, u16)]) -> Self {
            let mut t = T {
                table: GroupTable::with_seed(7),
                config: SharedConfig {
                    strategy,
                    ..SharedConfig::default()
                },
                f: filter("$share/g/jobs/#"),
                out: Vec::new(),
            };
            for &(c, online, window) in members {
                t.apply(GroupMsg::Join {
                    filter: t.f.clone(),
                    client: cid(c),
                    state: state(online, window),
                });
            }
            t
        }
        fn apply(&mut self, m: GroupMsg) -> Vec<String> {
            self.table.apply(m, &self.config, false, &mut self.out);
            self.take()
        }
        fn offer(&mut self, m: Arc<Message>) -> (Offer, Vec<String>) {
            let o = self
                .table
                .offer(&self.f, m, None, &self.config, false, &mut self.out);
            (o, self.take())
        }
        fn take(&mut self) -> Vec<String> {
            self.out
                .drain(..)
                .map(|d| d.client.as_str().to_string())
                .collect()
        }
        fn credit(&mut self, c: &str) -> Vec<String> {
            self.apply(GroupMsg::Credit {
                filter: self.f.clone(),
                client: cid(c),
                n: 1,
            })
        }
        fn status(&mut self, c: &str, online: bool, outstanding: u32) -> Vec<String> {
            let mut s = state(online, 10);
            s.outstanding = outstanding;
            self.apply(GroupMsg::Status {
                filter: self.f.clone(),
                client: cid(c),
                state: s,
            })
        }
        fn picks(&mut self, n: usize, qos: QoS) -> Vec<String> {
            (0..n)
                .flat_map(|_| self.offer(msg(qos, "jobs/1", "p")).1)
                .collect()
        }
    }

    #[test]
    fn strategy_names_round_trip_and_rules_match_group_names() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("fastest"), None);
        let c = SharedConfig {
            strategy: Strategy::Random,
            rules: vec![
                ("jobs-*".into(), Strategy::LeastInflight),
                ("*-ordered".into(), Strategy::Sticky),
                ("exact".into(), Strategy::HashTopic),
            ],
            ..SharedConfig::default()
        };
        assert_eq!(c.strategy_for("jobs-eu"), Strategy::LeastInflight);
        assert_eq!(c.strategy_for("jobs-"), Strategy::LeastInflight);
        assert_eq!(c.strategy_for("billing-ordered"), Strategy::Sticky);
        assert_eq!(c.strategy_for("exact"), Strategy::HashTopic);
        assert_eq!(c.strategy_for("exactly"), Strategy::Random);
        assert_eq!(c.strategy_for("other"), Strategy::Random);
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn round_robin_spans_the_whole_group_and_skips_offline_members() {
        let mut t = T::new(
            Strategy::RoundRobin,
            &[("a", true, 100), ("b", false, 100), ("c", true, 100)],
        );
        assert_eq!(t.picks(4, QoS::AtLeastOnce), ["a", "c", "a", "c"]);
        t.status("b", true, 0);
        assert_eq!(t.picks(3, QoS::AtLeastOnce), ["a", "b", "c"]);
    }

    #[test]
    fn a_full_window_holds_messages_in_the_group_until_credit_returns() {
        let mut t = T::new(Strategy::RoundRobin, &[("a", true, 2), ("b", true, 1)]);
        assert_eq!(t.picks(3, QoS::AtLeastOnce), ["a", "b", "a"]);
        // Everyone is full: the group holds the next ones, in order.
        assert_eq!(
            t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p")).0,
            Offer::Queued
        );
        assert_eq!(
            t.offer(msg(QoS::AtLeastOnce, "jobs/2", "p")).0,
            Offer::Queued
        );
        assert_eq!(t.table.pending(&t.f), 2);
        // QoS 0 needs no window slot, but waits behind the queued ones.
        assert_eq!(
            t.offer(msg(QoS::AtMostOnce, "jobs/3", "p")).0,
            Offer::Queued
        );
        assert_eq!(t.credit("b"), ["b"]);
        // a takes jobs/2; the QoS 0 needs no room and follows at once,
        // to the next in turn.
        assert_eq!(t.credit("a"), ["a", "b"]);
        assert_eq!(t.table.pending(&t.f), 0);
    }

    #[test]
    fn nobody_online_queues_once_per_group_and_the_first_back_gets_it() {
        let mut t = T::new(Strategy::RoundRobin, &[("a", false, 10), ("b", false, 10)]);
        for _ in 0..3 {
            assert_eq!(
                t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p")).0,
                Offer::Queued
            );
        }
        assert_eq!(
            t.offer(msg(QoS::AtMostOnce, "jobs/1", "p")).0,
            Offer::Dropped,
            "QoS 0 is not kept for absent members"
        );
        assert_eq!(t.status("b", true, 0), ["b", "b", "b"]);
        let info = &t.table.info()[0];
        assert_eq!((info.pending, info.dropped, info.dispatched), (0, 1, 3));
    }

    #[test]
    fn the_group_queue_is_bounded_and_counts_drops() {
        let mut t = T::new(Strategy::RoundRobin, &[("a", false, 10)]);
        t.config.max_pending = 2;
        let offers: Vec<Offer> = (0..4)
            .map(|_| t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p")).0)
            .collect();
        assert_eq!(
            offers,
            [Offer::Queued, Offer::Queued, Offer::Dropped, Offer::Dropped]
        );
        assert_eq!(t.table.info()[0].dropped, 2);
    }

    #[test]
    fn with_storage_a_persistent_member_holds_what_nobody_connected_can_take() {
        let mut table = GroupTable::default();
        let config = SharedConfig::default();
        let f = filter("$share/g/x");
        let mut out = Vec::new();
        let mut st = state(false, 10);
        st.persistent = true;
        table.apply(
            GroupMsg::Join {
                filter: f.clone(),
                client: cid("durable"),
                state: st,
            },
            &config,
            true,
            &mut out,
        );
        let o = table.offer(
            &f,
            msg(QoS::AtLeastOnce, "x", "p"),
            None,
            &config,
            true,
            &mut out,
        );
        assert_eq!(o, Offer::Dispatched);
        assert_eq!(out[0].client.as_str(), "durable");
    }

    #[test]
    fn returned_messages_go_first_to_another_member_and_count_as_redelivered() {
        let mut t = T::new(Strategy::RoundRobin, &[("a", true, 1), ("b", true, 1)]);
        let m1 = msg(QoS::AtLeastOnce, "jobs/1", "p");
        assert_eq!(t.offer(m1.clone()).1, ["a"]);
        assert_eq!(t.offer(msg(QoS::AtLeastOnce, "jobs/2", "p")).1, ["b"]);
        assert_eq!(
            t.offer(msg(QoS::AtLeastOnce, "jobs/3", "p")).0,
            Offer::Queued
        );
        // a drops: offline first, then what it held comes back.
        assert!(t.status("a", false, 0).is_empty());
        let out = t.apply(GroupMsg::Return {
            filter: t.f.clone(),
            client: cid("a"),
            msgs: vec![(m1, true)],
        });
        assert!(out.is_empty(), "b's window is full");
        assert_eq!(t.credit("b"), ["b"]);
        let info = &t.table.info()[0];
        assert_eq!((info.redelivered, info.pending), (1, 1));
        assert_eq!(t.credit("b"), ["b"], "then jobs/3");
    }

    #[test]
    fn sticky_stays_with_its_member_until_it_leaves() {
        let mut t = T::new(
            Strategy::Sticky,
            &[("a", true, 1), ("b", true, 10), ("c", true, 10)],
        );
        assert_eq!(t.picks(1, QoS::AtLeastOnce), ["a"]);
        // a's window is full: the next one waits for a, it does not move.
        assert_eq!(
            t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p")).0,
            Offer::Queued
        );
        assert_eq!(t.credit("a"), ["a"]);
        t.status("a", false, 0);
        let picks = t.picks(3, QoS::AtLeastOnce);
        assert!(picks.iter().all(|p| *p == picks[0]) && picks[0] != "a");
        t.apply(GroupMsg::Leave {
            filter: t.f.clone(),
            client: cid(&picks[0]),
        });
        let next = t.picks(2, QoS::AtLeastOnce);
        assert!(next[0] == next[1] && next[0] != picks[0]);
    }

    #[test]
    fn hash_strategies_keep_a_key_on_one_member_and_move_few_keys() {
        for strategy in [Strategy::HashClient, Strategy::HashTopic] {
            let mut t = T::new(
                strategy,
                &[
                    ("a", true, 1000),
                    ("b", true, 1000),
                    ("c", true, 1000),
                    ("d", true, 1000),
                ],
            );
            let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
            let pick = |t: &mut T, k: &str| {
                let m = match strategy {
                    Strategy::HashClient => msg(QoS::AtMostOnce, "jobs/1", k),
                    _ => {
                        let topic: &'static str = Box::leak(format!("jobs/{k}").into_boxed_str());
                        msg(QoS::AtMostOnce, topic, "p")
                    }
                };
                t.offer(m).1.remove(0)
            };
            let before: Vec<String> = keys.iter().map(|k| pick(&mut t, k)).collect();
            let again: Vec<String> = keys.iter().map(|k| pick(&mut t, k)).collect();
            assert_eq!(before, again, "{strategy:?}: one key, one member");
            let used: std::collections::HashSet<&String> = before.iter().collect();
            assert_eq!(used.len(), 4, "{strategy:?}: keys spread over all members");
            t.status("d", false, 0);
            let after: Vec<String> = keys.iter().map(|k| pick(&mut t, k)).collect();
            for (b, a) in before.iter().zip(&after) {
                if b != "d" {
                    assert_eq!(a, b, "{strategy:?}: only d's keys move");
                } else {
                    assert_ne!(a, "d");
                }
            }
        }
    }

    #[test]
    fn least_inflight_favours_the_member_with_most_room() {
        let mut t = T::new(
            Strategy::LeastInflight,
            &[("fast", true, 10), ("slow", true, 10)],
        );
        // Only `fast` acknowledges: `slow` fills up and gets ever less.
        let mut got = std::collections::HashMap::<String, u32>::new();
        for _ in 0..100 {
            for c in t.picks(1, QoS::AtLeastOnce) {
                *got.entry(c.clone()).or_default() += 1;
                if c == "fast" {
                    t.credit("fast");
                }
            }
        }
        assert_eq!(got["slow"], 1, "{got:?}");
        assert_eq!(got["fast"], 99);
    }

    #[test]
    fn random_uses_only_members_that_can_take_it_and_reaches_all() {
        let mut t = T::new(
            Strategy::Random,
            &[
                ("a", true, 1000),
                ("b", false, 1000),
                ("c", true, 1000),
                ("d", true, 1000),
            ],
        );
        let picks = t.picks(300, QoS::AtLeastOnce);
        let mut count = std::collections::HashMap::<&str, u32>::new();
        for p in &picks {
            *count.entry(p.as_str()).or_default() += 1;
        }
        assert!(!count.contains_key("b"));
        for m in ["a", "c", "d"] {
            assert!(count[m] > 50, "{count:?}");
        }
    }

    #[test]
    fn the_last_member_leaving_drops_the_group_and_its_queue() {
        let mut t = T::new(Strategy::RoundRobin, &[("a", false, 10)]);
        t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p"));
        let dropped = t.table.apply(
            GroupMsg::Leave {
                filter: t.f.clone(),
                client: cid("a"),
            },
            &t.config,
            false,
            &mut t.out,
        );
        assert_eq!(dropped, 1);
        assert!(t.table.info().is_empty());
        assert_eq!(
            t.offer(msg(QoS::AtLeastOnce, "jobs/1", "p")).0,
            Offer::NoGroup
        );
    }
}
