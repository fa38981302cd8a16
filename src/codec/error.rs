//! Codec errors. Each decode error is one normative rule of MQTT 3.1.1 or 5.0;
//! [`DecodeError::reason_code`] is the one place that maps them to a v5 reason
//! code (MQTT 3.x peers get the connection closed instead).

use super::{PacketType, ReasonCode};
use crate::topic::TopicError;

/// A packet that cannot be accepted. The connection that sent it is closed;
/// an MQTT 5 peer first gets a DISCONNECT (or, during CONNECT, a CONNACK) with
/// [`DecodeError::reason_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet's total size exceeds the maximum packet size (v5 §3.1.2.11.4,
    /// [MQTT-3.2.2-15]); detected from the fixed header, before allocating.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size: fixed header plus remaining length.
        size: u64,
        /// The configured maximum.
        max: u32,
    },
    /// Packet type 0 is reserved; 15 (AUTH) is reserved before MQTT 5 (§2.1.2).
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// Fixed-header flag bits differ from the values the spec fixes for this
    /// packet type ([MQTT-2.1.3-1], v5 §2.1.3).
    #[error("invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidFixedHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A Variable Byte Integer (such as the remaining length) continues past
    /// its fourth byte (§1.5.5, §2.2.3).
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    /// A Variable Byte Integer does not use the fewest bytes ([MQTT-1.5.5-1]).
    #[error("variable byte integer not minimally encoded")]
    NonMinimalVarInt,
    /// A field runs past the end of the packet (remaining length too short).
    #[error("packet ends inside a field")]
    Truncated,
    /// Bytes are left after the last field of a packet with no payload, or a
    /// length that disagrees with the remaining length.
    #[error("unexpected bytes after the last field")]
    TrailingBytes,
    /// A UTF-8 Encoded String is not well-formed UTF-8, including encoded
    /// surrogates U+D800..U+DFFF ([MQTT-1.5.4-1], [MQTT-1.5.3-1]).
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A UTF-8 Encoded String contains U+0000 ([MQTT-1.5.4-2], [MQTT-1.5.3-2]).
    #[error("string contains U+0000")]
    NulInString,
    /// The CONNECT protocol name is neither "MQTT" (levels 4 and 5) nor
    /// "MQIsdp" (level 3) ([MQTT-3.1.2-1]).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The CONNECT protocol level is not 3, 4 or 5 ([MQTT-3.1.2-2]); answered
    /// with CONNACK 0x01 (v3) or 0x84 (v5).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The CONNECT reserved flag (bit 0) is set ([MQTT-3.1.2-3]).
    #[error("CONNECT reserved flag set")]
    ConnectReservedFlag,
    /// A QoS field holds 3 (PUBLISH [MQTT-3.3.1-4], will [MQTT-3.1.2-14],
    /// subscription options [MQTT-3.8.3-4] in 3.1.1).
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    /// Will QoS or will retain set while the will flag is 0 ([MQTT-3.1.2-11],
    /// [MQTT-3.1.2-13] in v5; [MQTT-3.1.2-13], [MQTT-3.1.2-15] in 3.1.1).
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    /// The password flag is set while the user name flag is not (3.1.1
    /// [MQTT-3.1.2-22]; allowed in v5).
    #[error("password flag set without user name flag")]
    PasswordWithoutUsername,
    /// The client identifier cannot be accepted: empty with clean session 0 in
    /// 3.1.1 ([MQTT-3.1.3-8]) or empty in 3.1; answered with CONNACK 0x02 (v3).
    #[error("client identifier rejected")]
    ClientIdRejected,
    /// DUP set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQos0,
    /// Packet identifier 0 where a non-zero one is required ([MQTT-2.3.1-1],
    /// v5 [MQTT-2.2.1-3]).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A topic name is invalid: empty in v3, or containing a wildcard
    /// ([MQTT-3.3.2-1], [MQTT-3.3.2-2], [MQTT-4.7.3-1]).
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// A topic filter is invalid: empty, or a misplaced wildcard
    /// ([MQTT-4.7.1-1..3], [MQTT-4.7.3-1]), or a bad shared subscription
    /// (v5 §4.8.2).
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// SUBSCRIBE or UNSUBSCRIBE with no topic filter ([MQTT-3.8.3-3],
    /// [MQTT-3.10.3-2]).
    #[error("no topic filter in SUBSCRIBE or UNSUBSCRIBE")]
    NoTopicFilters,
    /// SUBACK or UNSUBACK (v5) with no reason code for any filter
    /// ([MQTT-3.9.3-1]).
    #[error("no reason code in SUBACK or UNSUBACK")]
    NoReasonCodes,
    /// Reserved bits of the subscription options are set ([MQTT-3.8.3-5] in
    /// v5: bits 6-7; [MQTT-3-8.3-4] in 3.1.1: bits 2-7).
    #[error("reserved bits set in subscription options")]
    SubscriptionOptionsReserved,
    /// Retain Handling is 3 (v5 §3.8.3.1).
    #[error("retain handling 3 is not valid")]
    InvalidRetainHandling,
    /// No Local set on a shared subscription ([MQTT-3.8.3-4]).
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A property identifier that MQTT 5 does not define (§2.2.2.2).
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that is not valid for this packet type (§2.2.2.2).
    #[error("property {id:#04x} not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// Where it appeared ("CONNECT", "will properties", …).
        packet: &'static str,
    },
    /// A property that may appear once appears more than once (each
    /// property's "It is a Protocol Error to include … more than once").
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// A property has a value the spec forbids (e.g. Receive Maximum 0,
    /// Maximum Packet Size 0, Subscription Identifier 0, a byte flag other
    /// than 0 or 1).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// Topic Alias 0 ([MQTT-3.3.2-8]).
    #[error("topic alias 0")]
    TopicAliasZero,
    /// A zero-length topic name without a topic alias (v5 §3.3.2.1).
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// Authentication Data without an Authentication Method (v5 §3.1.2.11.10).
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A reason code that is not allowed in this packet type (v5 §2.4).
    #[error("reason code {code:#04x} not allowed in {packet:?}")]
    InvalidReasonCode {
        /// The byte received.
        code: u8,
        /// The packet type.
        packet: PacketType,
    },
    /// A CONNACK flags byte with reserved bits set ([MQTT-3.2.2-1]), or a v3
    /// return code that is reserved.
    #[error("invalid CONNACK acknowledge flags or return code")]
    InvalidConnAck,
}

