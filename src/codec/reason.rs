//! Reason codes (MQTT 5.0 §2.4) and the MQTT 3.1/3.1.1 return codes they map
//! to.
//!
//! One byte value has several names (0x00 is Success, Normal disconnection and
//! Granted QoS 0), so a reason code is a newtype over `u8` with named
//! constants, and each packet type has its own set of allowed values.

use std::fmt;

/// An MQTT 5.0 reason code. Below 0x80 success, 0x80 and above failure.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr;)*) => {
        impl ReasonCode {
            $($(#[$doc])* pub const $name: ReasonCode = ReasonCode($value);)*

            /// The specification's name for this code (the first name for a
            /// value that has several), or `None` for an unassigned value.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00 Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH).
    SUCCESS = 0x00, "Success";
    /// 0x01 Granted QoS 1 (SUBACK).
    GRANTED_QOS_1 = 0x01, "Granted QoS 1";
    /// 0x02 Granted QoS 2 (SUBACK).
    GRANTED_QOS_2 = 0x02, "Granted QoS 2";
    /// 0x04 Disconnect with Will Message (DISCONNECT).
    DISCONNECT_WITH_WILL = 0x04, "Disconnect with Will Message";
    /// 0x10 No matching subscribers (PUBACK, PUBREC).
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers";
    /// 0x11 No subscription existed (UNSUBACK).
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed";
    /// 0x18 Continue authentication (AUTH).
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication";
    /// 0x19 Re-authenticate (AUTH).
    REAUTHENTICATE = 0x19, "Re-authenticate";
    /// 0x80 Unspecified error.
    UNSPECIFIED_ERROR = 0x80, "Unspecified error";
    /// 0x81 Malformed Packet.
    MALFORMED_PACKET = 0x81, "Malformed Packet";
    /// 0x82 Protocol Error.
    PROTOCOL_ERROR = 0x82, "Protocol Error";
    /// 0x83 Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error";
    /// 0x84 Unsupported Protocol Version (CONNACK).
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported Protocol Version";
    /// 0x85 Client Identifier not valid (CONNACK).
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client Identifier not valid";
    /// 0x86 Bad User Name or Password (CONNACK).
    BAD_USER_NAME_OR_PASSWORD = 0x86, "Bad User Name or Password";
    /// 0x87 Not authorized.
    NOT_AUTHORIZED = 0x87, "Not authorized";
    /// 0x88 Server unavailable (CONNACK).
    SERVER_UNAVAILABLE = 0x88, "Server unavailable";
    /// 0x89 Server busy.
    SERVER_BUSY = 0x89, "Server busy";
    /// 0x8A Banned (CONNACK).
    BANNED = 0x8a, "Banned";
    /// 0x8B Server shutting down (DISCONNECT).
    SERVER_SHUTTING_DOWN = 0x8b, "Server shutting down";
    /// 0x8C Bad authentication method.
    BAD_AUTHENTICATION_METHOD = 0x8c, "Bad authentication method";
    /// 0x8D Keep Alive timeout (DISCONNECT).
    KEEP_ALIVE_TIMEOUT = 0x8d, "Keep Alive timeout";
    /// 0x8E Session taken over (DISCONNECT).
    SESSION_TAKEN_OVER = 0x8e, "Session taken over";
    /// 0x8F Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8f, "Topic Filter invalid";
    /// 0x90 Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90, "Topic Name invalid";
    /// 0x91 Packet Identifier in use.
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet Identifier in use";
    /// 0x92 Packet Identifier not found.
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet Identifier not found";
    /// 0x93 Receive Maximum exceeded (DISCONNECT).
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive Maximum exceeded";
    /// 0x94 Topic Alias invalid (DISCONNECT).
    TOPIC_ALIAS_INVALID = 0x94, "Topic Alias invalid";
    /// 0x95 Packet too large.
    PACKET_TOO_LARGE = 0x95, "Packet too large";
    /// 0x96 Message rate too high (DISCONNECT).
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high";
    /// 0x97 Quota exceeded.
    QUOTA_EXCEEDED = 0x97, "Quota exceeded";
    /// 0x98 Administrative action (DISCONNECT).
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action";
    /// 0x99 Payload format invalid.
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid";
    /// 0x9A Retain not supported.
    RETAIN_NOT_SUPPORTED = 0x9a, "Retain not supported";
    /// 0x9B QoS not supported.
    QOS_NOT_SUPPORTED = 0x9b, "QoS not supported";
    /// 0x9C Use another server.
    USE_ANOTHER_SERVER = 0x9c, "Use another server";
    /// 0x9D Server moved.
    SERVER_MOVED = 0x9d, "Server moved";
    /// 0x9E Shared Subscriptions not supported.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9e, "Shared Subscriptions not supported";
    /// 0x9F Connection rate exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9f, "Connection rate exceeded";
    /// 0xA0 Maximum connect time (DISCONNECT).
    MAXIMUM_CONNECT_TIME = 0xa0, "Maximum connect time";
    /// 0xA1 Subscription Identifiers not supported.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xa1, "Subscription Identifiers not supported";
    /// 0xA2 Wildcard Subscriptions not supported.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xa2, "Wildcard Subscriptions not supported";
}

impl ReasonCode {
    /// 0x00 Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    /// 0x00 Granted QoS 0 (SUBACK).
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);

    /// `true` for codes below 0x80.
    pub const fn is_success(self) -> bool {
        self.0 < 0x80
    }

    /// `true` if `self` may appear in a packet of type `kind` (§3.x.2.1 of
    /// each packet).
    pub fn valid_for(self, kind: ReasonSet) -> bool {
        kind.codes().contains(&self.0)
    }
}

/// The packet types that carry reason codes, each with its allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonSet {
    /// CONNACK (§3.2.2.2).
    ConnAck,
    /// PUBACK (§3.4.2.1) and PUBREC (§3.5.2.1): the same set.
    PubAckRec,
    /// PUBREL (§3.6.2.1) and PUBCOMP (§3.7.2.1): the same set.
    PubRelComp,
    /// SUBACK (§3.9.3).
    SubAck,
    /// UNSUBACK (§3.11.3).
    UnsubAck,
    /// DISCONNECT (§3.14.2.1).
    Disconnect,
    /// AUTH (§3.15.2.1).
    Auth,
}

