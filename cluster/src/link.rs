//! One stream of batches from a shard of this node to a peer node, and the
//! peer's view of it: sequence numbers, resend after a reconnect, exactly
//! once in order at the receiver, acknowledgements, bounds.
//!
//! A stream is (dialing node, its epoch, dialing shard) → peer node. The
//! dialer ([`Outbound`]) numbers its batches from 1 and keeps every batch
//! until the peer acknowledges it; after a reconnect the peer's
//! [`Frame::Welcome`] says what it has already received, and only later
//! batches are sent again. The receiver ([`Inbound`]) takes each batch once,
//! in order, and acknowledges a batch once everything in it is done (the
//! caller says when: stored where needed), cumulatively.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use vmqtt::broker::{Message, RetainVersion, SessionMsg};
use vmqtt::topic::TopicFilter;

use crate::frame::{Frame, Item, Seq};

/// What waits to be carried: an item and the token the publisher's
/// acknowledgement waits for (if any).
#[derive(Debug, Clone)]
pub enum OutItem {
    /// A message for the peer's subscribers, and the shared groups whose
    /// member there is to take it.
    Publish(Arc<Message>, Vec<TopicFilter>),
    /// A retained update for the peer's replicas, with its version.
    Retain(Arc<Message>, RetainVersion),
    /// This node's every route (first in a stream to a fresh peer).
    Routes(Vec<TopicFilter>),
    /// A route appeared on this node.
    RouteAdd(TopicFilter),
    /// A route is gone from this node.
    RouteRemove(TopicFilter),
    /// About one client's session (claims and handovers).
    Session(SessionMsg),
    /// A message for the peer's members of these groups only.
    GroupPublish(Arc<Message>, Vec<TopicFilter>),
}

/// About the bytes a session message takes on the wire.
fn session_size(m: &SessionMsg) -> usize {
    let base = 32 + m.client().as_str().len();
    match m {
        SessionMsg::Handover {
            session: Some(s), ..
        } => {
            base + s
                .subscriptions
                .iter()
                .map(|(f, _)| 7 + f.as_str().len())
                .sum::<usize>()
                + s.queue
                    .iter()
                    .map(|e| 48 + e.msg.topic.as_str().len() + e.msg.payload.len())
                    .sum::<usize>()
                + 2 * s.inbound_qos2.len()
        }
        _ => base,
    }
}

impl OutItem {
    fn size(&self) -> usize {
        match self {
            OutItem::Publish(m, groups) | OutItem::GroupPublish(m, groups) => {
                36 + m.topic.as_str().len()
                    + m.payload.len()
                    + groups.iter().map(|g| 2 + g.as_str().len()).sum::<usize>()
            }
            OutItem::Retain(m, _) => 44 + m.topic.as_str().len() + m.payload.len(),
            OutItem::Routes(fs) => 8 + fs.iter().map(|f| 2 + f.as_str().len()).sum::<usize>(),
            OutItem::RouteAdd(f) | OutItem::RouteRemove(f) => 3 + f.as_str().len(),
            OutItem::Session(m) => session_size(m),
        }
    }

    fn is_route(&self) -> bool {
        matches!(
            self,
            OutItem::Routes(_) | OutItem::RouteAdd(_) | OutItem::RouteRemove(_)
        )
    }

    fn to_item(&self) -> Item {
        match self {
            OutItem::Publish(m, groups) => Item::Publish(Message::clone(m), groups.clone()),
            OutItem::Retain(m, v) => Item::Retain(Message::clone(m), *v),
            OutItem::Routes(fs) => Item::Routes(fs.clone()),
            OutItem::RouteAdd(f) => Item::RouteAdd(f.clone()),
            OutItem::RouteRemove(f) => Item::RouteRemove(f.clone()),
            OutItem::Session(m) => Item::Session(m.clone()),
            OutItem::GroupPublish(m, groups) => {
                Item::GroupPublish(Message::clone(m), groups.clone())
            }
        }
    }
}

#[derive(Debug)]
struct Batch {
    seq: Seq,
    items: Vec<OutItem>,
    tokens: Vec<u64>,
    bytes: usize,
}

