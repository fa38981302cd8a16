//! Key bytes: the only place keys and column family names are built and
//! parsed. Big-endian throughout, so keys sort by (record kind, client,
//! sequence) and a scan of a shard's column family yields sessions, then
//! subscriptions, then messages, then queue entries, then inbound QoS 2 ids,
//! then retained messages. `docs/STORAGE.md` draws the layout.
//!
//! ```text
//! shard-{n}   0x01 | len:u16 | client_id                 session
//!             0x02 | len:u16 | client_id | filter        subscription
//!             0x03 | message_id:u64                      message
//!             0x04 | len:u16 | client_id | seq:u64       queue entry
//!             0x05 | len:u16 | client_id | packet_id:u16 inbound QoS 2 id
//!             0x06 | topic                               retained message
//! meta        "schema_version"                           u32
//!             "shards"                                   u32
//! ```
//!
//! The client id is length-prefixed so that one client's keys form a
//! contiguous range that no other client's keys fall into (a client id may
//! be a prefix of another); the last field of a key needs no length.

use bytes::Bytes;
use vmqtt::broker::ShardId;
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, ClientId, PacketId};

use crate::error::{DecodeError, DecodeResult, StorageError};
use crate::record::{MessageId, Record, RecordKey};

/// The column family holding the schema version.
pub const META_CF: &str = "meta";

/// Key of the schema version in [`META_CF`]; the value is a big-endian u32.
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// Key of the shard count the data is laid out for in [`META_CF`]; the
/// value is a big-endian u32. Written atomically with the data of a
/// reshard, so a crash mid-reshard is detected at the next start.
pub const SHARDS_KEY: &[u8] = b"shards";

const SHARD_CF_PREFIX: &str = "shard-";

/// Record kind tags: the first byte of every key in a shard column family.
pub(crate) mod tag {
    pub(crate) const SESSION: u8 = 0x01;
    pub(crate) const SUBSCRIPTION: u8 = 0x02;
    pub(crate) const MESSAGE: u8 = 0x03;
    pub(crate) const QUEUE: u8 = 0x04;
    pub(crate) const INBOUND_QOS2: u8 = 0x05;
    pub(crate) const RETAINED: u8 = 0x06;
}

/// Every key of a shard column family sorts in `[FIRST_KEY, END_KEY)`.
pub(crate) const FIRST_KEY: &[u8] = &[0x00];
/// See [`FIRST_KEY`].
pub(crate) const END_KEY: &[u8] = &[0xff];

/// The column family name of `shard`: `shard-{n}`.
pub fn shard_cf(shard: ShardId) -> String {
    format!("{SHARD_CF_PREFIX}{}", shard.get())
}

/// The shard of a column family name `shard-{n}` (decimal, no leading
/// zeros), or `None` for any other name.
pub fn parse_shard_cf(name: &str) -> Option<ShardId> {
    let n = name.strip_prefix(SHARD_CF_PREFIX)?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    n.parse::<u16>().ok().map(ShardId::new)
}

fn put_client(buf: &mut Vec<u8>, tag: u8, client_id: &ClientId) -> Result<(), StorageError> {
    let id = client_id.as_str().as_bytes();
    let len = u16::try_from(id.len()).map_err(|_| StorageError::TooLarge("client id"))?;
    buf.push(tag);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(id);
    Ok(())
}

/// Appends the key of `key` to `buf`.
pub(crate) fn encode_key(key: &RecordKey, buf: &mut Vec<u8>) -> Result<(), StorageError> {
    match key {
        RecordKey::Session(c) => put_client(buf, tag::SESSION, c)?,
        RecordKey::Subscription(c, filter) => {
            put_client(buf, tag::SUBSCRIPTION, c)?;
            buf.extend_from_slice(filter.as_str().as_bytes());
        }
        RecordKey::Message(id) => {
            buf.push(tag::MESSAGE);
            buf.extend_from_slice(&id.0.to_be_bytes());
        }
        RecordKey::QueueEntry(c, seq) => {
            put_client(buf, tag::QUEUE, c)?;
            buf.extend_from_slice(&seq.to_be_bytes());
        }
        RecordKey::InboundQos2(c, pid) => {
            put_client(buf, tag::INBOUND_QOS2, c)?;
            buf.extend_from_slice(&pid.get().to_be_bytes());
        }
        RecordKey::Retained(topic) => {
            buf.push(tag::RETAINED);
            buf.extend_from_slice(topic.as_str().as_bytes());
        }
    }
    Ok(())
}

