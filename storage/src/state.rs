//! Recovered state: [`ShardState`] (everything of one shard column family,
//! joined), message reference counts ([`MessageRefs`]), purge of expired
//! sessions and messages, and resharding ([`plan_reshard`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use vmqtt::broker::{home_shard, RetainVersion, ShardId};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ClientId, PacketId};

use crate::error::Result;
use crate::record::{
    DeliveryState, MessageId, QueueEntry, Record, RecordKey, SessionRecord, StoredMessage,
    SubscriptionRecord, WriteBatch,
};

/// A queue entry joined with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The entry (its `message` field is the id of `message`).
    pub entry: QueueEntry,
    /// The stored message, shared by every entry that refers to it.
    pub message: Arc<StoredMessage>,
}

/// Everything stored for one client identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    /// The session.
    pub session: SessionRecord,
    /// Subscriptions by full filter.
    pub subscriptions: BTreeMap<TopicFilter, SubscriptionRecord>,
    /// Queued and in-flight messages by sequence number, in queue order
    /// (in-flight ones first, as they were sent first).
    pub queue: BTreeMap<u64, QueuedMessage>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: BTreeSet<PacketId>,
}

impl ClientState {
    /// A session with nothing else.
    pub fn new(session: SessionRecord) -> Self {
        Self {
            session,
            subscriptions: BTreeMap::new(),
            queue: BTreeMap::new(),
            inbound_qos2: BTreeSet::new(),
        }
    }

    /// The sequence number for the next queue entry (1 for an empty queue).
    pub fn next_seq(&self) -> u64 {
        self.queue.keys().next_back().map_or(1, |s| s + 1)
    }
}

/// Everything of one shard column family, joined: what the shard needs to
/// rebuild its sessions at start.
///
/// Lives on the storage thread that loaded it until handed to its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    /// The shard.
    pub shard: ShardId,
    /// Sessions by client identifier, each with its subscriptions, queue and
    /// inbound QoS 2 ids.
    pub clients: BTreeMap<ClientId, ClientState>,
    /// The messages referred to by queue entries (each stored once).
    pub messages: BTreeMap<MessageId, Arc<StoredMessage>>,
    /// The retained messages this shard is home for
    /// ([`retained_home`]). Every shard keeps a full replica in memory: the
    /// broker gives each shard the union of all shards' `retained`.
    pub retained: BTreeMap<TopicName, (Arc<StoredMessage>, RetainVersion)>,
    /// Deletes for messages that no queue entry refers to: the
    /// garbage-collection rule applied at load (a message goes when its last
    /// queue entry goes). [`crate::recover`] writes them.
    pub garbage: WriteBatch,
    /// Records left out of this state because what they refer to is
    /// missing: a queue entry whose message is gone, a subscription, queue
    /// entry or inbound id of a client without a session. They stay on disk
    /// until the caller deletes them (or a reshard rewrites the shard).
    pub dangling: Vec<RecordKey>,
}

impl ShardState {
    /// An empty state.
    pub fn new(shard: ShardId) -> Self {
        Self {
            shard,
            clients: BTreeMap::new(),
            messages: BTreeMap::new(),
            retained: BTreeMap::new(),
            garbage: WriteBatch::new(),
            dangling: Vec::new(),
        }
    }

