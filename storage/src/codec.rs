//! Value bytes: the versioned binary encoding of every record, compact and
//! big-endian. Keys are in [`crate::keys`]. Schema version
//! [`SCHEMA_VERSION`] (3) is written; version 1 session values and version
//! 2 retained values are read by the migrations only (`decode_session_v1`;
//! a v2 retained value is a v3 one without its version).
//!
//! Primitives: `u8`, `u16`, `u32`, `u64` big-endian; `str` = `len:u16` +
//! UTF-8 bytes (MQTT strings are at most 65,535 bytes); `bin` = `len:u32` +
//! bytes; `rest` = every remaining byte. Optional fields are announced by a
//! flag bit and otherwise absent.
//!
//! ```text
//! session (v2)   protocol:u8 expiry_interval:u32 flags:u8
//!                  flags 0x01: disconnected_at_ms:u64
//!                  flags 0x02: will = wflags:u8 will_delay:u32 topic:str props payload:bin
//!                    wflags: bits 0-1 qos, 0x04 retain, 0x08 will delay present
//! session (v1)   same, but the will has no will_delay:u32 and no 0x08 flag
//! subscription   options:u8 (v5 SUBSCRIBE layout) subscription_id:u32 (0 = none)
//! message        flags:u8 [expires_at_ms:u64] topic:str [origin:str] props payload:rest
//!                  flags: bits 0-1 qos, 0x04 retain, 0x08 expiry present, 0x10 origin present
//! queue entry    message_id:u64 flags:u8 [packet_id:u16] n:u16 subscription_id:u32 * n
//!                  flags: bits 0-1 qos, 0x04 retain, bits 4-5 state
//!                  (0 queued, 1 awaiting PUBACK, 2 awaiting PUBREC, 3 awaiting PUBCOMP;
//!                  packet_id present unless queued)
//! inbound QoS 2  empty
//! retained (v3)  version_ms:u64 node:u16 shard:u16, then as message (an
//!                  empty payload: a tombstone, a topic cleared in a cluster)
//! retained (v2)  as message (read by the migration only)
//! props          present:u8, then in bit order:
//!                  0x01 payload_format_indicator:u8   0x02 message_expiry_interval:u32
//!                  0x04 content_type:str              0x08 response_topic:str
//!                  0x10 correlation_data:bin          0x20 topic_alias:u16
//!                  0x40 n:u32 (key:str value:str) * n user properties
//!                  0x80 n:u16 subscription_identifier:u32 * n
//! ```

use std::sync::Arc;

use bytes::Bytes;
use vmqtt::broker::{NodeId, RetainVersion, ShardId};
use vmqtt::codec::{
    LastWill, ProtocolVersion, PublishProperties, QoS, RetainHandling, SubscriptionOptions,
    UserProperties, WillProperties,
};
use vmqtt::topic::TopicName;
use vmqtt::{ByteStr, ClientId, PacketId};

use crate::error::{DecodeError, DecodeResult, StorageError};
use crate::record::{
    DeliveryState, MessageId, QueueEntry, Record, SessionRecord, StoredMessage, SubscriptionRecord,
};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 3;

/// The oldest schema version this build can migrate from.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

type EncodeResult = Result<(), StorageError>;

/// Appends primitives to a value buffer.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str, what: &'static str) -> EncodeResult {
        let len = u16::try_from(s.len()).map_err(|_| StorageError::TooLarge(what))?;
        self.u16(len);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn bin(&mut self, b: &[u8], what: &'static str) -> EncodeResult {
        let len = u32::try_from(b.len()).map_err(|_| StorageError::TooLarge(what))?;
        self.u32(len);
        self.0.extend_from_slice(b);
        Ok(())
    }
}

/// Reads primitives from a value; strings and binaries are slices of it.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }
    fn take(&mut self, n: usize) -> DecodeResult<Bytes> {
        if self.buf.len() < n {
            return Err(DecodeError("value truncated"));
        }
        Ok(self.buf.split_to(n))
    }
    fn array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> DecodeResult<ByteStr> {
        let len = usize::from(self.u16()?);
        ByteStr::from_utf8(self.take(len)?).map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn topic(&mut self) -> DecodeResult<TopicName> {
        TopicName::new(self.str()?).map_err(|_| DecodeError("invalid topic name"))
    }
    fn bin(&mut self) -> DecodeResult<Bytes> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError("length overflows"))?;
        self.take(len)
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
    fn end(&self) -> DecodeResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes in value"))
        }
    }
}

fn qos_bits(bits: u8) -> DecodeResult<QoS> {
    QoS::from_u8(bits & 0b11).map_err(|_| DecodeError("invalid QoS"))
}

