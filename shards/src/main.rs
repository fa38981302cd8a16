//! `vmqtt-shard`: the vmqtt MQTT broker.
//!
//! One glommio executor per core, pinned to a CPU of the process's affinity
//! mask; see ARCHITECTURE.md for how connections, sessions and publishes
//! move between them.

mod cluster;
mod gate;
mod http;
mod notify;
mod repair;
mod runtime;
mod store;
mod sys;
mod throttle;
mod tls;
mod verifier;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

use vmqtt::broker::{AcrossNodes, Authorizer, CoreConfig, QueueBudget, SharedConfig, Strategy};
use vmqtt_config::{Config, Durability, LogFormat, MqttConfig};

/// mimalloc: see shards/Cargo.toml for why.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The vmqtt MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Number of shards (one per core); default: every CPU this process may
    /// run on (its affinity mask).
    #[arg(long, env = "VMQTT_CORES")]
    cores: Option<usize>,
    /// Configuration file (TOML); default: the embedded default.
    #[arg(long, env = "VMQTT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable); overrides `listen` in the file.
    #[arg(long, env = "VMQTT_LISTEN", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Data directory; overrides `data_dir` in the file.
    #[arg(long, env = "VMQTT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a configuration file (and the TLS, password and ACL files
    /// it names) and exits.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Sets a user's password in a password file (created, mode 0600, if
    /// missing), or deletes the user. The password is asked twice on a
    /// terminal, or read as one line from standard input.
    Passwd {
        /// The password file (`[auth] password_file`).
        file: PathBuf,
        /// The user name.
        user: String,
        /// Delete the user instead.
        #[arg(long, short = 'D')]
        delete: bool,
    },
    /// Lists the members of the cluster the configuration's `[cluster]`
    /// names, from etcd: node id, epoch (lease), peer and MQTT address,
    /// shards. (A running node's links: `GET /cluster` on its HTTP
    /// endpoint.)
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Repairs a data directory whose write-ahead log is damaged (which the
    /// broker refuses to start on): first copies the whole directory to a
    /// backup, then recovers everything before the damage and reports what
    /// was dropped. The broker must not be running on it.
    Repair {
        /// The data directory.
        data_dir: PathBuf,
        /// Where to put the copy (must not exist); default:
        /// DATA_DIR.bak-<UTC time>.
        #[arg(long)]
        backup: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The members, one line each.
    Status,
}

/// How long a start waits for its listening addresses to be released by
/// a process that just exited (the kernel closes an io_uring process's
/// sockets asynchronously).
const ADDRESS_WAIT: Duration = Duration::from_secs(3);

/// Batches in flight per pair of shards. With the sender's queue
/// (`runtime::mesh::OUTQ_LIMIT`) it bounds the memory a fast publisher can pin
/// while a slower shard catches up.
const MESH_CAPACITY: usize = 256;

/// How long a SIGHUP waits for every shard to apply the new settings.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a stop waits for every shard to drain: its last storage batch
/// (10 s at most) and its connections' last bytes (2 s), with room.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// The security settings loaded from the files the configuration names:
/// what SIGHUP reloads.
struct Security {
    auth: gate::AuthSettings,
    acl: Option<Arc<dyn Authorizer>>,
}

/// Reads the password file and the ACL file of `[auth]`.
fn load_security(config: &Config) -> anyhow::Result<Security> {
    let passwords = match &config.auth.password_file {
        Some(path) => Some(Arc::new(vmqtt_auth::Passwords::load(path)?)),
        None => None,
    };
    let acl: Option<Arc<dyn Authorizer>> = match &config.auth.acl_file {
        Some(path) => Some(Arc::new(vmqtt_auth::Acl::load(path)?)),
        None => None,
    };
    Ok(Security {
        auth: gate::AuthSettings::new(&config.auth, passwords),
        acl,
    })
}

/// Reads the link secret of `[cluster]`, if the node is in one.
fn load_cluster_secret(config: &Config) -> anyhow::Result<Option<Arc<vmqtt_cluster::LinkSecret>>> {
    let Some(c) = &config.cluster else {
        return Ok(None);
    };
    let bytes = std::fs::read(&c.secret_file)
        .with_context(|| format!("[cluster] secret_file {}", c.secret_file.display()))?;
    match vmqtt_cluster::LinkSecret::new(&bytes) {
        Some(s) => Ok(Some(Arc::new(s))),
        None => bail!(
            "[cluster] secret_file {}: the secret must be at least {} bytes (e.g. `openssl rand -hex 32 > {}`)",
            c.secret_file.display(),
            vmqtt_cluster::handshake::MIN_SECRET,
            c.secret_file.display()
        ),
    }
}

/// Loads the certificates of `[tls]`, if it has listeners.
fn load_tls(config: &Config) -> anyhow::Result<Option<runtime::TlsSpec>> {
    let t = &config.tls;
    if t.listen.is_empty() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
        bail!("tls.listen needs tls.cert_file and tls.key_file");
    };
    let server = tls::server_config(
        cert,
        key,
        t.client_ca_file.as_deref(),
        t.require_client_cert,
    )?;
    Ok(Some(runtime::TlsSpec {
        listen: t.listen.clone(),
        config: server,
        identity_as_username: t.use_identity_as_username,
    }))
}

