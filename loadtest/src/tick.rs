//! The values that flow upwards from an executor: per-second [`TickData`],
//! the [`StepTiming`] of `conn` steps, an executor's final [`Part`], and the
//! [`MemberEvent`]s that carry them to the hub. Plain data: this module
//! depends on no module of the load generator above it (only on
//! [`crate::hist`] and [`crate::track`]), so [`crate::runner`] produces it,
//! and [`crate::hub`] and [`crate::report`] consume it, without importing
//! each other.

use serde::{Deserialize, Serialize};

use crate::hist::Hist;
use crate::track::Tracking;

/// Error messages kept per executor, beyond the counts by kind.
pub(crate) const MAX_ERROR_SAMPLES: usize = 5;
/// Counters of an executor, a process or a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// PUBLISH packets written.
    pub sent: u64,
    /// PUBACK (QoS 1) / PUBREC (QoS 2) with a success code.
    pub acked: u64,
    /// PUBLISH packets received by subscribers.
    pub received: u64,
    /// CONNACKs with success.
    pub connects: u64,
    /// Connections that did not get to a successful CONNACK (or SUBACK).
    pub connect_failures: u64,
    /// Other errors (unexpected packets, refused publishes, I/O errors).
    pub errors: u64,
    /// Connections the broker closed while the run needed them.
    pub closed: u64,
    /// Received messages whose payload is not ours.
    pub invalid: u64,
}

impl Counters {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.received += o.received;
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.errors += o.errors;
        self.closed += o.closed;
        self.invalid += o.invalid;
    }
}

/// One second of one executor (or, summed, of a process or run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TickData {
    /// Seconds since the start (the tick covers `(t-1, t]`).
    pub t: u32,
    /// Counts in that second.
    pub counts: Counters,
    /// Connections open at the end of the second.
    pub connected: u64,
    /// End-to-end latency of the messages received in that second.
    pub latency: Hist,
    /// Connect latency of the connections completed in that second.
    pub connect_latency: Hist,
}

impl TickData {
    /// Adds another executor's or process's data for the same second.
    pub fn add(&mut self, o: &TickData) {
        self.counts.add(&o.counts);
        self.connected += o.connected;
        self.latency.add(&o.latency);
        self.connect_latency.add(&o.connect_latency);
    }
}

/// The connects of one `conn` step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StepTiming {
    /// The global connection count this step goes up to.
    pub target: u32,
    /// Connections completed in this step.
    pub connected: u64,
    /// Connections that failed in this step.
    pub failed: u64,
    /// When the first connect of the step started (CLOCK_MONOTONIC ns).
    pub first_start_ns: u64,
    /// When the last CONNACK of the step came.
    pub last_done_ns: u64,
}

impl StepTiming {
    /// Merges another executor's or process's timing of the same step.
    pub fn add(&mut self, o: &StepTiming) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.first_start_ns = match (self.first_start_ns, o.first_start_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_done_ns = self.last_done_ns.max(o.last_done_ns);
    }
}

/// The result of an executor, a process, or (merged) a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Part {
    /// Counts over the whole run.
    pub counts: Counters,
    /// End-to-end latency after the warm-up.
    pub latency: Hist,
    /// Connect latency (TCP connect + CONNECT → CONNACK).
    pub connect_latency: Hist,
    /// `conn` steps.
    pub steps: Vec<StepTiming>,
    /// Sent/acknowledged/received sequence numbers.
    pub tracking: Tracking,
    /// Errors by kind.
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// A few error messages.
    pub error_samples: Vec<String>,
}

impl Part {
    /// Merges another part into this one.
    pub fn add(&mut self, o: &Part) {
        self.counts.add(&o.counts);
        self.latency.add(&o.latency);
        self.connect_latency.add(&o.connect_latency);
        for (i, s) in o.steps.iter().enumerate() {
            match self.steps.get_mut(i) {
                Some(mine) => mine.add(s),
                None => self.steps.push(*s),
            }
        }
        self.tracking.merge(&o.tracking);
        for (k, v) in &o.error_kinds {
            *self.error_kinds.entry(k.clone()).or_default() += v;
        }
        for e in &o.error_samples {
            if self.error_samples.len() < 4 * MAX_ERROR_SAMPLES {
                self.error_samples.push(e.clone());
            }
        }
    }
}

/// What a member tells the hub.
#[derive(Debug)]
pub enum MemberEvent {
    /// Reached barrier `n` with `connected` connections open.
    Barrier {
        /// Member index.
        member: usize,
        /// Barrier.
        n: u32,
        /// Connections open.
        connected: u64,
    },
    /// One second.
    Tick {
        /// Member index.
        member: usize,
        /// Data.
        data: Box<TickData>,
    },
    /// Finished.
    Done {
        /// Member index.
        member: usize,
        /// Result.
        part: Box<Part>,
    },
    /// Failed (a worker process died, …).
    Failed {
        /// Member index.
        member: usize,
        /// Why.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_merge() {
        let mut a = StepTiming {
            target: 10,
            connected: 5,
            failed: 0,
            first_start_ns: 100,
            last_done_ns: 200,
        };
        a.add(&StepTiming {
            target: 10,
            connected: 5,
            failed: 1,
            first_start_ns: 90,
            last_done_ns: 150,
        });
        assert_eq!(
            (a.connected, a.failed, a.first_start_ns, a.last_done_ns),
            (10, 1, 90, 200)
        );
        let mut z = StepTiming::default();
        z.add(&a);
        assert_eq!(z.first_start_ns, 90);
    }
}
