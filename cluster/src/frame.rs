//! The link's wire format: length-prefixed frames, the handshake's and the
//! data's, and the messages and route changes they carry.
//!
//! Every frame is `u32` length (big-endian, of what follows), one kind
//! byte, then the body. Strings are `u16` length + UTF-8; a message's
//! properties are written as in a v5 PUBLISH.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

use vmqtt::broker::persist::OutState;
use vmqtt::broker::{
    Epoch, Forward, Message, MessageUid, NodeId, RetainVersion, SessionMsg, SessionTransfer,
    ShardId, Subscription, TransferEntry,
};
use vmqtt::codec::{ProtocolVersion, PublishProperties, QoS, RetainHandling, SubscriptionOptions};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId, PacketId};

/// The link protocol's version, checked in the handshake (4: session
/// messages; 5: message ids, forwarded deliveries, handover
/// acknowledgements).
pub const PROTOCOL_VERSION: u16 = 5;

/// The largest frame accepted (a batch of messages): 64 MiB.
pub const MAX_FRAME: usize = 64 << 20;

/// A batch's sequence number within its stream (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// A link's first frame, from each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The cluster's name.
    pub cluster: String,
    /// The sending node.
    pub node: NodeId,
    /// Its epoch (etcd lease).
    pub epoch: Epoch,
    /// The sending shard (the dialer's: the stream's; the acceptor's: the
    /// shard that serves the link).
    pub shard: u16,
    /// A random challenge the other side proves the secret over.
    pub nonce: [u8; 16],
}

/// One frame of a link.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The handshake's first frame.
    Hello(Hello),
    /// HMAC-SHA256 proof of the secret over the other side's nonce.
    Proof([u8; 32]),
    /// Acceptor to dialer, once the dialer is proven: the last batch it
    /// received of this stream (`Seq(0)`: none, the stream is new to it).
    Welcome {
        /// Last batch received.
        received: Seq,
    },
    /// The handshake failed; the reason, then the link closes.
    Refuse(String),
    /// Dialer to acceptor: a batch of items.
    Batch {
        /// Its sequence number.
        seq: Seq,
        /// What it carries, in order.
        items: Vec<Item>,
    },
    /// Acceptor to dialer: every batch up to this one is done (its
    /// deliveries stored where they need to be).
    Ack(Seq),
    /// Dialer to acceptor, every second on an established link: answered
    /// at once with a [`Frame::Pong`] of the same number (the link's round
    /// trip, and proof that the peer still reads).
    Ping(u64),
    /// Acceptor to dialer: the answer to the [`Frame::Ping`] of its number.
    Pong(u64),
}

/// What a batch carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A message for the receiving node's subscribers, and the shared
    /// groups (`$share/...` filters) whose member there is to take it (the
    /// sending node picked that node for them).
    Publish(Message, Vec<TopicFilter>),
    /// A retained message (or, empty, its deletion) for every replica,
    /// with the update's version (the newest wins).
    Retain(Message, RetainVersion),
    /// Every filter the sending node has subscribers of: replaces what the
    /// receiver knew of the sender's routes.
    Routes(Vec<TopicFilter>),
    /// The sending node now has subscribers of this filter.
    RouteAdd(TopicFilter),
    /// The sending node no longer has subscribers of this filter.
    RouteRemove(TopicFilter),
    /// About one client's session: claims, handovers, registrations.
    Session(SessionMsg),
    /// A message for the receiving node's members of these shared groups
    /// only (not its plain subscribers): what a member that dropped left
    /// unfinished, on a node where its group has no member online.
    GroupPublish(Message, Vec<TopicFilter>),
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// An unknown frame or item kind.
    #[error("unknown {what} kind {kind}")]
    UnknownKind {
        /// "frame" or "item".
        what: &'static str,
        /// The byte.
        kind: u8,
    },
    /// The body ended early or had bytes left.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

const HELLO: u8 = 1;
const PROOF: u8 = 2;
const WELCOME: u8 = 3;
const REFUSE: u8 = 4;
const BATCH: u8 = 5;
const ACK: u8 = 6;
const PING: u8 = 7;
const PONG: u8 = 8;

const PUBLISH: u8 = 1;
const RETAIN: u8 = 2;
const ROUTES: u8 = 3;
const ROUTE_ADD: u8 = 4;
const ROUTE_REMOVE: u8 = 5;
const SESSION: u8 = 6;
const GROUP_PUBLISH: u8 = 7;

