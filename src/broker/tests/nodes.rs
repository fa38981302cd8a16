//! Two nodes of a cluster, each a [`Cluster`] of simulated shards, joined by
//! a simulated link that carries what [`ShardCore::take_cluster_out`] gives
//! (as the runtime's node links do): routes from each node's speaker,
//! messages once per node, acknowledgements back to the publishing shard.

use super::*;

struct Nodes {
    a: Cluster,
    b: Cluster,
    /// Publish tokens the links have not acknowledged yet: (node, shard, token).
    unacked: Vec<(usize, usize, u64)>,
    /// Acknowledge links at once.
    ack_links: bool,
    /// The receivers' tickets of messages their publishers wait for:
    /// ticket → (node, shard, token) of the publisher's side.
    tickets: HashMap<u64, (usize, usize, u64)>,
    next_ticket: u64,
}

impl Nodes {
    fn new(shards: usize) -> Nodes {
        let mut n = Nodes {
            a: Cluster::new(shards),
            b: Cluster::new(shards),
            unacked: Vec::new(),
            ack_links: true,
            tickets: HashMap::new(),
            next_ticket: 0,
        };
        for core in n.a.cores.iter_mut().chain(n.b.cores.iter_mut()) {
            core.enable_cluster();
        }
        n
    }

    fn node(&mut self, i: usize) -> &mut Cluster {
        if i == 0 {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Moves what crosses between the nodes until nothing does.
    fn link(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                let peer = NodeId(if from == 0 { 2 } else { 1 });
                let me = NodeId(if from == 0 { 1 } else { 2 });
                for shard in 0..self.node(from).cores.len() {
                    let out = self.node(from).cores[shard].take_cluster_out();
                    for o in out {
                        moved = true;
                        let now = self.node(from).now;
                        let ticket = match &o {
                            ClusterOut::Publish { token: Some(t), .. } => {
                                self.next_ticket += 1;
                                self.tickets.insert(self.next_ticket, (from, shard, *t));
                                Some(self.next_ticket)
                            }
                            _ => None,
                        };
                        let to = if from == 0 { &mut self.b } else { &mut self.a };
                        match o {
                            ClusterOut::Publish { node, msg, .. } => {
                                assert_eq!(node, peer);
                                to.cores[0].handle_cluster_publish(
                                    now,
                                    Message::clone(&msg),
                                    ticket,
                                );
                            }
                            ClusterOut::Retain(msg) => {
                                to.cores[0].handle_cluster_retain(now, Message::clone(&msg))
                            }
                            ClusterOut::RouteAdd(f) => {
                                assert_eq!(shard, 0, "only the speaker announces");
                                for c in &mut to.cores {
                                    c.handle_node_routes(me, None, std::slice::from_ref(&f), &[]);
                                }
                            }
                            ClusterOut::RouteRemove(f) => {
                                for c in &mut to.cores {
                                    c.handle_node_routes(me, None, &[], std::slice::from_ref(&f));
                                }
                            }
                        }
                        to.run();
                    }
                }
            }
            // The receivers' done tickets: the link acknowledges them.
            for n in 0..2 {
                let done: Vec<u64> = self
                    .node(n)
                    .cores
                    .iter_mut()
                    .flat_map(|c| c.take_cluster_done())
                    .collect();
                for t in done {
                    moved = true;
                    if let Some(ack) = self.tickets.remove(&t) {
                        self.unacked.push(ack);
                    }
                }
            }
            if self.ack_links {
                moved |= !self.unacked.is_empty();
                self.release_acks();
            }
            if !moved {
                return;
            }
        }
    }

    fn release_acks(&mut self) {
        for (node, shard, token) in std::mem::take(&mut self.unacked) {
            let n = self.node(node);
            let now = n.now;
            n.cores[shard].handle_cluster_ack(now, token);
            n.run();
        }
    }
}

fn sub_on(ns: &mut Nodes, node: usize, id: &str, f: &str, v: ProtocolVersion) -> Client {
    let c = ns.node(node).connect(v, id);
    ns.node(node).subscribe(&c, f, q(QoS::ExactlyOnce));
    ns.link();
    c
}

