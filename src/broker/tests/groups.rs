//! Shared subscriptions as consumer groups, on simulated shards: the
//! group's home picks members by strategy within their windows, holds what
//! nobody can take, and takes back what a member that left had not finished.

use super::*;

/// A client id homed on `shard` (of `shards`).
fn id_on(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| home_shard(id, shards).get() == shard)
        .unwrap()
}

fn with_strategy(strategy: Strategy, persistence: bool) -> CoreConfig {
    CoreConfig {
        persistence,
        shared: SharedConfig {
            strategy,
            ..SharedConfig::default()
        },
        ..CoreConfig::default()
    }
}

/// Connects `n` members of `$share/g/jobs/+` spread over the shards, each
/// with Receive Maximum `window`.
fn members(cl: &mut Cluster, n: usize, window: u16) -> Vec<Client> {
    let shards = cl.cores.len();
    (0..n)
        .map(|i| {
            let mut c = Connect::new(V5, id_on(&format!("w{i}-"), i % shards, shards));
            c.properties.receive_maximum = Some(window);
            let (m, _) = cl.connect_with(c);
            cl.subscribe(&m, "$share/g/jobs/+", q(QoS::AtLeastOnce));
            m
        })
        .collect()
}

/// Acknowledges every PUBLISH `c` received; returns their payloads.
fn take_and_ack(cl: &mut Cluster, c: &Client) -> Vec<Bytes> {
    let got = cl.publishes(c);
    for p in &got {
        if let Some(id) = p.packet_id {
            cl.send(c, Packet::PubAck(PubResponse::new(id)));
        }
    }
    got.into_iter().map(|p| p.payload).collect()
}

fn group(cl: &Cluster, f: &str) -> GroupInfo {
    let f = filter(f);
    cl.cores
        .iter()
        .flat_map(|c| c.groups())
        .find(|g| g.filter == f)
        .expect("the group lives on its home shard")
}

fn payload(i: usize) -> &'static [u8] {
    Box::leak(format!("m{i}").into_bytes().into_boxed_slice())
}

#[test]
fn round_robin_spans_the_whole_group_from_publishers_on_every_shard() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, true));
    let workers = members(&mut cl, 4, 100);
    let p0 = cl.connect(V5, &id_on("p", 0, 2));
    let p1 = cl.connect(V5, &id_on("p", 1, 2));
    for i in 0..200u16 {
        let p = if i % 2 == 0 { &p0 } else { &p1 };
        cl.publish(p, "jobs/x", b"j", QoS::AtLeastOnce, i / 2 + 1);
    }
    let counts: Vec<usize> = workers
        .iter()
        .map(|w| take_and_ack(&mut cl, w).len())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 200);
    // One turn across the group, not one per publishing shard.
    assert_eq!(counts, [50, 50, 50, 50]);
    let g = group(&cl, "$share/g/jobs/+");
    assert_eq!((g.members, g.online, g.dispatched), (4, 4, 200));
}

#[test]
fn members_get_no_more_than_their_window_and_the_group_holds_the_rest() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, false));
    let w = members(&mut cl, 2, 3);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..10u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    let a = cl.publishes(&w[0]);
    let b = cl.publishes(&w[1]);
    assert_eq!((a.len(), b.len()), (3, 3), "each gets its window");
    let g = group(&cl, "$share/g/jobs/+");
    assert_eq!(g.pending, 4, "the rest waits once, in the group");
    // The members' own queues stay empty: nothing is parked with a member.
    for c in &cl.cores {
        assert_eq!(c.stats().queued, 0);
    }
    // Acknowledging frees room: the next ones come, in order.
    cl.send(
        &w[0],
        Packet::PubAck(PubResponse::new(a[0].packet_id.unwrap())),
    );
    let more = cl.publishes(&w[0]);
    assert_eq!(more.len(), 1);
    assert_eq!(&more[0].payload[..], b"m6");
}

#[test]
fn an_offline_member_gets_nothing_while_others_are_online() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, true));
    let id = id_on("sleepy", 1, 2);
    let mut c = Connect::new(V5, &id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (sleepy, _) = cl.connect_with(c.clone());
    cl.subscribe(&sleepy, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    cl.send(
        &sleepy,
        Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
    );
    cl.run();
    let awake = members(&mut cl, 1, 100);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..20u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 1);
    }
    assert_eq!(take_and_ack(&mut cl, &awake[0]).len(), 20);
    let (back, ack) = cl.connect_with(c);
    assert!(ack.session_present);
    assert!(cl.publishes(&back).is_empty(), "nothing was parked with it");
}

