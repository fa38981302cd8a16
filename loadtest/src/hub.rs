//! The hub: the one place that sees a whole run. It receives barrier,
//! per-second and final events from its *members* — the executors of this
//! process, or the worker processes of a `--processes` parent — releases the
//! barriers, samples the broker process, prints the progress line and
//! builds the report.
//!
//! Barriers (the value released with each is a CLOCK_MONOTONIC time):
//!
//! | scenario | n | reached when | hub action |
//! |---|---|---|---|
//! | pubsub | 0 | all connected and subscribed | broker sample; release the start time t0 |
//! | pubsub | 1 | all publishers done | wait until a second passes with no message (or `--drain`), release |
//! | conn | 0 | ready | broker memory at 0 connections; release t0 |
//! | conn | 1..=S | step i connected | settle, broker memory; release |
//! | conn | S+1 | held for `--duration` | broker memory; release |

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::plan::{RunConfig, Scenario};
use crate::report::{self, BrokerReport, Inputs, Report, RssPoint, SeriesPoint};
use crate::runner::Control;
use crate::tick::{MemberEvent, Part, TickData};

/// How the hub releases barriers and stops its members.
pub trait Releaser {
    /// Releases barrier `n` with `value`.
    fn release(&mut self, n: u32, value: u64);
    /// Stops every member.
    fn abort(&mut self);
}

/// Samples the broker process.
#[derive(Debug)]
struct Probe {
    pid: u32,
    last_cpu: Option<f64>,
    last_wait: Option<f64>,
    rss: Vec<RssPoint>,
}

impl Probe {
    fn rss(&mut self, label: &str, connections: u64) {
        match vmqtt_os::rss_bytes(self.pid) {
            Ok(rss_bytes) => self.rss.push(RssPoint {
                label: label.into(),
                connections,
                rss_bytes,
                cpu_seconds: vmqtt_os::cpu_seconds(self.pid).ok(),
            }),
            Err(e) => eprintln!("broker pid {}: cannot read memory: {e}", self.pid),
        }
    }

    /// CPU seconds since the previous call.
    fn cpu_delta(&mut self) -> Option<f64> {
        let now = vmqtt_os::cpu_seconds(self.pid).ok()?;
        let d = self.last_cpu.map(|l| now - l);
        self.last_cpu = Some(now);
        d
    }

    /// Run-queue wait seconds since the previous call.
    fn wait_delta(&mut self) -> Option<f64> {
        let now = vmqtt_os::sched_wait_seconds(self.pid).ok()?;
        let d = self.last_wait.map(|l| now - l);
        self.last_wait = Some(now);
        d
    }
}

/// The hub of a run.
#[derive(Debug)]
pub struct Hub {
    cfg: std::sync::Arc<RunConfig>,
    members: usize,
    barriers: BTreeMap<u32, (usize, u64)>,
    ticks: BTreeMap<u32, (usize, TickData)>,
    series: Vec<SeriesPoint>,
    parts: Vec<Option<Part>>,
    done: usize,
    probe: Option<Probe>,
    t0: u64,
    load_end: u64,
    drain_from: Option<u64>,
    quiet: bool,
    aborted: bool,
    deadline: Instant,
    started_unix_ms: u64,
    /// In one process: the executors' live received counter, and its last
    /// value with when it last changed.
    live: Option<std::sync::Arc<Control>>,
    last_received: (u64, u64),
}

impl Hub {
    /// A hub for `members` members.
    pub fn new(
        cfg: std::sync::Arc<RunConfig>,
        members: usize,
        broker_pid: Option<u32>,
        quiet: bool,
        max_run: Duration,
    ) -> Self {
        let probe = broker_pid.map(|pid| Probe {
            pid,
            last_cpu: None,
            last_wait: None,
            rss: Vec::new(),
        });
        Self {
            cfg,
            members,
            barriers: BTreeMap::new(),
            ticks: BTreeMap::new(),
            series: Vec::new(),
            parts: (0..members).map(|_| None).collect(),
            done: 0,
            probe,
            t0: 0,
            load_end: 0,
            drain_from: None,
            quiet,
            aborted: false,
            deadline: Instant::now() + max_run,
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            live: None,
            last_received: (0, 0),
        }
    }

