//! A cluster (`[cluster]`) of vmqtt nodes on one real etcd (Debian
//! `etcd-server`, started by each test on free ports with a temporary data
//! directory): publishes and subscriptions across nodes with
//! mosquitto_pub/sub and rumqttc, retained messages everywhere, a node
//! killed with -9, and a peer port that refuses strangers. vmqtt only.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::clients::{p5, QoS5};
use crate::common::etcd::{free_ports, Etcd};
use crate::common::process::{
    line_within, lines_of, mosquitto_pub_lines, skip_without_mosquitto_clients, wait_exit,
};
use crate::common::*;

mod groups;
mod partitions;
mod split;
mod takeover;

/// The links' shared secret in the tests.
const SECRET: &str = "e2e-cluster-secret-0123456789abcdef";
/// Lease TTL of the test nodes, seconds.
const TTL: u64 = 2;

/// etcd and the nodes of one cluster.
struct Cluster {
    nodes: Vec<Broker>,
    /// Each node's peer port (shard i on + i).
    peer_ports: Vec<u16>,
    name: String,
    secret: PathBuf,
    /// The address the nodes' peer ports listen on (outside a namespace).
    peer_host: std::net::Ipv4Addr,
    // Last: dropped after the nodes, which leave it on their way out.
    etcd: Etcd,
}

fn scratch_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmqtt-e2e-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn cluster_toml(
    name: &str,
    id: u16,
    etcd: &[String],
    (host, peer): (std::net::Ipv4Addr, u16),
    secret: &std::path::Path,
) -> String {
    format!(
        "[cluster]\nname = {name:?}\nnode_id = {id}\netcd = {etcd:?}\n\
         listen = \"{host}:{peer}\"\nsecret_file = {:?}\nlease_ttl_seconds = {TTL}\n",
        secret.display().to_string()
    )
}

impl Cluster {
    /// `n` nodes (ids 1..=n) of a cluster named after the test, or `None`
    /// (after saying why) when the suite runs against Mosquitto.
    fn start(test: &str, n: u16) -> Option<Cluster> {
        Cluster::start_on(test, n, 1)
    }

    /// Like [`Cluster::start`], on an etcd of `members` members.
    fn start_on(test: &str, n: u16, members: usize) -> Option<Cluster> {
        let mut c = Cluster::empty(test, members, None)?;
        for id in 1..=n {
            c.add_node(test, id, None);
        }
        Some(c)
    }

    /// etcd (of `members` members, serving also on `host`) and no node yet.
    fn empty(test: &str, members: usize, host: Option<std::net::Ipv4Addr>) -> Option<Cluster> {
        if skip_on_mosquitto(test, "a cluster of vmqtt nodes") {
            return None;
        }
        let dir = scratch_dir(test);
        let etcd = Etcd::start_members_on(&dir, members, host);
        let secret = dir.join("link.secret");
        std::fs::write(&secret, SECRET).expect("write the secret");
        let name = test.replace('_', "-");
        let c = Cluster {
            nodes: Vec::new(),
            peer_ports: Vec::new(),
            name,
            secret,
            peer_host: host.unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            etcd,
        };
        Some(c)
    }

    fn add_node(&mut self, test: &str, id: u16, http_port: Option<u16>) {
        self.add_node_in(test, id, http_port, None);
    }

