//! A storage log that stops writing (a full disk, a failing device) holds
//! only the traffic that waits for it: clean sessions whose traffic needs no
//! storage keep flowing, acknowledgements that promise durability wait.

use super::*;

/// A shard with a persistent session whose changes are not written yet.
fn stalled(shards: usize) -> (Cluster, String) {
    let mut cl = Cluster::new(shards);
    let durable = (0..)
        .map(|i| format!("durable-{i}"))
        .find(|id| home_shard(id, shards).get() == 0)
        .unwrap();
    let (s, _) = cl.connect_with(persistent(V5, &durable));
    cl.subscribe(&s, "stored/#", q(QoS::AtLeastOnce));
    cl.drop_socket(&s);
    cl.hold_store = true;
    // The log stalls on a change of the persistent session.
    let p = cl.connect(V5, "feeder");
    cl.publish(&p, "stored/x", b"m", QoS::AtLeastOnce, 1);
    (cl, durable)
}

fn clean_on(shard: usize, shards: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| home_shard(id, shards).get() == shard)
        .unwrap()
}

#[test]
fn clean_qos0_client_is_served_while_the_log_is_stalled() {
    let (mut cl, _) = stalled(1);
    let id = clean_on(0, 1, "clean");
    let (c, ack) = cl.connect_with(Connect::new(V5, &id));
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    cl.subscribe(&c, "own/t", q(QoS::AtMostOnce));
    cl.publish(&c, "own/t", b"hello", QoS::AtMostOnce, 0);
    let got = cl.publishes(&c);
    assert_eq!(got.len(), 1, "its own QoS 0 message reaches it");
    assert_eq!(&got[0].payload[..], b"hello");
    // QoS 1 between clean sessions needs no storage either.
    cl.subscribe(&c, "own/q1", q(QoS::AtLeastOnce));
    cl.publish(&c, "own/q1", b"one", QoS::AtLeastOnce, 5);
    let got = cl.recv(&c);
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubAck(r) if r.packet_id == pid(5))),
        "{got:?}"
    );
    assert!(
        got.iter().any(|p| matches!(p, Packet::Publish(_))),
        "{got:?}"
    );
}

#[test]
fn a_clean_publisher_to_a_persistent_session_still_waits_for_the_log() {
    let (mut cl, durable) = stalled(1);
    let id = clean_on(0, 1, "clean");
    let c = cl.connect(V5, &id);
    cl.publish(&c, "stored/y", b"m", QoS::AtLeastOnce, 3);
    assert_eq!(
        cl.recv(&c),
        vec![],
        "no PUBACK before the message is stored"
    );
    cl.write_store(0);
    assert_eq!(cl.recv(&c), vec![Packet::PubAck(PubResponse::new(pid(3)))]);
    cl.hold_store = false;
    let (s, ack) = cl.connect_with(persistent(V5, &durable));
    assert!(ack.session_present);
    assert_eq!(cl.publishes(&s).len(), 2);
}

#[test]
fn across_shards_clean_traffic_is_not_held_by_another_shards_stalled_log() {
    // The stalled log is shard 0's; the clean publisher lives on shard 1 and
    // its subscriber on shard 0.
    let (mut cl, _) = stalled(2);
    let sub = clean_on(0, 2, "sub");
    let publ = clean_on(1, 2, "pub");
    let s = cl.connect(V5, &sub);
    cl.subscribe(&s, "fleet/t", q(QoS::AtLeastOnce));
    let p = cl.connect(V5, &publ);
    cl.publish(&p, "fleet/t", b"m", QoS::AtLeastOnce, 9);
    assert_eq!(
        cl.recv(&p),
        vec![Packet::PubAck(PubResponse::new(pid(9)))],
        "shard 0 stored nothing for it, so its acknowledgement is not held"
    );
    assert_eq!(cl.publishes(&s).len(), 1);
}

#[test]
fn a_clean_start_that_removes_a_stored_session_waits_for_the_log() {
    let (mut cl, durable) = stalled(1);
    let (c, ack) = {
        let conn = Connect::new(V5, &durable);
        let c = cl.open(0, V5);
        cl.send(&c, Packet::Connect(Box::new(conn)));
        (c.clone(), cl.recv_one(&c))
    };
    assert_eq!(ack, None, "CONNACK waits: it removed a stored session");
    cl.write_store(0);
    assert!(matches!(cl.recv_one(&c), Some(Packet::ConnAck(a)) if !a.session_present));
}
