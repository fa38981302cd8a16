//! Retained messages for a new subscription wait in the session's backlog
//! and go out paced by the inflight window and the output buffer: a wildcard
//! subscriber gets every one of them, not as many as one buffer holds.

use super::*;

const N: usize = 20_000;

fn with_retained(config: CoreConfig, n: usize, qos: QoS) -> (Cluster, Client) {
    let mut cl = Cluster::with_config(2, config);
    let p = cl.connect(V5, "retainer");
    for i in 0..n {
        let mut m = Publish::new(topic(&format!("ret/{i}")), Bytes::from(vec![b'x'; 64]));
        m.retain = true;
        m.qos = qos;
        if qos != QoS::AtMostOnce {
            m.packet_id = Some(pid((i % 60_000 + 1) as u16));
        }
        cl.send(&p, Packet::Publish(m));
        cl.recv(&p);
    }
    (cl, p)
}

fn persistent_config() -> CoreConfig {
    CoreConfig {
        persistence: true,
        ..CoreConfig::default()
    }
}

#[test]
fn a_wildcard_subscriber_gets_every_retained_message_qos0() {
    let (mut cl, _) = with_retained(persistent_config(), N, QoS::AtMostOnce);
    let s = cl.connect(V5, "wild");
    cl.subscribe(&s, "ret/#", q(QoS::AtMostOnce));
    let got = cl.publishes(&s);
    assert_eq!(got.len(), N, "every retained message, none dropped");
    let topics: HashSet<String> = got.iter().map(|p| p.topic.as_str().to_owned()).collect();
    assert_eq!(topics.len(), N);
    assert!(got.iter().all(|p| p.retain));
    let dropped: u64 = cl.cores.iter().map(|c| c.stats().messages_dropped).sum();
    assert_eq!(dropped, 0);
}

#[test]
fn qos1_retained_messages_are_paced_by_the_window() {
    let (mut cl, _) = with_retained(persistent_config(), 3_000, QoS::AtLeastOnce);
    let mut c = Connect::new(V5, "wild1");
    c.properties.receive_maximum = Some(100);
    let (s, _) = cl.connect_with(c);
    cl.subscribe(&s, "ret/#", q(QoS::AtLeastOnce));
    let mut seen = HashSet::new();
    loop {
        let got = cl.publishes(&s);
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 100, "at most Receive Maximum in flight");
        for p in got {
            seen.insert(p.topic.as_str().to_owned());
            cl.send(&s, Packet::PubAck(PubResponse::new(p.packet_id.unwrap())));
        }
    }
    assert_eq!(seen.len(), 3_000);
}

#[test]
fn the_retained_backlog_cap_is_counted_and_reported() {
    let config = CoreConfig {
        max_retained_backlog: 500,
        max_output_buffer: 1024,
        ..persistent_config()
    };
    let (mut cl, _) = with_retained(config, 2_000, QoS::AtMostOnce);
    let s = cl.connect(V5, "capped");
    let core = s.shard;
    cl.subscribe(&s, "ret/#", q(QoS::AtMostOnce));
    assert_eq!(cl.publishes(&s).len(), 500);
    let stats = cl.cores[core].stats();
    assert_eq!(stats.limit_hits[Limit::RetainedBacklog as usize], 1_500);
    assert_eq!(stats.messages_dropped, 1_500);
}

#[test]
fn the_limit_event_names_the_client_and_is_rate_limited() {
    let config = CoreConfig {
        max_retained_backlog: 10,
        ..persistent_config()
    };
    let (mut cl, _) = with_retained(config, 50, QoS::AtMostOnce);
    let id = "capped2";
    let shard = home_shard(id, 2).get();
    let c = cl.open(shard, V5);
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V5, id)))
        .encode(V5, &mut buf)
        .unwrap();
    let mut events = Vec::new();
    let subscribe = |cl: &mut Cluster, buf: &[u8]| {
        let mut b = BytesMut::from(buf);
        cl.cores[shard].handle_bytes(cl.now, c.conn, &mut b);
        let mut evs = Vec::new();
        while let Some(ev) = cl.cores[shard].poll_event() {
            if matches!(ev, IoEvent::Limited { .. }) {
                evs.push(ev.clone());
            }
            if let IoEvent::Wake(conn) = ev {
                cl.cores[shard].take_output(cl.now, conn);
            }
        }
        evs
    };
    events.extend(subscribe(&mut cl, &buf));
    for _ in 0..2 {
        let sub = Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties::default(),
            filters: vec![(filter("ret/#"), q(QoS::AtMostOnce))],
        };
        let mut b = BytesMut::new();
        Packet::Subscribe(sub).encode(V5, &mut b).unwrap();
        events.extend(subscribe(&mut cl, &b));
    }
    assert_eq!(
        events,
        vec![IoEvent::Limited {
            client_id: ClientId::new(ByteStr::from(id)),
            limit: Limit::RetainedBacklog,
            dropped: 40,
        }],
        "one report for the first burst; the second waits for the interval"
    );
}

#[test]
fn unsubscribing_forgets_the_backlog_of_that_filter() {
    let config = CoreConfig {
        max_output_buffer: 1024,
        ..persistent_config()
    };
    let (mut cl, _) = with_retained(config, 1_000, QoS::AtMostOnce);
    let id = "leaver";
    let s = cl.connect(V5, id);
    // Subscribe and unsubscribe in one read, before any output is taken.
    let mut b = BytesMut::new();
    Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        filters: vec![(filter("ret/#"), q(QoS::AtMostOnce))],
    })
    .encode(V5, &mut b)
    .unwrap();
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![filter("ret/#")],
    })
    .encode(V5, &mut b)
    .unwrap();
    cl.send_bytes(&s, &b);
    let got = cl.publishes(&s).len();
    assert!(got < 1_000, "only what was in the buffer went out: {got}");
    assert_eq!(
        cl.cores[s.shard]
            .session(id)
            .unwrap()
            .retained_backlog_len(),
        0
    );
}
