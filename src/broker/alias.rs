//! Outbound topic aliases (MQTT 5.0 §3.3.2.3.4): the topics one connection
//! was sent most recently, each bound to an alias the client knows.
//!
//! The first PUBLISH of a topic carries the topic and a new alias; later ones
//! carry an empty topic and the alias. When every alias the client allows
//! (its Topic Alias Maximum) is in use, the least recently used one is bound
//! to the new topic (sent with the topic again). Aliases belong to one
//! network connection ([MQTT-3.3.2-7]): a new connection starts with none.
//!
//! Cost per outbound PUBLISH: one hash of the topic and one lookup; a hit
//! relinks one node of an intrusive list (O(1)), a miss also rebinds a slot.
//! Nothing is allocated per message once the table has grown: a slot keeps
//! its own copy of the topic (so no read buffer of a publisher is held
//! alive) and reuses that buffer when it is rebound. The table itself is
//! allocated on the first PUBLISH that uses it, so an idle connection pays
//! only for [`OutboundAliases`] itself.
//!
//! Lives in a connection of one shard ([`super::ShardCore`]).

use std::collections::HashMap;
use std::hash::BuildHasher;

/// No alias (the end of the recency list).
const NIL: u16 = 0;

/// What an outbound PUBLISH carries for its topic, from
/// [`OutboundAliases::plan`]; applied with [`OutboundAliases::commit`] once
/// the packet is actually written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AliasPlan {
    /// The full topic and no Topic Alias (aliases off, or not worth it).
    None,
    /// An empty topic and this alias, which the client already knows.
    Known(u16),
    /// The full topic and this alias, which from now on stands for it (a
    /// new alias, or the least recently used one rebound).
    Bind(u16),
}

/// The outbound aliases of one connection.
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    /// The client's Topic Alias Maximum (0: no aliases).
    max: u16,
    /// Allocated on first use.
    table: Option<Box<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    hasher: crate::hash::FastState,
    /// Topic hash → alias. A hash is confirmed against the slot's topic.
    by_hash: HashMap<u64, u16, crate::hash::FastState>,
    /// Slot `a - 1` is alias `a`.
    slots: Vec<Slot>,
    /// Most and least recently used alias ([`NIL`] when empty).
    mru: u16,
    lru: u16,
}

#[derive(Debug)]
struct Slot {
    topic: String,
    hash: u64,
    /// Towards the most recently used end.
    prev: u16,
    /// Towards the least recently used end.
    next: u16,
}

impl OutboundAliases {
    /// Aliases for a client that allows `max` of them (0: none).
    pub(crate) fn new(max: u16) -> Self {
        Self { max, table: None }
    }

    /// How `topic` should be sent now. Changes nothing: a PUBLISH that is not
    /// written after all (too large for the client) must not bind an alias.
    pub(crate) fn plan(&self, topic: &str) -> AliasPlan {
        if self.max == 0 || topic.is_empty() {
            return AliasPlan::None;
        }
        let Some(t) = self.table.as_deref() else {
            return AliasPlan::Bind(1);
        };
        let hash = t.hasher.hash_one(topic);
        if let Some(&a) = t.by_hash.get(&hash) {
            return match t.slot(a) {
                Some(s) if s.topic == topic => AliasPlan::Known(a),
                // Another topic with the same 64-bit hash holds the entry:
                // this one goes without an alias.
                _ => AliasPlan::None,
            };
        }
        if t.slots.len() < usize::from(self.max) {
            // `slots.len() < max <= u16::MAX`, so the next alias fits.
            AliasPlan::Bind(t.slots.len() as u16 + 1)
        } else {
            AliasPlan::Bind(t.lru)
        }
    }

    /// The PUBLISH planned by [`OutboundAliases::plan`] for `topic` was
    /// written: the alias becomes the most recently used, bound to `topic`.
    pub(crate) fn commit(&mut self, topic: &str, plan: AliasPlan) {
        match plan {
            AliasPlan::None => {}
            AliasPlan::Known(a) => {
                if let Some(t) = self.table.as_deref_mut() {
                    t.touch(a);
                }
            }
            AliasPlan::Bind(a) => {
                let max = self.max;
                let t = self.table.get_or_insert_with(Box::default);
                t.bind(a, topic, max);
            }
        }
    }

    /// Aliases in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.slots.len())
    }
}

impl Table {
    fn slot(&self, a: u16) -> Option<&Slot> {
        self.slots.get(usize::from(a).checked_sub(1)?)
    }