impl ReasonSet {
    /// The allowed byte values.
    pub const fn codes(self) -> &'static [u8] {
        match self {
            ReasonSet::ConnAck => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x90,
                0x95, 0x97, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9f,
            ],
            ReasonSet::PubAckRec => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            ReasonSet::PubRelComp => &[0x00, 0x92],
            ReasonSet::SubAck => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2,
            ],
            ReasonSet::UnsubAck => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8f, 0x91],
            ReasonSet::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1,
                0xa2,
            ],
            ReasonSet::Auth => &[0x00, 0x18, 0x19],
        }
    }
}

/// MQTT 3.1/3.1.1 CONNACK return codes (3.1.1 §3.2.2.3).
impl ReasonCode {
    /// The MQTT 3.x CONNACK return code that best matches `self`.
    pub const fn to_v3_connack(self) -> u8 {
        match self.0 {
            0x00 => 0x00,
            0x84 => 0x01,
            0x85 => 0x02,
            0x86 | 0x8c => 0x04,
            0x87 | 0x8a => 0x05,
            _ => 0x03,
        }
    }

    /// The reason code for an MQTT 3.x CONNACK return code, or `None` for a
    /// reserved value (6..=255).
    pub const fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Self::SUCCESS,
            0x01 => Self::UNSUPPORTED_PROTOCOL_VERSION,
            0x02 => Self::CLIENT_IDENTIFIER_NOT_VALID,
            0x03 => Self::SERVER_UNAVAILABLE,
            0x04 => Self::BAD_USER_NAME_OR_PASSWORD,
            0x05 => Self::NOT_AUTHORIZED,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code for `self`: the granted QoS, or 0x80
    /// for any failure.
    pub const fn to_v3_suback(self) -> u8 {
        match self.0 {
            0x00..=0x02 => self.0,
            _ => 0x80,
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{:#04x} {name}", self.0),
            None => write!(f, "{:#04x}", self.0),
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_code_has_a_name() {
        for set in [
            ReasonSet::ConnAck,
            ReasonSet::PubAckRec,
            ReasonSet::PubRelComp,
            ReasonSet::SubAck,
            ReasonSet::UnsubAck,
            ReasonSet::Disconnect,
            ReasonSet::Auth,
        ] {
            for &c in set.codes() {
                assert!(ReasonCode(c).name().is_some(), "{c:#x} in {set:?}");
            }
        }
        assert!(ReasonCode(0x03).name().is_none());
    }

    #[test]
    fn v3_connack_round_trip() {
        for code in 0..=5u8 {
            let rc = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(rc.to_v3_connack(), code);
        }
        assert!(ReasonCode::from_v3_connack(6).is_none());
    }
}