    /// Node `id`, in the network namespace `netns` (name, address) if
    /// given: its peer port on that address.
    fn add_node_in(
        &mut self,
        test: &str,
        id: u16,
        http_port: Option<u16>,
        netns: Option<(String, std::net::Ipv4Addr)>,
    ) {
        let peer = free_ports(SHARDS as u16);
        let host = netns.as_ref().map_or(self.peer_host, |n| n.1);
        let config = BrokerConfig {
            extra_toml: cluster_toml(&self.name, id, &self.etcd.urls, (host, peer), &self.secret),
            http_port,
            netns,
            ..BrokerConfig::default()
        };
        let b = Broker::start_with(&format!("{test}-n{id}"), config);
        // The MQTT port answers once one shard listens; the node is up
        // (every shard's peer port bound) when it says so.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b.log().contains("vmqtt listening") {
            assert!(Instant::now() < deadline, "node {id} never said it listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes.push(b);
        self.peer_ports.push(peer);
    }

    fn port(&self, node: usize) -> u16 {
        self.nodes[node].port()
    }

    /// `vmqtt-shard cluster status` with node `via`'s config.
    fn status(&self, via: usize) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vmqtt-shard"))
            .arg("--config")
            .arg(self.nodes[via].config_path())
            .args(["cluster", "status"])
            .output()
            .expect("run cluster status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Waits until every node has a link up to every other (each node's
    /// shard 0 dials every peer at once).
    fn wait_linked(&self) {
        let want = self.nodes.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, n) in self.nodes.iter().enumerate() {
            loop {
                let up = n
                    .log()
                    .lines()
                    .filter(|l| l.contains("node link: up") && l.contains("shard=0"))
                    .count();
                if up >= want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} has {up} of {want} links up",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Publishes `probe` payloads to `topic` on `port` until `seen` says the
/// subscriber got one: the subscription's route has reached the
/// publisher's node.
async fn probe_until(port: u16, topic: &str, mut seen: impl FnMut() -> bool) {
    let p = V5::new(port, &format!("probe-{port}-{}", topic.replace('/', "-"))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.publish(topic, QoS5::AtMostOnce, false, "probe").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if seen() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route of {topic} never reached the publisher's node"
        );
    }
    p.disconnect().await;
}

/// The next packet `want` takes within `within`, or `None` (never fails:
/// `V5::wait_event` panics at its deadline, so it gets a far one and is
/// cancelled here instead; its receive is cancel-safe).
async fn next_within<T>(
    sub: &mut V5,
    within: Duration,
    mut want: impl FnMut(&p5::Packet) -> Option<T>,
) -> Option<T> {
    let far = Duration::from_secs(3600);
    tokio::time::timeout(within, sub.wait_event("packet", far, &mut want))
        .await
        .ok()
        .and_then(Result::ok)
}

/// Like [`probe_until`] for a rumqttc subscriber: returns once it got a
/// probe (and drops the probes it got).
async fn probe_v5(port: u16, topic: &str, sub: &mut V5) {
    let p = V5::new(port, &format!("probe5-{port}-{}", topic.replace('/', "-"))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.publish(topic, QoS5::AtMostOnce, false, "probe").await;
        let got = next_within(sub, Duration::from_millis(200), |pk| match pk {
            p5::Packet::Publish(x) if &x.payload[..] == b"probe" => Some(()),
            _ => None,
        })
        .await;
        if got.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no route for {topic}");
    }
    p.disconnect().await;
    // Late probes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while next_within(sub, Duration::from_millis(100), |pk| match pk {
        p5::Packet::Publish(x) if &x.payload[..] == b"probe" => Some(()),
        _ => None,
    })
    .await
    .is_some()
    {}
}

/// The payloads a mosquitto_sub printed that are not probes or traces.
fn real(lines: &std::sync::mpsc::Receiver<String>, want: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l == "probe" || l.starts_with("Client ") || l.starts_with("Subscribed") => {}
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    got
}

/// mosquitto_sub on nodes 2 (3.1.1, `+`) and 3 (5, `#`) get what
/// mosquitto_pub publishes on node 1, at QoS 0, 1 and 2 with both protocol
/// versions: each message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mosquitto_clients_across_nodes() {
    let test = "cluster_mosquitto_clients_across_nodes";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    let Some(c) = Cluster::start(test, 3) else {
        return;
    };
    c.wait_linked();
    let subs = [(1, "mqttv311", "x/+/t"), (2, "mqttv5", "x/#")];
    let mut running = Vec::new();
    for (node, v, filter) in subs {
        let (sub, lines) = mosquitto_sub_on(c.port(node), &format!("sub-{node}"), filter, v, "2");
        running.push((sub, lines));
    }
    // Both routes reach node 1.
    for (_, lines) in &running {
        probe_until(c.port(0), "x/probe/t", || {
            lines.try_iter().any(|l| l == "probe")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, lines) in &running {
        let _: Vec<_> = lines.try_iter().collect();
    }
    let mut expected = Vec::new();
    for v in ["mqttv311", "mqttv5"] {
        for q in ["0", "1", "2"] {
            let payloads: Vec<String> = (1..=3).map(|i| format!("{v}-q{q}-{i}")).collect();
            let mut publ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &c.port(0).to_string()])
                .args([
                    "-i",
                    &format!("pub-{v}-{q}"),
                    "-t",
                    "x/a/t",
                    "-q",
                    q,
                    "-V",
                    v,
                    "-l",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn mosquitto_pub");
            {
                let mut stdin = publ.stdin.take().unwrap();
                for p in &payloads {
                    writeln!(stdin, "{p}").unwrap();
                }
            }
            let st = wait_exit(&mut publ, "mosquitto_pub", WAIT * 2);
            assert!(st.success(), "mosquitto_pub -V {v} -q {q}: {st}");
            expected.extend(payloads);
        }
    }
    for (i, (mut sub, lines)) in running.into_iter().enumerate() {
        let got = real(&lines, expected.len(), Duration::from_secs(15));
        // QoS 0 may not be lost on loopback either: everything, in order.
        assert_eq!(got, expected, "subscriber on node {}", i + 2);
        let _ = sub.kill();
        let _ = sub.wait();
    }
}

/// What a v5 publisher sets crosses the hop: user properties, content
/// type, response topic, correlation data, payload format, message expiry
/// (counted down, not reset), and the subscriber's own subscription
/// identifier; a client's `$` topic is refused as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_v5_properties_cross_the_hop() {
    let test = "cluster_v5_properties_cross_the_hop";
    let Some(c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let mut sub = V5::new(c.port(1), "props-sub").await;
    sub.client
        .subscribe_with_properties(
            "p/#",
            QoS5::AtLeastOnce,
            p5::SubscribeProperties {
                id: Some(42),
                user_properties: vec![],
            },
        )
        .await
        .unwrap();
    sub.wait_for("SUBACK", WAIT, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    probe_v5(c.port(0), "p/probe", &mut sub).await;
    let publ = V5::new(c.port(0), "props-pub").await;
    let props = p5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        topic_alias: None,
        response_topic: Some("p/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("k1".into(), "v1".into()), ("k1".into(), "v2".into())],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    };
    publ.client
        .publish_with_properties("p/a", QoS5::AtLeastOnce, false, "hello", props)
        .await
        .unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(&got.topic[..], b"p/a");
    let pr = got.properties.expect("properties crossed");
    assert_eq!(
        pr.user_properties,
        vec![("k1".into(), "v1".into()), ("k1".into(), "v2".into())]
    );
    assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
    assert_eq!(pr.response_topic.as_deref(), Some("p/reply"));
    assert_eq!(pr.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(pr.payload_format_indicator, Some(1));
    assert_eq!(pr.subscription_identifiers, vec![42]);
    let left = pr.message_expiry_interval.expect("expiry crossed");
    assert!((100..=120).contains(&left), "expiry counted down: {left}");
    // A client's `$` topic is refused on a node of a cluster as on one.
    let mut publ = publ;
    let first = publ
        .wait_for("PUBACK of hello", WAIT, |p| match p {
            p5::Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(first, p5::PubAckReason::Success);
    publ.client
        .publish("$p/x", QoS5::AtLeastOnce, false, "dollar")
        .await
        .unwrap();
    let ack = publ
        .wait_for("PUBACK", WAIT, |p| match p {
            p5::Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(ack, p5::PubAckReason::TopicNameInvalid);
    sub.expect_no_publish(Duration::from_millis(300), "`$p/x` crossed")
        .await;
    publ.disconnect().await;
    sub.disconnect().await;
}

/// Subscription options and topic aliases give the same result across the
/// hop as on one node: Retain As Published keeps RETAIN on live messages
/// from another node (and without it RETAIN is cleared); a publisher's
/// topic aliases are resolved on its node, a subscriber's are its own
/// (the link carries full topic names); No Local keeps a publisher's own
/// messages from it while they still reach the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subscription_options_and_topic_aliases_cross_the_hop() {
    let test = "cluster_subscription_options_and_topic_aliases_cross_the_hop";
    let Some(c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let opts = |rap: bool, no_local: bool| SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: rap,
        no_local,
        ..Default::default()
    };
    let mut rap = Raw::v5(c.port(1), "opt-rap").await;
    rap.subscribe_opts("x/#", opts(true, false), Default::default())
        .await;
    let mut plain = Raw::v5(c.port(1), "opt-plain").await;
    plain.subscribe("x/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V5P, "opt-aliased");
    connect.properties.topic_alias_maximum = Some(8);
    let (mut aliased, _) = Raw::connect_ok(c.port(1), connect).await;
    aliased.subscribe("x/#", QoS::AtLeastOnce).await;
    // Last on node 2's route stream: once it works on node 1, so do the
    // routes before it.
    plain.subscribe("probe/x", QoS::AtMostOnce).await;
    let (mut publ, ack) = Raw::connect_ok(c.port(0), connect_packet(V5P, "opt-pub")).await;
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) >= 1);
    publ.subscribe_opts("x/#", opts(false, true), Default::default())
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publ.publish_ok("probe/x", "probe", QoS::AtMostOnce, false)
            .await;
        if tokio::time::timeout(Duration::from_millis(200), plain.recv_publish())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no route from node 2");
    }
    while tokio::time::timeout(QUIET, plain.recv_publish())
        .await
        .is_ok()
    {}

    // (topic, alias, payload, retain) from node 1's publisher; "" uses the
    // alias set before.
    let sends = [
        ("x/a", "one", true),
        ("", "two", false),
        ("x/b", "three", true),
        ("", "four", false),
        ("x/a", "five", false),
    ];
    for (t, m, retain) in sends {
        let mut p = aliased_publish(t, m, 1);
        p.retain = retain;
        let ack = publ.publish(p).await.expect("PUBACK");
        assert!(ack.reason.0 < 0x80, "PUBACK for {m}: {ack:?}");
    }
    let topics = ["x/a", "x/a", "x/b", "x/b", "x/a"];
    let payloads = ["one", "two", "three", "four", "five"];
    for (sub, keeps_retain) in [(&mut rap, true), (&mut plain, false)] {
        for (i, want) in payloads.iter().enumerate() {
            let p = sub.recv_publish_acked().await;
            assert_eq!(
                (p.topic.as_str(), text(&p).as_str()),
                (topics[i], *want),
                "[{}]",
                sub.name
            );
            assert_eq!(p.properties.topic_alias, None, "[{}]", sub.name);
            let want_retain = keeps_retain && sends[i].2;
            assert_eq!(p.retain, want_retain, "[{}] RETAIN of {want}", sub.name);
        }
    }
    // The aliased subscriber: node 2 gives it aliases of its own.
    let mut aliases: BTreeMap<u16, String> = BTreeMap::new();
    let mut alias_only = 0;
    for (i, want) in payloads.iter().enumerate() {
        let p = aliased.recv_publish_acked().await;
        let name = match p.properties.topic_alias {
            Some(a) if p.topic.as_str().is_empty() => {
                alias_only += 1;
                aliases.get(&a).cloned().expect("an alias it was given")
            }
            Some(a) => {
                aliases.insert(a, p.topic.to_string());
                p.topic.to_string()
            }
            None => p.topic.to_string(),
        };
        assert_eq!((name.as_str(), text(&p).as_str()), (topics[i], *want));
    }
    assert!(
        alias_only >= 1,
        "node 2 used no outbound alias towards a client that allows them"
    );
    publ.expect_no_publish(QUIET, "its own message with No Local")
        .await;
}

/// A retained message set on node 1 is delivered to a new subscriber on
/// node 2 and node 3; cleared on node 2, no new subscriber anywhere gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_retained_messages_reach_every_node() {
    let test = "cluster_retained_messages_reach_every_node";
    let Some(c) = Cluster::start(test, 3) else {
        return;
    };
    c.wait_linked();
    let p = V5::new(c.port(0), "ret-pub").await;
    p.publish("r/state", QoS5::AtLeastOnce, true, "on").await;
    let mut p = p;
    p.wait_acks(1).await;
    for node in [1, 2] {
        // Replicated asynchronously: a new subscriber sees it soon.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = V5::new(c.port(node), &format!("ret-sub-{node}")).await;
            s.subscribe("r/#", QoS5::AtLeastOnce).await;
            let got = next_within(&mut s, Duration::from_millis(300), |pk| match pk {
                p5::Packet::Publish(x) => Some((x.payload.clone(), x.retain)),
                _ => None,
            })
            .await;
            s.disconnect().await;
            if let Some((payload, retain)) = got {
                assert_eq!(&payload[..], b"on");
                assert!(
                    retain,
                    "a retained message is delivered with RETAIN on subscribe"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never got the retained message",
                node + 1
            );
        }
    }
    // Cleared on node 2: gone on node 3 (and node 1).
    let mut clear = V5::new(c.port(1), "ret-clear").await;
    clear.publish("r/state", QoS5::AtLeastOnce, true, "").await;
    clear.wait_acks(1).await;
    for node in [2, 0] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = V5::new(c.port(node), &format!("ret-after-{node}")).await;
            s.subscribe("r/#", QoS5::AtLeastOnce).await;
            let got = next_within(&mut s, Duration::from_millis(300), |pk| match pk {
                p5::Packet::Publish(_) => Some(()),
                _ => None,
            })
            .await;
            s.disconnect().await;
            if got.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} kept the cleared message",
                node + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The retained messages (topic → payload) a new subscriber to `filter`
/// on `port` gets now: what came before 400 ms without one.
async fn retained_now(port: u16, id: &str, filter: &str) -> BTreeMap<String, String> {
    let mut s = connect_when_claimed(port, id).await;
    s.subscribe(filter, vmqtt::codec::QoS::AtLeastOnce).await;
    let mut got = BTreeMap::new();
    while let Ok(vmqtt::codec::Packet::Publish(x)) = s.recv(Duration::from_millis(400)).await {
        s.ack(&x).await;
        if x.retain {
            got.insert(x.topic.as_str().to_owned(), text(&x));
        }
    }
    s.disconnect().await;
    got
}

/// A v5 Raw client of `port`, connecting again (as clients do) while the
/// CONNACK is Server Unavailable: right after a node joins or leaves, a
/// client id whose partition is changing owner cannot be claimed yet.
async fn connect_when_claimed(port: u16, id: &str) -> Raw {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (c, ack) =
            Raw::connect_with(port, connect_packet(vmqtt::codec::ProtocolVersion::V5, id)).await;
        if ack.reason == vmqtt::codec::ReasonCode::SUCCESS {
            return c;
        }
        assert_eq!(
            ack.reason,
            vmqtt::codec::ReasonCode::SERVER_UNAVAILABLE,
            "{id}"
        );
        assert!(Instant::now() < deadline, "{id}: never claimed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls [`retained_now`] on `port` until it is `want` (20 s at most).
async fn wait_retained(port: u16, what: &str, want: &BTreeMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        let got = retained_now(port, &format!("ret-{port}-{round}"), "r/#").await;
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: retained {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node killed with -9 misses retained updates made elsewhere while it
/// is down: a change, a clear, a new topic. Restarted, it learns them
/// (the other node sends its replica to the new life), and its own stale
/// copies (the old value, the cleared topic) come back nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_away_gets_retained_updates_when_it_rejoins() {
    let test = "cluster_node_away_gets_retained_updates_when_it_rejoins";
    let Some(mut c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut p = V5::new(c.port(0), "rj-pub").await;
    p.publish("r/keep", QoS5::AtLeastOnce, true, "1").await;
    p.publish("r/gone", QoS5::AtLeastOnce, true, "1").await;
    p.wait_acks(2).await;
    let before = map(&[("r/gone", "1"), ("r/keep", "1")]);
    wait_retained(c.port(1), "node 2 before the kill", &before).await;

    c.nodes[1].kill9();
    p.publish("r/keep", QoS5::AtLeastOnce, true, "2").await;
    p.publish("r/gone", QoS5::AtLeastOnce, true, "").await;
    p.publish("r/new", QoS5::AtLeastOnce, true, "3").await;
    p.wait_acks(3).await;
    p.disconnect().await;

    c.nodes[1].restart();
    let after = map(&[("r/keep", "2"), ("r/new", "3")]);
    wait_retained(c.port(1), "node 2 after it rejoined", &after).await;
    // Node 2's stale copies did not overwrite node 1's (give its replica
    // time to arrive there).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.nodes[1].log().contains("node link: up") {
        assert!(Instant::now() < deadline, "node 2 never linked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(retained_now(c.port(0), "rj-check-1", "r/#").await, after);
    // And what node 2 learned is in its own store: restarted while node 1
    // is down, it still has it.
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    c.nodes[1].restart();
    // Until node 1's lease expires its partitions are its own: CONNECTs of
    // client ids there are refused (Server Unavailable) until the map
    // gives them to node 2.
    let deadline = Instant::now() + Duration::from_secs(TTL + 10);
    while !c.status(1).contains(" partitions 1024") {
        assert!(
            Instant::now() < deadline,
            "node 2 never got every partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_retained(c.port(1), "node 2 restarted alone", &after).await;
}

/// A node killed with -9: the other node drops its routes when its lease
/// expires, and a QoS 1 publisher whose message was for it is not held
/// (PUBACK comes). Restarted on its data directory, the node rejoins with
/// a new epoch, its persistent session's subscription is announced again
/// and messages from the other node reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_and_restarted() {
    let test = "cluster_node_killed_and_restarted";
    let Some(mut c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connection_timeout(10);
        o.set_session_expiry_interval(Some(3600));
    };
    let (mut sub, _) = V5::connect(c.port(1), "kill-sub", persistent).await;
    sub.subscribe("k/#", QoS5::AtLeastOnce).await;
    probe_v5(c.port(0), "k/probe", &mut sub).await;
    drop(sub);

    c.nodes[1].kill9();
    let mut p = V5::new(c.port(0), "kill-pub").await;
    p.publish("k/1", QoS5::AtLeastOnce, false, "while-dead")
        .await;
    // Held until the link acknowledges or the node is gone (its lease, TTL
    // seconds), then acknowledged.
    p.wait_for("PUBACK", Duration::from_secs(TTL + 10), |pk| {
        matches!(pk, p5::Packet::PubAck(_)).then_some(())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(TTL + 10);
    while !c.nodes[0].log().contains("node gone: its routes dropped") {
        assert!(Instant::now() < deadline, "node 1 never dropped node 2");
        std::thread::sleep(Duration::from_millis(100));
    }

    c.nodes[1].restart();
    let (mut sub, ack) = V5::connect(c.port(1), "kill-sub", persistent).await;
    assert!(
        ack.session_present,
        "the persistent session survived kill -9"
    );
    // Its route is announced again to node 1 (a new epoch, a fresh snapshot).
    probe_v5(c.port(0), "k/probe", &mut sub).await;
    p.publish("k/2", QoS5::AtLeastOnce, false, "after-restart")
        .await;
    let got = loop {
        let m = sub.recv_publish().await;
        if &m.payload[..] != b"probe" {
            break m;
        }
    };
    assert_eq!(&got.payload[..], b"after-restart");
    p.disconnect().await;
    sub.disconnect().await;
}

/// The peer port refuses what is not a node of this cluster with the
/// secret: garbage, a wrong secret, another cluster's name. Each is closed
/// and logged; the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_peer_port_refuses_strangers() {
    use vmqtt_cluster::{Epoch, Frame, Hello, NodeId, PROTOCOL_VERSION};
    let test = "cluster_peer_port_refuses_strangers";
    let Some(mut c) = Cluster::start(test, 1) else {
        return;
    };
    let port = c.peer_ports[0];
    let read_all = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };
    // Garbage: closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxx")
        .unwrap();
    let _ = read_all(s);
    // A Hello of another cluster: refused, with the reason.
    let hello = |cluster: &str| Hello {
        version: PROTOCOL_VERSION,
        cluster: cluster.into(),
        node: NodeId(77),
        epoch: Epoch(1),
        shard: 0,
        nonce: [7; 16],
    };
    let mut buf = bytes::BytesMut::new();
    Frame::Hello(hello("another")).encode(Instant::now(), &mut buf);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&buf).unwrap();
    let got = read_all(s);
    let mut got = bytes::BytesMut::from(&got[..]);
    match Frame::decode(&mut got, Instant::now()) {
        Ok(Some(Frame::Refuse(why))) => assert!(why.contains("cluster"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Right cluster, wrong secret: the proof fails.
    let mut buf = bytes::BytesMut::new();
    Frame::Hello(hello(&c.name)).encode(Instant::now(), &mut buf);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&buf).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).unwrap();
    let mut got = bytes::BytesMut::from(&first[..n]);
    assert!(
        matches!(
            Frame::decode(&mut got, Instant::now()),
            Ok(Some(Frame::Hello(_)))
        ),
        "the acceptor says who it is"
    );
    buf.clear();
    Frame::Proof([0; 32]).encode(Instant::now(), &mut buf);
    s.write_all(&buf).unwrap();
    let rest = read_all(s);
    let mut got = bytes::BytesMut::from(&rest[..]);
    assert!(
        matches!(
            Frame::decode(&mut got, Instant::now()),
            Ok(Some(Frame::Refuse(_)))
        ),
        "a wrong proof is refused"
    );
    // Still serving MQTT.
    let mut ok = V5::new(c.port(0), "still-here").await;
    ok.subscribe("a", QoS5::AtMostOnce).await;
    ok.disconnect().await;
    c.nodes[0].assert_alive();
    let log = c.nodes[0].log();
    assert!(log.contains("node link: refused"), "refusals are logged");
}

/// A node configured for a cluster whose etcd cannot be reached does not
/// start: it says so and exits.
#[test]
fn cluster_node_without_etcd_does_not_start() {
    let test = "cluster_node_without_etcd_does_not_start";
    if skip_on_mosquitto(test, "vmqtt's [cluster]") {
        return;
    }
    let dir = scratch_dir(test);
    let secret = dir.join("link.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let dead = crate::common::http::free_port();
    let config = dir.join("vmqtt.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n{}",
            dir.join("data").display().to_string(),
            cluster_toml(
                "nowhere",
                1,
                &[format!("http://127.0.0.1:{dead}")],
                (std::net::Ipv4Addr::LOCALHOST, free_ports(SHARDS as u16)),
                &secret
            )
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmqtt-shard"))
        .args(["--cores", &SHARDS.to_string(), "--listen"])
        .arg(format!("127.0.0.1:{}", crate::common::http::free_port()))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_exit(
        &mut child,
        "vmqtt-shard without etcd",
        Duration::from_secs(40),
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!st.success(), "must not start: {err}");
    assert!(err.contains("etcd"), "names etcd: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The membership is visible: `vmqtt-shard cluster status` lists every
/// node from etcd, `GET /cluster` the members and each shard's links, and
/// the metrics the link series.
#[test]
fn cluster_status_lists_members_and_links() {
    let test = "cluster_status_lists_members_and_links";
    let Some(mut c) = Cluster::start(test, 1) else {
        return;
    };
    let http = crate::common::http::free_port();
    c.add_node(test, 2, Some(http));
    c.wait_linked();
    let text = c.status(1);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("node ")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("node {} epoch ", i + 1)), "{l}");
        assert!(l.contains(&format!("mqtt 127.0.0.1:{}", c.port(i))), "{l}");
    }
    assert!(text.starts_with("controller node 1 epoch "), "{text}");
    // Published once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = crate::common::http::http_get(http, "/cluster");
        assert_eq!(status, 200);
        let metrics = crate::common::http::scrape(http);
        if json.contains("\"peer\":1,")
            && json.contains("\"up\":true")
            && metrics.contains("vmqtt_cluster_nodes 2")
            && metrics.contains("vmqtt_cluster_link_up{shard=\"0\",peer=\"1\"} 1")
            && metrics.contains("vmqtt_cluster_link_rtt_seconds{shard=\"0\",peer=\"1\"} ")
            // The map of two nodes reached this one.
            && json.contains("\"partitions\":512}")
            && metrics.contains("vmqtt_cluster_partitions_owned 512")
        {
            assert!(json.contains("\"etcd_up\":true"), "{json}");
            assert!(json.contains("\"controller\":1,"), "{json}");
            assert!(
                metrics.contains("vmqtt_cluster_is_controller 0"),
                "{metrics}"
            );
            // The round trip of a ping over loopback: measured, and short.
            let rtt: f64 = metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix("vmqtt_cluster_link_rtt_seconds{shard=\"0\",peer=\"1\"} ")
                })
                .and_then(|v| v.parse().ok())
                .unwrap();
            assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
            assert!(json.contains("\"rtt_us\":"), "{json}");
            break;
        }
        assert!(Instant::now() < deadline, "{json}\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// etcd killed: the nodes carry on with the membership they know —
/// messages still cross, publishers still get PUBACK — and say so in
/// `GET /cluster` and `vmqtt_cluster_etcd_up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_traffic_continues_while_etcd_is_down() {
    let test = "cluster_traffic_continues_while_etcd_is_down";
    let Some(mut c) = Cluster::start(test, 0) else {
        return;
    };
    let http = crate::common::http::free_port();
    c.add_node(test, 1, Some(http));
    c.add_node(test, 2, None);
    c.wait_linked();
    let mut sub = V5::new(c.port(1), "etcd-down-sub").await;
    sub.subscribe("e/#", QoS5::AtLeastOnce).await;
    probe_v5(c.port(0), "e/probe", &mut sub).await;
    c.etcd.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, json) = crate::common::http::http_get(http, "/cluster");
        let metrics = crate::common::http::scrape(http);
        if json.contains("\"etcd_up\":false") && metrics.contains("vmqtt_cluster_etcd_up 0") {
            assert!(
                json.contains("\"node\":2,"),
                "node 2 still a member: {json}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd down never reported: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut p = V5::new(c.port(0), "etcd-down-pub").await;
    for i in 0..10 {
        p.publish("e/1", QoS5::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    p.wait_acks(10).await;
    for i in 0..10 {
        let m = sub.recv_publish().await;
        assert_eq!(
            m.payload,
            format!("m{i}").into_bytes(),
            "in order, each once"
        );
    }
    assert!(c.nodes[0].log().contains("lost etcd"), "logged");
    p.disconnect().await;
    sub.disconnect().await;
}

/// A 3-member etcd whose leader is killed while messages cross: the nodes
/// keep their leases through the other members (no node is dropped) and
/// no acknowledged message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_the_etcd_leader_killed_mid_traffic() {
    let test = "cluster_survives_the_etcd_leader_killed_mid_traffic";
    let Some(mut c) = Cluster::start_on(test, 3, 3) else {
        return;
    };
    c.wait_linked();
    let mut sub = V5::new(c.port(2), "leader-sub").await;
    sub.subscribe("l/#", QoS5::AtLeastOnce).await;
    probe_v5(c.port(0), "l/probe", &mut sub).await;
    let mut p = V5::new(c.port(0), "leader-pub").await;
    let total = 300;
    for i in 0..total {
        if i == 100 {
            let leader = c.etcd.leader().expect("a leader");
            c.etcd.kill_member(leader);
        }
        p.publish("l/1", QoS5::AtLeastOnce, false, format!("m{i}"))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.wait_acks(total).await;
    for i in 0..total {
        let m = sub.recv_publish().await;
        assert_eq!(
            m.payload,
            format!("m{i}").into_bytes(),
            "in order, each once"
        );
    }
    // Leases were kept through the new leader: nobody left the cluster.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.etcd.leader().is_none() {
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(TTL + 1));
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.log();
        let etcd: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("etcd") || l.contains("lease") || l.contains("node gone"))
            .collect();
        assert!(
            !log.contains("node gone"),
            "node {} dropped a peer while etcd had a quorum:\n{}",
            i + 1,
            etcd.join("\n")
        );
    }
    p.disconnect().await;
    sub.disconnect().await;
}

/// paho-mqtt (Python) on two nodes: publisher on node 1, subscriber on
/// node 2, QoS 0/1/2 with 3.1.1 and 5 (`shards/tests/python/paho_cluster.py`).
#[test]
fn cluster_paho_clients_across_nodes() {
    let test = "cluster_paho_clients_across_nodes";
    let have = crate::common::process::have_paho();
    if skip_missing_external(test, "python3 with paho-mqtt 2.x", have) {
        return;
    }
    let Some(c) = Cluster::start(test, 2) else {
        return;
    };
    c.wait_linked();
    let path = crate::common::process::python_script("paho_cluster.py");
    let mut child = Command::new("python3")
        .arg(&path)
        .args(["--port-a", &c.port(0).to_string()])
        .args(["--port-b", &c.port(1).to_string()])
        .args(["--prefix", "paho-cl"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, "paho_cluster.py", Duration::from_secs(90));
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        status.success(),
        "paho_cluster.py failed ({status}):\n{text}"
    );
}

/// A mosquitto_sub of `filter` on `port` (QoS `qos`, protocol `v`), once
/// it has its SUBACK, and its output lines.
fn mosquitto_sub_on(
    port: u16,
    id: &str,
    filter: &str,
    v: &str,
    qos: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-i", id, "-t", filter])
        .args(["-q", qos, "-V", v, "-d", "-W", "90"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mosquitto_sub");
    let lines = lines_of(&mut sub);
    assert!(
        line_within(&lines, "received SUBACK", WAIT),
        "{id}: no SUBACK"
    );
    (sub, lines)
}

/// What `lines` printed within `within` that is not a probe or a trace.
fn drain_real(lines: &std::sync::mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    real(lines, usize::MAX, within)
}

/// `$share/g/...` with members on nodes 2 (3.1.1) and 3 (5), publisher on
/// node 1 (no member): each message reaches exactly one member, both
/// nodes' members take some. Then a member on node 1 too: node 1's
/// publishes stay with it (`across_nodes = "local_first"`), and a plain
/// subscriber beside the node 2 member does not make that member take
/// them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shared_subscription_takes_each_message_once() {
    let test = "cluster_shared_subscription_takes_each_message_once";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    let Some(c) = Cluster::start(test, 3) else {
        return;
    };
    c.wait_linked();
    let group = "$share/workers/jobs/#";
    let members = [
        mosquitto_sub_on(c.port(1), "worker-2", group, "mqttv311", "1"),
        mosquitto_sub_on(c.port(2), "worker-3", group, "mqttv5", "1"),
    ];
    // Both nodes' group routes reach node 1: probes alternate between
    // them once they have.
    let mut seen = [false, false];
    probe_until(c.port(0), "jobs/probe", || {
        for (i, (_, lines)) in members.iter().enumerate() {
            seen[i] |= lines.try_iter().any(|l| l == "probe");
        }
        seen == [true, true]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, lines) in &members {
        let _: Vec<_> = lines.try_iter().collect();
    }
    let sent: Vec<String> = (1..=40).map(|i| format!("job-{i}")).collect();
    mosquitto_pub_lines(c.port(0), "boss-1", "jobs/a", &sent, WAIT * 4);
    let got: Vec<Vec<String>> = members
        .iter()
        .map(|(_, lines)| drain_real(lines, Duration::from_secs(2)))
        .collect();
    let mut all: Vec<String> = got.concat();
    all.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(all, want, "each message to exactly one member: {got:?}");
    assert!(
        got.iter().all(|g| !g.is_empty()),
        "both nodes' members take a share: {got:?}"
    );

    // A member and a publisher on node 1, a plain subscriber on node 2.
    let local = mosquitto_sub_on(c.port(0), "worker-1", group, "mqttv5", "1");
    let plain = mosquitto_sub_on(c.port(1), "watcher-2", "jobs/#", "mqttv5", "1");
    probe_until(c.port(0), "jobs/probe2", || {
        plain.1.try_iter().any(|l| l == "probe")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, lines) in members.iter().chain([&local, &plain]) {
        let _: Vec<_> = lines.try_iter().collect();
    }
    let sent: Vec<String> = (1..=20).map(|i| format!("local-{i}")).collect();
    mosquitto_pub_lines(c.port(0), "boss-1b", "jobs/b", &sent, WAIT * 4);
    assert_eq!(
        drain_real(&local.1, Duration::from_secs(2)),
        sent,
        "node 1's member takes node 1's publishes, in order"
    );
    assert_eq!(drain_real(&plain.1, Duration::from_millis(500)), sent);
    for (i, (_, lines)) in members.iter().enumerate() {
        let extra = drain_real(lines, Duration::from_millis(300));
        assert!(
            extra.is_empty(),
            "member on node {} also took {extra:?}",
            i + 2
        );
    }
    for (mut child, _) in members.into_iter().chain([local, plain]) {
        let _ = child.kill();
        let _ = child.wait();
    }
}
