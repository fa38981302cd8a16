//! Property tests for the codec in `vmqtt::codec`.
//!
//! 1. Round trip: for each protocol version, arbitrary *valid* packets of
//!    every type that version can express are encoded, and
//!    - `encoded_len` equals the number of bytes `encode` wrote;
//!    - `decode` returns the identical packet and consumes exactly those bytes
//!      (a following frame is left in the buffer);
//!    - every strict prefix of the encoding decodes to `Ok(None)` and leaves
//!      the buffer as it was (the broker's read loop, one byte at a time);
//!    - the maximum packet size is enforced exactly at the encoded size.
//! 2. Robustness: random bytes, random framed bodies and random mutations of
//!    valid encodings never make `decode` panic in any version, and whatever
//!    decodes re-encodes and decodes to the same packet again.
//!
//! Case counts are moderate so the suite runs in seconds in debug builds; set
//! `PROPTEST_CASES` to run more.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestRunner};

use vmqtt::codec::{
    decode, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, DecodeError, Disconnect, DisconnectProperties, LastWill, Packet, PacketType,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, ReasonSet,
    RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck,
    Unsubscribe, UnsubscribeProperties, UserProperties, WillProperties, VARINT_MAX,
};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, PacketId};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// `default_cases`, unless `PROPTEST_CASES` asks for another number.
fn config(default_cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

// ---------------------------------------------------------------------------
// Leaf strategies
// ---------------------------------------------------------------------------

/// Any Unicode scalar value except U+0000, biased towards ASCII.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::char::range('a', 'z'),
        1 => prop::char::range(' ', '~'),
        2 => any::<char>(),
    ]
    .prop_filter("U+0000 is not allowed in MQTT strings", |c| *c != '\0')
}

/// A UTF-8 string without U+0000, usually short, sometimes longer than 127
/// bytes so that lengths cross a Variable Byte Integer boundary.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(text_char(), 0..12),
        1 => prop::collection::vec(text_char(), 100..300),
    ]
    .prop_map(String::from_iter)
}

fn bytestr() -> impl Strategy<Value = ByteStr> {
    text().prop_map(ByteStr::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

/// A PUBLISH payload: mostly small, sometimes large enough that the remaining
/// length takes three bytes.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        3 => prop::collection::vec(any::<u8>(), 64..600),
        1 => prop::collection::vec(any::<u8>(), 16_380..16_500),
    ]
    .prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|n| PacketId::new(n).expect("1..=65535 is non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason(set: ReasonSet) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(set.codes()).prop_map(ReasonCode)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    prop::collection::vec((bytestr(), bytestr()), 0..4)
}

/// A topic level: no `/`, `+`, `#` or U+0000 (possibly empty).
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(&["a", "b", "sport", "tennis", "$SYS", "é", "日本", ""][..])
            .prop_map(String::from),
        3 => prop::collection::vec(
            text_char().prop_filter("not a separator or wildcard", |c| !"/+#".contains(*c)),
            0..6,
        )
        .prop_map(String::from_iter),
    ]
}

/// A non-empty topic name of one to four levels (levels may be empty).
fn topic_name() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(level(), 1..5).prop_map(|levels| {
        let mut s = levels.join("/");
        if s.is_empty() {
            s.push('t');
        }
        TopicName::new(ByteStr::from(s)).expect("generator makes valid topic names")
    })
}

/// A valid topic filter: `+` levels, an optional final `#`, and optionally
/// the shared-subscription prefix `$share/{group}/`.
fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let plain_level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    let group = prop::collection::vec(
        text_char().prop_filter("no separator or wildcard", |c| !"/+#".contains(*c)),
        1..6,
    )
    .prop_map(String::from_iter);
    (
        prop::collection::vec(plain_level, 0..4),
        any::<bool>(),
        prop::option::weighted(0.25, group),
    )
        .prop_map(|(levels, hash, group)| {
            let mut levels = levels;
            if hash || levels.is_empty() {
                levels.push("#".to_string());
            }
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('+');
            }
            if f.starts_with("$share") {
                // Only the explicit branch below makes shared filters.
                f.insert(0, 'x');
            }
            if let Some(g) = group {
                f = format!("$share/{g}/{f}");
            }
            TopicFilter::new(ByteStr::from(f)).expect("generator makes valid topic filters")
        })
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::of(s)
}

