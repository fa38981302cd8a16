//! One session per client id across the cluster, with real clients: the
//! same client id connecting to another node takes its session over
//! (subscriptions, queued and in-flight QoS 1/2 messages), the old
//! connection is closed with 0x8E, and two CONNECTs at once leave one.

use super::*;
use crate::common::raw::RecvError;
use vmqtt::codec::{Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode};

/// A cluster of `n` whose partition map is written (claims are on).
fn claims_on(test: &str, n: u16) -> Option<Cluster> {
    let c = Cluster::start(test, n)?;
    c.wait_linked();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..c.nodes.len() {
        while !c.nodes[i].log().contains("partition map: claims") {
            assert!(Instant::now() < deadline, "node {} never got a map", i + 1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Every node's map has every node (the last join's map).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = c.status(0);
        let owners = status
            .lines()
            .filter(|l| l.starts_with("node ") && !l.ends_with(" partitions 0"))
            .count();
        if owners == usize::from(n) {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last map reached every shard (logged after it was applied).
    std::thread::sleep(Duration::from_millis(300));
    Some(c)
}

/// v3.1.1 and v5 (Raw clients): a subscriber on node 1 with QoS 1 and 2
/// messages in flight and queued goes away; it connects to node 2 and
/// finds its session: the in-flight ones resent with DUP and the packet
/// ids it saw, then the queue in order, each once; later messages reach it
/// on node 2, and node 1 no longer has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_session_moves_to_the_node_the_client_connects_to() {
    let test = "cluster_session_moves_to_the_node_the_client_connects_to";
    let Some(c) = claims_on(test, 3) else {
        return;
    };
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("mover-{}", v as u8);
        let topic_f = format!("mv{}/#", v as u8);
        let t = |i: usize| format!("mv{}/{i}", v as u8);
        let (mut dev, ack) = Raw::connect_ok(c.port(0), persistent(v, &id, true, 3600)).await;
        assert!(!ack.session_present);
        dev.subscribe(&topic_f, QoS::ExactlyOnce).await;
        let mut publ = Raw::v5(c.port(2), &format!("mover-pub-{}", v as u8)).await;
        // The route reaches node 3.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            publ.publish_ok(&t(0), "probe", QoS::AtMostOnce, false)
                .await;
            if let Ok(Packet::Publish(p)) = dev.recv(Duration::from_millis(200)).await {
                if text(&p) == "probe" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "no route");
        }
        while dev.recv(Duration::from_millis(300)).await.is_ok() {}
        // Two in flight, unacknowledged (one QoS 2 at PUBREL).
        publ.publish_ok(&t(1), "m1", QoS::AtLeastOnce, false).await;
        publ.publish_ok(&t(2), "m2", QoS::ExactlyOnce, false).await;
        let p1 = dev.recv_publish().await;
        let p2 = dev.recv_publish().await;
        assert_eq!((text(&p1).as_str(), text(&p2).as_str()), ("m1", "m2"));
        let id2 = p2.packet_id.unwrap();
        dev.send(&Packet::PubRec(PubResponse::new(id2))).await;
        dev.wait_for("PUBREL", WAIT, |p| {
            matches!(p, Packet::PubRel(_)).then_some(())
        })
        .await;
        drop(dev);
        // Queued while it is away.
        for i in 3..=12 {
            publ.publish_ok(&t(i), &format!("m{i}"), QoS::AtLeastOnce, false)
                .await;
        }
        let t0 = Instant::now();
        let (mut dev, ack) = Raw::connect_ok(c.port(1), persistent(v, &id, false, 3600)).await;
        let took = t0.elapsed();
        assert!(ack.session_present, "{v:?}: the session came along");
        eprintln!(
            "[{test}] {v:?}: takeover CONNECT -> CONNACK {} ms",
            took.as_millis()
        );
        let r1 = dev.recv_publish().await;
        assert_eq!(text(&r1), "m1");
        assert!(r1.dup, "{v:?}: resent with DUP");
        assert_eq!(r1.packet_id, p1.packet_id, "{v:?}: the id it saw");
        dev.ack(&r1).await;
        let rel = dev
            .wait_for("PUBREL", WAIT, |p| match p {
                Packet::PubRel(r) => Some(r.packet_id),
                _ => None,
            })
            .await;
        assert_eq!(rel, id2, "{v:?}: the QoS 2 flow goes on, not resent");
        dev.send(&Packet::PubComp(PubResponse::new(id2))).await;
        for i in 3..=12 {
            let p = dev.recv_publish_acked().await;
            assert_eq!(text(&p), format!("m{i}"), "{v:?}: in order");
        }
        dev.expect_no_publish(Duration::from_millis(500), "each once")
            .await;
        publ.publish_ok(&t(13), "after", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&dev.recv_publish_acked().await), "after");
        dev.disconnect().await;
        publ.disconnect().await;
    }
    assert!(
        c.nodes[1].log().contains("session_present=true"),
        "node 2 logged the resumed session"
    );
}

