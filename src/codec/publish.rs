//! PUBLISH (MQTT 3.1.1 §3.3, MQTT 5.0 §3.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{Properties, PublishProperties};
use super::wire::{self, check_prefixed, prefixed_len};
use super::{read_packet_id, DecodeError, EncodeError, ProtocolVersion, QoS};
use crate::topic::{TopicError, TopicName};
use crate::PacketId;

/// An application message in transit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery (never set with QoS 0).
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic name; empty only in v5 when a topic alias stands in for it.
    pub topic: TopicName,
    /// Packet identifier, present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (v5).
    pub properties: PublishProperties,
    /// Application payload: a slice of the read buffer when decoded.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 message with no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
        }
    }

    /// `false` when the Payload Format Indicator says UTF-8 and the payload
    /// is not (v5 §3.3.2.3.2: the receiver may answer 0x99 Payload format
    /// invalid). The session decides how to answer, so decoding does not fail.
    pub fn payload_format_valid(&self) -> bool {
        self.properties.payload_format_indicator != Some(true)
            || std::str::from_utf8(&self.payload).is_ok()
    }

    pub(crate) fn header_flags(&self) -> u8 {
        let dup = self.dup && self.qos != QoS::AtMostOnce;
        (u8::from(dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn decode(
        flags: u8,
        buf: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        let retain = flags & 1 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQos0);
        }
        let raw_topic = wire::read_string(buf)?;
        let topic = if raw_topic.is_empty() {
            if !version.is_v5() {
                return Err(DecodeError::InvalidTopicName(TopicError::Empty));
            }
            TopicName::empty()
        } else {
            TopicName::new(raw_topic).map_err(DecodeError::InvalidTopicName)?
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(read_packet_id(buf)?),
        };
        let properties = if version.is_v5() {
            PublishProperties::decode(buf)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        let payload = std::mem::take(buf);
        Ok(Self {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_prefixed(self.topic.len(), "topic name")?;
        let mut len = prefixed_len(self.topic.len()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id.is_none() {
                return Err(EncodeError::InvalidValue(
                    "QoS > 0 PUBLISH without packet id",
                ));
            }
            len += 2;
        }
        if version.is_v5() {
            if self.properties.topic_alias == Some(0)
                || (self.topic.is_empty() && self.properties.topic_alias.is_none())
            {
                return Err(EncodeError::InvalidValue(
                    "empty topic needs a non-zero topic alias",
                ));
            }
            len += if self.properties.is_empty() {
                1
            } else {
                self.properties.encoded_len()?
            };
        } else if self.topic.is_empty() {
            return Err(EncodeError::NotInVersion("empty topic name"));
        }
        Ok(len)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        wire::put_binary(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id.map_or(0, PacketId::get));
        }
        if version.is_v5() {
            if self.properties.is_empty() {
                buf.put_u8(0);
            } else {
                let len = self.properties.body_len().unwrap_or(0);
                self.properties.write(len, buf);
            }
        }
        buf.put_slice(&self.payload);
    }
}