// ---------------------------------------------------------------------------
// Property lists (MQTT 5 only: every property of every packet)
// ---------------------------------------------------------------------------

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(1..=u32::MAX),
        opt(any::<u16>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
        user_properties(),
        opt((bytestr(), opt(binary()))),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, users, auth)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: users,
                // Authentication Data only comes with an Authentication Method.
                authentication_data: auth.as_ref().and_then(|(_, d)| d.clone()),
                authentication_method: auth.map(|(m, _)| m),
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        opt(any::<u32>()),
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(bytestr()),
        opt(topic_name()),
        opt(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, users)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: users,
        })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let numbers = (
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        // Maximum QoS is 0 or 1 on the wire; absent means 2.
        opt(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        opt(1..=u32::MAX),
        opt(any::<u16>()),
        opt(any::<u16>()),
    );
    let flags = (
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    let strings = (
        opt(bytestr()),
        opt(bytestr()),
        opt(bytestr()),
        opt(bytestr()),
        opt((bytestr(), opt(binary()))),
        user_properties(),
    );
    (numbers, flags, strings).prop_map(
        |((sei, rm, mq, mps, tam, ska), (ra, wsa, sia, ssa), (aci, rs, ri, sr, auth, users))| {
            ConnAckProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_qos: mq,
                retain_available: ra,
                maximum_packet_size: mps,
                assigned_client_identifier: aci,
                topic_alias_maximum: tam,
                reason_string: rs,
                user_properties: users,
                wildcard_subscription_available: wsa,
                subscription_identifiers_available: sia,
                shared_subscription_available: ssa,
                server_keep_alive: ska,
                response_information: ri,
                server_reference: sr,
                authentication_data: auth.as_ref().and_then(|(_, d)| d.clone()),
                authentication_method: auth.map(|(m, _)| m),
            }
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(topic_name()),
        opt(binary()),
        user_properties(),
        // Several subscription identifiers, including 4-byte ones.
        prop::collection::vec(prop_oneof![1..=200u32, 1..=VARINT_MAX], 0..4),
        opt(bytestr()),
    )
        .prop_map(
            |(pfi, mei, ta, rt, cd, users, sids, ct)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties: users,
                subscription_identifiers: sids,
                content_type: ct,
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (opt(bytestr()), user_properties()).prop_map(|(rs, users)| AckProperties {
        reason_string: rs,
        user_properties: users,
    })
}

fn subscribe_properties() -> impl Strategy<Value = SubscribeProperties> {
    (opt(1..=VARINT_MAX), user_properties()).prop_map(|(sid, users)| SubscribeProperties {
        subscription_identifier: sid,
        user_properties: users,
    })
}

fn unsubscribe_properties() -> impl Strategy<Value = UnsubscribeProperties> {
    user_properties().prop_map(|users| UnsubscribeProperties {
        user_properties: users,
    })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        opt(any::<u32>()),
        opt(bytestr()),
        user_properties(),
        opt(bytestr()),
    )
        .prop_map(|(sei, rs, users, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: users,
            server_reference: sr,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        opt((bytestr(), opt(binary()))),
        opt(bytestr()),
        user_properties(),
    )
        .prop_map(|(auth, rs, users)| AuthProperties {
            authentication_data: auth.as_ref().and_then(|(_, d)| d.clone()),
            authentication_method: auth.map(|(m, _)| m),
            reason_string: rs,
            user_properties: users,
        })
}

/// `strategy` in v5, the default value in 3.x (which has no properties).
fn props_for<T, S>(v: ProtocolVersion, strategy: S) -> BoxedStrategy<T>
where
    T: Default + Clone + std::fmt::Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    if v.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        props_for(v, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        props_for(v, connect_properties()),
        bytestr(),
        opt(will),
        opt(bytestr()),
        opt(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, pw)| {
                let mut c = Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password: pw,
                };
                match v {
                    // MQTT 3.1 requires a client identifier.
                    ProtocolVersion::V3_1 if c.client_id.is_empty() => {
                        c.client_id = ByteStr::from_static("c")
                    }
                    // MQTT 3.1.1 allows an empty one only with Clean Session.
                    ProtocolVersion::V3_1_1 if c.client_id.is_empty() => c.clean_start = true,
                    _ => {}
                }
                // Before MQTT 5 a password needs a user name.
                if !v.is_v5() && c.username.is_none() {
                    c.password = None;
                }
                Packet::Connect(Box::new(c))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reason = if v.is_v5() {
        reason(ReasonSet::ConnAck).boxed()
    } else {
        // The reason codes that map 1:1 to 3.x return codes 0..=5.
        (0u8..=5)
            .prop_map(|c| ReasonCode::from_v3_connack(c).expect("0..=5 are return codes"))
            .boxed()
    };
    (any::<bool>(), reason, props_for(v, connack_properties())).prop_map(
        move |(present, reason, properties)| {
            // Session Present is 0 with a failure, and MQTT 3.1 lacks it.
            let session_present = present && reason.is_success() && v != ProtocolVersion::V3_1;
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        },
    )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        props_for(v, publish_properties()),
        payload(),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, alias_only)| {
                let qos0 = qos == QoS::AtMostOnce;
                // In v5 a topic alias may stand in for the topic name.
                let topic = if v.is_v5() && alias_only && properties.topic_alias.is_some() {
                    TopicName::empty()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { None } else { Some(id) },
                    properties,
                    payload,
                })
            },
        )
}

