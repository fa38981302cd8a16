//! QoS 0/1/2 in both directions with rumqttc (3.1.1 and 5, and mixed),
//! delivered QoS = min(publish QoS, subscription QoS), exactly-once for QoS 2,
//! per-topic ordering, and the QoS 2 flows checked packet by packet.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

/// Messages per (publish QoS, subscription QoS) pair.
const PER_PAIR: usize = 10;

/// The subscriber subscribes `{t}/sub{sq}` with maximum QoS `sq` for each sq;
/// the publisher sends `PER_PAIR` messages at each QoS to each topic. Every
/// message must arrive exactly once, at QoS min(pq, sq), in order per
/// (topic, publish QoS).
async fn qos_matrix(publ: &mut impl MqttClient, sub: &mut impl MqttClient, t: &str) {
    for sq in 0..=2u8 {
        sub.sub(&format!("{t}/sub{sq}"), sq).await;
    }
    let mut expected = 0;
    let mut acks = 0;
    for n in 0..PER_PAIR {
        for pq in 0..=2u8 {
            for sq in 0..=2u8 {
                publ.publ(
                    &format!("{t}/sub{sq}"),
                    pq,
                    false,
                    format!("p{pq}s{sq}n{n}").into_bytes(),
                )
                .await;
                expected += 1;
                if pq > 0 {
                    acks += 1;
                }
            }
        }
    }
    publ.acks(acks).await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut last_n: HashMap<(String, u8), usize> = HashMap::new();
    let mut got = 0;
    while got < expected {
        let m = sub.next_msg(WAIT).await.unwrap_or_else(|| {
            panic!(
                "{}: only {got} of {expected} messages arrived; got so far: {counts:?}",
                sub.label()
            )
        });
        got += 1;
        let s = m.text();
        // "p{pq}s{sq}n{n}"
        let pq: u8 = s[1..2].parse().unwrap();
        let sq: u8 = s[3..4].parse().unwrap();
        let n: usize = s[5..].parse().unwrap();
        assert_eq!(m.topic, format!("{t}/sub{sq}"), "topic of {s}");
        assert_eq!(
            m.qos,
            pq.min(sq),
            "{s}: delivered QoS must be min(publish, subscription)"
        );
        assert!(!m.retain, "{s}: live delivery must have RETAIN 0");
        if let Some(prev) = last_n.insert((m.topic.clone(), pq), n) {
            assert!(
                n > prev,
                "{s} arrived after n={prev}: per-topic order broken"
            );
        }
        *counts.entry(s).or_default() += 1;
    }
    // Anything more is a duplicate.
    if let Some(m) = sub.next_msg(QUIET).await {
        panic!("{}: duplicate or unexpected delivery {m:?}", sub.label());
    }
    assert_eq!(counts.len(), expected, "distinct messages");
}

async fn matrix_v311(test: &str, placement: Placement) {
    let b = Broker::start(test);
    let (pub_id, sub_id) = placement.ids(test);
    let mut sub = V4::new(b.port(), &sub_id).await;
    let mut publ = V4::new(b.port(), &pub_id).await;
    qos_matrix(&mut publ, &mut sub, test).await;
}

async fn matrix_v5(test: &str, placement: Placement) {
    let b = Broker::start(test);
    let (pub_id, sub_id) = placement.ids(test);
    let mut sub = V5::new(b.port(), &sub_id).await;
    let mut publ = V5::new(b.port(), &pub_id).await;
    qos_matrix(&mut publ, &mut sub, test).await;
}

#[tokio::test]
async fn qos_matrix_v311_cross_shard() {
    matrix_v311("qos_matrix_v311_cross_shard", Placement::CrossShard).await;
}

#[tokio::test]
async fn qos_matrix_v311_same_shard() {
    matrix_v311("qos_matrix_v311_same_shard", Placement::SameShard).await;
}

#[tokio::test]
async fn qos_matrix_v5_cross_shard() {
    matrix_v5("qos_matrix_v5_cross_shard", Placement::CrossShard).await;
}

#[tokio::test]
async fn qos_matrix_v5_same_shard() {
    matrix_v5("qos_matrix_v5_same_shard", Placement::SameShard).await;
}

/// A 3.1.1 publisher and a v5 subscriber, and the reverse, across shards.
#[tokio::test]
async fn qos_matrix_mixed_versions_cross_shard() {
    let test = "qos_matrix_mixed_versions_cross_shard";
    let b = Broker::start(test);
    let (a, c) = ids_on_different_shards(test);
    let mut sub5 = V5::new(b.port(), &c).await;
    let mut pub4 = V4::new(b.port(), &a).await;
    qos_matrix(&mut pub4, &mut sub5, &format!("{test}/4to5")).await;

    let (a, c) = ids_on_different_shards(&format!("{test}-rev"));
    let mut sub4 = V4::new(b.port(), &c).await;
    let mut pub5 = V5::new(b.port(), &a).await;
    qos_matrix(&mut pub5, &mut sub4, &format!("{test}/5to4")).await;
}

