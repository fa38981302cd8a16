//! Deterministic simulation of one stream between two nodes over a network
//! that cuts connections, loses what was in flight, delays delivery and
//! acknowledgements, and restarts the receiver (a new epoch): thousands of
//! seeded runs, each checked against the rules a link must keep.

// The helpers below are test code too (clippy's allow-unwrap-in-tests only
// covers #[test] functions).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use vmqtt::broker::Message;
use vmqtt::codec::{PublishProperties, QoS};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt_cluster::{Accept, Frame, Inbound, Item, OutItem, Outbound, Seq};

/// xorshift64*: the same run for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn message(n: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::try_from(format!("m/{n}")).unwrap(),
        payload: Bytes::from(n.to_be_bytes().to_vec()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        expires_at: None,
        origin: None,
        uid: None,
    })
}

fn filter(n: u64) -> TopicFilter {
    TopicFilter::try_from(format!("f/{n}/#")).unwrap()
}

/// The receiving node: one life (epoch) of it.
struct Receiver {
    inbound: Inbound,
    routes: BTreeSet<TopicFilter>,
    /// Publishes taken this life, in order.
    taken: Vec<u64>,
    /// Items awaited (batch, how many left to finish one by one).
    awaited: VecDeque<Seq>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            inbound: Inbound::new(),
            routes: BTreeSet::new(),
            taken: Vec::new(),
            awaited: VecDeque::new(),
        }
    }
}

struct Run {
    rng: Rng,
    now: Instant,
    out: Outbound,
    rx: Receiver,
    /// Bytes on the wire, each way, of the current connection.
    to_rx: BytesMut,
    to_tx: BytesMut,
    connected: bool,
    /// The receiver restarted since the sender's last connection.
    rx_fresh: bool,
    /// The sender's routes now.
    routes: BTreeSet<TopicFilter>,
    next_msg: u64,
    /// Token → message, of every publish the sender accepted.
    tokens: HashMap<u64, u64>,
    /// Tokens done, each once.
    done: Vec<u64>,
    /// Every publish any receiver life took.
    ever_taken: BTreeSet<u64>,
    /// Publishes whose token finished, and when the receiver had them.
    finished: BTreeSet<u64>,
}

impl Run {
    fn new(seed: u64) -> Run {
        Run {
            rng: Rng(seed | 1),
            now: Instant::now(),
            out: Outbound::new(64 << 10),
            rx: Receiver::new(),
            to_rx: BytesMut::new(),
            to_tx: BytesMut::new(),
            connected: false,
            rx_fresh: true,
            routes: BTreeSet::new(),
            next_msg: 0,
            tokens: HashMap::new(),
            done: Vec::new(),
            ever_taken: BTreeSet::new(),
            finished: BTreeSet::new(),
        }
    }

    fn connect(&mut self) {
        self.to_rx.clear();
        self.to_tx.clear();
        let snapshot = self
            .rx_fresh
            .then(|| self.routes.iter().cloned().collect::<Vec<_>>());
        self.out.on_connected(self.rx.inbound.received(), snapshot);
        self.rx_fresh = false;
        self.connected = true;
    }

    fn cut_connection(&mut self) {
        self.to_rx.clear();
        self.to_tx.clear();
        self.out.on_disconnected();
        self.connected = false;
    }

    fn restart_receiver(&mut self) {
        self.cut_connection();
        self.rx = Receiver::new();
        self.rx_fresh = true;
    }

    fn push_publish(&mut self) {
        let n = self.next_msg;
        self.next_msg += 1;
        let token = n + 1_000_000;
        if self
            .out
            .push(OutItem::Publish(message(n), Vec::new()), Some(token))
            .is_ok()
        {
            self.tokens.insert(token, n);
        } else {
            // Dropped for the bound: the caller finishes the token itself.
            self.done.push(token);
            self.finished.insert(n);
        }
    }

    fn change_route(&mut self) {
        let f = filter(self.rng.below(8));
        let item = if self.routes.insert(f.clone()) {
            OutItem::RouteAdd(f)
        } else {
            self.routes.remove(&f);
            OutItem::RouteRemove(f)
        };
        self.out.push(item, None).unwrap();
    }

    /// The receiver reads what arrived: a prefix of the bytes in flight
    /// (the rest arrives later).
    fn deliver_to_rx(&mut self) {
        let take = self.rng.below(self.to_rx.len() as u64 + 1) as usize;
        self.deliver_prefix(take);
    }

