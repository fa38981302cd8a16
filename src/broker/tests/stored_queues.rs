//! Queues of persistent sessions are bounded by what the log may hold for
//! them (messages and bytes per session, bytes per process), not by the
//! in-memory `max_queued_messages`; a refusal is counted, reported, and a
//! v5 publisher whose message reached no one hears 0x97.

use super::*;

fn offline_subscriber(cl: &mut Cluster, id: &str, f: &str) {
    let (s, _) = cl.connect_with(persistent(V5, id));
    cl.subscribe(&s, f, q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
}

fn publish_q1(cl: &mut Cluster, p: &Client, t: &str, id: u16) -> ReasonCode {
    cl.publish(p, t, b"payload", QoS::AtLeastOnce, id);
    match cl.recv(p).as_slice() {
        [Packet::PubAck(a)] => a.reason,
        other => panic!("expected one PUBACK, got {other:?}"),
    }
}

#[test]
fn an_offline_persistent_session_keeps_4000_acknowledged_messages() {
    // The default configuration: max_queued_messages = 1000 bounds clean
    // sessions only.
    let mut cl = Cluster::new(2);
    let (a, b) = ids_apart("keep");
    offline_subscriber(&mut cl, &b, "fleet/#");
    let p = cl.connect(V5, &a);
    for i in 0..4_000u16 {
        assert_eq!(
            publish_q1(&mut cl, &p, "fleet/x", i % 60_000 + 1),
            ReasonCode::SUCCESS
        );
    }
    let (s, ack) = cl.connect_with(persistent(V5, &b));
    assert!(ack.session_present);
    let mut got = 0;
    loop {
        let ps = cl.publishes(&s);
        if ps.is_empty() {
            break;
        }
        got += ps.len();
        for p in ps {
            cl.send(&s, Packet::PubAck(PubResponse::new(p.packet_id.unwrap())));
        }
    }
    assert_eq!(got, 4_000, "every acknowledged message");
    let dropped: u64 = cl.cores.iter().map(|c| c.stats().messages_dropped).sum();
    assert_eq!(dropped, 0);
}

fn bounded(shards: usize, messages: usize, bytes: u64, budget: Option<u64>) -> Cluster {
    Cluster::with_config(
        shards,
        CoreConfig {
            persistence: true,
            max_stored_messages: messages,
            max_stored_bytes: bytes,
            queue_budget: budget.map(QueueBudget::new),
            ..CoreConfig::default()
        },
    )
}

#[test]
fn a_full_persistent_queue_refuses_counts_and_says_quota_exceeded_across_shards() {
    let mut cl = bounded(2, 10, 0, None);
    let (a, b) = ids_apart("full");
    offline_subscriber(&mut cl, &b, "t");
    let p = cl.connect(V5, &a);
    for i in 1..=10 {
        assert_eq!(publish_q1(&mut cl, &p, "t", i), ReasonCode::SUCCESS);
    }
    assert_eq!(
        publish_q1(&mut cl, &p, "t", 11),
        ReasonCode::QUOTA_EXCEEDED,
        "the only subscriber's queue is full: the message reached no one"
    );
    let home = home_shard(&b, 2).get();
    let stats = cl.cores[home].stats();
    assert_eq!(stats.limit_hits[Limit::StoredMessages as usize], 1);
    assert_eq!(stats.messages_dropped, 1);
    // MQTT 3.1.1 has no negative PUBACK: a plain one, the drop still counted.
    let p3 = cl.connect(V3_1_1, "full-v3");
    assert_eq!(publish_q1(&mut cl, &p3, "t", 1), ReasonCode::SUCCESS);
    assert_eq!(
        cl.cores[home].stats().limit_hits[Limit::StoredMessages as usize],
        2
    );
}

#[test]
fn a_message_that_reached_someone_is_acknowledged_with_success() {
    let mut cl = bounded(1, 1, 0, None);
    offline_subscriber(&mut cl, "full-one", "t");
    offline_subscriber(&mut cl, "roomy", "t/#");
    let p = cl.connect(V5, "pub");
    assert_eq!(publish_q1(&mut cl, &p, "t", 1), ReasonCode::SUCCESS);
    // "full-one" is full now; "roomy" too (limit 1): both refuse.
    assert_eq!(publish_q1(&mut cl, &p, "t", 2), ReasonCode::QUOTA_EXCEEDED);
    // A connected clean subscriber takes it: success.
    let c = cl.connect(V5, "clean");
    cl.subscribe(&c, "t", q(QoS::AtLeastOnce));
    assert_eq!(publish_q1(&mut cl, &p, "t", 3), ReasonCode::SUCCESS);
}

#[test]
fn the_byte_bound_counts_topic_and_payload() {
    // Each message costs 1 + 7 + 64 = 72 bytes: two fit in 150.
    let mut cl = bounded(1, 0, 150, None);
    offline_subscriber(&mut cl, "bytes", "t");
    let p = cl.connect(V5, "pub");
    assert_eq!(publish_q1(&mut cl, &p, "t", 1), ReasonCode::SUCCESS);
    assert_eq!(publish_q1(&mut cl, &p, "t", 2), ReasonCode::SUCCESS);
    assert_eq!(publish_q1(&mut cl, &p, "t", 3), ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(
        cl.cores[0].stats().limit_hits[Limit::StoredBytes as usize],
        1
    );
}

#[test]
fn the_process_budget_is_shared_by_every_shard_and_given_back() {
    let budget = QueueBudget::new(72 * 3);
    let mut cl = Cluster::with_config(
        2,
        CoreConfig {
            persistence: true,
            queue_budget: Some(budget.clone()),
            ..CoreConfig::default()
        },
    );
    let (a, b) = ids_apart("budget");
    offline_subscriber(&mut cl, &a, "t");
    offline_subscriber(&mut cl, &b, "t");
    let p = cl.connect(V5, "pub");
    // Each publish queues on both shards: 2 x 72 bytes.
    assert_eq!(publish_q1(&mut cl, &p, "t", 1), ReasonCode::SUCCESS);
    assert_eq!(budget.used(), 144);
    // Only one of the two fits now; it reached someone: success.
    assert_eq!(publish_q1(&mut cl, &p, "t", 2), ReasonCode::SUCCESS);
    assert_eq!(budget.used(), 216);
    assert_eq!(publish_q1(&mut cl, &p, "t", 3), ReasonCode::QUOTA_EXCEEDED);
    let refused: u64 = cl
        .cores
        .iter()
        .map(|c| c.stats().limit_hits[Limit::QueueBudget as usize])
        .sum();
    assert_eq!(refused, 3);
    // A subscriber that takes its messages gives the budget back.
    let (s, _) = cl.connect_with(persistent(V5, &a));
    for m in cl.publishes(&s) {
        cl.send(&s, Packet::PubAck(PubResponse::new(m.packet_id.unwrap())));
    }
    assert!(budget.used() < 216, "{}", budget.used());
    // A session that ends gives back what it held.
    let mut end = Connect::new(V5, &b);
    end.clean_start = true;
    cl.connect_with(end);
    cl.send(&s, Packet::Disconnect(Disconnect::default()));
    assert_eq!(budget.used(), 0);
}

#[test]
fn drops_at_a_bound_are_reported_once_per_interval_with_the_client_id() {
    let mut cl = bounded(1, 1, 0, None);
    offline_subscriber(&mut cl, "reported", "t");
    let p = cl.connect(V5, "pub");
    let mut events = Vec::new();
    for i in 1..=5u16 {
        let mut m = Publish::new(topic("t"), Bytes::from_static(b"m"));
        m.qos = QoS::AtLeastOnce;
        m.packet_id = Some(pid(i));
        let mut buf = BytesMut::new();
        Packet::Publish(m).encode(V5, &mut buf).unwrap();
        cl.cores[0].handle_bytes(cl.now, p.conn, &mut buf);
        while let Some(ev) = cl.cores[0].poll_event() {
            if matches!(ev, IoEvent::Limited { .. }) {
                events.push(ev);
            }
        }
    }
    assert_eq!(
        events,
        vec![IoEvent::Limited {
            client_id: ClientId::new(ByteStr::from("reported")),
            limit: Limit::StoredMessages,
            dropped: 1,
        }]
    );
    cl.advance(LIMITED_LOG_INTERVAL);
    let mut m = Publish::new(topic("t"), Bytes::from_static(b"m"));
    m.qos = QoS::AtLeastOnce;
    m.packet_id = Some(pid(9));
    let mut buf = BytesMut::new();
    Packet::Publish(m).encode(V5, &mut buf).unwrap();
    cl.cores[0].handle_bytes(cl.now, p.conn, &mut buf);
    let later: Vec<_> = std::iter::from_fn(|| cl.cores[0].poll_event())
        .filter(|e| matches!(e, IoEvent::Limited { .. }))
        .collect();
    assert_eq!(
        later,
        vec![IoEvent::Limited {
            client_id: ClientId::new(ByteStr::from("reported")),
            limit: Limit::StoredMessages,
            dropped: 4,
        }],
        "the drops since the last report"
    );
}