    /// Joins records read from shard `shard` (in any order).
    pub fn from_records(
        shard: ShardId,
        records: impl IntoIterator<Item = Result<Record>>,
    ) -> Result<Self> {
        let mut st = Self::new(shard);
        let mut subs = Vec::new();
        let mut queue = Vec::new();
        let mut inbound = Vec::new();
        for rec in records {
            match rec? {
                Record::Session { client_id, session } => {
                    st.clients.insert(client_id, ClientState::new(session));
                }
                Record::Subscription {
                    client_id,
                    filter,
                    subscription,
                } => subs.push((client_id, filter, subscription)),
                Record::Message { id, message } => {
                    st.messages.insert(id, message);
                }
                Record::QueueEntry {
                    client_id,
                    seq,
                    entry,
                } => queue.push((client_id, seq, entry)),
                Record::InboundQos2 {
                    client_id,
                    packet_id,
                } => inbound.push((client_id, packet_id)),
                Record::Retained { message, version } => {
                    st.retained
                        .insert(message.topic.clone(), (message, version));
                }
            }
        }
        for (client_id, filter, sub) in subs {
            match st.clients.get_mut(&client_id) {
                Some(c) => {
                    c.subscriptions.insert(filter, sub);
                }
                None => st.dangling.push(RecordKey::Subscription(client_id, filter)),
            }
        }
        let mut referenced = BTreeSet::new();
        for (client_id, seq, entry) in queue {
            let message = st.messages.get(&entry.message).cloned();
            match (st.clients.get_mut(&client_id), message) {
                (Some(c), Some(message)) => {
                    referenced.insert(entry.message);
                    c.queue.insert(seq, QueuedMessage { entry, message });
                }
                _ => st.dangling.push(RecordKey::QueueEntry(client_id, seq)),
            }
        }
        for (client_id, packet_id) in inbound {
            match st.clients.get_mut(&client_id) {
                Some(c) => {
                    c.inbound_qos2.insert(packet_id);
                }
                None => st
                    .dangling
                    .push(RecordKey::InboundQos2(client_id, packet_id)),
            }
        }
        let unreferenced: Vec<MessageId> = st
            .messages
            .keys()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        for id in unreferenced {
            st.messages.remove(&id);
            st.garbage.delete_message(id);
        }
        Ok(st)
    }

    /// The id for the next message stored in this shard: one past the
    /// highest stored (ids of messages deleted before a restart may be
    /// reused; nothing refers to them any more).
    pub fn next_message_id(&self) -> MessageId {
        self.messages
            .keys()
            .next_back()
            .map_or(MessageId(1), |id| id.next())
    }

    /// Reference counts of the messages, from the queue entries.
    pub fn message_refs(&self) -> MessageRefs {
        let mut refs = MessageRefs::new();
        for c in self.clients.values() {
            for q in c.queue.values() {
                refs.retain(q.entry.message);
            }
        }
        refs
    }

    /// Every record of this state, in the order a scan returns them.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let sessions = self.clients.iter().map(|(c, s)| Record::Session {
            client_id: c.clone(),
            session: s.session.clone(),
        });
        let subs = self.clients.iter().flat_map(|(c, s)| {
            s.subscriptions
                .iter()
                .map(move |(f, sub)| Record::Subscription {
                    client_id: c.clone(),
                    filter: f.clone(),
                    subscription: *sub,
                })
        });
        let messages = self.messages.iter().map(|(id, m)| Record::Message {
            id: *id,
            message: m.clone(),
        });
        let queue = self.clients.iter().flat_map(|(c, s)| {
            s.queue.iter().map(move |(seq, q)| Record::QueueEntry {
                client_id: c.clone(),
                seq: *seq,
                entry: q.entry.clone(),
            })
        });
        let inbound = self.clients.iter().flat_map(|(c, s)| {
            s.inbound_qos2.iter().map(move |p| Record::InboundQos2 {
                client_id: c.clone(),
                packet_id: *p,
            })
        });
        let retained = self.retained.values().map(|(m, version)| Record::Retained {
            message: m.clone(),
            version: *version,
        });
        sessions
            .chain(subs)
            .chain(messages)
            .chain(queue)
            .chain(inbound)
            .chain(retained)
    }

    /// A batch that stores every record of this state.
    pub fn to_batch(&self) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.extend(self.records().map(crate::record::Op::Put));
        b
    }

    /// Removes what has expired at `now_ms` and returns it with the batch
    /// that deletes it:
    ///
    /// - sessions whose expiry passed (disconnected at + interval; a session
    ///   recorded as connected never expires here), with everything of them;
    /// - queue entries still `Queued` whose message expired (an entry in
    ///   flight is kept: its delivery started, [MQTT-3.3.2-5]);
    /// - retained messages that expired;
    /// - messages left without a queue entry.
    ///
    /// The caller publishes the wills of the returned sessions if it has not.
    pub fn purge_expired(&mut self, now_ms: u64) -> Purged {
        let mut out = Purged::default();
        let mut refs = self.message_refs();
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.is_expired(now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(c) = self.clients.remove(&id) {
                for q in c.queue.values() {
                    out.queue_entries += 1;
                    if refs.release(q.entry.message) {
                        self.messages.remove(&q.entry.message);
                        out.batch.delete_message(q.entry.message);
                        out.messages += 1;
                    }
                }
                out.batch.delete_client(id.clone());
                out.sessions.push((id, c.session));
            }
        }
        for (id, c) in &mut self.clients {
            let gone: Vec<u64> = c
                .queue
                .iter()
                .filter(|(_, q)| {
                    q.entry.state == DeliveryState::Queued && q.message.is_expired(now_ms)
                })
                .map(|(s, _)| *s)
                .collect();
            for seq in gone {
                if let Some(q) = c.queue.remove(&seq) {
                    out.queue_entries += 1;
                    out.batch.delete_queue_entry(id.clone(), seq);
                    if refs.release(q.entry.message) {
                        self.messages.remove(&q.entry.message);
                        out.batch.delete_message(q.entry.message);
                        out.messages += 1;
                    }
                }
            }
        }
        let gone: Vec<TopicName> = self
            .retained
            .iter()
            .filter(|(_, (m, _))| m.is_expired(now_ms))
            .map(|(t, _)| t.clone())
            .collect();
        for t in gone {
            self.retained.remove(&t);
            out.batch.delete_retained(t);
            out.retained += 1;
        }
        out
    }

    /// Number of stored records this state holds.
    pub fn record_count(&self) -> usize {
        self.clients
            .values()
            .map(|c| 1 + c.subscriptions.len() + c.queue.len() + c.inbound_qos2.len())
            .sum::<usize>()
            + self.messages.len()
            + self.retained.len()
    }
}

