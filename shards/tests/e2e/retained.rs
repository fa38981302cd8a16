//! Retained messages: store, deliver on subscribe (exact and wildcard
//! filters), replace, delete with an empty payload, QoS of retained
//! deliveries, RETAIN flag on live deliveries, v5 retain handling 0/1/2,
//! retain-as-published, message expiry of retained messages.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::shard;
use crate::common::*;

/// Receives PUBLISHes (acknowledged) until none comes within `QUIET`, after
/// waiting for at least `min`.
async fn drain(c: &mut Raw, min: usize) -> Vec<Publish> {
    let mut out = Vec::new();
    for _ in 0..min {
        out.push(c.recv_publish_acked().await);
    }
    c.expect_no_publish(QUIET, "more retained messages than expected")
        .await;
    out
}

fn texts(ps: &[Publish]) -> BTreeSet<String> {
    ps.iter().map(text).collect()
}

async fn retained_on_subscribe(test: &str, placement: Placement) {
    let b = Broker::start(test);
    let (pub_id, sub_id) = placement.ids(test);
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    for (t, m) in [
        ("r/a/b/c", "abc"),
        ("r/a/b/d", "abd"),
        ("r/a/x", "ax"),
        ("r/other", "o"),
    ] {
        publ.publish_ok(t, m, QoS::AtLeastOnce, true).await;
    }
    publ.publish_ok("r/not-retained", "nr", QoS::AtLeastOnce, false)
        .await;
    let shard = home_shard(&sub_id, SHARDS);
    let cases: [(&str, &[&str]); 5] = [
        ("r/a/+/c", &["abc"]),
        ("r/a/#", &["abc", "abd", "ax"]),
        ("r/+/x", &["ax"]),
        ("r/other", &["o"]),
        ("r/#", &["abc", "abd", "ax", "o"]),
    ];
    for (i, (f, want)) in cases.iter().enumerate() {
        let id = shard::id_on_shard(&format!("{sub_id}-{i}"), shard);
        let mut sub = if i % 2 == 0 {
            Raw::v311(b.port(), &id).await
        } else {
            Raw::v5(b.port(), &id).await
        };
        sub.subscribe(f, QoS::AtLeastOnce).await;
        let got = drain(&mut sub, want.len()).await;
        assert_eq!(
            texts(&got),
            want.iter().map(|s| s.to_string()).collect(),
            "retained messages for {f}"
        );
        for p in &got {
            assert!(
                p.retain,
                "{f}: a retained delivery on subscribe has RETAIN=1"
            );
            assert_eq!(p.qos, QoS::AtLeastOnce);
        }
    }
}

#[tokio::test]
async fn retained_delivered_on_subscribe_cross_shard() {
    retained_on_subscribe(
        "retained_delivered_on_subscribe_cross_shard",
        Placement::CrossShard,
    )
    .await;
}

#[tokio::test]
async fn retained_delivered_on_subscribe_same_shard() {
    retained_on_subscribe(
        "retained_delivered_on_subscribe_same_shard",
        Placement::SameShard,
    )
    .await;
}

/// A newer retained message replaces the older; an empty retained payload
/// deletes it (and is itself forwarded to live subscribers).
#[tokio::test]
async fn retained_replaced_and_deleted() {
    let test = "retained_replaced_and_deleted";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("rd/t", "v1", QoS::AtLeastOnce, true).await;
    publ.publish_ok("rd/t", "v2", QoS::AtLeastOnce, true).await;

    let mut sub = Raw::v311(b.port(), &sub_id).await;
    sub.subscribe("rd/t", QoS::AtLeastOnce).await;
    let got = drain(&mut sub, 1).await;
    assert_eq!(
        text(&got[0]),
        "v2",
        "the newer retained message replaces the older"
    );

    // Delete: forwarded to the live subscriber as an empty message.
    publ.publish_ok("rd/t", "", QoS::AtLeastOnce, true).await;
    let p = sub.recv_publish_acked().await;
    assert!(
        p.payload.is_empty(),
        "the empty retained message is forwarded: {p:?}"
    );
    publ.publish_ok("rd/control", "ctl", QoS::AtLeastOnce, true)
        .await;

    let mut late = Raw::v5(b.port(), &format!("{sub_id}-late")).await;
    late.subscribe("rd/#", QoS::AtLeastOnce).await;
    let got = drain(&mut late, 1).await;
    assert_eq!(
        text(&got[0]),
        "ctl",
        "rd/t was deleted; only rd/control is retained"
    );
}

