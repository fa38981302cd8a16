//! What each key allows, and the checks that serde's types cannot express.

use crate::error::ConfigError;
use crate::{Config, Durability, STORAGE_SHARD_KEYS, TASK_SHARD_KEYS};

/// What one key allows: used both to check values and to say what is
/// expected in an error message.
#[derive(Debug)]
pub(crate) enum Rule {
    /// An integer from `min` to `max` (`u64::MAX`: no upper bound) in `unit`.
    Int {
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// A power of two from `min` to `max`.
    PowerOfTwo { min: u64, max: u64 },
    /// `-1` (no limit), or an integer from `min` to `max`.
    IntOrUnlimited { min: u64, max: u64 },
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// `true` or `false`.
    Bool,
    /// Anything else, described in words.
    Text(&'static str),
}

const fn int(min: u64, max: u64, unit: &'static str) -> Rule {
    Rule::Int { min, max, unit }
}

const U16: u64 = u16::MAX as u64;
const U32: u64 = u32::MAX as u64;
const NO_MAX: u64 = u64::MAX;

/// The rule of every key, by dotted path. `[shards.N]` keys follow the rules
/// of the `[mqtt]` or `[storage]` key of the same name. A test checks that
/// every key of [`Config`] has one.
const RULES: &[(&str, Rule)] = &[
    (
        "listen",
        Rule::Text(
            "an IP address and port such as \"0.0.0.0:1883\" or \"[::]:1883\", or an array of them",
        ),
    ),
    ("data_dir", Rule::Text("a directory path (a string)")),
    (
        "cores",
        Rule::Text("a number of shards, or 0 for one shard per CPU in the affinity mask"),
    ),
    ("mqtt", Rule::Text("a table of [mqtt] settings")),
    ("mqtt.max_packet_size", int(16, 268_435_460, "bytes")),
    ("mqtt.max_keepalive", int(0, U16, "seconds")),
    ("mqtt.receive_maximum", int(1, U16, "")),
    ("mqtt.topic_alias_maximum", int(0, U16, "")),
    ("mqtt.outbound_topic_aliases", Rule::Bool),
    ("mqtt.max_inflight", int(1, U16, "")),
    ("mqtt.max_queued_messages", int(0, NO_MAX, "messages")),
    ("mqtt.max_output_buffer", int(1024, NO_MAX, "bytes")),
    ("mqtt.max_retained_backlog", int(0, NO_MAX, "messages")),
    ("mqtt.max_stored_messages", int(0, NO_MAX, "messages")),
    ("mqtt.max_stored_bytes", int(0, NO_MAX, "bytes")),
    ("mqtt.connect_timeout_ms", int(1, NO_MAX, "milliseconds")),
    ("mqtt.max_session_expiry", int(0, U32, "seconds")),
    ("mqtt.retain_available", Rule::Bool),
    ("mqtt.sys_interval_ms", int(100, NO_MAX, "milliseconds")),
    ("mqtt.max_connections", int(0, U32, "connections")),
    (
        "mqtt.max_connect_rate",
        int(0, U32, "connections per second"),
    ),
    ("mqtt.max_topic_length", int(1, U16, "bytes")),
    ("mqtt.max_topic_levels", int(1, U16, "levels")),
    ("mqtt.max_subscriptions", int(0, U32, "subscriptions")),
    ("runtime", Rule::Text("a table of [runtime] settings")),
    ("runtime.io_memory", int(64 * 1024, NO_MAX, "bytes")),
    (
        "runtime.ring_depth",
        Rule::PowerOfTwo { min: 16, max: 4096 },
    ),
    ("runtime.max_connections", int(1, NO_MAX, "connections")),
    ("log", Rule::Text("a table of [log] settings")),
    ("log.format", Rule::OneOf(&["text", "json"])),
    (
        "log.level",
        Rule::Text("a tracing filter directive such as \"info\" or \"info,vmqtt_shard=debug\""),
    ),
    ("http", Rule::Text("a table of [http] settings")),
    ("http.enabled", Rule::Bool),
    (
        "http.listen",
        Rule::Text("an IP address and port such as \"127.0.0.1:9883\""),
    ),
    ("storage", Rule::Text("a table of [storage] settings")),
    ("storage.durability", Rule::OneOf(&["off", "wal", "fsync"])),
    ("storage.write_buffer_size", int(1 << 20, 4 << 30, "bytes")),
    ("storage.block_cache_size", int(0, 64 << 30, "bytes")),
    ("storage.max_background_jobs", int(1, 64, "threads")),
    ("storage.max_queued_bytes", int(0, NO_MAX, "bytes")),
    (
        "storage.max_open_files",
        Rule::IntOrUnlimited {
            min: 16,
            max: 1_000_000,
        },
    ),
    ("storage.compression", Rule::Bool),
    ("tls", Rule::Text("a table of [tls] settings")),
    (
        "tls.listen",
        Rule::Text("an IP address and port such as \"0.0.0.0:8883\", or an array of them"),
    ),
    (
        "tls.cert_file",
        Rule::Text("the path of a PEM certificate chain (a string)"),
    ),
    (
        "tls.key_file",
        Rule::Text("the path of a PEM private key (a string)"),
    ),
    (
        "tls.client_ca_file",
        Rule::Text("the path of PEM CA certificates (a string)"),
    ),
    ("tls.require_client_cert", Rule::Bool),
    ("tls.use_identity_as_username", Rule::Bool),
    ("auth", Rule::Text("a table of [auth] settings")),
    (
        "auth.anonymous",
        Rule::OneOf(&["deny", "loopback", "allow"]),
    ),
    (
        "auth.password_file",
        Rule::Text("the path of a password file (a string)"),
    ),
    (
        "auth.acl_file",
        Rule::Text("the path of an ACL file (a string)"),
    ),
    ("auth.throttle", Rule::Bool),
    ("auth.failures_before_delay", int(0, 1000, "attempts")),
    ("auth.failure_delay_ms", int(1, 3_600_000, "milliseconds")),
    (
        "auth.max_failure_delay_ms",
        int(1, 3_600_000, "milliseconds"),
    ),
    ("auth.ban_after_failures", int(0, U32, "failures")),
    ("auth.ban_seconds", int(1, 86_400 * 365, "seconds")),
    ("auth.throttle_table_size", int(1, 100_000_000, "entries")),
    ("auth.verify_threads", int(0, 256, "threads")),
    ("auth.verify_queue", int(1, 1_000_000, "checks")),
    ("auth.credential_cache_size", int(0, 100_000_000, "entries")),
    (
        "shared_subscriptions",
        Rule::Text("a table of [shared_subscriptions] settings"),
    ),
    (
        "shared_subscriptions.strategy",
        Rule::OneOf(&[
            "round_robin",
            "random",
            "sticky",
            "hash_client",
            "hash_topic",
            "least_inflight",
        ]),
    ),
    ("shared_subscriptions.redeliver_on_disconnect", Rule::Bool),
    (
        "shared_subscriptions.across_nodes",
        Rule::OneOf(&["local_first", "spread"]),
    ),
    (
        "shared_subscriptions.max_pending",
        int(0, 100_000_000, "messages"),
    ),
    (
        "shared_subscriptions.groups",
        Rule::Text("an array of tables { pattern = \"name-*\", strategy = \"...\" }"),
    ),
    (
        "auth.credential_cache_seconds",
        int(1, 86_400 * 365, "seconds"),
    ),
    ("cluster", Rule::Text("a table of [cluster] settings")),
    (
        "cluster.name",
        Rule::Text("a name of letters, digits, '-' and '_' (at most 64)"),
    ),
    ("cluster.node_id", int(1, U16, "")),
    (
        "cluster.etcd",
        Rule::Text("an array of etcd endpoints such as [\"http://127.0.0.1:2379\"]"),
    ),
    (
        "cluster.listen",
        Rule::Text("an IP address and port such as \"0.0.0.0:1884\""),
    ),
    (
        "cluster.advertise",
        Rule::Text("an IP address and port other nodes reach, such as \"10.0.0.5:1884\""),
    ),
    ("cluster.lease_ttl_seconds", int(1, 60, "seconds")),
    (
        "cluster.secret_file",
        Rule::Text("the path of a file holding the links' shared secret (a string)"),
    ),
    ("cluster.flush_us", int(1, 100_000, "microseconds")),
    ("cluster.max_link_bytes", int(65_536, 1 << 40, "bytes")),
    ("tasks", Rule::Text("a table of [tasks] settings")),
    ("tasks.client_shares", int(1, 1000, "shares")),
    ("tasks.mesh_shares", int(1, 1000, "shares")),
    ("tasks.background_shares", int(1, 1000, "shares")),
    (
        "shards",
        Rule::Text("tables named by shard number, like [shards.0]"),
    ),
    (
        "shards.N",
        Rule::Text(
            "a table of [mqtt] keys, of the [storage] keys durability, write_buffer_size \
             and block_cache_size, and of [tasks] keys, to override for that shard",
        ),
    ),
];

/// The rule of a key given as a dotted path; `shards.3.max_inflight` follows
/// `mqtt.max_inflight`, `shards.3.durability` follows `storage.durability`.
pub(crate) fn rule(path: &str) -> Option<&'static Rule> {
    let normalized;
    let path = match path.strip_prefix("shards.") {
        Some(rest) => match rest.split_once('.') {
            Some((_, key)) => {
                let section = if STORAGE_SHARD_KEYS.contains(&key) {
                    "storage"
                } else if TASK_SHARD_KEYS.contains(&key) {
                    "tasks"
                } else {
                    "mqtt"
                };
                normalized = format!("{section}.{key}");
                normalized.as_str()
            }
            None => "shards.N",
        },
        None => path,
    };
    RULES
        .iter()
        .find(|(key, _)| *key == path)
        .map(|(_, rule)| rule)
}

impl Rule {
    /// What the key accepts, as a noun phrase: `an integer between 1 and 65535`.
    pub(crate) fn expected(&self) -> String {
        match self {
            Rule::Int {
                min: 0,
                max: NO_MAX,
                unit,
            } => format!("a non-negative integer{}", unit_of(unit)),
            Rule::Int { .. } => format!("an integer {}", self.bounds()),
            Rule::PowerOfTwo { .. } => format!("an integer that is {}", self.bounds()),
            Rule::IntOrUnlimited { min, max } => {
                format!("-1 (no limit) or an integer between {min} and {max}")
            }
            Rule::OneOf(_) => self.bounds(),
            Rule::Bool => "true or false".to_owned(),
            Rule::Text(text) => (*text).to_owned(),
        }
    }

