//! AUTH (MQTT 5.0 §3.15): extended authentication exchange. Packet type 15 is
//! reserved in MQTT 3.x and rejected there.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{AuthProperties, Properties};
use super::{reason_in, wire, ReasonSet};
use super::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};

/// An authentication exchange step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 Success, 0x18 Continue authentication or 0x19 Re-authenticate.
    pub reason: ReasonCode,
    /// Properties: authentication method and data, reason string, user
    /// properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut out = Self::default();
        if !buf.is_empty() {
            let code = wire::read_u8(buf)?;
            out.reason = reason_in(code, ReasonSet::Auth, PacketType::Auth)?;
            if !buf.is_empty() {
                out.properties = AuthProperties::decode(buf)?;
            }
        }
        Ok(out)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion("AUTH"));
        }
        super::check_reason(self.reason, ReasonSet::Auth)?;
        if self.properties.authentication_data.is_some()
            && self.properties.authentication_method.is_none()
        {
            return Err(EncodeError::InvalidValue(
                "authentication data without method",
            ));
        }
        Ok(
            match (
                self.reason == ReasonCode::SUCCESS,
                self.properties.is_empty(),
            ) {
                (true, true) => 0,
                (false, true) => 1,
                (_, false) => 1 + self.properties.encoded_len()?,
            },
        )
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let success = self.reason == ReasonCode::SUCCESS;
        if !success || !self.properties.is_empty() {
            buf.put_u8(self.reason.0);
        }
        if !self.properties.is_empty() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
    }
}
