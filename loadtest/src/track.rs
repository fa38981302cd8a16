//! Sequence tracking: which messages of which publisher reached which
//! receiver, and from that the lost, dropped, duplicated and out-of-order
//! counts.
//!
//! Every publisher numbers its messages 0, 1, 2, … A subscriber connection
//! keeps one [`Stream`] per publisher it hears from (a bitmap of the
//! sequence numbers seen, the highest so far). At the end the streams of all
//! connections, cores and processes are put together in a [`Tracking`], keyed
//! by *receiver* — a subscriber, or for a shared subscription the whole group —
//! and compared with what each publisher sent and had acknowledged:
//!
//! - QoS 1/2 **lost**: acknowledged by the broker (PUBACK, or PUBREC for QoS 2)
//!   to the publisher but never received by a receiver that should have it;
//! - QoS 0 **dropped**: sent but never received (allowed by QoS 0, reported
//!   apart);
//! - **duplicate**: a sequence number received again by the same receiver;
//! - **out of order**: a new sequence number lower than the highest already
//!   received on that connection from that publisher.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Sequence numbers at or above this are treated as not ours (a bitmap up to
/// here is 128 MiB; a publisher at 1M msg/s needs 18 minutes to get there).
pub const MAX_SEQ: u32 = 1 << 30;

/// A set of sequence numbers, as a bitmap growing with the largest member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    count: u64,
}

impl SeqSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            words: Vec::new(),
            count: 0,
        }
    }

    /// Adds `seq`; `true` if it was not there yet. Values at or above
    /// [`MAX_SEQ`] are refused (`false`).
    pub fn insert(&mut self, seq: u32) -> bool {
        if seq >= MAX_SEQ {
            return false;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            // Grow geometrically so a steady stream costs amortised O(1).
            let want = (w + 1).max(self.words.len() * 2).max(4);
            self.words.resize(want, 0);
        }
        let word = &mut self.words[w];
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.count += 1;
        true
    }

    /// Adds every value of `[start, end)`.
    pub fn insert_range(&mut self, start: u32, end: u32) {
        for seq in start..end.min(MAX_SEQ) {
            self.insert(seq);
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u32) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// Number of members.
    pub const fn len(&self) -> u64 {
        self.count
    }

    /// `true` when empty.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds every member of `other`; returns how many were already here.
    pub fn union(&mut self, other: &SeqSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.count = self.count + other.count - overlap;
        overlap
    }

    /// How many members of `expected` are missing here: |expected \ self|.
    pub fn missing_from(&self, expected: &SeqSet) -> u64 {
        expected
            .words
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mine = self.words.get(i).copied().unwrap_or(0);
                u64::from((e & !mine).count_ones())
            })
            .sum()
    }

    /// How many members are below `end`.
    pub fn count_below(&self, end: u32) -> u64 {
        let full = (end / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = end % 64;
        if rest > 0 {
            if let Some(w) = self.words.get(full) {
                n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        n
    }

    /// The members as sorted half-open ranges `[start, end)`.
    pub fn ranges(&self) -> Vec<[u32; 2]> {
        let mut out: Vec<[u32; 2]> = Vec::new();
        let mut open: Option<u32> = None;
        for (i, &w) in self.words.iter().enumerate() {
            if w == 0 || w == u64::MAX {
                let base = (i * 64) as u32;
                match (w == u64::MAX, open) {
                    (true, None) => open = Some(base),
                    (false, Some(s)) => {
                        out.push([s, base]);
                        open = None;
                    }
                    _ => {}
                }
                continue;
            }
            for bit in 0..64u32 {
                let seq = (i as u32) * 64 + bit;
                let set = w & (1u64 << bit) != 0;
                match (set, open) {
                    (true, None) => open = Some(seq),
                    (false, Some(s)) => {
                        out.push([s, seq]);
                        open = None;
                    }
                    _ => {}
                }
            }
        }
        if let Some(s) = open {
            out.push([s, (self.words.len() * 64) as u32]);
        }
        out
    }

    /// The set with the members of `ranges` (half-open).
    pub fn from_ranges(ranges: &[[u32; 2]]) -> Self {
        let mut set = Self::new();
        for &[s, e] in ranges {
            set.insert_range(s, e);
        }
        set
    }
}

/// What one subscriber connection heard from one publisher.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// Sequence numbers received.
    pub seen: SeqSet,
    /// The highest sequence number received.
    pub highest: Option<u32>,
    /// Sequence numbers received again.
    pub duplicates: u64,
    /// New sequence numbers lower than `highest` when they arrived.
    pub out_of_order: u64,
}

/// How a message arrived, relative to the earlier ones of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time, in order.
    New,
    /// First time, but after a higher sequence number.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// A sequence number no publisher of ours sends (≥ [`MAX_SEQ`]).
    Invalid,
}

