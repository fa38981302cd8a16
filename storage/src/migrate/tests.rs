use bytes::Bytes;
use rocksdb::{ColumnFamilyDescriptor, Options};
use vmqtt::broker::home_shard;
use vmqtt::codec::{LastWill, ProtocolVersion, QoS, SubscriptionOptions, WillProperties};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId};

use super::*;
use crate::codec::{encode_message, encode_session_as, encode_subscription};
use crate::keys::{key_bytes, shard_cf, SHARDS_KEY};
use crate::record::{RecordKey, SessionRecord, StoredMessage, SubscriptionRecord};
use crate::{recover, RocksOptions, RocksStorage, Storage};

fn cid(s: &str) -> ClientId {
    ClientId::new(ByteStr::from(s))
}

fn session(i: u32) -> SessionRecord {
    SessionRecord {
        protocol: ProtocolVersion::V3_1_1,
        expiry_interval: 100 + i,
        will: i.is_multiple_of(2).then(|| LastWill {
            topic: TopicName::from_static("will/topic").unwrap(),
            payload: Bytes::from(format!("gone {i}")),
            qos: QoS::AtLeastOnce,
            retain: i.is_multiple_of(4),
            properties: WillProperties {
                content_type: Some("text/plain".into()),
                ..WillProperties::default()
            },
        }),
        disconnected_at_ms: i.is_multiple_of(3).then_some(1_700_000_000_000),
    }
}

fn retained(i: u32) -> StoredMessage {
    StoredMessage {
        topic: TopicName::new(ByteStr::from(format!("state/{i}"))).unwrap(),
        payload: Bytes::from(format!("value {i}")),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
        expires_at_ms: None,
        origin: None,
    }
}

/// Writes a real version 1 directory: what a version 1 build left behind
/// (sessions in the v1 layout, retained values in the v2 one, everything
/// else as in v3), two shards.
fn write_v1(path: &std::path::Path, clients: u32, corrupt_one: bool) {
    write_old(path, 1, clients, corrupt_one);
}

/// Writes a directory of schema `version` (1 or 2) with `clients`
/// sessions, a subscription each and a retained message each.
fn write_old(path: &std::path::Path, version: u32, clients: u32, corrupt_one: bool) {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs =
        ["meta", "shard-0", "shard-1"].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = Db::open_cf_descriptors(&opts, path, cfs).unwrap();
    let meta = db.cf_handle("meta").unwrap();
    db.put_cf(&meta, SCHEMA_VERSION_KEY, version.to_be_bytes())
        .unwrap();
    db.put_cf(&meta, SHARDS_KEY, 2u32.to_be_bytes()).unwrap();
    for i in 0..clients {
        let c = cid(&format!("client-{i}"));
        let shard = home_shard(c.as_str(), 2);
        let cf = db.cf_handle(&shard_cf(shard)).unwrap();
        let mut v = Vec::new();
        encode_session_as(&session(i), &mut v, version).unwrap();
        if corrupt_one && i == clients / 2 {
            v.truncate(3);
        }
        db.put_cf(&cf, key_bytes(&RecordKey::Session(c.clone())).unwrap(), &v)
            .unwrap();
        let sub = SubscriptionRecord {
            options: SubscriptionOptions::qos(QoS::ExactlyOnce),
            id: Some(i + 1),
        };
        let mut v = Vec::new();
        encode_subscription(&sub, &mut v).unwrap();
        let f = TopicFilter::from_static("a/#").unwrap();
        db.put_cf(&cf, key_bytes(&RecordKey::Subscription(c, f)).unwrap(), &v)
            .unwrap();
        let r = retained(i);
        let mut v = Vec::new();
        encode_message(&r, &mut v).unwrap();
        let shard = crate::retained_home(r.topic.as_str(), 2);
        let cf = db.cf_handle(&shard_cf(shard)).unwrap();
        db.put_cf(&cf, key_bytes(&RecordKey::Retained(r.topic)).unwrap(), &v)
            .unwrap();
    }
    db.flush_cf(&db.cf_handle("shard-0").unwrap()).unwrap();
}

