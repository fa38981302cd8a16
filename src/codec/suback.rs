//! SUBACK (MQTT 3.1.1 §3.9, MQTT 5.0 §3.9).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{AckProperties, Ctx, Properties};
use super::{read_packet_id, reason_in, wire, ReasonSet};
use super::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};
use crate::PacketId;

/// The answer to SUBSCRIBE: one reason code per topic filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (v5).
    pub properties: AckProperties,
    /// Granted QoS (0x00..0x02) or a failure code, per filter. In 3.1.1 every
    /// failure is sent as 0x80.
    pub reasons: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(buf)?;
        let properties = if version.is_v5() {
            AckProperties::decode(buf, Ctx::SubAck)?
        } else {
            AckProperties::default()
        };
        let mut reasons = Vec::with_capacity(buf.len());
        while !buf.is_empty() {
            let code = wire::read_u8(buf)?;
            let rc = if version.is_v5() {
                reason_in(code, ReasonSet::SubAck, PacketType::SubAck)?
            } else {
                match code {
                    0x00..=0x02 | 0x80 => ReasonCode(code),
                    _ => {
                        return Err(DecodeError::InvalidReasonCode {
                            code,
                            packet: PacketType::SubAck,
                        })
                    }
                }
            };
            reasons.push(rc);
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
        if self.reasons.is_empty() {
            return Err(EncodeError::InvalidValue("SUBACK without reason codes"));
        }
        if version.is_v5() {
            for rc in &self.reasons {
                super::check_reason(*rc, ReasonSet::SubAck)?;
            }
        }
        let props = if version.is_v5() {
            self.properties.encoded_len()?
        } else {
            0
        };
        Ok(2 + props + self.reasons.len())
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
            for rc in &self.reasons {
                buf.put_u8(rc.0);
            }
        } else {
            for rc in &self.reasons {
                buf.put_u8(rc.to_v3_suback());
            }
        }
    }
}
