//! CONNECT / CONNACK: protocol levels, session present, assigned client
//! identifier, configured limits, duplicate client id takeover, SIGTERM.

use std::time::{Duration, Instant};

use crate::common::*;

/// MQTT 3.1.1 with rumqttc (v4 API) and raw: CONNACK accepted, session
/// present 0 on a clean session.
#[tokio::test]
async fn v311_connack_clean_session() {
    let b = Broker::start("v311_connack_clean_session");
    let (c, ack) = V4::connect(b.port(), "conn311-rumqttc", |_| {}).await;
    assert!(
        !ack.session_present,
        "clean session must not have a session present"
    );
    c.disconnect().await;

    let (raw, ack) = Raw::connect_ok(b.port(), connect_packet(V311, "conn311-raw")).await;
    assert!(!ack.session_present);
    raw.disconnect().await;
}

/// MQTT 5 with rumqttc::v5 and raw: CONNACK success, session present 0 on
/// clean start.
#[tokio::test]
async fn v5_connack_clean_start() {
    let b = Broker::start("v5_connack_clean_start");
    let (c, ack) = V5::connect(b.port(), "conn5-rumqttc", |_| {}).await;
    assert!(!ack.session_present);
    c.disconnect().await;

    let mut conn = connect_packet(V5P, "conn5-raw");
    conn.properties.session_expiry_interval = Some(30);
    let (raw, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(
        !ack.session_present,
        "clean start must not have a session present"
    );
    assert!(
        ack.properties.assigned_client_identifier.is_none(),
        "no assigned id when the client sent one: {ack:?}"
    );
    raw.disconnect().await;
}

/// MQTT 3.1 (`MQIsdp`, level 3) connects and exchanges messages with a
/// 3.1.1 client across shards.
#[tokio::test]
async fn v31_mqisdp_pubsub() {
    let b = Broker::start("v31_mqisdp_pubsub");
    let (pub_id, sub_id) = ids_on_different_shards("v31");
    let (mut sub, ack) =
        Raw::connect_ok(b.port(), connect_packet(ProtocolVersion::V3_1, &sub_id)).await;
    assert!(!ack.session_present);
    sub.subscribe("v31/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok("v31/t", "hello 3.1", QoS::AtLeastOnce, false)
        .await;
    let p = sub.recv_publish_acked().await;
    assert_eq!(text(&p), "hello 3.1");
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

/// The CONNACK of an MQTT 5 client carries the configured receive maximum,
/// topic alias maximum and maximum packet size.
#[tokio::test]
async fn v5_connack_reports_configured_limits() {
    let b = Broker::start_with(
        "v5_connack_reports_configured_limits",
        BrokerConfig {
            receive_maximum: Some(100),
            topic_alias_maximum: Some(16),
            max_packet_size: Some(65_536),
            ..Default::default()
        },
    );
    let (_raw, ack) = Raw::connect_ok(b.port(), connect_packet(V5P, "limits")).await;
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(100), "receive maximum: {ack:?}");
    assert_eq!(
        p.topic_alias_maximum,
        Some(16),
        "topic alias maximum: {ack:?}"
    );
    assert_eq!(
        p.maximum_packet_size,
        Some(65_536),
        "maximum packet size: {ack:?}"
    );
}

/// v5, empty client id: the server assigns one (Assigned Client Identifier),
/// the client works under it, and the session can be resumed with it.
#[tokio::test]
async fn v5_empty_client_id_gets_assigned_identifier() {
    let b = Broker::start("v5_empty_client_id_gets_assigned_identifier");
    let mut conn = connect_packet(V5P, "");
    conn.properties.session_expiry_interval = Some(60);
    let (mut c, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(!ack.session_present);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .clone()
        .unwrap_or_else(|| panic!("no Assigned Client Identifier in {ack:?}"))
        .as_str()
        .to_owned();
    assert!(!assigned.is_empty(), "assigned client identifier is empty");
    c.name = assigned.clone();

    // It works: subscribe, receive from another client.
    c.subscribe("assigned/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.port(), "assigned-publisher").await;
    publ.publish_ok("assigned/t", "one", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&c.recv_publish_acked().await), "one");
    c.disconnect().await;

    // The session lives under the assigned id.
    let mut conn = connect_packet(V5P, &assigned);
    conn.clean_start = false;
    conn.properties.session_expiry_interval = Some(60);
    let (mut c, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(ack.session_present, "session of the assigned id not found");
    publ.publish_ok("assigned/t", "two", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&c.recv_publish_acked().await), "two");
}

/// v3.1.1, empty client id: accepted with clean session 1, refused with
/// return code 0x02 (identifier rejected) with clean session 0.
#[tokio::test]
async fn v311_empty_client_id() {
    let b = Broker::start("v311_empty_client_id");
    let (mut c, ack) = Raw::connect_with(b.port(), connect_packet(V311, "")).await;
    assert_eq!(
        ack.reason,
        ReasonCode::SUCCESS,
        "clean session + empty id: {ack:?}"
    );
    c.ping().await;

    let mut conn = connect_packet(V311, "");
    conn.clean_start = false;
    let (mut c, ack) = Raw::connect_with(b.port(), conn).await;
    assert_eq!(
        ack.reason,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        "persistent session + empty id must get 0x02 identifier rejected: {ack:?}"
    );
    c.expect_closed(WAIT).await;
}

/// v3.1.1: a second connection with the same client id closes the first one
/// (no DISCONNECT in 3.1.1); the new one works, across a chain of takeovers.
#[tokio::test]
async fn v311_duplicate_client_id_takes_over() {
    let b = Broker::start("v311_duplicate_client_id_takes_over");
    let (pub_id, sub_id) = ids_on_different_shards("takeover311");
    let mut old = Raw::v311(b.port(), &sub_id).await;
    for round in 0..4 {
        let mut new = Raw::v311(b.port(), &sub_id).await;
        let got = old.expect_closed(WAIT).await;
        assert!(
            got.iter().all(|p| !matches!(p, Packet::Disconnect(_))),
            "round {round}: a 3.1.1 server never sends DISCONNECT: {got:?}"
        );
        new.ping().await;
        old = new;
    }
    old.subscribe("takeover311/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok("takeover311/t", "after takeover", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&old.recv_publish_acked().await), "after takeover");
}

/// v5: the old connection gets DISCONNECT 0x8E (Session taken over) and is
/// closed.
#[tokio::test]
async fn v5_duplicate_client_id_gets_0x8e() {
    let b = Broker::start("v5_duplicate_client_id_gets_0x8e");
    let mut old = Raw::v5(b.port(), "takeover5").await;
    let mut new = Raw::v5(b.port(), "takeover5").await;
    let rc = old.expect_disconnect(WAIT).await;
    assert_vmqtt_eq(
        &b,
        rc,
        Some(ReasonCode::SESSION_TAKEN_OVER),
        "old connection's DISCONNECT",
        "Mosquitto 2.0.11 closes the old connection without a DISCONNECT",
    );
    new.ping().await;
}

/// v5 with rumqttc: the old client's event loop ends (and the new client
/// keeps working).
///
/// rumqttc 0.25.1 cannot decode a DISCONNECT whose remaining length is 1
/// (reason code, no property length: valid, MQTT 5 §3.14.2.2.1) — it waits
/// for more bytes and then reports `ConnectionAborted` — so the reason code
/// itself is checked by `v5_duplicate_client_id_gets_0x8e` on a raw socket.
#[tokio::test]
async fn v5_rumqttc_old_client_disconnected_on_takeover() {
    let b = Broker::start("v5_rumqttc_old_client_disconnected_on_takeover");
    let mut old = V5::new(b.port(), "takeover5-rumqttc").await;
    let mut new = V5::new(b.port(), "takeover5-rumqttc").await;
    let err = old
        .wait_event("the takeover", WAIT, &mut |_p| None::<()>)
        .await
        .expect_err("the old client must be disconnected");
    assert!(
        err.contains("SessionTakenOver") || err.contains("ConnectionAborted"),
        "old client's event loop must end with the server's DISCONNECT or the close, got {err}"
    );
    new.subscribe("takeover5-rumqttc/t", QoS5::AtLeastOnce)
        .await;
    new.publish(
        "takeover5-rumqttc/t",
        QoS5::AtLeastOnce,
        false,
        "still here",
    )
    .await;
    let p = new.recv_publish().await;
    assert_eq!(&p.payload[..], b"still here");
}

/// v5 takeover with clean start 0 resumes the session of the old connection:
/// its subscription keeps delivering to the new connection.
#[tokio::test]
async fn v5_takeover_resumes_session() {
    let b = Broker::start("v5_takeover_resumes_session");
    let (pub_id, sub_id) = ids_on_different_shards("takeover-resume");
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.session_expiry_interval = Some(60);
    let (mut old, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    old.subscribe("resume/t", QoS::AtLeastOnce).await;

    conn.clean_start = false;
    let (mut new, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(
        ack.session_present,
        "takeover with clean start 0 must resume the session"
    );
    let rc = old.expect_disconnect(WAIT).await;
    assert_vmqtt_eq(
        &b,
        rc,
        Some(ReasonCode::SESSION_TAKEN_OVER),
        "old connection's DISCONNECT",
        "Mosquitto 2.0.11 closes the old connection without a DISCONNECT",
    );

    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("resume/t", "to the new connection", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        text(&new.recv_publish_acked().await),
        "to the new connection"
    );
}

/// SIGTERM with clients connected: the broker exits by itself, with status 0,
/// within 5 s (graceful shutdown).
#[tokio::test]
async fn sigterm_exits_cleanly() {
    let mut b = Broker::start("sigterm_exits_cleanly");
    let _c = Raw::v311(b.port(), "sigterm-a").await;
    let _d = Raw::v5(b.port(), "sigterm-b").await;
    let start = Instant::now();
    let status = b
        .terminate(Duration::from_secs(5))
        .expect("the broker did not exit within 5 s of SIGTERM");
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?} (after {:?})",
        start.elapsed()
    );
}
