//! MQTT 5 features: topic alias (both ways), message expiry, no local,
//! subscription identifiers, property pass-through, payload format
//! indicator, maximum packet size both ways, receive maximum both ways,
//! Session Expiry Interval set by DISCONNECT; paho-mqtt (Python) and
//! mosquitto_sub as v5 clients.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use vmqtt::ByteStr;

use crate::common::process::{line_within, lines_of, run_paho, runs, sub_messages, wait_exit};
use crate::common::*;

fn bs(s: &str) -> ByteStr {
    ByteStr::from(s)
}

/// Sends `p` and waits for the server to close the connection; returns the
/// reason code of its DISCONNECT, if any.
async fn send_expect_disconnect(c: &mut Raw, p: Packet) -> Option<ReasonCode> {
    c.send(&p).await;
    c.expect_disconnect(WAIT).await
}

/// Client → server topic alias: set, use, remap. Subscribers (v5 without
/// alias support, and 3.1.1) always get full topic names.
#[tokio::test]
async fn v5_topic_alias_client_to_server() {
    let test = "v5_topic_alias_client_to_server";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            topic_alias_maximum: Some(16),
            ..Default::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut s5 = Raw::v5(b.port(), &sub_id).await;
    s5.subscribe("ta/#", QoS::AtLeastOnce).await;
    let mut s3 = Raw::v311(b.port(), &format!("{sub_id}-311")).await;
    s3.subscribe("ta/#", QoS::AtLeastOnce).await;

    let (mut publ, ack) = Raw::connect_ok(b.port(), connect_packet(V5P, &pub_id)).await;
    assert_eq!(
        ack.properties.topic_alias_maximum,
        Some(16),
        "CONNACK {ack:?}"
    );
    let sends = [
        ("ta/t", "one"),
        ("", "two"),
        ("ta/u", "three"),
        ("", "four"),
    ];
    for (t, m) in sends {
        let ack = publ
            .publish(aliased_publish(t, m, 1))
            .await
            .expect("PUBACK");
        assert!(ack.reason.0 < 0x80, "PUBACK for {m}: {ack:?}");
    }
    let want = [
        ("ta/t", "one"),
        ("ta/t", "two"),
        ("ta/u", "three"),
        ("ta/u", "four"),
    ];
    for c in [&mut s5, &mut s3] {
        for (t, m) in want {
            let p = c.recv_publish_acked().await;
            assert_eq!(
                (p.topic.as_str(), text(&p).as_str()),
                (t, m),
                "[{}]",
                c.name
            );
            assert_eq!(
                p.properties.topic_alias, None,
                "[{}] no alias towards a client that allows none",
                c.name
            );
        }
    }
}

/// Topic alias errors: an alias never set (0x82 Protocol Error or 0x94),
/// alias 0 and alias above the maximum (0x94 Topic Alias invalid) end the
/// connection with DISCONNECT; other clients are unaffected.
#[tokio::test]
async fn v5_invalid_topic_alias_disconnects() {
    let test = "v5_invalid_topic_alias_disconnects";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            topic_alias_maximum: Some(16),
            ..Default::default()
        },
    );
    let mut bystander = Raw::v5(b.port(), "alias-bystander").await;
    bystander.subscribe("alias/#", QoS::AtLeastOnce).await;

    let mut c = Raw::v5(b.port(), "alias-unknown").await;
    let mut p = Publish::new(vmqtt::topic::TopicName::empty(), &b"x"[..]);
    p.properties.topic_alias = Some(5);
    let rc = send_expect_disconnect(&mut c, Packet::Publish(p)).await;
    assert!(
        matches!(
            rc,
            Some(ReasonCode::PROTOCOL_ERROR) | Some(ReasonCode::TOPIC_ALIAS_INVALID)
        ),
        "unknown alias: DISCONNECT {rc:?}, want 0x82 or 0x94"
    );

    for (alias, id) in [(0u16, "alias-zero"), (17, "alias-too-big")] {
        let mut c = Raw::v5(b.port(), id).await;
        // Written by hand: an encoder may (rightly) refuse to produce these.
        // PUBLISH QoS 0, topic "alias/t", properties [Topic Alias = alias], "x".
        let [hi, lo] = alias.to_be_bytes();
        let mut bytes = vec![0x30, 14, 0x00, 0x07];
        bytes.extend_from_slice(b"alias/t");
        bytes.extend_from_slice(&[0x03, 0x23, hi, lo, b'x']);
        c.send_raw(&bytes).await;
        let rc = c.expect_disconnect(WAIT).await;
        assert_vmqtt_eq(
            &b,
            rc,
            Some(ReasonCode::TOPIC_ALIAS_INVALID),
            &format!("topic alias {alias} (maximum 16)"),
            "Mosquitto answers another reason code",
        );
        assert!(
            rc.is_some_and(|r| r.0 >= 0x80),
            "alias {alias}: DISCONNECT {rc:?}"
        );
    }
    bystander
        .expect_no_publish(QUIET, "nothing from the bad publishers")
        .await;
    let mut ok = Raw::v5(b.port(), "alias-ok").await;
    ok.publish_ok("alias/t", "fine", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&bystander.recv_publish_acked().await), "fine");
}

