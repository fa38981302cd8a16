//! [`RetainedStore`]: the last retained message per topic. Every shard holds
//! a full replica (updates are broadcast), so a SUBSCRIBE is answered from
//! local memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::Message;
use crate::topic;

/// Retained messages by topic name. Lives on every shard (a replica each).
#[derive(Debug, Default)]
pub struct RetainedStore {
    by_topic: HashMap<Box<str>, Arc<Message>, crate::hash::FastState>,
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `msg` for its topic, or deletes the topic's message when the
    /// payload is empty ([MQTT-3.3.1-6], [MQTT-3.3.1-7]).
    pub fn apply(&mut self, msg: Arc<Message>) {
        if msg.payload.is_empty() {
            self.by_topic.remove(msg.topic.as_str());
        } else {
            self.by_topic.insert(msg.topic.as_str().into(), msg);
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// `true` if nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
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
                Some(m) if m.is_expired(now) => true,
                Some(m) => {
                    f(m);
                    false
                }
                None => false,
            };
            if expired {
                self.by_topic.remove(filter);
            }
            return;
        }
        self.by_topic.retain(|topic, m| {
            if m.is_expired(now) {
                return false;
            }
            if topic::matches(filter, topic) {
                f(m);
            }
            true
        });
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
        })
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
        s.apply(msg("a/b", b"1", None));
        s.apply(msg("a/c", b"2", None));
        s.apply(msg("$SYS/x", b"3", None));
        s.apply(msg("a/b", b"4", None));
        assert_eq!(s.len(), 3);
        assert_eq!(topics(&mut s, now, "a/+"), vec!["a/b", "a/c"]);
        assert_eq!(topics(&mut s, now, "#"), vec!["a/b", "a/c"]);
        assert_eq!(topics(&mut s, now, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(topics(&mut s, now, "a/b"), vec!["a/b"]);
        s.apply(msg("a/b", b"", None));
        assert_eq!(topics(&mut s, now, "a/+"), vec!["a/c"]);
    }

    #[test]
    fn expired_messages_are_not_delivered_and_are_purged() {
        let now = Instant::now();
        let mut s = RetainedStore::new();
        s.apply(msg("a", b"1", Some(now + Duration::from_secs(1))));
        s.apply(msg("b", b"1", Some(now + Duration::from_secs(1))));
        assert_eq!(topics(&mut s, now, "a"), vec!["a"]);
        let later = now + Duration::from_secs(2);
        assert!(topics(&mut s, later, "a").is_empty());
        assert!(topics(&mut s, later, "#").is_empty());
        assert!(s.is_empty());
    }
}
