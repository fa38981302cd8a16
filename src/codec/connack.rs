//! CONNACK (MQTT 3.1.1 §3.2, MQTT 5.0 §3.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{ConnAckProperties, Properties};
use super::wire;
use super::ReasonSet;
use super::{reason_in, DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};

/// The server's answer to CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present: the server resumed a stored session. Always false
    /// with a failure code ([MQTT-3.2.2-6]) and in MQTT 3.1, which lacks it.
    pub session_present: bool,
    /// Reason code. In MQTT 3.x it is sent as the matching return code
    /// ([`ReasonCode::to_v3_connack`]).
    pub reason: ReasonCode,
    /// CONNACK properties (v5; default otherwise).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A successful CONNACK.
    pub fn accept(session_present: bool) -> Self {
        Self {
            session_present,
            ..Self::default()
        }
    }

    /// A refusal with `reason` (session present 0).
    pub fn refuse(reason: ReasonCode) -> Self {
        Self {
            reason,
            ..Self::default()
        }
    }

    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = wire::read_u8(buf)?;
        if flags & !1 != 0 {
            return Err(DecodeError::InvalidConnAck);
        }
        let code = wire::read_u8(buf)?;
        let (reason, properties) = if version.is_v5() {
            let rc = reason_in(code, ReasonSet::ConnAck, PacketType::ConnAck)?;
            (rc, ConnAckProperties::decode(buf)?)
        } else {
            let rc = ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidConnAck)?;
            (rc, ConnAckProperties::default())
        };
        let session_present = flags & 1 != 0 && version != ProtocolVersion::V3_1;
        if session_present && !reason.is_success() {
            return Err(DecodeError::InvalidConnAck);
        }
        Ok(Self {
            session_present,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version.is_v5() {
            super::check_reason(self.reason, ReasonSet::ConnAck)?;
            let p = &self.properties;
            if p.maximum_qos == Some(crate::codec::QoS::ExactlyOnce) {
                return Err(EncodeError::InvalidValue("Maximum QoS 2 (absent means 2)"));
            }
            if p.receive_maximum == Some(0) || p.maximum_packet_size == Some(0) {
                return Err(EncodeError::InvalidValue(
                    "Receive Maximum or Maximum Packet Size 0",
                ));
            }
            if p.authentication_data.is_some() && p.authentication_method.is_none() {
                return Err(EncodeError::InvalidValue(
                    "authentication data without method",
                ));
            }
        }
        Ok(2 + if version.is_v5() {
            self.properties.encoded_len()?
        } else {
            0
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let present =
            self.session_present && self.reason.is_success() && version != ProtocolVersion::V3_1;
        buf.put_u8(u8::from(present));
        if version.is_v5() {
            buf.put_u8(self.reason.0);
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        } else {
            buf.put_u8(self.reason.to_v3_connack());
        }
    }
}
