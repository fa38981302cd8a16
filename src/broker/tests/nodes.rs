//! Nodes of a cluster, each a [`Cluster`] of simulated shards, joined by
//! simulated links that carry what [`ShardCore::take_cluster_out`] gives
//! (as the runtime's node links do): routes from each node's speaker,
//! messages once per node, acknowledgements back to the publishing shard.
//! Node `i` is `NodeId(i + 1)`.

use super::*;
use crate::broker::partition::PartitionMap;

mod groups;
mod moving;
mod takeover;
mod takeover_sim;

struct Nodes {
    n: Vec<Cluster>,
    /// Publish tokens the links have not acknowledged yet: (node, shard, token).
    unacked: Vec<(usize, usize, u64)>,
    /// Acknowledge links at once.
    ack_links: bool,
    /// The receivers' tickets of messages their publishers wait for:
    /// ticket → (node, shard, token) of the publisher's side.
    tickets: HashMap<u64, (usize, usize, u64)>,
    next_ticket: u64,
    /// Nodes cut off: nothing reaches them (until [`Nodes::rejoin`]).
    down: HashSet<usize>,
    /// Hold session messages in `held` instead of delivering them (the
    /// takeover simulation delivers them in an order of its choosing).
    hold: bool,
    /// Session messages on their way: (from, to, message, the sending
    /// shard and the token a forwarded delivery's sender waits with), in
    /// send order.
    held: Vec<Held>,
}

/// A client id named `{prefix}-{i}` whose partition `owner` owns in the
/// map of three nodes of two shards each (as [`Nodes::set_map`] makes it
/// for [`Nodes::with`]`(3, 2, ..)`).
fn id_owned_by(prefix: &str, owner: NodeId) -> String {
    let members = (1..=3u16).map(|i| (NodeId(i), 2u16)).collect();
    let map = PartitionMap::assign(None, &members).unwrap();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|c| map.owner(crate::broker::partition::partition_of(c)).node == owner)
        .unwrap()
}

/// A session message on its way: (from, to, message, sending shard and
/// token).
type Held = (usize, usize, SessionMsg, Option<(usize, u64)>);

/// The wall clock every simulated node starts at (unix ms).
const WALL_MS: u64 = 1_800_000_000_000;

impl Nodes {
    fn new(shards: usize) -> Nodes {
        Nodes::with(2, shards, CoreConfig::default())
    }

    /// `nodes` nodes of `shards` shards each, with storage attached (as
    /// [`Cluster::new`]).
    fn with(nodes: usize, shards: usize, config: CoreConfig) -> Nodes {
        Nodes::with_walls(shards, config, &vec![WALL_MS; nodes])
    }

    /// One node per entry of `walls`, its wall clock (unix ms) at the start.
    fn with_walls(shards: usize, config: CoreConfig, walls: &[u64]) -> Nodes {
        let nodes = walls.len();
        let config = CoreConfig {
            persistence: true,
            ..config
        };
        let mut n = Nodes {
            n: (0..nodes)
                .map(|_| Cluster::with_config(shards, config.clone()))
                .collect(),
            unacked: Vec::new(),
            ack_links: true,
            tickets: HashMap::new(),
            next_ticket: 0,
            down: HashSet::new(),
            hold: false,
            held: Vec::new(),
        };
        for (i, node) in n.n.iter_mut().enumerate() {
            let now = node.now;
            for core in &mut node.cores {
                core.enable_cluster(NodeId(i as u16 + 1), (now, walls[i]));
            }
        }
        n
    }