/// Counters of one outbound stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutStats {
    /// Batches written (resends included).
    pub frames: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Batches written again after a reconnect.
    pub resent: u64,
    /// Items dropped because the stream held `max_bytes`.
    pub dropped: u64,
    /// Connections established.
    pub connects: u64,
}

/// The sending end of a stream.
#[derive(Debug)]
pub struct Outbound {
    next: Seq,
    /// Not cut into a batch yet.
    open: Vec<OutItem>,
    open_tokens: Vec<u64>,
    open_bytes: usize,
    /// Cut, oldest first, until acknowledged.
    unacked: VecDeque<Batch>,
    held_bytes: usize,
    max_bytes: usize,
    /// The last batch written on the current connection (`None`: not
    /// connected).
    written: Option<Seq>,
    /// Batches written at most once per connection: highest ever written.
    high_water: Seq,
    stats: OutStats,
}

impl Outbound {
    /// An empty stream holding at most `max_bytes` (waiting and
    /// unacknowledged).
    pub fn new(max_bytes: usize) -> Outbound {
        Outbound {
            next: Seq(1),
            open: Vec::new(),
            open_tokens: Vec::new(),
            open_bytes: 0,
            unacked: VecDeque::new(),
            held_bytes: 0,
            max_bytes,
            written: None,
            high_water: Seq(0),
            stats: OutStats::default(),
        }
    }

    /// Queues an item (with the publisher's token). `Err` gives the token
    /// back when the stream is full: the item is dropped and counted, and
    /// the caller completes the token itself. Route changes are never
    /// dropped (they are small and the peer's view would be wrong).
    pub fn push(&mut self, item: OutItem, token: Option<u64>) -> Result<(), Option<u64>> {
        let size = item.size();
        if !item.is_route() && self.held_bytes + self.open_bytes + size > self.max_bytes {
            self.stats.dropped += 1;
            return Err(token);
        }
        self.open_bytes += size;
        self.open.push(item);
        self.open_tokens.extend(token);
        Ok(())
    }

    /// Bytes waiting to be cut into a batch.
    pub fn waiting_bytes(&self) -> usize {
        self.open_bytes
    }

