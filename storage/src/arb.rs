//! proptest strategies for every record type (tests only).

use std::sync::Arc;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use vmqtt::broker::{NodeId, RetainVersion, ShardId};
use vmqtt::codec::{
    LastWill, ProtocolVersion, PublishProperties, QoS, RetainHandling, SubscriptionOptions,
    WillProperties,
};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId, PacketId};

use crate::record::{
    DeliveryState, MessageId, QueueEntry, Record, SessionRecord, StoredMessage, SubscriptionRecord,
};

pub(crate) fn bytestr() -> impl Strategy<Value = ByteStr> {
    "[a-zA-Z0-9 /é€-]{0,12}".prop_map(ByteStr::from)
}

pub(crate) fn client_id() -> impl Strategy<Value = ClientId> {
    "[a-zA-Z0-9_é-]{0,16}".prop_map(|s| ClientId::new(ByteStr::from(s)))
}

pub(crate) fn topic() -> impl Strategy<Value = TopicName> {
    "\\$?[a-z0-9é]{1,4}(/[a-z0-9]{0,4}){0,3}"
        .prop_map(|s| TopicName::new(ByteStr::from(s)).expect("valid topic"))
}

pub(crate) fn filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof!["[a-z0-9]{0,3}", Just("+".to_owned())];
    (proptest::bool::ANY, vec(level, 1..4), proptest::bool::ANY).prop_map(
        |(shared, levels, hash)| {
            let mut s = levels.join("/");
            if hash {
                s.push_str("/#");
            }
            if s.is_empty() {
                s.push('#');
            }
            if shared {
                s = format!("$share/g/{s}");
            }
            TopicFilter::new(ByteStr::from(s)).expect("valid filter")
        },
    )
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn users() -> impl Strategy<Value = Vec<(ByteStr, ByteStr)>> {
    vec((bytestr(), bytestr()), 0..3)
}

pub(crate) fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(topic()),
        option::of(bin()),
        users(),
        vec(1u32..268_435_456, 0..3),
        option::of(bytestr()),
    )
        .prop_map(
            |(pfi, mei, alias, rt, cd, up, sids, ct)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: alias,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                subscription_identifiers: sids,
                content_type: ct,
            },
        )
}

pub(crate) fn will() -> impl Strategy<Value = LastWill> {
    (
        topic(),
        bin(),
        qos(),
        any::<bool>(),
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(bytestr()),
        option::of(topic()),
        option::of(bin()),
        users(),
    )
        .prop_map(
            |(topic, payload, qos, retain, delay, pfi, mei, ct, rt, cd, up)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties: WillProperties {
                    will_delay_interval: delay,
                    payload_format_indicator: pfi,
                    message_expiry_interval: mei,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties: up,
                },
            },
        )
}

pub(crate) fn session() -> impl Strategy<Value = SessionRecord> {
    (
        prop_oneof![
            Just(ProtocolVersion::V3_1),
            Just(ProtocolVersion::V3_1_1),
            Just(ProtocolVersion::V5)
        ],
        any::<u32>(),
        option::of(will()),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(protocol, expiry_interval, will, disconnected_at_ms)| SessionRecord {
                protocol,
                expiry_interval,
                will,
                disconnected_at_ms,
            },
        )
}

pub(crate) fn subscription() -> impl Strategy<Value = SubscriptionRecord> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        option::of(1u32..268_435_456),
    )
        .prop_map(|(qos, no_local, rap, rh, id)| SubscriptionRecord {
            options: SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            },
            id,
        })
}

pub(crate) fn message() -> impl Strategy<Value = StoredMessage> {
    (
        topic(),
        bin(),
        qos(),
        any::<bool>(),
        publish_properties(),
        option::of(any::<u64>()),
        option::of(client_id()),
    )
        .prop_map(
            |(topic, payload, qos, retain, properties, expires_at_ms, origin)| StoredMessage {
                topic,
                payload,
                qos,
                retain,
                properties,
                expires_at_ms,
                origin,
            },
        )
}

pub(crate) fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|n| PacketId::new(n).expect("non-zero"))
}

pub(crate) fn delivery_state() -> impl Strategy<Value = DeliveryState> {
    prop_oneof![
        Just(DeliveryState::Queued),
        packet_id().prop_map(DeliveryState::AwaitPubAck),
        packet_id().prop_map(DeliveryState::AwaitPubRec),
        packet_id().prop_map(DeliveryState::AwaitPubComp),
    ]
}

pub(crate) fn queue_entry() -> impl Strategy<Value = QueueEntry> {
    (
        any::<u64>(),
        qos(),
        any::<bool>(),
        vec(1u32..268_435_456, 0..4),
        delivery_state(),
    )
        .prop_map(|(m, qos, retain, subscription_ids, state)| QueueEntry {
            message: MessageId(m),
            qos,
            retain,
            subscription_ids,
            state,
        })
}

pub(crate) fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (client_id(), session())
            .prop_map(|(client_id, session)| Record::Session { client_id, session }),
        (client_id(), filter(), subscription()).prop_map(|(client_id, filter, subscription)| {
            Record::Subscription {
                client_id,
                filter,
                subscription,
            }
        }),
        (any::<u64>(), message()).prop_map(|(id, m)| Record::Message {
            id: MessageId(id),
            message: Arc::new(m)
        }),
        (client_id(), any::<u64>(), queue_entry()).prop_map(|(client_id, seq, entry)| {
            Record::QueueEntry {
                client_id,
                seq,
                entry,
            }
        }),
        (client_id(), packet_id()).prop_map(|(client_id, packet_id)| Record::InboundQos2 {
            client_id,
            packet_id
        }),
        (message(), any::<u64>(), any::<u16>(), any::<u16>()).prop_map(|(m, ms, node, shard)| {
            Record::Retained {
                message: Arc::new(m),
                version: RetainVersion {
                    ms,
                    node: NodeId(node),
                    shard: ShardId::new(shard),
                },
            }
        }),
    ]
}