    /// Node `i` comes back: as the runtime's first link between two lives
    /// does (shard 0 to shard 0, both ways), each side sends the other its
    /// retained replica with the versions.
    fn rejoin(&mut self, i: usize) {
        self.down.remove(&i);
        let live = self.live();
        for node in &mut self.n {
            for c in &mut node.cores {
                c.set_members(&live);
            }
        }
        for j in 0..self.n.len() {
            if j == i || self.down.contains(&j) {
                continue;
            }
            for (from, to) in [(j, i), (i, j)] {
                let snapshot = self.n[from].cores[0].retained_snapshot();
                let now = self.n[to].now;
                for (msg, version) in snapshot {
                    self.n[to].cores[0].handle_cluster_retain(now, Message::clone(&msg), version);
                }
                self.n[to].run();
            }
        }
        self.link();
    }

    /// The nodes not down.
    fn live(&self) -> Vec<NodeId> {
        (0..self.n.len())
            .filter(|i| !self.down.contains(i))
            .map(|i| NodeId(i as u16 + 1))
            .collect()
    }

    fn node(&mut self, i: usize) -> &mut Cluster {
        &mut self.n[i]
    }

    /// Turns claims on: every core gets the partition map of the nodes not
    /// down (each owning about a third, etc.).
    fn set_map(&mut self) {
        let members = (0..self.n.len())
            .filter(|i| !self.down.contains(i))
            .map(|i| (NodeId(i as u16 + 1), self.n[i].cores.len() as u16))
            .collect();
        let map = Arc::new(PartitionMap::assign(None, &members).unwrap());
        let live = self.live();
        for node in &mut self.n {
            let now = node.now;
            for c in &mut node.cores {
                c.set_members(&live);
                c.set_partition_map(now, map.clone());
            }
            node.run();
        }
        self.link();
    }

    /// A CONNECT on node `node` whose CONNACK may wait for the cluster
    /// (call [`Nodes::link`], then read it).
    fn connect_pending(&mut self, node: usize, connect: Connect) -> Client {
        let n = &mut self.n[node];
        let shard = home_shard(&connect.client_id, n.cores.len()).get();
        let c = n.open(shard, connect.protocol);
        n.send(&c, Packet::Connect(Box::new(connect)));
        c
    }

    /// Moves session messages between the nodes; whether any moved.
    fn move_sessions(&mut self) -> bool {
        let mut moved = false;
        for from in 0..self.n.len() {
            let me = NodeId(from as u16 + 1);
            for shard in 0..self.n[from].cores.len() {
                for (node, msg, token) in self.n[from].cores[shard].take_session_out() {
                    moved = true;
                    assert_ne!(node, me, "handled in place");
                    let to = usize::from(node.0) - 1;
                    let token = token.map(|t| (shard, t));
                    if self.down.contains(&to) || self.down.contains(&from) {
                        // No link carries it: as the runtime's `lost`.
                        if let Some((shard, t)) = token {
                            let n = &mut self.n[from];
                            let now = n.now;
                            n.cores[shard].handle_cluster_lost(now, t);
                            n.run();
                        }
                        continue;
                    }
                    if self.hold {
                        self.held.push((from, to, msg, token));
                        continue;
                    }
                    self.deliver_session((from, to, msg, token));
                }
            }
        }
        moved
    }

    /// A session message arrives (a QoS 1/2 forwarded delivery with a
    /// ticket its link acknowledges, as the runtime's `apply`).
    fn deliver_session(&mut self, (from, to, msg, token): Held) {
        let me = NodeId(from as u16 + 1);
        let ticket = match &msg {
            SessionMsg::Forward(f) if f.qos != QoS::AtMostOnce => {
                self.next_ticket += 1;
                if let Some((shard, t)) = token {
                    self.tickets.insert(self.next_ticket, (from, shard, t));
                }
                Some(self.next_ticket)
            }
            _ => None,
        };
        let t = &mut self.n[to];
        let now = t.now;
        match (msg, ticket) {
            (SessionMsg::Forward(f), Some(ticket)) => {
                t.cores[0].handle_forward(now, *f, Some(ticket))
            }
            (msg, _) => t.cores[0].handle_session_msg(now, me, msg),
        }
        t.run();
    }

