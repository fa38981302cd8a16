//! Bad input: malformed packets get DISCONNECT 0x81 (v5) or a closed socket
//! (3.1.1); bad CONNECTs; protocol errors; a connection that never sends
//! CONNECT; garbage. Other clients keep working throughout, and the broker
//! does not die (checked when the `Broker` is dropped).

use std::time::{Duration, Instant};

use crate::common::wire::{connect_frame, Rng};
use crate::common::*;

/// PINGREQ with a non-zero flag nibble: Mosquitto 2.0.11 answers it with a
/// PINGRESP instead of closing.
const PINGREQ_FLAGS: &[u8] = &[0xc1, 0x00];

/// Says so and returns `true` when the broker is Mosquitto and `bytes` is a
/// malformed packet it accepts.
fn mosquitto_accepts(b: &Broker, what: &str, bytes: &[u8]) -> bool {
    if b.is_mosquitto() && bytes == PINGREQ_FLAGS {
        eprintln!("DIFFERS on Mosquitto [{what}]: answered, not closed; vmqtt must close (v5: DISCONNECT 0x81)");
        return true;
    }
    false
}

/// Malformed packets sent after a successful CONNECT.
const MALFORMED: &[(&str, &[u8])] = &[
    // SUBSCRIBE must have flags 0b0010.
    (
        "SUBSCRIBE with reserved flags 0000",
        &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x01],
    ),
    // PUBREL must have flags 0b0010.
    ("PUBREL with reserved flags 0000", &[0x60, 0x02, 0x00, 0x01]),
    // PINGREQ must have flags 0.
    ("PINGREQ with flags 0001", PINGREQ_FLAGS),
    // QoS 3 does not exist.
    (
        "PUBLISH with QoS 3",
        &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
    ),
    // A remaining length longer than 4 bytes.
    (
        "remaining length of 5 bytes",
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ),
    // Packet type 0 is reserved.
    ("reserved packet type 0", &[0x00, 0x00]),
    // A string length running past the end of the packet.
    (
        "topic length past the packet",
        &[0x30, 0x03, 0x00, 0x09, b'a'],
    ),
];

/// The v3.1.1 forms of the same packets (no property lengths).
const MALFORMED_311: &[(&str, &[u8])] = &[
    (
        "SUBSCRIBE with reserved flags 0000",
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01],
    ),
    ("PUBREL with reserved flags 0000", &[0x60, 0x02, 0x00, 0x01]),
    ("PINGREQ with flags 0001", PINGREQ_FLAGS),
    (
        "PUBLISH with QoS 3",
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
    ),
    (
        "remaining length of 5 bytes",
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ),
    ("reserved packet type 0", &[0x00, 0x00]),
    ("AUTH in 3.1.1", &[0xf0, 0x00]),
    (
        "topic length past the packet",
        &[0x30, 0x03, 0x00, 0x09, b'a'],
    ),
];

/// v5: each malformed packet gets DISCONNECT 0x81 (Malformed Packet; 0x82 is
/// accepted for the reserved packet type) and a closed socket.
#[tokio::test]
async fn v5_malformed_packets_get_0x81() {
    let test = "v5_malformed_packets_get_0x81";
    let b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    for (i, (what, bytes)) in MALFORMED.iter().enumerate() {
        let mut c = Raw::v5(b.port(), &format!("malformed5-{i}")).await;
        c.name = format!("v5 {what}");
        if mosquitto_accepts(&b, what, bytes) {
            continue;
        }
        c.send_raw(bytes).await;
        let rc = c.expect_disconnect(WAIT).await;
        // A reserved packet type is "forbidden": a protocol error as much as
        // a malformed packet.
        let also = if bytes[0] >> 4 == 0 {
            Some(ReasonCode::PROTOCOL_ERROR)
        } else {
            None
        };
        let rc = if rc.is_some() && rc == also {
            Some(ReasonCode::MALFORMED_PACKET)
        } else {
            rc
        };
        assert_vmqtt_eq(
            &b,
            rc,
            Some(ReasonCode::MALFORMED_PACKET),
            &format!("DISCONNECT after {what}"),
            "Mosquitto 2.0.11 closes the connection without DISCONNECT",
        );
        by.check().await;
    }
}