/// The QoS of a retained delivery is min(stored QoS, subscription QoS).
#[tokio::test]
async fn retained_qos_downgraded_to_subscription() {
    let test = "retained_qos_downgraded_to_subscription";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok("rq/q1", "stored at 1", QoS::AtLeastOnce, true)
        .await;
    publ.publish_ok("rq/q2", "stored at 2", QoS::ExactlyOnce, true)
        .await;
    for (sq, f, want) in [
        (QoS::AtMostOnce, "rq/q1", QoS::AtMostOnce),
        (QoS::ExactlyOnce, "rq/q1", QoS::AtLeastOnce),
        (QoS::AtLeastOnce, "rq/q2", QoS::AtLeastOnce),
        (QoS::ExactlyOnce, "rq/q2", QoS::ExactlyOnce),
    ] {
        let mut sub = Raw::v5(b.port(), &format!("{sub_id}-{sq:?}-{}", f.len())).await;
        sub.subscribe(f, sq).await;
        let p = sub.recv_publish_acked().await;
        assert_eq!(p.qos, want, "{f} subscribed at {sq:?}");
        assert!(p.retain);
    }
}

/// Live deliveries of a message published with RETAIN=1 carry RETAIN=0
/// (3.1.1 always; v5 without retain-as-published), RETAIN=1 with
/// retain-as-published (v5).
#[tokio::test]
async fn retain_flag_on_live_delivery_and_retain_as_published() {
    let test = "retain_flag_on_live_delivery_and_retain_as_published";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut s311 = Raw::v311(b.port(), &format!("{sub_id}-311")).await;
    s311.subscribe("rap/t", QoS::AtLeastOnce).await;
    let mut s5 = Raw::v5(b.port(), &format!("{sub_id}-5")).await;
    s5.subscribe("rap/t", QoS::AtLeastOnce).await;
    let mut rap = Raw::v5(b.port(), &format!("{sub_id}-rap")).await;
    let ack = rap
        .subscribe_opts(
            "rap/t",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_as_published: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1]);

    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("rap/t", "retained", QoS::AtLeastOnce, true)
        .await;
    publ.publish_ok("rap/t", "plain", QoS::AtLeastOnce, false)
        .await;
    for (c, rap_on) in [(&mut s311, false), (&mut s5, false), (&mut rap, true)] {
        let p1 = c.recv_publish_acked().await;
        let p2 = c.recv_publish_acked().await;
        assert_eq!(
            (text(&p1).as_str(), text(&p2).as_str()),
            ("retained", "plain")
        );
        assert_eq!(
            p1.retain, rap_on,
            "[{}] RETAIN of the retained message",
            c.name
        );
        assert!(!p2.retain, "[{}] RETAIN of the plain message", c.name);
    }
}

/// v5 retain handling: 0 sends retained messages on every SUBSCRIBE, 1 only
/// when the subscription is new, 2 never.
#[tokio::test]
async fn v5_retain_handling() {
    let test = "v5_retain_handling";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("rh/t", "kept", QoS::AtLeastOnce, true)
        .await;

    for (rh, first, second) in [
        (RetainHandling::SendAtSubscribe, 1, 1),
        (RetainHandling::SendIfNew, 1, 0),
        (RetainHandling::DoNotSend, 0, 0),
    ] {
        let mut c = Raw::v5(b.port(), &format!("{sub_id}-{rh:?}")).await;
        for (round, want) in [(1, first), (2, second)] {
            let opts = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_handling: rh,
                ..Default::default()
            };
            let ack = c.subscribe_opts("rh/t", opts, Default::default()).await;
            assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1]);
            let got = drain(&mut c, want).await;
            assert_eq!(got.len(), want, "{rh:?}, subscribe #{round}");
        }
    }
}