fn protocol(b: u8) -> DecodeResult<ProtocolVersion> {
    match b {
        3 => Ok(ProtocolVersion::V3_1),
        4 => Ok(ProtocolVersion::V3_1_1),
        5 => Ok(ProtocolVersion::V5),
        _ => Err(DecodeError("invalid protocol version")),
    }
}

/// The fields shared by PUBLISH and will properties.
#[derive(Default)]
struct Props {
    payload_format_indicator: Option<bool>,
    message_expiry_interval: Option<u32>,
    content_type: Option<ByteStr>,
    response_topic: Option<TopicName>,
    correlation_data: Option<Bytes>,
    topic_alias: Option<u16>,
    user_properties: UserProperties,
    subscription_identifiers: Vec<u32>,
}

mod prop {
    pub(super) const PFI: u8 = 0x01;
    pub(super) const EXPIRY: u8 = 0x02;
    pub(super) const CONTENT_TYPE: u8 = 0x04;
    pub(super) const RESPONSE_TOPIC: u8 = 0x08;
    pub(super) const CORRELATION: u8 = 0x10;
    pub(super) const ALIAS: u8 = 0x20;
    pub(super) const USER: u8 = 0x40;
    pub(super) const SUB_IDS: u8 = 0x80;
}

#[allow(clippy::too_many_arguments)]
fn write_props(
    w: &mut Writer<'_>,
    pfi: Option<bool>,
    expiry: Option<u32>,
    content_type: Option<&ByteStr>,
    response_topic: Option<&TopicName>,
    correlation: Option<&Bytes>,
    alias: Option<u16>,
    users: &UserProperties,
    sub_ids: &[u32],
) -> EncodeResult {
    let mut present = 0;
    present |= if pfi.is_some() { prop::PFI } else { 0 };
    present |= if expiry.is_some() { prop::EXPIRY } else { 0 };
    present |= if content_type.is_some() {
        prop::CONTENT_TYPE
    } else {
        0
    };
    present |= if response_topic.is_some() {
        prop::RESPONSE_TOPIC
    } else {
        0
    };
    present |= if correlation.is_some() {
        prop::CORRELATION
    } else {
        0
    };
    present |= if alias.is_some() { prop::ALIAS } else { 0 };
    present |= if users.is_empty() { 0 } else { prop::USER };
    present |= if sub_ids.is_empty() { 0 } else { prop::SUB_IDS };
    w.u8(present);
    if let Some(v) = pfi {
        w.u8(u8::from(v));
    }
    if let Some(v) = expiry {
        w.u32(v);
    }
    if let Some(v) = content_type {
        w.str(v, "content type")?;
    }
    if let Some(v) = response_topic {
        w.str(v, "response topic")?;
    }
    if let Some(v) = correlation {
        w.bin(v, "correlation data")?;
    }
    if let Some(v) = alias {
        w.u16(v);
    }
    if !users.is_empty() {
        let n =
            u32::try_from(users.len()).map_err(|_| StorageError::TooLarge("user properties"))?;
        w.u32(n);
        for (k, v) in users {
            w.str(k, "user property")?;
            w.str(v, "user property")?;
        }
    }
    if !sub_ids.is_empty() {
        let n = u16::try_from(sub_ids.len())
            .map_err(|_| StorageError::TooLarge("subscription identifiers"))?;
        w.u16(n);
        for &id in sub_ids {
            w.u32(id);
        }
    }
    Ok(())
}

fn read_props(r: &mut Reader) -> DecodeResult<Props> {
    let present = r.u8()?;
    let mut p = Props::default();
    if present & prop::PFI != 0 {
        p.payload_format_indicator = Some(match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError("invalid payload format indicator")),
        });
    }
    if present & prop::EXPIRY != 0 {
        p.message_expiry_interval = Some(r.u32()?);
    }
    if present & prop::CONTENT_TYPE != 0 {
        p.content_type = Some(r.str()?);
    }
    if present & prop::RESPONSE_TOPIC != 0 {
        p.response_topic = Some(r.topic()?);
    }
    if present & prop::CORRELATION != 0 {
        p.correlation_data = Some(r.bin()?);
    }
    if present & prop::ALIAS != 0 {
        p.topic_alias = Some(r.u16()?);
    }
    if present & prop::USER != 0 {
        let n = r.u32()?;
        // Each pair takes at least 4 bytes: refuse a count the value cannot
        // hold before allocating for it.
        if u64::from(n) * 4 > r.buf.len() as u64 {
            return Err(DecodeError("user property count exceeds the value"));
        }
        p.user_properties.reserve(n as usize);
        for _ in 0..n {
            let k = r.str()?;
            let v = r.str()?;
            p.user_properties.push((k, v));
        }
    }
    if present & prop::SUB_IDS != 0 {
        let n = r.u16()?;
        p.subscription_identifiers.reserve(usize::from(n));
        for _ in 0..n {
            p.subscription_identifiers.push(r.u32()?);
        }
    }
    Ok(p)
}