impl Stream {
    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u32) -> Arrival {
        if seq >= MAX_SEQ {
            return Arrival::Invalid;
        }
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        match self.highest {
            Some(h) if seq < h => {
                self.out_of_order += 1;
                Arrival::OutOfOrder
            }
            _ => {
                self.highest = Some(seq);
                Arrival::New
            }
        }
    }
}

/// The streams of one subscriber connection, by publisher.
#[derive(Debug, Default)]
pub struct ReceiverStreams {
    /// One stream per publisher heard from.
    pub by_publisher: HashMap<u32, Stream>,
}

impl ReceiverStreams {
    /// Records `seq` from `publisher`.
    pub fn record(&mut self, publisher: u32, seq: u32) -> Arrival {
        self.by_publisher.entry(publisher).or_default().record(seq)
    }
}

/// What one publisher sent and had acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherRecord {
    /// Messages sent: sequence numbers `0..sent`.
    pub sent: u32,
    /// Sequence numbers the broker acknowledged (QoS 1: PUBACK, QoS 2:
    /// PUBREC) with a success code.
    pub acked: SeqSet,
}

/// What one receiver got from one publisher, all its connections together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverRecord {
    /// Sequence numbers received at least once.
    pub seen: SeqSet,
    /// Receptions of a sequence number already received.
    pub duplicates: u64,
    /// Receptions out of order on their connection.
    pub out_of_order: u64,
}

/// The sent/acknowledged/received record of a run (or part of one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracking {
    /// By publisher index.
    pub publishers: BTreeMap<u32, PublisherRecord>,
    /// By (receiver, publisher).
    pub receivers: BTreeMap<(u32, u32), ReceiverRecord>,
}

/// The loss and order counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// QoS 1/2: messages acknowledged to the publisher that an expected
    /// receiver never got.
    pub lost: u64,
    /// QoS 0: messages sent that an expected receiver never got.
    pub dropped: u64,
    /// Receptions of a message the receiver already had.
    pub duplicates: u64,
    /// Receptions out of order on their connection.
    pub out_of_order: u64,
    /// QoS 1/2: messages sent but never acknowledged (still in flight when
    /// the run ended, or refused).
    pub unacked: u64,
    /// Distinct (receiver, message) deliveries.
    pub delivered_unique: u64,
}

impl Loss {
    /// Adds another process's or run's counts into `self`.
    pub fn add(&mut self, o: &Loss) {
        self.lost += o.lost;
        self.dropped += o.dropped;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.unacked += o.unacked;
        self.delivered_unique += o.delivered_unique;
    }
}

impl Tracking {
    /// Adds a connection's stream for (`receiver`, `publisher`). Sequence
    /// numbers the receiver already had from another connection count as
    /// duplicates.
    pub fn add_stream(&mut self, receiver: u32, publisher: u32, stream: &Stream) {
        let rec = self.receivers.entry((receiver, publisher)).or_default();
        rec.duplicates += stream.duplicates + rec.seen.union(&stream.seen);
        rec.out_of_order += stream.out_of_order;
    }

    /// Records what publisher `id` sent and had acknowledged.
    pub fn add_publisher(&mut self, id: u32, sent: u32, acked: &SeqSet) {
        let rec = self.publishers.entry(id).or_default();
        rec.sent = rec.sent.max(sent);
        rec.acked.union(acked);
    }

    /// Puts `other` (another core's or process's record) into this one.
    pub fn merge(&mut self, other: &Tracking) {
        for (&id, p) in &other.publishers {
            self.add_publisher(id, p.sent, &p.acked);
        }
        for (&key, r) in &other.receivers {
            let rec = self.receivers.entry(key).or_default();
            rec.duplicates += r.duplicates + rec.seen.union(&r.seen);
            rec.out_of_order += r.out_of_order;
        }
    }

