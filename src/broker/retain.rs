//! [`RetainedStore`]: the last retained message per topic. Every shard holds
//! a full replica (updates are broadcast), so a SUBSCRIBE is answered from
//! local memory. Each entry carries a [`RetainVersion`]: replicas (the
//! shards of a node, the nodes of a cluster) apply an update only if it is
//! newer than what they hold, so they converge whatever the order updates
//! arrive in. In a cluster a cleared topic leaves a tombstone (its version,
//! no message) for [`TOMBSTONE_KEEP_MS`], so a node that missed the clear
//! cannot bring the old message back when it rejoins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{Message, NodeId, ShardId};
use crate::topic;

/// How long a cluster keeps a cleared topic's tombstone: a node down for
/// longer than this that still holds the topic's old message brings it
/// back when it rejoins (documented in the README).
pub const TOMBSTONE_KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// The version of a retained update: wall-clock milliseconds when it was
/// made (at least one more than the version it replaced, so a later update
/// on a replica wins even if its clock is behind), then the node and shard
/// that made it (a tie-break, so every replica picks the same winner).
/// Ordered: the greater is newer. Version 0 (the default) is older than
/// anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetainVersion {
    /// Unix milliseconds when the update was made (or a counter above the
    /// replaced version's).
    pub ms: u64,
    /// The node where it was made (0 on a single node).
    pub node: NodeId,
    /// The shard that made it.
    pub shard: ShardId,
}

#[derive(Debug)]
struct Entry {
    /// Empty payload: a tombstone.
    msg: Arc<Message>,
    version: RetainVersion,
}

/// Retained messages by topic name. Lives on every shard (a replica each).
#[derive(Debug, Default)]
pub struct RetainedStore {
    by_topic: HashMap<Box<str>, Entry, crate::hash::FastState>,
    /// Entries with a message (the rest are tombstones).
    live: usize,
    /// Keep a tombstone for a cleared topic (in a cluster).
    tombstones: bool,
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on a cleared topic leaves a tombstone (in a cluster).
    pub fn keep_tombstones(&mut self) {
        self.tombstones = true;
    }

    /// The version a new update of `topic` made now gets: `wall_ms`, or one
    /// more than the version held if that is not older.
    pub fn next_version(
        &self,
        topic: &str,
        wall_ms: u64,
        node: NodeId,
        shard: ShardId,
    ) -> RetainVersion {
        let held = self.by_topic.get(topic).map_or(0, |e| e.version.ms);
        RetainVersion {
            ms: wall_ms.max(held.saturating_add(1)),
            node,
            shard,
        }
    }

    /// Applies an update made at `version`: stores `msg` for its topic, or
    /// deletes the topic's message when the payload is empty
    /// ([MQTT-3.3.1-6], [MQTT-3.3.1-7]). An update not newer than the held
    /// one (message or tombstone) is ignored: returns whether it applied.
    pub fn apply(&mut self, msg: Arc<Message>, version: RetainVersion) -> bool {
        let topic = msg.topic.as_str();
        let was_live = match self.by_topic.get(topic) {
            Some(e) if e.version >= version => return false,
            Some(e) => !e.msg.payload.is_empty(),
            None => false,
        };
        let live = !msg.payload.is_empty();
        if live || self.tombstones {
            self.by_topic.insert(topic.into(), Entry { msg, version });
        } else {
            self.by_topic.remove(topic);
        }
        self.live = self.live + usize::from(live) - usize::from(was_live);
        true
    }

    /// Number of retained messages (tombstones not counted).
    pub fn len(&self) -> usize {
        self.live
    }

    /// `true` if nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every entry with its version, tombstones (empty payloads) included:
    /// what a node sends a peer that rejoins. Expired messages are left
    /// out.
    pub fn snapshot(&self, now: Instant) -> Vec<(Arc<Message>, RetainVersion)> {
        self.by_topic
            .values()
            .filter(|e| !e.msg.is_expired(now))
            .map(|e| (e.msg.clone(), e.version))
            .collect()
    }

    /// Drops the tombstones made before `before_ms` (unix milliseconds);
    /// returns their topics.
    pub fn purge_tombstones(&mut self, before_ms: u64) -> Vec<topic::TopicName> {
        let mut gone = Vec::new();
        self.by_topic.retain(|_, e| {
            let old = e.msg.payload.is_empty() && e.version.ms < before_ms;
            if old {
                gone.push(e.msg.topic.clone());
            }
            !old
        });
        gone
    }

    fn remove_expired(&mut self, topic: &str) {
        if self.by_topic.remove(topic).is_some() {
            self.live -= 1;
        }
    }

