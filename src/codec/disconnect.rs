//! DISCONNECT (MQTT 3.1.1 §3.14, MQTT 5.0 §3.14).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{DisconnectProperties, Properties};
use super::{reason_in, wire, ReasonSet};
use super::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};

/// The last packet of a connection. In 3.x it has no body and only a client
/// sends it; in v5 either side may, with a reason code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (v5); 0x00 Normal disconnection.
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut out = Self::default();
        if version.is_v5() && !buf.is_empty() {
            let code = wire::read_u8(buf)?;
            out.reason = reason_in(code, ReasonSet::Disconnect, PacketType::Disconnect)?;
            if !buf.is_empty() {
                out.properties = DisconnectProperties::decode(buf)?;
            }
        }
        Ok(out)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(0);
        }
        super::check_reason(self.reason, ReasonSet::Disconnect)?;
        Ok(
            match (
                self.reason == ReasonCode::NORMAL_DISCONNECTION,
                self.properties.is_empty(),
            ) {
                (true, true) => 0,
                (false, true) => 1,
                (_, false) => 1 + self.properties.encoded_len()?,
            },
        )
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if !version.is_v5() {
            return;
        }
        let normal = self.reason == ReasonCode::NORMAL_DISCONNECTION;
        if !normal || !self.properties.is_empty() {
            buf.put_u8(self.reason.0);
        }
        if !self.properties.is_empty() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
    }
}
