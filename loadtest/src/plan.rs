//! Resolving the command line into a run: who connects, as what, from which
//! source address, on which process and executor; topics and filters of each
//! shape; which receivers should see which publishers.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmqtt::codec::{ProtocolVersion, QoS};

use crate::addr::parse_source_ips;
use crate::cli::{Common, ConnArgs, MqttVersion, PubsubArgs, Shape};

/// What a run does, resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Scenario {
    /// Connect rate and idle connections.
    Conn(ConnPlan),
    /// Publish/subscribe.
    PubSub(PubSubPlan),
}

/// The `conn` scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnPlan {
    /// Connections over the whole run.
    pub connections: u32,
    /// Connection counts (global, increasing, the last = `connections`) at
    /// which the run pauses to sample broker memory.
    pub steps: Vec<u32>,
    /// Wait after each step before sampling, ms.
    pub settle_ms: u64,
}

/// The `pubsub` scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PubSubPlan {
    /// Shape.
    pub shape: Shape,
    /// Publishers over the whole run.
    pub publishers: u32,
    /// Subscribers over the whole run.
    pub subscribers: u32,
    /// QoS 0..=2.
    pub qos: u8,
    /// Payload bytes.
    pub payload: u32,
    /// Messages/s per publisher; 0 = open loop.
    pub rate: f64,
    /// QoS 1/2 window.
    pub inflight: u32,
    /// Messages per publisher, or `None` for a timed run.
    pub count: Option<u32>,
    /// Unmeasured seconds at the start.
    pub warmup: f64,
    /// Longest wait for messages in flight after the load, seconds.
    pub drain: f64,
    /// Messages per write in open loop.
    pub batch: u32,
    /// Topic prefix, unique to the run.
    pub topic_prefix: String,
    /// Shared subscription group.
    pub group: String,
}

impl PubSubPlan {
    /// The topic publisher `p` publishes to.
    pub fn publisher_topic(&self, p: u32) -> String {
        let pre = &self.topic_prefix;
        match self.shape {
            Shape::FanIn => format!("{pre}/fanin/{p}"),
            Shape::FanOut => format!("{pre}/fanout"),
            Shape::P2p => format!("{pre}/p2p/{p}"),
            Shape::Shared => format!("{pre}/shared/{p}"),
        }
    }

    /// The filter subscriber `s` subscribes to.
    pub fn subscriber_filter(&self, s: u32) -> String {
        let pre = &self.topic_prefix;
        match self.shape {
            Shape::FanIn => format!("{pre}/fanin/+"),
            Shape::FanOut => format!("{pre}/fanout"),
            Shape::P2p => format!("{pre}/p2p/{s}"),
            Shape::Shared => format!("$share/{}/{pre}/shared/+", self.group),
        }
    }

    /// The receiver subscriber `s` counts for: itself, or for a shared
    /// subscription the group (receiver 0).
    pub fn receiver_of(&self, s: u32) -> u32 {
        match self.shape {
            Shape::Shared => 0,
            _ => s,
        }
    }

    /// The (receiver, publisher) pairs where the receiver should get every
    /// message of the publisher.
    pub fn expected_pairs(&self) -> Vec<(u32, u32)> {
        match self.shape {
            Shape::FanIn | Shape::FanOut => (0..self.subscribers)
                .flat_map(|s| (0..self.publishers).map(move |p| (s, p)))
                .collect(),
            Shape::P2p => (0..self.publishers.min(self.subscribers))
                .map(|i| (i, i))
                .collect(),
            Shape::Shared => (0..self.publishers).map(|p| (0, p)).collect(),
        }
    }

    /// Deliveries each published message should cause.
    pub fn fanout_factor(&self) -> u32 {
        match self.shape {
            Shape::FanIn | Shape::FanOut => self.subscribers,
            Shape::P2p | Shape::Shared => 1,
        }
    }

