//! UNSUBACK (MQTT 3.1.1 §3.11, MQTT 5.0 §3.11).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{AckProperties, Ctx, Properties};
use super::{read_packet_id, reason_in, wire, ReasonSet};
use super::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};
use crate::PacketId;

/// The answer to UNSUBSCRIBE. In 3.x it carries only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (v5).
    pub properties: AckProperties,
    /// One reason code per topic filter (v5; empty in 3.x).
    pub reasons: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(buf)?;
        if !version.is_v5() {
            return Ok(Self {
                packet_id,
                properties: AckProperties::default(),
                reasons: vec![],
            });
        }
        let properties = AckProperties::decode(buf, Ctx::UnsubAck)?;
        let mut reasons = Vec::with_capacity(buf.len());
        while !buf.is_empty() {
            let code = wire::read_u8(buf)?;
            reasons.push(reason_in(code, ReasonSet::UnsubAck, PacketType::UnsubAck)?);
        }
        if reasons.is_empty() {
            return Err(DecodeError::NoReasonCodes);
        }
        Ok(Self {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        if self.reasons.is_empty() {
            return Err(EncodeError::InvalidValue("UNSUBACK without reason codes"));
        }
        for rc in &self.reasons {
            super::check_reason(*rc, ReasonSet::UnsubAck)?;
        }
        Ok(2 + self.properties.encoded_len()? + self.reasons.len())
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
            for rc in &self.reasons {
                buf.put_u8(rc.0);
            }
        }
    }
}
