//! Will messages: sent on abnormal disconnect, not after a normal DISCONNECT,
//! v5 DISCONNECT 0x04, will delay, will cancelled by a reconnect, session
//! ending before the delay, will retain, will properties.

use std::time::{Duration, Instant};

use vmqtt::ByteStr;

use crate::common::*;

/// How long a test watches for a will that must not come.
const NO_WILL: Duration = Duration::from_millis(600);

fn will_connect(version: ProtocolVersion, id: &str, t: &str, qos: QoS, retain: bool) -> Connect {
    let mut c = connect_packet(version, id);
    c.will = Some(will(t, &format!("{id} is gone"), qos, retain));
    c
}

async fn will_on_abnormal_disconnect(test: &str, placement: Placement) {
    let b = Broker::start(test);
    for version in [V311, V5P] {
        let (will_id, sub_id) = placement.ids(&format!("{test}-{version:?}"));
        let t = format!("will/{version:?}");
        let mut sub = Raw::v5(b.port(), &sub_id).await;
        sub.subscribe(&t, QoS::AtLeastOnce).await;
        let mut conn = will_connect(version, &will_id, &t, QoS::AtLeastOnce, false);
        if version.is_v5() {
            let w = conn.will.as_mut().unwrap();
            w.properties.content_type = Some(ByteStr::from("text/plain"));
            w.properties.payload_format_indicator = Some(true);
            w.properties.user_properties = vec![(ByteStr::from("k"), ByteStr::from("v"))];
            w.properties.response_topic = Some(topic("will/response"));
        }
        let (w, _) = Raw::connect_ok(b.port(), conn).await;
        w.drop_abruptly();
        let p = sub.recv_publish_acked().await;
        assert_eq!(p.topic.as_str(), t);
        assert_eq!(text(&p), format!("{will_id} is gone"));
        assert_eq!(p.qos, QoS::AtLeastOnce, "will QoS");
        assert!(!p.retain, "will without retain");
        if version.is_v5() {
            let pp = &p.properties;
            assert_eq!(
                pp.content_type.as_ref().map(|s| s.as_str()),
                Some("text/plain")
            );
            assert_eq!(pp.payload_format_indicator, Some(true));
            assert_eq!(
                pp.user_properties,
                vec![(ByteStr::from("k"), ByteStr::from("v"))],
                "will user properties"
            );
            assert_eq!(
                pp.response_topic.as_ref().map(|t| t.as_str()),
                Some("will/response")
            );
        }
        sub.expect_no_publish(QUIET, "a single will").await;
    }
}

/// The will is published when the connection is dropped without DISCONNECT
/// (3.1.1 and v5; v5 will properties are passed on).
#[tokio::test]
async fn will_sent_on_abnormal_disconnect_cross_shard() {
    will_on_abnormal_disconnect(
        "will_sent_on_abnormal_disconnect_cross_shard",
        Placement::CrossShard,
    )
    .await;
}

#[tokio::test]
async fn will_sent_on_abnormal_disconnect_same_shard() {
    will_on_abnormal_disconnect(
        "will_sent_on_abnormal_disconnect_same_shard",
        Placement::SameShard,
    )
    .await;
}

/// A normal DISCONNECT discards the will (3.1.1 and v5).
#[tokio::test]
async fn will_not_sent_after_normal_disconnect() {
    let test = "will_not_sent_after_normal_disconnect";
    let b = Broker::start(test);
    for version in [V311, V5P] {
        let (will_id, sub_id) = ids_on_different_shards(&format!("{test}-{version:?}"));
        let t = format!("nowill/{version:?}");
        let mut sub = Raw::v5(b.port(), &sub_id).await;
        sub.subscribe(&t, QoS::AtLeastOnce).await;
        let (w, _) = Raw::connect_ok(
            b.port(),
            will_connect(version, &will_id, &t, QoS::AtLeastOnce, false),
        )
        .await;
        w.disconnect().await;
        sub.expect_no_publish(NO_WILL, "will after a normal DISCONNECT")
            .await;
        // The subscription itself works.
        let mut publ = Raw::v311(b.port(), &format!("{will_id}-control")).await;
        publ.publish_ok(&t, "control", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&sub.recv_publish_acked().await), "control");
    }
}