    /// Counts loss over the (receiver, publisher) pairs that should see
    /// every message of the publisher. `qos` is the QoS the messages were
    /// published and subscribed with.
    pub fn account(&self, pairs: impl IntoIterator<Item = (u32, u32)>, qos: u8) -> Loss {
        let empty_pub = PublisherRecord::default();
        let empty_rec = ReceiverRecord::default();
        let mut loss = Loss::default();
        for (r, p) in pairs {
            let publ = self.publishers.get(&p).unwrap_or(&empty_pub);
            let rec = self.receivers.get(&(r, p)).unwrap_or(&empty_rec);
            if qos == 0 {
                loss.dropped += u64::from(publ.sent) - rec.seen.count_below(publ.sent);
            } else {
                loss.lost += rec.seen.missing_from(&publ.acked);
            }
        }
        for rec in self.receivers.values() {
            loss.duplicates += rec.duplicates;
            loss.out_of_order += rec.out_of_order;
            loss.delivered_unique += rec.seen.len();
        }
        if qos > 0 {
            loss.unacked = self
                .publishers
                .values()
                .map(|p| u64::from(p.sent).saturating_sub(p.acked.len()))
                .sum();
        }
        loss
    }
}

/// The JSON form of a [`Tracking`]: sets as half-open ranges.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrackingJson {
    /// Publishers.
    pub publishers: Vec<PublisherJson>,
    /// Receivers.
    pub receivers: Vec<ReceiverJson>,
}

/// A publisher in [`TrackingJson`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherJson {
    /// Publisher index.
    pub id: u32,
    /// Messages sent.
    pub sent: u32,
    /// Acknowledged sequence numbers.
    pub acked: Vec<[u32; 2]>,
}

/// A receiver stream in [`TrackingJson`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiverJson {
    /// Receiver index.
    pub receiver: u32,
    /// Publisher index.
    pub publisher: u32,
    /// Sequence numbers received.
    pub seen: Vec<[u32; 2]>,
    /// Duplicates.
    pub duplicates: u64,
    /// Out of order.
    pub out_of_order: u64,
}

impl From<&Tracking> for TrackingJson {
    fn from(t: &Tracking) -> Self {
        Self {
            publishers: t
                .publishers
                .iter()
                .map(|(&id, p)| PublisherJson {
                    id,
                    sent: p.sent,
                    acked: p.acked.ranges(),
                })
                .collect(),
            receivers: t
                .receivers
                .iter()
                .map(|(&(receiver, publisher), r)| ReceiverJson {
                    receiver,
                    publisher,
                    seen: r.seen.ranges(),
                    duplicates: r.duplicates,
                    out_of_order: r.out_of_order,
                })
                .collect(),
        }
    }
}

impl From<&TrackingJson> for Tracking {
    fn from(j: &TrackingJson) -> Self {
        let mut t = Tracking::default();
        for p in &j.publishers {
            t.add_publisher(p.id, p.sent, &SeqSet::from_ranges(&p.acked));
        }
        for r in &j.receivers {
            let rec = ReceiverRecord {
                seen: SeqSet::from_ranges(&r.seen),
                duplicates: r.duplicates,
                out_of_order: r.out_of_order,
            };
            let mut other = Tracking::default();
            other.receivers.insert((r.receiver, r.publisher), rec);
            t.merge(&other);
        }
        t
    }
}

impl Serialize for Tracking {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TrackingJson::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tracking {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tracking::from(&TrackingJson::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_insert_contains_len() {
        let mut s = SeqSet::new();
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(1000));
        assert!(!s.insert(64));
        assert!(!s.insert(MAX_SEQ));
        assert_eq!(s.len(), 4);
        assert!(s.contains(63) && s.contains(1000) && !s.contains(999));
        assert!(!s.contains(u32::MAX));
        assert_eq!(s.count_below(64), 2);
        assert_eq!(s.count_below(65), 3);
        assert_eq!(s.count_below(0), 0);
        assert_eq!(s.count_below(5000), 4);
    }

    #[test]
    fn seqset_ranges_round_trip() {
        let mut s = SeqSet::new();
        s.insert_range(0, 130);
        s.insert_range(200, 201);
        s.insert_range(256, 320); // a full word
        s.insert(1000);
        let r = s.ranges();
        assert_eq!(r, vec![[0, 130], [200, 201], [256, 320], [1000, 1001]]);
        assert_eq!(SeqSet::from_ranges(&r), s);
        assert_eq!(SeqSet::new().ranges(), Vec::<[u32; 2]>::new());
    }

