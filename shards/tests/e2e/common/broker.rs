//! Starting and stopping the broker under test: vmqtt (`vmqtt-shard`, the
//! default) or Mosquitto (`VMQTT_E2E_BROKER=mosquitto`), one process per test
//! on its own port and in its own temporary directory.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Once;
use std::time::{Duration, Instant};

use super::shard::SHARDS;

/// How long a broker may take to accept TCP connections after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted broker may take to accept TCP connections: it
/// recovers its data directory first.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the port of an exited broker may still accept connections.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which broker the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// `vmqtt-shard`, built by cargo for this test target.
    Vmqtt,
    /// The system's `mosquitto`, the reference broker.
    Mosquitto,
}

impl BrokerKind {
    /// From `VMQTT_E2E_BROKER` (`vmqtt`, the default, or `mosquitto`).
    pub fn from_env() -> Self {
        match std::env::var("VMQTT_E2E_BROKER").as_deref() {
            Err(_) | Ok("") | Ok("vmqtt") => BrokerKind::Vmqtt,
            Ok("mosquitto") => BrokerKind::Mosquitto,
            Ok(other) => panic!("VMQTT_E2E_BROKER={other:?}: expected `vmqtt` or `mosquitto`"),
        }
    }
}

/// Settings a test may ask of the broker. `None` leaves the broker's default.
/// For vmqtt they go to the `[mqtt]` table of its TOML config; for Mosquitto
/// to the nearest `mosquitto.conf` option where there is one.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// `mqtt.max_packet_size` (Mosquitto: `max_packet_size`).
    pub max_packet_size: Option<u32>,
    /// `mqtt.max_keepalive` (Mosquitto: `max_keepalive`).
    pub max_keepalive: Option<u16>,
    /// `mqtt.receive_maximum` (Mosquitto: `max_inflight_messages`).
    pub receive_maximum: Option<u16>,
    /// `mqtt.topic_alias_maximum` (Mosquitto: `max_topic_alias`).
    pub topic_alias_maximum: Option<u16>,
    /// `mqtt.max_queued_messages` (Mosquitto: `max_queued_messages`).
    pub max_queued_messages: Option<u32>,
    /// `mqtt.connect_timeout_ms` (Mosquitto: none).
    pub connect_timeout_ms: Option<u64>,
    /// `mqtt.sys_interval_ms` (Mosquitto: `sys_interval`, whole seconds).
    pub sys_interval_ms: Option<u64>,
    /// `[http]` enabled on `127.0.0.1:<port>` (vmqtt only).
    pub http_port: Option<u16>,
    /// `storage.durability`: `"wal"`, `"fsync"` or `"off"` (vmqtt only).
    pub durability: Option<&'static str>,
    /// More `[mqtt]` keys, verbatim `key = value` lines (vmqtt only).
    pub extra_mqtt: String,
    /// More TOML appended verbatim after everything else (vmqtt only): whole
    /// sections such as `[tls]` or `[auth]`.
    pub extra_toml: String,
    /// `data_dir` elsewhere than the broker's temporary directory (vmqtt
    /// only), e.g. on a small file system of the test's own.
    pub data_dir: Option<PathBuf>,
    /// Run in this network namespace (`ip netns exec`, vmqtt only), the
    /// MQTT port on every address there, reached from the test at `.1`:
    /// (namespace, its address).
    pub netns: Option<(String, std::net::Ipv4Addr)>,
}

