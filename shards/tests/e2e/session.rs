//! Persistent sessions: resend with DUP after reconnect, PUBREL resend,
//! messages queued while offline, clean session / clean start, v5 session
//! expiry.

use crate::common::raw::persistent;
use crate::common::*;

/// A persistent subscriber gets a QoS 1 (and a QoS 2) message, does not
/// acknowledge it and drops the connection; on reconnect it gets the same
/// message again with DUP=1 and the same packet id, then (DUP=0) the message
/// that was published while it was offline (after its will announced the
/// drop), then nothing more.
async fn resend_with_dup(test: &str, version: ProtocolVersion, placement: Placement) {
    let b = Broker::start(test);
    let (pub_id, sub_id) = placement.ids(test);
    // The subscriber's will tells the publisher when the broker has seen the
    // connection drop, so that "m3" is really published while it is offline.
    let mut first = persistent(version, &sub_id, true, 60);
    first.will = Some(will("dup/gone", "dropped", QoS::AtMostOnce, false));
    let (mut sub, ack) = Raw::connect_ok(b.port(), first).await;
    assert!(!ack.session_present);
    sub.subscribe("dup/q1", QoS::AtLeastOnce).await;
    sub.subscribe("dup/q2", QoS::ExactlyOnce).await;

    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.subscribe("dup/gone", QoS::AtMostOnce).await;
    publ.publish_ok("dup/q1", "m1", QoS::AtLeastOnce, false)
        .await;
    publ.publish_ok("dup/q2", "m2", QoS::ExactlyOnce, false)
        .await;
    let m1 = sub.recv_publish().await;
    let m2 = sub.recv_publish().await;
    let (m1, m2) = if text(&m1) == "m1" {
        (m1, m2)
    } else {
        (m2, m1)
    };
    assert_eq!((text(&m1).as_str(), text(&m2).as_str()), ("m1", "m2"));
    assert!(!m1.dup && !m2.dup, "first delivery must have DUP=0");
    sub.drop_abruptly();
    let gone = publ.recv_publish().await;
    assert_eq!(text(&gone), "dropped");

    // Published while the subscriber is offline.
    publ.publish_ok("dup/q1", "m3", QoS::AtLeastOnce, false)
        .await;

    let (mut sub, ack) = Raw::connect_ok(b.port(), persistent(version, &sub_id, false, 60)).await;
    assert!(
        ack.session_present,
        "the persistent session must be present"
    );
    let mut resent = vec![sub.recv_publish().await, sub.recv_publish().await];
    resent.sort_by_key(text);
    for (orig, again) in [&m1, &m2].into_iter().zip(&resent) {
        assert_eq!(text(again), text(orig), "resent message");
        assert!(again.dup, "a resent PUBLISH must have DUP=1: {again:?}");
        assert_eq!(again.packet_id, orig.packet_id, "same packet id on resend");
        assert_eq!(again.qos, orig.qos, "same QoS on resend");
        sub.ack(again).await;
    }
    let m3 = sub.recv_publish_acked().await;
    assert_eq!(text(&m3), "m3", "the message published while offline");
    assert!(!m3.dup, "never sent before: DUP=0");
    sub.expect_no_publish(QUIET, "everything was acknowledged")
        .await;
}

#[tokio::test]
async fn v311_resend_with_dup_after_reconnect_cross_shard() {
    resend_with_dup(
        "v311_resend_with_dup_after_reconnect_cross_shard",
        V311,
        Placement::CrossShard,
    )
    .await;
}

#[tokio::test]
async fn v311_resend_with_dup_after_reconnect_same_shard() {
    resend_with_dup(
        "v311_resend_with_dup_after_reconnect_same_shard",
        V311,
        Placement::SameShard,
    )
    .await;
}

#[tokio::test]
async fn v5_resend_with_dup_after_reconnect_cross_shard() {
    resend_with_dup(
        "v5_resend_with_dup_after_reconnect_cross_shard",
        V5P,
        Placement::CrossShard,
    )
    .await;
}