    fn slot_mut(&mut self, a: u16) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(a).checked_sub(1)?)
    }

    /// Binds alias `a` (the next new one, or one in use) to `topic` and
    /// makes it the most recently used.
    fn bind(&mut self, a: u16, topic: &str, max: u16) {
        let hash = self.hasher.hash_one(topic);
        if usize::from(a) == self.slots.len() + 1 && a <= max {
            self.slots.push(Slot {
                topic: topic.to_owned(),
                hash,
                prev: NIL,
                next: NIL,
            });
            self.link_front(a);
        } else {
            let Some(s) = self.slot_mut(a) else {
                return;
            };
            let old = s.hash;
            s.topic.clear();
            s.topic.push_str(topic);
            s.hash = hash;
            if self.by_hash.get(&old) == Some(&a) {
                self.by_hash.remove(&old);
            }
            self.touch(a);
        }
        self.by_hash.insert(hash, a);
    }

    /// Makes `a` the most recently used alias.
    fn touch(&mut self, a: u16) {
        if self.mru == a || self.slot(a).is_none() {
            return;
        }
        self.unlink(a);
        self.link_front(a);
    }

    fn unlink(&mut self, a: u16) {
        let Some(s) = self.slot(a) else { return };
        let (prev, next) = (s.prev, s.next);
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.mru = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.lru = prev,
        }
    }

    fn link_front(&mut self, a: u16) {
        let old = self.mru;
        if let Some(s) = self.slot_mut(a) {
            s.prev = NIL;
            s.next = old;
        }
        match self.slot_mut(old) {
            Some(o) => o.prev = a,
            None => self.lru = a,
        }
        self.mru = a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans and commits like a connection that writes every PUBLISH.
    fn send(a: &mut OutboundAliases, topic: &str) -> AliasPlan {
        let p = a.plan(topic);
        a.commit(topic, p);
        p
    }

    /// The aliases from least to most recently used, walking both ways.
    fn order(a: &OutboundAliases) -> Vec<u16> {
        let Some(t) = a.table.as_deref() else {
            return vec![];
        };
        let mut fwd = vec![];
        let mut x = t.mru;
        while x != NIL {
            fwd.push(x);
            x = t.slot(x).unwrap().next;
        }
        let mut back = vec![];
        let mut x = t.lru;
        while x != NIL {
            back.push(x);
            x = t.slot(x).unwrap().prev;
        }
        fwd.reverse();
        assert_eq!(fwd, back, "list links agree both ways");
        back
    }

    #[test]
    fn first_use_binds_then_reuses() {
        let mut a = OutboundAliases::new(3);
        assert_eq!(send(&mut a, "a/b"), AliasPlan::Bind(1));
        assert_eq!(send(&mut a, "a/b"), AliasPlan::Known(1));
        assert_eq!(send(&mut a, "c"), AliasPlan::Bind(2));
        assert_eq!(send(&mut a, "a/b"), AliasPlan::Known(1));
        assert_eq!(send(&mut a, "c"), AliasPlan::Known(2));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn full_table_rebinds_the_least_recently_used() {
        let mut a = OutboundAliases::new(3);
        for t in ["t1", "t2", "t3"] {
            send(&mut a, t);
        }
        assert_eq!(order(&a), vec![1, 2, 3]);
        // t1 used again: t2 is now the least recently used.
        assert_eq!(send(&mut a, "t1"), AliasPlan::Known(1));
        assert_eq!(order(&a), vec![2, 3, 1]);
        assert_eq!(send(&mut a, "t4"), AliasPlan::Bind(2));
        assert_eq!(order(&a), vec![3, 1, 2]);
        // t2 lost its alias; t4 has it.
        assert_eq!(a.plan("t2"), AliasPlan::Bind(3));
        assert_eq!(send(&mut a, "t4"), AliasPlan::Known(2));
        assert_eq!(send(&mut a, "t2"), AliasPlan::Bind(3));
        assert_eq!(send(&mut a, "t3"), AliasPlan::Bind(1));
        assert_eq!(order(&a), vec![2, 3, 1]);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn maximum_one_rebinds_every_new_topic() {
        let mut a = OutboundAliases::new(1);
        assert_eq!(send(&mut a, "x"), AliasPlan::Bind(1));
        assert_eq!(send(&mut a, "y"), AliasPlan::Bind(1));
        assert_eq!(send(&mut a, "y"), AliasPlan::Known(1));
        assert_eq!(send(&mut a, "x"), AliasPlan::Bind(1));
        assert_eq!(order(&a), vec![1]);
    }

    #[test]
    fn maximum_zero_means_no_aliases_and_no_table() {
        let mut a = OutboundAliases::new(0);
        for _ in 0..3 {
            assert_eq!(send(&mut a, "t"), AliasPlan::None);
        }
        assert!(a.table.is_none());
    }

    #[test]
    fn a_plan_not_committed_changes_nothing() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.plan("big"), AliasPlan::Bind(1));
        assert!(a.table.is_none(), "nothing allocated before a commit");
        send(&mut a, "t1");
        send(&mut a, "t2");
        assert_eq!(a.plan("big"), AliasPlan::Bind(1));
        // Not written: t1 keeps its alias.
        assert_eq!(send(&mut a, "t1"), AliasPlan::Known(1));
    }

    #[test]
    fn a_hash_collision_goes_without_alias() {
        let mut a = OutboundAliases::new(4);
        send(&mut a, "real");
        // Make "other" collide with "real" by planting its hash.
        let t = a.table.as_deref_mut().unwrap();
        let h = t.hasher.hash_one("other");
        t.by_hash.insert(h, 1);
        assert_eq!(a.plan("other"), AliasPlan::None);
        assert_eq!(a.plan("real"), AliasPlan::Known(1));
    }

    #[test]
    fn many_topics_through_a_small_table_stay_consistent() {
        let mut a = OutboundAliases::new(8);
        let mut model: Vec<(String, u16)> = vec![]; // least recent first
        for i in 0..2000u32 {
            let topic = format!("t/{}", (i * 7919) % 13);
            let got = send(&mut a, &topic);
            let want = match model.iter().position(|(t, _)| *t == topic) {
                Some(k) => {
                    let e = model.remove(k);
                    let p = AliasPlan::Known(e.1);
                    model.push(e);
                    p
                }
                None if model.len() < 8 => {
                    let alias = model.len() as u16 + 1;
                    model.push((topic, alias));
                    AliasPlan::Bind(alias)
                }
                None => {
                    let (_, alias) = model.remove(0);
                    model.push((topic, alias));
                    AliasPlan::Bind(alias)
                }
            };
            assert_eq!(got, want, "message {i}");
            let aliases: Vec<u16> = model.iter().map(|e| e.1).collect();
            assert_eq!(order(&a), aliases);
        }
    }
}