fn pub_response(v: ProtocolVersion, set: ReasonSet) -> impl Strategy<Value = PubResponse> {
    let reason = if v.is_v5() {
        reason(set).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    };
    (packet_id(), reason, props_for(v, ack_properties())).prop_map(
        |(packet_id, reason, properties)| PubResponse {
            packet_id,
            reason,
            properties,
        },
    )
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
        move |(qos, no_local, retain_as_published, rh)| {
            if !v.is_v5() {
                // 3.x carries only the maximum QoS.
                return SubscriptionOptions::qos(qos);
            }
            let retain_handling = match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            };
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        },
    );
    let filter = (topic_filter(), options).prop_map(|(f, mut o)| {
        // No Local is a protocol error on a shared subscription.
        if f.is_shared() {
            o.no_local = false;
        }
        (f, o)
    });
    (
        packet_id(),
        props_for(v, subscribe_properties()),
        prop::collection::vec(filter, 1..5),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason(ReasonSet::SubAck).boxed()
    } else {
        prop::sample::select(&[0x00u8, 0x01, 0x02, 0x80][..])
            .prop_map(ReasonCode)
            .boxed()
    };
    (
        packet_id(),
        props_for(v, ack_properties()),
        prop::collection::vec(code, 1..6),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        props_for(v, unsubscribe_properties()),
        prop::collection::vec(topic_filter(), 1..5),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if v.is_v5() {
        prop::collection::vec(reason(ReasonSet::UnsubAck), 1..6).boxed()
    } else {
        // 3.x UNSUBACK carries only the packet identifier.
        Just(Vec::new()).boxed()
    };
    (packet_id(), props_for(v, ack_properties()), reasons).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        },
    )
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (reason(ReasonSet::Disconnect), disconnect_properties())
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
        .boxed()
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(ReasonSet::Auth), auth_properties())
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any valid packet that `v` can express: all 15 types in v5, 14 in 3.x.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut arms: Vec<BoxedStrategy<Packet>> = vec![
        connect(v).boxed(),
        connack(v).boxed(),
        publish(v).boxed(),
        pub_response(v, ReasonSet::PubAckRec)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(v, ReasonSet::PubAckRec)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(v, ReasonSet::PubRelComp)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(v, ReasonSet::PubRelComp)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(v).boxed(),
        suback(v).boxed(),
        unsubscribe(v).boxed(),
        unsuback(v).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v),
    ];
    if v.is_v5() {
        arms.push(auth().boxed());
    }
    Union::new(arms).boxed()
}