/// QoS 2 outbound: the subscriber sends PUBREC, gets PUBREL, and drops the
/// connection before PUBCOMP. On reconnect the server resends the PUBREL
/// (same packet id), not the PUBLISH.
#[tokio::test]
async fn qos2_pubrel_resent_after_reconnect() {
    let test = "qos2_pubrel_resent_after_reconnect";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let sub_id = format!("{sub_id}-{version:?}");
        let t = format!("pubrel/{version:?}");
        let (mut sub, _) = Raw::connect_ok(b.port(), persistent(version, &sub_id, true, 60)).await;
        sub.subscribe(&t, QoS::ExactlyOnce).await;
        let mut publ = Raw::v5(b.port(), &format!("{pub_id}-{version:?}")).await;
        publ.publish_ok(&t, "q2", QoS::ExactlyOnce, false).await;
        let p = sub.recv_publish().await;
        let id = p.packet_id.expect("packet id");
        sub.send(&Packet::PubRec(PubResponse::new(id))).await;
        sub.wait_for("PUBREL", WAIT, |pk| match pk {
            Packet::PubRel(r) if r.packet_id == id => Some(()),
            _ => None,
        })
        .await;
        sub.drop_abruptly();

        let (mut sub, ack) =
            Raw::connect_ok(b.port(), persistent(version, &sub_id, false, 60)).await;
        assert!(ack.session_present);
        let again = sub
            .wait_for("resent PUBREL", WAIT, |pk| match pk {
                Packet::PubRel(r) => Some(r.clone()),
                Packet::Publish(p) => panic!("{version:?}: PUBLISH resent after PUBREC: {p:?}"),
                _ => None,
            })
            .await;
        assert_eq!(again.packet_id, id, "resent PUBREL packet id");
        sub.send(&Packet::PubComp(PubResponse::new(id))).await;
        sub.expect_no_publish(QUIET, "the message was already received")
            .await;
        sub.ping().await;
    }
}

/// Messages published (QoS 1 and 2) while a persistent subscriber is offline
/// are all delivered on reconnect, once each, in order per topic.
#[tokio::test]
async fn offline_messages_delivered_on_reconnect() {
    let test = "offline_messages_delivered_on_reconnect";
    let b = Broker::start(test);
    for version in [V311, V5P] {
        let (pub_id, sub_id) = ids_on_different_shards(&format!("{test}-{version:?}"));
        let t1 = format!("offline/{version:?}/q1");
        let t2 = format!("offline/{version:?}/q2");
        let (mut sub, _) = Raw::connect_ok(b.port(), persistent(version, &sub_id, true, 60)).await;
        sub.subscribe(&t1, QoS::AtLeastOnce).await;
        sub.subscribe(&t2, QoS::ExactlyOnce).await;
        sub.disconnect().await;

        let mut publ = Raw::v311(b.port(), &pub_id).await;
        for i in 0..10 {
            publ.publish_ok(&t1, &format!("a{i}"), QoS::AtLeastOnce, false)
                .await;
        }
        for i in 0..5 {
            publ.publish_ok(&t2, &format!("b{i}"), QoS::ExactlyOnce, false)
                .await;
        }

        let (mut sub, ack) =
            Raw::connect_ok(b.port(), persistent(version, &sub_id, false, 60)).await;
        assert!(ack.session_present, "{version:?}: session present");
        let (mut a, mut bb) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let p = sub.recv_publish_acked().await;
            let s = text(&p);
            if p.topic.as_str() == t1 {
                assert_eq!(p.qos, QoS::AtLeastOnce);
                a.push(s);
            } else {
                assert_eq!(p.qos, QoS::ExactlyOnce);
                bb.push(s);
            }
        }
        assert_eq!(a, (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
        assert_eq!(bb, (0..5).map(|i| format!("b{i}")).collect::<Vec<_>>());
        sub.expect_no_publish(QUIET, "no duplicates").await;
        sub.disconnect().await;
    }
}

/// Subscribes, disconnects, reconnects with `reconnect`; asserts session
/// present 0 and that the old subscription no longer delivers (a control
/// subscription made after the reconnect bounds the wait).
async fn assert_subscription_gone(
    b: &Broker,
    first: Connect,
    reconnect: Connect,
    pub_id: &str,
    t: &str,
) {
    let (mut c, _) = Raw::connect_ok(b.port(), first).await;
    c.subscribe(t, QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut c, ack) = Raw::connect_ok(b.port(), reconnect).await;
    assert!(!ack.session_present, "session must not be present: {ack:?}");
    let control = format!("{t}/control");
    c.subscribe(&control, QoS::AtLeastOnce).await;
    let mut publ = Raw::v311(b.port(), pub_id).await;
    publ.publish_ok(t, "to the old subscription", QoS::AtLeastOnce, false)
        .await;
    publ.publish_ok(&control, "control", QoS::AtLeastOnce, false)
        .await;
    let p = c.recv_publish_acked().await;
    assert_eq!(
        text(&p),
        "control",
        "the subscription of the old session delivered {:?} on {:?}",
        text(&p),
        p.topic.as_str()
    );
    c.expect_no_publish(QUIET, "old subscription").await;
    c.disconnect().await;
}

/// Clean session (3.1.1) / clean start with no expiry (v5): subscriptions do
/// not survive a reconnect.
#[tokio::test]
async fn clean_session_subscriptions_do_not_survive() {
    let test = "clean_session_subscriptions_do_not_survive";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let id = format!("{sub_id}-{version:?}");
        let t = format!("clean/{version:?}");
        assert_subscription_gone(
            &b,
            connect_packet(version, &id),
            connect_packet(version, &id),
            &pub_id,
            &t,
        )
        .await;
    }
}

