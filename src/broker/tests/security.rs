//! Authentication verdicts, the ACL and the limits, as the core applies
//! them: answers in both protocol versions and the counters they leave.

use std::sync::Arc;

use super::*;

/// A toy ACL: user `alice` may do anything under `alice/`; everyone may read
/// `public/#`; client ids publish under `clients/<id>/`.
#[derive(Debug)]
struct TestAcl;

impl Authorizer for TestAcl {
    fn allow_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        (username == Some("alice") && topic.starts_with("alice/"))
            || topic.strip_prefix("clients/").is_some_and(|rest| {
                rest.strip_prefix(client_id)
                    .is_some_and(|r| r.starts_with('/'))
            })
    }

    fn allow_subscribe(&self, _client_id: &str, username: Option<&str>, filter: &str) -> bool {
        (username == Some("alice") && filter.starts_with("alice/")) || filter.starts_with("public/")
    }
}

fn secured(shards: usize) -> Cluster {
    Cluster::with_config(
        shards,
        CoreConfig {
            persistence: true,
            authorizer: Some(Arc::new(TestAcl)),
            max_topic_length: 32,
            max_topic_levels: 4,
            max_subscriptions: 3,
            ..CoreConfig::default()
        },
    )
}

impl Cluster {
    /// Opens a connection the I/O layer found to be `identity` and sends
    /// CONNECT; returns the client and the CONNACK, if one came.
    fn connect_as(&mut self, identity: Identity, connect: Connect) -> (Client, Option<ConnAck>) {
        let shard = home_shard(&connect.client_id, self.cores.len()).get();
        let conn = self.cores[shard].handle_open_as(self.now, identity);
        let c = Client {
            shard,
            conn,
            version: connect.protocol,
        };
        self.send(&c, Packet::Connect(Box::new(connect)));
        match self.recv_one(&c) {
            Some(Packet::ConnAck(a)) => (c, Some(a)),
            None => (c, None),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn total_stats(&self) -> ShardStats {
        let mut t = ShardStats::default();
        for core in &self.cores {
            let s = core.stats();
            for (a, b) in t.limit_hits.iter_mut().zip(s.limit_hits) {
                *a += b;
            }
            for (a, b) in t.acl_denied.iter_mut().zip(s.acl_denied) {
                *a += b;
            }
            for i in 0..2 {
                t.auth_refused[i] += s.auth_refused[i];
            }
        }
        t
    }
}

#[test]
fn refused_identity_gets_the_connack_of_its_version_and_is_closed() {
    let mut cl = secured(2);
    for (version, rc, wire) in [
        (V5, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 0x86),
        (V5, ReasonCode::NOT_AUTHORIZED, 0x87),
        (V3_1_1, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 0x04),
        (V3_1_1, ReasonCode::NOT_AUTHORIZED, 0x05),
    ] {
        let (c, ack) = cl.connect_as(Identity::Refused(rc), Connect::new(version, "dev"));
        let ack = ack.expect("a CONNACK");
        assert_eq!(ack.reason, rc);
        assert!(!ack.session_present);
        assert!(cl.closed(&c), "{version:?} {rc:?}");
        // The byte on the wire is the version's own code.
        let mut buf = BytesMut::new();
        Packet::ConnAck(ack).encode(version, &mut buf).unwrap();
        assert_eq!(buf[3], wire);
        // No session was created for a refused client.
        assert!(cl.cores[c.shard].session("dev").is_none());
    }
    assert_eq!(cl.total_stats().auth_refused, [2, 2]);
}

#[test]
fn enhanced_authentication_is_refused_with_0x8c() {
    let mut cl = secured(1);
    let mut connect = Connect::new(V5, "dev");
    connect.properties.authentication_method = Some(ByteStr::from("SCRAM-SHA-1"));
    let (c, ack) = cl.connect_as(Identity::Anonymous, connect);
    assert_eq!(ack.unwrap().reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(cl.closed(&c));
}

#[test]
fn acl_denies_publish_v5_with_0x87_v3_acks_and_drops() {
    let mut cl = secured(2);
    let (alice_id, sub_id) = ids_apart("acl");
    let (sub, _) = cl.connect_as(Identity::User("alice".into()), Connect::new(V5, &sub_id));
    cl.subscribe(&sub, "alice/#", q(QoS::AtLeastOnce));
    // Allowed: alice under alice/.
    let (alice, ack) = cl.connect_as(Identity::User("alice".into()), Connect::new(V5, &alice_id));
    assert_eq!(ack.unwrap().reason, ReasonCode::SUCCESS);
    cl.publish(&alice, "alice/x", b"ok", QoS::AtLeastOnce, 1);
    assert!(
        matches!(cl.recv_one(&alice), Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS)
    );
    assert_eq!(cl.publishes(&sub).len(), 1);

    // Denied: anonymous (same topic), v5 QoS 1 and 2 get 0x87, nothing routed.
    let (anon, _) = cl.connect_as(Identity::Anonymous, Connect::new(V5, "anon5"));
    cl.publish(&anon, "alice/x", b"no", QoS::AtLeastOnce, 1);
    assert!(
        matches!(cl.recv_one(&anon), Some(Packet::PubAck(a)) if a.reason == ReasonCode::NOT_AUTHORIZED)
    );
    cl.publish(&anon, "alice/x", b"no", QoS::ExactlyOnce, 2);
    assert!(
        matches!(cl.recv_one(&anon), Some(Packet::PubRec(a)) if a.reason == ReasonCode::NOT_AUTHORIZED)
    );
    cl.publish(&anon, "alice/x", b"no", QoS::AtMostOnce, 0);
    assert!(cl.recv_one(&anon).is_none());
    assert!(!cl.closed(&anon));
    // A user name in the CONNECT that nothing verified does not count.
    let mut claimed = Connect::new(V5, "claims-alice");
    claimed.username = Some(ByteStr::from("alice"));
    let (claimer, _) = cl.connect_as(Identity::Anonymous, claimed);
    cl.publish(&claimer, "alice/x", b"no", QoS::AtLeastOnce, 1);
    assert!(
        matches!(cl.recv_one(&claimer), Some(Packet::PubAck(a)) if a.reason == ReasonCode::NOT_AUTHORIZED)
    );

    // v3.1.1 cannot say no: acknowledged, dropped, connection kept.
    let (anon3, _) = cl.connect_as(Identity::Anonymous, Connect::new(V3_1_1, "anon3"));
    cl.publish(&anon3, "alice/x", b"no", QoS::AtLeastOnce, 1);
    assert!(matches!(cl.recv_one(&anon3), Some(Packet::PubAck(a)) if a.packet_id == pid(1)));
    assert!(!cl.closed(&anon3));
    assert!(
        cl.publishes(&sub).is_empty(),
        "nothing denied was delivered"
    );
    // %c-style rule: a client publishes under its own id only.
    cl.publish(&anon, "clients/anon5/t", b"ok", QoS::AtLeastOnce, 3);
    assert!(matches!(cl.recv_one(&anon), Some(Packet::PubAck(a)) if a.reason.0 < 0x80));
    assert_eq!(cl.total_stats().acl_denied[0], 5);
}

#[test]
fn acl_denies_subscribe_per_filter() {
    let mut cl = secured(2);
    let (c, _) = cl.connect_as(Identity::Anonymous, Connect::new(V5, "reader"));
    let sub = Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        filters: vec![
            (filter("public/#"), q(QoS::AtLeastOnce)),
            (filter("alice/#"), q(QoS::AtLeastOnce)),
            (filter("$share/g/public/x"), q(QoS::AtMostOnce)),
            (filter("$share/g/alice/x"), q(QoS::AtMostOnce)),
        ],
    };
    cl.send(&c, Packet::Subscribe(sub.clone()));
    let Some(Packet::SubAck(ack)) = cl.recv_one(&c) else {
        panic!("SUBACK")
    };
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode(1),
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode(0),
            ReasonCode::NOT_AUTHORIZED
        ]
    );
    assert_eq!(
        cl.cores[c.shard]
            .session("reader")
            .unwrap()
            .subscriptions
            .len(),
        2
    );
    // v3.1.1: 0x80 on the wire.
    let (c3, _) = cl.connect_as(Identity::Anonymous, Connect::new(V3_1_1, "reader3"));
    cl.send(&c3, Packet::Subscribe(sub));
    let Some(Packet::SubAck(ack)) = cl.recv_one(&c3) else {
        panic!("SUBACK")
    };
    let mut buf = BytesMut::new();
    Packet::SubAck(ack).encode(V3_1_1, &mut buf).unwrap();
    assert_eq!(&buf[4..], &[1, 0x80, 0, 0x80]);
    assert_eq!(cl.total_stats().acl_denied[1], 4);
}

