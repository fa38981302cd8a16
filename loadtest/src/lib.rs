//! # vmqtt-loadtest
//!
//! The load generator of vmqtt, for any MQTT 3.1.1/5.0 broker: thousands of
//! connections per core on glommio (io_uring) executors, spread over many
//! 127.0.0.x source addresses and, past the per-process file limit, over
//! several processes whose results are merged.
//!
//! - [`cli`]: the command line; [`plan`]: who connects as what, where.
//! - [`client`]: one MQTT connection (encoding and decoding with
//!   [`vmqtt::codec`]); [`runner`]: one executor's connections and counters.
//! - [`hub`]: barriers, per-second series, broker sampling; [`app`]: one
//!   process, a worker, or the parent of workers.
//! - [`tick`]: the plain data an executor reports (per-second ticks, step
//!   timings, its final part) and the events that carry it to the hub.
//! - [`payload`]: the timestamp/sequence header of every message;
//!   [`track`]: lost/duplicate/out-of-order accounting; [`hist`]: latency
//!   histograms; [`report`]: the JSON report, merging, the summary;
//!   [`plot`]: the SVG.

pub mod addr;
pub mod app;
pub mod cli;
pub mod client;
pub mod hist;
pub mod hub;
pub mod payload;
pub mod plan;
pub mod plot;
pub mod report;
pub mod runner;
pub mod sync;
pub mod tick;
pub mod track;
