//! [`SubscriptionTrie`]: topic filters → subscribers, matched against topic
//! names.
//!
//! The trie has one node per filter prefix. A node keeps its literal children
//! in a small vector (few children) or an `ahash` map (many), and its `+` and
//! `#` children in separate slots, so matching a topic costs one lookup per
//! topic level and per matching branch, whatever the number of filters.
//! Matching, lookup, insertion and removal use no recursion, so a filter or
//! topic with tens of thousands of levels cannot overflow the stack.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::ops::ControlFlow;

use crate::hash::FastState;
use memchr::memchr;

use crate::topic::levels;

/// Above this many entries a [`SmallMap`] switches from a vector to a hash
/// map; it switches back at half of it.
const SMALL: usize = 8;

/// A map that is a vector while small (linear search beats hashing for a few
/// entries, and costs less memory) and an `ahash` map (randomly seeded, so
/// peers cannot choose colliding keys) when large.
enum SmallMap<K, V> {
    Vec(Vec<(K, V)>),
    // Boxed: a `HashMap` with its hasher is 64 bytes and a `Vec` 24, and
    // there are two `SmallMap`s in every node while few nodes are wide.
    #[allow(clippy::box_collection)]
    Map(Box<HashMap<K, V, FastState>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::Vec(Vec::new())
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    fn len(&self) -> usize {
        match self {
            Self::Vec(v) => v.len(),
            Self::Map(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get<Q>(&self, q: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            Self::Vec(v) => v.iter().find(|(k, _)| k.borrow() == q).map(|(_, v)| v),
            Self::Map(m) => m.get(q),
        }
    }

    fn get_mut<Q>(&mut self, q: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            Self::Vec(v) => v.iter_mut().find(|(k, _)| k.borrow() == q).map(|(_, v)| v),
            Self::Map(m) => m.get_mut(q),
        }
    }

    /// Moves the entries into a hash map if the vector is full.
    fn grow_if_full(&mut self) {
        if let Self::Vec(v) = self {
            if v.len() >= SMALL {
                let mut m = HashMap::with_capacity_and_hasher(SMALL * 2, FastState);
                m.extend(v.drain(..));
                *self = Self::Map(Box::new(m));
            }
        }
    }

    /// Pushes onto the vector, growing it one slot at a time: most nodes
    /// have one or two entries, and insertion is not the hot path.
    fn push_exact(v: &mut Vec<(K, V)>, k: K, val: V) -> usize {
        v.reserve_exact(1);
        v.push((k, val));
        v.len() - 1
    }

    fn insert(&mut self, k: K, val: V) -> Option<V> {
        if let Some(old) = self.get_mut(&k) {
            return Some(std::mem::replace(old, val));
        }
        self.grow_if_full();
        match self {
            Self::Vec(v) => {
                Self::push_exact(v, k, val);
            }
            Self::Map(m) => {
                m.insert(k, val);
            }
        }
        None
    }

    /// The value for `q`, inserting `(key(), val())` first if there is none.
    fn get_or_insert_with<Q>(
        &mut self,
        q: &Q,
        key: impl FnOnce() -> K,
        val: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Self::Vec(v) = self {
            if v.len() >= SMALL && !v.iter().any(|(k, _)| k.borrow() == q) {
                self.grow_if_full();
            }
        }
        match self {
            Self::Vec(v) => {
                let i = match v.iter().position(|(k, _)| k.borrow() == q) {
                    Some(i) => i,
                    None => Self::push_exact(v, key(), val()),
                };
                &mut v[i].1
            }
            // `HashMap` has no lookup-or-insert by borrowed key; a hash-map
            // node is a big one, so allocating the key here is rare.
            Self::Map(m) => m.entry(key()).or_insert_with(val),
        }
    }

    fn remove<Q>(&mut self, q: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            Self::Vec(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == q)?;
                let (_, val) = v.swap_remove(i);
                if v.len() <= v.capacity() / 2 {
                    v.shrink_to_fit();
                }
                Some(val)
            }
            Self::Map(m) => {
                let val = m.remove(q)?;
                if m.len() <= SMALL / 2 {
                    let mut v = Vec::with_capacity(m.len());
                    v.extend(m.drain());
                    *self = Self::Vec(v);
                }
                Some(val)
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            Self::Vec(v) => v.iter().for_each(|(k, val)| f(k, val)),
            Self::Map(m) => m.iter().for_each(|(k, val)| f(k, val)),
        }
    }
}

impl<K, V> SmallMap<K, V> {
    /// Moves the values out into `out`, leaving the map empty.
    fn drain_values_into(&mut self, out: &mut Vec<V>) {
        match std::mem::take(self) {
            Self::Vec(v) => out.extend(v.into_iter().map(|(_, val)| val)),
            Self::Map(m) => out.extend(m.into_values()),
        }
    }
}

/// One filter prefix: its children and the subscribers of the filter that
/// ends here.
struct Node<K, V> {
    /// Children by literal level.
    children: SmallMap<Box<str>, Node<K, V>>,
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// The `#` child (a leaf for valid filters).
    hash: Option<Box<Node<K, V>>>,
    /// Subscribers of the filter that ends at this node.
    subs: SmallMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: SmallMap::default(),
            plus: None,
            hash: None,
            subs: SmallMap::default(),
        }
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    /// Number of children of every kind.
    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.edge_count() == 0
    }

    fn child(&self, level: &str) -> Option<&Self> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Self {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self
                .children
                .get_or_insert_with(level, || Box::from(level), Self::default),
        }
    }

    /// Detaches the child for `level` with its subtree.
    fn take_child(&mut self, level: &str) -> Option<Self> {
        match level {
            "+" => self.plus.take().map(|b| *b),
            "#" => self.hash.take().map(|b| *b),
            _ => self.children.remove(level),
        }
    }
}

