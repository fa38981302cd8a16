//! The MQTT codec: all 15 control packets for protocol levels 3 (MQTT 3.1),
//! 4 (MQTT 3.1.1) and 5 (MQTT 5.0), in one packet model where the v5-only
//! parts are optional or default.
//!
//! Decoding is incremental: [`check`] looks at the fixed header of a possibly
//! partial buffer and answers "need more bytes" without allocating, after
//! checking the remaining length against the maximum packet size. [`decode`]
//! then splits exactly one frame off the read buffer and parses it; strings
//! and payloads are [`bytes::Bytes`] slices of that frame, not copies.
//!
//! ```
//! use bytes::BytesMut;
//! use vmqtt::codec::{decode, Packet, ProtocolVersion};
//!
//! let mut buf = BytesMut::from(&[0xc0u8][..]); // PINGREQ, first byte only
//! assert_eq!(decode(&mut buf, ProtocolVersion::V5, 1024), Ok(None));
//! buf.extend_from_slice(&[0x00]);
//! assert_eq!(decode(&mut buf, ProtocolVersion::V5, 1024), Ok(Some(Packet::PingReq)));
//! ```

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
pub mod properties;
mod publish;
mod reason;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;
pub(crate) mod wire;

use bytes::{BufMut, Bytes, BytesMut};

pub use ack::PubResponse;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, LastWill};
pub use disconnect::Disconnect;
pub use error::{DecodeError, EncodeError};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
pub use publish::Publish;
pub use reason::{ReasonCode, ReasonSet};
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;
pub use wire::VARINT_MAX;

/// The protocol level of a connection, from its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V3_1 = 3,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V3_1_1 = 4,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5 = 5,
}

impl ProtocolVersion {
    /// `true` for MQTT 5.0.
    pub const fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }

    /// The protocol name sent in CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for `bits` (0, 1 or 2); 3 is [`DecodeError::InvalidQoS`].
    pub const fn from_u8(bits: u8) -> Result<Self, DecodeError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// The control packet type: the high nibble of the first byte (§2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1: client request to connect.
    Connect = 1,
    /// 2: connect acknowledgment.
    ConnAck = 2,
    /// 3: publish message.
    Publish = 3,
    /// 4: publish acknowledgment (QoS 1).
    PubAck = 4,
    /// 5: publish received (QoS 2, part 1).
    PubRec = 5,
    /// 6: publish release (QoS 2, part 2).
    PubRel = 6,
    /// 7: publish complete (QoS 2, part 3).
    PubComp = 7,
    /// 8: subscribe request.
    Subscribe = 8,
    /// 9: subscribe acknowledgment.
    SubAck = 9,
    /// 10: unsubscribe request.
    Unsubscribe = 10,
    /// 11: unsubscribe acknowledgment.
    UnsubAck = 11,
    /// 12: ping request.
    PingReq = 12,
    /// 13: ping response.
    PingResp = 13,
    /// 14: disconnect notification.
    Disconnect = 14,
    /// 15: authentication exchange (MQTT 5 only).
    Auth = 15,
}

impl PacketType {
    fn from_nibble(n: u8) -> Result<Self, DecodeError> {
        use PacketType::*;
        Ok(match n {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return Err(DecodeError::ReservedPacketType(n)),
        })
    }