    /// The requirement an allowed value of the right type fails:
    /// `must be between 1 and 65535`.
    pub(crate) fn requirement(&self) -> String {
        format!("must be {}", self.bounds())
    }

    fn bounds(&self) -> String {
        match self {
            Rule::Int {
                min,
                max: NO_MAX,
                unit,
            } => format!("at least {min}{}", unit_of(unit)),
            Rule::Int { min, max, unit } => format!("between {min} and {max}{}", unit_of(unit)),
            Rule::PowerOfTwo { min, max } => format!("a power of two between {min} and {max}"),
            Rule::IntOrUnlimited { min, max } => {
                format!("-1 (no limit) or between {min} and {max}")
            }
            Rule::OneOf(names) => {
                let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
                format!("one of {}", quoted.join(", "))
            }
            Rule::Bool | Rule::Text(_) => String::new(),
        }
    }

    /// Whether a non-negative value is allowed.
    fn allows(&self, n: u64) -> bool {
        match *self {
            Rule::Int { min, max, .. } | Rule::IntOrUnlimited { min, max } => {
                (min..=max).contains(&n)
            }
            Rule::PowerOfTwo { min, max } => n.is_power_of_two() && (min..=max).contains(&n),
            Rule::OneOf(_) | Rule::Bool | Rule::Text(_) => true,
        }
    }