impl<K, V> Node<K, V> {
    /// Moves every child out into `out`.
    fn take_children_into(&mut self, out: &mut Vec<Self>) {
        self.children.drain_values_into(out);
        out.extend(self.plus.take().map(|b| *b));
        out.extend(self.hash.take().map(|b| *b));
    }
}

/// Drops a subtree without recursion (the default drop glue recurses once per
/// level, and a filter may have 32768 levels).
fn drop_subtree<K, V>(mut node: Node<K, V>) {
    let mut pending = Vec::new();
    loop {
        node.take_children_into(&mut pending);
        drop(node);
        match pending.pop() {
            Some(next) => node = next,
            None => break,
        }
    }
}

/// Frames of the depth-first match: a node and the byte offset in the topic
/// of the next level to match (`> topic.len()` once every level is matched).
type Frame<'a, K, V> = (&'a Node<K, V>, usize);

/// Frames kept inline; deeper matches spill to the heap.
const INLINE_FRAMES: usize = 16;

/// The match stack: inline for the usual topic depths, so matching does not
/// allocate.
struct Stack<'a, K, V> {
    inline: [Frame<'a, K, V>; INLINE_FRAMES],
    len: usize,
    spill: Vec<Frame<'a, K, V>>,
}

impl<'a, K, V> Stack<'a, K, V> {
    fn new(first: Frame<'a, K, V>) -> Self {
        Self {
            inline: [first; INLINE_FRAMES],
            len: 1,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: Frame<'a, K, V>) {
        if self.len < INLINE_FRAMES {
            self.inline[self.len] = frame;
            self.len += 1;
        } else {
            self.spill.push(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame<'a, K, V>> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }
}

/// Topic filters mapped to subscribers, matched against topic names.
///
/// `K` identifies a subscriber (chosen by the caller: a session handle, or a
/// `(share group, session)` pair); `V` is what the caller keeps per
/// subscription (its options). Filters are the matching part of a
/// [`TopicFilter`](crate::topic::TopicFilter), as
/// [`matching_filter`](crate::topic::TopicFilter::matching_filter) returns;
/// for an invalid filter (such as `a/#/b`) the trie never panics, but which
/// topics it matches is unspecified.
///
/// A plain data structure with no interior mutability: it lives wherever its
/// owner keeps it (typically one per shard) and is `Send`/`Sync` when `K` and
/// `V` are.
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    /// Number of (filter, key) pairs.
    len: usize,
    /// Number of filters with at least one subscriber.
    filters: usize,
}

impl<K: Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            filters: 0,
        }
    }