impl BrokerConfig {
    fn vmqtt_toml(&self, data_dir: &Path) -> String {
        let mut s = String::new();
        let data_dir = self.data_dir.as_deref().unwrap_or(data_dir);
        let _ = writeln!(s, "data_dir = {:?}", data_dir.display().to_string());
        s.push_str("\n[mqtt]\n");
        let mut kv = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                let _ = writeln!(s, "{k} = {v}");
            }
        };
        kv("max_packet_size", self.max_packet_size.map(u64::from));
        kv("max_keepalive", self.max_keepalive.map(u64::from));
        kv("receive_maximum", self.receive_maximum.map(u64::from));
        kv(
            "topic_alias_maximum",
            self.topic_alias_maximum.map(u64::from),
        );
        kv(
            "max_queued_messages",
            self.max_queued_messages.map(u64::from),
        );
        kv("connect_timeout_ms", self.connect_timeout_ms);
        kv("sys_interval_ms", self.sys_interval_ms);
        if !self.extra_mqtt.is_empty() {
            s.push_str(&self.extra_mqtt);
            s.push('\n');
        }
        if let Some(d) = self.durability {
            let _ = write!(s, "\n[storage]\ndurability = {d:?}\n");
        }
        if let Some(port) = self.http_port {
            let _ = write!(
                s,
                "\n[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"
            );
        }
        if !self.extra_toml.is_empty() {
            s.push('\n');
            s.push_str(&self.extra_toml);
            s.push('\n');
        }
        s
    }

    fn mosquitto_conf(&self, port: u16) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "listener {port} 127.0.0.1");
        s.push_str("allow_anonymous true\npersistence false\n");
        s.push_str("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n");
        s.push_str("log_type information\nlog_timestamp_format %H:%M:%S\n");
        if std::env::var_os("VMQTT_E2E_MOSQUITTO_DEBUG").is_some() {
            s.push_str("log_type all\n");
        }
        s.push_str("connection_messages true\nset_tcp_nodelay true\n");
        // Sessions of v3.1.1 clients (clean session 0) never expire by
        // themselves, as in vmqtt.
        s.push_str("persistent_client_expiration 1d\n");
        let mut kv = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                let _ = writeln!(s, "{k} {v}");
            }
        };
        kv("max_packet_size", self.max_packet_size.map(u64::from));
        kv("max_keepalive", self.max_keepalive.map(u64::from));
        // vmqtt's default receive maximum is 1024; Mosquitto's default of 20
        // also trips inflight-quota bugs of 2.0.11 (messages dropped in bursts,
        // fixed in 2.0.13), so give it the same default as vmqtt.
        kv(
            "max_inflight_messages",
            Some(self.receive_maximum.map_or(1024, u64::from)),
        );
        kv("max_topic_alias", self.topic_alias_maximum.map(u64::from));
        kv(
            "max_queued_messages",
            self.max_queued_messages.map(u64::from),
        );
        kv(
            "sys_interval",
            self.sys_interval_ms.map(|ms| ms.div_ceil(1000).max(1)),
        );
        s
    }
}

/// Runs `vmqtt-shard check-config FILE` to its end: its status and output.
pub fn check_config(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmqtt-shard"))
        .arg("check-config")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run check-config")
}

/// The broker's resident set size in KiB, sampled every `every` until
/// [`RssSampler::peak`]; the peak is kept.
#[derive(Debug)]
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `b` (its current size is the first sample).
    pub fn start(b: &Broker, every: Duration) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(b.rss_kib()));
        let done = Arc::new(AtomicBool::new(false));
        let pid = b.pid();
        let task = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(bytes) = vmqtt_os::rss_bytes(pid) {
                        peak.fetch_max(bytes / 1024, Ordering::Relaxed);
                    }
                    tokio::time::sleep(every).await;
                }
            })
        };
        RssSampler {
            peak,
            done,
            task: Some(task),
        }
    }

    /// Stops sampling; returns the peak in KiB.
    pub async fn peak(mut self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            t.await.expect("RSS sampler");
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Raises this process's soft open-files limit to its hard limit, once. The
/// broker inherits it, so connection-count tests are not capped at 1024.
pub fn raise_nofile_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = vmqtt_os::raise_nofile_limit();
    });
}