/// 3.1.1: each malformed packet closes the socket, with no DISCONNECT.
#[tokio::test]
async fn v311_malformed_packets_close_connection() {
    let test = "v311_malformed_packets_close_connection";
    let b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    for (i, (what, bytes)) in MALFORMED_311.iter().enumerate() {
        let mut c = Raw::v311(b.port(), &format!("malformed311-{i}")).await;
        c.name = format!("3.1.1 {what}");
        if mosquitto_accepts(&b, what, bytes) {
            continue;
        }
        c.send_raw(bytes).await;
        let got = c.read_bytes_until_closed(WAIT).await;
        assert!(
            got.is_empty(),
            "[{what}] a 3.1.1 client gets nothing, got {got:02x?}"
        );
        by.check().await;
    }
}

/// Protocol errors after CONNECT: a second CONNECT (v5: DISCONNECT 0x82),
/// a wildcard in a PUBLISH topic, an invalid topic filter (SUBACK failure or
/// DISCONNECT), a packet id 0 on QoS 1.
#[tokio::test]
async fn protocol_errors_after_connect() {
    let test = "protocol_errors_after_connect";
    let b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;

    // Second CONNECT.
    for version in [V5P, V311] {
        let mut c = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("twice-{version:?}")),
        )
        .await
        .0;
        let mut buf = bytes::BytesMut::new();
        Packet::Connect(Box::new(connect_packet(
            version,
            &format!("twice-{version:?}"),
        )))
        .encode(version, &mut buf)
        .unwrap();
        c.send_raw(&buf).await;
        let got = c.expect_closed(WAIT).await;
        let rc = got.iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        });
        if version.is_v5() {
            assert_vmqtt_eq(
                &b,
                rc,
                Some(ReasonCode::PROTOCOL_ERROR),
                "v5 second CONNECT",
                "Mosquitto closes the connection without DISCONNECT",
            );
        } else {
            assert_eq!(rc, None, "3.1.1: no DISCONNECT");
        }
        by.check().await;
    }

    // PUBLISH to a topic with a wildcard (v5 and 3.1.1).
    for version in [V5P, V311] {
        let mut c = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("wild-{version:?}")),
        )
        .await
        .0;
        let body: &[u8] = if version.is_v5() {
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00]
        } else {
            &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+']
        };
        c.send_raw(body).await;
        let rc = c.expect_disconnect(WAIT).await;
        if version.is_v5() && b.is_vmqtt() {
            assert!(
                rc.is_some_and(|r| [0x81, 0x82, 0x90].contains(&r.0)),
                "v5 PUBLISH to a/+: DISCONNECT {rc:?}, want 0x81, 0x82 or 0x90"
            );
        }
        by.check().await;
    }

    // Invalid filter: SUBACK with a failure code, or the connection closed.
    for version in [V5P, V311] {
        let mut c = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("badfilter-{version:?}")),
        )
        .await
        .0;
        let body: &[u8] = if version.is_v5() {
            &[
                0x82, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x01,
            ]
        } else {
            &[
                0x82, 0x0a, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x01,
            ]
        };
        c.send_raw(body).await;
        match c.recv(WAIT).await {
            Ok(Packet::SubAck(a)) => {
                assert!(
                    a.reasons.iter().all(|r| r.0 >= 0x80),
                    "SUBACK for a/#/b: {a:?}"
                )
            }
            Ok(Packet::Disconnect(d)) => {
                assert!(d.reason.0 >= 0x80, "DISCONNECT for a/#/b: {d:?}");
                c.expect_closed(WAIT).await;
            }
            Err(crate::common::raw::RecvError::Closed) => {}
            other => panic!("{version:?} SUBSCRIBE a/#/b: {other:?}"),
        }
        by.check().await;
    }

    // QoS 1 PUBLISH with packet id 0.
    for version in [V5P, V311] {
        let mut c = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("pid0-{version:?}")),
        )
        .await
        .0;
        let body: &[u8] = if version.is_v5() {
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00]
        } else {
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00]
        };
        c.send_raw(body).await;
        let rc = c.expect_disconnect(WAIT).await;
        if version.is_v5() {
            assert_vmqtt_eq(
                &b,
                rc.is_some_and(|r| r.0 >= 0x80),
                true,
                &format!("v5 packet id 0: DISCONNECT {rc:?}"),
                "Mosquitto closes the connection without DISCONNECT",
            );
        }
        by.check().await;
    }
}

