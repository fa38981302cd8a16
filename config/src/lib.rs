//! Configuration of the vmqtt broker: the serde types of its TOML file,
//! their defaults, per-shard overrides and validation.
//!
//! `vmqtt-shard --config FILE` reads one TOML file with [`Config::load`].
//! Every section and every key is optional; a missing one takes its default.
//! The commented default file, `config/vmqtt.toml`, lists every setting with
//! its default, unit and allowed range; it is embedded as
//! [`Config::DEFAULT_TOML`] and is what the broker runs on when no file is
//! given ([`Config::default()`] equals parsing it).
//!
//! ```toml
//! listen = ["0.0.0.0:1883", "[::]:1883"]
//! cores = 4
//!
//! [mqtt]
//! max_inflight = 512
//!
//! [storage]
//! durability = "wal"
//!
//! [shards.0]          # shard 0 takes a larger inflight window
//! max_inflight = 2048 # and fsyncs before it acknowledges
//! durability = "fsync"
//! ```
//!
//! Errors name the file, the key as a dotted path, the line and what is
//! allowed, e.g. `mqtt.receive_maximum = 0 at vmqtt.toml line 12: must be
//! between 1 and 65535`. See [`ConfigError`].

#![warn(missing_docs)]

mod de;
mod error;
mod source;
mod validate;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::error::{ConfigError, Location};
pub use crate::source::ConfigSource;

/// The whole configuration file: global settings, the `[mqtt]`, `[runtime]`,
/// `[log]`, `[http]`, `[storage]`, `[tasks]`, `[tls]` and `[auth]` sections,
/// and `[shards.N]` per-shard overrides of `[mqtt]`, `[tasks]` and of some
/// `[storage]` keys.
///
/// Built by [`Config::load`] or [`Config::from_toml_str`], which validate
/// it; a `Config` changed in code can be checked again with
/// [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to accept MQTT connections on (each shard opens its own
    /// `SO_REUSEPORT` listener on each). The file may give one string or an
    /// array of strings. Default `["0.0.0.0:1883"]`.
    #[serde(deserialize_with = "de::listen")]
    pub listen: Vec<SocketAddr>,
    /// Directory of the durable state (RocksDB). Default `./data`.
    pub data_dir: PathBuf,
    /// Number of shards, one pinned executor each, taken from the CPUs in the
    /// process affinity mask. `None` (written `0` in the file) means one shard
    /// per CPU in the mask. `--cores` on the command line takes precedence.
    #[serde(deserialize_with = "de::cores", serialize_with = "de::serialize_cores")]
    pub cores: Option<usize>,
    /// `[mqtt]`: protocol limits, the defaults of every shard.
    pub mqtt: MqttConfig,
    /// `[runtime]`: executor and process resources.
    pub runtime: RuntimeConfig,
    /// `[log]`: log output.
    pub log: LogConfig,
    /// `[http]`: the HTTP endpoint for Prometheus metrics and health checks.
    pub http: HttpConfig,
    /// `[storage]`: durability and RocksDB tuning, the defaults of every
    /// shard.
    pub storage: StorageConfig,
    /// `[tasks]`: CPU shares of each kind of work on a shard.
    pub tasks: TasksConfig,
    /// `[tls]`: MQTT over TLS listeners, certificates, mutual TLS.
    pub tls: TlsConfig,
    /// `[auth]`: anonymous access, the password file and the ACL file.
    pub auth: AuthConfig,
    /// `[shared_subscriptions]`: how `$share/{group}/…` groups pick
    /// members, redeliver and queue.
    pub shared_subscriptions: SharedSubscriptionsConfig,
    /// `[cluster]`: this node's place in a cluster coordinated by etcd.
    /// `None` (no section): a single node, no etcd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// `[shards.N]` tables: overrides of `[mqtt]` keys and of the per-shard
    /// `[storage]` keys for shard `N` (numbered from 0).
    /// [`Config::mqtt_for_shard`] and [`Config::storage_for_shard`] apply
    /// them.
    #[serde(
        deserialize_with = "de::shards",
        serialize_with = "de::serialize_shards"
    )]
    pub shards: BTreeMap<usize, ShardOverrides>,
    /// Where this configuration was read from (origin name and the line of
    /// every key), used to place validation errors. Not a setting: it is
    /// never read from or written to TOML, and `==` ignores it.
    #[serde(skip)]
    pub source: ConfigSource,
}