#[test]
fn publishes_reach_subscribers_on_the_other_node_once_both_ways() {
    for v in [V3_1_1, V5] {
        let mut ns = Nodes::new(2);
        let sa = sub_on(&mut ns, 0, "sub-a", "t/+", v);
        let sb = sub_on(&mut ns, 1, "sub-b", "t/#", v);
        let pa = ns.a.connect(v, "pub-a");
        let pb = ns.b.connect(v, "pub-b");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            ns.a.publish(&pa, "t/1", b"from a", qos, 1);
            ns.link();
            ns.b.publish(&pb, "t/2", b"from b", qos, 2);
            ns.link();
            // Each subscriber once per message, with the publisher's QoS: no
            // loop back over the link.
            for (node, c) in [(0, &sa), (1, &sb)] {
                let got = ns.node(node).publishes(c);
                let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
                assert_eq!(payloads, [&b"from a"[..], b"from b"], "{v:?} {qos:?}");
                assert!(got.iter().all(|p| p.qos == qos));
                for p in got {
                    if let Some(id) = p.packet_id {
                        let ack = match qos {
                            QoS::AtLeastOnce => Packet::PubAck(PubResponse::new(id)),
                            _ => Packet::PubRec(PubResponse::new(id)),
                        };
                        ns.node(node).send(c, ack);
                        if qos == QoS::ExactlyOnce {
                            ns.node(node).recv(c);
                            ns.node(node).send(c, Packet::PubComp(PubResponse::new(id)));
                        }
                    }
                }
            }
            ns.a.recv(&pa);
            ns.b.recv(&pb);
        }
    }
}