    /// Watches the executors' live received counter (one process), so the
    /// drain ends 500 ms after the last message instead of after a quiet
    /// second.
    pub fn watch(mut self, control: std::sync::Arc<Control>) -> Self {
        self.live = Some(control);
        self
    }

    /// Runs until every member is done; returns the merged result and the
    /// inputs of the report.
    pub fn run(
        mut self,
        rx: &mpsc::Receiver<MemberEvent>,
        rel: &mut dyn Releaser,
        config: serde_json::Value,
        label: Option<String>,
        raw_tracking: bool,
    ) -> Report {
        while self.done < self.members {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => self.handle(ev, rel),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    eprintln!("vmqtt-loadtest: members went away before finishing");
                    self.aborted = true;
                    break;
                }
            }
            self.check_drain(rel);
            if Instant::now() > self.deadline && !self.aborted {
                eprintln!("vmqtt-loadtest: run took longer than its time limit; stopping");
                self.aborted = true;
                rel.abort();
                // Members close their connections and report; give them a
                // bounded time.
                self.deadline = Instant::now() + Duration::from_secs(30);
            } else if Instant::now() > self.deadline {
                break;
            }
        }
        let mut part = Part::default();
        for p in self.parts.iter().flatten() {
            part.add(p);
        }
        if let Some(probe) = self.probe.as_mut() {
            probe.rss("end", 0);
            if let Scenario::Conn(c) = &self.cfg.scenario {
                // Whether the broker gives the memory back once they closed
                // (an allocator purges after a delay, a broker may tidy its
                // tables periodically): a second sample a moment later.
                std::thread::sleep(Duration::from_millis(c.settle_ms.max(2000)));
                probe.rss("after-close", 0);
            }
        }
        let broker = self.probe.take().map(|p| BrokerReport {
            pid: p.pid,
            rss: p.rss,
            ..BrokerReport::default()
        });
        let load_end = match &self.cfg.scenario {
            Scenario::PubSub(_) => self.load_end,
            Scenario::Conn(_) => 0,
        };
        report::finish(Inputs {
            label,
            config,
            scenario: self.cfg.scenario.clone(),
            processes: if self.live.is_some() {
                // One process (possibly a `--share` of a run started by hand).
                1
            } else {
                self.members
            },
            cores: self.cfg.cores,
            started_unix_ms: self.started_unix_ms,
            t0_ns: self.t0,
            load_end_ns: load_end,
            aborted: self.aborted,
            series: std::mem::take(&mut self.series),
            part,
            loss_override: None,
            broker,
            raw_tracking,
        })
    }

    fn handle(&mut self, ev: MemberEvent, rel: &mut dyn Releaser) {
        match ev {
            MemberEvent::Barrier {
                member: _,
                n,
                connected,
            } => {
                let e = self.barriers.entry(n).or_insert((0, 0));
                e.0 += 1;
                e.1 += connected;
                if e.0 == self.members {
                    let connected = e.1;
                    self.barrier_reached(n, connected, rel);
                }
            }
            MemberEvent::Tick { member: _, data } => {
                let t = data.t;
                let e = self.ticks.entry(t).or_insert_with(|| {
                    (
                        0,
                        TickData {
                            t,
                            ..TickData::default()
                        },
                    )
                });
                e.0 += 1;
                e.1.add(&data);
                if e.0 == self.members {
                    if let Some((_, d)) = self.ticks.remove(&t) {
                        self.tick_complete(d);
                    }
                }
            }
            MemberEvent::Done { member, part } => {
                if let Some(slot) = self.parts.get_mut(member) {
                    if slot.is_none() {
                        self.done += 1;
                    }
                    *slot = Some(*part);
                }
            }
            MemberEvent::Failed { member, error } => {
                eprintln!("vmqtt-loadtest: member {member} failed: {error}");
                if let Some(slot) = self.parts.get_mut(member) {
                    if slot.is_none() {
                        self.done += 1;
                        *slot = Some(Part::default());
                    }
                }
                if !self.aborted {
                    self.aborted = true;
                    rel.abort();
                    self.deadline = self.deadline.min(Instant::now() + Duration::from_secs(30));
                }
            }
        }
    }

    fn barrier_reached(&mut self, n: u32, connected: u64, rel: &mut dyn Releaser) {
        let now = vmqtt_os::mono_ns;
        match &self.cfg.scenario {
            Scenario::PubSub(p) => match n {
                0 => {
                    if let Some(probe) = self.probe.as_mut() {
                        probe.rss("ready", connected);
                        probe.cpu_delta();
                        probe.wait_delta();
                    }
                    self.t0 = now() + 20_000_000;
                    if p.count.is_none() {
                        self.load_end = self.t0 + ((p.warmup + self.cfg.duration) * 1e9) as u64;
                    }
                    rel.release(0, self.t0);
                }
                _ => {
                    if p.count.is_some() {
                        self.load_end = now();
                    }
                    self.drain_from = Some(now());
                }
            },
            Scenario::Conn(c) => {
                let steps = c.steps.len() as u32;
                if n == 0 {
                    if let Some(probe) = self.probe.as_mut() {
                        probe.rss("start", 0);
                        probe.cpu_delta();
                        probe.wait_delta();
                    }
                    self.t0 = now() + 20_000_000;
                    rel.release(0, self.t0);
                } else if n <= steps {
                    if let Some(probe) = self.probe.as_mut() {
                        std::thread::sleep(Duration::from_millis(c.settle_ms));
                        probe.rss("step", connected);
                    }
                    if !self.quiet {
                        eprintln!("step {n}/{steps}: {connected} connections open");
                    }
                    rel.release(n, now());
                } else {
                    if let Some(probe) = self.probe.as_mut() {
                        probe.rss("hold-end", connected);
                    }
                    rel.release(n, now());
                }
            }
        }
    }

    /// Releases the drain barrier once a whole second passed with nothing
    /// received, or `--drain` after the publishers finished.
    fn check_drain(&mut self, rel: &mut dyn Releaser) {
        let (Some(from), Scenario::PubSub(p)) = (self.drain_from, &self.cfg.scenario) else {
            return;
        };
        let now = vmqtt_os::mono_ns();
        if let Some(live) = &self.live {
            let r = live.received();
            if r != self.last_received.0 {
                self.last_received = (r, now);
            }
            let quiet_since = self.last_received.1.max(from);
            if now >= quiet_since + 500_000_000 {
                self.drain_from = None;
                rel.release(1, now);
                return;
            }
        }
        let quiet_second = self.series.iter().rev().take(3).any(|s| {
            let start = self.t0 + u64::from(s.t.saturating_sub(1)) * 1_000_000_000;
            start >= from && s.counts.received == 0
        });
        let max = from + (p.drain * 1e9) as u64;
        if quiet_second || now >= max {
            self.drain_from = None;
            rel.release(1, now);
        }
    }

    fn tick_complete(&mut self, d: TickData) {
        let mut point = SeriesPoint::from_tick(d);
        if let Some(probe) = self.probe.as_mut() {
            if let Some(cpu) = probe.cpu_delta() {
                point.broker_cpu_s = Some(cpu);
                point.broker_cpu_pct = Some(cpu * 100.0);
            }
            point.broker_wait_pct = probe.wait_delta().map(|w| w * 100.0);
            point.broker_rss_bytes = vmqtt_os::rss_bytes(probe.pid).ok();
        }
        if !self.quiet {
            let pubsub = matches!(self.cfg.scenario, Scenario::PubSub(_));
            eprintln!("{}", report::progress_line(&point, pubsub));
        }
        self.series.push(point);
    }
}