impl Default for Config {
    /// The built-in defaults; equal to parsing [`Config::DEFAULT_TOML`].
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                1883,
            ))],
            data_dir: PathBuf::from("./data"),
            cores: None,
            mqtt: MqttConfig::default(),
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            tasks: TasksConfig::default(),
            storage: StorageConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            shared_subscriptions: SharedSubscriptionsConfig::default(),
            cluster: None,
            shards: BTreeMap::new(),
            source: ConfigSource::default(),
        }
    }
}

impl Config {
    /// The commented default configuration file (`config/vmqtt.toml`): every
    /// setting with its default value, unit and range. The broker runs on it
    /// when no `--config` is given.
    pub const DEFAULT_TOML: &'static str = include_str!("../vmqtt.toml");

    /// Parses and validates a configuration from TOML text. `origin` names the
    /// text in error messages (normally the file name).
    ///
    /// ```
    /// use vmqtt_config::Config;
    ///
    /// let text = "[mqtt]\nmax_inflight = 64\n\n[shards.1]\nmax_inflight = 8\n";
    /// let config = Config::from_toml_str(text, "vmqtt.toml").unwrap();
    /// assert_eq!(config.mqtt_for_shard(0).max_inflight, 64);
    /// assert_eq!(config.mqtt_for_shard(1).max_inflight, 8);
    ///
    /// let err = Config::from_toml_str("[mqtt]\nmax_inflight = 0\n", "vmqtt.toml").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "mqtt.max_inflight = 0 at vmqtt.toml line 2: must be between 1 and 65535"
    /// );
    /// ```
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let source = ConfigSource::parse(text, origin)?;
        source.check_shard_names()?;
        let mut config: Config =
            toml::from_str(text).map_err(|e| source.deserialize_error(text, &e))?;
        config.source = source;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// The `[mqtt]` settings of shard `shard`: `[mqtt]` with the keys of its
    /// `[shards.N]` table, if any, applied on top.
    pub fn mqtt_for_shard(&self, shard: usize) -> MqttConfig {
        let mut mqtt = self.mqtt.clone();
        if let Some(overrides) = self.shards.get(&shard) {
            overrides.apply_to_mqtt(&mut mqtt);
        }
        mqtt
    }

    /// The `[storage]` settings of shard `shard`: `[storage]` with the keys
    /// of its `[shards.N]` table, if any, applied on top. The keys that apply
    /// to the whole database (`max_background_jobs`, `max_open_files`,
    /// `compression`) are always those of `[storage]`.
    ///
    /// ```
    /// use vmqtt_config::{Config, Durability};
    ///
    /// let text = "[storage]\ndurability = \"wal\"\n\n[shards.1]\ndurability = \"fsync\"\n";
    /// let config = Config::from_toml_str(text, "vmqtt.toml").unwrap();
    /// assert_eq!(config.storage_for_shard(0).durability, Durability::Wal);
    /// assert_eq!(config.storage_for_shard(1).durability, Durability::Fsync);
    /// ```
    pub fn storage_for_shard(&self, shard: usize) -> StorageConfig {
        let mut storage = self.storage.clone();
        if let Some(overrides) = self.shards.get(&shard) {
            overrides.apply_to_storage(&mut storage);
        }
        storage
    }

    /// The `[tasks]` shares of shard `shard`: `[tasks]` with the keys of its
    /// `[shards.N]` table, if any, applied on top.
    pub fn tasks_for_shard(&self, shard: usize) -> TasksConfig {
        let mut tasks = self.tasks.clone();
        if let Some(overrides) = self.shards.get(&shard) {
            overrides.apply_to_tasks(&mut tasks);
        }
        tasks
    }
}