    /// Bytes held in all (waiting and unacknowledged): the queue depth.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes + self.open_bytes
    }

    /// Batches sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Cuts what waits into the next batch.
    pub fn cut(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let batch = Batch {
            seq: self.next,
            items: std::mem::take(&mut self.open),
            tokens: std::mem::take(&mut self.open_tokens),
            bytes: std::mem::take(&mut self.open_bytes),
        };
        self.next = Seq(self.next.0 + 1);
        self.held_bytes += batch.bytes;
        self.unacked.push_back(batch);
    }

    /// `true` when connected and some batch is not written on this
    /// connection yet.
    pub fn wants_write(&self) -> bool {
        match self.written {
            Some(w) => self.unacked.back().is_some_and(|b| b.seq > w),
            None => false,
        }
    }

    /// Encodes every batch not yet written on this connection into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) {
        let Some(written) = self.written else { return };
        let mut last = written;
        for b in self.unacked.iter().filter(|b| b.seq > written) {
            let frame = Frame::Batch {
                seq: b.seq,
                items: b.items.iter().map(OutItem::to_item).collect(),
            };
            let before = buf.len();
            frame.encode(now, buf);
            self.stats.frames += 1;
            self.stats.bytes += (buf.len() - before) as u64;
            if b.seq <= self.high_water {
                self.stats.resent += 1;
            }
            last = b.seq;
        }
        self.high_water = self.high_water.max(last);
        self.written = Some(last);
    }

    /// The peer acknowledged every batch up to `seq`: their tokens, done.
    pub fn on_ack(&mut self, seq: Seq, done: &mut Vec<u64>) {
        while self.unacked.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = self.unacked.pop_front() {
                self.held_bytes -= b.bytes;
                done.extend(b.tokens);
            }
        }
    }

    /// A connection is up; the peer has the stream's batches up to
    /// `received`. `fresh_peer`: the peer is a new life (an epoch this stream
    /// never reached) and knows none of this node's routes: route changes
    /// still unacknowledged are dropped and `snapshot` (this node's routes
    /// now) goes first, in a batch of its own.
    pub fn on_connected(&mut self, received: Seq, fresh_peer: Option<Vec<TopicFilter>>) {
        self.stats.connects += 1;
        if let Some(routes) = fresh_peer {
            for b in &mut self.unacked {
                let before: usize = b.items.iter().map(OutItem::size).sum();
                b.items.retain(|i| !i.is_route());
                let after: usize = b.items.iter().map(OutItem::size).sum();
                b.bytes -= before - after;
                self.held_bytes -= before - after;
            }
            // The snapshot is a batch of its own, after the stream's batches
            // (numbers only grow); publishes and routes are independent.
            let open: Vec<OutItem> = std::mem::take(&mut self.open)
                .into_iter()
                .filter(|i| !i.is_route())
                .collect();
            let tokens = std::mem::take(&mut self.open_tokens);
            self.open = vec![OutItem::Routes(routes)];
            self.open_bytes = self.open[0].size();
            self.cut();
            self.open_bytes = open.iter().map(OutItem::size).sum();
            self.open = open;
            self.open_tokens = tokens;
        }
        let first_unacked = self.unacked.front().map_or(self.next, |b| b.seq);
        let from = Seq(received.0.max(first_unacked.0.saturating_sub(1)));
        self.written = Some(from);
    }

    /// The connection is gone: what was written but not acknowledged goes
    /// again on the next one (from what the peer says it has).
    pub fn on_disconnected(&mut self) {
        self.written = None;
    }

    /// `true` while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.written.is_some()
    }

    /// The peer left the cluster (its lease expired): everything held is
    /// dropped, its tokens done.
    pub fn peer_gone(&mut self, done: &mut Vec<u64>) {
        for b in self.unacked.drain(..) {
            done.extend(b.tokens);
        }
        done.append(&mut self.open_tokens);
        self.open.clear();
        self.open_bytes = 0;
        self.held_bytes = 0;
        self.written = None;
    }

    /// This node began a new life while the peer kept its own: this
    /// stream ends, but what it holds for the peer goes on the new one
    /// ([`Outbound::carry`]): publishes, retained updates and session
    /// messages, with their tokens (not route changes: a new stream starts
    /// with a snapshot). A batch the peer took before the cut but never
    /// acknowledged arrives twice.
    pub fn take_carried(&mut self) -> (Vec<OutItem>, Vec<u64>) {
        let mut items = Vec::new();
        let mut tokens = Vec::new();
        for b in self.unacked.drain(..) {
            items.extend(b.items.into_iter().filter(|i| !i.is_route()));
            tokens.extend(b.tokens);
        }
        items.extend(
            std::mem::take(&mut self.open)
                .into_iter()
                .filter(|i| !i.is_route()),
        );
        tokens.append(&mut self.open_tokens);
        self.open_bytes = 0;
        self.held_bytes = 0;
        self.written = None;
        (items, tokens)
    }

    /// What an earlier stream to the peer carried over
    /// ([`Outbound::take_carried`]): queued first, whatever the limit.
    pub fn carry(&mut self, items: Vec<OutItem>, tokens: Vec<u64>) {
        let mut open: Vec<OutItem> = items;
        open.append(&mut self.open);
        let mut open_tokens = tokens;
        open_tokens.append(&mut self.open_tokens);
        self.open_bytes = open.iter().map(OutItem::size).sum();
        self.open = open;
        self.open_tokens = open_tokens;
    }

    /// Its counters.
    pub fn stats(&self) -> OutStats {
        self.stats
    }
}

/// What [`Inbound::on_batch`] says of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// New: process it, then call [`Inbound::processed`].
    New,
    /// Already received (a resend): skip it.
    Duplicate,
}

/// A batch after a gap: the stream is broken (a protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch {got:?} after {last:?}: a gap in the stream")]
pub struct Gap {
    /// The last batch received.
    pub last: Seq,
    /// The batch that came.
    pub got: Seq,
}

/// The receiving end of a stream; lives as long as the sender's epoch,
/// across its reconnects.
#[derive(Debug, Default)]
pub struct Inbound {
    /// The last batch received (`Seq(0)`: none yet).
    received: Seq,
    /// Received batches not done yet: (batch, items awaited).
    open: VecDeque<(Seq, usize)>,
    /// The last batch done and not yet acknowledged.
    done: Option<Seq>,
    /// The last batch done (acknowledged or not).
    done_mark: Seq,
}