    /// The QoS as the codec's type.
    pub fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

/// Everything an executor needs to know about the run (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The broker.
    pub broker: SocketAddr,
    /// Where subscribers connect, if not to `broker` (`--sub-broker`).
    pub sub_broker: Option<SocketAddr>,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Source addresses (empty: let the kernel pick).
    pub sources: Vec<Ipv4Addr>,
    /// Clean sessions.
    pub clean: bool,
    /// Keep alive, seconds.
    pub keepalive: u16,
    /// v5 session expiry for persistent sessions.
    pub session_expiry: Option<u32>,
    /// CONNACK timeout.
    pub connect_timeout: Duration,
    /// Seconds of load or of holding.
    pub duration: f64,
    /// Connects in progress at once, per executor.
    pub concurrency_per_core: usize,
    /// Client identifier prefix.
    pub client_prefix: String,
    /// The scenario.
    pub scenario: Scenario,
    /// This process's share: (index, of how many).
    pub share: (usize, usize),
    /// Executors in this process.
    pub cores: usize,
    /// Longest a task runs before the executor polls for I/O, µs.
    pub preempt_us: u64,
}

/// What a connection does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Connects and stays idle (conn scenario).
    Idle,
    /// Publishes to `topic`.
    Publisher {
        /// Publisher index.
        id: u32,
        /// Topic.
        topic: String,
    },
    /// Subscribes to `filter`.
    Subscriber {
        /// Subscriber index.
        id: u32,
        /// The receiver it counts for.
        receiver: u32,
        /// Filter.
        filter: String,
    },
}

/// One connection of an executor.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Index over the whole run (orders connections and picks the source
    /// address).
    pub global: u32,
    /// What it does.
    pub role: Role,
    /// Client identifier.
    pub client_id: String,
    /// Source address.
    pub source: Option<Ipv4Addr>,
}

/// The default client prefix: unique enough per run on one machine.
pub fn default_prefix() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("lt{}x{}", std::process::id(), secs % 100_000)
}

fn resolve_broker(c: &Common) -> Result<SocketAddr, String> {
    (c.host.as_str(), c.port)
        .to_socket_addrs()
        .map_err(|e| format!("--host {}: {e}", c.host))?
        .next()
        .ok_or_else(|| format!("--host {}: no address", c.host))
}

fn base_config(
    c: &Common,
    scenario: Scenario,
    share: (usize, usize),
    cores: usize,
) -> Result<RunConfig, String> {
    let version = match c.mqtt {
        MqttVersion::V311 => ProtocolVersion::V3_1_1,
        MqttVersion::V5 => ProtocolVersion::V5,
    };
    let sources = match &c.source_ips {
        Some(spec) => parse_source_ips(spec)?,
        None => Vec::new(),
    };
    if !(c.duration.is_finite() && c.duration >= 0.0) {
        return Err("--duration must be a number of seconds >= 0".into());
    }
    if !(c.connect_timeout.is_finite() && c.connect_timeout > 0.0) {
        return Err("--connect-timeout must be > 0".into());
    }
    let workers = share.1.max(1) * cores.max(1);
    Ok(RunConfig {
        broker: resolve_broker(c)?,
        sub_broker: match &c.sub_broker {
            Some(a) => Some(
                a.to_socket_addrs()
                    .map_err(|e| format!("--sub-broker {a}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--sub-broker {a}: no address"))?,
            ),
            None => None,
        },
        version,
        sources,
        clean: !c.persistent,
        keepalive: c.keepalive,
        session_expiry: (c.persistent && version.is_v5()).then_some(c.session_expiry),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        duration: c.duration,
        concurrency_per_core: c.concurrency.max(1).div_ceil(workers).max(1),
        client_prefix: c.client_prefix.clone().unwrap_or_else(default_prefix),
        scenario,
        share,
        cores,
        preempt_us: c.preempt_us,
    })
}