/// What [`ShardState::purge_expired`] removed.
#[derive(Debug, Default)]
pub struct Purged {
    /// Expired sessions (their wills are due if not yet published).
    pub sessions: Vec<(ClientId, SessionRecord)>,
    /// Queue entries removed (of expired sessions or expired messages).
    pub queue_entries: usize,
    /// Messages deleted because no queue entry refers to them any more.
    pub messages: usize,
    /// Retained messages that expired.
    pub retained: usize,
    /// The deletes to write to the shard.
    pub batch: WriteBatch,
}

/// Reference counts of a shard's stored messages: the number of queue
/// entries referring to each. Kept in memory by the shard at runtime
/// (rebuilt at load by [`ShardState::message_refs`]); never stored.
///
/// The rule: a message is written in the batch that adds its first queue
/// entry and deleted in the batch that removes its last one
/// ([`WriteBatch::enqueue`], [`WriteBatch::dequeue`]). A message that a
/// crash left without entries is collected at load ([`ShardState::garbage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRefs {
    counts: HashMap<MessageId, u32>,
}

impl MessageRefs {
    /// No references.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a reference; `true` if it is the first (store the message).
    pub fn retain(&mut self, id: MessageId) -> bool {
        let n = self.counts.entry(id).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Drops a reference; `true` if it was the last (delete the message).
    /// Releasing an unknown id returns `false`.
    pub fn release(&mut self, id: MessageId) -> bool {
        match self.counts.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(&id);
                true
            }
            None => false,
        }
    }

    /// References to `id`.
    pub fn count(&self, id: MessageId) -> u32 {
        self.counts.get(&id).copied().unwrap_or(0)
    }

    /// Number of messages referenced.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// `true` if no message is referenced.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

impl WriteBatch {
    /// Adds a queue entry for `message` (id `entry.message`), storing the
    /// message too if this is its first reference.
    pub fn enqueue(
        &mut self,
        refs: &mut MessageRefs,
        client_id: ClientId,
        seq: u64,
        entry: QueueEntry,
        message: &Arc<StoredMessage>,
    ) -> &mut Self {
        if refs.retain(entry.message) {
            self.put_message(entry.message, message.clone());
        }
        self.put_queue_entry(client_id, seq, entry)
    }

    /// Removes a queue entry referring to `message`, deleting the message
    /// too if this was its last reference.
    pub fn dequeue(
        &mut self,
        refs: &mut MessageRefs,
        client_id: ClientId,
        seq: u64,
        message: MessageId,
    ) -> &mut Self {
        self.delete_queue_entry(client_id, seq);
        if refs.release(message) {
            self.delete_message(message);
        }
        self
    }
}