#[test]
fn will_needs_publish_rights_and_topic_limits() {
    let mut cl = secured(1);
    let mut connect = Connect::new(V5, "w1");
    connect.will = Some(will("alice/status", None));
    let (c, ack) = cl.connect_as(Identity::Anonymous, connect.clone());
    assert_eq!(ack.unwrap().reason, ReasonCode::NOT_AUTHORIZED);
    assert!(cl.closed(&c));
    let (c, ack) = cl.connect_as(Identity::User("alice".into()), connect);
    assert_eq!(ack.unwrap().reason, ReasonCode::SUCCESS);
    assert!(!cl.closed(&c));
    let mut connect = Connect::new(V5, "w2");
    connect.will = Some(will("alice/a/b/c/d", None));
    let (_, ack) = cl.connect_as(Identity::User("alice".into()), connect);
    assert_eq!(ack.unwrap().reason, ReasonCode::TOPIC_NAME_INVALID);
    assert_eq!(cl.total_stats().limit_hits[Limit::TopicLevels as usize], 1);
}

#[test]
fn topic_length_and_levels_on_publish_and_subscribe() {
    let mut cl = secured(2);
    let user = || Identity::User("alice".into());
    let (c, _) = cl.connect_as(user(), Connect::new(V5, "lim5"));
    let long = "alice/012345678901234567890123456"; // 33 bytes
    assert_eq!(long.len(), 33);
    cl.publish(&c, long, b"x", QoS::AtLeastOnce, 1);
    assert!(
        matches!(cl.recv_one(&c), Some(Packet::PubAck(a)) if a.reason == ReasonCode::TOPIC_NAME_INVALID)
    );
    cl.publish(&c, "alice/1/2/3/4", b"x", QoS::ExactlyOnce, 2);
    assert!(
        matches!(cl.recv_one(&c), Some(Packet::PubRec(a)) if a.reason == ReasonCode::TOPIC_NAME_INVALID)
    );
    cl.publish(&c, "alice/1/2/3", b"x", QoS::AtLeastOnce, 3); // 4 levels: fine
    assert!(matches!(cl.recv_one(&c), Some(Packet::PubAck(a)) if a.reason.0 < 0x80));
    let sub = Subscribe {
        packet_id: pid(4),
        properties: SubscribeProperties::default(),
        filters: vec![
            (filter("alice/+/+/+/#"), q(QoS::AtMostOnce)),
            (filter(long), q(QoS::AtMostOnce)),
            (filter("$share/group/alice/+/+/x"), q(QoS::AtMostOnce)),
        ],
    };
    cl.send(&c, Packet::Subscribe(sub));
    let Some(Packet::SubAck(ack)) = cl.recv_one(&c) else {
        panic!("SUBACK")
    };
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode(0)
        ]
    );
    // v3.1.1: a topic over the limit closes the connection.
    let (c3, _) = cl.connect_as(user(), Connect::new(V3_1_1, "lim3"));
    cl.publish(&c3, long, b"x", QoS::AtMostOnce, 0);
    assert!(cl.closed(&c3));
    let hits = cl.total_stats().limit_hits;
    assert_eq!(hits[Limit::TopicLength as usize], 3);
    assert_eq!(hits[Limit::TopicLevels as usize], 2);
}