    #[test]
    fn seqset_union_and_missing() {
        let mut a = SeqSet::from_ranges(&[[0, 10]]);
        let b = SeqSet::from_ranges(&[[5, 20]]);
        assert_eq!(a.union(&b), 5);
        assert_eq!(a.len(), 20);
        let expected = SeqSet::from_ranges(&[[0, 30]]);
        assert_eq!(a.missing_from(&expected), 10);
        assert_eq!(expected.missing_from(&a), 0);
    }

    #[test]
    fn stream_counts_duplicates_and_reordering() {
        let mut s = Stream::default();
        assert_eq!(s.record(0), Arrival::New);
        assert_eq!(s.record(1), Arrival::New);
        assert_eq!(s.record(3), Arrival::New);
        assert_eq!(s.record(2), Arrival::OutOfOrder);
        assert_eq!(s.record(3), Arrival::Duplicate);
        assert_eq!(s.record(1), Arrival::Duplicate);
        assert_eq!(s.record(MAX_SEQ), Arrival::Invalid);
        assert_eq!(s.record(4), Arrival::New);
        assert_eq!((s.duplicates, s.out_of_order, s.seen.len()), (2, 1, 5));
        assert_eq!(s.highest, Some(4));
    }

    fn acked(n: u32) -> SeqSet {
        SeqSet::from_ranges(&[[0, n]])
    }

    #[test]
    fn qos1_lost_is_acked_but_not_received() {
        let mut t = Tracking::default();
        // Publisher 0 sent 10, 8 acknowledged (8 and 9 still in flight).
        t.add_publisher(0, 10, &acked(8));
        let mut s = Stream::default();
        for seq in [0, 1, 2, 4, 5, 7, 9] {
            s.record(seq);
        }
        t.add_stream(0, 0, &s);
        let loss = t.account([(0, 0)], 1);
        // 3 and 6 were acknowledged and never came; 8 was not acknowledged.
        assert_eq!(loss.lost, 2);
        assert_eq!(loss.unacked, 2);
        assert_eq!(loss.dropped, 0);
        assert_eq!(loss.delivered_unique, 7);
    }

    #[test]
    fn qos0_counts_drops_not_loss() {
        let mut t = Tracking::default();
        t.add_publisher(3, 100, &SeqSet::new());
        let mut s = Stream::default();
        for seq in 0..90 {
            s.record(seq);
        }
        t.add_stream(1, 3, &s);
        // Receiver 2 expected publisher 3 too and got nothing.
        let loss = t.account([(1, 3), (2, 3)], 0);
        assert_eq!(loss.dropped, 10 + 100);
        assert_eq!(loss.lost, 0);
        assert_eq!(loss.unacked, 0);
    }

    #[test]
    fn shared_group_members_union_and_cross_member_duplicates() {
        // Two members of one group (receiver 0), on different connections.
        let mut a = Stream::default();
        let mut b = Stream::default();
        for seq in [0, 2, 4] {
            a.record(seq);
        }
        for seq in [1, 3, 4] {
            b.record(seq);
        }
        let mut t = Tracking::default();
        t.add_publisher(0, 5, &acked(5));
        t.add_stream(0, 0, &a);
        t.add_stream(0, 0, &b);
        let loss = t.account([(0, 0)], 2);
        assert_eq!(loss.lost, 0);
        assert_eq!(loss.duplicates, 1); // 4 went to both members
        assert_eq!(loss.delivered_unique, 5);
    }

    #[test]
    fn merge_and_json_round_trip() {
        let mut t1 = Tracking::default();
        let mut t2 = Tracking::default();
        t1.add_publisher(0, 50, &acked(50));
        let mut s = Stream::default();
        for seq in 0..30 {
            s.record(seq);
        }
        t1.add_stream(7, 0, &s);
        let mut s2 = Stream::default();
        for seq in 25..50 {
            s2.record(seq);
        }
        s2.record(40);
        t2.add_stream(7, 0, &s2);
        let j1 = TrackingJson::from(&t1);
        let j2 = TrackingJson::from(&t2);
        let text = serde_json::to_string(&j1).unwrap_or_default();
        let back: TrackingJson = serde_json::from_str(&text).unwrap_or_default();
        let mut merged = Tracking::from(&back);
        assert_eq!(merged, t1);
        merged.merge(&Tracking::from(&j2));
        let loss = merged.account([(7, 0)], 1);
        assert_eq!(loss.lost, 0);
        // 25..30 overlap (5) plus the repeated 40 (1).
        assert_eq!(loss.duplicates, 6);
        assert_eq!(loss.delivered_unique, 50);
    }
}
