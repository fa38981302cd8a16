use proptest::prelude::*;

use super::*;
use crate::arb;
use crate::keys::{decode_key, encode_record_key, key_bytes};
use crate::record::RecordKey;

fn enc<T>(v: &T, f: fn(&T, &mut Vec<u8>) -> EncodeResult) -> Bytes {
    let mut buf = Vec::new();
    f(v, &mut buf).unwrap();
    Bytes::from(buf)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn session_round_trips(s in arb::session()) {
        prop_assert_eq!(decode_session(enc(&s, encode_session)).unwrap(), s);
    }

    #[test]
    fn session_v1_round_trips_without_will_delay(mut s in arb::session()) {
        let mut buf = Vec::new();
        encode_session_as(&s, &mut buf, 1).unwrap();
        if let Some(w) = &mut s.will {
            w.properties.will_delay_interval = None;
        }
        prop_assert_eq!(decode_session_v1(Bytes::from(buf)).unwrap(), s);
    }

    #[test]
    fn subscription_round_trips(s in arb::subscription()) {
        prop_assert_eq!(decode_subscription(enc(&s, encode_subscription)).unwrap(), s);
    }

    #[test]
    fn message_round_trips(m in arb::message()) {
        prop_assert_eq!(decode_message(enc(&m, encode_message)).unwrap(), m);
    }

    #[test]
    fn queue_entry_round_trips(e in arb::queue_entry()) {
        prop_assert_eq!(decode_queue_entry(enc(&e, encode_queue_entry)).unwrap(), e);
    }

    /// Every record through its key and value bytes and back, and the key
    /// of the record agrees with the typed key.
    #[test]
    fn record_round_trips(rec in arb::record()) {
        let mut k = Vec::new();
        encode_record_key(&rec, &mut k).unwrap();
        prop_assert_eq!(&k, &key_bytes(&rec.key()).unwrap());
        let mut v = Vec::new();
        encode_value(&rec, &mut v).unwrap();
        let key = decode_key(&k).unwrap();
        prop_assert_eq!(&key, &rec.key());
        prop_assert_eq!(decode_record(key, Bytes::from(v)).unwrap(), rec);
    }

    /// Keys of one kind sort like their typed fields (client id by length
    /// then bytes; sequence numbers numerically).
    #[test]
    fn queue_keys_sort_numerically(c in arb::client_id(), a in any::<u64>(), b in any::<u64>()) {
        let ka = key_bytes(&RecordKey::QueueEntry(c.clone(), a)).unwrap();
        let kb = key_bytes(&RecordKey::QueueEntry(c, b)).unwrap();
        prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
    }

    /// Garbage never panics a decoder.
    #[test]
    fn garbage_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let b = Bytes::from(bytes.clone());
        let _ = decode_session(b.clone());
        let _ = decode_session_v1(b.clone());
        let _ = decode_subscription(b.clone());
        let _ = decode_message(b.clone());
        let _ = decode_queue_entry(b);
        let _ = decode_key(&bytes);
        let _ = decode_meta_u32(&bytes);
    }

    /// Any prefix of a valid value is refused or decodes to something (never
    /// panics); truncating a session or queue entry is always detected.
    #[test]
    fn truncation_is_detected(s in arb::session(), e in arb::queue_entry()) {
        let v = enc(&s, encode_session);
        for n in 0..v.len() {
            prop_assert!(decode_session(v.slice(..n)).is_err());
        }
        let v = enc(&e, encode_queue_entry);
        for n in 0..v.len() {
            prop_assert!(decode_queue_entry(v.slice(..n)).is_err());
        }
    }
}

fn topic(s: &'static str) -> TopicName {
    TopicName::from_static(s).unwrap()
}