#[test]
fn max_subscriptions_counts_distinct_filters() {
    let mut cl = secured(2);
    let (c, _) = cl.connect_as(Identity::Anonymous, Connect::new(V5, "many"));
    for f in ["public/1", "public/2", "public/3", "public/1"] {
        cl.subscribe(&c, f, q(QoS::AtMostOnce)); // the 4th re-subscribes
    }
    let sub = Subscribe {
        packet_id: pid(9),
        properties: SubscribeProperties::default(),
        filters: vec![
            (filter("public/4"), q(QoS::AtMostOnce)),
            (filter("public/2"), q(QoS::AtLeastOnce)),
        ],
    };
    cl.send(&c, Packet::Subscribe(sub));
    let Some(Packet::SubAck(ack)) = cl.recv_one(&c) else {
        panic!("SUBACK")
    };
    assert_eq!(ack.reasons, vec![ReasonCode::QUOTA_EXCEEDED, ReasonCode(1)]);
    // After an unsubscribe there is room again.
    let unsub = Unsubscribe {
        packet_id: pid(10),
        properties: Default::default(),
        filters: vec![filter("public/1")],
    };
    cl.send(&c, Packet::Unsubscribe(unsub));
    assert!(matches!(cl.recv_one(&c), Some(Packet::UnsubAck(_))));
    cl.subscribe(&c, "public/4", q(QoS::AtMostOnce));
    assert_eq!(
        cl.total_stats().limit_hits[Limit::Subscriptions as usize],
        1
    );
}

