//! Keep alive: a silent client is disconnected after 1.5x its keep alive
//! (and its will is published); PINGREQ keeps it alive; v5 Server Keep Alive
//! from `max_keepalive`.

use std::time::{Duration, Instant};

use crate::common::*;

/// The window in which a silent client with keep alive 1 s must be closed.
const EARLIEST: Duration = Duration::from_millis(1200);
const LATEST: Duration = Duration::from_secs(5);

/// Waits for the close of a silent connection and checks when it came;
/// `since` is when the client last sent something.
async fn expect_keepalive_close(b: &Broker, c: &mut Raw, since: Instant) {
    // Mosquitto 2.0.11 checks keep alives coarsely: a 1 s keep alive is
    // enforced after 5-6 s. Give it that, and say so.
    let (lower, upper) = if b.is_mosquitto() {
        (Duration::from_millis(900), Duration::from_secs(8))
    } else {
        (EARLIEST, LATEST)
    };
    let got = c.expect_closed(upper + Duration::from_secs(1)).await;
    let after = since.elapsed();
    assert!(
        after >= lower && after <= upper,
        "[{}] keep alive 1 s: closed after {after:?}, expected within {lower:?}..{upper:?}",
        c.name
    );
    if after > LATEST {
        eprintln!(
            "DIFFERS on {:?} [keep alive 1 s]: closed after {after:?}; vmqtt must close within {EARLIEST:?}..{LATEST:?}",
            b.kind()
        );
    }
    for p in &got {
        match p {
            Packet::Disconnect(d) => assert_eq!(
                d.reason,
                ReasonCode::KEEP_ALIVE_TIMEOUT,
                "[{}] a DISCONNECT on keep alive timeout must say 0x8D",
                c.name
            ),
            other => panic!("[{}] unexpected {other:?} before the close", c.name),
        }
    }
}

/// A client with keep alive 1 s that sends nothing after CONNECT is
/// disconnected in 1.2..5 s, and its will is published (3.1.1 and v5).
#[tokio::test]
async fn silent_client_disconnected_after_keepalive() {
    let test = "silent_client_disconnected_after_keepalive";
    let b = Broker::start(test);
    let (will_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("ka/will/#", QoS::AtLeastOnce).await;
    let mut silent = Vec::new();
    for version in [V311, V5P] {
        let mut conn = connect_packet(version, &format!("{will_id}-{version:?}"));
        conn.keep_alive = 1;
        conn.will = Some(will(
            &format!("ka/will/{version:?}"),
            "timed out",
            QoS::AtLeastOnce,
            false,
        ));
        let (c, _) = Raw::connect_ok(b.port(), conn).await;
        silent.push((c, Instant::now()));
    }
    for (c, since) in &mut silent {
        expect_keepalive_close(&b, c, *since).await;
    }
    let mut wills = vec![
        sub.recv_publish_acked().await.topic.as_str().to_owned(),
        sub.recv_publish_acked().await.topic.as_str().to_owned(),
    ];
    wills.sort();
    assert_eq!(
        wills,
        vec!["ka/will/V3_1_1", "ka/will/V5"],
        "wills of timed-out clients"
    );
}

/// PINGREQ every 500 ms keeps a keep alive 1 s connection open (for 2.5 s).
#[tokio::test]
async fn pingreq_keeps_connection_alive() {
    let b = Broker::start("pingreq_keeps_connection_alive");
    let mut conn = connect_packet(V311, "pinger");
    conn.keep_alive = 1;
    let (mut c, _) = Raw::connect_ok(b.port(), conn).await;
    for _ in 0..5 {
        sleep_ms(500).await;
        c.ping().await;
    }
}

/// v5 with `max_keepalive = 1` (Mosquitto: 10, its minimum): a client asking
/// for 60 s (or 0, "no keep alive") gets Server Keep Alive = max in CONNACK
/// and is held to it; a client asking for 1 s keeps it.
#[tokio::test]
async fn v5_server_keep_alive_from_max_keepalive() {
    let test = "v5_server_keep_alive_from_max_keepalive";
    let max: u16 = if BrokerKind::from_env() == BrokerKind::Mosquitto {
        eprintln!(
            "NOTE [{test}]: Mosquitto's minimum max_keepalive is 10: using 10, and not waiting for the close"
        );
        10
    } else {
        1
    };
    let b = Broker::start_with(
        test,
        BrokerConfig {
            max_keepalive: Some(max),
            ..Default::default()
        },
    );
    let mut conn = connect_packet(V5P, "ska-60");
    conn.keep_alive = 60;
    let (mut c60, ack) = Raw::connect_ok(b.port(), conn).await;
    let since = Instant::now();
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(max),
        "asked 60 with max {max}: {ack:?}"
    );

    let mut conn = connect_packet(V5P, "ska-0");
    conn.keep_alive = 0;
    let (_c0, ack) = Raw::connect_ok(b.port(), conn).await;
    assert_vmqtt_eq(
        &b,
        ack.properties.server_keep_alive,
        Some(max),
        "asked 0 (no keep alive) with max_keepalive set",
        "Mosquitto 2.0.11 lets a v5 client keep 0",
    );

    let mut conn = connect_packet(V5P, "ska-1");
    conn.keep_alive = 1;
    let (_c1, ack) = Raw::connect_ok(b.port(), conn).await;
    assert_eq!(
        ack.properties.server_keep_alive.unwrap_or(1),
        1,
        "asked 1 with max {max}: {ack:?}"
    );

    // The server enforces the keep alive it gave, not the one asked for.
    if b.is_vmqtt() {
        expect_keepalive_close(&b, &mut c60, since).await;
    }
}