/// The encoding is a file format: these bytes must not change within a
/// schema version.
#[test]
fn golden_bytes() {
    let s = SessionRecord {
        protocol: ProtocolVersion::V5,
        expiry_interval: 3600,
        will: Some(LastWill {
            topic: topic("w"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..WillProperties::default()
            },
        }),
        disconnected_at_ms: Some(0x0102),
    };
    assert_eq!(
        enc(&s, encode_session).as_ref(),
        [
            5, 0, 0, 0x0e, 0x10, // protocol 5, expiry 3600
            0x03, // disconnected, will
            0, 0, 0, 0, 0, 0, 1, 2,    // disconnected at
            0x0d, // will: qos 1, retain, delay present
            0, 0, 0, 5, // will delay
            0, 1, b'w', // topic
            0,    // no properties
            0, 0, 0, 3, b'b', b'y', b'e', // payload
        ]
        .as_slice()
    );
    let mut v1 = Vec::new();
    encode_session_as(&s, &mut v1, 1).unwrap();
    assert_eq!(
        v1,
        [
            5, 0, 0, 0x0e, 0x10, 0x03, 0, 0, 0, 0, 0, 0, 1, 2, 0x05, 0, 1, b'w', 0, 0, 0, 0, 3,
            b'b', b'y', b'e'
        ]
    );
    assert!(
        decode_session(Bytes::from(v1)).is_err(),
        "a version 1 session does not decode as version 2: the migration is needed"
    );

    let m = StoredMessage {
        topic: topic("a/b"),
        payload: Bytes::from_static(b"hi"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: PublishProperties {
            content_type: Some("t".into()),
            ..PublishProperties::default()
        },
        expires_at_ms: None,
        origin: Some(ClientId::new("c".into())),
    };
    assert_eq!(
        enc(&m, encode_message).as_ref(),
        [0x12, 0, 3, b'a', b'/', b'b', 0, 1, b'c', 0x04, 0, 1, b't', b'h', b'i'].as_slice()
    );

    let e = QueueEntry {
        message: MessageId(7),
        qos: QoS::ExactlyOnce,
        retain: true,
        subscription_ids: vec![9],
        state: DeliveryState::AwaitPubComp(PacketId::new(0x0203).unwrap()),
    };
    assert_eq!(
        enc(&e, encode_queue_entry).as_ref(),
        [0, 0, 0, 0, 0, 0, 0, 7, 0x36, 2, 3, 0, 1, 0, 0, 0, 9].as_slice()
    );

    let sub = SubscriptionRecord {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        },
        id: Some(42),
    };
    assert_eq!(
        enc(&sub, encode_subscription).as_ref(),
        [0x25, 0, 0, 0, 42].as_slice()
    );
}

#[test]
fn invalid_values_are_refused() {
    // QoS 3 in a message.
    assert!(decode_message(Bytes::from_static(&[0x03, 0, 1, b'a', 0])).is_err());
    // Wildcard in a stored topic.
    assert!(decode_message(Bytes::from_static(&[0x00, 0, 1, b'#', 0])).is_err());
    // Packet id 0 in an in-flight entry.
    assert!(decode_queue_entry(Bytes::from_static(&[
        0, 0, 0, 0, 0, 0, 0, 1, 0x11, 0, 0, 0, 0
    ]))
    .is_err());
    // Reserved subscription option bits; retain handling 3.
    assert!(decode_subscription(Bytes::from_static(&[0x40, 0, 0, 0, 0])).is_err());
    assert!(decode_subscription(Bytes::from_static(&[0x30, 0, 0, 0, 0])).is_err());
    // Protocol level 6.
    assert!(decode_session(Bytes::from_static(&[6, 0, 0, 0, 0, 0])).is_err());
    // A user property count larger than the value.
    assert!(decode_message(Bytes::from_static(&[
        0x00, 0, 1, b'a', 0x40, 0xff, 0xff, 0xff, 0xff
    ]))
    .is_err());
}

#[test]
fn oversized_fields_are_refused_not_truncated() {
    let m = StoredMessage {
        topic: topic("a"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties {
            content_type: Some(ByteStr::from("x".repeat(70_000))),
            ..PublishProperties::default()
        },
        expires_at_ms: None,
        origin: None,
    };
    assert!(matches!(
        encode_message(&m, &mut Vec::new()),
        Err(StorageError::TooLarge("content type"))
    ));
}

/// A retained value (schema 3) leads with its version; a tombstone is one
/// with an empty payload; a value too short for the version is refused.
#[test]
fn retained_golden_bytes_and_tombstones() {
    let message = StoredMessage {
        topic: topic("t"),
        payload: Bytes::from_static(b"on"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: PublishProperties::default(),
        expires_at_ms: None,
        origin: None,
    };
    let version = RetainVersion {
        ms: 0x0102,
        node: NodeId(3),
        shard: ShardId::new(4),
    };
    let rec = Record::Retained {
        message: Arc::new(message.clone()),
        version,
    };
    let mut v = Vec::new();
    encode_value(&rec, &mut v).unwrap();
    assert_eq!(
        v,
        [
            0, 0, 0, 0, 0, 0, 1, 2, // version ms
            0, 3, // node
            0, 4,    // shard
            0x04, // message: qos 0, retain
            0, 1, b't', // topic
            0,    // no properties
            b'o', b'n', // payload
        ]
    );
    let key = RecordKey::Retained(topic("t"));
    assert_eq!(decode_record(key.clone(), Bytes::from(v)).unwrap(), rec);
    let tombstone = Record::Retained {
        message: Arc::new(StoredMessage {
            payload: Bytes::new(),
            ..message
        }),
        version,
    };
    let mut v = Vec::new();
    encode_value(&tombstone, &mut v).unwrap();
    assert_eq!(
        decode_record(key.clone(), Bytes::from(v)).unwrap(),
        tombstone
    );
    for short in [&[][..], &[0; 11][..]] {
        assert!(decode_record(key.clone(), Bytes::copy_from_slice(short)).is_err());
    }
}
