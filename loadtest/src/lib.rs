//! `vmqtt-loadtest`: the load generator (connect rate, pub/sub shapes,
//! latency percentiles) for vmqtt and any other MQTT broker.
//!
//! Not built yet; this crate holds the workspace shape.