const S_CLAIM: u8 = 1;
const S_GRANTED: u8 = 2;
const S_NOT_OWNER: u8 = 3;
const S_TAKE: u8 = 4;
const S_HANDOVER: u8 = 5;
const S_REGISTER: u8 = 6;
const S_RELEASE: u8 = 7;
const S_DROP: u8 = 8;
const S_TOOK: u8 = 9;
const S_FORWARD: u8 = 10;

/// No expiry, on the wire.
const NO_EXPIRY: u64 = u64::MAX;

impl Frame {
    /// Appends the frame to `buf`; `now` turns a message's expiry time into
    /// the time it has left (counted down across the hop).
    pub fn encode(&self, now: Instant, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        match self {
            Frame::Hello(h) => {
                buf.put_u8(HELLO);
                buf.put_u16(h.version);
                put_str(buf, &h.cluster);
                buf.put_u16(h.node.0);
                buf.put_u64(h.epoch.0);
                buf.put_u16(h.shard);
                buf.put_slice(&h.nonce);
            }
            Frame::Proof(mac) => {
                buf.put_u8(PROOF);
                buf.put_slice(mac);
            }
            Frame::Welcome { received } => {
                buf.put_u8(WELCOME);
                buf.put_u64(received.0);
            }
            Frame::Refuse(why) => {
                buf.put_u8(REFUSE);
                put_str(buf, why);
            }
            Frame::Batch { seq, items } => {
                buf.put_u8(BATCH);
                buf.put_u64(seq.0);
                let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
                buf.put_u32(count);
                for item in items.iter().take(count as usize) {
                    encode_item(item, now, buf);
                }
            }
            Frame::Ack(seq) => {
                buf.put_u8(ACK);
                buf.put_u64(seq.0);
            }
            Frame::Ping(n) => {
                buf.put_u8(PING);
                buf.put_u64(*n);
            }
            Frame::Pong(n) => {
                buf.put_u8(PONG);
                buf.put_u64(*n);
            }
        }
        let len = buf.len() - start - 4;
        // A frame's length fits: batches are cut far below 4 GiB.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Takes one whole frame off the front of `buf`, or `Ok(None)` when
    /// more bytes are needed. `now` turns the time a message has left back
    /// into an expiry time.
    pub fn decode(buf: &mut BytesMut, now: Instant) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let frame = decode_body(&mut body, now)?;
        if body.has_remaining() {
            return Err(FrameError::Malformed("frame: bytes after its end"));
        }
        Ok(Some(frame))
    }
}

fn decode_body(b: &mut Bytes, now: Instant) -> Result<Frame, FrameError> {
    let kind = get_u8(b, "frame")?;
    Ok(match kind {
        HELLO => {
            let version = get_u16(b, "hello")?;
            let cluster = get_str(b, "hello")?.as_str().to_owned();
            let node = NodeId(get_u16(b, "hello")?);
            let epoch = Epoch(get_u64(b, "hello")?);
            let shard = get_u16(b, "hello")?;
            let mut nonce = [0; 16];
            take(b, &mut nonce, "hello")?;
            Frame::Hello(Hello {
                version,
                cluster,
                node,
                epoch,
                shard,
                nonce,
            })
        }
        PROOF => {
            let mut mac = [0; 32];
            take(b, &mut mac, "proof")?;
            Frame::Proof(mac)
        }
        WELCOME => Frame::Welcome {
            received: Seq(get_u64(b, "welcome")?),
        },
        REFUSE => Frame::Refuse(get_str(b, "refuse")?.as_str().to_owned()),
        BATCH => {
            let seq = Seq(get_u64(b, "batch")?);
            let count = get_u32(b, "batch")? as usize;
            // Each item takes at least two bytes: no allocation beyond what
            // the frame can hold.
            let mut items = Vec::with_capacity(count.min(b.remaining() / 2));
            for _ in 0..count {
                items.push(decode_item(b, now)?);
            }
            Frame::Batch { seq, items }
        }
        ACK => Frame::Ack(Seq(get_u64(b, "ack")?)),
        PING => Frame::Ping(get_u64(b, "ping")?),
        PONG => Frame::Pong(get_u64(b, "pong")?),
        kind => {
            return Err(FrameError::UnknownKind {
                what: "frame",
                kind,
            })
        }
    })
}