/// Declares [`MqttConfig`], [`StorageConfig`] and [`ShardOverrides`] from
/// their lists of fields, so that a `[shards.N]` table can never disagree
/// with the sections on which keys exist: it holds every `[mqtt]` key and the
/// per-shard `[storage]` keys, but not the whole-database ones.
macro_rules! settings {
    (
        mqtt {
            $( $(#[doc = $mdoc:literal])* $mfield:ident : $mty:ty = $mdefault:expr, )*
        }
        storage_per_shard {
            $( $(#[doc = $sdoc:literal])* $sfield:ident : $sty:ty = $sdefault:expr, )*
        }
        storage_global {
            $( $(#[doc = $gdoc:literal])* $gfield:ident : $gty:ty = $gdefault:expr, )*
        }
        tasks {
            $( $(#[doc = $tdoc:literal])* $tfield:ident : $tty:ty = $tdefault:expr, )*
        }
    ) => {
        /// `[tasks]`: how a busy shard divides its core between its kinds of
        /// work. Each kind runs in its own glommio task queue with these
        /// shares (relative weights: a queue with twice the shares gets
        /// twice the CPU time when all are busy; an idle queue takes
        /// nothing). Each key can be overridden per shard in `[shards.N]`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct TasksConfig {
            $( $(#[doc = $tdoc])* pub $tfield: $tty, )*
        }

        impl Default for TasksConfig {
            fn default() -> Self {
                TasksConfig { $( $tfield: $tdefault, )* }
            }
        }

        impl TasksConfig {
            /// The keys with their values.
            fn numbers(&self) -> Vec<(&'static str, u64)> {
                let mut out = Vec::new();
                $(
                    if let Some(n) = validate::AsNumber::as_number(&self.$tfield) {
                        out.push((stringify!($tfield), n));
                    }
                )*
                out
            }
        }

        /// The `[tasks]` keys (all may be overridden per shard).
        pub(crate) const TASK_SHARD_KEYS: &[&str] = &[$( stringify!($tfield), )*];

        /// `[mqtt]`: protocol limits and features, the defaults of every
        /// shard. Each can be overridden per shard in `[shards.N]`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct MqttConfig {
            $( $(#[doc = $mdoc])* pub $mfield: $mty, )*
        }

        impl Default for MqttConfig {
            fn default() -> Self {
                MqttConfig { $( $mfield: $mdefault, )* }
            }
        }

        /// `[storage]`: how durable an acknowledged change is, and the tuning
        /// of the RocksDB database in `data_dir`, which holds one column
        /// family per shard. `durability`, `write_buffer_size` and
        /// `block_cache_size` are the defaults of every shard and can be
        /// overridden in `[shards.N]` ([`Config::storage_for_shard`]); the
        /// other keys apply to the whole database.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct StorageConfig {
            $( $(#[doc = $sdoc])* pub $sfield: $sty, )*
            $(
                $(#[doc = $gdoc])*
                ///
                /// Whole database: cannot be overridden per shard.
                pub $gfield: $gty,
            )*
        }

        impl Default for StorageConfig {
            fn default() -> Self {
                StorageConfig {
                    $( $sfield: $sdefault, )*
                    $( $gfield: $gdefault, )*
                }
            }
        }

        /// `[shards.N]`: overrides for one shard of `[mqtt]` keys and of the
        /// per-shard `[storage]` keys, all written flat in the table. A key
        /// that is `None` (absent from the table) keeps the value of its
        /// section.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ShardOverrides {
            $(
                $(#[doc = $mdoc])*
                ///
                /// `None`: the `[mqtt]` value applies.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $mfield: Option<$mty>,
            )*
            $(
                $(#[doc = $sdoc])*
                ///
                /// `None`: the `[storage]` value applies.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $sfield: Option<$sty>,
            )*
            $(
                $(#[doc = $tdoc])*
                ///
                /// `None`: the `[tasks]` value applies.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $tfield: Option<$tty>,
            )*
        }

        impl ShardOverrides {
            /// Writes every `[mqtt]` key this table sets into `mqtt`.
            pub fn apply_to_mqtt(&self, mqtt: &mut MqttConfig) {
                $( if let Some(value) = &self.$mfield { mqtt.$mfield = value.clone(); } )*
            }

            /// Writes every `[storage]` key this table sets into `storage`.
            pub fn apply_to_storage(&self, storage: &mut StorageConfig) {
                $( if let Some(value) = &self.$sfield { storage.$sfield = value.clone(); } )*
            }

            /// Writes every `[tasks]` key this table sets into `tasks`.
            pub fn apply_to_tasks(&self, tasks: &mut TasksConfig) {
                $( if let Some(value) = &self.$tfield { tasks.$tfield = value.clone(); } )*
            }

            /// The numeric keys this table sets, with their values.
            fn numbers(&self) -> Vec<(&'static str, u64)> {
                let mut out = Vec::new();
                $(
                    if let Some(n) = self.$mfield.as_ref().and_then(validate::AsNumber::as_number) {
                        out.push((stringify!($mfield), n));
                    }
                )*
                $(
                    if let Some(n) = self.$sfield.as_ref().and_then(validate::AsNumber::as_number) {
                        out.push((stringify!($sfield), n));
                    }
                )*
                $(
                    if let Some(n) = self.$tfield.as_ref().and_then(validate::AsNumber::as_number) {
                        out.push((stringify!($tfield), n));
                    }
                )*
                out
            }
        }

        impl MqttConfig {
            /// The numeric keys with their values.
            fn numbers(&self) -> Vec<(&'static str, u64)> {
                let mut out = Vec::new();
                $(
                    if let Some(n) = validate::AsNumber::as_number(&self.$mfield) {
                        out.push((stringify!($mfield), n));
                    }
                )*
                out
            }
        }

        /// The `[storage]` keys a `[shards.N]` table may override.
        pub(crate) const STORAGE_SHARD_KEYS: &[&str] = &[$( stringify!($sfield), )*];

        /// The `[storage]` keys that apply to the whole database only.
        pub(crate) const STORAGE_GLOBAL_KEYS: &[&str] = &[$( stringify!($gfield), )*];
    };
}

settings! {
    mqtt {
        /// Largest packet, in bytes including the fixed header, that the broker
        /// accepts from a client; advertised to v5 clients as Maximum Packet
        /// Size. 16..=268435460, default 1048576 (1 MiB).
        max_packet_size: u32 = 1_048_576,
        /// Largest keep alive, in seconds, a client may ask for; a client asking
        /// for more (or for 0) is told this value (v5 Server Keep Alive).
        /// 0 = no limit (the default).
        max_keepalive: u16 = 0,
        /// QoS 1 and 2 PUBLISHes a client may have unacknowledged towards the
        /// broker (v5 Receive Maximum in CONNACK). 1..=65535, default 1024.
        receive_maximum: u16 = 1024,
        /// Topic aliases a v5 client may use towards the broker (Topic Alias
        /// Maximum in CONNACK); 0 disables them. Default 64.
        topic_alias_maximum: u16 = 64,
        /// Whether the broker sends topic aliases to MQTT 5 clients that
        /// allow them (Topic Alias Maximum in their CONNECT): the first
        /// message on a topic carries the topic and an alias, later ones only
        /// the alias; when the client's maximum is reached the least recently
        /// used alias is rebound. Default true.
        outbound_topic_aliases: bool = true,
        /// QoS 1 and 2 messages the broker has in flight to one client, further
        /// capped by the client's own Receive Maximum. 1..=65535, default 1024.
        max_inflight: u16 = 1024,
        /// Messages queued per session beyond the inflight window (client slow or
        /// offline), in memory: all of a clean session's, a persistent
        /// session's QoS 0 (its QoS 1/2 are bounded by `max_stored_messages`
        /// and `max_stored_bytes`); more are dropped and counted. 0 = queue
        /// nothing.
        /// Default 1000.
        max_queued_messages: usize = 1000,
        /// Encoded bytes waiting to be written to one connection before it counts
        /// as slow and further messages are queued in its session instead.
        /// At least 1024, default 262144 (256 KiB).
        max_output_buffer: usize = 262_144,
        /// Retained messages one session may have waiting to be sent for its
        /// new subscriptions: they go out as fast as its inflight window and
        /// its socket take them, so a wildcard subscriber gets every match;
        /// beyond this many waiting, the rest are dropped, counted
        /// (`retained_backlog` limit) and logged. 0 = no limit; default
        /// 1000000.
        max_retained_backlog: usize = 1_000_000,
        /// QoS 1 and 2 messages queued for one persistent session (they are
        /// in the log, so `max_queued_messages` does not bound them); more
        /// are refused for that session, counted (`stored_messages` limit)
        /// and logged. 0 = no limit; default 100000.
        max_stored_messages: usize = 100_000,
        /// Bytes of QoS 1 and 2 messages (topic + payload + 64 each) queued
        /// for one persistent session; more are refused, counted
        /// (`stored_bytes` limit) and logged. 0 = no limit; default 67108864
        /// (64 MiB).
        max_stored_bytes: u64 = 64 << 20,
        /// Milliseconds a new connection has to send CONNECT before it is
        /// closed. At least 1, default 10000.
        connect_timeout_ms: u64 = 10_000,
        /// Longest session expiry interval, in seconds, a client may ask for;
        /// longer requests are cut to it. 4294967295 (the default) = sessions may
        /// never expire.
        max_session_expiry: u32 = u32::MAX,
        /// Whether retained messages are supported (v5 Retain Available).
        /// Default true.
        retain_available: bool = true,
        /// Milliseconds between two publications of the `$SYS` topics.
        /// At least 100, default 10000.
        sys_interval_ms: u64 = 10_000,
        /// Connections one shard serves at once (its clients' sessions live
        /// there); a new connection beyond it is closed at once. 0 = no
        /// limit (the default; `[runtime] max_connections` still bounds the
        /// process).
        max_connections: u32 = 0,
        /// New connections one shard accepts per second (a burst of up to
        /// one second's worth is allowed); more are closed at once, unread.
        /// 0 = no limit (the default).
        max_connect_rate: u32 = 0,
        /// Longest topic name or filter, in bytes, in a PUBLISH, SUBSCRIBE or
        /// will. 1..=65535, default 65535.
        max_topic_length: u32 = 65_535,
        /// Most levels (`/`-separated parts) in a topic name or filter.
        /// 1..=65535, default 128.
        max_topic_levels: u32 = 128,
        /// Subscriptions one client may hold; a SUBSCRIBE beyond it is refused
        /// for the extra filters (v5 reason 0x97). 0 = no limit; default
        /// 10000.
        max_subscriptions: u32 = 10_000,
    }
    storage_per_shard {
        /// When the broker acknowledges a change, and so what a client's
        /// acknowledgement survives. Default [`Durability::Wal`].
        durability: Durability = Durability::Wal,
        /// Memtable (RocksDB write buffer) of each shard's column family, in
        /// bytes: writes collect in it before they are flushed to a table
        /// file. 1048576 (1 MiB) ..= 4294967296 (4 GiB), default 67108864
        /// (64 MiB).
        write_buffer_size: usize = 64 << 20,
        /// RocksDB block cache of each shard's column family (every shard has
        /// its own), in bytes. 0 (no block cache) ..= 68719476736 (64 GiB),
        /// default 33554432 (32 MiB).
        block_cache_size: usize = 32 << 20,
    }
    storage_global {
        /// Background threads that flush memtables and compact table files,
        /// for the whole database. 1..=64, default 2.
        max_background_jobs: u32 = 2,
        /// Table files RocksDB keeps open, for the whole database: -1 (no
        /// limit) or 16..=1000000, default 1024.
        max_open_files: i32 = 1024,
        /// Whether table files are compressed with LZ4. Default true.
        compression: bool = true,
        /// Bytes of messages queued for persistent sessions in the whole
        /// process (topic + payload + 64 each; they are in the log and, for
        /// now, in memory too). Beyond it a new message for a persistent
        /// session is refused for that session and counted (`queue_budget`
        /// limit). 0 = no limit; default 1073741824 (1 GiB).
        max_queued_bytes: u64 = 1 << 30,
    }
    tasks {
        /// Shares of the connection tasks (reading, decoding and answering
        /// clients, writing to them). 1..=1000, default 1000.
        client_shares: u32 = 1000,
        /// Shares of the cross-shard traffic (batches to and from the other
        /// shards, connections handed over). 1..=1000, default 1000.
        mesh_shares: u32 = 1000,
        /// Shares of the background work: timers (keep alive, expiry, wills,
        /// `$SYS`), metrics, handing batches to storage, the HTTP endpoint.
        /// 1..=1000, default 250.
        background_shares: u32 = 250,
    }
}

/// `[runtime]`: executor and process resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Bytes of glommio io memory per shard. It is locked memory: all shards
    /// together must fit in `RLIMIT_MEMLOCK` (`ulimit -l`). At least 65536,
    /// default 524288 (512 KiB).
    pub io_memory: usize,
    /// Entries of each io_uring ring. A power of two from 16 to 4096,
    /// default 128.
    pub ring_depth: u32,
    /// Connections the whole process may hold. The broker raises its
    /// `RLIMIT_NOFILE` soft limit toward this and warns when the hard limit is
    /// lower. At least 1, default 1000000.
    pub max_connections: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            io_memory: 512 * 1024,
            ring_depth: 128,
            max_connections: 1_000_000,
        }
    }
}

/// `[log]`: log output (to standard error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Line format. Default [`LogFormat::Text`].
    pub format: LogFormat,
    /// Which events to log: a tracing `EnvFilter` directive such as `info` or
    /// `info,vmqtt_shard=debug`. Default `info`; must not be empty.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// `[http]`: an HTTP endpoint serving `GET /metrics` (Prometheus text
/// format, one series per shard), `GET /healthz` (the process is up) and
/// `GET /readyz` (every shard is serving).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoint. Default `false`.
    pub enabled: bool,
    /// Address of the endpoint. Default `127.0.0.1:9883` (loopback only).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: false,
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9883)),
        }
    }
}

/// `[tls]`: listeners for MQTT over TLS (rustls; TLS 1.2 and 1.3), beside
/// the plain `listen` addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Addresses to accept MQTT over TLS on, like `listen`. Default none.
    #[serde(deserialize_with = "de::listen")]
    pub listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM), leaf first. Required with
    /// `listen`.
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    /// Required with `listen`.
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: when set, the
    /// broker asks clients for a certificate (mutual TLS) and verifies it.
    /// Default none.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse a TLS client without a valid certificate (needs
    /// `client_ca_file`). Default false.
    pub require_client_cert: bool,
    /// Take the Common Name of the client certificate's subject as the
    /// client's user name (for ACLs); such a client needs no password.
    /// Needs `client_ca_file`. Default false.
    pub use_identity_as_username: bool,
}

/// Who may connect without credentials: `"deny"`, `"loopback"` or `"allow"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// `"deny"`: every client must authenticate (password or certificate).
    Deny,
    /// `"loopback"`: anonymous clients only from a loopback address
    /// (127.0.0.0/8, ::1), so a broker run on its defaults is usable on its
    /// own host and closed to the network.
    #[default]
    Loopback,
    /// `"allow"`: anyone may connect without credentials.
    Allow,
}

/// How a shared-subscription group picks the member that takes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStrategy {
    /// In turn over the members that can take it, across the whole group.
    #[default]
    RoundRobin,
    /// Any member that can take it, at random.
    Random,
    /// One member until it leaves or disconnects: the group's order kept.
    Sticky,
    /// By the publisher's client id: one publisher, one member, in order.
    HashClient,
    /// By topic: one topic, one member, in order.
    HashTopic,
    /// The member with the most free room in its window.
    LeastInflight,
}

/// One `[[shared_subscriptions.groups]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// Group names it applies to; `*` matches any run of characters.
    pub pattern: String,
    /// Their strategy.
    pub strategy: GroupStrategy,
}

/// `[shared_subscriptions]`: consumer groups (`$share/{group}/{filter}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedSubscriptionsConfig {
    /// The strategy of a group no rule names. Default round_robin.
    pub strategy: GroupStrategy,
    /// QoS 1 messages in flight to a member whose connection drops go to
    /// another member at once. Default true.
    pub redeliver_on_disconnect: bool,
    /// Messages a group holds while no member can take them (none
    /// connected, or every window full); more are dropped and counted.
    /// Default 10000.
    pub max_pending: u64,
    /// Per-group strategies by group-name pattern, first match wins.
    pub groups: Vec<GroupRule>,
    /// In a cluster, which node's members take a group's message.
    /// Default local_first.
    pub across_nodes: AcrossNodes,
}

