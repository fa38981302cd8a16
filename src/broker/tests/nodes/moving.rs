//! A session on the move (`shard/moving.rs`): a message that reaches the
//! node a session just left follows it to the new node, once; the old node
//! deletes its copy only when the new node has stored the session; a
//! session handed to a node that dies before storing it comes back, with
//! what was forwarded to it meanwhile.

use super::*;

fn persistent(id: &str) -> Connect {
    let mut c = Connect::new(V5, id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c
}

fn connack(ns: &mut Nodes, node: usize, c: &Client) -> ConnAck {
    match ns.n[node].recv_one(c) {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Three nodes; `dev` subscribed to `w/#` (QoS 1) on node index 0 and
/// away; a publisher on node index 2.
fn setup() -> (Nodes, Client) {
    setup_for("dev")
}

/// [`setup`] with the client id `id`.
fn setup_for(id: &str) -> (Nodes, Client) {
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    ns.set_map();
    let dev = ns.connect_pending(0, persistent(id));
    ns.link();
    connack(&mut ns, 0, &dev);
    ns.n[0].subscribe(&dev, "w/#", q(QoS::AtLeastOnce));
    ns.link();
    ns.n[0].drop_socket(&dev);
    ns.link();
    let publ = ns.connect_pending(2, Connect::new(V5, "pub"));
    ns.link();
    connack(&mut ns, 2, &publ);
    (ns, publ)
}

/// With session messages held: delivers them in order until node index
/// 0's handover to node index 1 is on its way (not delivered).
fn until_handover_sent(ns: &mut Nodes) {
    until_handover_from(ns, 0, 1);
}

/// [`until_handover_sent`] from node index `from` to node index `to`.
fn until_handover_from(ns: &mut Nodes, from: usize, to: usize) {
    ns.hold = true;
    ns.link();
    for _ in 0..50 {
        let sent = ns
            .held
            .iter()
            .any(|h| (h.0, h.1) == (from, to) && matches!(h.2, SessionMsg::Handover { .. }));
        if sent {
            return;
        }
        assert!(!ns.held.is_empty(), "the claim stalled");
        let h = ns.held.remove(0);
        ns.deliver_session(h);
        ns.link();
    }
    panic!("no handover");
}

fn deliver_all(ns: &mut Nodes) {
    ns.hold = false;
    while !ns.held.is_empty() {
        for h in std::mem::take(&mut ns.held) {
            ns.deliver_session(h);
        }
        ns.link();
    }
}

fn puback(ns: &mut Nodes, node: usize, c: &Client) -> Vec<ReasonCode> {
    ns.n[node]
        .recv(c)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .collect()
}

/// `dev` reconnects on node index 2: its session is there (session
/// present), and these are the payloads it gets.
fn back_on_node_2(ns: &mut Nodes) -> Vec<Bytes> {
    let dev = ns.connect_pending(2, persistent("dev"));
    ns.link();
    assert!(connack(ns, 2, &dev).session_present);
    let got: Vec<Bytes> = ns.n[2]
        .publishes(&dev)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    got
}

/// Node index 1 is cut off: nothing reaches it, what was on its way to
/// or from it is gone, session messages flow again.
fn cut_off_node_1(ns: &mut Nodes) {
    ns.down.insert(1);
    ns.held.retain(|h| h.0 != 1 && h.1 != 1);
    ns.hold = false;
}

/// Node index `n` finds node index 1 gone (its lease ended).
fn learns_node_1_gone(ns: &mut Nodes, n: usize) {
    for c in &mut ns.n[n].cores {
        c.handle_node_gone(NodeId(2));
    }
    ns.n[n].run();
}

/// Node index 1 dies with what was on its way to it: the others find it
/// gone, and node 0's link gives up the tokens of what it sent there (as
/// the runtime does, after the node is gone).
fn kill_node_1(ns: &mut Nodes) {
    let lost: Vec<(usize, u64)> = ns
        .held
        .iter()
        .filter(|h| h.1 == 1)
        .filter_map(|h| h.3)
        .collect();
    cut_off_node_1(ns);
    for n in [0, 2] {
        learns_node_1_gone(ns, n);
    }
    let now = ns.n[0].now;
    for (shard, token) in lost {
        ns.n[0].cores[shard].handle_cluster_lost(now, token);
    }
    ns.n[0].run();
    ns.set_map();
    ns.link();
}

#[test]
fn a_message_reaching_the_old_node_mid_handover_follows_the_session_once() {
    let (mut ns, publ) = setup();
    let dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    // Node 2 knows only node 0's route: node 1 has not got the session
    // yet. The message reaches node 0 after the session left it.
    ns.n[2].publish(&publ, "w/1", b"mid", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(
        puback(&mut ns, 2, &publ).is_empty(),
        "the PUBACK waits for the forwarded copy's link"
    );
    deliver_all(&mut ns);
    assert!(connack(&mut ns, 1, &dev).session_present);
    assert_eq!(puback(&mut ns, 2, &publ), [ReasonCode::SUCCESS]);
    // Node 2 now sends to node 1 directly and (node 0 still announcing
    // the filter in its grace) to node 0, which forwards: taken once.
    ns.n[2].publish(&publ, "w/2", b"both", QoS::AtLeastOnce, 2);
    ns.link();
    let got: Vec<Bytes> = ns.n[1]
        .publishes(&dev)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, [&b"mid"[..], b"both"]);
    assert_eq!(puback(&mut ns, 2, &publ), [ReasonCode::SUCCESS]);
    // After the grace node 0 stops forwarding (and announcing).
    for n in &mut ns.n {
        n.advance(MOVE_GRACE);
    }
    ns.link();
    ns.n[2].publish(&publ, "w/3", b"after", QoS::AtLeastOnce, 3);
    ns.link();
    let got = ns.n[1].publishes(&dev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"after");
}

#[test]
fn the_old_node_deletes_its_copy_once_the_new_node_stored_it() {
    let (mut ns, _publ) = setup();
    let home = home_shard("dev", 2).get();
    let deleted = |ns: &Nodes| {
        ns.n[0]
            .store_ops(home)
            .iter()
            .any(|op| matches!(op, StoreOp::DeleteClient(c) if c.as_str() == "dev"))
    };
    let dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    assert!(ns.n[0].cores[home].session("dev").is_none(), "left node 0");
    assert!(!deleted(&ns), "kept on disk while the handover travels");
    // The handover arrives; node 1's answer is on its way back.
    let at = ns
        .held
        .iter()
        .position(|h| matches!(h.2, SessionMsg::Handover { .. }))
        .unwrap();
    let h = ns.held.remove(at);
    ns.deliver_session(h);
    ns.link();
    assert!(
        ns.held
            .iter()
            .any(|h| (h.0, h.1) == (1, 0) && matches!(h.2, SessionMsg::Took { .. })),
        "{:?}",
        ns.held
    );
    assert!(!deleted(&ns));
    deliver_all(&mut ns);
    assert!(deleted(&ns), "deleted once node 1 has it");
    assert!(connack(&mut ns, 1, &dev).session_present);
}

#[test]
fn a_session_handed_to_a_node_that_dies_before_storing_it_comes_back() {
    let (mut ns, publ) = setup();
    ns.n[2].publish(&publ, "w/1", b"queued", QoS::AtLeastOnce, 1);
    ns.link();
    assert_eq!(puback(&mut ns, 2, &publ), [ReasonCode::SUCCESS]);
    let _dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    // Node 1 (index 1) dies with the handover on its way.
    cut_off_node_1(&mut ns);
    for n in [0, 2] {
        learns_node_1_gone(&mut ns, n);
    }
    ns.set_map();
    let home = home_shard("dev", 2).get();
    assert!(
        ns.n[0].cores[home].session("dev").is_some(),
        "the session is back on node 0"
    );
    // The client comes back on node 2: its session, with the message.
    let dev = ns.connect_pending(2, persistent("dev"));
    ns.link();
    assert!(connack(&mut ns, 2, &dev).session_present);
    let got = ns.n[2].publishes(&dev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"queued");
}

#[test]
fn a_handover_never_acknowledged_keeps_the_stored_copy_until_its_node_is_gone() {
    let (mut ns, publ) = setup();
    let home = home_shard("dev", 2).get();
    let deleted = |ns: &Nodes| {
        ns.n[0]
            .store_ops(home)
            .iter()
            .any(|op| matches!(op, StoreOp::DeleteClient(c) if c.as_str() == "dev"))
    };
    ns.n[2].publish(&publ, "w/1", b"queued", QoS::AtLeastOnce, 1);
    ns.link();
    let _dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    // The handover never arrives (node 1 is cut off, not yet gone).
    cut_off_node_1(&mut ns);
    for n in &mut ns.n {
        n.advance(MOVE_GRACE);
    }
    ns.link();
    assert!(!deleted(&ns), "kept while node 1 may still store it");
    assert!(ns.n[0].cores[home].session("dev").is_none());
    // Node 1's lease ends: the session is back on node 0, and a client
    // reconnecting on node 2 gets it with the message.
    for n in [0, 2] {
        learns_node_1_gone(&mut ns, n);
    }
    ns.set_map();
    assert!(ns.n[0].cores[home].session("dev").is_some());
    let got = back_on_node_2(&mut ns);
    assert_eq!(got, [&b"queued"[..]]);
}

#[test]
fn a_delivery_forwarded_to_a_node_that_dies_comes_back_with_the_session() {
    let (mut ns, publ) = setup();
    let _dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    // The message reaches node 0 after the session left: forwarded to
    // node 1 (held on the link with the handover).
    ns.n[2].publish(&publ, "w/1", b"mid", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(
        ns.held
            .iter()
            .any(|h| (h.0, h.1) == (0, 1) && matches!(h.2, SessionMsg::Forward(_))),
        "{:?}",
        ns.held
    );
    assert!(puback(&mut ns, 2, &publ).is_empty());
    // Node 1 dies with both on their way: node 0's link gives their
    // tokens up once node 1 is gone (as the runtime does).
    kill_node_1(&mut ns);
    assert_eq!(
        puback(&mut ns, 2, &publ),
        [ReasonCode::SUCCESS],
        "acknowledged: it is in the session restored on node 0"
    );
    let got = back_on_node_2(&mut ns);
    assert_eq!(got, [&b"mid"[..]]);
}

#[test]
fn a_delivery_forwarded_to_a_node_that_stored_the_session_and_died_is_kept() {
    let (mut ns, publ) = setup();
    let _dev = ns.connect_pending(1, persistent("dev"));
    until_handover_sent(&mut ns);
    ns.n[2].publish(&publ, "w/1", b"mid", QoS::AtLeastOnce, 1);
    ns.link();
    // Node 1 gets the session and stores it, node 0 hears so; the
    // forward is still on its way when node 1 dies.
    for _ in 0..10 {
        let Some(at) = ns
            .held
            .iter()
            .position(|h| matches!(h.2, SessionMsg::Handover { .. } | SessionMsg::Took { .. }))
        else {
            break;
        };
        let h = ns.held.remove(at);
        ns.deliver_session(h);
        ns.link();
    }
    let home = home_shard("dev", 2).get();
    assert!(ns.n[0].cores[home].session("dev").is_none());
    assert!(
        ns.held
            .iter()
            .any(|h| h.1 == 1 && matches!(h.2, SessionMsg::Forward(_))),
        "the forward is on its way: {:?}",
        ns.held
    );
    kill_node_1(&mut ns);
    assert_eq!(puback(&mut ns, 2, &publ), [ReasonCode::SUCCESS]);
    // A session of dev's subscriptions holds it on node 0 (it merges with
    // node 1's copy when node 1 returns).
    let got = back_on_node_2(&mut ns);
    assert_eq!(got, [&b"mid"[..]]);
}

/// A session restored on the node it left (its new node died before
/// storing it) registers again. The owner, which has not yet learned of
/// the death, still names the dead node and answers with a `Drop` into
/// it: the session stays (nothing is handed to a node known gone) and
/// registers again until the owner takes it, so the client reconnecting
/// finds it with what was queued meanwhile.
#[test]
fn a_restored_session_is_not_dropped_into_a_node_known_gone() {
    // The owner of the client's partition is node index 0.
    let id = id_owned_by("rg", NodeId(1));
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    ns.set_map();
    let dev = ns.connect_pending(2, persistent(&id));
    ns.link();
    connack(&mut ns, 2, &dev);
    ns.n[2].subscribe(&dev, "rg/#", q(QoS::AtLeastOnce));
    ns.link();
    ns.n[2].drop_socket(&dev);
    ns.link();
    let publ = ns.connect_pending(0, Connect::new(V5, "rg-pub"));
    ns.link();
    connack(&mut ns, 0, &publ);
    // The client connects on node index 1; the session is on its way
    // there from node index 2 when node index 1 dies.
    let _dev = ns.connect_pending(1, persistent(&id));
    until_handover_from(&mut ns, 2, 1);
    cut_off_node_1(&mut ns);
    // Node index 2 learns it first: the session is restored there and
    // registers with the owner, which still has node index 1 on record.
    learns_node_1_gone(&mut ns, 2);
    ns.link();
    let home = home_shard(&id, 2).get();
    assert!(
        ns.n[2].cores[home].session(&id).is_some(),
        "kept: not handed to a node known gone"
    );
    // Then the owner learns it.
    learns_node_1_gone(&mut ns, 0);
    for n in &mut ns.n {
        n.advance(REGISTER_RETRY);
    }
    ns.link();
    ns.n[0].publish(&publ, "rg/1", b"meanwhile", QoS::AtLeastOnce, 1);
    ns.link();
    assert_eq!(puback(&mut ns, 0, &publ), [ReasonCode::SUCCESS]);
    // The client comes back on the owner's node: its session moves there
    // with the message.
    let dev = ns.connect_pending(0, persistent(&id));
    ns.link();
    assert!(connack(&mut ns, 0, &dev).session_present);
    let got: Vec<Bytes> = ns.n[0]
        .publishes(&dev)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, [&b"meanwhile"[..]]);
}

/// The owner learns first that the node a session was handed to died
/// before storing it: the client reconnecting on the node the session
/// left, still waiting for that node's answer, gets the copy it kept
/// (session present, with its messages), not a fresh session over a
/// deleted copy.
#[test]
fn a_connect_on_the_old_node_before_it_learns_of_the_death_takes_the_kept_copy() {
    // The owner of the client's partition is node index 2.
    let id = id_owned_by("kc", NodeId(3));
    let (mut ns, publ) = setup_for(&id);
    ns.n[2].publish(&publ, "w/1", b"queued", QoS::AtLeastOnce, 1);
    ns.link();
    assert_eq!(puback(&mut ns, 2, &publ), [ReasonCode::SUCCESS]);
    let _dev = ns.connect_pending(1, persistent(&id));
    until_handover_sent(&mut ns);
    cut_off_node_1(&mut ns);
    // The owner learns it; node index 0 (where the session was) not yet.
    learns_node_1_gone(&mut ns, 2);
    let dev = ns.connect_pending(0, persistent(&id));
    ns.link();
    assert!(connack(&mut ns, 0, &dev).session_present);
    let got: Vec<Bytes> = ns.n[0]
        .publishes(&dev)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, [&b"queued"[..]]);
}