fn encode_item(item: &Item, now: Instant, buf: &mut BytesMut) {
    match item {
        Item::Publish(m, groups) => {
            buf.put_u8(PUBLISH);
            encode_message(m, now, buf);
            put_filters(buf, groups);
        }
        Item::GroupPublish(m, groups) => {
            buf.put_u8(GROUP_PUBLISH);
            encode_message(m, now, buf);
            put_filters(buf, groups);
        }
        Item::Retain(m, v) => {
            buf.put_u8(RETAIN);
            buf.put_u64(v.ms);
            buf.put_u16(v.node.0);
            buf.put_u16(u16::try_from(v.shard.get()).unwrap_or(u16::MAX));
            encode_message(m, now, buf);
        }
        Item::Routes(filters) => {
            buf.put_u8(ROUTES);
            put_filters(buf, filters);
        }
        Item::RouteAdd(f) => {
            buf.put_u8(ROUTE_ADD);
            put_str(buf, f.as_str());
        }
        Item::RouteRemove(f) => {
            buf.put_u8(ROUTE_REMOVE);
            put_str(buf, f.as_str());
        }
        Item::Session(m) => {
            buf.put_u8(SESSION);
            encode_session(m, now, buf);
        }
    }
}

fn encode_session(m: &SessionMsg, now: Instant, buf: &mut BytesMut) {
    match m {
        SessionMsg::Claim { client, claim } => {
            buf.put_u8(S_CLAIM);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
        }
        SessionMsg::Granted {
            client,
            claim,
            epoch,
            previous,
        } => {
            buf.put_u8(S_GRANTED);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
            buf.put_u64(*epoch);
            // Node 0 is no node.
            buf.put_u16(previous.map_or(0, |n| n.0));
        }
        SessionMsg::NotOwner { client, claim } => {
            buf.put_u8(S_NOT_OWNER);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
        }
        SessionMsg::Take {
            client,
            claim,
            epoch,
            clean,
        } => {
            buf.put_u8(S_TAKE);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
            buf.put_u64(*epoch);
            buf.put_u8(u8::from(*clean));
        }
        SessionMsg::Handover {
            client,
            claim,
            session,
        } => {
            buf.put_u8(S_HANDOVER);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
            match session {
                None => buf.put_u8(0),
                Some(s) => {
                    buf.put_u8(1);
                    encode_transfer(s, now, buf);
                }
            }
        }
        SessionMsg::Register { client, epoch } => {
            buf.put_u8(S_REGISTER);
            put_str(buf, client.as_str());
            buf.put_u64(*epoch);
        }
        SessionMsg::Release { client } => {
            buf.put_u8(S_RELEASE);
            put_str(buf, client.as_str());
        }
        SessionMsg::Drop { client, into } => {
            buf.put_u8(S_DROP);
            put_str(buf, client.as_str());
            buf.put_u16(into.0);
        }
        SessionMsg::Took { client, claim } => {
            buf.put_u8(S_TOOK);
            put_str(buf, client.as_str());
            buf.put_u64(*claim);
        }
        SessionMsg::Forward(f) => {
            buf.put_u8(S_FORWARD);
            put_str(buf, f.client.as_str());
            buf.put_u8(f.qos as u8 | u8::from(f.retain) << 2);
            put_sub_ids(buf, &f.sub_ids);
            encode_message(&f.msg, now, buf);
        }
    }
}

fn put_sub_ids(buf: &mut BytesMut, ids: &[u32]) {
    buf.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for i in ids {
        buf.put_u32(*i);
    }
}

fn get_sub_ids(b: &mut Bytes) -> Result<Vec<u32>, FrameError> {
    let k = get_count(b, 4, "session: subscription ids")?;
    let mut sub_ids = Vec::with_capacity(k);
    for _ in 0..k {
        sub_ids.push(get_u32(b, "session: subscription ids")?);
    }
    Ok(sub_ids)
}