/// Resolves `conn` options.
pub fn conn_config(a: &ConnArgs, share: (usize, usize), cores: usize) -> Result<RunConfig, String> {
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let mut steps: Vec<u32> = a
        .steps
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < a.connections)
        .collect();
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err("--steps must increase".into());
    }
    steps.push(a.connections);
    let plan = ConnPlan {
        connections: a.connections,
        steps,
        settle_ms: a.settle_ms,
    };
    base_config(&a.common, Scenario::Conn(plan), share, cores)
}

/// Resolves `pubsub` options.
pub fn pubsub_config(
    a: &PubsubArgs,
    share: (usize, usize),
    cores: usize,
) -> Result<RunConfig, String> {
    let (dp, ds) = match a.shape {
        Shape::FanIn => (10, 1),
        Shape::FanOut => (1, 100),
        Shape::P2p => (100, 100),
        Shape::Shared => (10, 4),
    };
    let publishers = a.publishers.unwrap_or(dp);
    let subscribers = match a.shape {
        Shape::P2p => a.subscribers.unwrap_or(publishers),
        _ => a.subscribers.unwrap_or(ds),
    };
    if publishers == 0 || subscribers == 0 {
        return Err("need at least one publisher and one subscriber".into());
    }
    if a.shape == Shape::P2p && subscribers != publishers {
        return Err("p2p: --subscribers must equal --publishers (one pair each)".into());
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        return Err("--rate must be >= 0".into());
    }
    if !(a.warmup.is_finite() && a.warmup >= 0.0 && a.drain.is_finite() && a.drain >= 0.0) {
        return Err("--warmup and --drain must be >= 0".into());
    }
    let prefix = a
        .common
        .client_prefix
        .clone()
        .unwrap_or_else(default_prefix);
    let plan = PubSubPlan {
        shape: a.shape,
        publishers,
        subscribers,
        qos: a.qos,
        payload: a.payload.max(crate::payload::HEADER_LEN as u32),
        rate: a.rate,
        inflight: a.inflight,
        count: a.count,
        warmup: a.warmup,
        drain: a.drain,
        batch: a.batch.clamp(1, 4096),
        topic_prefix: format!("lt/{prefix}"),
        group: a.group.clone(),
    };
    let mut common = a.common.clone();
    common.client_prefix = Some(prefix);
    base_config(&common, Scenario::PubSub(plan), share, cores)
}

impl RunConfig {
    /// Total connections of the run (all processes).
    pub fn total_connections(&self) -> u64 {
        match &self.scenario {
            Scenario::Conn(c) => u64::from(c.connections),
            Scenario::PubSub(p) => u64::from(p.publishers) + u64::from(p.subscribers),
        }
    }