/// Message expiry on an offline persistent session's queue: a message with
/// expiry 1 s is dropped after 2 s; one with 60 s is delivered with the
/// remaining expiry; one without expiry has none.
#[tokio::test]
async fn v5_message_expiry_in_offline_queue() {
    let test = "v5_message_expiry_in_offline_queue";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    sub.subscribe("mx/t", QoS::AtLeastOnce).await;

    // Live delivery carries the expiry too.
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut live = publish("mx/t", &b"live"[..], QoS::AtLeastOnce, false);
    live.properties.message_expiry_interval = Some(60);
    publ.publish(live).await;
    let p = sub.recv_publish_acked().await;
    let e = p
        .properties
        .message_expiry_interval
        .expect("live message keeps its expiry");
    assert!((58..=60).contains(&e), "live expiry {e}");
    sub.disconnect().await;

    for (m, expiry) in [("short", Some(1)), ("long", Some(60)), ("none", None)] {
        let mut p = publish(
            "mx/t",
            Bytes::copy_from_slice(m.as_bytes()),
            QoS::AtLeastOnce,
            false,
        );
        p.properties.message_expiry_interval = expiry;
        publ.publish(p).await;
    }
    sleep_ms(2100).await;
    conn.clean_start = false;
    let (mut sub, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(ack.session_present);
    let p = sub.recv_publish_acked().await;
    assert_eq!(text(&p), "long", "the 1 s message expired in the queue");
    let e = p
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!(
        (55..=59).contains(&e),
        "remaining expiry after ~2 s of 60 s: {e}"
    );
    let p = sub.recv_publish_acked().await;
    assert_eq!(text(&p), "none");
    assert_eq!(p.properties.message_expiry_interval, None);
    sub.expect_no_publish(QUIET, "expired message").await;
}

/// No Local: a subscriber with no_local does not get its own messages, but
/// gets others'; another subscriber gets its messages.
#[tokio::test]
async fn v5_no_local() {
    let test = "v5_no_local";
    let b = Broker::start(test);
    let (a_id, b_id) = ids_on_different_shards(test);
    let mut a = Raw::v5(b.port(), &a_id).await;
    let ack = a
        .subscribe_opts(
            "nl/t",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1]);
    let mut other = Raw::v5(b.port(), &b_id).await;
    other.subscribe("nl/t", QoS::AtLeastOnce).await;

    a.publish_ok("nl/t", "from a", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&other.recv_publish_acked().await), "from a");
    other
        .publish_ok("nl/t", "from other", QoS::AtLeastOnce, false)
        .await;
    let p = a.recv_publish_acked().await;
    assert_eq!(
        text(&p),
        "from other",
        "no_local: a must not get its own message"
    );
    a.expect_no_publish(QUIET, "own message with no_local")
        .await;
    // `other` has no no_local: it gets its own message.
    assert_eq!(text(&other.recv_publish_acked().await), "from other");
}

/// Reads PUBLISHes until quiet; returns, per payload, the number of copies
/// and the union of their subscription identifiers. Every copy must carry at
/// least one identifier unless `allow_none`.
async fn ids_by_payload(
    c: &mut Raw,
    n_payloads: usize,
) -> BTreeMap<String, (usize, BTreeSet<u32>)> {
    let mut out: BTreeMap<String, (usize, BTreeSet<u32>)> = BTreeMap::new();
    while out.len() < n_payloads {
        let p = c.recv_publish_acked().await;
        let e = out.entry(text(&p)).or_default();
        e.0 += 1;
        e.1.extend(p.properties.subscription_identifiers.iter().copied());
    }
    loop {
        match tokio::time::timeout(QUIET, c.recv_publish_acked()).await {
            Ok(p) => {
                let e = out.entry(text(&p)).or_default();
                e.0 += 1;
                e.1.extend(p.properties.subscription_identifiers.iter().copied());
            }
            Err(_) => return out,
        }
    }
}