fn encode_transfer(s: &SessionTransfer, now: Instant, buf: &mut BytesMut) {
    buf.put_u8(s.protocol as u8);
    buf.put_u32(s.expiry_interval);
    buf.put_u32(u32::try_from(s.subscriptions.len()).unwrap_or(u32::MAX));
    for (f, sub) in &s.subscriptions {
        put_str(buf, f.as_str());
        let o = sub.options;
        buf.put_u8(
            o.qos as u8
                | u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling as u8) << 4,
        );
        // Subscription identifiers are 1..=268,435,455: 0 is none.
        buf.put_u32(sub.id.unwrap_or(0));
    }
    buf.put_u32(u32::try_from(s.queue.len()).unwrap_or(u32::MAX));
    for e in &s.queue {
        let (state, id) = match e.state {
            OutState::Queued => (0, 0),
            OutState::AwaitPubAck(id) => (1, id.get()),
            OutState::AwaitPubRec(id) => (2, id.get()),
            OutState::AwaitPubComp(id) => (3, id.get()),
        };
        buf.put_u8(state | (e.qos as u8) << 2 | u8::from(e.retain) << 4);
        buf.put_u16(id);
        put_sub_ids(buf, &e.sub_ids);
        encode_message(&e.msg, now, buf);
    }
    buf.put_u32(u32::try_from(s.inbound_qos2.len()).unwrap_or(u32::MAX));
    for id in &s.inbound_qos2 {
        buf.put_u16(id.get());
    }
}

fn get_client(b: &mut Bytes) -> Result<ClientId, FrameError> {
    Ok(ClientId::new(get_str(b, "session: client id")?))
}

fn get_packet_id(b: &mut Bytes) -> Result<PacketId, FrameError> {
    PacketId::new(get_u16(b, "session: packet id")?)
        .ok_or(FrameError::Malformed("session: packet id 0"))
}

/// A count of items of at least `min` bytes each, no more than the bytes
/// left could hold (a hostile count allocates nothing).
fn get_count(b: &mut Bytes, min: usize, what: &'static str) -> Result<usize, FrameError> {
    let n = get_u32(b, what)? as usize;
    if n > b.remaining() / min.max(1) {
        return Err(FrameError::Malformed(what));
    }
    Ok(n)
}

fn decode_session(b: &mut Bytes, now: Instant) -> Result<SessionMsg, FrameError> {
    let kind = get_u8(b, "session")?;
    Ok(match kind {
        S_CLAIM => SessionMsg::Claim {
            client: get_client(b)?,
            claim: get_u64(b, "session: claim")?,
        },
        S_GRANTED => SessionMsg::Granted {
            client: get_client(b)?,
            claim: get_u64(b, "session: claim")?,
            epoch: get_u64(b, "session: epoch")?,
            previous: Some(NodeId(get_u16(b, "session: node")?)).filter(|n| n.0 != 0),
        },
        S_NOT_OWNER => SessionMsg::NotOwner {
            client: get_client(b)?,
            claim: get_u64(b, "session: claim")?,
        },
        S_TAKE => SessionMsg::Take {
            client: get_client(b)?,
            claim: get_u64(b, "session: claim")?,
            epoch: get_u64(b, "session: epoch")?,
            clean: get_u8(b, "session: clean")? != 0,
        },
        S_HANDOVER => {
            let client = get_client(b)?;
            let claim = get_u64(b, "session: claim")?;
            let session = match get_u8(b, "session: handover")? {
                0 => None,
                _ => Some(Box::new(decode_transfer(b, now)?)),
            };
            SessionMsg::Handover {
                client,
                claim,
                session,
            }
        }
        S_REGISTER => SessionMsg::Register {
            client: get_client(b)?,
            epoch: get_u64(b, "session: epoch")?,
        },
        S_RELEASE => SessionMsg::Release {
            client: get_client(b)?,
        },
        S_DROP => SessionMsg::Drop {
            client: get_client(b)?,
            into: NodeId(get_u16(b, "session: node")?),
        },
        S_TOOK => SessionMsg::Took {
            client: get_client(b)?,
            claim: get_u64(b, "session: claim")?,
        },
        S_FORWARD => {
            let client = get_client(b)?;
            let flags = get_u8(b, "session: forward")?;
            let qos = QoS::from_u8(flags & 3)
                .map_err(|_| FrameError::Malformed("session: forward qos"))?;
            let sub_ids = get_sub_ids(b)?;
            let msg = Arc::new(decode_message(b, now)?);
            SessionMsg::Forward(Box::new(Forward {
                client,
                msg,
                qos,
                retain: flags & 4 != 0,
                sub_ids,
            }))
        }
        kind => {
            return Err(FrameError::UnknownKind {
                what: "session message",
                kind,
            })
        }
    })
}

