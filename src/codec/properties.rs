//! MQTT 5.0 properties (§2.2.2): the identifier table (type, the packets each
//! may appear in, whether it may repeat), one generic decoder that enforces
//! it, and a property struct per packet type.
//!
//! Encoding goes through [`PropSink`]: each struct lists its properties once
//! in `visit`, and the same listing both measures and writes them.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{self, VARINT_MAX};
use super::{DecodeError, EncodeError, QoS};
use crate::topic::TopicName;
use crate::ByteStr;

/// Property identifiers (§2.2.2.2).
pub mod id {
    /// Payload Format Indicator: Byte.
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Message Expiry Interval: Four Byte Integer.
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// Content Type: UTF-8 Encoded String.
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic: UTF-8 Encoded String.
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data: Binary Data.
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier: Variable Byte Integer.
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
    /// Session Expiry Interval: Four Byte Integer.
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// Assigned Client Identifier: UTF-8 Encoded String.
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Server Keep Alive: Two Byte Integer.
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method: UTF-8 Encoded String.
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Authentication Data: Binary Data.
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Request Problem Information: Byte.
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Will Delay Interval: Four Byte Integer.
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Request Response Information: Byte.
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// Response Information: UTF-8 Encoded String.
    pub const RESPONSE_INFORMATION: u8 = 0x1a;
    /// Server Reference: UTF-8 Encoded String.
    pub const SERVER_REFERENCE: u8 = 0x1c;
    /// Reason String: UTF-8 Encoded String.
    pub const REASON_STRING: u8 = 0x1f;
    /// Receive Maximum: Two Byte Integer.
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum: Two Byte Integer.
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias: Two Byte Integer.
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS: Byte.
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available: Byte.
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property: UTF-8 String Pair.
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size: Four Byte Integer.
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available: Byte.
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available: Byte.
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available: Byte.
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2a;
}

/// The place a property list appears; each is one bit of a property's
/// allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    const fn bit(self) -> u16 {
        1 << self as u16
    }

    const fn name(self) -> &'static str {
        match self {
            Ctx::Connect => "CONNECT",
            Ctx::ConnAck => "CONNACK",
            Ctx::Publish => "PUBLISH",
            Ctx::Will => "will properties",
            Ctx::PubResp => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Ctx::Subscribe => "SUBSCRIBE",
            Ctx::SubAck => "SUBACK",
            Ctx::Unsubscribe => "UNSUBSCRIBE",
            Ctx::UnsubAck => "UNSUBACK",
            Ctx::Disconnect => "DISCONNECT",
            Ctx::Auth => "AUTH",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

const fn bits(ctxs: &[Ctx]) -> u16 {
    let mut b = 0;
    let mut i = 0;
    while i < ctxs.len() {
        b |= ctxs[i].bit();
        i += 1;
    }
    b
}

/// The §2.2.2.2 table: type and allowed packets of each identifier.
fn spec(property: u8) -> Option<(Kind, u16)> {
    use Ctx::*;
    const ALL_ACKS: u16 = bits(&[ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth]);
    const EVERYWHERE: u16 = bits(&[
        Connect,
        ConnAck,
        Publish,
        Will,
        PubResp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    ]);
    let s = match property {
        id::PAYLOAD_FORMAT_INDICATOR => (Kind::Byte, bits(&[Publish, Will])),
        id::MESSAGE_EXPIRY_INTERVAL => (Kind::U32, bits(&[Publish, Will])),
        id::CONTENT_TYPE => (Kind::Str, bits(&[Publish, Will])),
        id::RESPONSE_TOPIC => (Kind::Str, bits(&[Publish, Will])),
        id::CORRELATION_DATA => (Kind::Bin, bits(&[Publish, Will])),
        id::SUBSCRIPTION_IDENTIFIER => (Kind::VarInt, bits(&[Publish, Subscribe])),
        id::SESSION_EXPIRY_INTERVAL => (Kind::U32, bits(&[Connect, ConnAck, Disconnect])),
        id::ASSIGNED_CLIENT_IDENTIFIER => (Kind::Str, bits(&[ConnAck])),
        id::SERVER_KEEP_ALIVE => (Kind::U16, bits(&[ConnAck])),
        id::AUTHENTICATION_METHOD => (Kind::Str, bits(&[Connect, ConnAck, Auth])),
        id::AUTHENTICATION_DATA => (Kind::Bin, bits(&[Connect, ConnAck, Auth])),
        id::REQUEST_PROBLEM_INFORMATION => (Kind::Byte, bits(&[Connect])),
        id::WILL_DELAY_INTERVAL => (Kind::U32, bits(&[Will])),
        id::REQUEST_RESPONSE_INFORMATION => (Kind::Byte, bits(&[Connect])),
        id::RESPONSE_INFORMATION => (Kind::Str, bits(&[ConnAck])),
        id::SERVER_REFERENCE => (Kind::Str, bits(&[ConnAck, Disconnect])),
        id::REASON_STRING => (Kind::Str, ALL_ACKS),
        id::RECEIVE_MAXIMUM => (Kind::U16, bits(&[Connect, ConnAck])),
        id::TOPIC_ALIAS_MAXIMUM => (Kind::U16, bits(&[Connect, ConnAck])),
        id::TOPIC_ALIAS => (Kind::U16, bits(&[Publish])),
        id::MAXIMUM_QOS => (Kind::Byte, bits(&[ConnAck])),
        id::RETAIN_AVAILABLE => (Kind::Byte, bits(&[ConnAck])),
        id::USER_PROPERTY => (Kind::Pair, EVERYWHERE),
        id::MAXIMUM_PACKET_SIZE => (Kind::U32, bits(&[Connect, ConnAck])),
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => (Kind::Byte, bits(&[ConnAck])),
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => (Kind::Byte, bits(&[ConnAck])),
        id::SHARED_SUBSCRIPTION_AVAILABLE => (Kind::Byte, bits(&[ConnAck])),
        _ => return None,
    };
    Some(s)
}

/// A decoded property value, typed by the table.
#[derive(Debug)]
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(ByteStr),
    Bin(Bytes),
    Pair(ByteStr, ByteStr),
}