    /// The fixed-header flags the spec requires, or `None` for PUBLISH whose
    /// flags carry DUP, QoS and RETAIN (§2.1.3 table).
    const fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (§3.1).
    Connect(Box<Connect>),
    /// CONNACK (§3.2).
    ConnAck(ConnAck),
    /// PUBLISH (§3.3).
    Publish(Publish),
    /// PUBACK (§3.4).
    PubAck(PubResponse),
    /// PUBREC (§3.5).
    PubRec(PubResponse),
    /// PUBREL (§3.6).
    PubRel(PubResponse),
    /// PUBCOMP (§3.7).
    PubComp(PubResponse),
    /// SUBSCRIBE (§3.8).
    Subscribe(Subscribe),
    /// SUBACK (§3.9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (§3.10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (§3.11).
    UnsubAck(UnsubAck),
    /// PINGREQ (§3.12).
    PingReq,
    /// PINGRESP (§3.13).
    PingResp,
    /// DISCONNECT (§3.14).
    Disconnect(Disconnect),
    /// AUTH (§3.15, MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The first byte of the fixed header.
    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.header_flags(),
            other => other.packet_type().required_flags().unwrap_or(0),
        };
        (self.packet_type() as u8) << 4 | flags
    }

    /// The remaining length: everything after the fixed header.
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::ConnAck(p) => p.body_len(version),
            Packet::Publish(p) => p.body_len(version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.body_len(version)
            }
            Packet::Subscribe(p) => p.body_len(version),
            Packet::SubAck(p) => p.body_len(version),
            Packet::Unsubscribe(p) => p.body_len(version),
            Packet::UnsubAck(p) => p.body_len(version),
            Packet::PingReq | Packet::PingResp => Ok(0),
            Packet::Disconnect(p) => p.body_len(version),
            Packet::Auth(p) => p.body_len(version),
        }
    }

    /// The total encoded size (fixed header included) in `version`, used to
    /// respect a peer's Maximum Packet Size before sending.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        if body > VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge(body));
        }
        Ok(1 + wire::varint_len(body as u32) + body)
    }

    /// Appends the packet, encoded for `version`, to `buf`.
    ///
    /// A CONNECT is always encoded in its own protocol version.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let version = match self {
            Packet::Connect(c) => c.protocol,
            _ => version,
        };
        let body = self.body_len(version)?;
        if body > VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge(body));
        }
        if version.is_v5() {
            match self {
                Packet::PubAck(r) | Packet::PubRec(r) => {
                    check_reason(r.reason, ReasonSet::PubAckRec)?
                }
                Packet::PubRel(r) | Packet::PubComp(r) => {
                    check_reason(r.reason, ReasonSet::PubRelComp)?
                }
                _ => {}
            }
        }
        buf.reserve(1 + wire::varint_len(body as u32) + body);
        buf.put_u8(self.first_byte());
        wire::put_varint(buf, body as u32);
        let start = buf.len();
        match self {
            Packet::Connect(p) => p.write(buf),
            Packet::ConnAck(p) => p.write(version, buf),
            Packet::Publish(p) => p.write(version, buf),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.write(version, buf)
            }
            Packet::Subscribe(p) => p.write(version, buf),
            Packet::SubAck(p) => p.write(version, buf),
            Packet::Unsubscribe(p) => p.write(version, buf),
            Packet::UnsubAck(p) => p.write(version, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.write(version, buf),
            Packet::Auth(p) => p.write(buf),
        }
        debug_assert_eq!(
            buf.len() - start,
            body,
            "{:?} body length",
            self.packet_type()
        );
        Ok(())
    }
}

/// The fixed header of a complete frame found by [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Bytes taken by the fixed header (2..=5).
    pub header_len: usize,
    /// The remaining length.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// Total frame size: fixed header plus remaining length.
    pub const fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Looks at the start of `buf` for a complete frame, without consuming or
/// allocating.
///
/// - `Ok(None)`: more bytes are needed;
/// - `Ok(Some(header))`: `buf` holds at least `header.frame_len()` bytes;
/// - `Err`: the stream is broken (reserved packet type, bad flags, a remaining
///   length longer than 4 bytes) or the frame would exceed
///   `max_packet_size`, which is known as soon as the remaining length is, so
///   an oversized frame is refused before any of it is buffered.
pub fn check(buf: &[u8], max_packet_size: u32) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_nibble(first >> 4)?;
    let flags = first & 0x0f;
    if let Some(required) = packet_type.required_flags() {
        if flags != required {
            return Err(DecodeError::InvalidFixedHeaderFlags {
                packet: packet_type,
                flags,
            });
        }
    }
    let (remaining_len, len_bytes) = match wire::peek_varint(&buf[1..])? {
        wire::VarInt::Complete(v, n) => (v as usize, n),
        wire::VarInt::Incomplete => return Ok(None),
    };
    let header_len = 1 + len_bytes;
    let size = (header_len + remaining_len) as u64;
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < header_len + remaining_len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        packet_type,
        flags,
        header_len,
        remaining_len,
    }))
}