fn decode_transfer(b: &mut Bytes, now: Instant) -> Result<SessionTransfer, FrameError> {
    let protocol = match get_u8(b, "session: protocol")? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err(FrameError::Malformed("session: protocol")),
    };
    let expiry_interval = get_u32(b, "session: expiry")?;
    let n = get_count(b, 7, "session: subscriptions")?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let f = get_filter(b)?;
        let byte = get_u8(b, "session: options")?;
        let bad = FrameError::Malformed("session: options");
        let options = SubscriptionOptions {
            qos: QoS::from_u8(byte & 3).map_err(|_| bad.clone())?,
            no_local: byte & 4 != 0,
            retain_as_published: byte & 8 != 0,
            retain_handling: match (byte >> 4) & 3 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(bad),
            },
        };
        let id = Some(get_u32(b, "session: subscription id")?).filter(|&i| i != 0);
        subscriptions.push((f, Subscription { options, id }));
    }
    let n = get_count(b, 8, "session: queue")?;
    let mut queue = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = get_u8(b, "session: entry")?;
        let qos = QoS::from_u8((flags >> 2) & 3)
            .map_err(|_| FrameError::Malformed("session: entry qos"))?;
        let raw_id = get_u16(b, "session: entry")?;
        let id = || PacketId::new(raw_id).ok_or(FrameError::Malformed("session: packet id 0"));
        let state = match flags & 3 {
            0 => OutState::Queued,
            1 => OutState::AwaitPubAck(id()?),
            2 => OutState::AwaitPubRec(id()?),
            _ => OutState::AwaitPubComp(id()?),
        };
        let sub_ids = get_sub_ids(b)?;
        queue.push(TransferEntry {
            msg: Arc::new(decode_message(b, now)?),
            qos,
            retain: flags & 16 != 0,
            sub_ids,
            state,
        });
    }
    let n = get_count(b, 2, "session: inbound qos 2")?;
    let mut inbound_qos2 = Vec::with_capacity(n);
    for _ in 0..n {
        inbound_qos2.push(get_packet_id(b)?);
    }
    Ok(SessionTransfer {
        protocol,
        expiry_interval,
        subscriptions,
        queue,
        inbound_qos2,
    })
}

fn decode_item(b: &mut Bytes, now: Instant) -> Result<Item, FrameError> {
    let kind = get_u8(b, "item")?;
    Ok(match kind {
        PUBLISH => {
            let m = decode_message(b, now)?;
            Item::Publish(m, get_filters(b, "publish groups")?)
        }
        RETAIN => {
            let version = RetainVersion {
                ms: get_u64(b, "retain version")?,
                node: NodeId(get_u16(b, "retain version")?),
                shard: ShardId::new(get_u16(b, "retain version")?),
            };
            Item::Retain(decode_message(b, now)?, version)
        }
        ROUTES => Item::Routes(get_filters(b, "routes")?),
        ROUTE_ADD => Item::RouteAdd(get_filter(b)?),
        ROUTE_REMOVE => Item::RouteRemove(get_filter(b)?),
        SESSION => Item::Session(decode_session(b, now)?),
        GROUP_PUBLISH => {
            let m = decode_message(b, now)?;
            Item::GroupPublish(m, get_filters(b, "group publish groups")?)
        }
        kind => return Err(FrameError::UnknownKind { what: "item", kind }),
    })
}

/// A count, then each filter.
fn put_filters(buf: &mut BytesMut, filters: &[TopicFilter]) {
    let count = u32::try_from(filters.len()).unwrap_or(u32::MAX);
    buf.put_u32(count);
    for f in filters.iter().take(count as usize) {
        put_str(buf, f.as_str());
    }
}

fn get_filters(b: &mut Bytes, what: &'static str) -> Result<Vec<TopicFilter>, FrameError> {
    let count = get_u32(b, what)? as usize;
    let mut filters = Vec::with_capacity(count.min(b.remaining() / 2));
    for _ in 0..count {
        filters.push(get_filter(b)?);
    }
    Ok(filters)
}

fn encode_message(m: &Message, now: Instant, buf: &mut BytesMut) {
    put_str(buf, m.topic.as_str());
    buf.put_u8(m.qos as u8 | (u8::from(m.retain) << 2) | (u8::from(m.uid.is_some()) << 3));
    if let Some(u) = m.uid {
        buf.put_u16(u.node);
        buf.put_u16(u.shard);
        buf.put_u64(u.seq);
    }
    let left = m.expires_at.map_or(NO_EXPIRY, |t| {
        let ms = t.saturating_duration_since(now).as_millis();
        u64::try_from(ms)
            .unwrap_or(NO_EXPIRY - 1)
            .min(NO_EXPIRY - 1)
    });
    buf.put_u64(left);
    match &m.origin {
        Some(c) => {
            buf.put_u8(1);
            put_str(buf, c.as_str());
        }
        None => buf.put_u8(0),
    }
    // Properties the core keeps in a message encode within the v5 limits it
    // checked on arrival; a failure here would be a core bug: sent without.
    if m.properties.encode_standalone(buf).is_err() {
        buf.put_u8(0);
    }
    let len = u32::try_from(m.payload.len()).unwrap_or(u32::MAX);
    buf.put_u32(len);
    buf.put_slice(&m.payload[..len as usize]);
}

