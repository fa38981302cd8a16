//! Load-shaped robustness: a slow consumer under a QoS 0 flood (the broker's
//! memory stays bounded; the publisher and a fast subscriber are not held
//! back), and a storm of connections opened and dropped at once.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::common::shard;
use crate::common::*;

/// Payload size and count of the flood: 8192 x 64 KiB = 512 MiB, far more
/// than the RSS growth allowed, so a broker that buffers a slow consumer's
/// backlog without bound fails.
const FLOOD_PAYLOAD: usize = 64 * 1024;
const FLOOD_COUNT: usize = 8192;
/// Queue bound configured for this test (messages per session).
const MAX_QUEUED: usize = 1000;
/// What the configuration allows the broker to hold: both subscribers'
/// queues full of distinct flood payloads (125 MiB), plus 192 MiB for
/// buffers in flight (output buffers, shard channels of 256 batches whose
/// messages keep their 64 KiB read buffers alive, read buffers) and
/// allocator slack (glibc arenas per thread). The flood itself is 512 MiB:
/// an unbounded broker goes far past this. Measured: 82 MiB of slack used
/// when run alone; 124 MiB in a debug build among the parallel suite, which
/// failed an earlier 96 MiB allowance.
const RSS_GROWTH_LIMIT_KIB: u64 = ((2 * MAX_QUEUED * FLOOD_PAYLOAD) as u64 >> 10) + 192 * 1024;

/// A subscriber that stops reading its socket while a publisher floods QoS 0:
/// the publisher finishes in bounded time, a fast subscriber keeps receiving
/// (and gets the QoS 1 end marker), and the broker's RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_grow_broker_or_block_others() {
    let test = "slow_consumer_does_not_grow_broker_or_block_others";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            max_queued_messages: Some(MAX_QUEUED as u32),
            max_packet_size: Some(1 << 20),
            ..Default::default()
        },
    );
    let (pub_id, fast_id) = ids_on_different_shards(test);
    let slow_id = shard::id_on_shard(&format!("{test}-slow"), home_shard(&fast_id, SHARDS));

    // The slow consumer: tiny receive buffer, subscribes, never reads again.
    let mut slow = Raw::tcp_small_rcvbuf(b.port(), &slow_id, 4096).await;
    slow.handshake(connect_packet(V311, &slow_id)).await;
    slow.subscribe("flood/t", QoS::AtMostOnce).await;

    let mut fast = Raw::v311(b.port(), &fast_id).await;
    fast.subscribe("flood/t", QoS::AtMostOnce).await;
    fast.subscribe("flood/end", QoS::AtLeastOnce).await;

    let baseline = b.rss_kib();
    let rss = RssSampler::start(&b, Duration::from_millis(50));

    // The fast subscriber counts flood messages until the end marker.
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let p = fast.recv_publish_within(Duration::from_secs(30)).await;
            if p.topic.as_str() == "flood/end" {
                fast.ack(&p).await;
                return n;
            }
            n += 1;
        }
    });

    let mut publ = Raw::v311(b.port(), &pub_id).await;
    let mut batch = BytesMut::new();
    let msg = Packet::Publish(publish(
        "flood/t",
        vec![b'F'; FLOOD_PAYLOAD],
        QoS::AtMostOnce,
        false,
    ));
    for _ in 0..16 {
        msg.encode(V311, &mut batch).unwrap();
    }
    let start = Instant::now();
    let sent = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..FLOOD_COUNT / 16 {
            publ.send_raw(&batch).await;
        }
        publ.publish_ok("flood/end", "end", QoS::AtLeastOnce, false)
            .await;
    })
    .await;
    assert!(
        sent.is_ok(),
        "the publisher was blocked: flood not accepted within 60 s"
    );
    let publish_time = start.elapsed();
    let fast_got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast subscriber did not get the end marker within 60 s")
        .expect("reader task");
    let peak = rss.peak().await;
    eprintln!(
        "[{test}] flood {} MiB in {publish_time:?}; fast subscriber got {fast_got}/{FLOOD_COUNT}; broker RSS {baseline} KiB -> peak {peak} KiB",
        (FLOOD_COUNT * FLOOD_PAYLOAD) >> 20
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "broker RSS grew by {} MiB during a {} MiB flood with a stalled consumer (limit {} MiB)",
        peak.saturating_sub(baseline) >> 10,
        (FLOOD_COUNT * FLOOD_PAYLOAD) >> 20,
        RSS_GROWTH_LIMIT_KIB >> 10
    );
    assert!(
        fast_got >= FLOOD_COUNT / 2,
        "the fast subscriber got only {fast_got} of {FLOOD_COUNT} QoS 0 messages"
    );
    // The broker still serves new clients.
    let mut by = Bystanders::new(&b, test).await;
    by.check().await;
    drop(slow);
}

/// 2000 TCP connections at once: half send CONNECT (and get CONNACK), half
/// send nothing or a partial CONNECT; all are dropped together. Routing keeps
/// working during and after, and `$SYS/broker/clients/connected` comes back
/// down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_storm_then_pubsub_works() {
    let test = "connection_storm_then_pubsub_works";
    let b = Broker::start_with(
        test,
        BrokerConfig {
            sys_interval_ms: Some(1000),
            connect_timeout_ms: Some(10_000),
            ..Default::default()
        },
    );
    let mut by = Bystanders::new(&b, test).await;
    const N: usize = 2000;
    const BATCH: usize = 200;
    let port = b.port();
    let start = Instant::now();
    let mut held = Vec::with_capacity(N);
    for batch in 0..N / BATCH {
        let mut tasks = Vec::with_capacity(BATCH);
        for j in 0..BATCH {
            let i = batch * BATCH + j;
            tasks.push(tokio::spawn(async move {
                let mut c = Raw::tcp(port, &format!("storm-{i}")).await;
                match i % 4 {
                    0 => {
                        c.handshake(connect_packet(V311, &format!("storm-{i}")))
                            .await;
                    }
                    1 => {
                        c.handshake(connect_packet(V5P, &format!("storm-{i}")))
                            .await;
                    }
                    2 => c.send_raw(&[0x10, 0x10, 0x00, 0x04, b'M', b'Q']).await,
                    _ => {}
                }
                c
            }));
        }
        for t in tasks {
            held.push(t.await.expect("storm connection"));
        }
        by.check().await;
    }
    eprintln!("[{test}] {N} connections in {:?}", start.elapsed());
    drop(held);
    by.check().await;

    // A fresh pair works too.
    let (pub_id, sub_id) = ids_on_different_shards(test);
    let mut sub = Raw::v5(b.port(), &sub_id).await;
    sub.subscribe("storm/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::v311(b.port(), &pub_id).await;
    publ.publish_ok("storm/t", "after the storm", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&sub.recv_publish_acked().await), "after the storm");

    // The connected count comes back down (bystanders + this pair + watcher).
    let mut watch = Raw::v311(b.port(), &format!("{test}-watch")).await;
    watch
        .subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("$SYS/broker/clients/connected still {last} 10 s after the storm was dropped");
        }
        let p = watch.recv_publish_within(left).await;
        last = text(&p);
        if last.trim().parse::<u64>().is_ok_and(|n| n <= 5) {
            break;
        }
    }
}