/// Subscription identifiers: a delivered PUBLISH carries the ids of the
/// subscriptions it matched (in one copy or one copy per subscription); a
/// re-SUBSCRIBE replaces the id.
#[tokio::test]
async fn v5_subscription_identifiers() {
    let test = "v5_subscription_identifiers";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let (mut s, ack) = Raw::connect_ok(b.port(), connect_packet(V5P, &sub_id)).await;
    assert_ne!(
        ack.properties.subscription_identifiers_available,
        Some(false),
        "subscription identifiers must be available"
    );
    for (f, id) in [("si/+", Some(5)), ("si/#", Some(7)), ("si/x/y", None)] {
        let ack = s
            .subscribe_opts(
                f,
                SubscriptionOptions::qos(QoS::AtLeastOnce),
                SubscribeProperties {
                    subscription_identifier: id,
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1], "SUBACK {f}");
    }
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("si/a", "a", QoS::AtLeastOnce, false).await;
    publ.publish_ok("si/x/y", "xy", QoS::AtLeastOnce, false)
        .await;
    let got = ids_by_payload(&mut s, 2).await;
    let (copies, ids) = &got["a"];
    assert_eq!(
        ids,
        &BTreeSet::from([5, 7]),
        "si/a matched si/+ (5) and si/# (7)"
    );
    assert!((1..=2).contains(copies), "si/a: {copies} copies");
    let (copies, ids) = &got["xy"];
    assert_eq!(
        ids,
        &BTreeSet::from([7]),
        "si/x/y matched si/# (7) and si/x/y (no id)"
    );
    assert!((1..=2).contains(copies), "si/x/y: {copies} copies");

    // Re-subscribing si/+ with id 9 replaces 5.
    s.subscribe_opts(
        "si/+",
        SubscriptionOptions::qos(QoS::AtLeastOnce),
        SubscribeProperties {
            subscription_identifier: Some(9),
            ..Default::default()
        },
    )
    .await;
    publ.publish_ok("si/b", "b", QoS::AtLeastOnce, false).await;
    let got = ids_by_payload(&mut s, 1).await;
    assert_eq!(
        got["b"].1,
        BTreeSet::from([7, 9]),
        "after re-subscribe: {got:?}"
    );
}

