//! One session per client id across nodes (`shard/takeover.rs`): a CONNECT
//! on another node takes the session over with its subscriptions, queue,
//! in-flight messages and inbound QoS 2 ids; the old connection is closed
//! with 0x8E; concurrent CONNECTs leave one session; a dead holder means a
//! fresh session; an unreachable owner refuses with Server Unavailable.

use super::*;

/// A persistent CONNECT of `id` (v5: expiry one hour; v3: clean session 0).
fn persistent(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = Connect::new(v, id);
    c.clean_start = false;
    if v == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn connack(ns: &mut Nodes, node: usize, c: &Client) -> ConnAck {
    match ns.n[node].recv_one(c) {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Three nodes of two shards, claims on.
fn three() -> Nodes {
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    ns.set_map();
    ns
}

#[test]
fn a_connect_on_another_node_takes_the_session_with_everything_in_it() {
    for v in [V3_1_1, V5] {
        let mut ns = three();
        let dev = ns.connect_pending(0, persistent(v, "dev"));
        ns.link();
        assert!(!connack(&mut ns, 0, &dev).session_present);
        ns.n[0].subscribe(&dev, "t/#", q(QoS::ExactlyOnce));
        ns.link();
        let publ = ns.connect_pending(2, Connect::new(v, "pub"));
        ns.link();
        connack(&mut ns, 2, &publ);
        // In flight when the client goes: one QoS 1 not acknowledged, one
        // QoS 2 received (PUBREC sent, PUBREL outstanding).
        ns.n[2].publish(&publ, "t/1", b"q1", QoS::AtLeastOnce, 1);
        ns.n[2].publish(&publ, "t/2", b"q2", QoS::ExactlyOnce, 2);
        ns.link();
        let got = ns.n[0].publishes(&dev);
        assert_eq!(got.len(), 2, "{v:?}");
        let (id1, id2) = (got[0].packet_id.unwrap(), got[1].packet_id.unwrap());
        ns.n[0].send(&dev, Packet::PubRec(PubResponse::new(id2)));
        assert!(matches!(ns.n[0].recv_one(&dev), Some(Packet::PubRel(_))));
        // An inbound QoS 2 message awaiting PUBREL.
        ns.n[0].publish(&dev, "u/1", b"in", QoS::ExactlyOnce, 9);
        ns.link();
        assert!(matches!(ns.n[0].recv_one(&dev), Some(Packet::PubRec(_))));
        ns.n[0].drop_socket(&dev);
        // Queued while away.
        ns.n[2].publish(&publ, "t/3", b"q3", QoS::AtLeastOnce, 3);
        ns.n[2].publish(&publ, "t/4", b"q4", QoS::ExactlyOnce, 4);
        ns.link();

        let dev2 = ns.connect_pending(1, persistent(v, "dev"));
        ns.link();
        assert!(connack(&mut ns, 1, &dev2).session_present, "{v:?}");
        let got = ns.n[1].recv(&dev2);
        // In flight first, resent as they were (DUP, same ids), then the
        // queue in order.
        match &got[..] {
            [Packet::Publish(p1), Packet::PubRel(r), Packet::Publish(p3), Packet::Publish(p4)] => {
                assert_eq!(
                    (&p1.payload[..], p1.dup, p1.packet_id),
                    (&b"q1"[..], true, Some(id1))
                );
                assert_eq!(r.packet_id, id2);
                assert_eq!(&p3.payload[..], b"q3");
                assert_eq!(&p4.payload[..], b"q4");
                assert!(!p3.dup && !p4.dup);
            }
            other => panic!("{v:?}: {other:?}"),
        }
        // The inbound QoS 2 id came along: the resent PUBLISH is not
        // delivered again.
        let watcher = ns.connect_pending(2, Connect::new(v, "watch"));
        ns.link();
        connack(&mut ns, 2, &watcher);
        ns.n[2].subscribe(&watcher, "u/#", q(QoS::AtLeastOnce));
        ns.link();
        let mut again = Publish::new(topic("u/1"), Bytes::from_static(b"in"));
        again.qos = QoS::ExactlyOnce;
        again.packet_id = Some(pid(9));
        again.dup = true;
        ns.n[1].send(&dev2, Packet::Publish(again));
        ns.link();
        assert!(matches!(ns.n[1].recv_one(&dev2), Some(Packet::PubRec(_))));
        assert!(
            ns.n[2].publishes(&watcher).is_empty(),
            "{v:?}: delivered twice"
        );
        // The old node has nothing of it; new messages go to the new one.
        let home = home_shard("dev", 2).get();
        assert!(ns.n[0].cores[home].session("dev").is_none());
        ns.n[2].publish(&publ, "t/5", b"q5", QoS::AtLeastOnce, 5);
        ns.link();
        let got = ns.n[1].publishes(&dev2);
        assert_eq!(got.len(), 1, "{v:?}: {got:?}");
        assert_eq!(&got[0].payload[..], b"q5");
    }
}

#[test]
fn the_connection_on_the_old_node_is_closed_with_session_taken_over() {
    let mut ns = three();
    let old = ns.connect_pending(0, persistent(V5, "dev"));
    ns.link();
    connack(&mut ns, 0, &old);
    let new = ns.connect_pending(1, persistent(V5, "dev"));
    ns.link();
    assert!(connack(&mut ns, 1, &new).session_present);
    let got = ns.n[0].recv(&old);
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER),
        "{got:?}"
    );
    assert!(ns.n[0].closed(&old) || ns.n[0].cores[old.shard].session("dev").is_none());
}

#[test]
fn a_clean_start_elsewhere_ends_the_old_session_and_its_will_goes_out() {
    let mut ns = three();
    let watcher = ns.connect_pending(2, Connect::new(V5, "watch"));
    ns.link();
    connack(&mut ns, 2, &watcher);
    ns.n[2].subscribe(&watcher, "will/#", q(QoS::AtLeastOnce));
    ns.link();
    let mut c = persistent(V5, "dev");
    c.will = Some(LastWill {
        topic: topic("will/dev"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let old = ns.connect_pending(0, c);
    ns.link();
    connack(&mut ns, 0, &old);
    ns.n[0].subscribe(&old, "t/#", q(QoS::AtLeastOnce));
    ns.link();
    let new = ns.connect_pending(1, Connect::new(V5, "dev"));
    ns.link();
    assert!(!connack(&mut ns, 1, &new).session_present);
    let wills = ns.n[2].publishes(&watcher);
    assert_eq!(wills.len(), 1, "{wills:?}");
    assert_eq!(&wills[0].payload[..], b"gone");
    // The old subscription went with the old session.
    let publ = ns.connect_pending(2, Connect::new(V5, "pub"));
    ns.link();
    connack(&mut ns, 2, &publ);
    ns.n[2].publish(&publ, "t/1", b"m", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(ns.n[1].publishes(&new).is_empty());
}

/// Two CONNECTs of one client id on two nodes at once, in every order the
/// owner can see them: exactly one is connected at the end, the other was
/// closed with 0x8E, and the messages queued before are delivered once.
#[test]
fn concurrent_connects_leave_exactly_one_session() {
    for round in 0..12usize {
        let mut ns = three();
        let first = ns.connect_pending(2, persistent(V5, "dev"));
        ns.link();
        connack(&mut ns, 2, &first);
        ns.n[2].subscribe(&first, "t/#", q(QoS::AtLeastOnce));
        ns.link();
        ns.n[2].drop_socket(&first);
        let publ = ns.connect_pending(2, Connect::new(V5, "pub"));
        ns.link();
        connack(&mut ns, 2, &publ);
        for i in 0..3 {
            ns.n[2].publish(&publ, "t/1", b"m", QoS::AtLeastOnce, i + 1);
        }
        ns.link();
        let (x, y) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        let a = ns.connect_pending(x, persistent(V5, "dev"));
        if round % 3 == 1 {
            ns.move_sessions();
        }
        let b = ns.connect_pending(y, persistent(V5, "dev"));
        ns.link();
        let mut alive = Vec::new();
        let mut delivered = 0;
        for (node, c) in [(x, &a), (y, &b)] {
            let got = ns.n[node].recv(c);
            delivered += got
                .iter()
                .filter(|p| matches!(p, Packet::Publish(_)))
                .count();
            let taken = got.iter().any(
                |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER),
            );
            assert!(
                matches!(got.first(), Some(Packet::ConnAck(_))),
                "round {round}: {got:?}"
            );
            if !taken {
                alive.push(node);
            }
        }
        assert_eq!(alive.len(), 1, "round {round}: one survives");
        let home = home_shard("dev", 2).get();
        let holders: Vec<usize> = (0..3)
            .filter(|&n| ns.n[n].cores[home].session("dev").is_some())
            .collect();
        assert_eq!(holders, alive, "round {round}: one session, the survivor's");
        // The three queued messages reached a client at least once (the
        // loser may have had them before it was taken over: QoS 1 again
        // on the survivor then).
        assert!(delivered >= 3, "round {round}: {delivered}");
    }
}

#[test]
fn a_holder_that_died_means_a_fresh_session() {
    let mut ns = three();
    let old = ns.connect_pending(0, persistent(V5, "dev"));
    ns.link();
    connack(&mut ns, 0, &old);
    // Node 1 (index 0) dies; the claim's Take goes nowhere until the
    // others see it gone.
    ns.down.insert(0);
    let new = ns.connect_pending(1, persistent(V5, "dev"));
    ns.link();
    assert!(ns.n[1].recv(&new).is_empty(), "waits for the holder");
    for n in [1, 2] {
        for c in &mut ns.n[n].cores {
            c.handle_node_gone(NodeId(1));
        }
        ns.n[n].run();
    }
    ns.link();
    let ack = connack(&mut ns, 1, &new);
    assert!(
        !ack.session_present,
        "the session lived only on the dead node"
    );
}

#[test]
fn an_unreachable_owner_refuses_with_server_unavailable() {
    let mut ns = three();
    // The owner of "dev"'s partition is cut off.
    let owner = {
        let members = (1..=3u16).map(|i| (NodeId(i), 2u16)).collect();
        let map = PartitionMap::assign(None, &members).unwrap();
        usize::from(
            map.owner(crate::broker::partition::partition_of("dev"))
                .node
                .0,
        ) - 1
    };
    let at = (owner + 1) % 3;
    ns.down.insert(owner);
    let c = ns.connect_pending(at, persistent(V5, "dev"));
    ns.link();
    assert!(ns.n[at].recv(&c).is_empty());
    ns.n[at].advance(CLAIM_TIMEOUT + Duration::from_millis(1));
    let ack = connack(&mut ns, at, &c);
    assert_eq!(ack.reason, ReasonCode::SERVER_UNAVAILABLE);
    assert!(ns.n[at].closed(&c) || ns.n[at].cores[c.shard].session("dev").is_none());
}

#[test]
fn sessions_register_with_the_new_owner_when_the_map_changes() {
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    // Sessions made before claims were on (from disk, say): registered
    // with their owners when the first map comes.
    let dev = ns.n[0].connect_with(persistent(V5, "dev")).0;
    ns.n[0].subscribe(&dev, "t/#", q(QoS::AtLeastOnce));
    ns.n[0].drop_socket(&dev);
    ns.set_map();
    let per_node: usize = (0..3)
        .flat_map(|n| {
            ns.n[n]
                .cores
                .iter()
                .map(|c| c.registered_per_node().values().sum::<usize>())
        })
        .sum();
    assert_eq!(per_node, 1, "registered once");
    // So a CONNECT elsewhere finds it.
    let new = ns.connect_pending(2, persistent(V5, "dev"));
    ns.link();
    assert!(connack(&mut ns, 2, &new).session_present);
}

/// The holder of a session gets a CONNECT of it while another node's
/// CONNECT of it was granted first (the owner is that other node, so its
/// claim is answered at once): the holder hands the session over at once
/// rather than wait for its own claim (which waits for the other node:
/// that would deadlock), then takes it back. One session, no refusal.
#[test]
fn a_holder_claiming_again_does_not_deadlock_with_an_earlier_claim() {
    let id = id_owned_by("dl", NodeId(2));
    let mut ns = three();
    let first = ns.connect_pending(0, persistent(V5, &id));
    ns.link();
    connack(&mut ns, 0, &first);
    ns.n[0].drop_socket(&first);
    ns.link();
    // Node 1 (index 0) holds it. Its CONNECT's claim waits on its links;
    // node 2's CONNECT is granted at once, and its Take goes to node 1.
    let x = ns.connect_pending(0, persistent(V5, &id));
    let y = ns.connect_pending(1, persistent(V5, &id));
    ns.link();
    let gx = ns.n[0].recv(&x);
    let gy = ns.n[1].recv(&y);
    let ok = |g: &[Packet]| matches!(g.first(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::SUCCESS && a.session_present);
    assert!(
        ok(&gx) && ok(&gy),
        "both answered, no refusal: {gx:?} {gy:?}"
    );
    let taken = |g: &[Packet]| {
        g.iter().any(
            |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER),
        )
    };
    // The later claim (x's, granted second) wins.
    assert!(taken(&gy) && !taken(&gx), "{gx:?} {gy:?}");
    let home = home_shard(&id, 2).get();
    assert!(ns.n[0].cores[home].session(&id).is_some());
    assert!(ns.n[1].cores[home].session(&id).is_none());
}

/// A fenced node (cut off on the minority side) accepts no CONNECT and
/// grants no claim, on every shard; its connected clients carry on; once
/// it is no longer fenced it accepts again.
#[test]
fn a_fenced_node_refuses_connects_and_claims() {
    let mut ns = three();
    let sub = ns.connect_pending(0, Connect::new(V5, "stays"));
    ns.link();
    connack(&mut ns, 0, &sub);
    ns.n[0].subscribe(&sub, "f/#", q(QoS::AtLeastOnce));
    let now = ns.n[0].now;
    ns.n[0].cores[0].set_fenced(now, true);
    ns.n[0].run();
    for core in &ns.n[0].cores {
        assert!(core.is_fenced(), "every shard is told");
    }
    for id in ["a", "b", "c", "d"] {
        let c = ns.connect_pending(0, Connect::new(V5, id));
        ns.link();
        let a = connack(&mut ns, 0, &c);
        assert_eq!(a.reason, ReasonCode::SERVER_UNAVAILABLE, "{id}");
    }
    // Claims of client ids whose partition it owns are not granted there:
    // a CONNECT elsewhere keeps asking, and is refused when its time is up.
    let id = id_owned_by("fz", NodeId(1));
    let other = ns.connect_pending(1, Connect::new(V5, &id));
    ns.link();
    assert!(ns.n[1].recv(&other).is_empty());
    // The connected client still gets its messages (from a publisher
    // whose client id another node owns).
    let pub_id = id_owned_by("fpub", NodeId(2));
    let p = ns.connect_pending(2, Connect::new(V5, &pub_id));
    ns.link();
    connack(&mut ns, 2, &p);
    ns.n[2].publish(&p, "f/1", b"still", QoS::AtLeastOnce, 1);
    ns.link();
    assert_eq!(ns.n[0].publishes(&sub).len(), 1);
    // Back: accepting again.
    let now = ns.n[0].now;
    ns.n[0].cores[0].set_fenced(now, false);
    ns.n[0].run();
    let c = ns.connect_pending(0, Connect::new(V5, "after"));
    ns.link();
    assert_eq!(connack(&mut ns, 0, &c).reason, ReasonCode::SUCCESS);
}

/// A node in a new life (its lease lost and granted again) registers its
/// sessions again: the owners forgot them when its old life left.
#[test]
fn a_new_life_registers_its_sessions_again() {
    let id = id_owned_by("life", NodeId(2));
    let mut ns = three();
    let dev = ns.connect_pending(0, persistent(V5, &id));
    ns.link();
    connack(&mut ns, 0, &dev);
    ns.n[0].drop_socket(&dev);
    ns.link();
    let registered = |ns: &Nodes| -> usize {
        ns.n[1]
            .cores
            .iter()
            .map(|c| c.registered_per_node().values().sum::<usize>())
            .sum()
    };
    assert_eq!(registered(&ns), 1);
    // Its old life leaves: the owner forgets it.
    for n in [1, 2] {
        for c in &mut ns.n[n].cores {
            c.handle_node_gone(NodeId(1));
        }
    }
    assert_eq!(registered(&ns), 0);
    let now = ns.n[0].now;
    for c in &mut ns.n[0].cores {
        c.reregister_all(now);
    }
    ns.n[0].run();
    ns.link();
    assert_eq!(registered(&ns), 1, "registered again");
    let new = ns.connect_pending(2, persistent(V5, &id));
    ns.link();
    assert!(connack(&mut ns, 2, &new).session_present);
}

/// A node that was away comes back with a session whose client meanwhile
/// got a fresh one elsewhere: its registration is refused, and what its
/// copy queued goes to the later session (merged) — nothing acknowledged
/// is lost.
#[test]
fn a_stale_copy_hands_its_messages_to_the_later_session() {
    let mut ns = three();
    let dev = ns.connect_pending(0, persistent(V5, "dev"));
    ns.link();
    connack(&mut ns, 0, &dev);
    ns.n[0].subscribe(&dev, "st/#", q(QoS::AtLeastOnce));
    ns.link();
    ns.n[0].drop_socket(&dev);
    let publ = ns.connect_pending(0, Connect::new(V5, "st-pub-local"));
    ns.link();
    connack(&mut ns, 0, &publ);
    ns.n[0].publish(&publ, "st/1", b"kept", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(
        matches!(ns.n[0].recv(&publ)[..], [Packet::PubAck(ref a)] if a.reason == ReasonCode::SUCCESS)
    );
    // Node 1 (index 0) goes away; its client gets a fresh session on node 2.
    ns.down.insert(0);
    for n in [1, 2] {
        for c in &mut ns.n[n].cores {
            c.handle_node_gone(NodeId(1));
        }
        ns.n[n].run();
    }
    let new = ns.connect_pending(1, persistent(V5, "dev"));
    ns.link();
    for n in &mut ns.n {
        n.advance(CLAIM_TIMEOUT + CLAIM_RETRY);
    }
    ns.link();
    let ack = match ns.n[1].recv(&new).first() {
        Some(Packet::ConnAck(a)) => a.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        ack.reason == ReasonCode::SUCCESS && !ack.session_present,
        "{ack:?}"
    );
    // It comes back and registers what it has.
    ns.down.remove(&0);
    let now = ns.n[0].now;
    for c in &mut ns.n[0].cores {
        c.reregister_all(now);
    }
    ns.n[0].run();
    ns.link();
    let got = ns.n[1].publishes(&new);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"kept");
    let home = home_shard("dev", 2).get();
    assert!(
        ns.n[0].cores[home].session("dev").is_none(),
        "the stale copy is gone"
    );
}
