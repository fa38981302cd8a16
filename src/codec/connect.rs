//! CONNECT (MQTT 3.1.1 §3.1, MQTT 5.0 §3.1).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{ConnectProperties, Properties, WillProperties};
use super::wire::{self, check_prefixed, prefixed_len};
use super::{DecodeError, EncodeError, ProtocolVersion, QoS};
use crate::topic::TopicName;
use crate::ByteStr;

/// A client's request to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version, from the protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    /// CONNECT properties (v5; default otherwise).
    pub properties: ConnectProperties,
    /// Client identifier; may be empty (the server then assigns one).
    pub client_id: ByteStr,
    /// The will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// User name.
    pub username: Option<ByteStr>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// A will message: published by the server when the connection ends without
/// a normal DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will topic (a topic name, no wildcards).
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will properties (v5; default otherwise).
    pub properties: WillProperties,
}

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_FLAG: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

impl Connect {
    /// A CONNECT with defaults: clean start, keep alive 60 s, no will, no
    /// credentials.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<ByteStr>) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            properties: ConnectProperties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let name = wire::read_binary(buf)?;
        let level = wire::read_u8(buf)?;
        let protocol = match (&name[..], level) {
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT" | b"MQIsdp", level) => {
                return Err(DecodeError::UnsupportedProtocolVersion(level))
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = wire::read_u8(buf)?;
        if flags & RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = flags & WILL_FLAG != 0;
        let will_qos = QoS::from_u8((flags >> WILL_QOS_SHIFT) & 0b11)?;
        let will_retain = flags & WILL_RETAIN != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let has_username = flags & USERNAME != 0;
        let has_password = flags & PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let clean_start = flags & CLEAN_START != 0;
        let keep_alive = wire::read_u16(buf)?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(buf)?
        } else {
            ConnectProperties::default()
        };

        let client_id = wire::read_string(buf)?;
        if client_id.is_empty() {
            match protocol {
                ProtocolVersion::V3_1 => return Err(DecodeError::ClientIdRejected),
                ProtocolVersion::V3_1_1 if !clean_start => {
                    return Err(DecodeError::ClientIdRejected)
                }
                _ => {}
            }
        }
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                WillProperties::decode(buf)?
            } else {
                WillProperties::default()
            };
            let topic =
                TopicName::new(wire::read_string(buf)?).map_err(DecodeError::InvalidTopicName)?;
            let payload = wire::read_binary(buf)?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(wire::read_string(buf)?)
        } else {
            None
        };
        let password = if has_password {
            Some(wire::read_binary(buf)?)
        } else {
            None
        };
        Ok(Self {
            protocol,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        if let Some(w) = &self.will {
            flags |= WILL_FLAG | (w.qos as u8) << WILL_QOS_SHIFT;
            if w.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.clean_start {
            flags |= CLEAN_START;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::NotInVersion("password without user name"));
        }
        let p = &self.properties;
        if v5 && (p.receive_maximum == Some(0) || p.maximum_packet_size == Some(0)) {
            return Err(EncodeError::InvalidValue(
                "Receive Maximum or Maximum Packet Size 0",
            ));
        }
        if v5 && p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(EncodeError::InvalidValue(
                "authentication data without method",
            ));
        }
        if self.will.as_ref().is_some_and(|w| w.topic.is_empty()) {
            return Err(EncodeError::InvalidValue("empty will topic"));
        }
        let mut len = prefixed_len(self.protocol.protocol_name().len()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len()?;
        }
        check_prefixed(self.client_id.len(), "client identifier")?;
        len += prefixed_len(self.client_id.len());
        if let Some(w) = &self.will {
            if v5 {
                len += w.properties.encoded_len()?;
            }
            check_prefixed(w.topic.len(), "will topic")?;
            check_prefixed(w.payload.len(), "will payload")?;
            len += prefixed_len(w.topic.len()) + prefixed_len(w.payload.len());
        }
        if let Some(u) = &self.username {
            check_prefixed(u.len(), "user name")?;
            len += prefixed_len(u.len());
        }
        if let Some(p) = &self.password {
            check_prefixed(p.len(), "password")?;
            len += prefixed_len(p.len());
        }
        Ok(len)
    }

    /// Writes the body; [`Connect::body_len`] has validated every field.
    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        wire::put_binary(buf, self.protocol.protocol_name().as_bytes());
        buf.put_u8(self.protocol as u8);
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if v5 {
            // Lengths were checked by body_len; a failure here cannot happen.
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
        wire::put_binary(buf, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v5 {
                let len = w.properties.body_len().unwrap_or(0);
                w.properties.write(len, buf);
            }
            wire::put_binary(buf, w.topic.as_bytes());
            wire::put_binary(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            wire::put_binary(buf, u.as_bytes());
        }
        if let Some(p) = &self.password {
            wire::put_binary(buf, p);
        }
    }
}