/// The shard that persists the retained message of `topic` among `shards`
/// shards: the same stable hash as [`home_shard`] for client ids.
pub fn retained_home(topic: &str, shards: usize) -> ShardId {
    home_shard(topic, shards)
}

/// How to move stored state to a different number of shards: the complete
/// new contents of every new shard. Applied by
/// [`crate::Storage::apply_reshard`].
#[derive(Debug, Clone)]
pub struct ReshardPlan {
    /// The shard column families the plan was computed from.
    pub old_shards: Vec<ShardId>,
    /// The new shard states, `states[i]` for shard `i`.
    pub states: Vec<ShardState>,
    /// Old shard column families to drop after the new contents are
    /// written (those numbered `>= states.len()`).
    pub drop: Vec<ShardId>,
}

impl ReshardPlan {
    /// The new shard count.
    pub fn new_shards(&self) -> usize {
        self.states.len()
    }
}

/// Re-homes every session (by [`home_shard`] of its client id) and every
/// retained message (by [`retained_home`] of its topic) of `old` into
/// `new_shards` shards. Messages are copied into each new shard that has
/// a queue entry referring to them, once per shard (copies with the same
/// content, which old shards each held, become one), with new ids.
/// Dangling records and unreferenced messages of `old` are left behind.
pub fn plan_reshard(old: impl IntoIterator<Item = ShardState>, new_shards: usize) -> ReshardPlan {
    let new_shards = new_shards.clamp(1, usize::from(u16::MAX));
    let mut states: Vec<ShardState> = (0..new_shards)
        .map(|i| ShardState::new(ShardId::new(i as u16)))
        .collect();
    // (old shard, old id) -> new id, per new shard.
    let mut remap: Vec<HashMap<(ShardId, MessageId), MessageId>> =
        (0..new_shards).map(|_| HashMap::new()).collect();
    // Encoded message -> new id, per new shard: copies of one message that
    // several old shards held become one again.
    let mut by_content: Vec<HashMap<Vec<u8>, MessageId>> =
        (0..new_shards).map(|_| HashMap::new()).collect();
    let mut next_id: Vec<MessageId> = vec![MessageId(1); new_shards];
    let mut old_shards = Vec::new();
    let mut old_states: Vec<ShardState> = old.into_iter().collect();
    old_states.sort_by_key(|s| s.shard);
    for old in old_states {
        old_shards.push(old.shard);
        for (client_id, mut client) in old.clients {
            let to = home_shard(client_id.as_str(), new_shards).get();
            let queue = std::mem::take(&mut client.queue);
            for (seq, mut q) in queue {
                let id = match remap[to].get(&(old.shard, q.entry.message)) {
                    Some(id) => *id,
                    None => {
                        let mut content = Vec::new();
                        // A message that cannot be encoded is not merged
                        // (and writing the plan will report the error).
                        let content = crate::codec::encode_message(&q.message, &mut content)
                            .is_ok()
                            .then_some(content);
                        let known = content
                            .as_ref()
                            .and_then(|c| by_content[to].get(c).copied());
                        let id = known.unwrap_or_else(|| {
                            let id = next_id[to];
                            next_id[to] = id.next();
                            states[to].messages.insert(id, q.message.clone());
                            if let Some(c) = content {
                                by_content[to].insert(c, id);
                            }
                            id
                        });
                        remap[to].insert((old.shard, q.entry.message), id);
                        id
                    }
                };
                // Entries share the new shard's copy.
                if let Some(m) = states[to].messages.get(&id) {
                    q.message = m.clone();
                }
                q.entry.message = id;
                client.queue.insert(seq, q);
            }
            states[to].clients.insert(client_id, client);
        }
        for (topic, message) in old.retained {
            let to = retained_home(topic.as_str(), new_shards).get();
            states[to].retained.insert(topic, message);
        }
    }
    let drop = old_shards
        .iter()
        .copied()
        .filter(|s| s.get() >= new_shards)
        .collect();
    ReshardPlan {
        old_shards,
        states,
        drop,
    }
}

#[cfg(test)]
mod tests;
