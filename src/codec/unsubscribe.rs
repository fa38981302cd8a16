//! UNSUBSCRIBE (MQTT 3.1.1 §3.10, MQTT 5.0 §3.10).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{Properties, UnsubscribeProperties};
use super::wire::{self, check_prefixed, prefixed_len};
use super::{read_packet_id, DecodeError, EncodeError, ProtocolVersion};
use crate::topic::TopicFilter;
use crate::PacketId;

/// A request to remove subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (v5).
    pub properties: UnsubscribeProperties,
    /// One or more topic filters.
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(buf)?;
        let properties = if version.is_v5() {
            UnsubscribeProperties::decode(buf)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !buf.is_empty() {
            let f = TopicFilter::new(wire::read_string(buf)?)
                .map_err(DecodeError::InvalidTopicFilter)?;
            filters.push(f);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Self {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidValue(
                "UNSUBSCRIBE without topic filters",
            ));
        }
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.encoded_len()?;
        }
        for f in &self.filters {
            check_prefixed(f.len(), "topic filter")?;
            len += prefixed_len(f.len());
        }
        Ok(len)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
        for f in &self.filters {
            wire::put_binary(buf, f.as_bytes());
        }
    }
}