/// A persistent session is discarded by a later clean-session (3.1.1) or
/// clean-start (v5) connection.
#[tokio::test]
async fn clean_start_discards_persistent_session() {
    let test = "clean_start_discards_persistent_session";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let id = format!("{sub_id}-{version:?}");
        let t = format!("discard/{version:?}");
        let mut reconnect = connect_packet(version, &id);
        reconnect.clean_start = true;
        assert_subscription_gone(
            &b,
            persistent(version, &id, true, 60),
            reconnect,
            &pub_id,
            &format!("{t}/a"),
        )
        .await;
        // And the clean session, once ended, left nothing behind either.
        let mut again = persistent(version, &id, false, 60);
        if version.is_v5() {
            again.properties.session_expiry_interval = None;
        }
        let (c, ack) = Raw::connect_ok(b.port(), again).await;
        assert!(!ack.session_present, "{version:?}: nothing to resume");
        c.disconnect().await;
    }
}

/// v5: a session with expiry 1 s is gone 2 s after the disconnect (session
/// present 0, queued message dropped).
#[tokio::test]
async fn v5_session_expiry_1s_is_gone_after_2s() {
    let test = "v5_session_expiry_1s_is_gone_after_2s";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.session_expiry_interval = Some(1);
    let (mut sub, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    sub.subscribe("expiry1/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("expiry1/t", "queued", QoS::AtLeastOnce, false)
        .await;

    sleep_ms(2000).await;
    conn.clean_start = false;
    let (mut sub, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(
        !ack.session_present,
        "the session expired 1 s after the disconnect"
    );
    sub.expect_no_publish(QUIET, "expired session's queue")
        .await;
}

/// v5: a session with expiry 60 s is kept: session present 1 after 2 s and
/// the message queued meanwhile is delivered.
#[tokio::test]
async fn v5_session_expiry_60s_is_kept() {
    let test = "v5_session_expiry_60s_is_kept";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut conn = connect_packet(V5P, &sub_id);
    conn.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    sub.subscribe("expiry60/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("expiry60/t", "queued", QoS::AtLeastOnce, false)
        .await;

    sleep_ms(2000).await;
    conn.clean_start = false;
    let (mut sub, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(
        ack.session_present,
        "a 60 s session must still be there after 2 s"
    );
    assert_eq!(text(&sub.recv_publish_acked().await), "queued");
}

/// v5: session expiry absent (0) ends the session at disconnect, even with
/// clean start 0.
#[tokio::test]
async fn v5_session_expiry_zero_ends_at_disconnect() {
    let b = Broker::start("v5_session_expiry_zero_ends_at_disconnect");
    let mut conn = connect_packet(V5P, "expiry0");
    conn.clean_start = false;
    let (mut c, ack) = Raw::connect_ok(b.port(), conn.clone()).await;
    assert!(!ack.session_present);
    c.subscribe("expiry0/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (_c, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(
        !ack.session_present,
        "expiry 0: the session ended with the connection"
    );
}

/// v5: DISCONNECT can lower the session expiry to 0, which ends the session.
#[tokio::test]
async fn v5_disconnect_sets_session_expiry_zero() {
    let b = Broker::start("v5_disconnect_sets_session_expiry_zero");
    let mut conn = connect_packet(V5P, "expiry-by-disconnect");
    conn.properties.session_expiry_interval = Some(60);
    let (mut c, _) = Raw::connect_ok(b.port(), conn.clone()).await;
    c.subscribe("expiry-disc/t", QoS::AtLeastOnce).await;
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    d.properties.session_expiry_interval = Some(0);
    c.disconnect_with(d).await;
    conn.clean_start = false;
    let (_c, ack) = Raw::connect_ok(b.port(), conn).await;
    assert!(!ack.session_present, "DISCONNECT set the expiry to 0");
}