impl Value {
    fn u8(self, pid: u8) -> Result<u8, DecodeError> {
        match self {
            Value::Byte(b) => Ok(b),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn flag(self, pid: u8) -> Result<bool, DecodeError> {
        match self.u8(pid)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn u16(self, pid: u8) -> Result<u16, DecodeError> {
        match self {
            Value::U16(v) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn u32(self, pid: u8) -> Result<u32, DecodeError> {
        match self {
            Value::U32(v) | Value::VarInt(v) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn nonzero_u16(self, pid: u8) -> Result<u16, DecodeError> {
        match self.u16(pid)? {
            0 => Err(DecodeError::InvalidPropertyValue(pid)),
            v => Ok(v),
        }
    }
    fn nonzero_u32(self, pid: u8) -> Result<u32, DecodeError> {
        match self.u32(pid)? {
            0 => Err(DecodeError::InvalidPropertyValue(pid)),
            v => Ok(v),
        }
    }
    fn str(self, pid: u8) -> Result<ByteStr, DecodeError> {
        match self {
            Value::Str(s) => Ok(s),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn bin(self, pid: u8) -> Result<Bytes, DecodeError> {
        match self {
            Value::Bin(b) => Ok(b),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }
    fn topic(self, pid: u8) -> Result<TopicName, DecodeError> {
        TopicName::new(self.str(pid)?).map_err(DecodeError::InvalidTopicName)
    }
}

/// Reads a property length and the properties it covers, checking each
/// identifier against the table for `ctx`, rejecting repeats of properties
/// that may appear once, and handing each value to `set`.
pub(crate) fn decode(
    buf: &mut Bytes,
    ctx: Ctx,
    mut set: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = wire::read_varint(buf)? as usize;
    if len > buf.len() {
        return Err(DecodeError::Truncated);
    }
    let mut props = buf.split_to(len);
    let mut seen: u64 = 0;
    while !props.is_empty() {
        let pid = wire::read_varint(&mut props)?;
        let pid = u8::try_from(pid).map_err(|_| DecodeError::UnknownProperty(0xff))?;
        let (kind, allowed) = spec(pid).ok_or(DecodeError::UnknownProperty(pid))?;
        if allowed & ctx.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                id: pid,
                packet: ctx.name(),
            });
        }
        let repeatable =
            pid == id::USER_PROPERTY || (pid == id::SUBSCRIPTION_IDENTIFIER && ctx == Ctx::Publish);
        let bit = 1u64 << pid;
        if seen & bit != 0 && !repeatable {
            return Err(DecodeError::DuplicateProperty(pid));
        }
        seen |= bit;
        let value = match kind {
            Kind::Byte => Value::Byte(wire::read_u8(&mut props)?),
            Kind::U16 => Value::U16(wire::read_u16(&mut props)?),
            Kind::U32 => Value::U32(wire::read_u32(&mut props)?),
            Kind::VarInt => Value::VarInt(wire::read_varint(&mut props)?),
            Kind::Str => Value::Str(wire::read_string(&mut props)?),
            Kind::Bin => Value::Bin(wire::read_binary(&mut props)?),
            Kind::Pair => {
                let k = wire::read_string(&mut props)?;
                Value::Pair(k, wire::read_string(&mut props)?)
            }
        };
        set(pid, value)?;
    }
    Ok(())
}

/// Receives the properties of a struct, one call per property present.
pub(crate) trait PropSink {
    fn byte(&mut self, pid: u8, v: u8);
    fn u16(&mut self, pid: u8, v: u16);
    fn u32(&mut self, pid: u8, v: u32);
    fn varint(&mut self, pid: u8, v: u32);
    fn bin(&mut self, pid: u8, v: &[u8]);
    fn pair(&mut self, pid: u8, k: &str, v: &str);
    fn str(&mut self, pid: u8, v: &str) {
        self.bin(pid, v.as_bytes());
    }
}

/// Measures the encoded size and checks field lengths.
#[derive(Default)]
struct LenSink {
    len: usize,
    error: Option<EncodeError>,
}

impl LenSink {
    fn check(&mut self, len: usize) {
        if len > wire::LEN_PREFIX_MAX && self.error.is_none() {
            self.error = Some(EncodeError::FieldTooLong {
                field: "property",
                len,
            });
        }
    }
}

impl PropSink for LenSink {
    fn byte(&mut self, _: u8, _: u8) {
        self.len += 2;
    }
    fn u16(&mut self, _: u8, _: u16) {
        self.len += 3;
    }
    fn u32(&mut self, _: u8, _: u32) {
        self.len += 5;
    }
    fn varint(&mut self, _: u8, v: u32) {
        if (v == 0 || v > VARINT_MAX) && self.error.is_none() {
            self.error = Some(EncodeError::InvalidValue("variable byte integer property"));
        }
        self.len += 1 + wire::varint_len(v);
    }
    fn bin(&mut self, _: u8, v: &[u8]) {
        self.check(v.len());
        self.len += 1 + wire::prefixed_len(v.len());
    }
    fn pair(&mut self, _: u8, k: &str, v: &str) {
        self.check(k.len());
        self.check(v.len());
        self.len += 1 + wire::prefixed_len(k.len()) + wire::prefixed_len(v.len());
    }
}

/// Writes properties into a buffer.
struct BufSink<'a, B: BufMut>(&'a mut B);

impl<B: BufMut> PropSink for BufSink<'_, B> {
    fn byte(&mut self, pid: u8, v: u8) {
        self.0.put_u8(pid);
        self.0.put_u8(v);
    }
    fn u16(&mut self, pid: u8, v: u16) {
        self.0.put_u8(pid);
        self.0.put_u16(v);
    }
    fn u32(&mut self, pid: u8, v: u32) {
        self.0.put_u8(pid);
        self.0.put_u32(v);
    }
    fn varint(&mut self, pid: u8, v: u32) {
        self.0.put_u8(pid);
        wire::put_varint(self.0, v);
    }
    fn bin(&mut self, pid: u8, v: &[u8]) {
        self.0.put_u8(pid);
        wire::put_binary(self.0, v);
    }
    fn pair(&mut self, pid: u8, k: &str, v: &str) {
        self.0.put_u8(pid);
        wire::put_binary(self.0, k.as_bytes());
        wire::put_binary(self.0, v.as_bytes());
    }
}

/// A property list of one packet type.
pub(crate) trait Properties {
    /// Calls `sink` once for every property present, in identifier order.
    fn visit(&self, sink: &mut dyn PropSink);

    /// Size of the properties without the length prefix, after checking that
    /// every field fits.
    fn body_len(&self) -> Result<usize, EncodeError> {
        let mut sink = LenSink::default();
        self.visit(&mut sink);
        match sink.error {
            Some(e) => Err(e),
            None => Ok(sink.len),
        }
    }

    /// Size including the Variable Byte Integer length prefix.
    fn encoded_len(&self) -> Result<usize, EncodeError> {
        let len = self.body_len()?;
        Ok(wire::varint_len(len as u32) + len)
    }

    /// Writes the length prefix and the properties; `body_len` is the value
    /// [`Properties::body_len`] returned.
    fn write(&self, body_len: usize, buf: &mut dyn BufMut) {
        let mut buf = buf;
        wire::put_varint(&mut buf, body_len as u32);
        self.visit(&mut BufSink(&mut buf));
    }
}

/// User properties: name/value pairs, in order, repeats allowed (§3.1.2.11.8).
pub type UserProperties = Vec<(ByteStr, ByteStr)>;

fn visit_users(users: &UserProperties, sink: &mut dyn PropSink) {
    for (k, v) in users {
        sink.pair(id::USER_PROPERTY, k, v);
    }
}

fn push_user(users: &mut UserProperties, v: Value, pid: u8) -> Result<(), DecodeError> {
    match v {
        Value::Pair(k, v) => {
            users.push((k, v));
            Ok(())
        }
        _ => Err(DecodeError::InvalidPropertyValue(pid)),
    }
}

macro_rules! opt {
    ($sink:ident . $m:ident ($pid:expr, $v:expr)) => {
        if let Some(v) = &$v {
            $sink.$m($pid, v.clone().into());
        }
    };
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (non-zero); absent means 65,535.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size the client accepts (non-zero).
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts; absent means 0.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information.
    pub request_response_information: Option<bool>,
    /// Request Problem Information; absent means true.
    pub request_problem_information: Option<bool>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnectProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Connect, |pid, v| {
            match pid {
                id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(v.u32(pid)?),
                id::RECEIVE_MAXIMUM => p.receive_maximum = Some(v.nonzero_u16(pid)?),
                id::MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(v.nonzero_u32(pid)?),
                id::TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(v.u16(pid)?),
                id::REQUEST_RESPONSE_INFORMATION => {
                    p.request_response_information = Some(v.flag(pid)?)
                }
                id::REQUEST_PROBLEM_INFORMATION => {
                    p.request_problem_information = Some(v.flag(pid)?)
                }
                id::AUTHENTICATION_METHOD => p.authentication_method = Some(v.str(pid)?),
                id::AUTHENTICATION_DATA => p.authentication_data = Some(v.bin(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }
}

impl Properties for ConnectProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        opt!(sink.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval));
        if let Some(m) = &self.authentication_method {
            sink.str(id::AUTHENTICATION_METHOD, m);
        }
        if let Some(d) = &self.authentication_data {
            sink.bin(id::AUTHENTICATION_DATA, d);
        }
        opt!(sink.byte(
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information
        ));
        opt!(sink.byte(
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information
        ));
        opt!(sink.u16(id::RECEIVE_MAXIMUM, self.receive_maximum));
        opt!(sink.u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum));
        visit_users(&self.user_properties, sink);
        opt!(sink.u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size));
    }
}

/// Will properties (§3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval in seconds; absent means 0.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator: true for UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
    /// Response Topic (a topic name, no wildcards).
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl WillProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Will, |pid, v| {
            match pid {
                id::WILL_DELAY_INTERVAL => p.will_delay_interval = Some(v.u32(pid)?),
                id::PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(v.flag(pid)?),
                id::MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(v.u32(pid)?),
                id::CONTENT_TYPE => p.content_type = Some(v.str(pid)?),
                id::RESPONSE_TOPIC => p.response_topic = Some(v.topic(pid)?),
                id::CORRELATION_DATA => p.correlation_data = Some(v.bin(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl Properties for WillProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        opt!(sink.byte(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator));
        opt!(sink.u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval));
        if let Some(s) = &self.content_type {
            sink.str(id::CONTENT_TYPE, s);
        }
        if let Some(s) = &self.response_topic {
            sink.str(id::RESPONSE_TOPIC, s);
        }
        if let Some(d) = &self.correlation_data {
            sink.bin(id::CORRELATION_DATA, d);
        }
        opt!(sink.u32(id::WILL_DELAY_INTERVAL, self.will_delay_interval));
        visit_users(&self.user_properties, sink);
    }
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval the server uses.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum of the server (non-zero).
    pub receive_maximum: Option<u16>,
    /// Maximum QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Retain Available; absent means true.
    pub retain_available: Option<bool>,
    /// Maximum Packet Size the server accepts (non-zero).
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteStr>,
    /// Topic Alias Maximum the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Wildcard Subscription Available; absent means true.
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available; absent means true.
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available; absent means true.
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive, overriding the client's.
    pub server_keep_alive: Option<u16>,
    /// Response Information.
    pub response_information: Option<ByteStr>,
    /// Server Reference.
    pub server_reference: Option<ByteStr>,
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::ConnAck, |pid, v| {
            match pid {
                id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(v.u32(pid)?),
                id::RECEIVE_MAXIMUM => p.receive_maximum = Some(v.nonzero_u16(pid)?),
                id::MAXIMUM_QOS => {
                    p.maximum_qos = Some(if v.flag(pid)? {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    })
                }
                id::RETAIN_AVAILABLE => p.retain_available = Some(v.flag(pid)?),
                id::MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(v.nonzero_u32(pid)?),
                id::ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(v.str(pid)?),
                id::TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(v.u16(pid)?),
                id::REASON_STRING => p.reason_string = Some(v.str(pid)?),
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    p.wildcard_subscription_available = Some(v.flag(pid)?)
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    p.subscription_identifiers_available = Some(v.flag(pid)?)
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    p.shared_subscription_available = Some(v.flag(pid)?)
                }
                id::SERVER_KEEP_ALIVE => p.server_keep_alive = Some(v.u16(pid)?),
                id::RESPONSE_INFORMATION => p.response_information = Some(v.str(pid)?),
                id::SERVER_REFERENCE => p.server_reference = Some(v.str(pid)?),
                id::AUTHENTICATION_METHOD => p.authentication_method = Some(v.str(pid)?),
                id::AUTHENTICATION_DATA => p.authentication_data = Some(v.bin(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }
}

impl Properties for ConnAckProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        opt!(sink.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval));
        for (pid, s) in [
            (
                id::ASSIGNED_CLIENT_IDENTIFIER,
                &self.assigned_client_identifier,
            ),
            (id::AUTHENTICATION_METHOD, &self.authentication_method),
        ] {
            if let Some(s) = s {
                sink.str(pid, s);
            }
        }
        if let Some(d) = &self.authentication_data {
            sink.bin(id::AUTHENTICATION_DATA, d);
        }
        opt!(sink.u16(id::SERVER_KEEP_ALIVE, self.server_keep_alive));
        for (pid, s) in [
            (id::RESPONSE_INFORMATION, &self.response_information),
            (id::SERVER_REFERENCE, &self.server_reference),
            (id::REASON_STRING, &self.reason_string),
        ] {
            if let Some(s) = s {
                sink.str(pid, s);
            }
        }
        opt!(sink.u16(id::RECEIVE_MAXIMUM, self.receive_maximum));
        opt!(sink.u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum));
        if let Some(q) = self.maximum_qos {
            sink.byte(id::MAXIMUM_QOS, q as u8);
        }
        opt!(sink.byte(id::RETAIN_AVAILABLE, self.retain_available));
        visit_users(&self.user_properties, sink);
        opt!(sink.u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size));
        opt!(sink.byte(
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available
        ));
        opt!(sink.byte(
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available
        ));
        opt!(sink.byte(
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available
        ));
    }
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator: true for UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (non-zero).
    pub topic_alias: Option<u16>,
    /// Response Topic (a topic name, no wildcards).
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Subscription Identifiers (server to client only; each non-zero).
    pub subscription_identifiers: Vec<u32>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
}

impl PublishProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        // Most publishes carry no property: a property length of 0.
        if buf.first() == Some(&0) {
            bytes::Buf::advance(buf, 1);
            return Ok(p);
        }
        decode(buf, Ctx::Publish, |pid, v| {
            match pid {
                id::PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(v.flag(pid)?),
                id::MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(v.u32(pid)?),
                id::TOPIC_ALIAS => match v.u16(pid)? {
                    0 => return Err(DecodeError::TopicAliasZero),
                    a => p.topic_alias = Some(a),
                },
                id::RESPONSE_TOPIC => p.response_topic = Some(v.topic(pid)?),
                id::CORRELATION_DATA => p.correlation_data = Some(v.bin(pid)?),
                id::SUBSCRIPTION_IDENTIFIER => p.subscription_identifiers.push(v.nonzero_u32(pid)?),
                id::CONTENT_TYPE => p.content_type = Some(v.str(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// Writes the properties as in a v5 PUBLISH (length prefix first): how
    /// a message's properties travel between the nodes of a cluster.
    pub fn encode_standalone(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = self.body_len()?;
        self.write(len, buf);
        Ok(())
    }

    /// Reads what [`PublishProperties::encode_standalone`] wrote, with the
    /// checks of a v5 PUBLISH.
    pub fn decode_standalone(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Self::decode(buf)
    }

    /// `true` when no property is set (the common case on the hot path).
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

impl Properties for PublishProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        opt!(sink.byte(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator));
        opt!(sink.u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval));
        if let Some(s) = &self.content_type {
            sink.str(id::CONTENT_TYPE, s);
        }
        if let Some(s) = &self.response_topic {
            sink.str(id::RESPONSE_TOPIC, s);
        }
        if let Some(d) = &self.correlation_data {
            sink.bin(id::CORRELATION_DATA, d);
        }
        for &sid in &self.subscription_identifiers {
            sink.varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        opt!(sink.u16(id::TOPIC_ALIAS, self.topic_alias));
        visit_users(&self.user_properties, sink);
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a
/// reason string and user properties (§3.4.2.2 and following).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AckProperties {
    pub(crate) fn decode(buf: &mut Bytes, ctx: Ctx) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, ctx, |pid, v| {
            match pid {
                id::REASON_STRING => p.reason_string = Some(v.str(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// `true` when no property is set.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl Properties for AckProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        if let Some(s) = &self.reason_string {
            sink.str(id::REASON_STRING, s);
        }
        visit_users(&self.user_properties, sink);
    }
}

/// SUBSCRIBE properties (§3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier (1..=268,435,455), at most one.
    pub subscription_identifier: Option<u32>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl SubscribeProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Subscribe, |pid, v| {
            match pid {
                id::SUBSCRIPTION_IDENTIFIER => {
                    p.subscription_identifier = Some(v.nonzero_u32(pid)?)
                }
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl Properties for SubscribeProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        if let Some(sid) = self.subscription_identifier {
            sink.varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        visit_users(&self.user_properties, sink);
    }
}

/// UNSUBSCRIBE properties (§3.10.2.1): user properties only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User properties.
    pub user_properties: UserProperties,
}

impl UnsubscribeProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Unsubscribe, |pid, v| {
            push_user(&mut p.user_properties, v, pid)
        })?;
        Ok(p)
    }
}

impl Properties for UnsubscribeProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        visit_users(&self.user_properties, sink);
    }
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Server Reference.
    pub server_reference: Option<ByteStr>,
}

impl DisconnectProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Disconnect, |pid, v| {
            match pid {
                id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(v.u32(pid)?),
                id::REASON_STRING => p.reason_string = Some(v.str(pid)?),
                id::SERVER_REFERENCE => p.server_reference = Some(v.str(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// `true` when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for DisconnectProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        opt!(sink.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval));
        if let Some(s) = &self.server_reference {
            sink.str(id::SERVER_REFERENCE, s);
        }
        if let Some(s) = &self.reason_string {
            sink.str(id::REASON_STRING, s);
        }
        visit_users(&self.user_properties, sink);
    }
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AuthProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        decode(buf, Ctx::Auth, |pid, v| {
            match pid {
                id::AUTHENTICATION_METHOD => p.authentication_method = Some(v.str(pid)?),
                id::AUTHENTICATION_DATA => p.authentication_data = Some(v.bin(pid)?),
                id::REASON_STRING => p.reason_string = Some(v.str(pid)?),
                _ => push_user(&mut p.user_properties, v, pid)?,
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }

    /// `true` when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for AuthProperties {
    fn visit(&self, sink: &mut dyn PropSink) {
        if let Some(s) = &self.authentication_method {
            sink.str(id::AUTHENTICATION_METHOD, s);
        }
        if let Some(d) = &self.authentication_data {
            sink.bin(id::AUTHENTICATION_DATA, d);
        }
        if let Some(s) = &self.reason_string {
            sink.str(id::REASON_STRING, s);
        }
        visit_users(&self.user_properties, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(bytes: &'static [u8]) -> Bytes {
        Bytes::from_static(bytes)
    }

    #[test]
    fn every_identifier_has_a_type_and_a_home() {
        let defined = [
            0x01, 0x02, 0x03, 0x08, 0x09, 0x0b, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
            0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,
        ];
        for pid in 0..=255u8 {
            assert_eq!(spec(pid).is_some(), defined.contains(&pid), "{pid:#x}");
        }
    }

    #[test]
    fn duplicate_single_property_is_a_protocol_error() {
        // Two Session Expiry Intervals in CONNECT.
        let mut b = props(&[10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]);
        assert_eq!(
            ConnectProperties::decode(&mut b),
            Err(DecodeError::DuplicateProperty(0x11))
        );
        assert_eq!(
            DecodeError::DuplicateProperty(0x11).reason_code(),
            crate::codec::ReasonCode::PROTOCOL_ERROR
        );
    }

    #[test]
    fn user_properties_and_publish_subscription_ids_repeat() {
        let mut b = props(&[
            14, 0x26, 0, 1, b'a', 0, 1, b'b', 0x26, 0, 1, b'a', 0, 1, b'c', //
        ]);
        let p = UnsubscribeProperties::decode(&mut b).unwrap();
        assert_eq!(p.user_properties.len(), 2);
        let mut b = props(&[4, 0x0b, 1, 0x0b, 2]);
        let p = PublishProperties::decode(&mut b).unwrap();
        assert_eq!(p.subscription_identifiers, vec![1, 2]);
        let mut b = props(&[4, 0x0b, 1, 0x0b, 2]);
        assert_eq!(
            SubscribeProperties::decode(&mut b),
            Err(DecodeError::DuplicateProperty(0x0b))
        );
    }

    #[test]
    fn property_in_wrong_packet_is_malformed() {
        // Topic Alias in CONNECT.
        let mut b = props(&[3, 0x23, 0, 1]);
        let e = ConnectProperties::decode(&mut b).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::PropertyNotAllowed { id: 0x23, .. }
        ));
        assert_eq!(e.reason_code(), crate::codec::ReasonCode::MALFORMED_PACKET);
        // Will Delay Interval in PUBLISH.
        let mut b = props(&[5, 0x18, 0, 0, 0, 1]);
        assert!(matches!(
            PublishProperties::decode(&mut b),
            Err(DecodeError::PropertyNotAllowed { id: 0x18, .. })
        ));
        // Unknown identifier.
        let mut b = props(&[2, 0x7f, 0]);
        assert_eq!(
            PublishProperties::decode(&mut b),
            Err(DecodeError::UnknownProperty(0x7f))
        );
    }

    #[test]
    fn forbidden_values() {
        let cases: &[(&'static [u8], DecodeError)] = &[
            (&[3, 0x21, 0, 0], DecodeError::InvalidPropertyValue(0x21)), // receive max 0
            (
                &[5, 0x27, 0, 0, 0, 0],
                DecodeError::InvalidPropertyValue(0x27),
            ), // max packet 0
            (&[2, 0x17, 2], DecodeError::InvalidPropertyValue(0x17)),    // req problem info 2
            (&[2, 0x19, 2], DecodeError::InvalidPropertyValue(0x19)),    // req response info 2
            (&[3, 0x16, 0, 0], DecodeError::AuthDataWithoutMethod),
        ];
        for (bytes, err) in cases {
            let mut b = Bytes::from_static(bytes);
            assert_eq!(
                ConnectProperties::decode(&mut b).as_ref().err(),
                Some(err),
                "{bytes:?}"
            );
        }
        let mut b = props(&[3, 0x23, 0, 0]);
        assert_eq!(
            PublishProperties::decode(&mut b),
            Err(DecodeError::TopicAliasZero)
        );
        let mut b = props(&[2, 0x0b, 0]);
        assert_eq!(
            SubscribeProperties::decode(&mut b),
            Err(DecodeError::InvalidPropertyValue(0x0b))
        );
        let mut b = props(&[2, 0x24, 2]);
        assert_eq!(
            ConnAckProperties::decode(&mut b),
            Err(DecodeError::InvalidPropertyValue(0x24))
        );
        let mut b = props(&[6, 0x08, 0, 3, b'a', b'/', b'#']);
        assert!(matches!(
            PublishProperties::decode(&mut b),
            Err(DecodeError::InvalidTopicName(_))
        ));
    }

    #[test]
    fn property_length_past_the_packet_is_malformed() {
        let mut b = props(&[9, 0x11, 0, 0]);
        assert_eq!(
            ConnectProperties::decode(&mut b),
            Err(DecodeError::Truncated)
        );
        let mut b = props(&[3, 0x11, 0, 0]);
        assert_eq!(
            ConnectProperties::decode(&mut b),
            Err(DecodeError::Truncated)
        );
    }
}