    /// Calls `f` for every unexpired retained message whose topic matches
    /// `filter` (the matching part of a filter). Expired ones are removed.
    ///
    /// An exact filter is one lookup; a wildcard filter scans the store,
    /// which is linear in the number of retained messages.
    pub fn for_each_match(&mut self, now: Instant, filter: &str, mut f: impl FnMut(&Arc<Message>)) {
        let wildcard = filter.bytes().any(|b| b == b'+' || b == b'#');
        if !wildcard {
            let expired = match self.by_topic.get(filter) {
                Some(e) if e.msg.payload.is_empty() => false,
                Some(e) if e.msg.is_expired(now) => true,
                Some(e) => {
                    f(&e.msg);
                    false
                }
                None => false,
            };
            if expired {
                self.remove_expired(filter);
            }
            return;
        }
        let mut expired = 0;
        self.by_topic.retain(|topic, e| {
            if e.msg.payload.is_empty() {
                return true;
            }
            if e.msg.is_expired(now) {
                expired += 1;
                return false;
            }
            if topic::matches(filter, topic) {
                f(&e.msg);
            }
            true
        });
        self.live -= expired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{PublishProperties, QoS};
    use crate::topic::TopicName;
    use bytes::Bytes;
    use std::time::Duration;

    fn msg(
        topic: &'static str,
        payload: &'static [u8],
        expires_at: Option<Instant>,
    ) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::from_static(topic).unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at,
            origin: None,
            uid: None,
        })
    }

    fn v(ms: u64, node: u16) -> RetainVersion {
        RetainVersion {
            ms,
            node: NodeId(node),
            shard: ShardId::new(0),
        }
    }

    fn topics(store: &mut RetainedStore, now: Instant, filter: &str) -> Vec<String> {
        let mut out = vec![];
        store.for_each_match(now, filter, |m| out.push(m.topic.to_string()));
        out.sort();
        out
    }

    #[test]
    fn store_replace_delete_and_match() {
        let now = Instant::now();
        let mut s = RetainedStore::new();
        s.apply(msg("a/b", b"1", None), v(1, 0));
        s.apply(msg("a/c", b"2", None), v(1, 0));
        s.apply(msg("$SYS/x", b"3", None), v(1, 0));
        s.apply(msg("a/b", b"4", None), v(2, 0));
        assert_eq!(s.len(), 3);
        assert_eq!(topics(&mut s, now, "a/+"), vec!["a/b", "a/c"]);
        assert_eq!(topics(&mut s, now, "#"), vec!["a/b", "a/c"]);
        assert_eq!(topics(&mut s, now, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(topics(&mut s, now, "a/b"), vec!["a/b"]);
        s.apply(msg("a/b", b"", None), v(3, 0));
        assert_eq!(topics(&mut s, now, "a/+"), vec!["a/c"]);
        assert_eq!(s.len(), 2);
        assert!(s
            .snapshot(now)
            .iter()
            .all(|(m, _)| m.topic.as_str() != "a/b"));
    }

    #[test]
    fn expired_messages_are_not_delivered_and_are_purged() {
        let now = Instant::now();
        let mut s = RetainedStore::new();
        s.apply(msg("a", b"1", Some(now + Duration::from_secs(1))), v(1, 0));
        s.apply(msg("b", b"1", Some(now + Duration::from_secs(1))), v(1, 0));
        assert_eq!(topics(&mut s, now, "a"), vec!["a"]);
        let later = now + Duration::from_secs(2);
        assert!(topics(&mut s, later, "a").is_empty());
        assert!(topics(&mut s, later, "#").is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn an_update_older_than_the_held_one_is_ignored_whatever_the_order() {
        let now = Instant::now();
        let updates = [
            (msg("t", b"old", None), v(10, 1)),
            (msg("t", b"new", None), v(20, 1)),
            (msg("t", b"tie-loser", None), v(20, 0)),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
            let mut s = RetainedStore::new();
            for i in order {
                s.apply(updates[i].0.clone(), updates[i].1);
            }
            let mut got = vec![];
            s.for_each_match(now, "t", |m| got.push(m.payload.clone()));
            assert_eq!(got, vec![Bytes::from_static(b"new")], "order {order:?}");
            assert_eq!(s.len(), 1);
        }
    }

    #[test]
    fn a_tombstone_keeps_a_stale_message_from_coming_back_until_purged() {
        let now = Instant::now();
        let mut s = RetainedStore::new();
        s.keep_tombstones();
        assert!(s.apply(msg("t", b"1", None), v(10, 1)));
        assert!(s.apply(msg("t", b"", None), v(20, 2)));
        assert!(s.is_empty());
        // A node that missed the clear offers its old copy: refused.
        assert!(!s.apply(msg("t", b"1", None), v(10, 1)));
        assert!(topics(&mut s, now, "#").is_empty());
        // The tombstone goes to rejoining peers.
        let snap = s.snapshot(now);
        assert_eq!(snap.len(), 1);
        assert!(snap[0].0.payload.is_empty());
        assert_eq!(snap[0].1, v(20, 2));
        // A new update after the clear wins over it.
        let next = s.next_version("t", 5, NodeId(1), ShardId::new(0));
        assert_eq!(next.ms, 21);
        assert!(s.apply(msg("t", b"2", None), next));
        assert_eq!(s.len(), 1);
        assert!(s.purge_tombstones(u64::MAX).is_empty());
        s.apply(msg("t", b"", None), v(30, 1));
        assert!(s.purge_tombstones(30).is_empty());
        assert_eq!(s.purge_tombstones(31).len(), 1);
        assert!(s.snapshot(now).is_empty());
        // Without tombstones (one node) a clear leaves nothing.
        let mut one = RetainedStore::new();
        one.apply(msg("t", b"1", None), v(1, 0));
        one.apply(msg("t", b"", None), v(2, 0));
        assert!(one.snapshot(now).is_empty());
        assert!(one.is_empty());
    }
}
