//! The cost of the cross-core hop: a batch of `ShardMsg::Publish` sent from
//! one pinned glommio executor to another over the channel mesh the broker
//! uses, against the same traffic through a channel inside one executor (the
//! baseline: what delivery costs when publisher and subscriber share a core).
//!
//! Run: `cargo bench -p vmqtt-shard --bench cross_core`. Prints, per batch
//! size, nanoseconds per message one way (throughput) and the round-trip
//! latency of a single message (median and P99 over many pings).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use vmqtt::broker::{Message, ShardMsg};
use vmqtt::codec::{PublishProperties, QoS};
use vmqtt::topic::TopicName;

const MESSAGES: usize = 2_000_000;
const PINGS: usize = 20_000;

fn message() -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::from_static("fleet/r1/d1/telemetry").expect("valid topic"),
        payload: Bytes::from_static(&[0u8; 64]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties::default(),
        expires_at: None,
        origin: None,
        uid: None,
    })
}

fn batch(n: usize) -> Vec<ShardMsg> {
    let m = message();
    (0..n).map(|_| ShardMsg::Publish(m.clone())).collect()
}

fn cpus() -> (usize, usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0, if n > 1 { 1 } else { 0 })
}

/// Messages one way from core A to core B in batches of `size`; ns/message.
fn cross_core_throughput(size: usize) -> f64 {
    let (a, b) = cpus();
    let mesh = MeshBuilder::<Vec<ShardMsg>, _>::full(2, 64);
    let m2 = mesh.clone();
    let rx = LocalExecutorBuilder::new(Placement::Fixed(b))
        .spawn(move || async move {
            let (_s, r) = m2.join().await.expect("join");
            let peer = 1 - r.peer_id();
            let mut got = 0;
            while got < MESSAGES {
                let Ok(Some(batch)) = r.recv_from(peer).await else {
                    break;
                };
                got += batch.len();
                drop(batch);
            }
        })
        .expect("spawn receiver");
    let tx = LocalExecutorBuilder::new(Placement::Fixed(a))
        .spawn(move || async move {
            let (s, _r) = mesh.join().await.expect("join");
            let peer = 1 - s.peer_id();
            let start = Instant::now();
            let mut sent = 0;
            while sent < MESSAGES {
                let n = size.min(MESSAGES - sent);
                let _ = s.send_to(peer, batch(n)).await;
                sent += n;
            }
            start
        })
        .expect("spawn sender");
    let start = tx.join().expect("sender");
    rx.join().expect("receiver");
    start.elapsed().as_nanos() as f64 / MESSAGES as f64
}

/// The same traffic through a channel within one executor; ns/message.
fn same_core_throughput(size: usize) -> f64 {
    let (a, _) = cpus();
    LocalExecutorBuilder::new(Placement::Fixed(a))
        .spawn(move || async move {
            let (s, r) = local_channel::new_bounded::<Vec<ShardMsg>>(64);
            let consumer = glommio::spawn_local(async move {
                let mut got = 0;
                while got < MESSAGES {
                    let Some(b) = r.recv().await else { break };
                    got += b.len();
                }
            });
            let start = Instant::now();
            let mut sent = 0;
            while sent < MESSAGES {
                let n = size.min(MESSAGES - sent);
                let _ = s.send(batch(n)).await;
                sent += n;
            }
            drop(s);
            consumer.await;
            start.elapsed().as_nanos() as f64 / MESSAGES as f64
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Round trip of one message A→B→A; sorted durations.
fn cross_core_ping() -> Vec<Duration> {
    let (a, b) = cpus();
    let mesh = MeshBuilder::<Vec<ShardMsg>, _>::full(2, 64);
    let m2 = mesh.clone();
    let echo = LocalExecutorBuilder::new(Placement::Fixed(b))
        .spawn(move || async move {
            let (s, r) = m2.join().await.expect("join");
            let peer = 1 - r.peer_id();
            for _ in 0..PINGS {
                let Ok(Some(m)) = r.recv_from(peer).await else {
                    break;
                };
                let _ = s.send_to(peer, m).await;
            }
        })
        .expect("spawn echo");
    let pinger = LocalExecutorBuilder::new(Placement::Fixed(a))
        .spawn(move || async move {
            let (s, r) = mesh.join().await.expect("join");
            let peer = 1 - s.peer_id();
            let mut times = Vec::with_capacity(PINGS);
            for _ in 0..PINGS {
                let t = Instant::now();
                let _ = s.send_to(peer, batch(1)).await;
                let _ = r.recv_from(peer).await;
                times.push(t.elapsed());
            }
            times
        })
        .expect("spawn pinger");
    let mut times = pinger.join().expect("pinger");
    echo.join().expect("echo");
    times.sort();
    times
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    println!("cross-core hop (glommio channel mesh) vs same-core channel, {MESSAGES} messages");
    println!(
        "{:>6} {:>14} {:>14} {:>8}",
        "batch", "cross ns/msg", "same ns/msg", "ratio"
    );
    for size in [1, 16, 64, 256] {
        let cross = cross_core_throughput(size);
        let same = same_core_throughput(size);
        println!("{size:>6} {cross:>14.1} {same:>14.1} {:>8.2}", cross / same);
    }
    let times = cross_core_ping();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "round trip of one message, {PINGS} pings: median {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        times[times.len() - 1]
    );
}