fn core_config(
    m: &MqttConfig,
    instance: u64,
    persistence: bool,
    authorizer: Option<Arc<dyn Authorizer>>,
) -> CoreConfig {
    CoreConfig {
        max_packet_size: m.max_packet_size,
        max_keepalive: m.max_keepalive,
        receive_maximum: m.receive_maximum,
        topic_alias_maximum: m.topic_alias_maximum,
        outbound_topic_aliases: m.outbound_topic_aliases,
        max_inflight: m.max_inflight,
        max_queued_messages: m.max_queued_messages,
        max_output_buffer: m.max_output_buffer,
        max_retained_backlog: m.max_retained_backlog,
        max_stored_messages: m.max_stored_messages,
        max_stored_bytes: m.max_stored_bytes,
        queue_budget: None,
        connect_timeout: Duration::from_millis(m.connect_timeout_ms),
        max_session_expiry: m.max_session_expiry,
        retain_available: m.retain_available,
        sys_interval: Duration::from_millis(m.sys_interval_ms),
        instance,
        persistence,
        max_topic_length: m.max_topic_length,
        max_topic_levels: m.max_topic_levels,
        max_subscriptions: m.max_subscriptions,
        authorizer,
        max_connections: m.max_connections,
        max_connect_rate: m.max_connect_rate,
        shared: SharedConfig::default(),
    }
}

/// `[shared_subscriptions]` as the core takes it.
fn shared_config(c: &vmqtt_config::SharedSubscriptionsConfig) -> SharedConfig {
    use vmqtt_config::GroupStrategy as G;
    let strategy = |s: G| match s {
        G::RoundRobin => Strategy::RoundRobin,
        G::Random => Strategy::Random,
        G::Sticky => Strategy::Sticky,
        G::HashClient => Strategy::HashClient,
        G::HashTopic => Strategy::HashTopic,
        G::LeastInflight => Strategy::LeastInflight,
    };
    SharedConfig {
        strategy: strategy(c.strategy),
        rules: c
            .groups
            .iter()
            .map(|r| (r.pattern.clone(), strategy(r.strategy)))
            .collect(),
        redeliver_on_disconnect: c.redeliver_on_disconnect,
        max_pending: usize::try_from(c.max_pending).unwrap_or(usize::MAX),
        across_nodes: match c.across_nodes {
            vmqtt_config::AcrossNodes::LocalFirst => AcrossNodes::LocalFirst,
            vmqtt_config::AcrossNodes::Spread => AcrossNodes::Spread,
        },
    }
}

/// Changes the log filter of the running process (SIGHUP).
type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn init_logging(config: &Config) -> LogHandle {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer.with_ansi(ansi)).init(),
    }
    handle
}

