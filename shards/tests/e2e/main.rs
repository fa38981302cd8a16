//! End-to-end tests of the vmqtt broker with real clients over loopback.
//!
//! Each test starts its own broker process (`vmqtt-shard --cores 2 --listen
//! 127.0.0.1:<port> --config <tmp>/vmqtt.toml`, or Mosquitto) on its own port
//! and in its own temporary directory, and talks to it with raw packets
//! (`common::raw`, encoded by `vmqtt::codec`; malformed ones written by hand),
//! rumqttc (MQTT 3.1.1 and 5), mosquitto_pub/sub and paho-mqtt (Python).
//! Pub/sub tests pick client ids whose home shards differ (`common::shard`),
//! so that every message crosses cores; the key ones also run with both ids
//! on one shard.
//!
//! Run (after `scripts/install-test-deps.sh`):
//!
//! ```text
//! cargo test -p vmqtt-shard --test e2e                    # against vmqtt
//! VMQTT_E2E_BROKER=mosquitto cargo test -p vmqtt-shard --test e2e
//! cargo test -p vmqtt-shard --test e2e -- --nocapture v5::   # one area, with notes
//! ```
//!
//! Environment:
//! - `VMQTT_E2E_BROKER=vmqtt|mosquitto` — the broker under test (default vmqtt).
//!   With Mosquitto, vmqtt-only tests print `SKIP`, and known differences of
//!   Mosquitto 2.0.11 print `DIFFERS` instead of failing.
//! - `VMQTT_REQUIRE_EXTERNAL_CLIENTS=1` — a missing mosquitto_pub/sub or paho
//!   fails the test instead of skipping it (CI).
//! - `VMQTT_E2E_KEEP=1` — keep every broker's directory (config, log, data);
//!   a failing test always keeps it and prints the broker's log.
//! - `VMQTT_E2E_MOSQUITTO_DEBUG=1` — Mosquitto logs every packet.
//! - `MOSQUITTO=/path/to/mosquitto` — another Mosquitto binary.
//!
//! `durability::` kills the broker with SIGKILL under load and restarts it on
//! the same data directory and port (`Broker::kill9`, `Broker::restart`);
//! vmqtt only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

mod cluster;
mod connect;
mod durability;
mod external;
mod full_disk;
mod groups;
mod hostile;
mod keepalive;
mod load;
mod malformed;
mod ops;
mod pubsub;
mod retained;
mod security;
mod session;
mod shared;
mod topics;
mod v5;
mod will;