impl Inbound {
    /// A new stream.
    pub fn new() -> Inbound {
        Inbound::default()
    }

    /// What a reconnecting sender is told ([`Frame::Welcome`]).
    pub fn received(&self) -> Seq {
        self.received
    }

    /// A batch arrived.
    pub fn on_batch(&mut self, seq: Seq) -> Result<Accept, Gap> {
        if self.received.0 != 0 && seq <= self.received {
            return Ok(Accept::Duplicate);
        }
        // The first batch a receiver sees may be any (the sender resends
        // from its oldest unacknowledged); after that, one by one.
        if self.received.0 != 0 && seq.0 != self.received.0 + 1 {
            return Err(Gap {
                last: self.received,
                got: seq,
            });
        }
        self.received = seq;
        Ok(Accept::New)
    }

    /// The batch `seq` was processed; `awaited` of its items finish later
    /// ([`Inbound::item_done`]).
    pub fn processed(&mut self, seq: Seq, awaited: usize) {
        self.open.push_back((seq, awaited));
        self.advance();
    }

    /// One awaited item of batch `seq` finished.
    pub fn item_done(&mut self, seq: Seq) {
        if let Some(entry) = self.open.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = entry.1.saturating_sub(1);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while self.open.front().is_some_and(|(_, n)| *n == 0) {
            if let Some((seq, _)) = self.open.pop_front() {
                self.done = Some(seq);
                self.done_mark = seq;
            }
        }
    }

    /// The last batch done: what a new connection of the stream is told
    /// at once (an acknowledgement sent on a connection that broke may
    /// never have arrived).
    pub fn done_mark(&self) -> Seq {
        self.done_mark
    }