fn write_publish_props(w: &mut Writer<'_>, p: &PublishProperties) -> EncodeResult {
    write_props(
        w,
        p.payload_format_indicator,
        p.message_expiry_interval,
        p.content_type.as_ref(),
        p.response_topic.as_ref(),
        p.correlation_data.as_ref(),
        p.topic_alias,
        &p.user_properties,
        &p.subscription_identifiers,
    )
}

fn read_publish_props(r: &mut Reader) -> DecodeResult<PublishProperties> {
    let p = read_props(r)?;
    Ok(PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: p.subscription_identifiers,
        content_type: p.content_type,
    })
}

/// Will properties without the will delay (stored apart, see the session
/// layout).
fn write_will_props(w: &mut Writer<'_>, p: &WillProperties) -> EncodeResult {
    write_props(
        w,
        p.payload_format_indicator,
        p.message_expiry_interval,
        p.content_type.as_ref(),
        p.response_topic.as_ref(),
        p.correlation_data.as_ref(),
        None,
        &p.user_properties,
        &[],
    )
}

fn read_will_props(r: &mut Reader) -> DecodeResult<WillProperties> {
    let p = read_props(r)?;
    if p.topic_alias.is_some() || !p.subscription_identifiers.is_empty() {
        return Err(DecodeError(
            "will properties with a topic alias or subscription id",
        ));
    }
    Ok(WillProperties {
        will_delay_interval: None,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    })
}

const SESSION_DISCONNECTED: u8 = 0x01;
const SESSION_WILL: u8 = 0x02;
const WILL_RETAIN: u8 = 0x04;
const WILL_DELAY: u8 = 0x08;

/// Encodes a session (v2).
pub(crate) fn encode_session(s: &SessionRecord, buf: &mut Vec<u8>) -> EncodeResult {
    encode_session_as(s, buf, SCHEMA_VERSION)
}

/// Encodes a session in the layout of schema `version` (1 or 2). Version 1
/// is written only by the migration tests, which need a real version 1
/// directory.
pub(crate) fn encode_session_as(
    s: &SessionRecord,
    buf: &mut Vec<u8>,
    version: u32,
) -> EncodeResult {
    let mut w = Writer(buf);
    w.u8(s.protocol as u8);
    w.u32(s.expiry_interval);
    let mut flags = 0;
    if s.disconnected_at_ms.is_some() {
        flags |= SESSION_DISCONNECTED;
    }
    if s.will.is_some() {
        flags |= SESSION_WILL;
    }
    w.u8(flags);
    if let Some(t) = s.disconnected_at_ms {
        w.u64(t);
    }
    if let Some(will) = &s.will {
        let delay = will.properties.will_delay_interval;
        let mut wflags = will.qos as u8 | if will.retain { WILL_RETAIN } else { 0 };
        if version >= 2 {
            if delay.is_some() {
                wflags |= WILL_DELAY;
            }
            w.u8(wflags);
            w.u32(delay.unwrap_or(0));
        } else {
            w.u8(wflags);
        }
        w.str(&will.topic, "will topic")?;
        write_will_props(&mut w, &will.properties)?;
        w.bin(&will.payload, "will payload")?;
    }
    Ok(())
}

fn decode_session_as(r: &mut Reader, version: u32) -> DecodeResult<SessionRecord> {
    let protocol = protocol(r.u8()?)?;
    let expiry_interval = r.u32()?;
    let flags = r.u8()?;
    if flags & !(SESSION_DISCONNECTED | SESSION_WILL) != 0 {
        return Err(DecodeError("unknown session flags"));
    }
    let disconnected_at_ms = if flags & SESSION_DISCONNECTED != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let will = if flags & SESSION_WILL != 0 {
        let wflags = r.u8()?;
        let known = 0b11 | WILL_RETAIN | if version >= 2 { WILL_DELAY } else { 0 };
        if wflags & !known != 0 {
            return Err(DecodeError("unknown will flags"));
        }
        let delay = if version >= 2 {
            let d = r.u32()?;
            (wflags & WILL_DELAY != 0).then_some(d)
        } else {
            None
        };
        let topic = r.topic()?;
        let mut properties = read_will_props(r)?;
        properties.will_delay_interval = delay;
        let payload = r.bin()?;
        Some(LastWill {
            topic,
            payload,
            qos: qos_bits(wflags)?,
            retain: wflags & WILL_RETAIN != 0,
            properties,
        })
    } else {
        None
    };
    r.end()?;
    Ok(SessionRecord {
        protocol,
        expiry_interval,
        will,
        disconnected_at_ms,
    })
}