/// `shared_subscriptions.across_nodes`: how a group with members on
/// several nodes of a cluster spreads its messages over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcrossNodes {
    /// `"local_first"`: a member on the publisher's node takes the message
    /// where the group has one; otherwise one of the other nodes' members.
    #[default]
    LocalFirst,
    /// `"spread"`: every node with members takes its turn (by the group's
    /// strategy), the publisher's own node included.
    Spread,
}

impl Default for SharedSubscriptionsConfig {
    fn default() -> Self {
        SharedSubscriptionsConfig {
            strategy: GroupStrategy::RoundRobin,
            redeliver_on_disconnect: true,
            max_pending: 10_000,
            groups: Vec::new(),
            across_nodes: AcrossNodes::LocalFirst,
        }
    }
}

/// `[cluster]`: one node of a cluster. Membership, the nodes' epochs and
/// their peer addresses live in etcd (under `/{name}/`); messages and
/// routes go over direct links between the nodes' peer ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: the etcd key prefix, and checked in every link
    /// handshake (a node of another cluster is refused). Letters, digits,
    /// `-` and `_`, at most 64.
    pub name: String,
    /// This node's id, unique in the cluster, 1 to 65535.
    pub node_id: u16,
    /// etcd endpoints, `http://host:port`.
    pub etcd: Vec<String>,
    /// The peer port: where other nodes' links arrive. Default
    /// `0.0.0.0:1884`.
    #[serde(default = "ClusterConfig::default_listen")]
    pub listen: SocketAddr,
    /// The address other nodes reach the peer port at; needed when
    /// `listen` is a wildcard address. Default: `listen`.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// This node's etcd lease, in seconds: peers drop a node whose lease
    /// expired (killed, cut off) this long after its last keepalive.
    /// Default 3.
    #[serde(default = "ClusterConfig::default_lease_ttl")]
    pub lease_ttl_seconds: u64,
    /// A file holding the shared secret of the cluster's links: each side
    /// of a link proves it knows it (HMAC-SHA256 over the other side's
    /// random challenge) before anything else is accepted. At least 16
    /// bytes; required.
    pub secret_file: PathBuf,
    /// The longest a message waits in a link's batch before it is sent,
    /// in microseconds. Default 200.
    #[serde(default = "ClusterConfig::default_flush_us")]
    pub flush_us: u64,
    /// Bytes a link holds for a peer (sent, not yet acknowledged, plus
    /// waiting); more are dropped and counted. Default 67108864 (64 MiB).
    #[serde(default = "ClusterConfig::default_max_link_bytes")]
    pub max_link_bytes: u64,
}