/// User properties (order and duplicates kept), response topic, correlation
/// data, content type and payload format indicator pass through unchanged,
/// at QoS 0 and 1, across shards; a request/response round trip works.
#[tokio::test]
async fn v5_properties_pass_through() {
    let test = "v5_properties_pass_through";
    let b = Broker::start(test);
    let (req_id, resp_id) = ids_on_different_shards(test);
    let mut responder = Raw::v5(b.port(), &resp_id).await;
    responder.subscribe("rr/request", QoS::AtLeastOnce).await;
    let mut requester = Raw::v5(b.port(), &req_id).await;
    requester.subscribe("rr/response/1", QoS::AtLeastOnce).await;
    let mut plain311 = Raw::v311(b.port(), &format!("{resp_id}-311")).await;
    plain311.subscribe("rr/request", QoS::AtLeastOnce).await;

    let user = vec![(bs("a"), bs("1")), (bs("b"), bs("2")), (bs("a"), bs("3"))];
    let corr = Bytes::from_static(&[0, 1, 2, 255]);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut p = publish("rr/request", &br#"{"k":"v"}"#[..], qos, false);
        p.properties.user_properties = user.clone();
        p.properties.response_topic = Some(topic("rr/response/1"));
        p.properties.correlation_data = Some(corr.clone());
        p.properties.content_type = Some(bs("application/json; charset=utf-8"));
        p.properties.payload_format_indicator = Some(true);
        requester.publish(p).await;

        let got = responder.recv_publish_acked().await;
        assert_eq!(got.qos, qos);
        let pp = &got.properties;
        assert_eq!(pp.user_properties, user, "user properties, in order");
        assert_eq!(
            pp.response_topic.as_ref().map(|t| t.as_str()),
            Some("rr/response/1")
        );
        assert_eq!(pp.correlation_data.as_ref(), Some(&corr));
        assert_eq!(
            pp.content_type.as_ref().map(|s| s.as_str()),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(pp.payload_format_indicator, Some(true));
        assert_eq!(text(&got), r#"{"k":"v"}"#);
        assert_eq!(text(&plain311.recv_publish_acked().await), r#"{"k":"v"}"#);

        // Respond.
        let mut r = publish(
            pp.response_topic.as_ref().unwrap().as_str(),
            &b"response"[..],
            QoS::AtLeastOnce,
            false,
        );
        r.properties.correlation_data = pp.correlation_data.clone();
        responder.publish(r).await;
        let back = requester.recv_publish_acked().await;
        assert_eq!(text(&back), "response");
        assert_eq!(back.properties.correlation_data.as_ref(), Some(&corr));
    }
}

/// Payload format indicator 1 with a payload that is not UTF-8: PUBACK 0x99
/// (or DISCONNECT 0x99), and the message is not delivered.
#[tokio::test]
async fn v5_invalid_utf8_payload_rejected() {
    let test = "v5_invalid_utf8_payload_rejected";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("pfi/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    // Written by hand (an encoder may refuse it): PUBLISH QoS 1 to "pfi/t",
    // packet id 1, [Payload Format Indicator = 1], payload ff fe 00.
    let mut bytes = vec![0x32, 15, 0x00, 0x05];
    bytes.extend_from_slice(b"pfi/t");
    bytes.extend_from_slice(&[0x00, 0x01, 0x02, 0x01, 0x01, 0xff, 0xfe, 0x00]);
    publ.send_raw(&bytes).await;
    let answer = publ.recv(WAIT).await;
    let rc = match &answer {
        Ok(Packet::PubAck(a)) => Some(a.reason),
        Ok(Packet::Disconnect(d)) => Some(d.reason),
        _ => None,
    };
    assert_vmqtt_eq(
        &b,
        rc,
        Some(ReasonCode::PAYLOAD_FORMAT_INVALID),
        "PUBACK or DISCONNECT for an invalid UTF-8 payload with format indicator 1",
        "Mosquitto 2.0.11 does not check the payload format",
    );
    if b.is_vmqtt() {
        sub.expect_no_publish(QUIET, "invalid UTF-8 payload").await;
    }
    let mut ctl = Raw::v5(b.port(), &format!("{pub_id}-ctl")).await;
    ctl.publish_ok("pfi/t", "valid", QoS::AtLeastOnce, false)
        .await;
    loop {
        let p = sub.recv_publish_acked().await;
        if text(&p) == "valid" {
            break;
        }
        assert!(b.is_mosquitto(), "delivered: {p:?}");
    }
}

/// Server maximum packet size (1024): CONNACK announces it; a 900-byte
/// PUBLISH goes through; a 2000-byte one gets DISCONNECT 0x95 (v5) or a
/// closed connection (3.1.1) and is not delivered.
#[tokio::test]
async fn server_maximum_packet_size() {
    let test = "server_maximum_packet_size";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            max_packet_size: Some(1024),
            ..Default::default()
        },
    );
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("mps/t", QoS::AtLeastOnce).await;
    for version in [V5P, V311] {
        let (mut publ, ack) = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("{pub_id}-{version:?}")),
        )
        .await;
        if version.is_v5() {
            assert_eq!(
                ack.properties.maximum_packet_size,
                Some(1024),
                "CONNACK {ack:?}"
            );
        }
        publ.publish_ok("mps/t", &"s".repeat(900), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(sub.recv_publish_acked().await.payload.len(), 900);

        let mut big = publish("mps/t", vec![b'B'; 2000], QoS::AtLeastOnce, false);
        big.packet_id = Some(crate::common::raw::pid(99));
        let rc = send_expect_disconnect(&mut publ, Packet::Publish(big)).await;
        if version.is_v5() {
            assert_eq!(
                rc,
                Some(ReasonCode::PACKET_TOO_LARGE),
                "v5 oversized PUBLISH"
            );
        } else {
            assert_eq!(rc, None, "no DISCONNECT to a 3.1.1 client");
        }
        sub.expect_no_publish(QUIET, "oversized PUBLISH").await;
    }
}

/// Client maximum packet size (512, in CONNECT): a message larger than that
/// is not sent to the client (which stays connected); the small one that
/// follows is.
#[tokio::test]
async fn client_maximum_packet_size() {
    let test = "client_maximum_packet_size";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.maximum_packet_size = Some(512);
    let (mut sub, _) = Raw::connect_ok(b.port(), conn).await;
    sub.subscribe("cmps/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        publ.publish_ok("cmps/t", &"L".repeat(1000), qos, false)
            .await;
        publ.publish_ok("cmps/t", "small", qos, false).await;
        let p = sub.recv_publish_acked().await;
        assert_eq!(
            text(&p),
            "small",
            "{qos:?}: the oversized message must be skipped"
        );
    }
    sub.expect_no_publish(QUIET, "oversized message").await;
    sub.ping().await;
}

/// The client's Receive Maximum (2): the server sends at most 2 unacknowledged
/// QoS 1 messages, and the next ones as acks come in.
#[tokio::test]
async fn v5_receive_maximum_respected_by_server() {
    let test = "v5_receive_maximum_respected_by_server";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.receive_maximum = Some(2);
    let (mut sub, _) = Raw::connect_ok(b.port(), conn).await;
    sub.subscribe("rm/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..5 {
        publ.publish_ok("rm/t", &format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let p0 = sub.recv_publish().await;
    let p1 = sub.recv_publish().await;
    sub.expect_no_publish(
        Duration::from_millis(500),
        "a third unacknowledged message beyond receive maximum 2",
    )
    .await;
    sub.ack(&p0).await;
    let p2 = sub.recv_publish().await;
    if b.is_vmqtt() {
        sub.expect_no_publish(QUIET, "beyond receive maximum after one ack")
            .await;
    } else {
        eprintln!("DIFFERS on Mosquitto [{test}]: after one PUBACK, Mosquitto 2.0.11 sends two more messages with receive maximum 2; vmqtt must send one");
    }
    sub.ack(&p1).await;
    sub.ack(&p2).await;
    let p3 = sub.recv_publish_acked().await;
    let p4 = sub.recv_publish_acked().await;
    let all: Vec<String> = [&p0, &p1, &p2, &p3, &p4].iter().map(|p| text(p)).collect();
    assert_eq!(all, vec!["m0", "m1", "m2", "m3", "m4"]);
}

/// The server's Receive Maximum (5): a client that sends 6 QoS 2 PUBLISHes
/// without completing any gets DISCONNECT 0x93.
#[tokio::test]
async fn v5_receive_maximum_exceeded_by_client() {
    let test = "v5_receive_maximum_exceeded_by_client";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            receive_maximum: Some(5),
            ..Default::default()
        },
    );
    let (mut c, ack) = Raw::connect_ok(b.port(), connect_packet(V5P, "rm-flood")).await;
    assert_eq!(ack.properties.receive_maximum, Some(5));
    for i in 1..=6u16 {
        let mut p = publish("rmx/t", &b"x"[..], QoS::ExactlyOnce, false);
        p.packet_id = Some(crate::common::raw::pid(i));
        if c.try_send_raw(&{
            let mut buf = bytes::BytesMut::new();
            Packet::Publish(p).encode(V5P, &mut buf).unwrap();
            buf
        })
        .await
        .is_err()
        {
            break;
        }
    }
    if b.is_mosquitto() {
        // Mosquitto 2.0.11 answers the 6th with PUBREC 0x97 (Quota exceeded)
        // and keeps the connection.
        let rec = c
            .wait_for("PUBREC for the 6th", WAIT, |p| match p {
                Packet::PubRec(r) if r.packet_id.get() == 6 => Some(r.clone()),
                _ => None,
            })
            .await;
        eprintln!(
            "DIFFERS on Mosquitto [{test}]: PUBREC {:?} for the 6th, vmqtt must send DISCONNECT 0x93",
            rec.reason
        );
        return;
    }
    let got = c.expect_closed(WAIT).await;
    let rc = got.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    });
    assert_eq!(
        rc,
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "received {got:?}"
    );
}