/// Decodes a session (v2).
pub(crate) fn decode_session(v: Bytes) -> DecodeResult<SessionRecord> {
    decode_session_as(&mut Reader::new(v), SCHEMA_VERSION)
}

/// Decodes a session in the version 1 layout (no will delay).
pub(crate) fn decode_session_v1(v: Bytes) -> DecodeResult<SessionRecord> {
    decode_session_as(&mut Reader::new(v), 1)
}

/// Encodes subscription options in the v5 SUBSCRIBE byte layout.
pub(crate) fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

/// Decodes a v5 SUBSCRIBE options byte.
pub(crate) fn options_from_byte(b: u8) -> DecodeResult<SubscriptionOptions> {
    if b & 0b1100_0000 != 0 {
        return Err(DecodeError("reserved subscription option bits set"));
    }
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError("invalid retain handling")),
    };
    Ok(SubscriptionOptions {
        qos: qos_bits(b)?,
        no_local: b & 0b0100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling,
    })
}

pub(crate) fn encode_subscription(s: &SubscriptionRecord, buf: &mut Vec<u8>) -> EncodeResult {
    let mut w = Writer(buf);
    w.u8(options_byte(&s.options));
    match s.id {
        Some(0) => return Err(StorageError::TooLarge("subscription identifier 0")),
        id => w.u32(id.unwrap_or(0)),
    }
    Ok(())
}

pub(crate) fn decode_subscription(v: Bytes) -> DecodeResult<SubscriptionRecord> {
    let mut r = Reader::new(v);
    let options = options_from_byte(r.u8()?)?;
    let id = r.u32()?;
    r.end()?;
    Ok(SubscriptionRecord {
        options,
        id: (id != 0).then_some(id),
    })
}

const MSG_RETAIN: u8 = 0x04;
const MSG_EXPIRY: u8 = 0x08;
const MSG_ORIGIN: u8 = 0x10;

pub(crate) fn encode_message(m: &StoredMessage, buf: &mut Vec<u8>) -> EncodeResult {
    let mut w = Writer(buf);
    let mut flags = m.qos as u8;
    flags |= if m.retain { MSG_RETAIN } else { 0 };
    flags |= if m.expires_at_ms.is_some() {
        MSG_EXPIRY
    } else {
        0
    };
    flags |= if m.origin.is_some() { MSG_ORIGIN } else { 0 };
    w.u8(flags);
    if let Some(t) = m.expires_at_ms {
        w.u64(t);
    }
    w.str(&m.topic, "topic")?;
    if let Some(o) = &m.origin {
        w.str(o.as_str(), "origin client id")?;
    }
    write_publish_props(&mut w, &m.properties)?;
    w.0.extend_from_slice(&m.payload);
    Ok(())
}

pub(crate) fn decode_message(v: Bytes) -> DecodeResult<StoredMessage> {
    let mut r = Reader::new(v);
    let flags = r.u8()?;
    if flags & 0b1110_0000 != 0 {
        return Err(DecodeError("unknown message flags"));
    }
    let expires_at_ms = if flags & MSG_EXPIRY != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let topic = r.topic()?;
    let origin = if flags & MSG_ORIGIN != 0 {
        Some(ClientId::new(r.str()?))
    } else {
        None
    };
    let properties = read_publish_props(&mut r)?;
    let payload = r.rest();
    Ok(StoredMessage {
        topic,
        payload,
        qos: qos_bits(flags)?,
        retain: flags & MSG_RETAIN != 0,
        properties,
        expires_at_ms,
        origin,
    })
}

const Q_RETAIN: u8 = 0x04;

pub(crate) fn encode_queue_entry(e: &QueueEntry, buf: &mut Vec<u8>) -> EncodeResult {
    let mut w = Writer(buf);
    w.u64(e.message.0);
    let state: u8 = match e.state {
        DeliveryState::Queued => 0,
        DeliveryState::AwaitPubAck(_) => 1,
        DeliveryState::AwaitPubRec(_) => 2,
        DeliveryState::AwaitPubComp(_) => 3,
    };
    let retain = if e.retain { Q_RETAIN } else { 0 };
    w.u8(e.qos as u8 | retain | state << 4);
    if let Some(p) = e.state.packet_id() {
        w.u16(p.get());
    }
    let n = u16::try_from(e.subscription_ids.len())
        .map_err(|_| StorageError::TooLarge("subscription identifiers"))?;
    w.u16(n);
    for &id in &e.subscription_ids {
        w.u32(id);
    }
    Ok(())
}