impl ClusterConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1884))
    }
    fn default_lease_ttl() -> u64 {
        3
    }
    fn default_flush_us() -> u64 {
        200
    }
    fn default_max_link_bytes() -> u64 {
        64 << 20
    }

    /// The peer address other nodes connect to.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }
}

/// `[auth]`: authentication and authorization, and how password checks
/// are protected against floods of wrong passwords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Who may connect without a user name and password (or client
    /// certificate). Default [`Anonymous::Loopback`].
    pub anonymous: Anonymous,
    /// The password file (`vmqtt-shard passwd FILE USER` writes it): user
    /// names with argon2id hashes. A client giving a user name is checked
    /// against it. Default none: user names are not checked and such
    /// clients count as anonymous.
    pub password_file: Option<PathBuf>,
    /// The ACL file: which topics each user, client id or pattern may read
    /// (subscribe) and write (publish). Once set, everything it does not
    /// grant is denied. Default none: everything is allowed.
    pub acl_file: Option<PathBuf>,
    /// Throttle failed password checks per source address (IPv4 address,
    /// IPv6 /64) and per user name. Default true.
    pub throttle: bool,
    /// Attempts per address or user name (failures since the last success
    /// plus checks in flight) verified without waiting. Default 3.
    pub failures_before_delay: u32,
    /// The wait before the next attempt once those are used up, doubling
    /// with each further one, in milliseconds. Default 1000.
    pub failure_delay_ms: u64,
    /// The longest wait, in milliseconds: an attempt that would wait longer
    /// is refused at once, unverified (CONNACK 0x8A banned, MQTT 3: 0x05).
    /// Default 8000.
    pub max_failure_delay_ms: u64,
    /// Failures after which an address or user name is refused outright
    /// (0x8A / 0x05) for `ban_seconds` after its last failure; 0 = never.
    /// Default 10.
    pub ban_after_failures: u32,
    /// How long a ban lasts, and how long failures are remembered, in
    /// seconds. Default 300.
    pub ban_seconds: u64,
    /// Addresses and user names each that the throttle keeps (the least
    /// recently failed are forgotten first). Default 65536.
    pub throttle_table_size: u64,
    /// Threads that check passwords, for the whole process; 0 = one per
    /// shard, at most 4. Default 0.
    pub verify_threads: u32,
    /// Password checks that may wait for a verifier thread, served one
    /// source address after the other (one source holds a quarter at
    /// most); beyond, CONNACK 0x89 server busy (MQTT 3: 0x03). Default 256.
    pub verify_queue: u32,
    /// Credentials verified recently that a reconnect accepts without
    /// hashing again (a keyed MAC of user name and password, never the
    /// password); 0 = no cache. Cleared for a user whose password line
    /// changes or goes on reload. Default 65536.
    pub credential_cache_size: u64,
    /// How long a cached credential counts, in seconds. Default 300.
    pub credential_cache_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: Anonymous::default(),
            password_file: None,
            acl_file: None,
            throttle: true,
            failures_before_delay: 3,
            failure_delay_ms: 1000,
            max_failure_delay_ms: 8000,
            ban_after_failures: 10,
            ban_seconds: 300,
            throttle_table_size: 65_536,
            verify_threads: 0,
            verify_queue: 256,
            credential_cache_size: 65_536,
            credential_cache_seconds: 300,
        }
    }
}

