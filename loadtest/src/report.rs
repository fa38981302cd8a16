//! The report of a run: what the JSON file holds, how it is computed from
//! the executors' results and the per-second series, how reports of
//! processes started by hand are merged, and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::hist::{Hist, Percentiles};
use crate::plan::{ConnPlan, PubSubPlan, Scenario};
use crate::tick::{Counters, Part, StepTiming, TickData};
use crate::track::{Loss, Tracking};

/// Version of the JSON layout.
pub const FORMAT: u32 = 1;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the start; the point covers `(t-1, t]`.
    pub t: u32,
    /// "warmup", "measure" or "drain" (pubsub); "connect" or "hold" (conn).
    pub phase: String,
    /// Counts in that second.
    pub counts: Counters,
    /// Connections open at the end of the second.
    pub connected: u64,
    /// Median end-to-end latency, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile end-to-end latency, µs.
    pub p99_us: Option<f64>,
    /// Largest end-to-end latency, µs.
    pub max_us: Option<f64>,
    /// 99th percentile connect latency, µs.
    pub connect_p99_us: Option<f64>,
    /// Broker CPU use in that second (100 = one core), if `--broker-pid`.
    pub broker_cpu_pct: Option<f64>,
    /// Broker CPU seconds in that second.
    pub broker_cpu_s: Option<f64>,
    /// Time the broker's threads were runnable but waited for a CPU in that
    /// second (100 = one thread waited the whole second): other work on
    /// the machine holding the broker back.
    pub broker_wait_pct: Option<f64>,
    /// Broker resident memory at the end of the second.
    pub broker_rss_bytes: Option<u64>,
    /// The second's latency histogram (for merging).
    pub latency: Hist,
    /// The second's connect-latency histogram (for merging).
    pub connect_latency: Hist,
}

impl SeriesPoint {
    /// A point from summed tick data.
    pub fn from_tick(d: TickData) -> Self {
        let mut p = Self {
            t: d.t,
            counts: d.counts,
            connected: d.connected,
            latency: d.latency,
            connect_latency: d.connect_latency,
            ..Self::default()
        };
        p.refresh();
        p
    }

    fn refresh(&mut self) {
        self.p50_us = self.latency.quantile_us(0.5);
        self.p99_us = self.latency.quantile_us(0.99);
        self.max_us = self.latency.quantile_us(1.0);
        self.connect_p99_us = self.connect_latency.quantile_us(0.99);
    }

    fn add(&mut self, o: &SeriesPoint) {
        self.counts.add(&o.counts);
        self.connected += o.connected;
        self.latency.add(&o.latency);
        self.connect_latency.add(&o.connect_latency);
        if self.broker_cpu_pct.is_none() {
            self.broker_cpu_pct = o.broker_cpu_pct;
            self.broker_cpu_s = o.broker_cpu_s;
            self.broker_wait_pct = o.broker_wait_pct;
            self.broker_rss_bytes = o.broker_rss_bytes;
        }
        self.refresh();
    }
}

/// A broker memory sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssPoint {
    /// When: "start", "ready", "step", "hold-end", "end", "after-close"
    /// (conn: `max(settle, 2 s)` after the end).
    pub label: String,
    /// Connections open then.
    pub connections: u64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// Broker CPU time (user + system) so far, seconds.
    pub cpu_seconds: Option<f64>,
}

/// What was measured of the broker process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BrokerReport {
    /// Its PID.
    pub pid: u32,
    /// Memory samples.
    pub rss: Vec<RssPoint>,
    /// Slope of a least-squares line through the memory samples taken at
    /// connection steps (and at 0): bytes per connection.
    pub bytes_per_connection: Option<f64>,
    /// CPU seconds (user + system) over the measured seconds.
    pub cpu_seconds_measured: Option<f64>,
    /// Average CPU use over the measured seconds (100 = one core).
    pub cpu_pct_measured: Option<f64>,
    /// Average run-queue wait over the measured seconds (100 = one thread
    /// waiting for a CPU all the time).
    pub wait_pct_measured: Option<f64>,
    /// Broker CPU nanoseconds per message received by the subscribers.
    pub cpu_ns_per_delivery: Option<f64>,
    /// conn: broker CPU microseconds per connection opened (CPU time from
    /// the start to the last step, over the connections).
    pub cpu_us_per_connect: Option<f64>,
}