    /// Subscribes `key` to `filter` with `value`. Returns the previous value
    /// if `key` was already subscribed to `filter` (the subscription is
    /// replaced, as MQTT 5.0 §3.8.4 requires).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in levels(filter) {
            node = node.child_or_insert(level);
        }
        let first = node.subs.is_empty();
        let old = node.subs.insert(key, value);
        if old.is_none() {
            self.len += 1;
            self.filters += usize::from(first);
        }
        old
    }

    /// Unsubscribes `key` from `filter`, returning its value if it was
    /// subscribed. Nodes left without subscribers or children are freed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let mut node = &mut self.root;
        for level in levels(filter) {
            node = node.child_mut(level)?;
        }
        let old = node.subs.remove(key)?;
        self.len -= 1;
        if node.subs.is_empty() {
            self.filters -= 1;
            if node.is_empty() {
                self.prune(filter);
            }
        }
        Some(old)
    }

    /// Frees the nodes of `filter`'s path that have become empty, after its
    /// last subscriber left: cuts the path below the deepest node that still
    /// has subscribers or another child.
    fn prune(&mut self, filter: &str) {
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels(filter).enumerate() {
            if depth == 0 || !node.subs.is_empty() || node.edge_count() > 1 {
                keep = depth;
            }
            match node.child(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let mut node = &mut self.root;
        let mut path = levels(filter);
        for level in path.by_ref().take(keep) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(cut) = path.next().and_then(|level| node.take_child(level)) {
            drop_subtree(cut);
        }
    }

    /// The value of `key`'s subscription to `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.find(filter)?.subs.get(key)
    }

    /// The value of `key`'s subscription to `filter`, mutably.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let mut node = &mut self.root;
        for level in levels(filter) {
            node = node.child_mut(level)?;
        }
        node.subs.get_mut(key)
    }

    /// Number of subscribers of `filter` (0 if nobody subscribes to it).
    pub fn subscriber_count(&self, filter: &str) -> usize {
        self.find(filter).map_or(0, |node| node.subs.len())
    }

    fn find(&self, filter: &str) -> Option<&Node<K, V>> {
        let mut node = &self.root;
        for level in levels(filter) {
            node = node.child(level)?;
        }
        Some(node)
    }

    /// Number of subscriptions: (filter, key) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with the key and value of every subscription whose filter
    /// matches `topic` (MQTT 5.0 §4.7; see [`matches()`](crate::topic::matches)).
    ///
    /// A key subscribed through several matching filters is reported once
    /// per filter (MQTT 5.0 §4.7.1.3 lets the server deliver once with the
    /// highest QoS; that choice is the caller's). The order is unspecified.
    /// Does not allocate unless the topic has more than 15 levels.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let _ = self.walk(topic, |subs| {
            subs.for_each(&mut f);
            ControlFlow::Continue(())
        });
    }

    /// Whether any subscription matches `topic`: stops at the first one.
    pub fn matches_any(&self, topic: &str) -> bool {
        self.walk(topic, |subs| {
            if subs.is_empty() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })
        .is_break()
    }

    /// Visits the subscriber set of every node whose filter matches `topic`.
    fn walk<'a>(
        &'a self,
        topic: &str,
        mut visit: impl FnMut(&'a SmallMap<K, V>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let t = topic.as_bytes();
        let dollar = t.first() == Some(&b'$');
        let mut stack = Stack::new((&self.root, 0));
        while let Some((node, pos)) = stack.pop() {
            // Only the root is at offset 0: a filter starting with a wildcard
            // does not match a topic starting with `$` (MQTT 5.0 §4.7.2).
            let wildcards = !(pos == 0 && dollar);
            if wildcards {
                if let Some(hash) = &node.hash {
                    visit(&hash.subs)?;
                }
            }
            if pos > t.len() {
                visit(&node.subs)?;
                continue;
            }
            let end = memchr(b'/', &t[pos..]).map_or(t.len(), |i| pos + i);
            if let Some(child) = topic.get(pos..end).and_then(|l| node.children.get(l)) {
                stack.push((child, end + 1));
            }
            if wildcards {
                if let Some(plus) = &node.plus {
                    stack.push((plus, end + 1));
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl<K, V> Drop for SubscriptionTrie<K, V> {
    fn drop(&mut self) {
        drop_subtree(std::mem::take(&mut self.root));
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("filter_count", &self.filters)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::topic::matches;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    impl<K: Eq + Hash, V> SubscriptionTrie<K, V> {
        /// Number of nodes, the root included.
        fn node_count(&self) -> usize {
            let mut count = 0;
            let mut stack = vec![&self.root];
            while let Some(node) = stack.pop() {
                count += 1;
                match &node.children {
                    SmallMap::Vec(v) => stack.extend(v.iter().map(|(_, n)| n)),
                    SmallMap::Map(m) => stack.extend(m.values()),
                }
                stack.extend(node.plus.as_deref());
                stack.extend(node.hash.as_deref());
            }
            count
        }
    }

    fn matched<K: Eq + Hash + Ord + Clone, V>(
        trie: &SubscriptionTrie<K, V>,
        topic: &str,
    ) -> Vec<K> {
        let mut keys = Vec::new();
        trie.for_each_match(topic, |k, _| keys.push(k.clone()));
        keys.sort();
        keys
    }

    #[test]
    fn is_a_plain_send_sync_value() {
        fn plain<T: Send + Sync + 'static>() {}
        plain::<SubscriptionTrie<u64, u8>>();
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut trie = SubscriptionTrie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/b", 1, "qos0"), None);
        assert_eq!(trie.insert("a/b", 2, "qos1"), None);
        assert_eq!(trie.insert("a/+", 1, "qos2"), None);
        assert_eq!((trie.len(), trie.filter_count()), (3, 2));
        assert_eq!(trie.insert("a/b", 1, "qos1"), Some("qos0"));
        assert_eq!((trie.len(), trie.filter_count()), (3, 2));
        assert_eq!(trie.get("a/b", &1), Some(&"qos1"));
        assert_eq!(trie.get("a/+", &1), Some(&"qos2"));
        assert_eq!(trie.get("a/+", &2), None);
        assert_eq!(trie.get("a", &1), None);
        assert_eq!(trie.get("a/b/c", &1), None);
        assert_eq!(trie.subscriber_count("a/b"), 2);
        assert_eq!(trie.subscriber_count("a"), 0);
        if let Some(v) = trie.get_mut("a/+", &1) {
            *v = "changed";
        }
        assert_eq!(trie.get("a/+", &1), Some(&"changed"));
        assert_eq!(trie.remove("a/b", &3), None);
        assert_eq!(trie.remove("x/y", &1), None);
        assert_eq!(trie.remove("a/b", &1), Some("qos1"));
        assert_eq!((trie.len(), trie.filter_count()), (2, 2));
        assert_eq!(trie.remove("a/b", &2), Some("qos1"));
        assert_eq!((trie.len(), trie.filter_count()), (1, 1));
        assert_eq!(trie.remove("a/+", &1), Some("changed"));
        assert!(trie.is_empty());
        assert_eq!(trie.filter_count(), 0);
        assert_eq!(trie.node_count(), 1);
        assert!(format!("{trie:?}").starts_with("SubscriptionTrie { len: 0"));
    }

    #[test]
    fn matching_follows_the_spec() {
        let filters = [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/+",
            "sport/tennis/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "+/monitor/Clients",
            "$SYS/monitor/+",
        ];
        let mut trie = SubscriptionTrie::new();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i, ());
        }
        let topics = [
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "/finance",
            "/",
            "$SYS",
            "$SYS/monitor/Clients",
            "a/monitor/Clients",
            "x",
        ];
        for topic in topics {
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(filters[i], topic))
                .collect();
            assert_eq!(matched(&trie, topic), expected, "{topic}");
            assert_eq!(trie.matches_any(topic), !expected.is_empty(), "{topic}");
        }
        assert_eq!(matched(&trie, "sport"), [1, 6, 7]);
        assert_eq!(matched(&trie, "$SYS"), [8]);
        assert_eq!(matched(&trie, "$SYS/monitor/Clients"), [8, 10]);
    }

    #[test]
    fn dollar_topics_skip_root_wildcards_only() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("#", 1, ());
        trie.insert("+/x", 2, ());
        assert!(!trie.matches_any("$SYS/x"));
        trie.insert("$SYS/+", 3, ());
        trie.insert("$SYS/#", 4, ());
        assert_eq!(matched(&trie, "$SYS/x"), [3, 4]);
        assert_eq!(matched(&trie, "a/x"), [1, 2]);
        assert_eq!(matched(&trie, "a/$x"), [1]);
    }

    #[test]
    fn overlapping_filters_report_a_key_once_per_filter() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/b", 7, 0u8);
        trie.insert("a/+", 7, 1);
        trie.insert("#", 7, 2);
        let mut seen = Vec::new();
        trie.for_each_match("a/b", |k, v| seen.push((*k, *v)));
        seen.sort();
        assert_eq!(seen, [(7, 0), (7, 1), (7, 2)]);
    }

    #[test]
    fn removal_prunes_only_empty_branches() {
        let mut trie = SubscriptionTrie::new();
        trie.insert("a/b/c/d", 1, ());
        trie.insert("a/b", 2, ());
        trie.insert("a/b/x", 3, ());
        trie.insert("a/+/#", 4, ());
        let nodes = trie.node_count();
        assert_eq!(nodes, 1 + 5 + 2); // root, a b c d x, + #
        trie.remove("a/b/c/d", &1);
        assert_eq!(trie.node_count(), nodes - 2);
        assert!(trie.matches_any("a/b/x"));
        assert!(trie.matches_any("a/b"));
        trie.remove("a/b", &2);
        assert_eq!(trie.node_count(), nodes - 2);
        trie.remove("a/+/#", &4);
        assert_eq!(trie.node_count(), nodes - 4);
        trie.remove("a/b/x", &3);
        assert_eq!(trie.node_count(), 1);
        assert!(trie.is_empty());
        assert!(!trie.matches_any("a/b/x"));
    }

    #[test]
    fn wide_nodes_switch_to_a_map_and_back() {
        let mut trie = SubscriptionTrie::new();
        for i in 0..100 {
            trie.insert(&format!("dev/{i}"), i, i);
            trie.insert("all/#", i, i);
        }
        assert_eq!((trie.len(), trie.filter_count()), (200, 101));
        for i in 0..100 {
            assert_eq!(matched(&trie, &format!("dev/{i}")), [i]);
        }
        assert_eq!(matched(&trie, "all/x").len(), 100);
        assert_eq!(trie.insert("dev/5", 5, 50), Some(5));
        for i in 0..98 {
            assert_eq!(
                trie.remove(&format!("dev/{i}"), &i),
                Some(if i == 5 { 50 } else { i })
            );
            assert_eq!(trie.remove("all/#", &i), Some(i));
        }
        assert_eq!(matched(&trie, "dev/99"), [99]);
        assert_eq!(matched(&trie, "all/x"), [98, 99]);
        assert_eq!(trie.get("all/#", &99), Some(&99));
        assert_eq!(trie.node_count(), 1 + 2 + 2 + 1); // root, dev 98 99, all #
    }

    /// 32768 levels, the most a 65535-byte filter can have: no recursion, so
    /// no stack overflow, when inserting, matching, removing or dropping.
    #[test]
    fn very_deep_filters_and_topics() {
        let deep_filter = format!("{}+", "+/".repeat(32_767));
        let deep_topic = format!("{}a", "a/".repeat(32_767));
        let mut trie = SubscriptionTrie::new();
        trie.insert(&deep_filter, 1, ());
        trie.insert(&deep_topic, 2, ());
        trie.insert("a/#", 3, ());
        assert_eq!(matched(&trie, &deep_topic), [1, 2, 3]);
        assert_eq!(trie.remove(&deep_filter, &1), Some(()));
        assert_eq!(matched(&trie, &deep_topic), [2, 3]);
        // Dropped with a 32768-level branch still in it.
    }

    fn arb_filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", "", "+"]);
        (prop::collection::vec(level, 1..5), any::<bool>()).prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
    }

    fn arb_filter_or_hash() -> impl Strategy<Value = String> {
        prop_oneof![9 => arb_filter(), 1 => Just("#".to_owned())]
    }

    fn arb_topic() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", ""]);
        prop::collection::vec(level, 1..6).prop_map(|levels| levels.join("/"))
    }

    proptest! {
        #[test]
        fn trie_agrees_with_linear_scan(
            filters in prop::collection::vec(arb_filter_or_hash(), 0..40),
            topics in prop::collection::vec(arb_topic(), 1..20),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            // Key i subscribes to filters[i]; keys i and i + 1000 share filters.
            let mut trie = SubscriptionTrie::new();
            let mut subs: BTreeSet<(usize, &str)> = BTreeSet::new();
            for (i, f) in filters.iter().enumerate() {
                trie.insert(f, i, i);
                subs.insert((i, f));
                if i % 3 == 0 {
                    trie.insert(f, i + 1000, i);
                    subs.insert((i + 1000, f));
                }
            }
            let check = |trie: &SubscriptionTrie<usize, usize>,
                         subs: &BTreeSet<(usize, &str)>|
             -> Result<(), TestCaseError> {
                prop_assert_eq!(trie.len(), subs.len());
                let distinct: BTreeSet<&str> = subs.iter().map(|(_, f)| *f).collect();
                prop_assert_eq!(trie.filter_count(), distinct.len());
                for topic in &topics {
                    let expected: Vec<usize> = subs
                        .iter()
                        .filter(|(_, f)| matches(f, topic))
                        .map(|(k, _)| *k)
                        .collect();
                    prop_assert_eq!(&matched(trie, topic), &expected, "topic {}", topic);
                    prop_assert_eq!(trie.matches_any(topic), !expected.is_empty());
                }
                Ok(())
            };
            check(&trie, &subs)?;
            for ix in removals {
                if subs.is_empty() {
                    break;
                }
                let Some(&(k, f)) = subs.iter().nth(ix.index(subs.len())) else { break };
                prop_assert_eq!(trie.remove(f, &k), Some(k % 1000));
                prop_assert_eq!(trie.remove(f, &k), None);
                subs.remove(&(k, f));
                check(&trie, &subs)?;
            }
            for (k, f) in std::mem::take(&mut subs) {
                prop_assert!(trie.remove(f, &k).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 1);
        }
    }
}
