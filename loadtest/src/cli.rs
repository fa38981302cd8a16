//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Load generator for MQTT brokers (vmqtt, Mosquitto, any other): connect
/// rate and idle-connection memory, pub/sub throughput and end-to-end
/// latency, with loss, duplicate and ordering checks.
#[derive(Debug, Parser)]
#[command(name = "vmqtt-loadtest", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios and tools.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect rate: open N connections as fast as a concurrency limit
    /// allows, measure CONNECT→CONNACK latency and connects/s, then hold
    /// them idle (keepalive) and report the broker's memory.
    Conn(ConnArgs),
    /// Publish/subscribe throughput and latency in one of four shapes.
    Pubsub(PubsubArgs),
    /// Combines the JSON reports of several runs (processes started by hand
    /// with --share) into one.
    Merge(MergeArgs),
    /// Draws the SVG plot of a JSON report.
    Plot(PlotArgs),
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5")]
    #[serde(rename = "5")]
    V5,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Common {
    /// Broker host (an IP address or a name that resolves).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Subscribers connect here instead (`HOST:PORT`): another node of a
    /// cluster, so every message crosses between nodes.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(default)]
    pub sub_broker: Option<String>,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub mqtt: MqttVersion,
    /// Source addresses to spread connections over, so one address's
    /// ephemeral ports do not cap a run: a count N (127.0.0.1 ..=
    /// 127.0.0.N) or a list of addresses and ranges
    /// ("127.0.0.1-127.0.0.40", "127.0.0.2,127.0.0.5-9").
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Executors (threads) per process, each pinned to one of the first N
    /// CPUs of the affinity mask.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Pin the executors to exactly these CPUs (taskset -c syntax, e.g. "1"
    /// or "0-1"); one executor per CPU listed. Overrides --cores.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Do not pin executors to CPUs (the kernel schedules them).
    #[arg(long)]
    pub no_pin: bool,
    /// Run as K processes, each with 1/K of the connections (to get past
    /// the per-process open-file limit); results are merged.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Run only share K of N of the connections, standalone (for processes
    /// started by hand; combine their --json files with `merge`).
    #[arg(long, value_name = "K/N")]
    pub share: Option<String>,
    /// Seconds of load (pubsub), or of holding the connections (conn).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Connections being opened at once, over all executors and processes.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Keep alive in seconds, sent in CONNECT; idle connections send
    /// PINGREQ at this interval.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Seconds to wait for TCP connect plus CONNACK.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Clean sessions (the default).
    #[arg(long, conflicts_with = "persistent")]
    pub clean: bool,
    /// Persistent sessions: clean session 0 (3.1.1) / clean start 0 with a
    /// session expiry (5).
    #[arg(long)]
    pub persistent: bool,
    /// Session expiry interval in seconds for --persistent with MQTT 5.
    #[arg(long, default_value_t = 3600)]
    pub session_expiry: u32,
    /// Prefix of client identifiers and topics (default: lt<pid>).
    #[arg(long)]
    pub client_prefix: Option<String>,
    /// PID of the broker process: its resident memory (VmRSS) and CPU time
    /// (/proc/PID/stat) are sampled and reported.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A free-form label stored in the report (e.g. "vmqtt" or "mosquitto").
    #[arg(long)]
    pub label: Option<String>,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency over time as SVG into this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Keep the raw sequence-tracking sets in the JSON (so that `merge`
    /// can recompute loss across processes started by hand).
    #[arg(long)]
    pub raw_tracking: bool,
    /// Stop the run after this many seconds whatever happens (default:
    /// computed from the run's size, duration, warm-up and drain).
    #[arg(long)]
    pub max_time: Option<f64>,
    /// No progress line every second.
    #[arg(long)]
    pub quiet: bool,
    /// glommio io memory per executor, bytes (locked memory; keep small).
    #[arg(long, default_value_t = 128 * 1024)]
    pub io_memory: usize,
    /// Longest a task runs before the executor polls for I/O again,
    /// microseconds.
    #[arg(long, default_value_t = 500)]
    pub preempt_us: u64,
    /// Internal: run as worker K/N of a --processes parent (line protocol on
    /// stdin/stdout).
    #[arg(long, hide = true, value_name = "K/N")]
    pub worker: Option<String>,
    /// Internal: where a worker writes its result.
    #[arg(long, hide = true)]
    pub worker_json: Option<PathBuf>,
}

/// `conn` options.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ConnArgs {
    /// Connections to open, over all executors and processes.
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Pause at these connection counts (comma-separated, increasing) to
    /// sample the broker's memory; the final count is always a step.
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// Milliseconds to wait after each step before sampling memory.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Common options.
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
}

