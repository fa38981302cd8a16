//! Byte-exact vectors for every packet type in every protocol version, and
//! one test per malformed-packet / protocol-error rule.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::topic::{TopicError, TopicFilter, TopicName};
use crate::{ByteStr, PacketId};

use ProtocolVersion::{V3_1, V3_1_1, V5};

const MAX: u32 = 1 << 20;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn topic(s: &'static str) -> TopicName {
    TopicName::from_static(s).unwrap()
}

fn filter(s: &'static str) -> TopicFilter {
    TopicFilter::from_static(s).unwrap()
}

fn s(v: &'static str) -> ByteStr {
    ByteStr::from_static(v)
}

/// Decodes `bytes` in `version`, expecting exactly `packet` and every byte
/// consumed; encodes `packet` and expects exactly `bytes`; checks that each
/// strict prefix asks for more bytes without consuming any.
#[track_caller]
fn vector(version: ProtocolVersion, bytes: &[u8], packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(
        decode(&mut buf, version, MAX),
        Ok(Some(packet.clone())),
        "decode {version:?}"
    );
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encode {version:?}");
    assert_eq!(packet.encoded_len(version).unwrap(), bytes.len());
    for cut in 0..bytes.len() {
        let mut partial = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut partial, version, MAX),
            Ok(None),
            "prefix of {cut} bytes"
        );
        assert_eq!(partial.len(), cut);
    }
}

#[track_caller]
fn reject(version: ProtocolVersion, bytes: &[u8], err: DecodeError) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX), Err(err), "{bytes:02x?}");
}

