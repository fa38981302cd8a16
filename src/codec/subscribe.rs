//! SUBSCRIBE (MQTT 3.1.1 §3.8, MQTT 5.0 §3.8).

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{Properties, SubscribeProperties};
use super::wire::{self, check_prefixed, prefixed_len};
use super::{read_packet_id, DecodeError, EncodeError, ProtocolVersion, QoS};
use crate::topic::TopicFilter;
use crate::PacketId;

/// A request to add subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// SUBSCRIBE properties (v5).
    pub properties: SubscribeProperties,
    /// One or more topic filters with their options, in order.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

/// What to do with retained messages when a subscription is made (v5
/// §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not already exist.
    SendIfNew = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options (v5 §3.8.3.1; in 3.x only the maximum QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// No Local: do not deliver the subscriber's own publications.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag as the publisher set it.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with maximum QoS `qos` and v5 defaults.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = if version.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved);
        }
        let qos = QoS::from_u8(byte & 0b11)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(Self {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2
                | u8::from(self.retain_as_published) << 3
                | (self.retain_handling as u8) << 4;
        }
        byte
    }
}

impl Subscribe {
    pub(crate) fn decode(buf: &mut Bytes, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(buf)?;
        let properties = if version.is_v5() {
            SubscribeProperties::decode(buf)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !buf.is_empty() {
            let filter = TopicFilter::new(wire::read_string(buf)?)
                .map_err(DecodeError::InvalidTopicFilter)?;
            let options = SubscriptionOptions::decode(wire::read_u8(buf)?, version)?;
            if options.no_local && filter.is_shared() {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push((filter, options));
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
            return Err(EncodeError::InvalidValue("SUBSCRIBE without topic filters"));
        }
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.encoded_len()?;
        }
        for (f, o) in &self.filters {
            if o.no_local && f.is_shared() {
                return Err(EncodeError::InvalidValue(
                    "no local on a shared subscription",
                ));
            }
            check_prefixed(f.len(), "topic filter")?;
            len += prefixed_len(f.len()) + 1;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            let len = self.properties.body_len().unwrap_or(0);
            self.properties.write(len, buf);
        }
        for (f, o) in &self.filters {
            wire::put_binary(buf, f.as_bytes());
            buf.put_u8(o.encode(version));
        }
    }
}
