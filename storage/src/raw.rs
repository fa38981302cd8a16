//! Typed operations to key/value bytes and back, shared by both backends so
//! that [`crate::MemStorage`] exercises the same encoding as RocksDB.

use bytes::Bytes;

use crate::codec::{decode_record, encode_value};
use crate::error::Result;
use crate::keys::{client_ranges, decode_key, encode_key, encode_record_key};
use crate::record::{Op, Record};

/// Where encoded operations go: a RocksDB write batch or the in-memory map.
pub(crate) trait RawSink {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    fn delete_range(&mut self, start: &[u8], end: &[u8]);
}

/// Encodes `ops` into `sink`. Fails before anything is applied only in the
/// sense that the caller writes the sink after this returns `Ok`.
pub(crate) fn encode_ops<'a>(
    ops: impl IntoIterator<Item = &'a Op>,
    sink: &mut dyn RawSink,
) -> Result<()> {
    let mut k = Vec::with_capacity(64);
    let mut v = Vec::with_capacity(256);
    for op in ops {
        k.clear();
        match op {
            Op::Put(rec) => {
                v.clear();
                encode_record_key(rec, &mut k)?;
                encode_value(rec, &mut v)?;
                sink.put(&k, &v);
            }
            Op::Delete(key) => {
                encode_key(key, &mut k)?;
                sink.delete(&k);
            }
            Op::DeleteClient(client_id) => {
                for (start, end) in client_ranges(client_id)? {
                    sink.delete_range(&start, &end);
                }
            }
        }
    }
    Ok(())
}

/// Decodes one stored entry of a shard column family; `location` names the
/// directory and column family for the error.
pub(crate) fn decode_entry(
    location: &dyn Fn() -> String,
    key: &[u8],
    value: Bytes,
) -> Result<Record> {
    let k = decode_key(key).map_err(|e| e.at(location(), key))?;
    decode_record(k, value).map_err(|e| e.at(location(), key))
}