fn decode_message(b: &mut Bytes, now: Instant) -> Result<Message, FrameError> {
    let topic = TopicName::new(get_str(b, "message")?)
        .map_err(|_| FrameError::Malformed("message: topic"))?;
    let flags = get_u8(b, "message")?;
    let qos = QoS::from_u8(flags & 3).map_err(|_| FrameError::Malformed("message: qos"))?;
    let retain = flags & 4 != 0;
    let uid = if flags & 8 != 0 {
        Some(MessageUid {
            node: get_u16(b, "message: id")?,
            shard: get_u16(b, "message: id")?,
            seq: get_u64(b, "message: id")?,
        })
    } else {
        None
    };
    let left = get_u64(b, "message")?;
    let expires_at = (left != NO_EXPIRY).then(|| now + Duration::from_millis(left));
    let origin = match get_u8(b, "message")? {
        0 => None,
        _ => Some(ClientId::new(get_str(b, "message")?)),
    };
    let properties = PublishProperties::decode_standalone(b)
        .map_err(|_| FrameError::Malformed("message: properties"))?;
    let len = get_u32(b, "message")? as usize;
    if b.remaining() < len {
        return Err(FrameError::Malformed("message: payload"));
    }
    let payload = b.split_to(len);
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        properties,
        expires_at,
        origin,
        uid,
    })
}

fn put_str(buf: &mut BytesMut, s: &str) {
    // Topics, filters, client ids and cluster names are all below 64 KiB.
    let len = s.len().min(u16::MAX as usize);
    buf.put_u16(len as u16);
    buf.put_slice(&s.as_bytes()[..len]);
}

fn get_filter(b: &mut Bytes) -> Result<TopicFilter, FrameError> {
    TopicFilter::new(get_str(b, "route")?).map_err(|_| FrameError::Malformed("route: filter"))
}

fn get_str(b: &mut Bytes, what: &'static str) -> Result<ByteStr, FrameError> {
    let len = get_u16(b, what)? as usize;
    if b.remaining() < len {
        return Err(FrameError::Malformed(what));
    }
    ByteStr::from_utf8(b.split_to(len)).map_err(|_| FrameError::Malformed(what))
}

fn take(b: &mut Bytes, out: &mut [u8], what: &'static str) -> Result<(), FrameError> {
    if b.remaining() < out.len() {
        return Err(FrameError::Malformed(what));
    }
    b.copy_to_slice(out);
    Ok(())
}

fn get_u8(b: &mut Bytes, what: &'static str) -> Result<u8, FrameError> {
    if b.remaining() < 1 {
        return Err(FrameError::Malformed(what));
    }
    Ok(b.get_u8())
}

fn get_u16(b: &mut Bytes, what: &'static str) -> Result<u16, FrameError> {
    if b.remaining() < 2 {
        return Err(FrameError::Malformed(what));
    }
    Ok(b.get_u16())
}