    /// The acknowledgement to send, if the done mark moved.
    pub fn take_ack(&mut self) -> Option<Frame> {
        self.done.take().map(Frame::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use vmqtt::codec::{PublishProperties, QoS};
    use vmqtt::topic::TopicName;

    fn publish(n: u32) -> OutItem {
        OutItem::Publish(
            Arc::new(Message {
                topic: TopicName::try_from(format!("t/{n}")).unwrap(),
                payload: Bytes::from(n.to_be_bytes().to_vec()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: None,
                uid: None,
            }),
            Vec::new(),
        )
    }

    fn batches(buf: &mut BytesMut) -> Vec<Seq> {
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(buf, Instant::now()).unwrap() {
            if let Frame::Batch { seq, .. } = f {
                out.push(seq);
            }
        }
        out
    }

    #[test]
    fn resends_only_what_the_peer_lacks() {
        let now = Instant::now();
        let mut out = Outbound::new(1 << 20);
        out.on_connected(Seq(0), None);
        for n in 0..3 {
            out.push(publish(n), Some(u64::from(n))).unwrap();
            out.cut();
        }
        let mut buf = BytesMut::new();
        out.poll_transmit(now, &mut buf);
        assert_eq!(batches(&mut buf), [Seq(1), Seq(2), Seq(3)]);
        let mut done = Vec::new();
        out.on_ack(Seq(1), &mut done);
        assert_eq!(done, [0]);
        out.on_disconnected();
        assert!(!out.wants_write());
        // The peer had received batch 2 (not done yet): only 3 again.
        out.on_connected(Seq(2), None);
        out.poll_transmit(now, &mut buf);
        assert_eq!(batches(&mut buf), [Seq(3)]);
        assert_eq!(out.stats().resent, 1);
        out.on_ack(Seq(3), &mut done);
        assert_eq!(done, [0, 1, 2]);
        assert_eq!(out.held_bytes(), 0);
    }

    #[test]
    fn a_full_stream_drops_messages_but_not_routes() {
        let mut out = Outbound::new(60);
        assert!(out.push(publish(1), Some(1)).is_ok());
        assert_eq!(out.push(publish(2), Some(2)), Err(Some(2)));
        assert!(out
            .push(
                OutItem::RouteAdd(TopicFilter::try_from("a/#").unwrap()),
                None
            )
            .is_ok());
        assert_eq!(out.stats().dropped, 1);
        let mut done = Vec::new();
        out.peer_gone(&mut done);
        assert_eq!(done, [1]);
    }

    #[test]
    fn a_fresh_peer_gets_a_snapshot_instead_of_old_route_changes() {
        let now = Instant::now();
        let mut out = Outbound::new(1 << 20);
        out.push(
            OutItem::RouteAdd(TopicFilter::try_from("old").unwrap()),
            None,
        )
        .unwrap();
        out.push(publish(1), None).unwrap();
        out.cut();
        out.on_connected(Seq(0), Some(vec![TopicFilter::try_from("now/#").unwrap()]));
        let mut buf = BytesMut::new();
        out.poll_transmit(now, &mut buf);
        let mut frames = Vec::new();
        while let Some(Frame::Batch { seq, items }) = Frame::decode(&mut buf, now).unwrap() {
            frames.push((seq, items));
        }
        assert_eq!(frames.len(), 2);
        assert!(matches!(frames[0].1[..], [Item::Publish(..)]));
        assert!(matches!(&frames[1].1[..], [Item::Routes(r)] if r.len() == 1));
    }

    /// This node's new life: the old stream's publishes (sent or not,
    /// unacknowledged) go on the new stream with their tokens, its route
    /// changes do not.
    #[test]
    fn a_new_life_carries_unacknowledged_publishes_to_the_new_stream() {
        let now = Instant::now();
        let mut old = Outbound::new(1 << 20);
        old.on_connected(Seq(0), None);
        old.push(publish(1), Some(1)).unwrap();
        old.cut();
        let mut buf = BytesMut::new();
        old.poll_transmit(now, &mut buf);
        old.push(OutItem::RouteAdd(TopicFilter::try_from("r").unwrap()), None)
            .unwrap();
        old.push(publish(2), Some(2)).unwrap();
        let (items, tokens) = old.take_carried();
        assert_eq!(items.len(), 2);
        assert_eq!(tokens, [1, 2]);
        assert_eq!(old.held_bytes(), 0);
        let mut new = Outbound::new(1 << 20);
        new.push(publish(3), Some(3)).unwrap();
        new.carry(items, tokens);
        new.on_connected(Seq(0), Some(vec![TopicFilter::try_from("now/#").unwrap()]));
        new.cut();
        let mut buf = BytesMut::new();
        new.poll_transmit(now, &mut buf);
        let mut frames = Vec::new();
        while let Some(Frame::Batch { items, .. }) = Frame::decode(&mut buf, now).unwrap() {
            frames.push(items);
        }
        assert!(matches!(&frames[0][..], [Item::Routes(_)]));
        assert!(matches!(
            frames[1][..],
            [Item::Publish(..), Item::Publish(..), Item::Publish(..)]
        ));
        let mut done = Vec::new();
        new.on_ack(Seq(2), &mut done);
        assert_eq!(done, [1, 2, 3]);
    }

    #[test]
    fn inbound_takes_each_batch_once_in_order_and_acks_when_done() {
        let mut inb = Inbound::new();
        assert_eq!(inb.on_batch(Seq(5)), Ok(Accept::New));
        inb.processed(Seq(5), 2);
        assert_eq!(inb.take_ack(), None);
        assert_eq!(inb.on_batch(Seq(6)), Ok(Accept::New));
        inb.processed(Seq(6), 0);
        // 6 is done but 5 is not: no acknowledgement passes 5.
        assert_eq!(inb.take_ack(), None);
        assert_eq!(inb.on_batch(Seq(5)), Ok(Accept::Duplicate));
        assert_eq!(inb.received(), Seq(6));
        inb.item_done(Seq(5));
        assert_eq!(inb.done_mark(), Seq(0));
        inb.item_done(Seq(5));
        assert_eq!(inb.take_ack(), Some(Frame::Ack(Seq(6))));
        assert_eq!(inb.take_ack(), None, "once");
        assert_eq!(inb.done_mark(), Seq(6), "kept for a new connection");
        assert_eq!(
            inb.on_batch(Seq(8)),
            Err(Gap {
                last: Seq(6),
                got: Seq(8)
            })
        );
    }
}