/// v5: DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes
/// the will.
#[tokio::test]
async fn v5_disconnect_with_will_message() {
    let test = "v5_disconnect_with_will_message";
    let b = Broker::start(test);
    let (will_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("will04/t", QoS::AtLeastOnce).await;
    let (w, _) = Raw::connect_ok(
        b.port(),
        will_connect(V5P, &will_id, "will04/t", QoS::AtLeastOnce, false),
    )
    .await;
    w.disconnect_with(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
        .await;
    assert_eq!(
        text(&sub.recv_publish_acked().await),
        format!("{will_id} is gone")
    );
}

/// v5 will delay 1 s: the will comes no earlier than ~1 s after the drop.
#[tokio::test]
async fn v5_will_delay_interval() {
    let test = "v5_will_delay_interval";
    let b = Broker::start(test);
    let (will_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("willdelay/t", QoS::AtLeastOnce).await;
    let mut conn = will_connect(V5P, &will_id, "willdelay/t", QoS::AtLeastOnce, false);
    conn.properties.session_expiry_interval = Some(10);
    conn.will.as_mut().unwrap().properties.will_delay_interval = Some(1);
    let (w, _) = Raw::connect_ok(b.port(), conn).await;
    let dropped = Instant::now();
    w.drop_abruptly();
    let p = sub.recv_publish_within(Duration::from_secs(6)).await;
    let after = dropped.elapsed();
    assert_eq!(text(&p), format!("{will_id} is gone"));
    assert!(
        after >= Duration::from_millis(900),
        "will with delay 1 s published after only {after:?}"
    );
    assert!(
        after <= Duration::from_millis(3500),
        "will delay 1 s took {after:?}"
    );
}

/// v5: a reconnect (clean start 0) within the will delay cancels the will.
#[tokio::test]
async fn v5_will_cancelled_by_reconnect() {
    let test = "v5_will_cancelled_by_reconnect";
    let b = Broker::start(test);
    let (will_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("willcancel/t", QoS::AtLeastOnce).await;
    let mut conn = will_connect(V5P, &will_id, "willcancel/t", QoS::AtLeastOnce, false);
    conn.properties.session_expiry_interval = Some(60);
    conn.will.as_mut().unwrap().properties.will_delay_interval = Some(1);
    let (w, _) = Raw::connect_ok(b.port(), conn).await;
    w.drop_abruptly();
    sleep_ms(200).await;
    let mut again = connect_packet(V5P, &will_id);
    again.clean_start = false;
    again.properties.session_expiry_interval = Some(60);
    let (mut w2, ack) = Raw::connect_ok(b.port(), again).await;
    assert!(ack.session_present);
    // The will would have been due 1 s after the drop.
    sub.expect_no_publish(
        Duration::from_millis(1800),
        "will after a reconnect within the delay",
    )
    .await;
    w2.ping().await;
}

/// v5: when the session ends (expiry 1 s) before the will delay (30 s), the
/// will is published at the end of the session.
#[tokio::test]
async fn v5_will_sent_when_session_ends_before_delay() {
    let test = "v5_will_sent_when_session_ends_before_delay";
    let b = Broker::start(test);
    let (will_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("willexp/t", QoS::AtLeastOnce).await;
    let mut conn = will_connect(V5P, &will_id, "willexp/t", QoS::AtLeastOnce, false);
    conn.properties.session_expiry_interval = Some(1);
    conn.will.as_mut().unwrap().properties.will_delay_interval = Some(30);
    let (w, _) = Raw::connect_ok(b.port(), conn).await;
    let dropped = Instant::now();
    w.drop_abruptly();
    let p = sub.recv_publish_within(Duration::from_secs(6)).await;
    let after = dropped.elapsed();
    assert_eq!(text(&p), format!("{will_id} is gone"));
    assert!(
        after >= Duration::from_millis(900),
        "published after only {after:?}"
    );
}

/// Will with retain: live subscribers get it, and a later subscriber gets it
/// as a retained message (RETAIN=1).
#[tokio::test]
async fn will_retain() {
    let test = "will_retain";
    let b = Broker::start(test);
    for version in [V311, V5P] {
        let (will_id, sub_id) = ids_on_different_shards(&format!("{test}-{version:?}"));
        let t = format!("willretain/{version:?}");
        let mut live = Raw::v311(b.port(), &sub_id).await;
        live.subscribe(&t, QoS::AtLeastOnce).await;
        let (w, _) = Raw::connect_ok(
            b.port(),
            will_connect(version, &will_id, &t, QoS::AtLeastOnce, true),
        )
        .await;
        w.drop_abruptly();
        let p = live.recv_publish_acked().await;
        assert_eq!(text(&p), format!("{will_id} is gone"));

        let mut later = Raw::v5(b.port(), &format!("{sub_id}-later")).await;
        later.subscribe(&t, QoS::AtLeastOnce).await;
        let p = later.recv_publish_acked().await;
        assert_eq!(text(&p), format!("{will_id} is gone"));
        assert!(
            p.retain,
            "a retained will is delivered to new subscribers with RETAIN=1"
        );
    }
}