/// Appends the key of `rec` to `buf` (as [`encode_key`] of [`Record::key`],
/// without cloning).
pub(crate) fn encode_record_key(rec: &Record, buf: &mut Vec<u8>) -> Result<(), StorageError> {
    match rec {
        Record::Session { client_id, .. } => put_client(buf, tag::SESSION, client_id)?,
        Record::Subscription {
            client_id, filter, ..
        } => {
            put_client(buf, tag::SUBSCRIPTION, client_id)?;
            buf.extend_from_slice(filter.as_str().as_bytes());
        }
        Record::Message { id, .. } => {
            buf.push(tag::MESSAGE);
            buf.extend_from_slice(&id.0.to_be_bytes());
        }
        Record::QueueEntry { client_id, seq, .. } => {
            put_client(buf, tag::QUEUE, client_id)?;
            buf.extend_from_slice(&seq.to_be_bytes());
        }
        Record::InboundQos2 {
            client_id,
            packet_id,
        } => {
            put_client(buf, tag::INBOUND_QOS2, client_id)?;
            buf.extend_from_slice(&packet_id.get().to_be_bytes());
        }
        Record::Retained { message, .. } => {
            buf.push(tag::RETAINED);
            buf.extend_from_slice(message.topic.as_str().as_bytes());
        }
    }
    Ok(())
}

/// The key bytes of `key`.
pub fn key_bytes(key: &RecordKey) -> Result<Vec<u8>, StorageError> {
    let mut buf = Vec::with_capacity(32);
    encode_key(key, &mut buf)?;
    Ok(buf)
}

/// A key range `[start, end)`.
pub(crate) type KeyRange = (Vec<u8>, Vec<u8>);

/// The key ranges `[start, end)` holding every record of `client_id`
/// except messages: its session, subscriptions, queue entries and inbound
/// QoS 2 ids.
pub(crate) fn client_ranges(client_id: &ClientId) -> Result<[KeyRange; 4], StorageError> {
    let range = |tag| -> Result<KeyRange, StorageError> {
        let mut start = Vec::with_capacity(3 + client_id.as_str().len());
        put_client(&mut start, tag, client_id)?;
        let end = successor(&start);
        Ok((start, end))
    };
    Ok([
        range(tag::SESSION)?,
        range(tag::SUBSCRIPTION)?,
        range(tag::QUEUE)?,
        range(tag::INBOUND_QOS2)?,
    ])
}

/// The smallest key greater than every key starting with `prefix` (which
/// must not be all 0xff; ours start with a tag below 0xff).
fn successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            break;
        }
    }
    end
}

struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.rest.len() < n {
            return Err(DecodeError("key truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> DecodeResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> DecodeResult<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn client(&mut self) -> DecodeResult<ClientId> {
        let len = usize::from(self.u16()?);
        let id = self.take(len)?;
        ByteStr::from_utf8(Bytes::copy_from_slice(id))
            .map(ClientId::new)
            .map_err(|_| DecodeError("client id is not UTF-8"))
    }

    fn rest_str(&mut self) -> DecodeResult<ByteStr> {
        let s = std::mem::take(&mut self.rest);
        ByteStr::from_utf8(Bytes::copy_from_slice(s)).map_err(|_| DecodeError("key is not UTF-8"))
    }

    fn end(&self) -> DecodeResult<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes in key"))
        }
    }
}