/// A client connected on node 1 is taken over by a CONNECT of its id on
/// node 2: node 1's connection gets DISCONNECT 0x8E (v5) and closes; the
/// mosquitto_sub it replaced (v3.1.1, clean session 0) gets its messages
/// on the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_takeover_closes_the_old_connection() {
    let test = "cluster_takeover_closes_the_old_connection";
    let Some(c) = claims_on(test, 2) else {
        return;
    };
    let (mut old, _) = Raw::connect_ok(
        c.port(0),
        persistent(ProtocolVersion::V5, "twin", true, 600),
    )
    .await;
    old.subscribe("tw/#", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect_ok(
        c.port(1),
        persistent(ProtocolVersion::V5, "twin", false, 600),
    )
    .await;
    assert!(ack.session_present);
    let reason = old
        .wait_for("DISCONNECT", WAIT, |p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, ReasonCode::SESSION_TAKEN_OVER);
    // The subscription came along.
    let mut publ = Raw::v5(c.port(0), "twin-pub").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publ.publish_ok("tw/1", "hello", QoS::AtLeastOnce, false)
            .await;
        if let Ok(Packet::Publish(p)) = new.recv(Duration::from_millis(300)).await {
            assert_eq!(text(&p), "hello");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery on the new node");
    }
    old.expect_closed(WAIT).await;
    new.disconnect().await;
    publ.disconnect().await;
}

/// mosquitto_sub with a persistent session (3.1.1, `-c`): subscribed on
/// node 1 and stopped; messages published meanwhile (QoS 1, mosquitto_pub
/// on node 2) are printed by `mosquitto_sub -c` of the same id on node 2.
#[test]
fn cluster_mosquitto_persistent_session_follows_the_client() {
    let test = "cluster_mosquitto_persistent_session_follows_the_client";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    let Some(c) = claims_on(test, 2) else {
        return;
    };
    let sub = |port: u16| {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-i", "mq-follow", "-c"])
            .args(["-t", "mf/#", "-q", "1", "-V", "mqttv311", "-d", "-W", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto_sub");
        let lines = lines_of(&mut child);
        (child, lines)
    };
    let (mut first, lines) = sub(c.port(0));
    assert!(line_within(&lines, "received SUBACK", WAIT), "no SUBACK");
    // The route reaches node 2 before the client goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        mosquitto_pub_lines(
            c.port(1),
            "mf-probe",
            "mf/probe",
            &["probe".to_owned()],
            WAIT,
        );
        if line_within(&lines, "probe", Duration::from_millis(300)) {
            break;
        }
        assert!(Instant::now() < deadline, "no route");
    }
    let _ = first.kill();
    let _ = first.wait();
    let payloads: Vec<String> = (0..20).map(|i| format!("away-{i}")).collect();
    mosquitto_pub_lines(c.port(1), "mf-pub", "mf/1", &payloads, WAIT);
    let (mut second, lines) = sub(c.port(1));
    let got = drain_real(&lines, Duration::from_secs(3));
    let _ = second.kill();
    let _ = second.wait();
    let got: Vec<&String> = got.iter().filter(|l| l.starts_with("away-")).collect();
    assert_eq!(
        got,
        payloads.iter().collect::<Vec<_>>(),
        "each once, in order"
    );
}

