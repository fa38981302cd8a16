//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 3.1.1 §3.4–3.7, MQTT 5.0
//! §3.4–3.7).
//!
//! The four share one layout — packet identifier, then in v5 an optional
//! reason code and optional properties — so they share one struct; the
//! [`super::Packet`] variant says which one it is.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{AckProperties, Ctx, Properties};
use super::{read_packet_id, reason_in, wire, ReasonSet};
use super::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};
use crate::PacketId;

/// The body of PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// The packet identifier of the PUBLISH (or PUBREL) being answered.
    pub packet_id: PacketId,
    /// Reason code (v5; success in 3.x).
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful response for `packet_id`.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }

    /// A response for `packet_id` with `reason`.
    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Self {
        Self {
            packet_id,
            reason,
            properties: AckProperties::default(),
        }
    }

    fn reason_set(packet: PacketType) -> ReasonSet {
        match packet {
            PacketType::PubRel | PacketType::PubComp => ReasonSet::PubRelComp,
            _ => ReasonSet::PubAckRec,
        }
    }

    pub(crate) fn decode(
        buf: &mut Bytes,
        version: ProtocolVersion,
        packet: PacketType,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(buf)?;
        let mut out = Self::new(packet_id);
        // v5 §3.4.2.1: a remaining length of 2 means success, no properties;
        // of 3, a reason code and no properties.
        if version.is_v5() && !buf.is_empty() {
            let code = wire::read_u8(buf)?;
            out.reason = reason_in(code, Self::reason_set(packet), packet)?;
            if !buf.is_empty() {
                out.properties = AckProperties::decode(buf, Ctx::PubResp)?;
            }
        }
        Ok(out)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        // The set depends on the packet type, which the Packet variant knows;
        // PUBACK/PUBREC and PUBREL/PUBCOMP sets together are checked here and
        // the exact set in `Packet::encode`.
        if self.properties.is_empty() {
            // The shortest form: omit a success reason code, and omit the
            // property length when there are no properties.
            Ok(if self.reason == ReasonCode::SUCCESS {
                2
            } else {
                3
            })
        } else {
            Ok(3 + self.properties.encoded_len()?)
        }
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if !version.is_v5() {
            return;
        }
        if self.properties.is_empty() {
            if self.reason != ReasonCode::SUCCESS {
                buf.put_u8(self.reason.0);
            }
        } else {
            buf.put_u8(self.reason.0);
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
    }
}