#[test]
fn version_1_is_migrated_to_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    write_v1(&path, 50, false);

    let storage = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    let mut s: Box<dyn Storage> = Box::new(storage.clone());
    let rec = recover(s.as_mut(), 2).unwrap();
    assert!(rec.resharded_from.is_none(), "layout kept");
    let mut n = 0;
    for st in &rec.states {
        for (c, cs) in &st.clients {
            let i: u32 = c.as_str()["client-".len()..].parse().unwrap();
            assert_eq!(cs.session, session(i), "{c}");
            assert_eq!(cs.subscriptions.len(), 1);
            n += 1;
        }
    }
    assert_eq!(n, 50);
    assert_retained_kept(&rec, 50);
    drop((s, storage));

    // The directory now says version 2 and opens without migrating.
    let storage = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    assert_eq!(
        storage.get_meta(SCHEMA_VERSION_KEY).unwrap(),
        Some(SCHEMA_VERSION)
    );
    // A will delay written now survives (the v2 field).
    let mut s = storage.clone();
    let c = cid("client-0");
    let shard = home_shard(c.as_str(), 2);
    let mut with_delay = session(0);
    if let Some(w) = &mut with_delay.will {
        w.properties.will_delay_interval = Some(30);
    }
    let mut b = crate::WriteBatch::new();
    b.put_session(c.clone(), with_delay.clone());
    s.write(shard, b, true).unwrap();
    drop((s, storage));
    let storage = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    let st = storage.load_shard(shard).unwrap();
    assert_eq!(st.clients[&c].session, with_delay);
}

/// Every retained message of [`write_old`] came through, at version 0.
fn assert_retained_kept(rec: &crate::Recovered, clients: u32) {
    let mut n = 0;
    for st in &rec.states {
        for (t, (m, version)) in &st.retained {
            let i: u32 = t.as_str()["state/".len()..].parse().unwrap();
            assert_eq!(**m, retained(i), "{t}");
            assert_eq!(*version, vmqtt::broker::RetainVersion::default());
            n += 1;
        }
    }
    assert_eq!(n, clients);
}

#[test]
fn version_2_is_migrated_to_version_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    write_old(&path, 2, 30, false);
    let storage = RocksStorage::open(&path, &RocksOptions::default()).unwrap();
    assert_eq!(
        storage.get_meta(SCHEMA_VERSION_KEY).unwrap(),
        Some(SCHEMA_VERSION)
    );
    let mut s: Box<dyn Storage> = Box::new(storage.clone());
    let rec = recover(s.as_mut(), 2).unwrap();
    let sessions: usize = rec.states.iter().map(|st| st.clients.len()).sum();
    assert_eq!(sessions, 30, "v2 sessions read as they are");
    assert_retained_kept(&rec, 30);
}

#[test]
fn a_failed_migration_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    write_v1(&path, 20, true);
    let err = RocksStorage::open(&path, &RocksOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("schema 1"), "{msg}");
    // Still version 1: the batch was not written.
    let probe = Db::open_cf_for_read_only(
        &Options::default(),
        &path,
        ["meta", "shard-0", "shard-1"],
        false,
    )
    .unwrap();
    let meta = probe.cf_handle("meta").unwrap();
    assert_eq!(
        probe.get_cf(&meta, SCHEMA_VERSION_KEY).unwrap(),
        Some(1u32.to_be_bytes().to_vec())
    );
    let shard0 = probe.cf_handle("shard-0").unwrap();
    let mut it = probe.raw_iterator_cf(&shard0);
    it.seek_to_first();
    let mut v1_sessions = 0;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k[0] == tag::SESSION
            && crate::codec::decode_session_v1(Bytes::copy_from_slice(v)).is_ok()
        {
            v1_sessions += 1;
        }
        it.next();
    }
    assert!(v1_sessions > 0);
}
