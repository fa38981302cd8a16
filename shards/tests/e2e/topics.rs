//! Topic filters: `+` and `#`, unsubscribe, `$`-topics and `$SYS`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::shard::id_on_shard;
use crate::common::*;

/// Subscribes one client per filter (each on the shard other than the
/// publisher's), publishes to each topic once, and checks which topics each
/// filter received.
async fn check_matching(b: &Broker, test: &str, topics: &[&str], table: &[(&str, &[&str])]) {
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let shard = home_shard(&sub_id, SHARDS);
    let mut subs = Vec::new();
    for (i, (f, _)) in table.iter().enumerate() {
        let id = id_on_shard(&format!("{sub_id}-{i}"), shard);
        let mut c = if i % 2 == 0 {
            Raw::v311(b.port(), &id).await
        } else {
            Raw::v5(b.port(), &id).await
        };
        c.subscribe(f, QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let mut publ = Raw::v5(b.port(), &pub_id).await;
    let mut accepted = BTreeSet::new();
    for t in topics {
        let ack = publ
            .publish(publish(t, t.as_bytes().to_vec(), QoS::AtLeastOnce, false))
            .await
            .expect("PUBACK");
        if ack.reason.0 < 0x80 {
            accepted.insert(t.to_string());
        } else {
            // A server SHOULD keep clients from exchanging messages on
            // `$`-topics (MQTT 5 §4.7.2): refusing them is fine.
            assert!(
                t.starts_with('$')
                    && [ReasonCode::TOPIC_NAME_INVALID, ReasonCode::NOT_AUTHORIZED]
                        .contains(&ack.reason),
                "publish to {t} refused: {ack:?}"
            );
            eprintln!("NOTE [{test}]: the broker refuses client publications to {t} ({:?}); `$`-topic matching is then covered by the $SYS tests", ack.reason);
        }
    }
    for ((f, want), c) in table.iter().zip(subs.iter_mut()) {
        let want: BTreeSet<String> = want
            .iter()
            .map(|s| s.to_string())
            .filter(|t| accepted.contains(t))
            .collect();
        let mut got = BTreeSet::new();
        for _ in 0..want.len() {
            let p = c.recv_publish_acked().await;
            assert_eq!(text(&p), p.topic.as_str());
            assert!(got.insert(text(&p)), "{f}: {} delivered twice", text(&p));
        }
        c.expect_no_publish(QUIET, &format!("filter {f}")).await;
        assert_eq!(got, want, "topics matched by {f}");
    }
}

/// `+` matches exactly one level (possibly empty), `#` any number of levels
/// including the parent; exact filters match only themselves.
#[tokio::test]
async fn wildcard_matching() {
    let test = "wildcard_matching";
    let b = Broker::start(test);
    let topics = ["w/a/x", "w/b/x", "w/a", "w", "w/a/x/y", "w//x", "v/a/x"];
    let table: &[(&str, &[&str])] = &[
        ("w/+/x", &["w/a/x", "w/b/x", "w//x"]),
        ("w/#", &["w/a/x", "w/b/x", "w/a", "w", "w/a/x/y", "w//x"]),
        ("w/a/x", &["w/a/x"]),
        ("+/a/x", &["w/a/x", "v/a/x"]),
        ("w/+", &["w/a"]),
        ("w/a/#", &["w/a/x", "w/a", "w/a/x/y"]),
        ("+/+/+", &["w/a/x", "w/b/x", "w//x", "v/a/x"]),
        (
            "#",
            &["w/a/x", "w/b/x", "w/a", "w", "w/a/x/y", "w//x", "v/a/x"],
        ),
        ("+", &["w"]),
        ("w/+/x/#", &["w/a/x", "w/b/x", "w/a/x/y", "w//x"]),
    ];
    check_matching(&b, test, &topics, table).await;
}

/// `$`-topics are not matched by filters starting with `#` or `+`, but are
/// matched by filters naming their first level. (A broker may refuse client
/// publications to `$`-topics; then only the non-`$` half is checked here,
/// and `sys_not_matched_by_hash` covers `$SYS`.)
#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let test = "dollar_topics_not_matched_by_leading_wildcards";
    let b = Broker::start(test);
    let topics = ["$e2e/x", "e2e/x"];
    let table: &[(&str, &[&str])] = &[
        ("#", &["e2e/x"]),
        ("+/x", &["e2e/x"]),
        ("+/#", &["e2e/x"]),
        ("$e2e/#", &["$e2e/x"]),
        ("$e2e/+", &["$e2e/x"]),
        ("$e2e/x", &["$e2e/x"]),
    ];
    check_matching(&b, test, &topics, table).await;
}

/// UNSUBSCRIBE stops delivery for exactly the filter named (not for another
/// overlapping one); v5 UNSUBACK says success, or 0x11 for a filter that had
/// no subscription.
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let test = "unsubscribe_stops_delivery";
    let b = Broker::start(test);
    let (pub_id, sub_id) = ids_on_different_shards(test);
    for version in [V311, V5P] {
        let (mut c, _) = Raw::connect_ok(
            b.port(),
            connect_packet(version, &format!("{sub_id}-{version:?}")),
        )
        .await;
        let base = format!("unsub/{version:?}");
        c.subscribe(&format!("{base}/+"), QoS::AtLeastOnce).await;
        c.subscribe(&format!("{base}/keep/#"), QoS::AtLeastOnce)
            .await;
        let mut publ = Raw::v311(b.port(), &format!("{pub_id}-{version:?}")).await;
        publ.publish_ok(&format!("{base}/a"), "before", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&c.recv_publish_acked().await), "before");

        let ack = c.unsubscribe(&format!("{base}/+")).await;
        if version.is_v5() {
            assert_eq!(ack.reasons, vec![ReasonCode::SUCCESS], "UNSUBACK");
        }
        // Not an existing subscription: nothing changes.
        let ack = c.unsubscribe(&format!("{base}/#")).await;
        if version.is_v5() {
            assert_vmqtt_eq(
                &b,
                ack.reasons.clone(),
                vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
                "UNSUBACK for a filter with no subscription",
                "Mosquitto answers Success",
            );
            assert!(
                ack.reasons[0].0 < 0x80,
                "UNSUBACK of an unknown filter is not an error"
            );
        }
        publ.publish_ok(&format!("{base}/a"), "after", QoS::AtLeastOnce, false)
            .await;
        publ.publish_ok(
            &format!("{base}/keep/z"),
            "control",
            QoS::AtLeastOnce,
            false,
        )
        .await;
        let p = c.recv_publish_acked().await;
        assert_eq!(text(&p), "control", "delivered after UNSUBSCRIBE: {p:?}");
        c.expect_no_publish(QUIET, "after UNSUBSCRIBE").await;
    }
}