/// Two CONNECTs of one client id on two nodes at the same moment, ten
/// times: each time exactly one connection survives, the other is closed
/// with 0x8E (or closed at once), and the messages queued for the session
/// before the race all reach the survivor. Then `cluster status` counts
/// the one session left where it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_concurrent_connects_leave_one_session() {
    let test = "cluster_concurrent_connects_leave_one_session";
    let Some(c) = claims_on(test, 3) else {
        return;
    };
    let v5 = ProtocolVersion::V5;
    let (mut first, _) = Raw::connect_ok(c.port(2), persistent(v5, "racer", true, 600)).await;
    first.subscribe("race/#", QoS::AtLeastOnce).await;
    first.disconnect().await;
    let mut publ = Raw::v5(c.port(2), "race-pub").await;
    let mut last = 2;
    for round in 0..10 {
        let payloads: Vec<String> = (0..5).map(|i| format!("r{round}-{i}")).collect();
        for p in &payloads {
            publ.publish_ok("race/1", p, QoS::AtLeastOnce, false).await;
        }
        let (a, b) = (round % 3, (round + 1) % 3);
        let ((mut x, xa), (mut y, ya)) = tokio::join!(
            Raw::connect_with(c.port(a), persistent(v5, "racer", false, 600)),
            Raw::connect_with(c.port(b), persistent(v5, "racer", false, 600)),
        );
        let mut alive = [false; 2];
        // What each received before it was closed or went quiet.
        let mut early: [Vec<Publish>; 2] = [Vec::new(), Vec::new()];
        for (k, (conn, ack)) in [(&mut x, &xa), (&mut y, &ya)].into_iter().enumerate() {
            if ack.reason != ReasonCode::SUCCESS {
                // Refused while the other's claim was under way: no session.
                continue;
            }
            // Publishes may come before the DISCONNECT of a loser.
            alive[k] = loop {
                match conn.recv(Duration::from_millis(1500)).await {
                    Ok(Packet::Disconnect(d)) => {
                        assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER, "round {round}");
                        break false;
                    }
                    Ok(Packet::Publish(p)) => early[k].push(p),
                    Ok(_) => {}
                    Err(RecvError::Closed) => break false,
                    Err(_) => break true,
                }
            };
        }
        assert_eq!(
            alive.iter().filter(|a| **a).count(),
            1,
            "round {round}: exactly one connection survives ({xa:?} / {ya:?})"
        );
        let k = usize::from(!alive[0]);
        let (mut survivor, at) = if k == 0 { (x, a) } else { (y, b) };
        let mut got = std::collections::BTreeSet::new();
        for p in std::mem::take(&mut early[k]) {
            survivor.ack(&p).await;
            got.insert(text(&p));
        }
        while got.len() < payloads.len() {
            let p = survivor.recv_publish().await;
            survivor.ack(&p).await;
            got.insert(text(&p));
        }
        assert_eq!(got, payloads.iter().cloned().collect(), "round {round}");
        survivor
            .expect_no_publish(Duration::from_millis(300), "the loser's connection is gone")
            .await;
        survivor.disconnect().await;
        last = at;
    }
    publ.disconnect().await;
    // One session in the cluster, on the last survivor's node (each node
    // reports its sessions every few seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = c.status(0);
        let sessions: Vec<(u16, u64)> = status
            .lines()
            .filter_map(|l| {
                let node = l.strip_prefix("node ")?.split(' ').next()?.parse().ok()?;
                let n = l
                    .split_once(" sessions ")?
                    .1
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?;
                Some((node, n))
            })
            .collect();
        let want: Vec<(u16, u64)> = (1..=3u16)
            .map(|n| (n, u64::from(usize::from(n) == last + 1)))
            .collect();
        if sessions == want {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fencing: with etcd gone and its only peer frozen (SIGSTOP), a node is
/// on the minority side: after the lease TTL (and the link's ping timeout)
/// it refuses new CONNECTs with Server Unavailable while its connected
/// clients carry on; the peer back (SIGCONT), it accepts again — etcd
/// alone being down (every node without it, linked to each other) does
/// not fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_cut_off_from_etcd_and_peers_fences_itself() {
    let test = "cluster_node_cut_off_from_etcd_and_peers_fences_itself";
    let Some(mut c) = claims_on(test, 2) else {
        return;
    };
    let mut keeper = Raw::v5(c.port(0), "fence-keeper").await;
    keeper.subscribe("fe/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(c.port(0), "fence-pub").await;
    c.etcd.kill();
    let signal = |sig: &str, pid: u32| {
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid}");
    };
    let frozen = c.nodes[1].pid();
    signal("-STOP", frozen);
    let deadline = Instant::now() + Duration::from_secs(TTL + 40);
    while !c.nodes[0].log().contains("fenced: cut off") {
        if Instant::now() > deadline {
            signal("-CONT", frozen);
            panic!("node 1 never fenced itself");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, ack) =
        Raw::connect_with(c.port(0), connect_packet(ProtocolVersion::V5, "fence-new")).await;
    assert_eq!(ack.reason, ReasonCode::SERVER_UNAVAILABLE, "fenced");
    // Connected clients carry on.
    publ.publish_ok("fe/1", "still", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&keeper.recv_publish_acked().await), "still");
    signal("-CONT", frozen);
    let deadline = Instant::now() + Duration::from_secs(40);
    while !c.nodes[0].log().contains("no longer fenced") {
        assert!(Instant::now() < deadline, "node 1 never unfenced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (new, ack) =
        Raw::connect_with(c.port(0), connect_packet(ProtocolVersion::V5, "fence-new")).await;
    assert_eq!(
        ack.reason,
        ReasonCode::SUCCESS,
        "accepting again, etcd still down"
    );
    new.disconnect().await;
    keeper.disconnect().await;
    publ.disconnect().await;
}

/// A node killed with -9 comes back with the sessions on its disk: they
/// register with their partitions' owners again, and a client connecting
/// to another node takes its session over with the messages queued
/// before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sessions_of_a_restarted_node_can_be_taken_over() {
    let test = "cluster_sessions_of_a_restarted_node_can_be_taken_over";
    let Some(mut c) = claims_on(test, 2) else {
        return;
    };
    let v5 = ProtocolVersion::V5;
    let (mut dev, _) = Raw::connect_ok(c.port(1), persistent(v5, "back", true, 3600)).await;
    dev.subscribe("bk/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut publ = connect_when_claimed(c.port(1), "back-pub").await;
    for i in 0..5 {
        publ.publish_ok("bk/1", &format!("q{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    publ.disconnect().await;
    c.nodes[1].kill9();
    c.nodes[1].restart();
    // Back in the map, with half of the partitions.
    let deadline = Instant::now() + Duration::from_secs(TTL + 20);
    while !c.status(0).contains(" partitions 512") {
        assert!(Instant::now() < deadline, "node 2 never got its share back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut dev, ack) = loop {
        let (d, ack) = Raw::connect_with(c.port(0), persistent(v5, "back", false, 3600)).await;
        if ack.reason == ReasonCode::SUCCESS {
            break (d, ack);
        }
        assert!(Instant::now() < deadline, "never accepted: {ack:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ack.session_present, "the session from node 2's disk");
    for i in 0..5 {
        assert_eq!(text(&dev.recv_publish_acked().await), format!("q{i}"));
    }
    dev.disconnect().await;
}