/// A `conn` step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The connection count the step went up to.
    pub target: u32,
    /// Connections completed in the step.
    pub connected: u64,
    /// Connections that failed in the step.
    pub failed: u64,
    /// From the first connect to the last CONNACK of the step, seconds.
    pub seconds: f64,
    /// Connects per second in the step.
    pub connects_per_s: Option<f64>,
    /// Raw timing (for merging).
    pub timing: StepTiming,
}

/// Rates over the measured seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Rates {
    /// Seconds measured.
    pub measured_s: f64,
    /// PUBLISH written per second (all publishers).
    pub sent_per_s: f64,
    /// PUBLISH received per second (all subscribers): deliveries.
    pub delivered_per_s: f64,
    /// Acknowledged publishes per second.
    pub acked_per_s: f64,
    /// Connects per second over all steps (conn).
    pub connects_per_s: Option<f64>,
    /// `true` when no whole second was measured (a short `--count` run) and
    /// the rates are over the whole run instead.
    pub whole_run: bool,
}

/// Errors seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Errors {
    /// Counts by kind.
    pub kinds: BTreeMap<String, u64>,
    /// A few messages.
    pub samples: Vec<String>,
}

/// Histograms of the whole run (for merging and offline analysis).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histograms {
    /// End-to-end latency after the warm-up, ns.
    pub latency: Hist,
    /// Connect latency, ns.
    pub connect: Hist,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// "vmqtt-loadtest".
    pub tool: String,
    /// [`FORMAT`].
    pub format: u32,
    /// `--label`.
    pub label: Option<String>,
    /// "conn" or "pubsub".
    pub scenario: String,
    /// The command-line options.
    pub config: serde_json::Value,
    /// The resolved pub/sub plan.
    pub pubsub: Option<PubSubPlan>,
    /// The resolved conn plan.
    pub conn: Option<ConnPlan>,
    /// Processes.
    pub processes: usize,
    /// Executors per process.
    pub cores_per_process: usize,
    /// Wall-clock start, ms since the epoch.
    pub started_unix_ms: u64,
    /// The start (CLOCK_MONOTONIC ns).
    pub t0_ns: u64,
    /// Start of measurement.
    pub measure_from_ns: u64,
    /// End of the load (pubsub).
    pub load_end_ns: u64,
    /// `true` if the run was cut short (timeout, a failed process).
    pub aborted: bool,
    /// One point per second.
    pub series: Vec<SeriesPoint>,
    /// Counts over the whole run.
    pub counts: Counters,
    /// Rates over the measured seconds.
    pub rates: Rates,
    /// Loss, duplicates and ordering (pubsub).
    pub loss: Option<Loss>,
    /// End-to-end latency after the warm-up.
    pub latency: Option<Percentiles>,
    /// Connect latency.
    pub connect_latency: Option<Percentiles>,
    /// `conn` steps.
    pub steps: Vec<StepReport>,
    /// The broker process.
    pub broker: Option<BrokerReport>,
    /// Errors.
    pub errors: Errors,
    /// Whole-run histograms.
    pub histograms: Histograms,
    /// Raw sequence tracking (with `--raw-tracking`).
    pub tracking: Option<Tracking>,
}

/// What [`finish`] builds a report from.
#[derive(Debug)]
pub struct Inputs {
    /// `--label`.
    pub label: Option<String>,
    /// The command-line options as JSON.
    pub config: serde_json::Value,
    /// The scenario.
    pub scenario: Scenario,
    /// Processes.
    pub processes: usize,
    /// Executors per process.
    pub cores: usize,
    /// Wall-clock start.
    pub started_unix_ms: u64,
    /// Start (mono ns).
    pub t0_ns: u64,
    /// Load end (mono ns; 0 if unknown).
    pub load_end_ns: u64,
    /// Cut short.
    pub aborted: bool,
    /// The series (phases are set by [`finish`]).
    pub series: Vec<SeriesPoint>,
    /// Everything merged.
    pub part: Part,
    /// Loss already summed (when tracking is not available).
    pub loss_override: Option<Loss>,
    /// The broker samples so far (pid and memory points).
    pub broker: Option<BrokerReport>,
    /// Keep the tracking sets in the report.
    pub raw_tracking: bool,
}