// ------------------------------------------------- Session Expiry by DISCONNECT

/// [MQTT-3.14.2-2], §3.1.2.11.2: the Session Expiry Interval of DISCONNECT
/// replaces the CONNECT's. CONNECT 1 s, DISCONNECT 5 s, reconnect after 3 s
/// with clean start 0: session present, the message queued meanwhile comes.
/// That CONNECT had no expiry (0), so the session ends with it. Right before,
/// a session of the same client id with expiry 1 ended: its expiry timer
/// must not end the new session (it did: generations restarted at 0).
#[tokio::test]
async fn v5_disconnect_session_expiry_replaces_the_connect_value() {
    let test = "v5_disconnect_session_expiry_replaces_the_connect_value";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.session_expiry_interval = Some(1);
    let (before, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    before.disconnect().await;

    let (mut sub, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(!ack.session_present);
    sub.subscribe("dse/t", QoS::AtLeastOnce).await;
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    d.properties.session_expiry_interval = Some(5);
    sub.disconnect_with(d).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("dse/t", "while away", QoS::AtLeastOnce, false)
        .await;

    sleep_ms(3000).await;
    let mut again = connect_packet(V5P, &sub_id);
    again.clean_start = false;
    let (mut sub, ack) = Raw::connect_ok(b.port(), again.clone()).await;
    assert!(
        ack.session_present,
        "3 s after DISCONNECT with Session Expiry Interval 5 (CONNECT: 1)"
    );
    assert_eq!(text(&sub.recv_publish_acked().await), "while away");
    sub.disconnect().await;
    let (_sub, ack) = Raw::connect_ok(b.port(), again).await;
    assert!(!ack.session_present, "that connection had expiry 0");
}

// --------------------------------------------------- outbound topic aliases

/// A v5 subscriber that announces Topic Alias Maximum `max`.
async fn alias_subscriber(port: u16, id: &str, max: Option<u16>, f: &str) -> Raw {
    let mut conn = connect_packet(V5P, id);
    conn.properties.topic_alias_maximum = max;
    let (mut c, _) = Raw::connect_ok(port, conn).await;
    c.subscribe(f, QoS::AtLeastOnce).await;
    c
}

/// `(topic on the wire, Topic Alias, payload)` of the next `n` PUBLISHes.
async fn wire_view(c: &mut Raw, n: usize) -> Vec<(String, Option<u16>, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let p = c.recv_publish_acked().await;
        out.push((
            p.topic.as_str().to_owned(),
            p.properties.topic_alias,
            text(&p),
        ));
    }
    out
}

fn w(t: &str, alias: Option<u16>, m: &str) -> (String, Option<u16>, String) {
    (t.to_owned(), alias, m.to_owned())
}

/// Server → client topic aliases on the wire: the first PUBLISH of a topic
/// carries it with a new alias, later ones an empty topic; with the client's
/// maximum (2) in use, a new topic takes the least recently used alias. A
/// client that announces no maximum gets full topics; a reconnect starts
/// with no aliases ([MQTT-3.3.2-7]).
#[tokio::test]
async fn v5_topic_alias_server_to_client_on_the_wire() {
    let test = "v5_topic_alias_server_to_client_on_the_wire";
    if skip_on_mosquitto(test, "Mosquitto sends no topic aliases") {
        return;
    }
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut s = alias_subscriber(b.port(), &sub_id, Some(2), "oa/#").await;
    let mut plain = alias_subscriber(b.port(), &format!("{sub_id}-plain"), None, "oa/#").await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let sends = [
        ("oa/a", "1"),
        ("oa/a", "2"),
        ("oa/b", "3"),
        ("oa/a", "4"),
        ("oa/c", "5"),
        ("oa/b", "6"),
        ("oa/c", "7"),
    ];
    for (t, m) in sends {
        publ.publish_ok(t, m, QoS::AtLeastOnce, false).await;
    }
    assert_eq!(
        wire_view(&mut s, sends.len()).await,
        vec![
            w("oa/a", Some(1), "1"),
            w("", Some(1), "2"),
            w("oa/b", Some(2), "3"),
            w("", Some(1), "4"),
            // oa/b (alias 2) is the least recently used.
            w("oa/c", Some(2), "5"),
            // now oa/a (alias 1) is.
            w("oa/b", Some(1), "6"),
            w("", Some(2), "7"),
        ]
    );
    let want: Vec<_> = sends.iter().map(|(t, m)| w(t, None, m)).collect();
    assert_eq!(wire_view(&mut plain, sends.len()).await, want);

    // A new connection: the aliases of the old one are gone.
    s.disconnect().await;
    let mut s = alias_subscriber(b.port(), &sub_id, Some(2), "oa/#").await;
    publ.publish_ok("oa/c", "8", QoS::AtLeastOnce, false).await;
    publ.publish_ok("oa/c", "9", QoS::AtLeastOnce, false).await;
    assert_eq!(
        wire_view(&mut s, 2).await,
        vec![w("oa/c", Some(1), "8"), w("", Some(1), "9")]
    );
}

/// `[mqtt] outbound_topic_aliases = false` turns them off; a `[shards.N]`
/// table overrides it for one shard.
#[tokio::test]
async fn v5_topic_alias_server_to_client_switch() {
    let test = "v5_topic_alias_server_to_client_switch";
    if skip_on_mosquitto(test, "vmqtt setting") {
        return;
    }
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let sub_shard = home_shard(&sub_id, SHARDS).get();
    let other_shard = crate::common::shard::ShardId::new(1 - sub_shard as u16);
    let other = crate::common::shard::id_on_shard(&format!("{test}-other"), other_shard);
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_mqtt: "outbound_topic_aliases = false".to_owned(),
            extra_toml: format!("[shards.{sub_shard}]\noutbound_topic_aliases = true\n"),
            ..Default::default()
        },
    );
    let mut on = alias_subscriber(b.port(), &sub_id, Some(5), "sw/#").await;
    let mut off = alias_subscriber(b.port(), &other, Some(5), "sw/#").await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("sw/t", "1", QoS::AtLeastOnce, false).await;
    publ.publish_ok("sw/t", "2", QoS::AtLeastOnce, false).await;
    assert_eq!(
        wire_view(&mut on, 2).await,
        vec![w("sw/t", Some(1), "1"), w("", Some(1), "2")],
        "shard {sub_shard}: turned on by [shards.{sub_shard}]"
    );
    assert_eq!(
        wire_view(&mut off, 2).await,
        vec![w("sw/t", None, "1"), w("sw/t", None, "2")],
        "the other shard: off as [mqtt] says"
    );
}