/// The total size of the frame starting at `buf[0]`, once its fixed header is
/// complete; `None` before that or if the header is invalid (which
/// [`check`] reports). Lets a reader allocate exactly one frame's worth.
pub fn peek_frame_len(buf: &[u8]) -> Option<usize> {
    match wire::peek_varint(buf.get(1..)?) {
        Ok(wire::VarInt::Complete(len, n)) => Some(1 + n + len as usize),
        _ => None,
    }
}

/// Decodes one packet from the front of `buf` if a whole frame is there,
/// removing its bytes; leaves `buf` untouched and returns `Ok(None)` if more
/// bytes are needed.
///
/// `version` is the connection's protocol version; it is ignored for
/// CONNECT, which carries its own. Before CONNECT, pass any version: only a
/// CONNECT is valid then, and the session layer enforces that.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(header.frame_len()).freeze();
    bytes::Buf::advance(&mut frame, header.header_len);
    decode_body(header, frame, version).map(Some)
}

/// Decodes the body of a frame whose fixed header [`check`] accepted.
pub fn decode_body(
    header: FrameHeader,
    mut body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let body = &mut body;
    let packet = match header.packet_type {
        PacketType::Connect => Packet::Connect(Box::new(Connect::decode(body)?)),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(body, version)?),
        PacketType::Publish => Packet::Publish(Publish::decode(header.flags, body, version)?),
        PacketType::PubAck => {
            Packet::PubAck(PubResponse::decode(body, version, PacketType::PubAck)?)
        }
        PacketType::PubRec => {
            Packet::PubRec(PubResponse::decode(body, version, PacketType::PubRec)?)
        }
        PacketType::PubRel => {
            Packet::PubRel(PubResponse::decode(body, version, PacketType::PubRel)?)
        }
        PacketType::PubComp => {
            Packet::PubComp(PubResponse::decode(body, version, PacketType::PubComp)?)
        }
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(body, version)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(body, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(body, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(body, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(body, version)?),
        PacketType::Auth => {
            if !version.is_v5() {
                return Err(DecodeError::ReservedPacketType(15));
            }
            Packet::Auth(Auth::decode(body)?)
        }
    };
    // Every packet type either consumes its whole body (payload included) or
    // has none; anything left over disagrees with the remaining length.
    if !body.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(packet)
}

/// Reads a non-zero packet identifier.
pub(crate) fn read_packet_id(buf: &mut Bytes) -> Result<crate::PacketId, DecodeError> {
    crate::PacketId::new(wire::read_u16(buf)?).ok_or(DecodeError::ZeroPacketId)
}

/// Refuses to encode a v5 reason code that `set` does not allow: the peer
/// would reject the packet as malformed.
pub(crate) fn check_reason(rc: ReasonCode, set: ReasonSet) -> Result<(), EncodeError> {
    if rc.valid_for(set) {
        Ok(())
    } else {
        Err(EncodeError::InvalidValue(
            "reason code not allowed in this packet",
        ))
    }
}

/// Checks a decoded reason code against the set allowed for `packet`.
pub(crate) fn reason_in(
    code: u8,
    set: ReasonSet,
    packet: PacketType,
) -> Result<ReasonCode, DecodeError> {
    let rc = ReasonCode(code);
    if rc.valid_for(set) {
        Ok(rc)
    } else {
        Err(DecodeError::InvalidReasonCode { code, packet })
    }
}

#[cfg(test)]
mod tests;