/// The pub/sub shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Many publishers (each on its own topic) → subscribers of one
    /// wildcard filter over them.
    FanIn,
    /// Publishers on one topic → many subscribers of it.
    FanOut,
    /// N pairs: publisher i → subscriber i, on topic i.
    P2p,
    /// Publishers → a shared subscription `$share/GROUP/...` with M members.
    Shared,
}

/// `pubsub` options.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct PubsubArgs {
    /// Who talks to whom.
    #[arg(long, value_enum, default_value = "p2p")]
    pub shape: Shape,
    /// Publishers (default: fan-in 10, fan-out 1, p2p 100 pairs, shared 10).
    #[arg(long)]
    pub publishers: Option<u32>,
    /// Subscribers (default: fan-in 1, fan-out 100, p2p = publishers,
    /// shared 4).
    #[arg(long)]
    pub subscribers: Option<u32>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 16: timestamp, publisher, sequence number).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..))]
    pub payload: u32,
    /// Messages per second per publisher; 0 = as fast as the connection
    /// (QoS 0) or the inflight window (QoS 1/2) allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// QoS 1/2 messages a publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub inflight: u32,
    /// Messages per publisher; the run ends when all are sent (instead of
    /// after --duration).
    #[arg(long)]
    pub count: Option<u32>,
    /// Seconds at the start that are not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// After the load, wait at most this many seconds for messages still
    /// on their way (the wait ends sooner once a second passes with none).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Messages written per system call by an open-loop publisher.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Shared subscription group name.
    #[arg(long, default_value = "g")]
    pub group: String,
    /// Common options.
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
}

/// `merge` options.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// JSON reports to combine.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the combined report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the combined report as SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `plot` options.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// A JSON report.
    pub file: PathBuf,
    /// The SVG to write.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Parses "K/N" (0 ≤ K < N).
pub fn parse_share(spec: &str) -> Result<(usize, usize), String> {
    let (k, n) = spec
        .split_once('/')
        .ok_or_else(|| format!("{spec:?}: expected K/N"))?;
    let k: usize = k.trim().parse().map_err(|_| format!("{spec:?}: bad K"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("{spec:?}: bad N"))?;
    if n == 0 || k >= n {
        return Err(format!("{spec:?}: need 0 <= K < N"));
    }
    Ok((k, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shares() {
        assert_eq!(parse_share("0/1"), Ok((0, 1)));
        assert_eq!(parse_share("3/4"), Ok((3, 4)));
        assert!(parse_share("4/4").is_err());
        assert!(parse_share("1").is_err());
        assert!(parse_share("a/2").is_err());
    }

    #[test]
    fn parses_a_pubsub_line() {
        let cli = Cli::try_parse_from([
            "vmqtt-loadtest",
            "pubsub",
            "--shape",
            "fan-in",
            "--qos",
            "1",
            "--mqtt",
            "5",
            "--payload",
            "16",
            "--cpus",
            "1",
        ])
        .unwrap();
        let Command::Pubsub(a) = cli.command else {
            panic!("not pubsub")
        };
        assert_eq!(a.shape, Shape::FanIn);
        assert_eq!(a.qos, 1);
        assert_eq!(a.common.mqtt, MqttVersion::V5);
        assert!(Cli::try_parse_from(["x", "pubsub", "--payload", "15"]).is_err());
        assert!(Cli::try_parse_from(["x", "pubsub", "--qos", "3"]).is_err());
        assert!(Cli::try_parse_from(["x", "conn", "--clean", "--persistent"]).is_err());
    }
}