#[test]
fn with_nobody_online_the_group_queues_once_and_the_first_back_gets_it() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, false));
    let mut connects = Vec::new();
    for i in 0..3 {
        let mut c = Connect::new(V5, id_on(&format!("m{i}-"), i % 2, 2));
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        let (m, _) = cl.connect_with(c.clone());
        cl.subscribe(&m, "$share/g/jobs/+", q(QoS::AtLeastOnce));
        cl.drop_socket(&m);
        connects.push(c);
    }
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..30u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    cl.publish(&p, "jobs/x", b"qos0", QoS::AtMostOnce, 0);
    let g = group(&cl, "$share/g/jobs/+");
    assert_eq!((g.online, g.pending, g.dropped), (0, 30, 1));
    for c in &cl.cores {
        assert_eq!(c.stats().queued, 0, "queued once per group, not per member");
    }
    let (first, _) = cl.connect_with(connects[2].clone());
    let got = take_and_ack(&mut cl, &first);
    let want: Vec<Bytes> = (0..30).map(|i| Bytes::from_static(payload(i))).collect();
    assert_eq!(got, want, "all of it, in order, to the first back");
}

#[test]
fn the_group_queue_is_bounded_and_drops_are_counted() {
    // With storage (so forwarded publishes are acknowledged, and a v5
    // publisher hears of the drop wherever the group's home is).
    let mut config = with_strategy(Strategy::RoundRobin, true);
    config.shared.max_pending = 5;
    let mut cl = Cluster::with_config(2, config);
    let busy = members(&mut cl, 1, 1);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..8u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 1);
    }
    assert_eq!(cl.publishes(&busy[0]).len(), 1, "its window is one");
    let g = group(&cl, "$share/g/jobs/+");
    assert_eq!((g.pending, g.dropped), (5, 2));
    let acks: Vec<ReasonCode> = cl
        .recv(&p)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 8);
    assert_eq!(
        acks.iter()
            .filter(|r| **r == ReasonCode::QUOTA_EXCEEDED)
            .count(),
        2,
        "v5 publishers learn of the drop: {acks:?}"
    );
}

#[test]
fn qos1_in_flight_to_a_member_that_drops_goes_to_another_qos2_stays() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, false));
    let id = id_on("dies", 0, 2);
    let mut c = Connect::new(V5, &id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (dying, _) = cl.connect_with(c.clone());
    cl.subscribe(&dying, "$share/g/jobs/+", q(QoS::ExactlyOnce));
    let p = cl.connect(V5, &id_on("p", 1, 2));
    // Only `dying` is a member yet: it gets all of these and finishes none.
    for i in 0..3u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    cl.publish(&p, "jobs/x", b"two", QoS::ExactlyOnce, 10);
    assert_eq!(cl.publishes(&dying).len(), 4);
    let mut survivor = Connect::new(V5, id_on("lives", 1, 2));
    survivor.properties.receive_maximum = Some(100);
    let (survivor, _) = cl.connect_with(survivor);
    cl.subscribe(&survivor, "$share/g/jobs/+", q(QoS::ExactlyOnce));
    assert!(cl.publishes(&survivor).is_empty());
    cl.drop_socket(&dying);
    let got = cl.publishes(&survivor);
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        payloads,
        [b"m0", b"m1", b"m2"],
        "QoS 1 in flight, redelivered"
    );
    assert!(
        got.iter().all(|p| !p.dup),
        "a first delivery to the new member"
    );
    assert_eq!(group(&cl, "$share/g/jobs/+").redelivered, 3);
    // The QoS 2 message stays with its member [MQTT-4.8.2-4/5].
    let (back, ack) = cl.connect_with(c);
    assert!(ack.session_present);
    let resent = cl.publishes(&back);
    assert_eq!(resent.len(), 1);
    assert_eq!(&resent[0].payload[..], b"two");
    assert!(resent[0].dup);
}

