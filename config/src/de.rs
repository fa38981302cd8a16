//! serde helpers for the keys whose TOML form differs from their Rust type.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::ShardOverrides;

/// `listen`: one address string, or an array of them.
pub(crate) fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Listen;

    fn parse<E: de::Error>(s: &str) -> Result<SocketAddr, E> {
        s.parse()
            .map_err(|e| E::custom(format_args!("\"{s}\" is not a socket address ({e})")))
    }

    impl<'de> Visitor<'de> for Listen {
        type Value = Vec<SocketAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket address or an array of socket addresses")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![parse(s)?])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Element(addr)) = seq.next_element()? {
                out.push(addr);
            }
            Ok(out)
        }
    }

    /// One array element, parsed by a visitor inside the element's own
    /// deserializer so that an error carries the element's position (its
    /// line) rather than the whole array's.
    struct Element(SocketAddr);

    impl<'de> Deserialize<'de> for Element {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct ElementVisitor;

            impl Visitor<'_> for ElementVisitor {
                type Value = Element;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a socket address")
                }

                fn visit_str<E: de::Error>(self, s: &str) -> Result<Element, E> {
                    parse(s).map(Element)
                }
            }

            d.deserialize_str(ElementVisitor)
        }
    }

    d.deserialize_any(Listen)
}

/// `cores`: an integer, 0 meaning `None` (one shard per CPU).
pub(crate) fn cores<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = usize::deserialize(d)?;
    Ok((n != 0).then_some(n))
}

/// `cores`: `None` is written as 0, since TOML has no null.
pub(crate) fn serialize_cores<S: Serializer>(
    cores: &Option<usize>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_u64(cores.unwrap_or(0) as u64)
}

/// `[shards.N]`: TOML keys are strings; each must be a shard number written
/// plainly (`3`, not `03` or `+3`). `ConfigSource::check_shard_names` reports
/// a bad name with its line before deserialization gets here.
pub(crate) fn shards<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<usize, ShardOverrides>, D::Error> {
    struct Shards;

    impl<'de> Visitor<'de> for Shards {
        type Value = BTreeMap<usize, ShardOverrides>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("tables named by shard number, like [shards.0]")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                let shard = parse_shard_number(&name).ok_or_else(|| {
                    de::Error::custom(format_args!(
                        "shard table `{name}` is not named by a shard number"
                    ))
                })?;
                out.insert(shard, map.next_value()?);
            }
            Ok(out)
        }
    }

    d.deserialize_map(Shards)
}

/// `[shards.N]`: written with string keys, as TOML requires.
pub(crate) fn serialize_shards<S: Serializer>(
    shards: &BTreeMap<usize, ShardOverrides>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let named: BTreeMap<String, &ShardOverrides> =
        shards.iter().map(|(n, o)| (n.to_string(), o)).collect();
    named.serialize(s)
}

/// The shard number a `[shards.N]` name stands for, if it is one written in
/// canonical form.
pub(crate) fn parse_shard_number(name: &str) -> Option<usize> {
    name.parse::<usize>().ok().filter(|n| n.to_string() == name)
}