#[track_caller]
fn reject_all(bytes: &[u8], err: DecodeError) {
    for v in [V3_1, V3_1_1, V5] {
        reject(v, bytes, err.clone());
    }
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v311_minimal() {
    let bytes = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
    vector(
        V3_1_1,
        bytes,
        Packet::Connect(Box::new(Connect::new(V3_1_1, "c1"))),
    );
    // The protocol level in CONNECT wins over the connection's version.
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(
        matches!(decode(&mut buf, V5, MAX), Ok(Some(Packet::Connect(c))) if c.protocol == V3_1_1)
    );
}

#[test]
fn connect_v31_mqisdp() {
    let bytes = b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02c1";
    vector(
        V3_1,
        bytes,
        Packet::Connect(Box::new(Connect::new(V3_1, "c1"))),
    );
}

#[test]
fn connect_v311_will_and_credentials() {
    let mut c = Connect::new(V3_1_1, "c1");
    c.clean_start = false;
    c.keep_alive = 0;
    c.will = Some(LastWill {
        topic: topic("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"p"));
    // flags: user 0x80 | pass 0x40 | will QoS 2 0x10 | will 0x04 = 0xd4
    let bytes =
        b"\x10\x1c\x00\x04MQTT\x04\xd4\x00\x00\x00\x02c1\x00\x01w\x00\x03bye\x00\x01u\x00\x01p";
    vector(V3_1_1, bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_properties_and_will() {
    let mut c = Connect::new(V5, "c1");
    c.properties.session_expiry_interval = Some(120);
    c.properties.receive_maximum = Some(10);
    c.will = Some(LastWill {
        topic: topic("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties {
            will_delay_interval: Some(5),
            ..Default::default()
        },
    });
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"p"));
    let bytes: &[u8] = b"\x10\x2b\x00\x04MQTT\x05\xee\x00\x3c\
        \x08\x11\x00\x00\x00\x78\x21\x00\x0a\
        \x00\x02c1\
        \x05\x18\x00\x00\x00\x05\x00\x01w\x00\x03bye\
        \x00\x01u\x00\x01p";
    vector(V5, bytes, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_every_property() {
    let mut c = Connect::new(V5, "");
    c.properties = ConnectProperties {
        session_expiry_interval: Some(1),
        receive_maximum: Some(2),
        maximum_packet_size: Some(3),
        topic_alias_maximum: Some(4),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        user_properties: vec![(s("k"), s("v"))],
        authentication_method: Some(s("m")),
        authentication_data: Some(Bytes::from_static(b"d")),
    };
    c.will = Some(LastWill {
        topic: topic("w"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(1),
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(2),
            content_type: Some(s("t")),
            response_topic: Some(topic("r")),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![(s("a"), s("b")), (s("a"), s("c"))],
        },
    });
    let packet = Packet::Connect(Box::new(c));
    let mut out = BytesMut::new();
    packet.encode(V5, &mut out).unwrap();
    let mut buf = out.clone();
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(packet)));
    // Spot-check the wire: property length 0x28 after keep alive.
    assert_eq!(&out[2..13], b"\x00\x04MQTT\x05\x06\x00\x3c\x23");
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_vectors() {
    vector(
        V3_1_1,
        b"\x20\x02\x01\x00",
        Packet::ConnAck(ConnAck::accept(true)),
    );
    vector(
        V3_1_1,
        b"\x20\x02\x00\x05",
        Packet::ConnAck(ConnAck::refuse(ReasonCode::NOT_AUTHORIZED)),
    );
    vector(
        V3_1_1,
        b"\x20\x02\x00\x01",
        Packet::ConnAck(ConnAck::refuse(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)),
    );
    // MQTT 3.1 has no session present flag.
    vector(
        V3_1,
        b"\x20\x02\x00\x00",
        Packet::ConnAck(ConnAck::accept(false)),
    );
    let mut out = BytesMut::new();
    Packet::ConnAck(ConnAck::accept(true))
        .encode(V3_1, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\x20\x02\x00\x00");
    vector(
        V5,
        b"\x20\x03\x00\x00\x00",
        Packet::ConnAck(ConnAck::accept(false)),
    );
    vector(
        V5,
        b"\x20\x03\x00\x8a\x00",
        Packet::ConnAck(ConnAck::refuse(ReasonCode::BANNED)),
    )
}

#[test]
fn connack_v5_properties() {
    let mut ack = ConnAck::accept(true);
    ack.properties.assigned_client_identifier = Some(s("a"));
    ack.properties.topic_alias_maximum = Some(5);
    ack.properties.maximum_qos = Some(QoS::AtLeastOnce);
    vector(
        V5,
        b"\x20\x0c\x01\x00\x09\x12\x00\x01a\x22\x00\x05\x24\x01",
        Packet::ConnAck(ack),
    );
}

#[test]
fn connack_v5_failure_maps_to_v3_return_code() {
    let mut out = BytesMut::new();
    Packet::ConnAck(ConnAck::refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD))
        .encode(V3_1_1, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\x20\x02\x00\x04");
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_v3_vectors() {
    for v in [V3_1, V3_1_1, V5] {
        let p = Publish::new(topic("a/b"), Bytes::from_static(b"hi"));
        let bytes: &[u8] = if v.is_v5() {
            b"\x30\x08\x00\x03a/b\x00hi"
        } else {
            b"\x30\x07\x00\x03a/bhi"
        };
        vector(v, bytes, Packet::Publish(p));
    }
    let p = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: Some(pid(10)),
        ..Publish::new(topic("a/b"), Bytes::from_static(b"hi"))
    };
    vector(
        V3_1_1,
        b"\x3b\x09\x00\x03a/b\x00\x0ahi",
        Packet::Publish(p.clone()),
    );
    vector(V3_1, b"\x3b\x09\x00\x03a/b\x00\x0ahi", Packet::Publish(p));
}

#[test]
fn publish_v5_every_property() {
    let p = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(1)),
        properties: PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some(topic("r")),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![(s("k"), s("v"))],
            subscription_identifiers: vec![5],
            content_type: Some(s("t")),
        },
        ..Publish::new(topic("a/b"), Bytes::from_static(b"hi"))
    };
    let bytes: &[u8] = b"\x34\x29\x00\x03a/b\x00\x01\x1f\
        \x01\x01\x02\x00\x00\x00\x3c\x03\x00\x01t\x08\x00\x01r\x09\x00\x01c\
        \x0b\x05\x23\x00\x03\x26\x00\x01k\x00\x01vhi";
    vector(V5, bytes, Packet::Publish(p));
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    let mut p = Publish::new(TopicName::empty(), Bytes::new());
    p.properties.topic_alias = Some(1);
    vector(V5, b"\x30\x06\x00\x00\x03\x23\x00\x01", Packet::Publish(p));
}

#[test]
fn publish_payload_is_a_slice_of_the_read_buffer() {
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi\x30\x07\x00\x03a/bhi"[..]);
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V3_1_1, MAX) else {
        panic!()
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7);
    assert_eq!(p.topic.as_ptr() as usize, start + 4);
    assert_eq!(buf.len(), 9, "the second frame stays in the buffer");
}

#[test]
fn publish_payload_format_indicator() {
    let mut p = Publish::new(topic("a"), Bytes::from_static(b"\xff"));
    assert!(p.payload_format_valid());
    p.properties.payload_format_indicator = Some(true);
    assert!(!p.payload_format_valid());
    p.payload = Bytes::from_static("é".as_bytes());
    assert!(p.payload_format_valid());
}

// ------------------------------------------------- PUBACK/REC/REL/COMP

#[test]
fn pub_response_vectors() {
    let r = PubResponse::new(pid(10));
    for v in [V3_1, V3_1_1, V5] {
        vector(v, b"\x40\x02\x00\x0a", Packet::PubAck(r.clone()));
        vector(v, b"\x50\x02\x00\x0a", Packet::PubRec(r.clone()));
        vector(v, b"\x62\x02\x00\x0a", Packet::PubRel(r.clone()));
        vector(v, b"\x70\x02\x00\x0a", Packet::PubComp(r.clone()));
    }
    let nms = PubResponse::with_reason(pid(10), ReasonCode::NO_MATCHING_SUBSCRIBERS);
    vector(V5, b"\x40\x03\x00\x0a\x10", Packet::PubAck(nms.clone()));
    let mut with_string = nms;
    with_string.properties.reason_string = Some(s("x"));
    vector(
        V5,
        b"\x50\x08\x00\x0a\x10\x04\x1f\x00\x01x",
        Packet::PubRec(with_string),
    );
    let nf = PubResponse::with_reason(pid(10), ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    vector(V5, b"\x62\x03\x00\x0a\x92", Packet::PubRel(nf.clone()));
    vector(V5, b"\x70\x03\x00\x0a\x92", Packet::PubComp(nf));
    // A v5 reason code and property length of 0 spelled out is accepted too.
    let mut buf = BytesMut::from(&b"\x40\x04\x00\x0a\x00\x00"[..]);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PubAck(r))));
}

