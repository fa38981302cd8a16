//! `vmqtt-storage`: durable broker state — one RocksDB database per node
//! with a column family per shard, a metadata column family holding the
//! schema version, recovery at start.
//!
//! Not built yet: the broker keeps sessions and retained messages in memory
//! and loses them on restart. This crate exists so the workspace has its
//! final shape and dependency direction (`shards` → `storage` → `vmqtt`);
//! it has no code to call.
