//! Shared subscriptions `$share/{group}/{filter}` with members on different
//! shards.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::common::shard::id_on_shard;
use crate::common::*;

/// Reads from two shared-subscription members until `total` messages have
/// arrived between them; returns what each got.
async fn collect_two(a: &mut Raw, b: &mut Raw, total: usize) -> (Vec<String>, Vec<String>) {
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT * 2;
    while ga.len() + gb.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "only {} of {total} shared messages arrived ({} + {})",
                ga.len() + gb.len(),
                ga.len(),
                gb.len()
            );
        }
        tokio::select! {
            p = a.recv_publish_within(left) => { a.ack(&p).await; ga.push(text(&p)); }
            p = b.recv_publish_within(left) => { b.ack(&p).await; gb.push(text(&p)); }
        }
    }
    a.expect_no_publish(QUIET, "more shared messages than published")
        .await;
    b.expect_no_publish(QUIET, "more shared messages than published")
        .await;
    (ga, gb)
}

/// 100 QoS 1 messages to `$share/g/...` with one member on each shard: each
/// member gets some, together exactly the 100, none twice. A second group
/// and a plain subscriber each get all 100. After one member unsubscribes,
/// the other gets everything.
#[tokio::test]
async fn shared_subscription_splits_across_shards() {
    let test = "shared_subscription_splits_across_shards";
    let b = Broker::start(test);
    let (a_id, b_id) = ids_on_different_shards(test);
    let mut m1 = Raw::v5(b.port(), &a_id).await;
    let mut m2 = Raw::v311(b.port(), &b_id).await;
    m1.subscribe("$share/g/sh/t", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/sh/t", QoS::AtLeastOnce).await;
    let mut other_group = Raw::v5(b.port(), &format!("{b_id}-g2")).await;
    other_group
        .subscribe("$share/g2/sh/#", QoS::AtLeastOnce)
        .await;
    let mut plain = Raw::v5(b.port(), &format!("{a_id}-plain")).await;
    plain.subscribe("sh/t", QoS::AtLeastOnce).await;

    let pub_id = id_on_shard(&format!("{test}-pub"), home_shard(&a_id, SHARDS));
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    const N: usize = 100;
    for i in 0..N {
        publ.publish_ok("sh/t", &format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let (g1, g2) = collect_two(&mut m1, &mut m2, N).await;
    assert!(
        !g1.is_empty() && !g2.is_empty(),
        "both members must get some: {} / {}",
        g1.len(),
        g2.len()
    );
    let all: BTreeSet<&String> = g1.iter().chain(&g2).collect();
    assert_eq!(all.len(), N, "no message twice, none missing");
    eprintln!("[{test}] split: {} / {}", g1.len(), g2.len());

    for c in [&mut other_group, &mut plain] {
        for i in 0..N {
            let p = c.recv_publish_acked().await;
            assert_eq!(
                text(&p),
                format!("m{i}"),
                "[{}] every message, in order",
                c.name
            );
        }
        c.expect_no_publish(QUIET, "once each").await;
    }

    // One member leaves: the other gets everything.
    m1.unsubscribe("$share/g/sh/t").await;
    for i in 0..10 {
        publ.publish_ok("sh/t", &format!("after{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..10 {
        assert_eq!(text(&m2.recv_publish_acked().await), format!("after{i}"));
    }
    m1.expect_no_publish(QUIET, "unsubscribed member").await;
}

/// A shared subscription's delivered QoS is min(publish, subscription).
#[tokio::test]
async fn shared_subscription_qos_downgrade() {
    let test = "shared_subscription_qos_downgrade";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut m = Raw::v5(b.port(), &sub_id).await;
    m.subscribe("$share/q/shq/t", QoS::AtMostOnce).await;
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    publ.publish_ok("shq/t", "q2 to q0", QoS::ExactlyOnce, false)
        .await;
    let p = m.recv_publish().await;
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(text(&p), "q2 to q0");
}