#[test]
fn redelivery_can_be_switched_off() {
    let mut config = with_strategy(Strategy::RoundRobin, false);
    config.shared.redeliver_on_disconnect = false;
    let mut cl = Cluster::with_config(2, config);
    let mut c = Connect::new(V5, id_on("dies", 0, 2));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c.properties.receive_maximum = Some(2);
    let (dying, _) = cl.connect_with(c.clone());
    cl.subscribe(&dying, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    let p = cl.connect(V5, &id_on("p", 1, 2));
    for i in 0..4u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    assert_eq!(cl.publishes(&dying).len(), 2);
    let other = members(&mut cl, 1, 100).remove(0);
    // The group held m2, m3 (dying's window was full): they go to the new
    // member as soon as it joins.
    assert_eq!(take_and_ack(&mut cl, &other).len(), 2);
    cl.drop_socket(&dying);
    assert!(
        cl.publishes(&other).is_empty(),
        "in flight stays with its member"
    );
    let (back, _) = cl.connect_with(c);
    assert_eq!(cl.publishes(&back).len(), 2, "resent to it");
}

#[test]
fn a_clean_member_that_drops_hands_back_its_queue_and_in_flight() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, true));
    let w = members(&mut cl, 2, 5);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..10u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    let first = cl.publishes(&w[0]);
    assert_eq!(first.len(), 5);
    cl.drop_socket(&w[0]);
    // Everything w0 held (clean session: gone with it) reaches w1, which
    // finishes its own first.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(take_and_ack(&mut cl, &w[1]));
    }
    assert_eq!(got.len(), 10, "every message processed at least once");
    let g = group(&cl, "$share/g/jobs/+");
    assert_eq!((g.members, g.redelivered, g.pending), (1, 5, 0));
}

#[test]
fn a_failed_puback_drops_the_message_without_trying_another_member() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, false));
    let w = members(&mut cl, 2, 10);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    cl.publish(&p, "jobs/x", b"bad", QoS::AtLeastOnce, 1);
    let (who, other) = match cl.publishes(&w[0]).pop() {
        Some(m) => ((w[0].clone(), m), w[1].clone()),
        None => ((w[1].clone(), cl.publishes(&w[1]).remove(0)), w[0].clone()),
    };
    let rc = ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR;
    cl.send(
        &who.0,
        Packet::PubAck(PubResponse::with_reason(who.1.packet_id.unwrap(), rc)),
    );
    cl.drop_socket(&who.0);
    assert!(cl.publishes(&other).is_empty(), "[MQTT-4.8.2-6]");
    assert_eq!(group(&cl, "$share/g/jobs/+").redelivered, 0);
}

#[test]
fn least_inflight_gives_a_slow_member_less() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::LeastInflight, false));
    let w = members(&mut cl, 2, 10);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    let (mut fast, mut slow) = (0, 0);
    let mut slow_held: Vec<PacketId> = Vec::new();
    for i in 0..200u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i % 60_000 + 1);
        fast += take_and_ack(&mut cl, &w[0]).len();
        // The slow one finishes one message in ten rounds.
        for m in cl.publishes(&w[1]) {
            slow += 1;
            slow_held.push(m.packet_id.unwrap());
        }
        if i % 10 == 9 && !slow_held.is_empty() {
            let id = slow_held.remove(0);
            cl.send(&w[1], Packet::PubAck(PubResponse::new(id)));
        }
    }
    assert_eq!(fast + slow, 200);
    assert!(slow <= 30, "slow {slow}, fast {fast}");
    assert!(slow >= 15, "but it is not starved: slow {slow}");
}

#[test]
fn sticky_keeps_one_member_until_it_leaves() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::Sticky, false));
    let w = members(&mut cl, 3, 100);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..10u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 1);
    }
    let counts: Vec<usize> = w.iter().map(|c| take_and_ack(&mut cl, c).len()).collect();
    let holder = counts
        .iter()
        .position(|&n| n == 10)
        .expect("one member has all");
    cl.drop_socket(&w[holder]);
    for i in 0..10u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 20);
    }
    let after: Vec<usize> = w
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, c)| take_and_ack(&mut cl, c).len())
        .collect();
    assert!(after.contains(&10) && after.contains(&0), "{after:?}");
}

#[test]
fn hash_client_keeps_each_publisher_on_one_member() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::HashClient, false));
    let w = members(&mut cl, 3, 1000);
    let pubs: Vec<Client> = (0..8).map(|i| cl.connect(V5, &format!("pub{i}"))).collect();
    for round in 0..5u16 {
        for (i, p) in pubs.iter().enumerate() {
            cl.publish(p, "jobs/x", payload(i), QoS::AtLeastOnce, round + 1);
        }
    }
    // Each publisher's messages (tagged with its index) land on one member.
    let mut owner: HashMap<Bytes, usize> = HashMap::new();
    let mut used = HashSet::new();
    for (i, c) in w.iter().enumerate() {
        for m in take_and_ack(&mut cl, c) {
            used.insert(i);
            if let Some(prev) = owner.insert(m.clone(), i) {
                assert_eq!(prev, i, "publisher {m:?} split over members");
            }
        }
    }
    assert_eq!(owner.len(), 8);
    assert!(used.len() >= 2, "eight publishers spread over the members");
}