// -------------------------------------------------------------- SUBSCRIBE

#[test]
fn subscribe_vectors() {
    let sub = Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        filters: vec![
            (filter("a/+"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            (filter("#"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
        ],
    };
    let bytes = b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x02";
    vector(V3_1_1, bytes, Packet::Subscribe(sub.clone()));
    vector(V3_1, bytes, Packet::Subscribe(sub));
    let sub = Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            ..Default::default()
        },
        filters: vec![(
            filter("a/+"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    };
    vector(
        V5,
        b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/+\x2d",
        Packet::Subscribe(sub),
    );
}

#[test]
fn subscribe_shared_filter() {
    let sub = Subscribe {
        packet_id: pid(2),
        properties: SubscribeProperties::default(),
        filters: vec![(
            filter("$share/g/a/#"),
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
    };
    vector(
        V5,
        b"\x82\x12\x00\x02\x00\x00\x0c$share/g/a/#\x00",
        Packet::Subscribe(sub),
    );
}

#[test]
fn suback_vectors() {
    let ack = SubAck {
        packet_id: pid(1),
        properties: AckProperties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
    };
    vector(
        V3_1_1,
        b"\x90\x04\x00\x01\x01\x80",
        Packet::SubAck(ack.clone()),
    );
    vector(V3_1, b"\x90\x04\x00\x01\x01\x80", Packet::SubAck(ack));
    let ack = SubAck {
        packet_id: pid(1),
        properties: AckProperties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID],
    };
    vector(
        V5,
        b"\x90\x05\x00\x01\x00\x01\x8f",
        Packet::SubAck(ack.clone()),
    );
    // v5-only failure codes become 0x80 for 3.1.1.
    let mut out = BytesMut::new();
    Packet::SubAck(ack).encode(V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], b"\x90\x04\x00\x01\x01\x80");
}

#[test]
fn unsubscribe_vectors() {
    let u = Unsubscribe {
        packet_id: pid(2),
        properties: UnsubscribeProperties::default(),
        filters: vec![filter("a/b")],
    };
    vector(
        V3_1_1,
        b"\xa2\x07\x00\x02\x00\x03a/b",
        Packet::Unsubscribe(u.clone()),
    );
    vector(
        V3_1,
        b"\xa2\x07\x00\x02\x00\x03a/b",
        Packet::Unsubscribe(u.clone()),
    );
    vector(
        V5,
        b"\xa2\x08\x00\x02\x00\x00\x03a/b",
        Packet::Unsubscribe(u),
    );
}

#[test]
fn unsuback_vectors() {
    let u = UnsubAck {
        packet_id: pid(2),
        properties: AckProperties::default(),
        reasons: vec![],
    };
    vector(V3_1_1, b"\xb0\x02\x00\x02", Packet::UnsubAck(u.clone()));
    vector(V3_1, b"\xb0\x02\x00\x02", Packet::UnsubAck(u));
    let u = UnsubAck {
        packet_id: pid(2),
        properties: AckProperties::default(),
        reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
    };
    vector(V5, b"\xb0\x05\x00\x02\x00\x00\x11", Packet::UnsubAck(u));
}

// -------------------------------------------- PING, DISCONNECT, AUTH

#[test]
fn ping_vectors() {
    for v in [V3_1, V3_1_1, V5] {
        vector(v, b"\xc0\x00", Packet::PingReq);
        vector(v, b"\xd0\x00", Packet::PingResp);
    }
}

#[test]
fn disconnect_vectors() {
    for v in [V3_1, V3_1_1, V5] {
        vector(v, b"\xe0\x00", Packet::Disconnect(Disconnect::default()));
    }
    vector(
        V5,
        b"\xe0\x01\x8e",
        Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER)),
    );
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    vector(
        V5,
        b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
        Packet::Disconnect(d),
    );
    let mut d = Disconnect::new(ReasonCode::SERVER_MOVED);
    d.properties.server_reference = Some(s("h"));
    d.properties.reason_string = Some(s("r"));
    d.properties.user_properties.push((s("k"), s("v")));
    vector(
        V5,
        b"\xe0\x11\x9d\x0f\x1c\x00\x01h\x1f\x00\x01r\x26\x00\x01k\x00\x01v",
        Packet::Disconnect(d),
    );
}

#[test]
fn auth_vectors() {
    vector(V5, b"\xf0\x00", Packet::Auth(Auth::default()));
    let a = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties {
            authentication_method: Some(s("m")),
            authentication_data: Some(Bytes::from_static(b"d")),
            ..Default::default()
        },
    };
    vector(
        V5,
        b"\xf0\x0a\x18\x08\x15\x00\x01m\x16\x00\x01d",
        Packet::Auth(a),
    );
    let mut out = BytesMut::new();
    assert_eq!(
        Packet::Auth(Auth::default()).encode(V3_1_1, &mut out),
        Err(EncodeError::NotInVersion("AUTH"))
    );
}

// ------------------------------------------------------- fixed header rules

#[test]
fn reserved_packet_types() {
    reject_all(b"\x00\x00", DecodeError::ReservedPacketType(0));
    reject(V3_1_1, b"\xf0\x00", DecodeError::ReservedPacketType(15));
    reject(V3_1, b"\xf0\x00", DecodeError::ReservedPacketType(15));
}

#[test]
fn reserved_fixed_header_flags() {
    // [MQTT-2.1.3-1]: every packet but PUBLISH has fixed flags.
    let cases: &[(&[u8], PacketType, u8)] = &[
        (b"\x11\x00", PacketType::Connect, 1),
        (b"\x28\x02\x00\x00", PacketType::ConnAck, 8),
        (b"\x41\x02\x00\x01", PacketType::PubAck, 1),
        (b"\x52\x02\x00\x01", PacketType::PubRec, 2),
        (b"\x60\x02\x00\x01", PacketType::PubRel, 0),
        (b"\x72\x02\x00\x01", PacketType::PubComp, 2),
        (b"\x80\x06\x00\x01\x00\x01#\x00", PacketType::Subscribe, 0),
        (b"\x92\x03\x00\x01\x00", PacketType::SubAck, 2),
        (b"\xa3\x05\x00\x01\x00\x01#", PacketType::Unsubscribe, 3),
        (b"\xb4\x02\x00\x01", PacketType::UnsubAck, 4),
        (b"\xc1\x00", PacketType::PingReq, 1),
        (b"\xd8\x00", PacketType::PingResp, 8),
        (b"\xe2\x00", PacketType::Disconnect, 2),
    ];
    for &(bytes, packet, flags) in cases {
        reject_all(
            bytes,
            DecodeError::InvalidFixedHeaderFlags { packet, flags },
        );
    }
    reject(
        V5,
        b"\xf1\x00",
        DecodeError::InvalidFixedHeaderFlags {
            packet: PacketType::Auth,
            flags: 1,
        },
    );
    assert_eq!(
        DecodeError::InvalidFixedHeaderFlags {
            packet: PacketType::PubRel,
            flags: 0
        }
        .reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn remaining_length_rules() {
    // Longer than 4 bytes, detected even before the body arrives.
    reject_all(b"\x30\xff\xff\xff\xff\x01", DecodeError::VarIntTooLong);
    reject_all(b"\x30\xff\xff\xff\xff", DecodeError::VarIntTooLong);
    // Not minimally encoded ([MQTT-1.5.5-1]).
    reject_all(b"\xc0\x80\x00", DecodeError::NonMinimalVarInt);
}

#[test]
fn maximum_packet_size_is_checked_before_the_body_arrives() {
    let mut buf = BytesMut::from(&b"\x30\xff\xff\xff\x7f"[..]);
    let err = decode(&mut buf, V5, 1024).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // Exactly at the limit is fine: 2 header bytes + 7.
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    assert!(matches!(
        decode(&mut buf, V3_1_1, 9),
        Ok(Some(Packet::Publish(_)))
    ));
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    assert!(matches!(
        decode(&mut buf, V3_1_1, 8),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn peek_frame_len_reads_the_fixed_header() {
    assert_eq!(peek_frame_len(b""), None);
    assert_eq!(peek_frame_len(b"\x30"), None);
    assert_eq!(peek_frame_len(b"\x30\x80"), None);
    assert_eq!(peek_frame_len(b"\x30\x80\x01"), Some(131));
    assert_eq!(peek_frame_len(b"\x30\x07\x00"), Some(9));
}

#[test]
fn check_needs_more_bytes_without_consuming() {
    assert_eq!(check(b"", MAX), Ok(None));
    assert_eq!(check(b"\x30", MAX), Ok(None));
    assert_eq!(check(b"\x30\x80", MAX), Ok(None));
    assert_eq!(check(b"\x30\x07\x00", MAX), Ok(None));
    let h = check(b"\x30\x07\x00\x03a/bhi", MAX).unwrap().unwrap();
    assert_eq!((h.header_len, h.remaining_len, h.frame_len()), (2, 7, 9));
}

#[test]
fn trailing_bytes_and_truncation() {
    reject_all(b"\xc0\x01\x00", DecodeError::TrailingBytes);
    reject_all(b"\xd0\x01\x00", DecodeError::TrailingBytes);
    reject(V3_1_1, b"\x40\x03\x00\x01\x00", DecodeError::TrailingBytes);
    reject(V3_1_1, b"\xe0\x01\x00", DecodeError::TrailingBytes);
    reject(V3_1_1, b"\x20\x03\x00\x00\x00", DecodeError::TrailingBytes);
    reject(V3_1_1, b"\xb0\x03\x00\x01\x00", DecodeError::TrailingBytes);
    reject(
        V3_1_1,
        b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1x",
        DecodeError::TrailingBytes,
    );
    // Remaining length too short for the fields.
    reject_all(b"\x10\x05\x00\x04MQT", DecodeError::Truncated);
    reject_all(b"\x30\x03\x00\x05a", DecodeError::Truncated);
    reject_all(b"\x40\x01\x00", DecodeError::Truncated);
    reject(V3_1_1, b"\x32\x05\x00\x03a/b", DecodeError::Truncated);
}

// ------------------------------------------------------------ string rules

#[test]
fn strings_must_be_well_formed_utf8_without_nul() {
    reject_all(b"\x30\x04\x00\x02\xc3\x28", DecodeError::InvalidUtf8);
    reject_all(b"\x30\x05\x00\x03\xed\xa0\x80", DecodeError::InvalidUtf8); // U+D800
    reject_all(b"\x30\x04\x00\x02a\x00", DecodeError::NulInString);
    // In a client id and in a user name too.
    reject_all(
        b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c\x00",
        DecodeError::NulInString,
    );
    reject(
        V5,
        b"\x10\x13\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x02c1\x00\x02\xff\xfe",
        DecodeError::InvalidUtf8,
    );
    assert_eq!(
        DecodeError::InvalidUtf8.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

// ---------------------------------------------------------- CONNECT rules

fn connect_with_flags(level: u8, flags: u8, client_id: &[u8]) -> Vec<u8> {
    let (name, props): (&[u8], &[u8]) = match level {
        3 => (b"MQIsdp", b""),
        5 => (b"MQTT", b"\x00"),
        _ => (b"MQTT", b""),
    };
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(props);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[test]
fn connect_reserved_flag() {
    for level in [3, 4, 5] {
        reject(
            V5,
            &connect_with_flags(level, 0x03, b"c"),
            DecodeError::ConnectReservedFlag,
        );
    }
}

#[test]
fn connect_will_flags_without_will() {
    for level in [3, 4, 5] {
        // Will QoS 1 without the will flag; will retain without the will flag.
        reject(
            V5,
            &connect_with_flags(level, 0x0a, b"c"),
            DecodeError::WillFlagsWithoutWill,
        );
        reject(
            V5,
            &connect_with_flags(level, 0x22, b"c"),
            DecodeError::WillFlagsWithoutWill,
        );
        // Will QoS 3.
        reject(
            V5,
            &connect_with_flags(level, 0x1e, b"c"),
            DecodeError::InvalidQoS,
        );
    }
}

#[test]
fn connect_password_without_username() {
    reject(
        V5,
        &connect_with_flags(4, 0x42, b"c"),
        DecodeError::PasswordWithoutUsername,
    );
    reject(
        V5,
        &connect_with_flags(3, 0x42, b"c"),
        DecodeError::PasswordWithoutUsername,
    );
    // Allowed in v5 (§3.1.2.9).
    let mut bytes = connect_with_flags(5, 0x42, b"c");
    bytes.extend_from_slice(b"\x00\x01p");
    bytes[1] += 3;
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Packet::Connect(c))) = decode(&mut buf, V5, MAX) else {
        panic!()
    };
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"p")))
    );
}

#[test]
fn connect_protocol_name_and_level() {
    reject(
        V5,
        b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01c",
        DecodeError::InvalidProtocolName,
    );
    let err = DecodeError::UnsupportedProtocolVersion(6);
    reject(
        V5,
        b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01c",
        err.clone(),
    );
    assert_eq!(err.v3_connack_code(), Some(0x01));
    assert_eq!(err.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    // Name and level disagree.
    reject(
        V5,
        b"\x10\x0f\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x01c",
        DecodeError::UnsupportedProtocolVersion(4),
    );
}

#[test]
fn connect_empty_client_id() {
    // 3.1.1: allowed only with clean session ([MQTT-3.1.3-7], [MQTT-3.1.3-8]).
    let mut ok = BytesMut::from(&connect_with_flags(4, 0x02, b"")[..]);
    assert!(matches!(
        decode(&mut ok, V5, MAX),
        Ok(Some(Packet::Connect(_)))
    ));
    reject(
        V5,
        &connect_with_flags(4, 0x00, b""),
        DecodeError::ClientIdRejected,
    );
    assert_eq!(DecodeError::ClientIdRejected.v3_connack_code(), Some(0x02));
    // 3.1: a client id of 1 to 23 characters is required.
    reject(
        V5,
        &connect_with_flags(3, 0x02, b""),
        DecodeError::ClientIdRejected,
    );
    // 5.0: the server assigns one, even with clean start 0.
    let mut ok = BytesMut::from(&connect_with_flags(5, 0x00, b"")[..]);
    assert!(matches!(
        decode(&mut ok, V5, MAX),
        Ok(Some(Packet::Connect(_)))
    ));
}

#[test]
fn connect_will_topic_must_be_a_topic_name() {
    let bytes = b"\x10\x15\x00\x04MQTT\x04\x06\x00\x3c\x00\x01c\x00\x03a/#\x00\x01x";
    reject(
        V5,
        bytes,
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
    );
}

#[test]
fn connect_v5_auth_data_without_method() {
    let bytes = b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x03\x16\x00\x00\x00\x01c";
    reject(V5, bytes, DecodeError::AuthDataWithoutMethod);
    assert_eq!(
        DecodeError::AuthDataWithoutMethod.reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn connack_rules() {
    reject(V3_1_1, b"\x20\x02\x02\x00", DecodeError::InvalidConnAck);
    reject(V3_1_1, b"\x20\x02\x00\x06", DecodeError::InvalidConnAck);
    // Session present with a failure ([MQTT-3.2.2-4] / [MQTT-3.2.2-6]).
    reject(V3_1_1, b"\x20\x02\x01\x05", DecodeError::InvalidConnAck);
    reject(V5, b"\x20\x03\x01\x87\x00", DecodeError::InvalidConnAck);
    reject(
        V5,
        b"\x20\x03\x00\x10\x00",
        DecodeError::InvalidReasonCode {
            code: 0x10,
            packet: PacketType::ConnAck,
        },
    );
}

// ---------------------------------------------------------- PUBLISH rules

#[test]
fn publish_qos_3_is_malformed() {
    reject_all(b"\x36\x07\x00\x03a/b\x00\x01", DecodeError::InvalidQoS);
}

#[test]
fn publish_dup_with_qos0_is_malformed() {
    reject_all(b"\x38\x05\x00\x03a/b", DecodeError::DupWithQos0);
}

#[test]
fn publish_packet_id_zero() {
    reject_all(b"\x32\x07\x00\x03a/b\x00\x00", DecodeError::ZeroPacketId);
    reject_all(b"\x34\x07\x00\x03a/b\x00\x00", DecodeError::ZeroPacketId);
}

#[test]
fn publish_topic_name_rules() {
    let wildcard = DecodeError::InvalidTopicName(TopicError::WildcardInName);
    reject_all(b"\x30\x05\x00\x03a/+", wildcard.clone());
    reject_all(b"\x30\x05\x00\x03a/#", wildcard.clone());
    assert_eq!(wildcard.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    // Empty topic: invalid in 3.x; in v5 only with a topic alias.
    reject(
        V3_1_1,
        b"\x30\x02\x00\x00",
        DecodeError::InvalidTopicName(TopicError::Empty),
    );
    reject(
        V5,
        b"\x30\x03\x00\x00\x00",
        DecodeError::EmptyTopicWithoutAlias,
    );
    reject(
        V5,
        b"\x30\x07\x00\x01a\x03\x23\x00\x00",
        DecodeError::TopicAliasZero,
    );
    assert_eq!(
        DecodeError::TopicAliasZero.reason_code(),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[test]
fn ack_packet_id_zero() {
    for first in [0x40u8, 0x50, 0x62, 0x70] {
        reject_all(&[first, 2, 0, 0], DecodeError::ZeroPacketId);
    }
    reject_all(b"\x90\x03\x00\x00\x00", DecodeError::ZeroPacketId);
    reject_all(b"\xb0\x02\x00\x00", DecodeError::ZeroPacketId);
}

#[test]
fn v5_reason_codes_must_belong_to_the_packet() {
    let cases: &[(&[u8], u8, PacketType)] = &[
        (b"\x40\x03\x00\x01\x11", 0x11, PacketType::PubAck),
        (b"\x50\x03\x00\x01\x92", 0x92, PacketType::PubRec),
        (b"\x62\x03\x00\x01\x10", 0x10, PacketType::PubRel),
        (b"\x70\x03\x00\x01\x80", 0x80, PacketType::PubComp),
        (b"\x90\x04\x00\x01\x00\x03", 0x03, PacketType::SubAck),
        (b"\xb0\x04\x00\x01\x00\x10", 0x10, PacketType::UnsubAck),
        (b"\xe0\x01\x03", 0x03, PacketType::Disconnect),
        (b"\xf0\x01\x01", 0x01, PacketType::Auth),
    ];
    for &(bytes, code, packet) in cases {
        reject(V5, bytes, DecodeError::InvalidReasonCode { code, packet });
    }
    reject(
        V3_1_1,
        b"\x90\x03\x00\x01\x03",
        DecodeError::InvalidReasonCode {
            code: 3,
            packet: PacketType::SubAck,
        },
    );
}

// ------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE

#[test]
fn empty_subscribe_and_unsubscribe() {
    reject(V3_1_1, b"\x82\x02\x00\x01", DecodeError::NoTopicFilters);
    reject(V5, b"\x82\x03\x00\x01\x00", DecodeError::NoTopicFilters);
    reject(V3_1_1, b"\xa2\x02\x00\x01", DecodeError::NoTopicFilters);
    reject(V5, b"\xa2\x03\x00\x01\x00", DecodeError::NoTopicFilters);
    assert_eq!(
        DecodeError::NoTopicFilters.reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    reject(V3_1_1, b"\x90\x02\x00\x01", DecodeError::NoReasonCodes);
    reject(V5, b"\x90\x03\x00\x01\x00", DecodeError::NoReasonCodes);
    reject(V5, b"\xb0\x03\x00\x01\x00", DecodeError::NoReasonCodes);
}

#[test]
fn subscribe_packet_id_zero() {
    reject_all(b"\x82\x06\x00\x00\x00\x01#\x00", DecodeError::ZeroPacketId);
    reject_all(b"\xa2\x05\x00\x00\x00\x01#", DecodeError::ZeroPacketId);
}

#[test]
fn subscription_options_rules() {
    // 3.x: bits 2..7 reserved ([MQTT-3-8.3-4]).
    reject(
        V3_1_1,
        b"\x82\x06\x00\x01\x00\x01#\x04",
        DecodeError::SubscriptionOptionsReserved,
    );
    reject(
        V3_1,
        b"\x82\x06\x00\x01\x00\x01#\x80",
        DecodeError::SubscriptionOptionsReserved,
    );
    // v5: bits 6..7 reserved ([MQTT-3.8.3-5]).
    reject(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01#\x40",
        DecodeError::SubscriptionOptionsReserved,
    );
    // QoS 3.
    reject(
        V3_1_1,
        b"\x82\x06\x00\x01\x00\x01#\x03",
        DecodeError::InvalidQoS,
    );
    reject(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01#\x03",
        DecodeError::InvalidQoS,
    );
    // Retain handling 3.
    reject(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01#\x30",
        DecodeError::InvalidRetainHandling,
    );
    // No local on a shared subscription ([MQTT-3.8.3-4]).
    reject(
        V5,
        b"\x82\x12\x00\x01\x00\x00\x0c$share/g/a/#\x04",
        DecodeError::NoLocalOnSharedSubscription,
    );
    // Subscription identifier 0, or twice.
    reject(
        V5,
        b"\x82\x09\x00\x01\x02\x0b\x00\x00\x01#\x00",
        DecodeError::InvalidPropertyValue(0x0b),
    );
    reject(
        V5,
        b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01#\x00",
        DecodeError::DuplicateProperty(0x0b),
    );
}

#[test]
fn topic_filter_rules() {
    let cases: &[(&[u8], TopicError)] = &[
        (b"\x00\x05a/#/b", TopicError::InvalidMultiLevelWildcard),
        (b"\x00\x02a#", TopicError::InvalidMultiLevelWildcard),
        (b"\x00\x03a+b", TopicError::InvalidSingleLevelWildcard),
        (b"\x00\x00", TopicError::Empty),
        (b"\x00\x09$share//a", TopicError::InvalidShareGroup),
        (b"\x00\x08$share/g", TopicError::EmptySharedFilter),
        (b"\x00\x09$share/g/", TopicError::EmptySharedFilter),
        (b"\x00\x0b$share/g+/a", TopicError::InvalidShareGroup),
    ];
    for (f, err) in cases {
        let mut sub = vec![0x82, 0, 0, 1];
        sub.extend_from_slice(f);
        sub.push(0);
        sub[1] = (sub.len() - 2) as u8;
        reject(V3_1_1, &sub, DecodeError::InvalidTopicFilter(err.clone()));
        let mut unsub = vec![0xa2, 0, 0, 1];
        unsub.extend_from_slice(f);
        unsub[1] = (unsub.len() - 2) as u8;
        reject(V3_1_1, &unsub, DecodeError::InvalidTopicFilter(err.clone()));
    }
    assert_eq!(
        DecodeError::InvalidTopicFilter(TopicError::Empty).reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

// ------------------------------------------------------------ properties

#[test]
fn property_rules_apply_in_every_packet() {
    // Session Expiry Interval (CONNECT/CONNACK/DISCONNECT only) in PUBACK.
    reject(
        V5,
        b"\x40\x09\x00\x01\x00\x05\x11\x00\x00\x00\x01",
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBACK/PUBREC/PUBREL/PUBCOMP",
        },
    );
    // Reason string twice in DISCONNECT.
    reject(
        V5,
        b"\xe0\x0a\x00\x08\x1f\x00\x02ab\x1f\x00\x00",
        DecodeError::DuplicateProperty(0x1f),
    );
    // Property length running past the packet.
    reject(V5, b"\xe0\x03\x00\x05\x11", DecodeError::Truncated);
    // Unknown property in AUTH.
    reject(
        V5,
        b"\xf0\x04\x18\x02\x50\x00",
        DecodeError::UnknownProperty(0x50),
    );
    assert_eq!(
        DecodeError::UnknownProperty(0x50).reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn encode_rejects_what_the_wire_cannot_carry() {
    let long = ByteStr::from("x".repeat(70_000));
    let c = Connect::new(V3_1_1, long);
    let mut out = BytesMut::new();
    assert!(matches!(
        Packet::Connect(Box::new(c)).encode(V3_1_1, &mut out),
        Err(EncodeError::FieldTooLong {
            field: "client identifier",
            len: 70_000
        })
    ));
    let mut p = Publish::new(topic("a"), Bytes::new());
    p.qos = QoS::AtLeastOnce;
    assert!(Packet::Publish(p).encode(V3_1_1, &mut out).is_err());
    let sub = Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        filters: vec![],
    };
    assert!(Packet::Subscribe(sub).encode(V3_1_1, &mut out).is_err());
    assert!(out.is_empty(), "nothing is written on error");
}

#[test]
fn encode_refuses_what_the_decoder_would_reject() {
    let mut out = BytesMut::new();
    let mut ack = ConnAck::accept(false);
    ack.properties.maximum_qos = Some(QoS::ExactlyOnce);
    assert!(Packet::ConnAck(ack).encode(V5, &mut out).is_err());
    assert!(Packet::ConnAck(ConnAck::refuse(ReasonCode(0x8e)))
        .encode(V5, &mut out)
        .is_err());
    let p = Publish::new(TopicName::empty(), Bytes::new());
    assert!(Packet::Publish(p).encode(V5, &mut out).is_err());
    let r = PubResponse::with_reason(pid(1), ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    assert!(Packet::PubAck(r.clone()).encode(V5, &mut out).is_err());
    assert!(Packet::PubRel(r).encode(V5, &mut out).is_ok());
    out.clear();
    let sub = Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        filters: vec![(
            filter("$share/g/a"),
            SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        )],
    };
    assert!(Packet::Subscribe(sub).encode(V5, &mut out).is_err());
    assert!(Packet::Disconnect(Disconnect::new(ReasonCode(0x01)))
        .encode(V5, &mut out)
        .is_err());
    let mut c = Connect::new(V5, "c");
    c.properties.receive_maximum = Some(0);
    assert!(Packet::Connect(Box::new(c)).encode(V5, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn packets_in_a_stream_decode_one_at_a_time() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"\xc0\x00\x30\x07\x00\x03a/bhi\xe0\x00\x30");
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(Some(Packet::PingReq)));
    assert!(matches!(
        decode(&mut buf, V3_1_1, MAX),
        Ok(Some(Packet::Publish(_)))
    ));
    assert!(matches!(
        decode(&mut buf, V3_1_1, MAX),
        Ok(Some(Packet::Disconnect(_)))
    ));
    assert_eq!(decode(&mut buf, V3_1_1, MAX), Ok(None));
    assert_eq!(&buf[..], b"\x30");
}