/// Least-squares slope of `y` over `x`; `None` with fewer than two distinct
/// `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// Builds the report.
pub fn finish(mut inp: Inputs) -> Report {
    let (warmup, pubsub, conn) = match &inp.scenario {
        Scenario::PubSub(p) => (p.warmup, Some(p.clone()), None),
        Scenario::Conn(c) => (0.0, None, Some(c.clone())),
    };
    let measure_from = inp.t0_ns + (warmup * 1e9) as u64;
    let load_end = if inp.load_end_ns == 0 {
        u64::MAX
    } else {
        inp.load_end_ns
    };
    let conn_end = inp
        .part
        .steps
        .last()
        .map_or(0, |s| s.last_done_ns.max(s.first_start_ns));
    let mut measured = 0u64;
    let mut measured_counts = Counters::default();
    let mut cpu_s = 0.0;
    let mut wait_s = 0.0;
    let mut cpu_all_measured = true;
    for p in &mut inp.series {
        let start = inp.t0_ns + u64::from(p.t.saturating_sub(1)) * 1_000_000_000;
        let end = inp.t0_ns + u64::from(p.t) * 1_000_000_000;
        p.phase = if pubsub.is_some() {
            if start < measure_from {
                "warmup"
            } else if end <= load_end {
                "measure"
            } else {
                "drain"
            }
        } else if start <= conn_end {
            "connect"
        } else {
            "hold"
        }
        .to_string();
        if p.phase == "measure" {
            measured += 1;
            measured_counts.add(&p.counts);
            match p.broker_cpu_s {
                Some(c) => cpu_s += c,
                None => cpu_all_measured = false,
            }
            wait_s += p.broker_wait_pct.unwrap_or(0.0) / 100.0;
        }
    }
    let mut whole_run = false;
    let mut secs = measured as f64;
    if measured == 0 && pubsub.is_some() && inp.load_end_ns > inp.t0_ns {
        // A run shorter than its warm-up plus one second: rate over all of it.
        whole_run = true;
        secs = (inp.load_end_ns - inp.t0_ns) as f64 / 1e9;
        measured_counts = inp.part.counts;
    }
    let per_s = |v: u64| if secs > 0.0 { v as f64 / secs } else { 0.0 };
    let steps: Vec<StepReport> = inp
        .part
        .steps
        .iter()
        .map(|s| {
            let seconds = s.last_done_ns.saturating_sub(s.first_start_ns) as f64 / 1e9;
            StepReport {
                target: s.target,
                connected: s.connected,
                failed: s.failed,
                seconds,
                connects_per_s: (seconds > 0.0).then(|| s.connected as f64 / seconds),
                timing: *s,
            }
        })
        .collect();
    let (conn_n, conn_s) = steps
        .iter()
        .fold((0u64, 0.0), |(n, t), s| (n + s.connected, t + s.seconds));
    let rates = Rates {
        measured_s: secs,
        sent_per_s: per_s(measured_counts.sent),
        delivered_per_s: per_s(measured_counts.received),
        acked_per_s: per_s(measured_counts.acked),
        connects_per_s: (conn_s > 0.0).then(|| conn_n as f64 / conn_s),
        whole_run,
    };
    let loss = match (&pubsub, inp.loss_override) {
        (_, Some(l)) => Some(l),
        (Some(p), None) => Some(inp.part.tracking.account(p.expected_pairs(), p.qos)),
        (None, None) => None,
    };
    let broker = inp.broker.take().map(|mut b| {
        if measured > 0 && cpu_all_measured && !whole_run {
            b.cpu_seconds_measured = Some(cpu_s);
            b.cpu_pct_measured = Some(100.0 * cpu_s / secs);
            b.wait_pct_measured = Some(100.0 * wait_s / secs);
            b.cpu_ns_per_delivery = (measured_counts.received > 0)
                .then(|| cpu_s * 1e9 / measured_counts.received as f64);
        }
        let pts: Vec<(f64, f64)> = b
            .rss
            .iter()
            .filter(|r| r.label == "start" || r.label == "step")
            .map(|r| (r.connections as f64, r.rss_bytes as f64))
            .collect();
        b.bytes_per_connection = slope(&pts);
        let first = b.rss.iter().find(|r| r.label == "start");
        let last = b.rss.iter().rev().find(|r| r.label == "step");
        if let (Some(f), Some(l)) = (first, last) {
            if let (Some(c0), Some(c1)) = (f.cpu_seconds, l.cpu_seconds) {
                if l.connections > f.connections {
                    b.cpu_us_per_connect =
                        Some((c1 - c0) * 1e6 / (l.connections - f.connections) as f64);
                }
            }
        }
        b
    });
    Report {
        tool: "vmqtt-loadtest".into(),
        format: FORMAT,
        label: inp.label,
        scenario: if pubsub.is_some() { "pubsub" } else { "conn" }.into(),
        config: inp.config,
        pubsub,
        conn,
        processes: inp.processes,
        cores_per_process: inp.cores,
        started_unix_ms: inp.started_unix_ms,
        t0_ns: inp.t0_ns,
        measure_from_ns: measure_from,
        load_end_ns: inp.load_end_ns,
        aborted: inp.aborted,
        series: inp.series,
        counts: inp.part.counts,
        rates,
        loss,
        latency: inp.part.latency.summary(),
        connect_latency: inp.part.connect_latency.summary(),
        steps,
        broker,
        errors: Errors {
            kinds: inp.part.error_kinds,
            samples: inp.part.error_samples,
        },
        histograms: Histograms {
            latency: inp.part.latency,
            connect: inp.part.connect_latency,
        },
        tracking: inp.raw_tracking.then_some(inp.part.tracking),
    }
}