/// A free TCP port on 127.0.0.1, chosen below the ephemeral range so that the
/// client side of a test's own connections never takes it before the broker
/// binds it.
fn pick_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, _) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo > 12_000 {
        let base = 10_000u32;
        let span = lo - base;
        let start = (std::process::id().wrapping_mul(7919)) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = base + (start + n.wrapping_mul(13)) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A unique, fresh directory for one broker.
fn fresh_dir(test: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let safe: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "vmqtt-e2e-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        safe
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the broker's temporary directory");
    dir
}

/// One running broker process. Stopped (SIGTERM, then SIGKILL) on drop; its
/// log is printed if the test fails, and a broker that died during the test
/// fails the test.
///
/// A vmqtt broker keeps its data in `<dir>/data`; after [`Broker::kill9`] or
/// [`Broker::stop_gracefully`] it can be started again on the same data
/// directory and port ([`Broker::restart`], [`Broker::restart_with_cores`]),
/// or run to a refusal ([`Broker::run_expecting_failure`]).
#[derive(Debug)]
pub struct Broker {
    kind: BrokerKind,
    test: String,
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    log_path: PathBuf,
    /// Every log of this broker's runs, in order (printed on failure).
    logs: Vec<PathBuf>,
    config_path: PathBuf,
    config: BrokerConfig,
    /// `--cores` of the current (or last) run.
    cores: usize,
    /// Set once the test itself has sent SIGTERM or SIGKILL: an exit is then
    /// expected.
    terminated: bool,
}

impl Broker {
    /// A broker with default settings for the test named `test`.
    pub fn start(test: &str) -> Broker {
        Self::start_with(test, BrokerConfig::default())
    }

    /// A broker with `config`, of the kind `VMQTT_E2E_BROKER` names.
    pub fn start_with(test: &str, config: BrokerConfig) -> Broker {
        raise_nofile_limit();
        let kind = BrokerKind::from_env();
        let dir = fresh_dir(test);
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = pick_port();
            let log_path = dir.join(format!("broker-{attempt}.log"));
            let mut b = Broker {
                kind,
                test: test.to_owned(),
                port,
                child: None,
                logs: vec![log_path.clone()],
                log_path,
                config_path: dir.join(match kind {
                    BrokerKind::Vmqtt => "vmqtt.toml",
                    BrokerKind::Mosquitto => "mosquitto.conf",
                }),
                dir: dir.clone(),
                config: config.clone(),
                cores: SHARDS,
                terminated: false,
            };
            match b.spawn_and_wait(START_TIMEOUT) {
                Ok(()) => return b,
                Err(log) => {
                    let in_use = log.to_ascii_lowercase().contains("in use");
                    last_log = log;
                    b.child = None;
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!(
            "[{test}] the {kind:?} broker did not start. Its log:\n{last_log}\n(config: {:?})",
            config
        );
    }

    /// The command that runs this broker (config file written).
    fn command(&self) -> Command {
        match self.kind {
            BrokerKind::Vmqtt => {
                let data_dir = self.data_dir();
                if !data_dir.exists() {
                    fs::create_dir_all(&data_dir).expect("create data_dir");
                }
                fs::write(&self.config_path, self.config.vmqtt_toml(&data_dir))
                    .expect("write vmqtt.toml");
                let bin = env!("CARGO_BIN_EXE_vmqtt-shard");
                let mut c = match &self.config.netns {
                    Some((ns, _)) => {
                        let mut c = Command::new("ip");
                        c.args(["netns", "exec", ns, bin]);
                        c
                    }
                    None => Command::new(bin),
                };
                let host = if self.config.netns.is_some() {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                };
                c.arg("--cores")
                    .arg(self.cores.to_string())
                    .arg("--listen")
                    .arg(format!("{host}:{}", self.port))
                    .arg("--config")
                    .arg(&self.config_path);
                if std::env::var_os("RUST_LOG").is_none() {
                    c.env("RUST_LOG", "info");
                }
                c
            }
            BrokerKind::Mosquitto => {
                fs::write(&self.config_path, self.config.mosquitto_conf(self.port))
                    .expect("write mosquitto.conf");
                let mut c = Command::new(mosquitto_path());
                c.arg("-c").arg(&self.config_path);
                c
            }
        }
    }

    /// Writes the config, spawns the process and waits (up to `timeout`)
    /// until the port accepts TCP. On failure returns the broker's log.
    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), String> {
        let log = fs::File::create(&self.log_path).expect("create the broker log");
        let mut cmd = self.command();
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let command_line = format!(
            "{} {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot spawn {:?}: {e}{}",
                cmd.get_program(),
                if self.kind == BrokerKind::Mosquitto {
                    " (run scripts/install-test-deps.sh)"
                } else {
                    ""
                }
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        let addr = self.addr();
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!(
                    "`{command_line}` exited during start-up with {}\n{}",
                    describe(status),
                    self.log()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "`{command_line}`: port {} not accepting after {:?}\n{}",
                    self.port,
                    timeout,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The kind of broker.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// `true` when the broker under test is vmqtt.
    pub fn is_vmqtt(&self) -> bool {
        self.kind == BrokerKind::Vmqtt
    }

    /// `true` when the broker under test is Mosquitto.
    pub fn is_mosquitto(&self) -> bool {
        self.kind == BrokerKind::Mosquitto
    }

    /// The TCP port the broker listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the test reaches the broker's MQTT port: 127.0.0.1, or its
    /// namespace's address.
    pub fn addr(&self) -> SocketAddr {
        match &self.config.netns {
            Some((_, ip)) => (*ip, self.port).into(),
            None => ([127, 0, 0, 1], self.port).into(),
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("broker running")
    }

    /// The broker's resident set size in KiB (from /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        vmqtt_os::rss_bytes(self.pid()).expect("VmRSS in /proc/<broker pid>/status") / 1024
    }

    /// Panics (with the log) if the broker process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "[{}] the broker exited during the test with {}",
                self.test,
                describe(status)
            );
        }
    }

    /// The configuration file the broker was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The broker's data directory (`data_dir` of vmqtt).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The broker's own temporary directory (config, logs, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `--cores` of the current (or last) run.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// SIGKILL: the process dies at once, without any shutdown (no flush,
    /// no goodbye to clients). Waits until it is gone.
    pub fn kill9(&mut self) {
        let Some(child) = self.child.as_mut() else {
            panic!("[{}] kill9: the broker is not running", self.test);
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "[{}] kill9: the broker had already exited with {}",
                self.test,
                describe(status)
            );
        }
        self.terminated = true;
        child.kill().expect("SIGKILL the broker");
        let status = child.wait().expect("wait for the killed broker");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "[{}] the broker should have died of SIGKILL",
            self.test
        );
        self.child = None;
        self.wait_port_released();
    }

    /// Waits until nothing accepts connections on the broker's port any
    /// more. A process that used io_uring can be reaped while the kernel
    /// still tears its rings down, and with them its listening sockets; the
    /// next broker would find the port taken ("address already in use by
    /// another process").
    fn wait_port_released(&self) {
        let addr = self.addr();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if start.elapsed() > RELEASE_TIMEOUT {
                panic!(
                    "[{}] port {} still accepts connections {RELEASE_TIMEOUT:?} after the broker exited",
                    self.test, self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if start.elapsed() > Duration::from_millis(100) {
            eprintln!(
                "[{}] note: port {} accepted connections for {:?} after the broker exited",
                self.test,
                self.port,
                start.elapsed()
            );
        }
    }

    /// SIGTERM, and asserts the broker exits successfully within `within`.
    pub fn stop_gracefully(&mut self, within: Duration) {
        match self.terminate(within) {
            Some(s) if s.success() => {
                self.child = None;
                self.wait_port_released();
            }
            Some(s) => panic!(
                "[{}] the broker exited with {} after SIGTERM; expected success",
                self.test,
                describe(s)
            ),
            None => panic!(
                "[{}] the broker did not exit within {within:?} of SIGTERM",
                self.test
            ),
        }
    }

    /// Starts the broker again on the same data directory and port, with the
    /// same `--cores` (after [`Broker::kill9`] or [`Broker::stop_gracefully`]).
    pub fn restart(&mut self) {
        self.restart_with_cores(self.cores);
    }

    /// Starts the broker again on the same data directory and port with
    /// `--cores cores`; waits until it accepts connections (recovery done).
    pub fn restart_with_cores(&mut self, cores: usize) {
        assert!(
            self.is_vmqtt(),
            "restart is for vmqtt (Mosquitto runs without persistence)"
        );
        assert!(
            self.child.is_none(),
            "[{}] restart: the broker is still running",
            self.test
        );
        self.cores = cores;
        self.log_path = self
            .dir
            .join(format!("broker-restart-{}.log", self.logs.len()));
        self.logs.push(self.log_path.clone());
        self.terminated = false;
        if let Err(log) = self.spawn_and_wait(RESTART_TIMEOUT) {
            self.child = None;
            panic!(
                "[{}] the broker did not restart (--cores {cores}, port {}). Its log:\n{log}",
                self.test, self.port
            );
        }
    }

    /// Runs the broker on its data directory (it must not be running) and
    /// expects it to exit unsuccessfully within `within`: returns the exit
    /// status and what it wrote on stderr. A broker still running after
    /// `within` is killed and fails the test.
    pub fn run_expecting_failure(&mut self, within: Duration) -> (ExitStatus, String) {
        assert!(
            self.child.is_none(),
            "[{}] the broker is still running",
            self.test
        );
        self.log_path = self
            .dir
            .join(format!("broker-refused-{}.log", self.logs.len()));
        self.logs.push(self.log_path.clone());
        let stderr_path = self.log_path.with_extension("stderr");
        let stdout = fs::File::create(&self.log_path).expect("create the broker log");
        let stderr = fs::File::create(&stderr_path).expect("create the broker's stderr file");
        let mut cmd = self.command();
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn the broker");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for the broker") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "[{}] the broker was still running {within:?} after start; it should have \
                     refused its data directory. stderr:\n{}",
                    self.test,
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = fs::read_to_string(&stderr_path).unwrap_or_default();
        // Keep stderr in the broker's log too, for the failure report.
        let _ = fs::write(&self.log_path, format!("{}{err}", self.log()));
        (status, err)
    }

    /// Sends `signal` to the broker process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) with the pid of our own child and a valid signal.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// The broker's stdout+stderr so far (of the current or last run).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The logs of every run of this broker, each under a header line.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for p in &self.logs {
            let _ = writeln!(out, "=== {} ===", p.display());
            out.push_str(&fs::read_to_string(p).unwrap_or_default());
        }
        out
    }

    /// Sends SIGTERM and waits up to `bound` for the process to exit; returns
    /// its status, or `None` if it is still running (it is then left alone).
    pub fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id();
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        self.terminated = true;
        // SAFETY: kill(2) with a pid of our own child process and a valid signal.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stops the process: SIGTERM, then SIGKILL after `STOP_TIMEOUT`.
    fn stop(&mut self) -> Option<String> {
        self.child.as_ref()?;
        let note = match self.terminate(STOP_TIMEOUT) {
            Some(_) => None,
            None => {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Some(format!(
                    "[{}] note: the broker did not exit within {:?} of SIGTERM; killed",
                    self.test, STOP_TIMEOUT
                ))
            }
        };
        self.child = None;
        note
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let died = if self.terminated {
            None
        } else {
            self.try_wait()
        };
        let note = self.stop();
        if let Some(note) = &note {
            eprintln!("{note}");
        }
        if failing || died.is_some() {
            let log = self.all_logs();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(300);
                lines[from..].join("\n")
            };
            eprintln!(
                "----- [{}] {:?} broker on port {} (dir {}), last lines of its log -----\n{}\n----- end of broker log -----",
                self.test,
                self.kind,
                self.port,
                self.dir.display(),
                tail
            );
        } else if std::env::var_os("VMQTT_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let (Some(status), false) = (died, failing) {
            panic!(
                "[{}] the broker exited during the test with {}",
                self.test,
                describe(status)
            );
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// The `mosquitto` binary: on PATH, or where Debian installs it.
fn mosquitto_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("mosquitto");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}