    /// Moves what crosses between the nodes until nothing does.
    fn link(&mut self) {
        loop {
            let mut moved = self.move_sessions();
            for from in 0..self.n.len() {
                let me = NodeId(from as u16 + 1);
                for shard in 0..self.n[from].cores.len() {
                    let out = self.n[from].cores[shard].take_cluster_out();
                    for o in out {
                        moved = true;
                        let now = self.n[from].now;
                        let ticket = match &o {
                            ClusterOut::Publish { token: Some(t), .. } => {
                                self.next_ticket += 1;
                                self.tickets.insert(self.next_ticket, (from, shard, *t));
                                Some(self.next_ticket)
                            }
                            _ => None,
                        };
                        let others: Vec<usize> = (0..self.n.len()).filter(|&i| i != from).collect();
                        let is_add = matches!(o, ClusterOut::RouteAdd(_));
                        match o {
                            ClusterOut::Publish {
                                node, msg, groups, ..
                            } => {
                                assert_ne!(node, me, "never to itself");
                                let to = &mut self.n[usize::from(node.0) - 1];
                                to.cores[0].handle_cluster_publish(
                                    now,
                                    Message::clone(&msg),
                                    ticket,
                                    groups,
                                );
                                to.run();
                            }
                            ClusterOut::GroupPublish { node, msg, groups } => {
                                assert_ne!(node, me, "never to itself");
                                let to = &mut self.n[usize::from(node.0) - 1];
                                to.cores[0].handle_cluster_group_publish(
                                    now,
                                    Message::clone(&msg),
                                    None,
                                    groups,
                                );
                                to.run();
                            }
                            ClusterOut::Retain(msg, version) => {
                                for i in others {
                                    if self.down.contains(&i) {
                                        continue;
                                    }
                                    let to = &mut self.n[i];
                                    to.cores[0].handle_cluster_retain(
                                        now,
                                        Message::clone(&msg),
                                        version,
                                    );
                                    to.run();
                                }
                            }
                            ClusterOut::RouteAdd(f) | ClusterOut::RouteRemove(f) => {
                                assert_eq!(shard, 0, "only the speaker announces");
                                let f = std::slice::from_ref(&f);
                                let (add, remove) =
                                    if is_add { (f, &[][..]) } else { (&[][..], f) };
                                for i in others {
                                    let to = &mut self.n[i];
                                    for c in &mut to.cores {
                                        c.handle_node_routes(me, None, add, remove);
                                    }
                                    to.run();
                                }
                            }
                        }
                    }
                }
            }
            // The receivers' done tickets: the link acknowledges them.
            for n in 0..self.n.len() {
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
        let pa = ns.n[0].connect(v, "pub-a");
        let pb = ns.n[1].connect(v, "pub-b");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            ns.n[0].publish(&pa, "t/1", b"from a", qos, 1);
            ns.link();
            ns.n[1].publish(&pb, "t/2", b"from b", qos, 2);
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
            ns.n[0].recv(&pa);
            ns.n[1].recv(&pb);
        }
    }
}

#[test]
fn puback_waits_for_the_link_to_acknowledge() {
    let mut ns = Nodes::new(2);
    let _sb = sub_on(&mut ns, 1, "sub-b", "x/#", V5);
    let pa = ns.n[0].connect(V5, "pub-a");
    ns.ack_links = false;
    ns.n[0].publish(&pa, "x/1", b"m", QoS::AtLeastOnce, 7);
    ns.link();
    assert!(
        ns.n[0].recv(&pa).is_empty(),
        "PUBACK before the other node had it"
    );
    ns.release_acks();
    let got = ns.n[0].recv(&pa);
    assert!(
        matches!(&got[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS),
        "{got:?}"
    );
}

/// A publish that will not reach its node (the node is gone, no stream can
/// take it) is not counted as delivered: MQTT 5 No matching subscribers.
#[test]
fn a_publish_lost_with_its_node_is_not_acknowledged_as_delivered() {
    let mut ns = Nodes::new(2);
    let _sb = sub_on(&mut ns, 1, "sub-b", "x/#", V5);
    let pa = ns.n[0].connect(V5, "pub-a");
    ns.ack_links = false;
    ns.n[0].publish(&pa, "x/1", b"m", QoS::AtLeastOnce, 7);
    ns.link();
    assert!(ns.n[0].recv(&pa).is_empty());
    let lost = std::mem::take(&mut ns.unacked);
    assert_eq!(lost.len(), 1);
    for (node, shard, token) in lost {
        let n = ns.node(node);
        let now = n.now;
        n.cores[shard].handle_cluster_lost(now, token);
        n.run();
    }
    let got = ns.n[0].recv(&pa);
    assert!(
        matches!(&got[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS),
        "{got:?}"
    );
}

#[test]
fn routes_follow_subscriptions_and_leave_with_the_node() {
    let mut ns = Nodes::new(2);
    let sb = sub_on(&mut ns, 1, "sub-b", "r/+", V5);
    let pa = ns.n[0].connect(V5, "pub-a");
    ns.n[0].publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 1);
    ns.link();
    assert!(
        matches!(&ns.n[0].recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS)
    );
    assert_eq!(ns.n[1].publishes(&sb).len(), 1);
    // Unsubscribed on B: A no longer routes there (v5 says no subscribers).
    ns.n[1].send(
        &sb,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            properties: Default::default(),
            filters: vec![filter("r/+")],
        }),
    );
    let got = ns.n[1].recv(&sb);
    assert!(matches!(&got[..], [Packet::UnsubAck(_)]), "{got:?}");
    ns.link();
    ns.n[0].publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 2);
    ns.link();
    assert!(
        matches!(&ns.n[0].recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    // Subscribed again, then node B leaves: its routes go with it.
    ns.n[1].subscribe(&sb, "r/+", q(QoS::AtLeastOnce));
    ns.link();
    for core in &mut ns.n[0].cores {
        core.handle_node_gone(NodeId(2));
    }
    ns.n[0].publish(&pa, "r/1", b"m", QoS::AtLeastOnce, 3);
    ns.link();
    assert!(
        matches!(&ns.n[0].recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
}

#[test]
fn a_snapshot_replaces_what_a_node_knew() {
    let mut ns = Nodes::new(1);
    let pa = ns.n[0].connect(V5, "pub-a");
    let core = &mut ns.n[0].cores[0];
    core.handle_node_routes(NodeId(2), None, &[filter("old/#")], &[]);
    core.handle_node_routes(NodeId(2), Some(vec![filter("new/#")]), &[], &[]);
    ns.n[0].publish(&pa, "old/1", b"m", QoS::AtLeastOnce, 1);
    assert!(
        matches!(&ns.n[0].recv(&pa)[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
    ns.n[0].publish(&pa, "new/1", b"m", QoS::AtMostOnce, 0);
    let out = ns.n[0].cores[0].take_cluster_out();
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
    ns.n[0].advance(Duration::from_secs(60));
    ns.link();
    // B's subscriber sees B's own $SYS only: each carries B's uptime etc.;
    // none crossed (A's retained $SYS are not replicated either).
    let before = ns.n[1].publishes(&sb).len();
    ns.n[0].advance(Duration::from_secs(60));
    ns.link();
    assert_eq!(
        ns.n[1].publishes(&sb).len(),
        0,
        "A's $SYS crossed ({before} before)"
    );
    // A retained message set on A is delivered to a later subscriber on B;
    // an empty one clears it there too.
    let pa = ns.n[0].connect(V5, "pub-a");
    let mut p = Publish::new(topic("state/lamp"), Bytes::from_static(b"on"));
    p.retain = true;
    ns.n[0].send(&pa, Packet::Publish(p));
    ns.link();
    let late = sub_on(&mut ns, 1, "late-b", "state/#", V5);
    let got = ns.n[1].publishes(&late);
    assert!(
        matches!(&got[..], [p] if &p.payload[..] == b"on" && p.retain),
        "{got:?}"
    );
    let mut clear = Publish::new(topic("state/lamp"), Bytes::new());
    clear.retain = true;
    ns.n[0].send(&pa, Packet::Publish(clear));
    ns.link();
    ns.n[1].publishes(&late);
    let later = sub_on(&mut ns, 1, "later-b", "state/#", V5);
    assert!(ns.n[1].publishes(&later).is_empty());
}

fn set_retained(ns: &mut Nodes, node: usize, c: &Client, t: &str, payload: &'static [u8]) {
    let mut p = Publish::new(topic(t), Bytes::from_static(payload));
    p.retain = true;
    ns.n[node].send(c, Packet::Publish(p));
    ns.link();
}

/// (topic, payload) of the retained messages a new subscriber to `f` on
/// `node` gets.
fn retained_on(ns: &mut Nodes, node: usize, id: &str, f: &str) -> Vec<(String, Bytes)> {
    let c = sub_on(ns, node, id, f, V5);
    let mut got: Vec<(String, Bytes)> = ns.n[node]
        .publishes(&c)
        .into_iter()
        .map(|p| (p.topic.to_string(), p.payload))
        .collect();
    got.sort();
    got
}

#[test]
fn a_node_away_during_retained_updates_gets_them_when_it_rejoins() {
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    let pa = ns.n[0].connect(V5, "pub-a");
    let pb = ns.n[1].connect(V5, "pub-b");
    set_retained(&mut ns, 0, &pa, "cfg/old", b"1");
    set_retained(&mut ns, 0, &pa, "cfg/kept", b"1");
    assert_eq!(retained_on(&mut ns, 2, "c0", "cfg/#").len(), 2);
    // C is away while A clears one topic, changes another, B sets a third.
    ns.down.insert(2);
    set_retained(&mut ns, 0, &pa, "cfg/old", b"");
    set_retained(&mut ns, 0, &pa, "cfg/kept", b"2");
    set_retained(&mut ns, 1, &pb, "cfg/new", b"3");
    ns.n[2].advance(Duration::from_secs(5));
    ns.rejoin(2);
    let want = vec![
        ("cfg/kept".to_string(), Bytes::from_static(b"2")),
        ("cfg/new".to_string(), Bytes::from_static(b"3")),
    ];
    for node in 0..3 {
        // C's stale copies (cfg/old, cfg/kept = 1) came back nowhere.
        assert_eq!(
            retained_on(&mut ns, node, &format!("s{node}"), "cfg/#"),
            want,
            "node {node}"
        );
    }
    // C's topic home stored what it learned, and the clear as a tombstone.
    let stored: Vec<(String, usize)> = (0..2)
        .flat_map(|s| ns.n[2].store_ops(s))
        .filter_map(|o| match o {
            StoreOp::PutRetained(m, _) => Some((m.topic.to_string(), m.payload.len())),
            _ => None,
        })
        .collect();
    for t in ["cfg/kept", "cfg/new"] {
        assert!(stored.contains(&(t.to_string(), 1)), "{t}: {stored:?}");
    }
    assert!(stored.contains(&("cfg/old".to_string(), 0)), "{stored:?}");
}

#[test]
fn the_later_retained_update_wins_on_every_node_even_from_a_slow_clock() {
    // B's wall clock is a minute behind A's.
    let mut ns = Nodes::with_walls(1, CoreConfig::default(), &[WALL_MS, WALL_MS - 60_000]);
    let (pa, pb) = (ns.n[0].connect(V5, "pa"), ns.n[1].connect(V5, "pb"));
    set_retained(&mut ns, 0, &pa, "t", b"from-a");
    set_retained(&mut ns, 1, &pb, "t", b"from-b-later");
    for node in 0..2 {
        assert_eq!(
            retained_on(&mut ns, node, &format!("s{node}"), "t"),
            vec![("t".to_string(), Bytes::from_static(b"from-b-later"))],
            "node {node}"
        );
    }
    // Two updates crossing each other (each made before the other
    // arrived) end the same on both nodes.
    ns.down.insert(1);
    set_retained(&mut ns, 0, &pa, "x", b"a");
    ns.down.clear();
    ns.down.insert(0);
    set_retained(&mut ns, 1, &pb, "x", b"b");
    ns.rejoin(0);
    let on_a = retained_on(&mut ns, 0, "xa", "x");
    assert_eq!(on_a, retained_on(&mut ns, 1, "xb", "x"));
    assert_eq!(on_a.len(), 1);
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
    let (sb, _) = ns.n[1].connect_with(persistent(V5, &id));
    ns.n[1].subscribe(&sb, "d/#", q(QoS::AtLeastOnce));
    ns.link();
    ns.n[1].send(&sb, Packet::Disconnect(Disconnect::default()));
    ns.n[1].run();
    ns.link();
    ns.n[1].hold_store = true;
    let pa = ns.n[0].connect(V5, "pub-a");
    ns.n[0].publish(&pa, "d/1", b"keep me", QoS::AtLeastOnce, 9);
    ns.link();
    assert!(
        ns.n[0].recv(&pa).is_empty(),
        "PUBACK before the other node stored the message"
    );
    ns.n[1].hold_store = false;
    for shard in 0..2 {
        ns.n[1].write_store(shard);
    }
    ns.link();
    let got = ns.n[0].recv(&pa);
    assert!(
        matches!(&got[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS),
        "{got:?}"
    );
}

#[test]
fn sys_reports_the_cluster() {
    let mut ns = Nodes::new(2);
    let _sub = sub_on(&mut ns, 0, "sub-a", "t/#", V5);
    ns.n[0].cores[0].set_cluster_status(ClusterStatus {
        nodes: 3,
        peers_linked: 1,
        etcd_up: false,
    });
    let s = sub_on(&mut ns, 0, "sys-a", "$SYS/broker/cluster/#", V5);
    ns.n[0].advance(Duration::from_secs(60));
    ns.link();
    let got: HashMap<String, String> = ns.n[0]
        .publishes(&s)
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

/// A QoS 0 member of `filter` on node `node`.
fn member_on(ns: &mut Nodes, node: usize, id: &str, filter: &str) -> Client {
    let c = ns.node(node).connect(V5, id);
    ns.node(node).subscribe(&c, filter, q(QoS::AtMostOnce));
    ns.link();
    c
}

/// `n` QoS 0 messages on `topic` from a fresh publisher on `node`.
fn publish_n(ns: &mut Nodes, node: usize, id: &str, topic: &str, n: u16) {
    let p = ns.node(node).connect(V5, id);
    for i in 0..n {
        ns.node(node)
            .publish(&p, topic, b"job", QoS::AtMostOnce, i + 1);
        ns.node(node).run();
        ns.link();
    }
}

fn counts(ns: &mut Nodes, members: &[(usize, &Client)]) -> Vec<usize> {
    members
        .iter()
        .map(|(node, c)| ns.node(*node).publishes(c).len())
        .collect()
}

#[test]
fn a_group_across_nodes_takes_each_message_once_its_own_node_first() {
    let mut ns = Nodes::with(3, 2, CoreConfig::default());
    let m1 = member_on(&mut ns, 0, "m1", "$share/g/jobs/+");
    let m2 = member_on(&mut ns, 1, "m2", "$share/g/jobs/+");
    // A plain subscriber beside m2: the message crosses to node 2 for it,
    // and node 2's member must not take it a second time.
    let plain = member_on(&mut ns, 1, "plain", "jobs/#");
    let ms = [(0, &m1), (1, &m2)];

    publish_n(&mut ns, 0, "pub-1", "jobs/a", 20);
    assert_eq!(
        counts(&mut ns, &ms),
        [20, 0],
        "node 1's publishes to node 1's member"
    );
    assert_eq!(ns.node(1).publishes(&plain).len(), 20);

    publish_n(&mut ns, 1, "pub-2", "jobs/b", 20);
    assert_eq!(counts(&mut ns, &ms), [0, 20], "node 2's to node 2's");
    assert_eq!(ns.node(1).publishes(&plain).len(), 20);

    // Node 3 has no member: its publishes are spread over the nodes that
    // do, one member each time.
    publish_n(&mut ns, 2, "pub-3", "jobs/c", 20);
    assert_eq!(counts(&mut ns, &ms), [10, 10], "round robin over nodes");
    assert_eq!(ns.node(1).publishes(&plain).len(), 20);

    // m2 leaves: node 2's route for the group goes, node 3 sends all to m1.
    ns.node(1).send(
        &m2,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(9),
            filters: vec![filter("$share/g/jobs/+")],
            properties: Default::default(),
        }),
    );
    ns.node(1).run();
    ns.link();
    ns.node(1).recv(&m2);
    publish_n(&mut ns, 2, "pub-3b", "jobs/c", 10);
    assert_eq!(counts(&mut ns, &ms), [10, 0]);
}

#[test]
fn spread_gives_every_node_with_members_its_turn_and_hash_keeps_a_publisher() {
    let mut config = CoreConfig::default();
    config.shared.across_nodes = AcrossNodes::Spread;
    config.shared.rules = vec![("by-client".into(), Strategy::HashClient)];
    let mut ns = Nodes::with(3, 2, config);
    let m: Vec<Client> = (0..3)
        .map(|i| member_on(&mut ns, i, &format!("m{i}"), "$share/g/jobs/#"))
        .collect();
    let ms: Vec<(usize, &Client)> = m.iter().enumerate().collect();
    publish_n(&mut ns, 0, "pub", "jobs/1", 30);
    assert_eq!(counts(&mut ns, &ms), [10, 10, 10]);

    let h: Vec<Client> = (0..3)
        .map(|i| member_on(&mut ns, i, &format!("h{i}"), "$share/by-client/jobs/#"))
        .collect();
    let hs: Vec<(usize, &Client)> = h.iter().enumerate().collect();
    counts(&mut ns, &ms);
    for p in 0..6 {
        publish_n(&mut ns, p % 3, &format!("hp{p}"), "jobs/2", 5);
        let got = counts(&mut ns, &hs);
        assert_eq!(got.iter().sum::<usize>(), 5, "{got:?}");
        assert!(got.contains(&5), "one publisher, one member: {got:?}");
        assert_eq!(counts(&mut ns, &ms).iter().sum::<usize>(), 5);
    }
}

#[test]
fn puback_for_a_group_on_another_node_waits_for_its_store() {
    let mut ns = Nodes::new(2);
    let m = ns.node(1).connect(V5, "worker");
    ns.node(1)
        .subscribe(&m, "$share/w/task", q(QoS::AtLeastOnce));
    ns.link();
    ns.ack_links = false;
    let p = ns.node(0).connect(V5, "boss");
    ns.node(0)
        .publish(&p, "task", b"do it", QoS::AtLeastOnce, 1);
    ns.node(0).run();
    ns.link();
    assert!(
        ns.node(0).recv(&p).is_empty(),
        "no PUBACK before the other node has it"
    );
    let got = ns.node(1).publishes(&m);
    assert!(
        matches!(&got[..], [g] if &g.payload[..] == b"do it"),
        "{got:?}"
    );
    ns.release_acks();
    let acks = ns.node(0).recv(&p);
    assert!(
        matches!(&acks[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS),
        "{acks:?}"
    );
}