    /// Whether a value of a signed setting is allowed.
    fn allows_signed(&self, n: i64) -> bool {
        match u64::try_from(n) {
            Ok(n) => self.allows(n),
            Err(_) => n == -1 && matches!(self, Rule::IntOrUnlimited { .. }),
        }
    }
}

fn unit_of(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" ({unit})")
    }
}

/// A setting's value as a number, for range checks (`None` if it is not one).
pub(crate) trait AsNumber {
    /// The value as a `u64`, or `None` for a non-numeric setting.
    fn as_number(&self) -> Option<u64>;
}

macro_rules! as_number {
    ($($ty:ty),*) => {$(
        impl AsNumber for $ty {
            fn as_number(&self) -> Option<u64> {
                Some(u64::try_from(*self).unwrap_or(u64::MAX))
            }
        }
    )*};
}

as_number!(u16, u32, u64, usize);

impl AsNumber for bool {
    fn as_number(&self) -> Option<u64> {
        None
    }
}

impl AsNumber for Durability {
    fn as_number(&self) -> Option<u64> {
        None
    }
}

impl Config {
    /// Checks every value against its allowed range (the checks the types
    /// alone do not make): `[mqtt]`, `[runtime]`, `[log]`, `[storage]`,
    /// `listen`, `data_dir` and every `[shards.N]` override. [`Config::from_toml_str`]
    /// and [`Config::load`] call it; errors name the key and, for a
    /// configuration read from a file, the file and line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(self.invalid("listen", "[]".to_owned(), "must list at least one address"));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(addr) {
                let list: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
                let value = format!("[{}]", list.join(", "));
                return Err(self.invalid("listen", value, &format!("lists {addr} more than once")));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(self.invalid("data_dir", "\"\"".to_owned(), "must not be empty"));
        }
        for (key, n) in self.mqtt.numbers() {
            self.check(&format!("mqtt.{key}"), n)?;
        }
        let runtime = &self.runtime;
        self.check(
            "runtime.io_memory",
            runtime.io_memory.as_number().unwrap_or(u64::MAX),
        )?;
        self.check("runtime.ring_depth", u64::from(runtime.ring_depth))?;
        self.check(
            "runtime.max_connections",
            runtime.max_connections.as_number().unwrap_or(u64::MAX),
        )?;
        if self.log.level.trim().is_empty() {
            let value = format!("\"{}\"", self.log.level);
            return Err(self.invalid(
                "log.level",
                value,
                "must not be empty (give a level such as \"info\")",
            ));
        }
        let storage = &self.storage;
        self.check(
            "storage.write_buffer_size",
            storage.write_buffer_size.as_number().unwrap_or(u64::MAX),
        )?;
        self.check(
            "storage.block_cache_size",
            storage.block_cache_size.as_number().unwrap_or(u64::MAX),
        )?;
        self.check(
            "storage.max_background_jobs",
            u64::from(storage.max_background_jobs),
        )?;
        self.check_signed("storage.max_open_files", i64::from(storage.max_open_files))?;
        self.check("storage.max_queued_bytes", storage.max_queued_bytes)?;
        self.validate_tls()?;
        for (key, n) in self.auth.numbers() {
            self.check(&format!("auth.{key}"), n)?;
        }
        if self.auth.max_failure_delay_ms < self.auth.failure_delay_ms {
            return Err(self.invalid(
                "auth.max_failure_delay_ms",
                self.auth.max_failure_delay_ms.to_string(),
                "must be at least auth.failure_delay_ms",
            ));
        }
        for (key, n) in self.tasks.numbers() {
            self.check(&format!("tasks.{key}"), n)?;
        }
        let shared = &self.shared_subscriptions;
        self.check("shared_subscriptions.max_pending", shared.max_pending)?;
        for rule in &shared.groups {
            if rule.pattern.is_empty() || rule.pattern.contains(['/', '+', '#']) {
                return Err(self.invalid(
                    "shared_subscriptions.groups",
                    format!("{:?}", rule.pattern),
                    "a pattern is a group name (no '/', '+' or '#'), '*' matching any run of characters",
                ));
            }
        }
        self.validate_cluster()?;
        for (shard, overrides) in &self.shards {
            for (key, n) in overrides.numbers() {
                self.check(&format!("shards.{shard}.{key}"), n)?;
            }
        }
        Ok(())
    }

    /// `[cluster]`: a usable name, etcd endpoints, a peer port other nodes
    /// can reach and that is no MQTT listener.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let name_ok = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            let rule = "a name of letters, digits, '-' and '_' (at most 64)";
            return Err(self.invalid("cluster.name", format!("{:?}", c.name), rule));
        }
        self.check("cluster.node_id", u64::from(c.node_id))?;
        if c.etcd.is_empty() {
            return Err(self.invalid(
                "cluster.etcd",
                "[]".into(),
                "lists at least one etcd endpoint, such as \"http://127.0.0.1:2379\"",
            ));
        }
        for url in &c.etcd {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(self.invalid(
                    "cluster.etcd",
                    format!("{url:?}"),
                    "an endpoint is http://host:port (or https://)",
                ));
            }
        }
        if self.listen.contains(&c.listen) || self.tls.listen.contains(&c.listen) {
            return Err(self.invalid(
                "cluster.listen",
                format!("\"{}\"", c.listen),
                "must differ from the MQTT listeners",
            ));
        }
        let advertised = c.advertised();
        if advertised.ip().is_unspecified() || advertised.port() == 0 {
            return Err(self.invalid(
                "cluster.advertise",
                format!("\"{advertised}\""),
                "is needed when cluster.listen is a wildcard address or port 0: \
                 the address and port other nodes connect to",
            ));
        }
        self.check("cluster.lease_ttl_seconds", c.lease_ttl_seconds)?;
        self.check("cluster.flush_us", c.flush_us)?;
        self.check("cluster.max_link_bytes", c.max_link_bytes)?;
        if c.secret_file.as_os_str().is_empty() {
            return Err(self.invalid(
                "cluster.secret_file",
                "\"\"".into(),
                "the path of a file holding the links' shared secret",
            ));
        }
        Ok(())
    }

    /// `[tls]`: a listener needs a certificate and key; client-certificate
    /// options need a CA; no address is both a plain and a TLS listener.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        for (i, addr) in tls.listen.iter().enumerate() {
            if tls.listen[..i].contains(addr) || self.listen.contains(addr) {
                let requirement = format!("lists {addr}, which is already a listener");
                return Err(self.invalid("tls.listen", format!("\"{addr}\""), &requirement));
            }
        }
        let unset =
            |p: &Option<std::path::PathBuf>| p.as_ref().is_none_or(|p| p.as_os_str().is_empty());
        if !tls.listen.is_empty() && (unset(&tls.cert_file) || unset(&tls.key_file)) {
            let list: Vec<String> = tls.listen.iter().map(|a| format!("\"{a}\"")).collect();
            return Err(self.invalid(
                "tls.listen",
                format!("[{}]", list.join(", ")),
                "needs tls.cert_file and tls.key_file (the server's certificate chain and key)",
            ));
        }
        if unset(&tls.client_ca_file) {
            if tls.require_client_cert {
                return Err(self.invalid(
                    "tls.require_client_cert",
                    "true".to_owned(),
                    "needs tls.client_ca_file (the CA that signs client certificates)",
                ));
            }
            if tls.use_identity_as_username {
                return Err(self.invalid(
                    "tls.use_identity_as_username",
                    "true".to_owned(),
                    "needs tls.client_ca_file (the CA that signs client certificates)",
                ));
            }
        }
        Ok(())
    }

    /// Rejects `[shards.N]` tables for shards the broker does not run:
    /// `N >= shards`. The broker calls it once it knows its shard count
    /// (which this crate cannot: it depends on the CPUs available).
    pub fn validate_shards(&self, shards: usize) -> Result<(), ConfigError> {
        match self.shards.range(shards..).next() {
            Some((&shard, _)) => {
                let key = format!("shards.{shard}");
                Err(ConfigError::NoSuchShard {
                    at: self.source.locate(&key),
                    key,
                    shard,
                    shards,
                })
            }
            None => Ok(()),
        }
    }

    /// Checks a numeric key against its rule.
    fn check(&self, key: &str, n: u64) -> Result<(), ConfigError> {
        match rule(key) {
            Some(rule) if !rule.allows(n) => {
                Err(self.invalid(key, n.to_string(), &rule.requirement()))
            }
            _ => Ok(()),
        }
    }

    /// Checks a signed numeric key against its rule.
    fn check_signed(&self, key: &str, n: i64) -> Result<(), ConfigError> {
        match rule(key) {
            Some(rule) if !rule.allows_signed(n) => {
                Err(self.invalid(key, n.to_string(), &rule.requirement()))
            }
            _ => Ok(()),
        }
    }

    fn invalid(&self, key: &str, value: String, requirement: &str) -> ConfigError {
        ConfigError::OutOfRange {
            key: key.to_owned(),
            value,
            at: self.source.locate(key),
            requirement: requirement.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let toml::Value::Table(sub) = value {
                paths(&path, sub, out);
            }
            out.push(path);
        }
    }

    /// Fails when a setting is added without a rule (the rule gives the
    /// "expected ..." part of its error messages).
    #[test]
    fn every_key_has_a_rule() {
        let mut all = Vec::new();
        paths(
            "",
            &toml::Table::try_from(Config::default()).unwrap(),
            &mut all,
        );
        assert!(all.len() > 20);
        for path in &all {
            assert!(rule(path).is_some(), "no rule for `{path}` in RULES");
            if let Some(key) = path.strip_prefix("mqtt.") {
                assert!(rule(&format!("shards.0.{key}")).is_some());
            }
        }
        assert!(rule("shards.0").is_some());
        for key in STORAGE_SHARD_KEYS {
            assert!(std::ptr::eq(
                rule(&format!("shards.0.{key}")).unwrap(),
                rule(&format!("storage.{key}")).unwrap()
            ));
        }
    }

    #[test]
    fn shard_keys_follow_mqtt_rules() {
        assert!(std::ptr::eq(
            rule("shards.7.max_inflight").unwrap(),
            rule("mqtt.max_inflight").unwrap()
        ));
        assert!(matches!(rule("shards.7"), Some(Rule::Text(_))));
        assert!(rule("mqtt.nope").is_none());
        assert!(std::ptr::eq(
            rule("shards.7.write_buffer_size").unwrap(),
            rule("storage.write_buffer_size").unwrap()
        ));
        // Whole-database keys have no per-shard form.
        assert!(rule("shards.7.compression").is_none());
    }

    #[test]
    fn phrases() {
        assert_eq!(
            rule("mqtt.receive_maximum").unwrap().requirement(),
            "must be between 1 and 65535"
        );
        assert_eq!(
            rule("mqtt.max_output_buffer").unwrap().requirement(),
            "must be at least 1024 (bytes)"
        );
        assert_eq!(
            rule("runtime.ring_depth").unwrap().expected(),
            "an integer that is a power of two between 16 and 4096"
        );
        assert_eq!(
            rule("mqtt.max_queued_messages").unwrap().expected(),
            "a non-negative integer (messages)"
        );
        let durability = rule("storage.durability").unwrap();
        assert_eq!(durability.expected(), "one of \"off\", \"wal\", \"fsync\"");
        assert_eq!(
            durability.requirement(),
            "must be one of \"off\", \"wal\", \"fsync\""
        );
        let open_files = rule("storage.max_open_files").unwrap();
        assert_eq!(
            open_files.expected(),
            "-1 (no limit) or an integer between 16 and 1000000"
        );
        assert_eq!(
            open_files.requirement(),
            "must be -1 (no limit) or between 16 and 1000000"
        );
    }

    #[test]
    fn minus_one_means_no_limit() {
        let r = rule("storage.max_open_files").unwrap();
        assert!(r.allows_signed(-1) && r.allows_signed(16) && r.allows_signed(1_000_000));
        assert!(!r.allows_signed(-2) && !r.allows_signed(0) && !r.allows_signed(15));
        assert!(!r.allows_signed(1_000_001) && !r.allows_signed(i64::MIN));
        // -1 is no limit only where the rule says so.
        assert!(!rule("mqtt.max_inflight").unwrap().allows_signed(-1));
    }

    #[test]
    fn power_of_two() {
        let r = rule("runtime.ring_depth").unwrap();
        assert!(r.allows(16) && r.allows(128) && r.allows(4096));
        assert!(!r.allows(8) && !r.allows(100) && !r.allows(8192));
    }
}