/// v5: a retained message with message expiry 1 s is gone after 2 s; one
/// with expiry 60 s is delivered with the remaining expiry.
#[tokio::test]
async fn v5_retained_message_expiry() {
    let test = "v5_retained_message_expiry";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut short = publish("rx/short", &b"short"[..], QoS::AtLeastOnce, true);
    short.properties.message_expiry_interval = Some(1);
    publ.publish(short).await;
    let mut long = publish("rx/long", &b"long"[..], QoS::AtLeastOnce, true);
    long.properties.message_expiry_interval = Some(60);
    publ.publish(long).await;

    sleep_ms(2100).await;
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("rx/#", QoS::AtLeastOnce).await;
    let got = drain(&mut sub, 1).await;
    assert_eq!(text(&got[0]), "long", "the 1 s retained message expired");
    let left = got[0]
        .properties
        .message_expiry_interval
        .expect("a message with an expiry keeps a Message Expiry Interval");
    assert!(
        (55..=59).contains(&left),
        "remaining expiry after ~2 s of 60 s: {left}"
    );
}

/// A retained message is visible to subscriptions made on another shard as
/// soon as its publisher has the PUBACK (50 fresh topics).
#[tokio::test]
async fn retained_visible_at_puback_across_shards() {
    let test = "retained_visible_at_puback_across_shards";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    for i in 0..50 {
        let t = format!("rvis/{i}");
        publ.publish_ok(&t, &format!("r{i}"), QoS::AtLeastOnce, true)
            .await;
        sub.subscribe(&t, QoS::AtLeastOnce).await;
        let p = tokio::time::timeout(WAIT, sub.recv_publish_within(WAIT * 2))
            .await
            .unwrap_or_else(|_| {
                panic!("round {i}: a retained message acknowledged (PUBACK) on another shard was not delivered on SUBSCRIBE")
            });
        sub.ack(&p).await;
        assert_eq!(text(&p), format!("r{i}"), "round {i}");
        assert!(p.retain);
    }
}

/// 100,000 retained topics and a new subscriber to `ret/#`: every one of
/// them arrives (paced by the socket), none is cut off because an output
/// buffer filled (issue 13: 3,245 of 100,000 arrived, silently).
#[tokio::test]
async fn a_wildcard_subscriber_gets_all_of_100k_retained_messages() {
    const N: usize = 100_000;
    let b = Broker::start("retained_100k");
    let mut publ = Raw::v311(b.port(), "ret-100k-pub").await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..N {
        Packet::Publish(publish(
            &format!("ret/{i}"),
            format!("v{i}"),
            QoS::AtMostOnce,
            true,
        ))
        .encode(V311, &mut buf)
        .expect("encode");
        if buf.len() > 256 * 1024 {
            publ.send_raw(&buf.split()).await;
        }
    }
    publ.send_raw(&buf.split()).await;
    // A QoS 1 retained message is acknowledged once every shard has it,
    // and so every one sent before it on this connection.
    publ.publish_ok("ret/last", "last", QoS::AtLeastOnce, true)
        .await;

    let mut sub = Raw::v5(b.port(), "ret-100k-sub").await;
    sub.subscribe("ret/#", QoS::AtMostOnce).await;
    let mut seen = std::collections::HashSet::with_capacity(N + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < N + 1 && std::time::Instant::now() < deadline {
        match sub.recv(Duration::from_secs(10)).await {
            Ok(Packet::Publish(p)) => {
                assert!(p.retain, "a retained delivery has RETAIN set");
                seen.insert(p.topic.as_str().to_owned());
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("after {} of {} retained messages: {e:?}", seen.len(), N + 1),
        }
    }
    assert_eq!(seen.len(), N + 1, "every retained message arrives");
    sub.expect_no_publish(QUIET, "each retained message once")
        .await;
}