#[test]
fn limits_are_counted_where_they_fire() {
    let mut cl = Cluster::with_config(
        1,
        CoreConfig {
            max_queued_messages: 2,
            max_inflight: 1,
            receive_maximum: 1,
            max_packet_size: 64,
            ..CoreConfig::default()
        },
    );
    // Connect timeout.
    let idle = cl.open(0, V5);
    cl.advance(Duration::from_secs(11));
    assert!(cl.closed(&idle));
    // Inflight window (1) and queue (2): 5 QoS 1 messages to a client that
    // does not acknowledge: 1 in flight, 2 queued, 2 dropped.
    let sub = cl.connect(V5, "slow");
    cl.subscribe(&sub, "t", q(QoS::AtLeastOnce));
    let publisher = cl.connect(V5, "pub");
    for i in 1..=5 {
        cl.publish(&publisher, "t", b"m", QoS::AtLeastOnce, i);
    }
    // Receive maximum 1: a second unreleased QoS 2 PUBLISH is a protocol error.
    cl.publish(&publisher, "t", b"a", QoS::ExactlyOnce, 10);
    cl.publish(&publisher, "t", b"b", QoS::ExactlyOnce, 11);
    assert!(cl.closed(&publisher));
    // Packet size.
    let big = cl.connect(V5, "big");
    cl.publish(&big, "t", &[b'x'; 100], QoS::AtMostOnce, 0);
    assert!(cl.closed(&big));
    let mut stats = cl.cores[0].stats();
    cl.cores[0].note_limit(Limit::Connections);
    cl.cores[0].note_limit(Limit::ConnectRate);
    stats.limit_hits[Limit::Connections as usize] += 1;
    stats.limit_hits[Limit::ConnectRate as usize] += 1;
    let hits = cl.cores[0].stats().limit_hits;
    assert_eq!(hits, stats.limit_hits);
    assert_eq!(hits[Limit::ConnectTimeout as usize], 1);
    assert!(hits[Limit::Inflight as usize] >= 3, "{hits:?}");
    assert_eq!(hits[Limit::Queued as usize], 3, "{hits:?}"); // 2 of QoS 1 + the QoS 2 one
    assert_eq!(hits[Limit::ReceiveMaximum as usize], 1);
    assert_eq!(hits[Limit::PacketSize as usize], 1);
    assert_eq!(hits[Limit::Connections as usize], 1);
}