/// paho-mqtt 2.x: the steps of Paho 5.0 test_session_expiry (Session Expiry
/// Interval 1 in CONNECT, 5 in DISCONNECT: still there after 3 s), twice in
/// a row.
#[test]
fn paho_python_v5_disconnect_session_expiry() {
    let test = "paho_python_v5_disconnect_session_expiry";
    run_paho(test, "paho_v5.py", ("--check", "session-expiry"), test);
}

/// paho-mqtt 2.x with Topic Alias Maximum 2: the broker's aliases resolve to
/// the topics published (Paho 5.0 test_server_topic_alias).
#[test]
fn paho_python_v5_server_topic_alias() {
    let test = "paho_python_v5_server_topic_alias";
    if skip_on_mosquitto(test, "Mosquitto sends no topic aliases") {
        return;
    }
    run_paho(test, "paho_v5.py", ("--check", "topic-alias"), test);
}

/// `mosquitto_sub -V mqttv5 -D connect topic-alias-maximum 10` (libmosquitto
/// resolves the aliases) prints the right topic for each of 60 messages on
/// 12 topics, so aliases are reused and rebound.
#[tokio::test]
async fn mosquitto_sub_v5_with_server_topic_aliases() {
    let test = "mosquitto_sub_v5_with_server_topic_aliases";
    if skip_missing_external(
        test,
        "mosquitto_sub (Debian: mosquitto-clients)",
        runs("mosquitto_sub", &["--help"]),
    ) {
        return;
    }
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let sends: Vec<(String, String)> = (0..60)
        .map(|i| (format!("mq/t{}", (i * 7) % 12), format!("m{i}")))
        .collect();
    let port = b.port().to_string();
    let count = sends.len().to_string();
    let mut sub = std::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port])
        .args(["-i", &sub_id, "-t", "mq/#", "-q", "1", "-v", "-d"])
        .args(["-V", "mqttv5", "-D", "connect", "topic-alias-maximum", "10"])
        .args(["-C", &count, "-W", "20"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn mosquitto_sub");
    let lines = lines_of(&mut sub);
    if !line_within(&lines, "received SUBACK", WAIT) {
        panic!("mosquitto_sub got no SUBACK");
    }
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for (t, m) in &sends {
        publ.publish_ok(t, m, QoS::AtLeastOnce, false).await;
    }
    let st = wait_exit(&mut sub, "mosquitto_sub", WAIT * 4);
    let got = sub_messages(&lines);
    assert!(st.success(), "mosquitto_sub exited with {st}; got {got:?}");
    let want: Vec<String> = sends.iter().map(|(t, m)| format!("{t} {m}")).collect();
    assert_eq!(got, want);
}