    fn deliver_prefix(&mut self, take: usize) {
        let mut arrived = self.to_rx.split_to(take);
        // Frames cut in half stay on the wire for the next delivery.
        while let Some(frame) = Frame::decode(&mut arrived, self.now).unwrap() {
            let Frame::Batch { seq, items } = frame else {
                panic!("only batches go this way")
            };
            match self.rx.inbound.on_batch(seq).expect("no gap in a stream") {
                Accept::Duplicate => {}
                Accept::New => {
                    let mut awaited = 0;
                    for item in items {
                        match item {
                            Item::Publish(m, _) => {
                                let n = u64::from_be_bytes(m.payload[..].try_into().unwrap());
                                self.rx.taken.push(n);
                                self.ever_taken.insert(n);
                                if self.rng.chance(500) {
                                    awaited += 1;
                                    self.rx.awaited.push_back(seq);
                                }
                            }
                            Item::Routes(fs) => self.rx.routes = fs.into_iter().collect(),
                            Item::RouteAdd(f) => {
                                self.rx.routes.insert(f);
                            }
                            Item::RouteRemove(f) => {
                                self.rx.routes.remove(&f);
                            }
                            Item::Retain(..) | Item::Session(_) | Item::GroupPublish(..) => {}
                        }
                    }
                    self.rx.inbound.processed(seq, awaited);
                }
            }
        }
        // What was cut mid-frame goes back to the front of the wire.
        let mut rest = arrived;
        rest.extend_from_slice(&self.to_rx);
        self.to_rx = rest;
        if let Some(ack) = self.rx.inbound.take_ack() {
            ack.encode(self.now, &mut self.to_tx);
        }
    }

    fn finish_awaited(&mut self) {
        if let Some(seq) = self.rx.awaited.pop_front() {
            self.rx.inbound.item_done(seq);
            if let Some(ack) = self.rx.inbound.take_ack() {
                if self.connected {
                    ack.encode(self.now, &mut self.to_tx);
                }
            }
        }
    }

    fn deliver_to_tx(&mut self) {
        while let Some(frame) = Frame::decode(&mut self.to_tx, self.now).unwrap() {
            let Frame::Ack(seq) = frame else {
                panic!("only acks come back")
            };
            let mut done = Vec::new();
            self.out.on_ack(seq, &mut done);
            for t in done {
                let n = self.tokens[&t];
                // Acknowledged only once the receiver had taken it.
                assert!(
                    self.ever_taken.contains(&n),
                    "token of {n} done before it arrived"
                );
                self.finished.insert(n);
                self.done.push(t);
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.push_publish(),
            30..=34 => self.change_route(),
            35..=49 => self.out.cut(),
            50..=64 if self.connected => {
                self.out.poll_transmit(self.now, &mut self.to_rx);
            }
            65..=79 if self.connected => self.deliver_to_rx(),
            80..=89 => self.finish_awaited(),
            90..=94 if self.connected => self.deliver_to_tx(),
            95..=97 if self.connected => self.cut_connection(),
            98 if self.rng.chance(300) => self.restart_receiver(),
            _ if !self.connected => self.connect(),
            _ => {}
        }
    }

    /// Lets everything settle: a good connection until nothing moves.
    fn settle(&mut self) {
        if !self.connected {
            self.connect();
        }
        self.out.cut();
        for _ in 0..100 {
            self.out.poll_transmit(self.now, &mut self.to_rx);
            self.deliver_prefix(self.to_rx.len());
            while !self.rx.awaited.is_empty() {
                self.finish_awaited();
            }
            self.deliver_to_tx();
            if self.out.unacked() == 0 && self.out.waiting_bytes() == 0 {
                return;
            }
        }
        panic!("the stream never settled");
    }
}

#[test]
fn streams_keep_their_promises_over_a_hostile_network() {
    for seed in 0..400u64 {
        let mut run = Run::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for _ in 0..2_000 {
            run.step();
        }
        run.settle();
        // One life of the receiver takes each publish at most once, in order.
        let life = &run.rx.taken;
        for w in life.windows(2) {
            assert!(
                w[0] < w[1],
                "seed {seed}: {} then {} in one life",
                w[0],
                w[1]
            );
        }
        // Every publish the sender accepted reached a receiver, and every
        // token finished exactly once.
        for n in run.tokens.values() {
            assert!(run.ever_taken.contains(n), "seed {seed}: {n} lost");
        }
        let mut done = run.done.clone();
        done.sort_unstable();
        let before = done.len();
        done.dedup();
        assert_eq!(done.len(), before, "seed {seed}: a token finished twice");
        assert_eq!(
            done.len() as u64,
            run.next_msg,
            "seed {seed}: tokens left over"
        );
        // The receiver's view of the sender's routes is the sender's.
        assert_eq!(run.rx.routes, run.routes, "seed {seed}: routes differ");
        assert_eq!(run.out.held_bytes(), 0);
    }
}