/// 1000 QoS 1 messages across shards arrive complete and in order.
#[tokio::test]
async fn qos1_bulk_in_order_cross_shard() {
    let test = "qos1_bulk_in_order_cross_shard";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = V4::new(b.port(), &sub_id).await;
    sub.sub("bulk/t", 1).await;
    let mut publ = V4::new(b.port(), &pub_id).await;
    const N: usize = 1000;
    let sender = async {
        for i in 0..N {
            publ.publ("bulk/t", 1, false, i.to_string().into_bytes())
                .await;
        }
        publ.acks(N).await;
    };
    let receiver = async {
        for i in 0..N {
            let m = sub
                .next_msg(WAIT)
                .await
                .unwrap_or_else(|| panic!("message {i} of {N} did not arrive"));
            assert_eq!(m.text(), i.to_string(), "order");
            assert_eq!(m.qos, 1);
        }
    };
    tokio::join!(sender, receiver);
}

/// The broker as QoS 2 receiver: the publisher sends the same QoS 2 PUBLISH
/// twice (the second with DUP) before PUBREL. The subscriber gets it once.
#[tokio::test]
async fn qos2_inbound_duplicate_publish_delivered_once() {
    let test = "qos2_inbound_duplicate_publish_delivered_once";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let t = format!("q2dup/{version:?}");
        let mut sub = Raw::v5(b.port(), &format!("{sub_id}-{version:?}")).await;
        sub.subscribe(&t, QoS::ExactlyOnce).await;
        let (mut publ, _) = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("{pub_id}-{version:?}")),
        )
        .await;
        let id = crate::common::raw::pid(7);
        let mut p = publish(&t, "exactly once", QoS::ExactlyOnce, false);
        p.packet_id = Some(id);
        publ.send(&Packet::Publish(p.clone())).await;
        let rec = publ
            .wait_for("PUBREC", WAIT, |pk| match pk {
                Packet::PubRec(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(rec.packet_id, id);
        assert!(rec.reason.0 < 0x80, "PUBREC {rec:?}");
        p.dup = true;
        publ.send(&Packet::Publish(p)).await;
        let rec2 = publ
            .wait_for("second PUBREC", WAIT, |pk| match pk {
                Packet::PubRec(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(rec2.packet_id, id);
        publ.send(&Packet::PubRel(PubResponse::new(id))).await;
        let comp = publ
            .wait_for("PUBCOMP", WAIT, |pk| match pk {
                Packet::PubComp(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(comp.packet_id, id);
        assert_eq!(comp.reason, ReasonCode::SUCCESS);

        let got = sub.recv_publish_acked().await;
        assert_eq!(text(&got), "exactly once");
        assert_eq!(got.qos, QoS::ExactlyOnce);
        sub.expect_no_publish(Duration::from_millis(500), "QoS 2 delivered twice")
            .await;

        // The packet id is free again: a new message with id 7 is a new message.
        let mut p = publish(&t, "second message", QoS::ExactlyOnce, false);
        p.packet_id = Some(id);
        publ.publish(p).await;
        assert_eq!(text(&sub.recv_publish_acked().await), "second message");
    }
}

/// The broker as QoS 2 sender: PUBLISH → PUBREC → PUBREL → PUBCOMP, with the
/// same packet id throughout, and nothing resent after PUBCOMP.
#[tokio::test]
async fn qos2_outbound_flow() {
    let test = "qos2_outbound_flow";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let t = format!("q2out/{version:?}");
        let (mut sub, _) = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("{sub_id}-{version:?}")),
        )
        .await;
        sub.subscribe(&t, QoS::ExactlyOnce).await;
        let mut publ = Raw::v5(b.port(), &format!("{pub_id}-{version:?}")).await;
        publ.publish_ok(&t, "q2", QoS::ExactlyOnce, false).await;

        let p = sub.recv_publish().await;
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert!(!p.dup);
        let id = p.packet_id.expect("QoS 2 has a packet id");
        sub.send(&Packet::PubRec(PubResponse::new(id))).await;
        let rel = sub
            .wait_for("PUBREL", WAIT, |pk| match pk {
                Packet::PubRel(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(rel.packet_id, id, "PUBREL packet id");
        sub.send(&Packet::PubComp(PubResponse::new(id))).await;
        sub.expect_no_publish(QUIET, "nothing after PUBCOMP").await;
        sub.ping().await;
    }
}

/// A subscription is in force as soon as its SUBACK is out: a message that
/// a client on another shard publishes right after the SUBACK is delivered
/// (100 fresh topics, subscribe then publish at once).
#[tokio::test]
async fn subscription_effective_at_suback_across_shards() {
    let test = "subscription_effective_at_suback_across_shards";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    for i in 0..100 {
        let t = format!("suback/{i}");
        sub.subscribe(&t, QoS::AtLeastOnce).await;
        publ.publish_ok(&t, &format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
        let p = tokio::time::timeout(WAIT, sub.recv_publish_within(WAIT * 2))
            .await
            .unwrap_or_else(|_| {
                panic!("round {i}: a message published (from another shard) right after the SUBACK was not delivered")
            });
        sub.ack(&p).await;
        assert_eq!(text(&p), format!("m{i}"), "round {i}");
    }
}