impl DecodeError {
    /// The MQTT 5 reason code for this error: the one place where codec rules
    /// map to reason codes.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            ClientIdRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            // "It is a Protocol Error …" in the v5 text.
            DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | EmptyTopicWithoutAlias
            | AuthDataWithoutMethod
            | NoTopicFilters
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | ReservedPacketType(_)
            | PasswordWithoutUsername => ReasonCode::PROTOCOL_ERROR,
            // "… is a Malformed Packet" in the v5 text.
            InvalidFixedHeaderFlags { .. }
            | VarIntTooLong
            | NonMinimalVarInt
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | NulInString
            | ConnectReservedFlag
            | InvalidQoS
            | WillFlagsWithoutWill
            | DupWithQos0
            | ZeroPacketId
            | InvalidTopicFilter(_)
            | NoReasonCodes
            | SubscriptionOptionsReserved
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | InvalidConnAck => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// For an error in a CONNECT packet, the MQTT 3.x CONNACK return code
    /// to send before closing, if the spec asks for one (unacceptable protocol
    /// level 0x01 [MQTT-3.1.2-2], identifier rejected 0x02 [MQTT-3.1.3-9]).
    pub fn v3_connack_code(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedProtocolVersion(_) => Some(0x01),
            DecodeError::ClientIdRejected => Some(0x02),
            _ => None,
        }
    }
}

/// A packet that cannot be encoded as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than its two-byte length prefix allows.
    #[error("{field} is {len} bytes, more than 65535")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The remaining length exceeds 268,435,455 bytes.
    #[error("packet body of {0} bytes exceeds the largest remaining length")]
    PacketTooLarge(usize),
    /// The packet type or a field does not exist in the target protocol
    /// version (AUTH before MQTT 5, for example).
    #[error("{0} cannot be encoded in this protocol version")]
    NotInVersion(&'static str),
    /// A field holds a value the spec forbids on the wire (empty SUBSCRIBE,
    /// subscription identifier 0, …).
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
}