pub(crate) fn decode_queue_entry(v: Bytes) -> DecodeResult<QueueEntry> {
    let mut r = Reader::new(v);
    let message = MessageId(r.u64()?);
    let flags = r.u8()?;
    if flags & 0b1100_1000 != 0 {
        return Err(DecodeError("unknown queue entry flags"));
    }
    let mut pid =
        || -> DecodeResult<PacketId> { PacketId::new(r.u16()?).ok_or(DecodeError("packet id 0")) };
    let state = match (flags >> 4) & 0b11 {
        0 => DeliveryState::Queued,
        1 => DeliveryState::AwaitPubAck(pid()?),
        2 => DeliveryState::AwaitPubRec(pid()?),
        _ => DeliveryState::AwaitPubComp(pid()?),
    };
    let n = r.u16()?;
    let mut subscription_ids = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        subscription_ids.push(r.u32()?);
    }
    r.end()?;
    Ok(QueueEntry {
        message,
        qos: qos_bits(flags)?,
        retain: flags & Q_RETAIN != 0,
        subscription_ids,
        state,
    })
}

/// Encodes the value of a record.
pub(crate) fn encode_value(rec: &Record, buf: &mut Vec<u8>) -> EncodeResult {
    match rec {
        Record::Session { session, .. } => encode_session(session, buf),
        Record::Subscription { subscription, .. } => encode_subscription(subscription, buf),
        Record::Message { message, .. } => encode_message(message, buf),
        Record::Retained { message, version } => {
            buf.extend_from_slice(&version.ms.to_be_bytes());
            buf.extend_from_slice(&version.node.0.to_be_bytes());
            let shard = u16::try_from(version.shard.get())
                .map_err(|_| StorageError::TooLarge("shard index"))?;
            buf.extend_from_slice(&shard.to_be_bytes());
            encode_message(message, buf)
        }
        Record::QueueEntry { entry, .. } => encode_queue_entry(entry, buf),
        Record::InboundQos2 { .. } => Ok(()),
    }
}

/// Builds a record from its decoded key and its value bytes.
pub(crate) fn decode_record(key: crate::record::RecordKey, v: Bytes) -> DecodeResult<Record> {
    use crate::record::RecordKey as K;
    Ok(match key {
        K::Session(client_id) => Record::Session {
            client_id,
            session: decode_session(v)?,
        },
        K::Subscription(client_id, filter) => Record::Subscription {
            client_id,
            filter,
            subscription: decode_subscription(v)?,
        },
        K::Message(id) => Record::Message {
            id,
            message: Arc::new(decode_message(v)?),
        },
        K::QueueEntry(client_id, seq) => Record::QueueEntry {
            client_id,
            seq,
            entry: decode_queue_entry(v)?,
        },
        K::InboundQos2(client_id, packet_id) => {
            if !v.is_empty() {
                return Err(DecodeError("inbound QoS 2 value is not empty"));
            }
            Record::InboundQos2 {
                client_id,
                packet_id,
            }
        }
        K::Retained(topic) => {
            if v.len() < RETAIN_VERSION_LEN {
                return Err(DecodeError("retained value shorter than its version"));
            }
            let mut ms = [0; 8];
            ms.copy_from_slice(&v[..8]);
            let version = RetainVersion {
                ms: u64::from_be_bytes(ms),
                node: NodeId(u16::from_be_bytes([v[8], v[9]])),
                shard: ShardId::new(u16::from_be_bytes([v[10], v[11]])),
            };
            let message = decode_message(v.slice(RETAIN_VERSION_LEN..))?;
            if message.topic != topic {
                return Err(DecodeError("retained message topic differs from its key"));
            }
            Record::Retained {
                message: Arc::new(message),
                version,
            }
        }
    })
}

/// Bytes of the version that leads a retained value (schema 3).
pub(crate) const RETAIN_VERSION_LEN: usize = 12;

/// Encodes a `meta` value (`schema_version`, `shards`): a big-endian u32.
pub(crate) fn encode_meta_u32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// Decodes a `meta` value.
pub(crate) fn decode_meta_u32(v: &[u8]) -> DecodeResult<u32> {
    <[u8; 4]>::try_from(v)
        .map(u32::from_be_bytes)
        .map_err(|_| DecodeError("meta value is not 4 bytes"))
}

#[cfg(test)]
pub(crate) mod tests;