/// Parses a shard column family key.
pub(crate) fn decode_key(key: &[u8]) -> DecodeResult<RecordKey> {
    let (&t, rest) = key.split_first().ok_or(DecodeError("empty key"))?;
    let mut r = KeyReader { rest };
    let k = match t {
        tag::SESSION => RecordKey::Session(r.client()?),
        tag::SUBSCRIPTION => {
            let c = r.client()?;
            let f = TopicFilter::new(r.rest_str()?).map_err(|_| DecodeError("invalid filter"))?;
            RecordKey::Subscription(c, f)
        }
        tag::MESSAGE => RecordKey::Message(MessageId(r.u64()?)),
        tag::QUEUE => {
            let c = r.client()?;
            RecordKey::QueueEntry(c, r.u64()?)
        }
        tag::INBOUND_QOS2 => {
            let c = r.client()?;
            let p = PacketId::new(r.u16()?).ok_or(DecodeError("packet id 0"))?;
            RecordKey::InboundQos2(c, p)
        }
        tag::RETAINED => RecordKey::Retained(
            TopicName::new(r.rest_str()?).map_err(|_| DecodeError("invalid topic"))?,
        ),
        _ => return Err(DecodeError("unknown record tag")),
    };
    r.end()?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(s: &str) -> ClientId {
        ClientId::new(ByteStr::from(s))
    }

    #[test]
    fn shard_cf_names_round_trip_and_reject_others() {
        for n in [0u16, 1, 9, 10, 65535] {
            assert_eq!(
                parse_shard_cf(&shard_cf(ShardId::new(n))),
                Some(ShardId::new(n))
            );
        }
        for bad in [
            "meta",
            "default",
            "shard-",
            "shard-01",
            "shard-x",
            "shard-65536",
            "shard--1",
        ] {
            assert_eq!(parse_shard_cf(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let keys = [
            RecordKey::Session(cid("a")),
            RecordKey::Subscription(
                cid("a"),
                TopicFilter::from_static("$share/g/a/+/#").unwrap(),
            ),
            RecordKey::Message(MessageId(u64::MAX)),
            RecordKey::QueueEntry(cid("é"), 7),
            RecordKey::InboundQos2(cid(""), PacketId::new(65535).unwrap()),
            RecordKey::Retained(TopicName::from_static("$SYS/x").unwrap()),
        ];
        for k in keys {
            let b = key_bytes(&k).unwrap();
            assert_eq!(decode_key(&b), Ok(k));
        }
    }

    #[test]
    fn queue_keys_sort_by_client_then_sequence() {
        let k = |c: &str, s| key_bytes(&RecordKey::QueueEntry(cid(c), s)).unwrap();
        assert!(k("a", 1) < k("a", 2));
        assert!(k("a", 255) < k("a", 256), "big-endian sequence");
        assert!(k("a", u64::MAX) < k("b", 0));
    }

    #[test]
    fn client_ranges_cover_exactly_one_client() {
        // "a" is a prefix of "ab": the length prefix keeps them apart.
        let [_, subs, queue, _] = client_ranges(&cid("a")).unwrap();
        let in_range = |r: &(Vec<u8>, Vec<u8>), k: &[u8]| r.0.as_slice() <= k && k < r.1.as_slice();
        let f = TopicFilter::from_static("x").unwrap();
        assert!(in_range(
            &subs,
            &key_bytes(&RecordKey::Subscription(cid("a"), f.clone())).unwrap()
        ));
        assert!(!in_range(
            &subs,
            &key_bytes(&RecordKey::Subscription(cid("ab"), f)).unwrap()
        ));
        assert!(in_range(
            &queue,
            &key_bytes(&RecordKey::QueueEntry(cid("a"), u64::MAX)).unwrap()
        ));
        assert!(!in_range(
            &queue,
            &key_bytes(&RecordKey::QueueEntry(cid("b"), 0)).unwrap()
        ));
    }

    #[test]
    fn garbage_keys_are_errors() {
        for k in [
            &[][..],
            &[0x07],
            &[0x01, 0x00],
            &[0x01, 0x00, 0x02, b'a'],
            &[0x03, 1, 2],
            &[0x01, 0, 1, 0xff],
        ] {
            assert!(decode_key(k).is_err(), "{k:?}");
        }
        assert!(decode_key(&[0x05, 0, 0, 0, 0]).is_err(), "packet id 0");
    }

    #[test]
    fn overlong_client_id_is_refused() {
        let long = cid(&"x".repeat(70_000));
        assert!(matches!(
            key_bytes(&RecordKey::Session(long)),
            Err(StorageError::TooLarge(_))
        ));
    }
}