#[test]
fn a_durable_group_keeps_its_messages_in_a_persistent_members_log() {
    // Storage on: with nobody connected, the group's messages go to a
    // persistent member's session, in the log (not to memory only).
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, true));
    let id = id_on("durable", 1, 2);
    let mut c = Connect::new(V5, &id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (m, _) = cl.connect_with(c.clone());
    cl.subscribe(&m, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    cl.drop_socket(&m);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    cl.publish(&p, "jobs/x", b"keep", QoS::AtLeastOnce, 1);
    let stored = cl
        .store_ops(1)
        .into_iter()
        .any(|op| matches!(op, persist::StoreOp::PutQueueEntry { ref client_id, .. } if client_id.as_str() == id));
    assert!(stored, "in the member's log before the PUBACK");
    assert_eq!(group(&cl, "$share/g/jobs/+").pending, 0);
    let (back, _) = cl.connect_with(c);
    let got = cl.publishes(&back);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"keep");
}

#[test]
fn a_group_whose_last_member_leaves_is_gone_with_its_queue() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, false));
    let mut c = Connect::new(V5, id_on("m", 0, 2));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (m, _) = cl.connect_with(c.clone());
    cl.subscribe(&m, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    cl.drop_socket(&m);
    let p = cl.connect(V5, &id_on("p", 1, 2));
    cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, 1);
    assert_eq!(group(&cl, "$share/g/jobs/+").pending, 1);
    let (m, _) = cl.connect_with(c);
    let got = take_and_ack(&mut cl, &m);
    assert_eq!(got.len(), 1);
    let u = Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![filter("$share/g/jobs/+")],
    };
    cl.send(&m, Packet::Unsubscribe(u));
    cl.run();
    assert!(cl.cores.iter().all(|c| c.groups().is_empty()));
}

#[test]
fn groups_publish_their_state_under_sys() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::LeastInflight, false));
    let w = members(&mut cl, 2, 1);
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..3u16 {
        cl.publish(&p, "jobs/x", b"j", QoS::AtLeastOnce, i + 1);
    }
    let _ = w;
    let watcher = cl.connect(V5, "watcher");
    cl.subscribe(&watcher, "$SYS/broker/groups/#", q(QoS::AtMostOnce));
    cl.recv(&watcher);
    cl.advance(Duration::from_secs(11));
    let got: HashMap<String, Bytes> = cl
        .publishes(&watcher)
        .into_iter()
        .map(|m| (m.topic.as_str().to_owned(), m.payload))
        .collect();
    let at = |k: &str| {
        got.get(&format!("$SYS/broker/groups/g/jobs/%2B/{k}"))
            .cloned()
            .unwrap_or_else(|| panic!("{k} missing in {:?}", got.keys()))
    };
    assert_eq!(at("strategy"), "least_inflight");
    assert_eq!(at("members"), "2");
    assert_eq!(at("online"), "2");
    assert_eq!(at("pending"), "1");
    assert_eq!(at("dispatched"), "2");
}

#[test]
fn with_storage_a_full_group_queues_in_a_persistent_members_log_not_in_memory() {
    let mut cl = Cluster::with_config(2, with_strategy(Strategy::RoundRobin, true));
    let id = id_on("durable", 1, 2);
    let mut c = Connect::new(V5, &id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c.properties.receive_maximum = Some(1);
    let (m, _) = cl.connect_with(c);
    cl.subscribe(&m, "$share/g/jobs/+", q(QoS::AtLeastOnce));
    let p = cl.connect(V5, &id_on("p", 0, 2));
    for i in 0..3u16 {
        cl.publish(&p, "jobs/x", payload(i.into()), QoS::AtLeastOnce, i + 1);
    }
    let first = cl.publishes(&m);
    assert_eq!(first.len(), 1, "its window is one");
    assert_eq!(
        group(&cl, "$share/g/jobs/+").pending,
        0,
        "nothing only in memory"
    );
    let queued = cl
        .store_ops(1)
        .into_iter()
        .filter(|op| matches!(op, persist::StoreOp::PutQueueEntry { client_id, .. } if client_id.as_str() == id))
        .count();
    assert!(
        queued >= 3,
        "all three in the member's log: {queued} entries"
    );
    assert_eq!(take_and_ack(&mut cl, &m).len(), 0);
}