#[test]
fn connect_credentials_come_from_a_whole_connect_only() {
    let mut connect = Connect::new(V3_1_1, "dev");
    connect.username = Some(ByteStr::from("alice"));
    connect.password = Some(Bytes::from_static(b"s3cret"));
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(connect))
        .encode(V3_1_1, &mut buf)
        .unwrap();
    let creds = connect_credentials(&buf, 1024).expect("a whole CONNECT");
    assert_eq!(creds.username.as_deref(), Some("alice"));
    assert_eq!(creds.password.as_deref(), Some(&b"s3cret"[..]));
    assert!(
        !format!("{creds:?}").contains("s3cret"),
        "Debug hides the password"
    );
    // A prefix, another packet, or a CONNECT over the size limit: none.
    assert!(connect_credentials(&buf[..buf.len() - 1], 1024).is_none());
    assert!(connect_credentials(&buf, 8).is_none());
    assert!(connect_credentials(&[0xc0, 0x00], 1024).is_none());
}

#[test]
fn keep_alive_counts_whole_packets_not_bytes() {
    // [MQTT-3.1.2-24]: a client that dribbles one PUBLISH a byte at a time
    // is closed after 1.5 x its keep alive, like a silent one.
    let mut cl = Cluster::new(1);
    let mut connect = Connect::new(V5, "dribbler");
    connect.keep_alive = 2;
    let (c, _) = cl.connect_with(connect);
    let mut p = Publish::new(topic("t"), Bytes::from_static(&[b'x'; 200]));
    p.qos = QoS::AtMostOnce;
    let mut bytes = BytesMut::new();
    Packet::Publish(p).encode(V5, &mut bytes).unwrap();
    let mut buf = BytesMut::new();
    for &b in &bytes[..bytes.len() - 1] {
        buf.extend_from_slice(&[b]);
        cl.cores[0].handle_bytes(cl.now, c.conn, &mut buf);
        cl.advance(Duration::from_millis(100));
        if cl.closed(&c) {
            break;
        }
    }
    assert!(cl.closed(&c), "closed while still dribbling");
    assert!(
        matches!(cl.recv(&c).last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "DISCONNECT 0x8D"
    );
}

// ------------------------------------------------------- revoked rights

/// An ACL that lets each listed user read filters under its prefixes (and
/// everyone publish anywhere): a reload is a new `ReadAcl`.
#[derive(Debug)]
struct ReadAcl(Vec<(&'static str, &'static str)>);

impl Authorizer for ReadAcl {
    fn allow_publish(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }

    fn allow_subscribe(&self, _client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.0
            .iter()
            .any(|(user, prefix)| username == Some(*user) && filter.starts_with(prefix))
    }
}

fn read_acl(rules: &[(&'static str, &'static str)]) -> Option<Arc<dyn Authorizer>> {
    Some(Arc::new(ReadAcl(rules.to_vec())))
}

/// Two shards whose ACL lets alice read `a/` and `b/`.
fn readers() -> Cluster {
    Cluster::with_config(
        2,
        CoreConfig {
            persistence: true,
            authorizer: read_acl(&[("alice", "a/"), ("alice", "b/")]),
            ..CoreConfig::default()
        },
    )
}

impl Cluster {
    /// Every shard takes `acl` (a SIGHUP reload).
    fn reload_acl(&mut self, acl: Option<Arc<dyn Authorizer>>) {
        for core in &mut self.cores {
            let mut config = core.config().clone();
            config.authorizer = acl.clone();
            core.set_config(config);
        }
        self.run();
    }

    fn revoked(&mut self) -> Vec<(String, String)> {
        self.cores
            .iter_mut()
            .flat_map(|c| c.take_revoked().0)
            .map(|(c, f)| (c.as_str().to_owned(), f.as_str().to_owned()))
            .collect()
    }
}

fn texts(ps: &[Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| {
            format!(
                "{}={}",
                p.topic.as_str(),
                String::from_utf8_lossy(&p.payload)
            )
        })
        .collect()
}

fn persistent_as(id: &str) -> Connect {
    let mut c = Connect::new(V5, id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c
}

#[test]
fn reloaded_acl_removes_subscriptions_it_no_longer_allows() {
    let mut cl = readers();
    let (alice_id, pub_id) = ids_apart("revoke");
    let alice = Identity::User("alice".into());
    let (a, _) = cl.connect_as(alice.clone(), persistent_as(&alice_id));
    cl.subscribe(&a, "a/#", q(QoS::AtLeastOnce));
    cl.subscribe(&a, "b/#", q(QoS::AtLeastOnce));
    cl.subscribe(&a, "$share/g/b/x", q(QoS::AtLeastOnce));
    let (p, _) = cl.connect_as(Identity::Anonymous, Connect::new(V5, &pub_id));
    cl.publish(&p, "a/1", b"1", QoS::AtMostOnce, 0);
    cl.publish(&p, "b/1", b"1", QoS::AtMostOnce, 0);
    assert_eq!(texts(&cl.publishes(&a)), ["a/1=1", "b/1=1"]);

    // The ACL file loses alice's right to read b/, then SIGHUP.
    cl.reload_acl(read_acl(&[("alice", "a/")]));
    cl.publish(&p, "a/2", b"2", QoS::AtMostOnce, 0);
    cl.publish(&p, "b/2", b"2", QoS::AtMostOnce, 0);
    cl.publish(&p, "b/x", b"2", QoS::AtMostOnce, 0);
    assert_eq!(
        texts(&cl.publishes(&a)),
        ["a/2=2"],
        "nothing on b/ any more"
    );
    let home = a.shard;
    let session = cl.cores[home].session(&alice_id).expect("session");
    assert_eq!(session.subscriptions.len(), 1);
    assert_eq!(cl.total_stats().acl_denied[2], 2, "counted as revoked");
    let mut revoked = cl.revoked();
    revoked.sort();
    assert_eq!(
        revoked,
        [
            (alice_id.clone(), "$share/g/b/x".to_owned()),
            (alice_id.clone(), "b/#".to_owned())
        ]
    );
    // Removed from storage too, so a restart does not bring them back.
    let deleted: Vec<String> = cl
        .store_ops(home)
        .into_iter()
        .filter_map(|o| match o {
            StoreOp::DeleteSubscription { filter, .. } => Some(filter.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    // Reloading the same rules again removes nothing more.
    cl.reload_acl(read_acl(&[("alice", "a/")]));
    assert!(cl.revoked().is_empty());
    assert_eq!(cl.total_stats().acl_denied[2], 2);
}

#[test]
fn resumed_session_keeps_only_what_its_identity_may_read_and_drops_what_was_queued() {
    let mut cl = readers();
    let (alice_id, pub_id) = ids_apart("resume");
    let alice = Identity::User("alice".into());
    let (a, _) = cl.connect_as(alice.clone(), persistent_as(&alice_id));
    cl.subscribe(&a, "a/#", q(QoS::AtLeastOnce));
    cl.subscribe(&a, "b/#", q(QoS::AtLeastOnce));
    cl.drop_socket(&a);
    // While alice is away the ACL changes: her session has no connection,
    // so who she is is known only when she comes back.
    cl.reload_acl(read_acl(&[("alice", "a/")]));
    assert!(cl.revoked().is_empty());
    let (p, _) = cl.connect_as(Identity::Anonymous, Connect::new(V5, &pub_id));
    cl.publish(&p, "b/1", b"queued", QoS::AtLeastOnce, 1);
    cl.publish(&p, "a/1", b"queued", QoS::AtLeastOnce, 2);
    let home = home_shard(&alice_id, 2).get();
    assert_eq!(
        cl.cores[home].session(&alice_id).expect("s").queued_len(),
        2
    );
    let (a, ack) = cl.connect_as(alice.clone(), persistent_as(&alice_id));
    assert!(ack.expect("CONNACK").session_present);
    assert_eq!(texts(&cl.publishes(&a)), ["a/1=queued"]);
    assert_eq!(cl.revoked(), [(alice_id.clone(), "b/#".to_owned())]);
    assert_eq!(cl.total_stats().acl_denied[2], 1);
    // The dropped message left storage as well.
    assert!(cl
        .store_ops(home)
        .iter()
        .any(|o| matches!(o, StoreOp::DeleteQueueEntry { .. })));

    // The same client id resumed by another identity keeps none of
    // alice's subscriptions (bob may read nothing here).
    cl.drop_socket(&a);
    let (b, _) = cl.connect_as(Identity::User("bob".into()), persistent_as(&alice_id));
    assert!(cl.cores[home]
        .session(&alice_id)
        .expect("s")
        .subscriptions
        .is_empty());
    cl.publish(&p, "a/2", b"x", QoS::AtMostOnce, 0);
    let got = texts(&cl.publishes(&b));
    assert!(!got.iter().any(|t| t.starts_with("a/2")), "{got:?}");
}

#[test]
fn restored_session_is_rechecked_when_it_reconnects() {
    let mut cl = Cluster::with_config(
        1,
        CoreConfig {
            persistence: true,
            // The ACL in force after the restart: b/ is no longer alice's.
            authorizer: read_acl(&[("alice", "a/")]),
            ..CoreConfig::default()
        },
    );
    let now = cl.now;
    let ma = message("a/1", b"kept", QoS::AtLeastOnce);
    let mb = message("b/1", b"revoked", QoS::AtLeastOnce);
    let entry = |seq, id: u64, msg: &Arc<Message>| RestoredEntry {
        seq,
        message_id: crate::MessageId(id),
        msg: msg.clone(),
        qos: msg.qos,
        retain: false,
        sub_ids: vec![],
        state: OutState::Queued,
    };
    let sub = Subscription {
        options: q(QoS::AtLeastOnce),
        id: None,
    };
    let restored = Restored {
        sessions: vec![RestoredSession {
            client_id: ClientId::new(ByteStr::from("alice-dev")),
            session: SessionImage {
                protocol: V5,
                expiry_interval: 3600,
                will: None,
                disconnected_at: Some(now),
            },
            subscriptions: vec![(filter("a/#"), sub), (filter("b/#"), sub)],
            queue: vec![entry(1, 10, &mb), entry(2, 11, &ma)],
            inbound_qos2: vec![],
        }],
        next_message_id: crate::MessageId(12),
        ..Restored::default()
    };
    cl.cores[0].restore(now, restored);
    cl.run();
    let (a, ack) = cl.connect_as(Identity::User("alice".into()), persistent_as("alice-dev"));
    assert!(ack.expect("CONNACK").session_present);
    assert_eq!(texts(&cl.publishes(&a)), ["a/1=kept"]);
    assert_eq!(cl.revoked(), [("alice-dev".to_owned(), "b/#".to_owned())]);
    let ops = cl.store_ops(0);
    assert!(ops.iter().any(|o| matches!(o,
        StoreOp::DeleteSubscription { filter, .. } if filter.as_str() == "b/#")));
    assert!(ops
        .iter()
        .any(|o| matches!(o, StoreOp::DeleteQueueEntry { seq: 1, .. })));
    assert!(ops
        .iter()
        .any(|o| matches!(o, StoreOp::DeleteMessage(crate::MessageId(10)))));
    // New messages on b/ are not delivered (nor queued) any more.
    let p = cl.connect(V5, "p");
    cl.publish(&p, "b/2", b"x", QoS::AtLeastOnce, 1);
    assert!(cl.publishes(&a).is_empty());
}
