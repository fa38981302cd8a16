//! # vmqtt — the sans-IO core
//!
//! Everything in this crate is pure and deterministic: no sockets, no clock
//! reads, no storage, no async runtime. The I/O layer (`vmqtt-shard`) moves
//! bytes and timers; this crate decides what they mean.
//!
//! - [`codec`]: decode and encode of all 15 MQTT control packets for protocol
//!   levels 3 (MQTT 3.1, `MQIsdp`), 4 (3.1.1) and 5 (5.0), with every v5
//!   property and reason code, and a typed error for every malformed-packet and
//!   protocol-error rule that maps, in one place, to a v5 reason code.
//! - [`topic`]: topic names and filters, wildcard matching, `$`-topics and
//!   shared subscriptions (`$share/{group}/{filter}`).
//! - [`trie`]: the subscription trie (filter → subscribers with options).
//! - [`broker`]: the sans-IO shard: sessions, QoS flows, routing between
//!   shards, retained messages, wills, `$SYS`.
//! - [`ids`]: the distinct identifier types used across the broker.
//! - [`hash`]: the zero-sized, process-keyed hasher of the core's maps.

pub mod broker;
pub mod bytestr;
pub mod codec;
pub mod hash;
pub mod ids;
pub mod topic;
pub mod trie;

pub use bytestr::ByteStr;
pub use ids::{BatchId, ClientId, MessageId, PacketId};