/// Merges the reports of processes started by hand (`--share K/N`), each a
/// share of the same run.
pub fn merge(reports: Vec<Report>) -> Result<Report, String> {
    let mut it = reports.into_iter();
    let first = it.next().ok_or("no report to merge")?;
    let rest: Vec<Report> = it.collect();
    for r in &rest {
        if r.scenario != first.scenario {
            return Err("cannot merge a conn report with a pubsub report".into());
        }
    }
    let all_tracked = first.tracking.is_some() && rest.iter().all(|r| r.tracking.is_some());
    let scenario = match (&first.pubsub, &first.conn) {
        (Some(p), _) => Scenario::PubSub(p.clone()),
        (None, Some(c)) => Scenario::Conn(c.clone()),
        (None, None) => return Err("report without a plan".into()),
    };
    let to_part = |r: &Report| Part {
        counts: r.counts,
        latency: r.histograms.latency.clone(),
        connect_latency: r.histograms.connect.clone(),
        steps: r.steps.iter().map(|s| s.timing).collect(),
        tracking: r.tracking.clone().unwrap_or_default(),
        error_kinds: r.errors.kinds.clone(),
        error_samples: r.errors.samples.clone(),
    };
    let mut part = to_part(&first);
    let mut series: BTreeMap<u32, SeriesPoint> =
        first.series.iter().map(|p| (p.t, p.clone())).collect();
    let mut loss_sum = first.loss.unwrap_or_default();
    let mut broker = first.broker.clone();
    let mut t0 = first.t0_ns;
    let mut load_end = first.load_end_ns;
    let mut aborted = first.aborted;
    let mut processes = first.processes;
    for r in &rest {
        part.add(&to_part(r));
        for p in &r.series {
            match series.get_mut(&p.t) {
                Some(mine) => mine.add(p),
                None => {
                    series.insert(p.t, p.clone());
                }
            }
        }
        if let Some(l) = &r.loss {
            loss_sum.add(l);
        }
        if broker.is_none() {
            broker = r.broker.clone();
        }
        t0 = t0.min(r.t0_ns);
        load_end = load_end.max(r.load_end_ns);
        aborted |= r.aborted;
        processes += r.processes;
    }
    let inputs = Inputs {
        label: first.label.clone(),
        config: first.config.clone(),
        scenario,
        processes,
        cores: first.cores_per_process,
        started_unix_ms: first.started_unix_ms,
        t0_ns: t0,
        load_end_ns: load_end,
        aborted,
        series: series.into_values().collect(),
        part,
        loss_override: (!all_tracked && first.pubsub.is_some()).then_some(loss_sum),
        broker: broker.map(|b| BrokerReport {
            pid: b.pid,
            rss: b.rss,
            ..BrokerReport::default()
        }),
        raw_tracking: all_tracked,
    };
    Ok(finish(inputs))
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(us) if us >= 1000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{us:.0} µs"),
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The progress line of one second.
pub fn progress_line(p: &SeriesPoint, pubsub: bool) -> String {
    let mut s = format!("[{:>4}s]", p.t);
    if pubsub {
        let _ = write!(
            s,
            " sent/s {:>8}  recv/s {:>8}  p50 {:>9}  p99 {:>9}",
            fmt_rate(p.counts.sent as f64),
            fmt_rate(p.counts.received as f64),
            fmt_us(p.p50_us),
            fmt_us(p.p99_us),
        );
        if p.counts.acked > 0 {
            let _ = write!(s, "  acked/s {:>8}", fmt_rate(p.counts.acked as f64));
        }
    } else {
        let _ = write!(
            s,
            " connects/s {:>8}  open {:>7}  connect p99 {:>9}",
            fmt_rate(p.counts.connects as f64),
            p.connected,
            fmt_us(p.connect_p99_us),
        );
    }
    let errs = p.counts.errors + p.counts.connect_failures + p.counts.closed;
    if errs > 0 {
        let _ = write!(s, "  errors {errs}");
    }
    if let Some(c) = p.broker_cpu_pct {
        let _ = write!(s, "  broker cpu {c:>5.1}%");
    }
    if let Some(w) = p.broker_wait_pct {
        let _ = write!(s, " wait {w:>4.1}%");
    }
    if let Some(r) = p.broker_rss_bytes {
        let _ = write!(s, " rss {:.1} MiB", r as f64 / 1048576.0);
    }
    s
}

/// The summary table printed at the end.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let label = r.label.as_deref().unwrap_or("-");
    let _ = writeln!(s, "== vmqtt-loadtest {} ({label})", r.scenario);
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<28} {v}");
    };
    if r.aborted {
        row(&mut s, "ABORTED", "the run was cut short".into());
    }
    if let Some(p) = &r.pubsub {
        row(
            &mut s,
            "shape",
            format!(
                "{:?} qos {} payload {} B, {} publishers, {} subscribers, rate {}",
                p.shape,
                p.qos,
                p.payload,
                p.publishers,
                p.subscribers,
                if p.rate > 0.0 {
                    format!("{}/s each", p.rate)
                } else {
                    "open loop".into()
                }
            ),
        );
        let whole = if r.rates.whole_run {
            " (whole run: shorter than warm-up + 1 s)"
        } else {
            ""
        };
        row(
            &mut s,
            "measured",
            format!("{:.1} s{whole}", r.rates.measured_s),
        );
        row(&mut s, "sent msgs/s", fmt_rate(r.rates.sent_per_s));
        row(
            &mut s,
            "delivered msgs/s",
            fmt_rate(r.rates.delivered_per_s),
        );
        if p.qos > 0 {
            row(&mut s, "acked msgs/s", fmt_rate(r.rates.acked_per_s));
        }
        if let Some(l) = &r.latency {
            row(
                &mut s,
                "latency p50/p90/p99",
                format!(
                    "{} / {} / {}",
                    fmt_us(Some(l.p50_us)),
                    fmt_us(Some(l.p90_us)),
                    fmt_us(Some(l.p99_us))
                ),
            );
            row(
                &mut s,
                "latency p99.9/max",
                format!("{} / {}", fmt_us(Some(l.p999_us)), fmt_us(Some(l.max_us))),
            );
        }
        row(
            &mut s,
            "totals sent/acked/received",
            format!(
                "{} / {} / {}",
                r.counts.sent, r.counts.acked, r.counts.received
            ),
        );
        if let Some(l) = &r.loss {
            if p.qos == 0 {
                row(&mut s, "dropped (QoS 0, allowed)", l.dropped.to_string());
            } else {
                row(&mut s, "LOST (acked, not received)", l.lost.to_string());
                row(&mut s, "unacked at end", l.unacked.to_string());
            }
            row(&mut s, "duplicates", l.duplicates.to_string());
            row(&mut s, "out of order", l.out_of_order.to_string());
        }
    }
    if r.conn.is_some() || r.counts.connects > 0 {
        row(
            &mut s,
            "connections ok/failed",
            format!("{} / {}", r.counts.connects, r.counts.connect_failures),
        );
        if let Some(c) = r.rates.connects_per_s {
            row(&mut s, "connects/s", fmt_rate(c));
        }
        if let Some(l) = &r.connect_latency {
            row(
                &mut s,
                "connect p50/p99/max",
                format!(
                    "{} / {} / {}",
                    fmt_us(Some(l.p50_us)),
                    fmt_us(Some(l.p99_us)),
                    fmt_us(Some(l.max_us))
                ),
            );
        }
    }
    let errs = r.counts.errors + r.counts.closed;
    row(&mut s, "errors", errs.to_string());
    for (k, v) in &r.errors.kinds {
        row(&mut s, &format!("  {k}"), v.to_string());
    }
    for e in r.errors.samples.iter().take(3) {
        row(&mut s, "  e.g.", e.clone());
    }
    if let Some(b) = &r.broker {
        for p in &b.rss {
            row(
                &mut s,
                &format!("broker rss ({}, {} conns)", p.label, p.connections),
                format!("{:.1} MiB", p.rss_bytes as f64 / 1048576.0),
            );
        }
        if let Some(bpc) = b.bytes_per_connection {
            row(&mut s, "broker bytes/connection", format!("{bpc:.0}"));
        }
        if let Some(c) = b.cpu_pct_measured {
            row(&mut s, "broker cpu (measured)", format!("{c:.1}%"));
        }
        if let Some(w) = b.wait_pct_measured {
            row(&mut s, "broker waiting for a cpu", format!("{w:.1}%"));
        }
        if let Some(c) = b.cpu_ns_per_delivery {
            row(&mut s, "broker cpu ns/delivery", format!("{c:.0}"));
        }
        if let Some(c) = b.cpu_us_per_connect {
            row(&mut s, "broker cpu µs/connect", format!("{c:.1}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts = [(0.0, 100.0), (10.0, 1100.0), (20.0, 2100.0)];
        assert!((slope(&pts).unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    fn tick(t: u32, received: u64, lat_ns: u64) -> SeriesPoint {
        let mut d = TickData {
            t,
            ..TickData::default()
        };
        d.counts.received = received;
        d.counts.sent = received;
        for _ in 0..received {
            d.latency.record(lat_ns);
        }
        SeriesPoint::from_tick(d)
    }

    fn plan() -> PubSubPlan {
        PubSubPlan {
            shape: crate::cli::Shape::P2p,
            publishers: 1,
            subscribers: 1,
            qos: 0,
            payload: 16,
            rate: 0.0,
            inflight: 1,
            count: None,
            warmup: 1.0,
            drain: 1.0,
            batch: 1,
            topic_prefix: "lt/t".into(),
            group: "g".into(),
        }
    }

    fn report(received: [u64; 4]) -> Report {
        let t0 = 1_000_000_000_000;
        let mut part = Part::default();
        part.tracking
            .add_publisher(0, received.iter().sum::<u64>() as u32, &Default::default());
        finish(Inputs {
            label: None,
            config: serde_json::Value::Null,
            scenario: Scenario::PubSub(plan()),
            processes: 1,
            cores: 1,
            started_unix_ms: 0,
            t0_ns: t0,
            load_end_ns: t0 + 3_000_000_000,
            aborted: false,
            series: (0..4)
                .map(|i| tick(i as u32 + 1, received[i], 1000))
                .collect(),
            part,
            loss_override: None,
            broker: None,
            raw_tracking: true,
        })
    }

    #[test]
    fn phases_and_rates() {
        let r = report([5, 10, 20, 3]);
        let phases: Vec<_> = r.series.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(phases, ["warmup", "measure", "measure", "drain"]);
        assert_eq!(r.rates.measured_s, 2.0);
        assert_eq!(r.rates.delivered_per_s, 15.0);
        // Nothing received was tracked: all 38 sent count as dropped.
        assert_eq!(r.loss.unwrap().dropped, 38);
        assert!(summary(&r).contains("delivered msgs/s"));
    }

    #[test]
    fn merging_two_shares_adds_series_and_recomputes() {
        let a = report([5, 10, 20, 3]);
        let b = report([1, 1, 1, 1]);
        let text = serde_json::to_string(&a).unwrap();
        let a: Report = serde_json::from_str(&text).unwrap();
        let m = merge(vec![a, b]).unwrap();
        assert_eq!(m.processes, 2);
        assert_eq!(m.series[1].counts.received, 11);
        assert_eq!(m.series[1].latency.len(), 11);
        assert_eq!(m.rates.delivered_per_s, 16.0);
        // The same publisher 0 in both: sent is the max, not the sum.
        assert_eq!(m.loss.unwrap().dropped, 38);
        assert!(merge(Vec::new()).is_err());
    }
}