/// SIGHUP: reads the configuration file again, applies what can change live
/// (the `[mqtt]` and `[shards.N]` settings, for new connections and from now
/// on; the log level; `[auth]` with the password and ACL files, read again
/// even if unchanged) and logs each changed setting that needs a restart.
/// Reports "SIGHUP: reloaded" once every shard has acknowledged the new
/// settings, so a connection made after that line sees them on any shard.
fn reload(
    cli: &Cli,
    current: &mut Config,
    shards: usize,
    instance: u64,
    control: &runtime::Controller,
    log: &LogHandle,
    gate: &gate::Gate,
) {
    let new = match &cli.config {
        Some(path) => Config::load(path).and_then(|c| c.validate_shards(shards).map(|()| c)),
        None => Ok(current.clone()),
    };
    let mut new = match new {
        Ok(c) => c,
        Err(e) => {
            warn!("SIGHUP: keeping the running configuration: {e}");
            return;
        }
    };
    let security = match load_security(&new) {
        Ok(s) => s,
        Err(e) => {
            warn!("SIGHUP: keeping the running configuration: {e:#}");
            return;
        }
    };
    // Command-line settings keep precedence over the file.
    if !cli.listen.is_empty() {
        new.listen.clone_from(&current.listen);
    }
    if cli.data_dir.is_some() {
        new.data_dir.clone_from(&current.data_dir);
    }
    if cli.cores.is_some() {
        new.cores = current.cores;
    }
    let storage_changed = new.storage != current.storage
        || (0..shards).any(|i| new.storage_for_shard(i) != current.storage_for_shard(i));
    let tasks_changed = (0..shards).any(|i| new.tasks_for_shard(i) != current.tasks_for_shard(i));
    let verifiers = |a: &vmqtt_config::AuthConfig| (a.verify_threads, a.verify_queue);
    let restart: [(&str, bool); 10] = [
        (
            "auth.verify_threads/verify_queue",
            verifiers(&new.auth) != verifiers(&current.auth),
        ),
        ("tls", new.tls != current.tls),
        ("storage", storage_changed),
        ("tasks", tasks_changed),
        ("listen", new.listen != current.listen),
        ("data_dir", new.data_dir != current.data_dir),
        ("cores", new.cores != current.cores),
        ("runtime", new.runtime != current.runtime),
        ("http", new.http != current.http),
        ("log.format", new.log.format != current.log.format),
    ];
    for (key, changed) in restart {
        if changed {
            warn!(
                setting = key,
                "SIGHUP: changed, takes effect after a restart"
            );
        }
    }
    if new.log.level != current.log.level {
        match log.modify(|f| *f = EnvFilter::new(&new.log.level)) {
            Ok(()) => info!(level = %new.log.level, "SIGHUP: log level changed"),
            Err(e) => warn!("SIGHUP: cannot change the log level: {e}"),
        }
    }
    gate.replace(security.auth);
    for index in 0..shards {
        if current.mqtt_for_shard(index) != new.mqtt_for_shard(index) {
            info!(
                shard = index,
                "SIGHUP: [mqtt] settings changed, applied live"
            );
        }
    }
    let reconfigure = |index| {
        // (persistence is fixed for the life of a core: ignored here.)
        let next = new.mqtt_for_shard(index);
        runtime::Control::Reconfigure(CoreConfig {
            shared: shared_config(&new.shared_subscriptions),
            ..core_config(&next, instance, false, security.acl.clone())
        })
    };
    let missing = control.request_all(reconfigure, RELOAD_WAIT);
    info!(
        anonymous = ?new.auth.anonymous,
        password_file = ?new.auth.password_file,
        acl_file = ?new.auth.acl_file,
        "SIGHUP: [auth] and its files reloaded, applied to new connections and from now on"
    );
    if missing.is_empty() {
        info!(shards, "SIGHUP: reloaded, every shard applied it");
    } else {
        warn!(
            shards = ?missing,
            wait_ms = RELOAD_WAIT.as_millis() as u64,
            "SIGHUP: not applied by these shards in time (they apply it when they get to it)"
        );
    }
    *current = new;
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file }) => {
            let checked = Config::load(file)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    load_security(&c)?;
                    load_tls(&c)?;
                    load_cluster_secret(&c)?;
                    Ok(())
                });
            return match checked {
                Ok(()) => {
                    println!("{}: ok", file.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Some(Command::Passwd { file, user, delete }) => {
            let input = vmqtt_auth::PasswordInput::Stdin;
            return match vmqtt_auth::passwd(file, user, *delete, input) {
                Ok(message) => {
                    println!("{message}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmqtt-shard passwd: {e}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Some(Command::Cluster {
            what: ClusterCommand::Status,
        }) => {
            let status = cli
                .config
                .as_deref()
                .ok_or_else(|| {
                    anyhow::anyhow!("--config FILE: the node's configuration, with [cluster]")
                })
                .and_then(|p| Ok(Config::load(p)?))
                .and_then(|c| match &c.cluster {
                    Some(cc) => cluster::status(cc),
                    None => bail!("the configuration has no [cluster] section"),
                });
            return match status {
                Ok(text) => {
                    print!("{text}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmqtt-shard cluster status: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::Repair { data_dir, backup }) => {
            return match repair::run(cli.config.as_deref(), data_dir, backup.as_deref()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmqtt-shard repair: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmqtt-shard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    let log = init_logging(&config);
    let security = load_security(&config)?;
    let tls = load_tls(&config)?;
    let cluster_secret = load_cluster_secret(&config)?;
    let gate = gate::Gate::new(security.auth)?;
    let budget = gate::Budget::new(config.runtime.max_connections);
    // Before any thread starts (RocksDB's background threads, the shards):
    // threads inherit the mask, so SIGTERM/SIGINT/SIGHUP reach only
    // `wait_for_signal` below, never a thread that would die of them.
    let signals = sys::block_signals().context("blocking signals")?;

    let cpus = sys::allowed_cpus().context("reading the CPU affinity mask")?;
    if cpus.is_empty() {
        bail!("the process affinity mask has no CPU");
    }
    let shards = match cli.cores.or(config.cores).filter(|&n| n > 0) {
        Some(n) if n > cpus.len() => bail!(
            "--cores {n} but this process may run on only {} CPU(s) ({:?})",
            cpus.len(),
            cpus
        ),
        Some(n) => n,
        None => cpus.len(),
    };
    config.validate_shards(shards)?;
    // (After the signals are blocked: the verifier threads never take one.)
    gate.start_verifiers(
        config.auth.verifier_threads(shards),
        config.auth.verify_queue as usize,
    )
    .context("starting the password verifier threads")?;

    let (soft, hard) = sys::raise_nofile_limit().context("raising the open-file limit")?;
    let wanted = config.runtime.max_connections as u64 + 64;
    if wanted > soft {
        warn!(
            open_files = soft,
            hard_limit = hard,
            max_connections = config.runtime.max_connections,
            "the open-file limit caps connections below runtime.max_connections"
        );
    }
    let mut io_memory = config.runtime.io_memory;
    if let Some(memlock) = sys::memlock_limit()? {
        // glommio locks its io memory; leave half the limit for the rest.
        let fit = (memlock / 2 / shards as u64) as usize;
        if io_memory > fit {
            warn!(
                io_memory,
                fit, memlock, "runtime.io_memory lowered to fit RLIMIT_MEMLOCK"
            );
            io_memory = fit.max(64 * 1024);
        }
    }

    // Every shard binds each address with SO_REUSEPORT, which would also
    // share the port with another running broker of the same user. If a
    // process already accepts connections there, refuse to start, naming
    // it; a socket no process holds any more (the previous run, just
    // exited) is waited for. (A plain bind would also trip over this
    // process's own TIME-WAIT sockets after a restart.)
    let http = config.http.enabled.then_some(config.http.listen);
    // In a cluster, shard i takes node links on the peer port + i.
    let peer_ports: Vec<SocketAddr> = config
        .cluster
        .iter()
        .flat_map(|c| (0..shards).map(move |i| runtime::shard_listen(c.listen, i)))
        .collect();
    for addr in config
        .listen
        .iter()
        .chain(&config.tls.listen)
        .chain(http.iter())
        .chain(&peer_ports)
    {
        match sys::wait_until_free(*addr, ADDRESS_WAIT) {
            Ok(waited) if waited > Duration::ZERO => info!(
                %addr,
                waited_ms = waited.as_millis() as u64,
                "waited for the sockets of an exited process to close"
            ),
            Ok(_) => {}
            Err(e) => bail!("cannot listen on {addr}: {e}"),
        }
    }
    // Storage: opened and recovered before any shard starts.
    let (db, mut restored) = if store::enabled(&config, shards) {
        let (db, restored) = store::open(&config, shards)?;
        (Some(db), restored.into_iter().map(Some).collect())
    } else {
        store::warn_off();
        (None, vec![None; shards])
    };
    let queue_budget = QueueBudget::new(config.storage.max_queued_bytes);
    let metrics = http::Metrics::new(shards, gate.counters());
    let (control, controls) =
        runtime::Controller::new(shards).context("creating the shards' control channels")?;
    // The cluster: this node registered in etcd, the membership followed
    // by the etcd thread and handed to every shard.
    let (etcd, cluster_spec) = match (&config.cluster, cluster_secret) {
        (Some(c), Some(secret)) => {
            let announcer = control
                .announcer()
                .context("creating the etcd thread's control channels")?;
            let me = cluster::ThisNode {
                id: vmqtt::broker::NodeId(c.node_id),
                peer: c.advertised(),
                shards: u16::try_from(shards).unwrap_or(u16::MAX),
                mqtt: config.listen.first().copied(),
            };
            let counters = metrics.clone();
            let load: cluster::Load = Box::new(move || counters.sessions_and_connections());
            let (etcd, first) = cluster::Etcd::start(c, me, load, move |m| {
                announcer.send_all(|_| runtime::Control::Membership(m.clone()))
            })
            .with_context(|| format!("joining cluster {:?} (etcd {:?})", c.name, c.etcd))?;
            let spec = runtime::ClusterSpec {
                name: c.name.clone(),
                node: vmqtt::broker::NodeId(c.node_id),
                secret,
                listen: c.listen,
                flush: Duration::from_micros(c.flush_us),
                max_link_bytes: usize::try_from(c.max_link_bytes).unwrap_or(usize::MAX),
                membership: first,
                lease_ttl: Duration::from_secs(c.lease_ttl_seconds.max(1)),
            };
            (Some(etcd), Some(spec))
        }
        _ => (None, None),
    };
    let mesh = MeshBuilder::full(shards, MESH_CAPACITY);
    let instance = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for ((index, &cpu), control) in cpus.iter().take(shards).enumerate().zip(controls) {
        let durability = config.storage_for_shard(index).durability;
        let storage = match (&db, restored.get_mut(index).and_then(Option::take)) {
            (Some(db), Some(restored)) if durability != Durability::Off => {
                Some(runtime::ShardStorage {
                    db: db.clone(),
                    sync: durability == Durability::Fsync,
                    restored,
                })
            }
            _ => None,
        };
        let persistence = storage.is_some();
        let spec = runtime::ShardSpec {
            index,
            shards,
            listen: config.listen.clone(),
            core: CoreConfig {
                // One budget for every shard's persistent queues.
                queue_budget: Some(queue_budget.clone()),
                shared: shared_config(&config.shared_subscriptions),
                ..core_config(
                    &config.mqtt_for_shard(index),
                    instance,
                    persistence,
                    security.acl.clone(),
                )
            },
            tls: tls.clone(),
            gate: gate.clone(),
            budget: budget.clone(),
            storage,
            tasks: config.tasks_for_shard(index),
            mesh: mesh.clone(),
            control,
            ready: ready_tx.clone(),
            metrics: metrics.clone(),
            http: http.filter(|_| index == 0),
            cluster: cluster_spec.clone(),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("vmqtt-shard-{index}"))
            .io_memory(io_memory)
            .ring_depth(config.runtime.ring_depth as usize)
            .spawn(move || runtime::run(spec))
            .map_err(|e| anyhow::anyhow!("starting shard {index} on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a shard did not start".to_string()),
        }
    }
    if let Some(e) = failure {
        // (The shards that started see their control channel close: they
        // stop.)
        drop(control);
        if let Some(etcd) = etcd {
            etcd.stop();
        }
        bail!("{e}");
    }
    info!(
        shards,
        cpus = ?&cpus[..shards],
        listen = ?config.listen,
        tls = ?config.tls.listen,
        anonymous = ?config.auth.anonymous,
        http = ?http,
        data_dir = %config.data_dir.display(),
        "vmqtt listening"
    );

    loop {
        let sig = sys::wait_for_signal(&signals)?;
        if sig == libc::SIGHUP {
            reload(&cli, &mut config, shards, instance, &control, &log, &gate);
            continue;
        }
        info!(signal = sig, "stopping");
        break;
    }
    // Leave the cluster first: peers stop routing to this node at once.
    if let Some(etcd) = etcd {
        etcd.stop();
    }
    let missing = control.request_all(|_| runtime::Control::Stop, STOP_WAIT);
    if missing.is_empty() {
        info!(shards, "stop acknowledged by every shard");
    } else {
        warn!(
            shards = ?missing,
            wait_ms = STOP_WAIT.as_millis() as u64,
            "these shards did not acknowledge the stop in time"
        );
    }
    for h in handles {
        if h.join().is_err() {
            warn!("a shard ended with an error");
        }
    }
    if let Some(mut db) = db {
        // Whatever the durability mode, a clean stop leaves the log synced.
        if let Err(e) = vmqtt_storage::Storage::sync(&mut db) {
            warn!(error = %e, "syncing storage at stop failed");
        }
    }
    info!("stopped");
    Ok(())
}