/// A version and a valid packet of that version.
fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop::sample::select(&VERSIONS[..]).prop_flat_map(|v| (Just(v), packet(v)))
}

// ---------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------

fn encode(p: &Packet, v: ProtocolVersion) -> Result<Bytes, TestCaseError> {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    Ok(buf.freeze())
}

fn check_round_trip(v: ProtocolVersion, p: &Packet) -> Result<(), TestCaseError> {
    let wire = encode(p, v)?;
    let len = p
        .encoded_len(v)
        .map_err(|e| TestCaseError::fail(format!("encoded_len: {e}")))?;
    prop_assert_eq!(len, wire.len(), "encoded_len disagrees with encode");

    // The whole frame, followed by the first bytes of another frame: decode
    // returns the packet and leaves exactly the following bytes.
    let trailer = [0xc0u8, 0x00, 0x30];
    let mut buf = BytesMut::from(&wire[..]);
    buf.put_slice(&trailer);
    let decoded = decode(&mut buf, v, u32::MAX);
    prop_assert_eq!(decoded, Ok(Some(p.clone())));
    prop_assert_eq!(
        &buf[..],
        &trailer[..],
        "decode consumed the wrong number of bytes"
    );

    // The broker's read loop: bytes arrive one at a time. Every strict
    // prefix is "need more bytes" and leaves the buffer untouched.
    let mut buf = BytesMut::with_capacity(wire.len());
    for (n, &byte) in wire.iter().enumerate() {
        prop_assert_eq!(
            decode(&mut buf, v, u32::MAX),
            Ok(None),
            "prefix of {} bytes",
            n
        );
        prop_assert_eq!(buf.len(), n, "decode changed a partial buffer");
        if n < 64 || n + 1 == wire.len() {
            prop_assert_eq!(&buf[..], &wire[..n]);
        }
        buf.put_u8(byte);
    }
    prop_assert_eq!(decode(&mut buf, v, u32::MAX), Ok(Some(p.clone())));
    prop_assert!(buf.is_empty());

    // The maximum packet size is checked against the whole frame.
    let size = u32::try_from(wire.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut buf = BytesMut::from(&wire[..]);
    prop_assert_eq!(decode(&mut buf, v, size), Ok(Some(p.clone())));
    let mut buf = BytesMut::from(&wire[..]);
    prop_assert_eq!(
        decode(&mut buf, v, size - 1),
        Err(DecodeError::PacketTooLarge {
            size: u64::from(size),
            max: size - 1
        })
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn round_trip_v3_1(p in packet(ProtocolVersion::V3_1)) {
        check_round_trip(ProtocolVersion::V3_1, &p)?;
    }

    #[test]
    fn round_trip_v3_1_1(p in packet(ProtocolVersion::V3_1_1)) {
        check_round_trip(ProtocolVersion::V3_1_1, &p)?;
    }

    #[test]
    fn round_trip_v5(p in packet(ProtocolVersion::V5)) {
        check_round_trip(ProtocolVersion::V5, &p)?;
    }
}

/// The generators reach every packet type of each version (so a round-trip
/// pass is not a pass over a subset), and the v5 generator reaches the
/// interesting corners: several subscription identifiers, user properties,
/// topic aliases with an empty topic, shared filters, large payloads.
#[test]
fn generators_cover_every_packet_type() {
    let mut runner = TestRunner::deterministic();
    for v in VERSIONS {
        let strategy = packet(v);
        let mut seen = std::collections::HashSet::new();
        let (mut multi_sid, mut users, mut alias_only, mut shared, mut big) =
            (false, false, false, false, false);
        for _ in 0..3000 {
            let p = strategy
                .new_tree(&mut runner)
                .expect("strategy generates")
                .current();
            seen.insert(p.packet_type() as u8);
            match &p {
                Packet::Publish(p) => {
                    multi_sid |= p.properties.subscription_identifiers.len() > 1;
                    users |= !p.properties.user_properties.is_empty();
                    alias_only |= p.topic.is_empty();
                    big |= p.payload.len() > 16_384;
                }
                Packet::Subscribe(s) => shared |= s.filters.iter().any(|(f, _)| f.is_shared()),
                _ => {}
            }
        }
        let expected: Vec<u8> = if v.is_v5() {
            (1..=15).collect()
        } else {
            (1..=14).collect()
        };
        let mut got: Vec<u8> = seen.into_iter().collect();
        got.sort_unstable();
        assert_eq!(got, expected, "packet types generated for {v:?}");
        assert!(
            shared && big,
            "{v:?}: shared filters {shared}, large payloads {big}"
        );
        if v.is_v5() {
            assert!(
                multi_sid && users && alias_only,
                "{v:?}: {multi_sid} {users} {alias_only}"
            );
        } else {
            assert!(
                !multi_sid && !users && !alias_only,
                "{v:?} generated v5-only fields"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------

/// Decodes every frame in `input` with `v` and `max`, stopping at the first
/// `Ok(None)` or error. Whatever decodes must re-encode, with `encoded_len`
/// agreeing, and decode again to the same packet.
fn decode_all(input: &[u8], v: ProtocolVersion, max: u32) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    // Each successful decode consumes at least the two-byte fixed header.
    for _ in 0..=input.len() / 2 {
        let before = buf.len();
        match decode(&mut buf, v, max) {
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(_) => return Ok(()),
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before, "a packet was decoded from no bytes");
                let wire = encode(&p, v)?;
                prop_assert_eq!(p.encoded_len(v), Ok(wire.len()));
                let mut again = BytesMut::from(&wire[..]);
                prop_assert_eq!(decode(&mut again, v, u32::MAX), Ok(Some(p)), "re-decode");
                prop_assert!(again.is_empty());
            }
        }
    }
    prop_assert!(false, "decode loop did not terminate");
    Ok(())
}

fn decode_all_versions(input: &[u8]) -> Result<(), TestCaseError> {
    for v in VERSIONS {
        decode_all(input, v, 1 << 20)?;
        decode_all(input, v, 64)?;
    }
    Ok(())
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Insert a byte at (index mod len+1).
    Insert(usize, u8),
    /// Delete the byte at (index mod len).
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=u8::MAX).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Flip(i, mask) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] ^= mask;
        }
        Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
        Mutation::Delete(i) if !bytes.is_empty() => {
            bytes.remove(i % bytes.len());
        }
        _ => {}
    }
}