impl AuthConfig {
    /// The numeric keys with their values, for range checks.
    pub(crate) fn numbers(&self) -> [(&'static str, u64); 10] {
        [
            (
                "failures_before_delay",
                u64::from(self.failures_before_delay),
            ),
            ("failure_delay_ms", self.failure_delay_ms),
            ("max_failure_delay_ms", self.max_failure_delay_ms),
            ("ban_after_failures", u64::from(self.ban_after_failures)),
            ("ban_seconds", self.ban_seconds),
            ("throttle_table_size", self.throttle_table_size),
            ("verify_threads", u64::from(self.verify_threads)),
            ("verify_queue", u64::from(self.verify_queue)),
            ("credential_cache_size", self.credential_cache_size),
            ("credential_cache_seconds", self.credential_cache_seconds),
        ]
    }

    /// The verifier threads for a process of `shards` shards:
    /// `verify_threads`, or for 0 one per shard and at most 4.
    pub fn verifier_threads(&self, shards: usize) -> usize {
        match self.verify_threads {
            0 => shards.clamp(1, 4),
            n => n as usize,
        }
    }
}

/// Format of log lines: `"text"` or `"json"` in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`"text"`).
    #[default]
    Text,
    /// One JSON object per line (`"json"`).
    Json,
}

/// When the broker acknowledges a change: `"off"`, `"wal"` or `"fsync"` in
/// the file (`[storage] durability`, can be overridden per shard).
///
/// The acknowledgements that wait for it are PUBACK and PUBREC of QoS 1 and
/// 2 PUBLISHes, and SUBACK and CONNACK of persistent sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `"off"`: nothing is written; all state is lost when the broker exits.
    /// For tests and benchmarks.
    Off,
    /// `"wal"`: acknowledged only after the change is in RocksDB's
    /// write-ahead log. Survives a crash of the process (`kill -9`), not a
    /// power loss or an OS crash.
    #[default]
    Wal,
    /// `"fsync"`: acknowledged only after the write-ahead log is fsynced,
    /// with group commit (one fsync covers the changes written meanwhile).
    /// Survives a power loss.
    Fsync,
}

impl Durability {
    /// The setting's name in the configuration file: `"off"`, `"wal"` or
    /// `"fsync"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Durability::Off => "off",
            Durability::Wal => "wal",
            Durability::Fsync => "fsync",
        }
    }
}