fn get_u32(b: &mut Bytes, what: &'static str) -> Result<u32, FrameError> {
    if b.remaining() < 4 {
        return Err(FrameError::Malformed(what));
    }
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64, FrameError> {
    if b.remaining() < 8 {
        return Err(FrameError::Malformed(what));
    }
    Ok(b.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmqtt::codec::properties::UserProperties;

    fn msg(topic: &str) -> Message {
        Message {
            topic: TopicName::try_from(topic).unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: Some(ClientId::new("pub-1".into())),
            uid: None,
        }
    }

    fn roundtrip(frame: &Frame, now: Instant) -> Frame {
        let mut buf = BytesMut::new();
        frame.encode(now, &mut buf);
        // Byte by byte: a partial frame is never taken.
        let mut input = BytesMut::new();
        for (i, b) in buf.iter().enumerate() {
            input.put_u8(*b);
            let got = Frame::decode(&mut input, now).unwrap();
            if i + 1 < buf.len() {
                assert!(got.is_none());
            } else {
                assert!(input.is_empty());
                return got.unwrap();
            }
        }
        unreachable!()
    }

    #[test]
    fn every_frame_round_trips() {
        let now = Instant::now();
        let mut m = msg("a/b");
        m.properties.content_type = Some("text/plain".into());
        m.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        m.properties.response_topic = Some(TopicName::try_from("re/ply").unwrap());
        m.properties.payload_format_indicator = Some(true);
        let users: UserProperties = vec![("k".into(), "v".into())];
        m.properties.user_properties = users;
        let frames = [
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster: "fleet".into(),
                node: NodeId(7),
                epoch: Epoch(0xdead_beef),
                shard: 3,
                nonce: [9; 16],
            }),
            Frame::Proof([5; 32]),
            Frame::Welcome { received: Seq(41) },
            Frame::Refuse("stale epoch".into()),
            Frame::Ack(Seq(u64::MAX)),
            Frame::Ping(7),
            Frame::Pong(u64::MAX),
            Frame::Batch {
                seq: Seq(2),
                items: vec![
                    Item::Publish(m.clone(), Vec::new()),
                    Item::Publish(
                        m.clone(),
                        vec![TopicFilter::try_from("$share/g/a/+").unwrap()],
                    ),
                    Item::Retain(
                        Message {
                            payload: Bytes::new(),
                            origin: None,
                            ..msg("x")
                        },
                        RetainVersion {
                            ms: 1_800_000_000_123,
                            node: NodeId(7),
                            shard: ShardId::new(3),
                        },
                    ),
                    Item::Routes(vec![
                        TopicFilter::try_from("a/+").unwrap(),
                        TopicFilter::try_from("#").unwrap(),
                    ]),
                    Item::RouteAdd(TopicFilter::try_from("$share/g/t").unwrap()),
                    Item::RouteRemove(TopicFilter::try_from("x/#").unwrap()),
                ],
            },
        ];
        for f in &frames {
            assert_eq!(&roundtrip(f, now), f);
        }
    }

    /// A session with something of everything in it.
    fn transfer() -> SessionTransfer {
        let pid = |n| PacketId::new(n).unwrap();
        let sub = |qos, id| Subscription {
            options: SubscriptionOptions {
                qos,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            id,
        };
        let entry = |qos, state| TransferEntry {
            msg: Arc::new(msg("t/1")),
            qos,
            retain: true,
            sub_ids: vec![1, 268_435_455],
            state,
        };
        SessionTransfer {
            protocol: ProtocolVersion::V5,
            expiry_interval: 3600,
            subscriptions: vec![
                ("t/#".try_into().unwrap(), sub(QoS::ExactlyOnce, Some(7))),
                ("$share/g/a".try_into().unwrap(), sub(QoS::AtMostOnce, None)),
            ],
            queue: vec![
                entry(QoS::AtLeastOnce, OutState::AwaitPubAck(pid(1))),
                entry(QoS::ExactlyOnce, OutState::AwaitPubRec(pid(2))),
                entry(QoS::ExactlyOnce, OutState::AwaitPubComp(pid(65535))),
                entry(QoS::AtLeastOnce, OutState::Queued),
            ],
            inbound_qos2: vec![pid(9), pid(10)],
        }
    }

    fn sessions() -> Vec<SessionMsg> {
        let client = ClientId::new("dev-1".into());
        vec![
            SessionMsg::Claim {
                client: client.clone(),
                claim: 1,
            },
            SessionMsg::Granted {
                client: client.clone(),
                claim: 2,
                epoch: 9,
                previous: Some(NodeId(3)),
            },
            SessionMsg::Granted {
                client: client.clone(),
                claim: 2,
                epoch: 1,
                previous: None,
            },
            SessionMsg::NotOwner {
                client: client.clone(),
                claim: 3,
            },
            SessionMsg::Take {
                client: client.clone(),
                claim: 4,
                epoch: 7,
                clean: true,
            },
            SessionMsg::Handover {
                client: client.clone(),
                claim: 5,
                session: None,
            },
            SessionMsg::Handover {
                client: client.clone(),
                claim: 5,
                session: Some(Box::new(transfer())),
            },
            SessionMsg::Register {
                client: client.clone(),
                epoch: 0,
            },
            SessionMsg::Release {
                client: client.clone(),
            },
            SessionMsg::Drop {
                client: client.clone(),
                into: NodeId(2),
            },
            SessionMsg::Took {
                client: client.clone(),
                claim: 6,
            },
            SessionMsg::Forward(Box::new(Forward {
                client,
                msg: Arc::new(Message {
                    uid: Some(MessageUid {
                        node: 3,
                        shard: 1,
                        seq: u64::MAX,
                    }),
                    ..msg("t/9")
                }),
                qos: QoS::ExactlyOnce,
                retain: true,
                sub_ids: vec![4],
            })),
        ]
    }

    #[test]
    fn session_messages_round_trip_and_truncations_are_errors() {
        let now = Instant::now();
        for m in sessions() {
            let f = Frame::Batch {
                seq: Seq(3),
                items: vec![Item::Session(m)],
            };
            assert_eq!(roundtrip(&f, now), f);
            let mut buf = BytesMut::new();
            f.encode(now, &mut buf);
            for cut in 5..buf.len() {
                let mut b = BytesMut::from(&buf[..cut]);
                let len = (cut - 4) as u32;
                b[..4].copy_from_slice(&len.to_be_bytes());
                assert!(Frame::decode(&mut b, now).is_err(), "cut at {cut}");
            }
        }
        // A handover announcing four billion subscriptions in a few bytes.
        let mut buf = BytesMut::new();
        Frame::Batch {
            seq: Seq(1),
            items: vec![Item::Session(SessionMsg::Handover {
                client: ClientId::new("c".into()),
                claim: 1,
                session: Some(Box::new(SessionTransfer {
                    subscriptions: Vec::new(),
                    queue: Vec::new(),
                    inbound_qos2: Vec::new(),
                    ..transfer()
                })),
            })],
        }
        .encode(now, &mut buf);
        // The subscription count sits after protocol (1) and expiry (4).
        let at = buf.len() - 12;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Frame::decode(&mut buf, now).is_err());
    }

    #[test]
    fn expiry_is_counted_down_across_the_hop() {
        let sent = Instant::now();
        let mut m = msg("t");
        m.expires_at = Some(sent + Duration::from_secs(10));
        let mut buf = BytesMut::new();
        Frame::Batch {
            seq: Seq(1),
            items: vec![Item::Publish(m, Vec::new())],
        }
        .encode(sent + Duration::from_secs(4), &mut buf);
        // Decoded on a node whose clock is elsewhere: 6 s left from its now.
        let there = sent + Duration::from_secs(1000);
        let Some(Frame::Batch { items, .. }) = Frame::decode(&mut buf, there).unwrap() else {
            panic!("not a batch")
        };
        let Item::Publish(m, _) = &items[0] else {
            panic!("not a publish")
        };
        assert_eq!(m.expires_at, Some(there + Duration::from_secs(6)));
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let now = Instant::now();
        let mut big = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(
            Frame::decode(&mut big, now),
            Err(FrameError::TooLarge(_))
        ));
        let mut unknown = BytesMut::from(&[0, 0, 0, 1, 99][..]);
        assert!(matches!(
            Frame::decode(&mut unknown, now),
            Err(FrameError::UnknownKind { kind: 99, .. })
        ));
        // A batch announcing a billion items in a few bytes.
        let mut lie = BytesMut::from(&[0, 0, 0, 13, BATCH, 0, 0, 0, 0, 0, 0, 0, 1][..]);
        lie.put_u32(1_000_000_000);
        lie[3] = 13;
        assert!(Frame::decode(&mut lie, now).is_err());
        // Every truncation of a valid batch, relabelled as whole.
        let mut buf = BytesMut::new();
        Frame::Batch {
            seq: Seq(1),
            items: vec![
                Item::Publish(msg("a/b"), vec!["$share/g/a/#".try_into().unwrap()]),
                Item::GroupPublish(msg("a/c"), vec!["$share/g/a/#".try_into().unwrap()]),
                Item::RouteAdd("a/#".try_into().unwrap()),
            ],
        }
        .encode(now, &mut buf);
        for cut in 5..buf.len() {
            let mut b = BytesMut::from(&buf[..cut]);
            let len = (cut - 4) as u32;
            b[..4].copy_from_slice(&len.to_be_bytes());
            assert!(Frame::decode(&mut b, now).is_err(), "cut at {cut}");
        }
        // A wildcard in a published topic is refused.
        let mut m = BytesMut::new();
        Frame::Batch {
            seq: Seq(1),
            items: vec![Item::Publish(msg("a/b"), Vec::new())],
        }
        .encode(now, &mut m);
        let at = m.iter().position(|&b| b == b'b').unwrap();
        m[at] = b'+';
        assert!(Frame::decode(&mut m, now).is_err());
    }
}