/// The leading integer of a `$SYS` payload ("12" or "12 seconds").
fn leading_int(p: &Publish) -> u64 {
    let s = text(p);
    s.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: payload {s:?} does not start with a number",
                p.topic.as_str()
            )
        })
}

/// `$SYS/broker/{clients/connected, messages/received, messages/sent,
/// uptime}` are published, retained, every sys interval; the counters move.
#[tokio::test]
async fn sys_topics_published() {
    let test = "sys_topics_published";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            sys_interval_ms: Some(1000),
            ..Default::default()
        },
    );
    let names = [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/uptime",
    ];
    let mut c = Raw::v311(b.port(), "sys-watcher").await;
    for n in names {
        c.subscribe(n, QoS::AtMostOnce).await;
    }
    // The values retained at start-up may predate this client: wait until all
    // four are seen and the connected count includes this client.
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while first.len() < names.len() || first["$SYS/broker/clients/connected"] < 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("$SYS values within 4 s: {first:?} (clients/connected must reach >= 1)");
        }
        let p = c.recv_publish_within(left).await;
        first.insert(p.topic.as_str().to_owned(), leading_int(&p));
    }

    // Traffic moves messages/received and messages/sent; uptime grows.
    let mut publ = Raw::v311(b.port(), "sys-publisher").await;
    let mut echo = Raw::v311(b.port(), "sys-echo").await;
    echo.subscribe("sys/traffic", QoS::AtLeastOnce).await;
    for i in 0..5 {
        publ.publish_ok("sys/traffic", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
        echo.recv_publish_acked().await;
    }
    let mut moved: BTreeSet<String> = BTreeSet::new();
    let grows = [
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/uptime",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    while moved.len() < grows.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("$SYS values that did not grow within 5 s: first {first:?}, grew {moved:?}");
        }
        let p = c.recv_publish_within(left).await;
        let t = p.topic.as_str().to_owned();
        if grows.contains(&t.as_str()) && leading_int(&p) > first[&t] {
            moved.insert(t);
        }
    }
}

/// A `#` or `+/broker/#` subscriber never sees `$SYS` messages while a
/// `$SYS/#` subscriber sees live ones; `$SYS/broker/+` matches
/// `$SYS/broker/uptime`.
#[tokio::test]
async fn sys_not_matched_by_hash() {
    let test = "sys_not_matched_by_hash";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            sys_interval_ms: Some(1000),
            ..Default::default()
        },
    );
    let mut all = Raw::v5(b.port(), "hash-all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = Raw::v311(b.port(), "plus-sys").await;
    plus.subscribe("+/broker/#", QoS::AtMostOnce).await;
    let mut sys = Raw::v311(b.port(), "sys-all").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    // Wait for a live (not retained-on-subscribe) $SYS publication.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = sys.recv_publish_within(left).await;
        assert!(p.topic.as_str().starts_with("$SYS/"), "{:?}", p.topic);
        if !p.retain {
            break;
        }
    }
    tokio::join!(
        all.expect_no_publish(QUIET, "`#` must not match $SYS topics"),
        plus.expect_no_publish(QUIET, "`+/broker/#` must not match $SYS topics"),
    );
    // Wildcards after a `$` first level do match.
    let mut named = Raw::v5(b.port(), "sys-named").await;
    named.subscribe("$SYS/broker/+", QoS::AtMostOnce).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = named.recv_publish_within(left).await;
        let t = p.topic.as_str();
        assert!(
            t.starts_with("$SYS/broker/") && t.matches('/').count() == 2,
            "$SYS/broker/+ delivered {t}"
        );
        if t == "$SYS/broker/uptime" {
            break;
        }
    }
}