/// A syntactically framed packet with a random body: a random first byte
/// and a correct remaining length, so the body parsers see the input.
fn framed_body() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(first, body)| {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut byte = (len & 0x7f) as u8;
            len >>= 7;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    })
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all_versions(&input)?;
    }

    #[test]
    fn random_framed_bodies_never_panic(input in framed_body()) {
        decode_all_versions(&input)?;
    }

    #[test]
    fn mutated_encodings_never_panic(
        (v, p) in versioned_packet(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = encode(&p, v)?.to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_all_versions(&bytes)?;
    }
}

/// The decoder's "need more bytes" answer also holds for a remaining length
/// split across reads, and a fifth length byte is refused as soon as it is
/// seen (a fixed example next to the properties above).
#[test]
fn remaining_length_split_across_reads() {
    let p = Packet::Publish(Publish::new(
        TopicName::new(ByteStr::from_static("a/b")).expect("valid topic"),
        vec![7u8; 20_000],
    ));
    let wire = encode(&p, ProtocolVersion::V3_1_1).expect("encodes");
    assert_eq!(&wire[..4], &[0x30, 0xa5, 0x9c, 0x01]);
    for n in 0..4 {
        let mut buf = BytesMut::from(&wire[..n]);
        assert_eq!(
            decode(&mut buf, ProtocolVersion::V3_1_1, u32::MAX),
            Ok(None),
            "{n}"
        );
    }
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V5, u32::MAX),
        Err(DecodeError::VarIntTooLong)
    );
    assert_eq!(p.packet_type(), PacketType::Publish);
}