/// Bad CONNECTs: the connection is closed; anything sent before the close is
/// a CONNACK with a failure code (3.1.1: 0x01 for an unknown level).
#[tokio::test]
async fn bad_connect_closes_connection() {
    let test = "bad_connect_closes_connection";
    let b = Broker::start(test);
    let mut by = Bystanders::new(&b, test).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "v3.1.1 CONNECT with the reserved flag set",
            connect_frame(b"MQTT", 4, 0x03, None, &[0x00, 0x01, b'r']),
        ),
        (
            "v5 CONNECT with the reserved flag set",
            connect_frame(b"MQTT", 5, 0x03, None, &[0x00, 0x00, 0x01, b'r']),
        ),
        (
            "unknown protocol level 6",
            connect_frame(b"MQTT", 6, 0x02, None, &[0x00, 0x00, 0x01, b'l']),
        ),
        (
            "unknown protocol name",
            connect_frame(b"MQTX", 4, 0x02, None, &[0x00, 0x01, b'n']),
        ),
        (
            "will QoS 3",
            connect_frame(
                b"MQTT",
                4,
                0x02 | 0x04 | 0x18,
                None,
                &[0x00, 0x01, b'w', 0x00, 0x01, b't', 0x00, 0x00],
            ),
        ),
        ("PINGREQ before CONNECT", vec![0xc0, 0x00]),
        (
            "PUBLISH before CONNECT",
            vec![0x30, 0x04, 0x00, 0x01, b'a', b'x'],
        ),
    ];
    for (what, bytes) in cases {
        let mut c = Raw::tcp(b.port(), what).await;
        c.send_raw(&bytes).await;
        let got = c.read_bytes_until_closed(WAIT).await;
        if !got.is_empty() {
            assert_eq!(
                got[0], 0x20,
                "[{what}] only a CONNACK may come before the close: {got:02x?}"
            );
            assert!(
                got.len() >= 4 && got[3] != 0,
                "[{what}] CONNACK must refuse: {got:02x?}"
            );
            if what == "unknown protocol level 6" && got[1] == 2 {
                assert_eq!(
                    got[3], 0x01,
                    "3.1.1 CONNACK 0x01 unacceptable protocol version"
                );
            }
        }
        by.check().await;
    }
}

/// A connection that never sends CONNECT (or only part of one) is closed
/// after `connect_timeout_ms` (1000 ms here).
#[tokio::test]
async fn no_connect_closed_after_connect_timeout() {
    let test = "no_connect_closed_after_connect_timeout";
    if skip_on_mosquitto(test, "Mosquitto has no connect timeout setting") {
        return;
    }
    let b = Broker::start_with(
        test,
        BrokerConfig {
            connect_timeout_ms: Some(1000),
            ..Default::default()
        },
    );
    let mut by = Bystanders::new(&b, test).await;
    let start = Instant::now();
    let mut silent = Raw::tcp(b.port(), "silent").await;
    let mut partial = Raw::tcp(b.port(), "partial CONNECT").await;
    partial.send_raw(&[0x10, 0x20, 0x00, 0x04, b'M']).await;
    for c in [&mut silent, &mut partial] {
        let got = c.read_bytes_until_closed(Duration::from_secs(5)).await;
        let after = start.elapsed();
        assert!(got.is_empty(), "[{}] got {got:02x?}", c.name);
        assert!(
            after >= Duration::from_millis(800) && after <= Duration::from_secs(5),
            "[{}] closed after {after:?}, connect timeout 1 s",
            c.name
        );
    }
    by.check().await;
}

/// 100 connections send random bytes (half of them after a valid CONNECT),
/// then close. The broker keeps routing for others, and survives.
#[tokio::test]
async fn random_garbage_does_not_disturb_others() {
    let test = "random_garbage_does_not_disturb_others";
    let mut b = Broker::start_with(
        test,
        BrokerConfig {
            connect_timeout_ms: Some(1000),
            ..Default::default()
        },
    );
    let mut by = Bystanders::new(&b, test).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..100u32 {
        let len = 1 + (rng.next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut c = if i % 2 == 0 {
            Raw::tcp(b.port(), &format!("garbage-{i}")).await
        } else {
            let version = if i % 4 == 1 { V5P } else { V311 };
            Raw::connect_ok(b.port(), connect_packet(version, &format!("garbage-{i}")))
                .await
                .0
        };
        if i % 3 == 0 {
            // Start with a plausible fixed header.
            bytes[0] = [0x30, 0x32, 0x82, 0x10, 0xe0][(i / 3 % 5) as usize];
        }
        let _ = c.try_send_raw(&bytes).await;
        drop(c);
        if i % 10 == 9 {
            by.check().await;
        }
    }
    by.check().await;
    b.assert_alive();
}