    fn source_for(&self, global: u32) -> Option<Ipv4Addr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[global as usize % self.sources.len()])
        }
    }

    /// Whether connection `global` belongs to executor `core` of this
    /// process.
    fn mine(&self, global: u32, core: usize) -> bool {
        let (k, n) = self.share;
        let g = global as usize;
        g % n == k && (g / n) % self.cores.max(1) == core
    }

    /// The connections of executor `core` of this process, in global
    /// order.
    pub fn connections_of(&self, core: usize) -> Vec<ConnSpec> {
        let prefix = &self.client_prefix;
        match &self.scenario {
            Scenario::Conn(c) => (0..c.connections)
                .filter(|&g| self.mine(g, core))
                .map(|g| ConnSpec {
                    global: g,
                    role: Role::Idle,
                    client_id: format!("{prefix}-c{g}"),
                    source: self.source_for(g),
                })
                .collect(),
            Scenario::PubSub(p) => {
                let subs = (0..p.subscribers).map(|s| (s, true));
                let pubs = (0..p.publishers).map(|i| (i, false));
                subs.chain(pubs)
                    .filter_map(|(i, sub)| {
                        let g = if sub { i } else { p.subscribers + i };
                        if !self.mine(g, core) {
                            return None;
                        }
                        let (role, id) = if sub {
                            (
                                Role::Subscriber {
                                    id: i,
                                    receiver: p.receiver_of(i),
                                    filter: p.subscriber_filter(i),
                                },
                                format!("{prefix}-s{i}"),
                            )
                        } else {
                            (
                                Role::Publisher {
                                    id: i,
                                    topic: p.publisher_topic(i),
                                },
                                format!("{prefix}-p{i}"),
                            )
                        };
                        Some(ConnSpec {
                            global: g,
                            role,
                            client_id: id,
                            source: self.source_for(g),
                        })
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn pubsub(args: &[&str], share: (usize, usize), cores: usize) -> RunConfig {
        let mut argv = vec!["x", "pubsub", "--client-prefix", "t"];
        argv.extend_from_slice(args);
        let Command::Pubsub(a) = Cli::try_parse_from(argv).unwrap().command else {
            panic!()
        };
        pubsub_config(&a, share, cores).unwrap()
    }

    #[test]
    fn every_connection_lands_on_exactly_one_executor() {
        let cfg0 = pubsub(&["--shape", "p2p", "--publishers", "7"], (0, 2), 3);
        let cfg1 = RunConfig {
            share: (1, 2),
            ..cfg0.clone()
        };
        let mut seen = Vec::new();
        for cfg in [&cfg0, &cfg1] {
            for core in 0..3 {
                seen.extend(cfg.connections_of(core).into_iter().map(|c| c.global));
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..14).collect::<Vec<_>>());
    }

    #[test]
    fn shapes_topics_and_pairs() {
        let cfg = pubsub(
            &[
                "--shape",
                "shared",
                "--publishers",
                "2",
                "--subscribers",
                "3",
            ],
            (0, 1),
            1,
        );
        let Scenario::PubSub(p) = &cfg.scenario else {
            panic!()
        };
        assert_eq!(p.subscriber_filter(2), "$share/g/lt/t/shared/+");
        assert_eq!(p.publisher_topic(1), "lt/t/shared/1");
        assert_eq!(p.expected_pairs(), vec![(0, 0), (0, 1)]);
        assert_eq!(p.receiver_of(2), 0);
        let conns = cfg.connections_of(0);
        assert_eq!(conns.len(), 5);
        assert_eq!(conns[0].client_id, "t-s0");
        assert_eq!(conns[4].client_id, "t-p1");

        let cfg = pubsub(&["--shape", "fan-in", "--publishers", "3"], (0, 1), 1);
        let Scenario::PubSub(p) = &cfg.scenario else {
            panic!()
        };
        assert_eq!(p.expected_pairs(), vec![(0, 0), (0, 1), (0, 2)]);
        assert!(vmqtt::topic::matches(
            &p.subscriber_filter(0),
            &p.publisher_topic(2)
        ));

        let cfg = pubsub(&["--shape", "fan-out", "--subscribers", "2"], (0, 1), 1);
        let Scenario::PubSub(p) = &cfg.scenario else {
            panic!()
        };
        assert_eq!(p.expected_pairs(), vec![(0, 0), (1, 0)]);
        assert_eq!(p.fanout_factor(), 2);
    }

    #[test]
    fn source_addresses_rotate() {
        let cfg = pubsub(
            &["--shape", "p2p", "--publishers", "3", "--source-ips", "2"],
            (0, 1),
            1,
        );
        let ips: Vec<_> = cfg.connections_of(0).iter().map(|c| c.source).collect();
        let a = Some(Ipv4Addr::new(127, 0, 0, 1));
        let b = Some(Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(ips, vec![a, b, a, b, a, b]);
    }

    #[test]
    fn conn_steps() {
        let Command::Conn(a) = Cli::try_parse_from([
            "x",
            "conn",
            "--connections",
            "100",
            "--steps",
            "10,50,100,200",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let cfg = conn_config(&a, (0, 1), 2).unwrap();
        let Scenario::Conn(c) = &cfg.scenario else {
            panic!()
        };
        assert_eq!(c.steps, vec![10, 50, 100]);
        assert_eq!(
            cfg.connections_of(0).len() + cfg.connections_of(1).len(),
            100
        );
    }
}