#[test]
fn puback_waits_for_the_link_to_acknowledge() {
    let mut ns = Nodes::new(2);
    let _sb = sub_on(&mut ns, 1, "sub-b", "x/#", V5);
    let pa = ns.a.connect(V5, "pub-a");
    ns.ack_links = false;
    ns.a.publish(&pa, "x/1", b"m", QoS::AtLeastOnce, 7);
    ns.link();
    assert!(
        ns.a.recv(&pa).is_empty(),
        "PUBACK before the other node had it"
    );
    ns.release_acks();
    let got = ns.a.recv(&pa);
    assert!(
        matches!(&got[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS),
        "{got:?}"
    );
}

#[test]
fn routes_follow_subscriptions_and_leave_with_the_node() {
    let mut ns = Nodes::new(2);
    let sb = sub_on(&mut ns, 1, "sub-b", "r/+", V5);
    let pa = ns.a.connect(V5, "pub-a");
    ns.a.publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(matches!(&ns.a.recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS));
    assert_eq!(ns.b.publishes(&sb).len(), 1);
    // Unsubscribed on B: A no longer routes there (v5 says no subscribers).
    ns.b.send(
        &sb,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            properties: Default::default(),
            filters: vec![filter("r/+")],
        }),
    );
    let got = ns.b.recv(&sb);
    assert!(matches!(&got[..], [Packet::UnsubAck(_)]), "{got:?}");
    ns.link();
    ns.a.publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 2);
    ns.link();
    assert!(
        matches!(&ns.a.recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    // Subscribed again, then node B leaves: its routes go with it.
    ns.b.subscribe(&sb, "r/+", q(QoS::AtLeastOnce));
    ns.link();
    for core in &mut ns.a.cores {
        core.handle_node_gone(NodeId(2));
    }
    ns.a.publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 3);
    ns.link();
    assert!(
        matches!(&ns.a.recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
}

#[test]
fn a_snapshot_replaces_what_a_node_knew() {
    let mut ns = Nodes::new(1);
    let pa = ns.a.connect(V5, "pub-a");
    let core = &mut ns.a.cores[0];
    core.handle_node_routes(NodeId(2), None, &[filter("old/#")], &[]);
    core.handle_node_routes(NodeId(2), Some(vec![filter("new/#")]), &[], &[]);
    ns.a.publish(&pa, "old/1", b"m", QoS::AtLeastOnce, 1);
    assert!(
        matches!(&ns.a.recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    ns.a.publish(&pa, "new/1", b"m", QoS::AtMostOnce, 0);
    let out = ns.a.cores[0].take_cluster_out();
    assert!(matches!(
        &out[..],
        [ClusterOut::Publish {
            node: NodeId(2),
            token: None,
            ..
        }]
    ));
}

#[test]
fn sys_topics_stay_home_and_retained_messages_reach_every_node() {
    let mut ns = Nodes::new(2);
    let sb = sub_on(&mut ns, 1, "sub-b", "$SYS/#", V5);
    ns.a.advance(Duration::from_secs(60));
    ns.link();
    // B's subscriber sees B's own $SYS only: each carries B's uptime etc.;
    // none crossed (A's retained $SYS are not replicated either).
    let before = ns.b.publishes(&sb).len();
    ns.a.advance(Duration::from_secs(60));
    ns.link();
    assert_eq!(
        ns.b.publishes(&sb).len(),
        0,
        "A's $SYS crossed ({before} before)"
    );
    // A retained message set on A is delivered to a later subscriber on B;
    // an empty one clears it there too.
    let pa = ns.a.connect(V5, "pub-a");
    let mut p = Publish::new(topic("state/lamp"), Bytes::from_static(b"on"));
    p.retain = true;
    ns.a.send(&pa, Packet::Publish(p));
    ns.link();
    let late = sub_on(&mut ns, 1, "late-b", "state/#", V5);
    let got = ns.b.publishes(&late);
    assert!(
        matches!(&got[..], [p] if &p.payload[..] == b"on" && p.retain),
        "{got:?}"
    );
    let mut clear = Publish::new(topic("state/lamp"), Bytes::new());
    clear.retain = true;
    ns.a.send(&pa, Packet::Publish(clear));
    ns.link();
    ns.b.publishes(&late);
    let later = sub_on(&mut ns, 1, "later-b", "state/#", V5);
    assert!(ns.b.publishes(&later).is_empty());
}

#[test]
fn puback_waits_until_the_other_node_stored_the_message() {
    // A persistent session on B, whose home is not the shard the link
    // delivers to: B's storage must have the message before A's publisher
    // gets its PUBACK (the single-node durability contract, across nodes).
    let mut ns = Nodes::new(2);
    let id = (0..100)
        .map(|i| format!("durable-b-{i}"))
        .find(|id| home_shard(id, 2).get() == 1)
        .unwrap();
    let (sb, _) = ns.b.connect_with(persistent(V5, &id));
    ns.b.subscribe(&sb, "d/#", q(QoS::AtLeastOnce));
    ns.link();
    ns.b.send(&sb, Packet::Disconnect(Disconnect::default()));
    ns.b.run();
    ns.link();
    ns.b.hold_store = true;
    let pa = ns.a.connect(V5, "pub-a");
    ns.a.publish(&pa, "d/1", b"keep me", QoS::AtLeastOnce, 9);
    ns.link();
    assert!(
        ns.a.recv(&pa).is_empty(),
        "PUBACK before the other node stored the message"
    );
    ns.b.hold_store = false;
    for shard in 0..2 {
        ns.b.write_store(shard);
    }
    ns.link();
    let got = ns.a.recv(&pa);
    assert!(
        matches!(&got[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS),
        "{got:?}"
    );
}

#[test]
fn sys_reports_the_cluster() {
    let mut ns = Nodes::new(2);
    let _sub = sub_on(&mut ns, 0, "sub-a", "t/#", V5);
    ns.a.cores[0].set_cluster_status(ClusterStatus {
        nodes: 3,
        peers_linked: 1,
        etcd_up: false,
    });
    let s = sub_on(&mut ns, 0, "sys-a", "$SYS/broker/cluster/#", V5);
    ns.a.advance(Duration::from_secs(60));
    ns.link();
    let got: HashMap<String, String> =
        ns.a.publishes(&s)
            .into_iter()
            .map(|p| {
                (
                    p.topic.as_str().to_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )
            })
            .collect();
    assert_eq!(
        got.get("$SYS/broker/cluster/nodes").map(String::as_str),
        Some("3")
    );
    assert_eq!(
        got.get("$SYS/broker/cluster/peers linked")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got.get("$SYS/broker/cluster/etcd").map(String::as_str),
        Some("down")
    );
    assert_eq!(
        got.get("$SYS/broker/cluster/routes").map(String::as_str),
        Some("1")
    );
}
