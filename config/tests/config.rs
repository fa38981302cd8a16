//! Tests of the configuration file: defaults, the commented default file,
//! per-shard overrides of `[mqtt]` and `[storage]`, and the errors (key,
//! line and what is allowed).

// The helpers below are test code too (clippy's allow-unwrap-in-tests only
// covers #[test] functions).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use vmqtt_config::{Config, ConfigError, Durability, LogFormat, MqttConfig, StorageConfig};

const ORIGIN: &str = "vmqtt.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, ORIGIN)
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected an error for:\n{text}\ngot {config:?}"),
        Err(e) => e,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The dotted paths of every setting (leaf key) of a TOML table.
fn leaf_paths(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(sub) => leaf_paths(&path, sub, out),
            _ => out.push(path),
        }
    }
}

fn default_setting_paths() -> Vec<String> {
    let table = toml::Table::try_from(Config::default()).unwrap();
    let mut paths = Vec::new();
    leaf_paths("", &table, &mut paths);
    paths
}

/// The `[storage]` keys a `[shards.N]` table may override.
const STORAGE_SHARD_KEYS: [&str; 3] = ["durability", "write_buffer_size", "block_cache_size"];

/// The key a `[shards.N]` table gives for a setting of `[mqtt]` or a
/// per-shard setting of `[storage]`; `None` for the others.
fn shard_key(path: &str) -> Option<&str> {
    path.strip_prefix("mqtt.").or_else(|| {
        path.strip_prefix("storage.")
            .filter(|key| STORAGE_SHARD_KEYS.contains(key))
    })
}

/// A TOML text that sets one dotted setting, with the key on line 3.
fn text_setting(path: &str, value: &str) -> String {
    match path.rsplit_once('.') {
        Some((table, key)) => format!("# comment\n[{table}]\n{key} = {value}\n"),
        None => format!("# comment\n\n{path} = {value}\n"),
    }
}

// ---- the default file ------------------------------------------------------

#[test]
fn default_file_parses_and_equals_default() {
    let parsed = parse(Config::DEFAULT_TOML).unwrap();
    assert_eq!(parsed, Config::default());
    // Field by field too, in case PartialEq ever goes wrong.
    assert_eq!(
        format!("{:?}", parsed.mqtt),
        format!("{:?}", Config::default().mqtt)
    );
    assert_eq!(parsed.listen, [addr("0.0.0.0:1883")]);
    assert_eq!(parsed.data_dir, Path::new("./data"));
    assert_eq!(parsed.cores, None);
    assert_eq!(parsed.log.format, LogFormat::Text);
    assert_eq!(parsed.log.level, "info");
    assert_eq!(parsed.storage, StorageConfig::default());
    assert!(parsed.shards.is_empty());
}

#[test]
fn documented_defaults() {
    let c = Config::default();
    let m = &c.mqtt;
    assert_eq!(m.max_packet_size, 1_048_576);
    assert_eq!(m.max_keepalive, 0);
    assert_eq!(m.receive_maximum, 1024);
    assert_eq!(m.topic_alias_maximum, 64);
    assert_eq!(m.max_inflight, 1024);
    assert_eq!(m.max_queued_messages, 1000);
    assert_eq!(m.max_output_buffer, 262_144);
    assert_eq!(m.connect_timeout_ms, 10_000);
    assert_eq!(m.max_session_expiry, u32::MAX);
    assert!(m.retain_available);
    assert_eq!(m.sys_interval_ms, 10_000);
    assert_eq!(c.runtime.io_memory, 512 * 1024);
    assert_eq!(c.runtime.ring_depth, 128);
    assert_eq!(c.runtime.max_connections, 1_000_000);
    let s = &c.storage;
    assert_eq!(s.durability, Durability::Wal);
    assert_eq!(s.write_buffer_size, 64 << 20);
    assert_eq!(s.block_cache_size, 32 << 20);
    assert_eq!(s.max_background_jobs, 2);
    assert_eq!(s.max_open_files, 1024);
    assert!(s.compression);
    assert_eq!(Durability::default(), Durability::Wal);
    for shard in [0, 1, 63] {
        assert_eq!(c.storage_for_shard(shard), c.storage);
    }
    c.validate().unwrap();
}

#[test]
fn durability_names() {
    for (name, durability) in [
        ("off", Durability::Off),
        ("wal", Durability::Wal),
        ("fsync", Durability::Fsync),
    ] {
        let c = parse(&format!("[storage]\ndurability = \"{name}\"\n")).unwrap();
        assert_eq!(c.storage.durability, durability);
        assert_eq!(durability.as_str(), name);
        let text = toml::to_string(&c.storage).unwrap();
        assert!(text.contains(&format!("durability = \"{name}\"")), "{text}");
    }
}

/// Fails when a field is added to a settings struct but not to vmqtt.toml.
#[test]
fn every_setting_is_in_the_default_file_with_a_comment() {
    let parsed = parse(Config::DEFAULT_TOML).unwrap();
    let lines: Vec<&str> = Config::DEFAULT_TOML.lines().collect();
    let paths = default_setting_paths();
    assert!(
        paths.len() >= 25
            && paths.iter().any(|p| p == "mqtt.max_inflight")
            && paths.iter().any(|p| p == "storage.durability"),
        "{paths:?}"
    );
    for path in &paths {
        let line = parsed
            .source
            .line_of(path)
            .unwrap_or_else(|| panic!("`{path}` is missing from config/vmqtt.toml"));
        let above = lines[line as usize - 2].trim_start();
        assert!(
            above.starts_with('#'),
            "`{path}` (vmqtt.toml line {line}) has no comment above it"
        );
    }
    // And nothing in the file that is not a setting (deny_unknown_fields
    // already ensures it; this guards the walk above).
    for key in parsed.source.keys() {
        let is_table = [
            "mqtt",
            "runtime",
            "log",
            "http",
            "storage",
            "tasks",
            "tls",
            "auth",
            "shared_subscriptions",
            "cluster",
        ]
        .contains(&key);
        assert!(
            is_table || paths.iter().any(|p| p == key),
            "unexpected key {key}"
        );
    }
}

/// The commented `[shards.N]` example at the end of the default file names the
/// `[storage]` keys it may hold, and is valid once uncommented.
#[test]
fn shard_example_in_the_default_file() {
    let text = Config::DEFAULT_TOML;
    let example = &text[text.find("# Per-shard overrides.").unwrap()..];
    for key in STORAGE_SHARD_KEYS {
        assert!(example.contains(key), "the [shards.N] comment omits {key}");
    }
    // The example proper: the commented lines from its table header on.
    let uncommented: String = example[example.find("# [shards.").unwrap()..]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap()))
        .collect();
    let c = parse(&uncommented).unwrap();
    let shard = &c.shards[&0];
    assert!(
        shard.max_inflight.is_some() && shard.durability.is_some(),
        "{uncommented}"
    );
    assert_eq!(c.storage_for_shard(0).durability, Durability::Fsync);
    assert_eq!(c.storage_for_shard(1), StorageConfig::default());
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(
        parse("# nothing\n[mqtt]\n[runtime]\n[log]\n[storage]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn missing_keys_keep_their_defaults() {
    let c = parse("cores = 4\n[mqtt]\nmax_inflight = 7\n[log]\nformat = \"json\"\n").unwrap();
    assert_eq!(c.cores, Some(4));
    assert_eq!(c.mqtt.max_inflight, 7);
    assert_eq!(c.mqtt.receive_maximum, 1024);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.runtime, Config::default().runtime);
    let c = parse("[storage]\ndurability = \"fsync\"\n").unwrap();
    assert_eq!(c.storage.durability, Durability::Fsync);
    assert_eq!(
        StorageConfig {
            durability: Durability::Wal,
            ..c.storage
        },
        StorageConfig::default()
    );
}

#[test]
fn cores_zero_means_one_per_cpu() {
    assert_eq!(parse("cores = 0").unwrap().cores, None);
    assert_eq!(parse("cores = 2").unwrap().cores, Some(2));
}

#[test]
fn serialized_config_parses_back() {
    let mut c = parse(
        "cores = 3\n[storage]\ndurability = \"off\"\nmax_open_files = -1\ncompression = false\n\
         [shards.1]\nmax_inflight = 9\nblock_cache_size = 0\n[shards.2]\ndurability = \"fsync\"\n",
    )
    .unwrap();
    c.listen = vec![addr("127.0.0.1:1883"), addr("[::1]:8883")];
    let text = toml::to_string(&c).unwrap();
    assert_eq!(parse(&text).unwrap(), c);
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("vmqtt-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:1884\"\n").unwrap();
    assert_eq!(
        Config::load(&good).unwrap().listen,
        [addr("127.0.0.1:1884")]
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "\n[mqtt]\nmax_inflight = 0\n").unwrap();
    let msg = Config::load(&bad).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "mqtt.max_inflight = 0 at {} line 3: must be between 1 and 65535",
            bad.display()
        )
    );

    let missing = dir.join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Read { path, .. } if path == &missing),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read config file {}: ", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- listen ----------------------------------------------------------------

#[test]
fn listen_accepts_a_string_or_an_array() {
    assert_eq!(
        parse("listen = \"127.0.0.1:1883\"").unwrap().listen,
        [addr("127.0.0.1:1883")]
    );
    assert_eq!(
        parse("listen = [\"127.0.0.1:1883\", \"[::1]:1884\"]")
            .unwrap()
            .listen,
        [addr("127.0.0.1:1883"), addr("[::1]:1884")]
    );
}

#[test]
fn bad_socket_address_names_key_and_line() {
    let err = parse_err("# listeners\nlisten = \"localhost:1883\"\n");
    let ConfigError::InvalidValue { key, at, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((key.as_str(), at.line), ("listen", Some(2)));
    assert_eq!(
        err.to_string(),
        "listen = \"localhost:1883\" at vmqtt.toml line 2: \"localhost:1883\" is not a socket \
         address (invalid socket address syntax); expected an IP address and port such as \
         \"0.0.0.0:1883\" or \"[::]:1883\", or an array of them"
    );

    // In a multi-line array, the line of the bad element.
    let err = parse_err("listen = [\n  \"127.0.0.1:1883\",\n  \"127.0.0.1\",\n]\n");
    let ConfigError::InvalidValue {
        key, at, problem, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((key.as_str(), at.line), ("listen", Some(3)));
    assert!(
        problem.contains("\"127.0.0.1\" is not a socket address"),
        "{problem}"
    );

    let err = parse_err("listen = 1883\n");
    assert!(
        matches!(&err, ConfigError::InvalidValue { key, .. } if key == "listen"),
        "{err:?}"
    );
}

#[test]
fn listen_must_not_be_empty_or_repeat() {
    let err = parse_err("listen = []\n");
    assert_eq!(
        err.to_string(),
        "listen = [] at vmqtt.toml line 1: must list at least one address"
    );
    let err = parse_err("\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n");
    assert_eq!(
        err.to_string(),
        "listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"] at vmqtt.toml line 2: \
         lists 127.0.0.1:1 more than once"
    );
}

// ---- unknown keys ----------------------------------------------------------

#[test]
fn typo_names_key_line_and_allowed_keys() {
    let text = "listen = \"127.0.0.1:1883\"\n\n[mqtt]\nmax_inflight = 10\nrecieve_maximum = 5\n";
    let err = parse_err(text);
    let ConfigError::UnknownKey {
        key,
        at,
        allowed,
        suggestion,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(key, "mqtt.recieve_maximum");
    assert_eq!(at.line, Some(5));
    assert_eq!(&*at.origin, ORIGIN);
    assert_eq!(suggestion.as_deref(), Some("receive_maximum"));
    assert_eq!(allowed.len(), 20);
    assert!(allowed.iter().any(|k| k == "receive_maximum"));
    assert_eq!(
        err.to_string(),
        "unknown key `mqtt.recieve_maximum` at vmqtt.toml line 5: did you mean `receive_maximum`? \
         allowed keys in [mqtt] are max_packet_size, max_keepalive, receive_maximum, \
         topic_alias_maximum, outbound_topic_aliases, max_inflight, max_queued_messages, \
         max_output_buffer, max_retained_backlog, max_stored_messages, max_stored_bytes, \
         connect_timeout_ms, max_session_expiry, retain_available, sys_interval_ms, \
         max_connections, max_connect_rate, max_topic_length, max_topic_levels, \
         max_subscriptions"
    );
}

#[test]
fn unknown_keys_everywhere() {
    let err = parse_err("cores = 1\n[database]\npath = \"x\"\n");
    assert_eq!(
        err.to_string(),
        "unknown key `database` at vmqtt.toml line 2: allowed keys at the top level are listen, \
         data_dir, cores, mqtt, runtime, log, http, storage, tasks, tls, auth, \
         shared_subscriptions, cluster, shards"
    );
    let err = parse_err("cores = 1\n[storage]\npath = \"x\"\n");
    assert_eq!(
        err.to_string(),
        "unknown key `storage.path` at vmqtt.toml line 3: allowed keys in [storage] are \
         durability, write_buffer_size, block_cache_size, max_background_jobs, max_open_files, \
         compression, max_queued_bytes"
    );
    let err = parse_err("[storage]\n\nwrite_buffer = 1048576\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, suggestion, .. }
            if key == "storage.write_buffer" && at.line == Some(3)
                && suggestion.as_deref() == Some("write_buffer_size")),
        "{err:?}"
    );
    // [mqtt] and [storage] keys belong in their own sections.
    let err = parse_err("[mqtt]\ndurability = \"wal\"\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "mqtt.durability"),
        "{err:?}"
    );
    let err = parse_err("[storage]\nmax_inflight = 1\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "storage.max_inflight"),
        "{err:?}"
    );
    let err = parse_err("[runtime]\nio_mem = 65536\n");
    assert!(
        err.to_string().contains("did you mean `io_memory`?"),
        "{err}"
    );
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, suggestion, .. }
            if key == "runtime.io_mem" && at.line == Some(2) && suggestion.as_deref() == Some("io_memory")),
        "{err:?}"
    );
    let err = parse_err("[shards.2]\nmax_infligt = 3\n");
    assert!(
        err.to_string().starts_with(
            "unknown key `shards.2.max_infligt` at vmqtt.toml line 2: did you mean `max_inflight`? \
             allowed keys in [shards.2] are max_packet_size,"
        ),
        "{err}"
    );
    // The allowed keys of [shards.N] are those of [mqtt], the per-shard
    // ones of [storage], and those of [tasks].
    let err = parse_err("[shards.2]\ndurability = \"wal\"\nbogus = 1\n");
    assert_eq!(
        err.to_string(),
        "unknown key `shards.2.bogus` at vmqtt.toml line 3: allowed keys in [shards.2] are \
         max_packet_size, max_keepalive, receive_maximum, topic_alias_maximum, \
         outbound_topic_aliases, max_inflight, max_queued_messages, max_output_buffer, \
         max_retained_backlog, max_stored_messages, max_stored_bytes, connect_timeout_ms, \
         max_session_expiry, retain_available, sys_interval_ms, max_connections, \
         max_connect_rate, max_topic_length, max_topic_levels, max_subscriptions, durability, write_buffer_size, block_cache_size, \
         client_shares, mesh_shares, background_shares"
    );
    let err = parse_err("[shards.2]\ndurabilty = \"wal\"\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, suggestion, .. }
            if key == "shards.2.durabilty" && at.line == Some(2)
                && suggestion.as_deref() == Some("durability")),
        "{err:?}"
    );
    // Inline tables and dotted keys are found as well.
    let err = parse_err("\nmqtt = { max_inflight = 1, bogus = 2 }\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, .. }
        if key == "mqtt.bogus" && at.line == Some(2)),
        "{err:?}"
    );
    let err = parse_err("\n\nlog.colour = true\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, .. }
        if key == "log.colour" && at.line == Some(3)),
        "{err:?}"
    );
}

// ---- wrong types -----------------------------------------------------------

#[test]
fn wrong_type_names_key_line_and_expected() {
    let err = parse_err("[mqtt]\n\nreceive_maximum = \"many\"\n");
    assert_eq!(
        err.to_string(),
        "mqtt.receive_maximum = \"many\" at vmqtt.toml line 3: invalid type: string \"many\"; \
         expected an integer between 1 and 65535"
    );
    let err = parse_err("[mqtt]\nmax_keepalive = 70000\n");
    assert_eq!(
        err.to_string(),
        "mqtt.max_keepalive = 70000 at vmqtt.toml line 2: invalid value: integer `70000`; \
         expected an integer between 0 and 65535 (seconds)"
    );
    let err = parse_err("[log]\nformat = 1\n");
    assert_eq!(
        err.to_string(),
        "log.format = 1 at vmqtt.toml line 2: not a string; expected one of \"text\", \
         \"json\""
    );
    let err = parse_err("[storage]\ndurability = true\n");
    assert_eq!(
        err.to_string(),
        "storage.durability = true at vmqtt.toml line 2: not a string; expected \
         one of \"off\", \"wal\", \"fsync\""
    );
    for table in ["{ x = 1 }", "{ fsync = 1 }", "{}"] {
        let err = parse_err(&format!("[storage]\ndurability = {table}\n"));
        assert_eq!(
            err.to_string(),
            format!(
                "storage.durability = {table} at vmqtt.toml line 2: not a string; expected one of \
                 \"off\", \"wal\", \"fsync\""
            )
        );
    }
    let err = parse_err("[storage]\nwrite_buffer_size = -1\n");
    assert_eq!(
        err.to_string(),
        "storage.write_buffer_size = -1 at vmqtt.toml line 2: invalid value: integer `-1`; \
         expected an integer between 1048576 and 4294967296 (bytes)"
    );
    let err = parse_err("[mqtt]\nretain_available = 1\n");
    assert!(err.to_string().ends_with("expected true or false"), "{err}");
    let err = parse_err("mqtt = 5\n");
    assert!(
        matches!(&err, ConfigError::InvalidValue { key, .. } if key == "mqtt"),
        "{err:?}"
    );
}

/// Every setting, given a value of the wrong type, is named with its line.
#[test]
fn wrong_type_for_every_setting() {
    for path in default_setting_paths() {
        let err = parse_err(&text_setting(&path, "{ x = 1 }"));
        match &err {
            ConfigError::InvalidValue {
                key, at, expected, ..
            } => {
                assert_eq!(key, &path);
                assert_eq!(at.line, Some(3), "{err}");
                assert!(!expected.is_empty(), "{err}");
            }
            _ => panic!("{path}: {err:?}"),
        }
        // Also as a per-shard override, for [mqtt] and per-shard [storage]
        // keys.
        if let Some(key) = shard_key(&path) {
            let err = parse_err(&text_setting(&format!("shards.5.{key}"), "{ x = 1 }"));
            assert!(
                matches!(&err, ConfigError::InvalidValue { key: k, at, .. }
                if *k == format!("shards.5.{key}") && at.line == Some(3)),
                "{err:?}"
            );
        }
    }
}

// ---- ranges ----------------------------------------------------------------

/// (setting, rejected values, accepted values, requirement)
const RANGES: &[(&str, &[&str], &[&str], &str)] = &[
    (
        "mqtt.max_packet_size",
        &["15", "0", "268435461"],
        &["16", "268435460"],
        "must be between 16 and 268435460 (bytes)",
    ),
    (
        "mqtt.receive_maximum",
        &["0"],
        &["1", "65535"],
        "must be between 1 and 65535",
    ),
    (
        "mqtt.max_inflight",
        &["0"],
        &["1", "65535"],
        "must be between 1 and 65535",
    ),
    (
        "mqtt.max_output_buffer",
        &["1023", "0"],
        &["1024"],
        "must be at least 1024 (bytes)",
    ),
    (
        "mqtt.connect_timeout_ms",
        &["0"],
        &["1"],
        "must be at least 1 (milliseconds)",
    ),
    (
        "mqtt.sys_interval_ms",
        &["99", "0"],
        &["100"],
        "must be at least 100 (milliseconds)",
    ),
    (
        "runtime.io_memory",
        &["65535", "0"],
        &["65536", "8388608"],
        "must be at least 65536 (bytes)",
    ),
    (
        "runtime.ring_depth",
        &["8", "100", "8192", "0"],
        &["16", "1024", "4096"],
        "must be a power of two between 16 and 4096",
    ),
    (
        "runtime.max_connections",
        &["0"],
        &["1", "19000"],
        "must be at least 1 (connections)",
    ),
    (
        "storage.write_buffer_size",
        &["1048575", "0", "4294967297"],
        &["1048576", "4294967296"],
        "must be between 1048576 and 4294967296 (bytes)",
    ),
    (
        "storage.block_cache_size",
        &["68719476737"],
        &["0", "68719476736"],
        "must be between 0 and 68719476736 (bytes)",
    ),
    (
        "storage.max_background_jobs",
        &["0", "65"],
        &["1", "64"],
        "must be between 1 and 64 (threads)",
    ),
    (
        "storage.max_open_files",
        &["0", "15", "-2", "1000001"],
        &["-1", "16", "1000000"],
        "must be -1 (no limit) or between 16 and 1000000",
    ),
];

/// (setting, rejected names, requirement)
const NAMES: &[(&str, &[&str], &str)] = &[
    (
        "storage.durability",
        &["\"fsnyc\"", "\"WAL\"", "\"\"", "'sync'"],
        "must be one of \"off\", \"wal\", \"fsync\"",
    ),
    (
        "log.format",
        &["\"xml\""],
        "must be one of \"text\", \"json\"",
    ),
];

#[test]
fn name_not_allowed_names_key_line_and_choices() {
    let text = "listen = \"127.0.0.1:1883\"\n\n[storage]\nwrite_buffer_size = 1048576\n\
                durability = \"fsnyc\"\n";
    let err = parse_err(text);
    let ConfigError::OutOfRange { key, at, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((key.as_str(), at.line), ("storage.durability", Some(5)));
    assert_eq!(
        err.to_string(),
        "storage.durability = \"fsnyc\" at vmqtt.toml line 5: must be one of \"off\", \"wal\", \
         \"fsync\""
    );
    for (path, bad, requirement) in NAMES {
        for value in *bad {
            let err = parse_err(&text_setting(path, value));
            assert_eq!(
                err.to_string(),
                format!("{path} = {value} at vmqtt.toml line 3: {requirement}")
            );
        }
    }
    // In a shard override, and written as an inline table.
    let err = parse_err("[shards.2]\ndurability = \"fsnyc\"\n");
    assert_eq!(
        err.to_string(),
        "shards.2.durability = \"fsnyc\" at vmqtt.toml line 2: must be one of \"off\", \"wal\", \
         \"fsync\""
    );
    let err = parse_err("\nstorage = { durability = \"none\" }\n");
    assert!(
        matches!(&err, ConfigError::OutOfRange { key, value, at, .. }
            if key == "storage.durability" && value == "\"none\"" && at.line == Some(2)),
        "{err:?}"
    );
}

#[test]
fn out_of_range_for_each_validated_setting() {
    for (path, bad, good, requirement) in RANGES {
        for value in *bad {
            let err = parse_err(&text_setting(path, value));
            assert_eq!(
                err.to_string(),
                format!("{path} = {value} at vmqtt.toml line 3: {requirement}"),
                "{err:?}"
            );
        }
        for value in *good {
            parse(&text_setting(path, value)).unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
        }
    }
}

#[test]
fn out_of_range_in_a_shard_override() {
    let mut storage_keys = 0;
    for (path, bad, good, requirement) in RANGES {
        let Some(key) = shard_key(path) else {
            continue;
        };
        storage_keys += usize::from(path.starts_with("storage."));
        let shard_path = format!("shards.3.{key}");
        for value in *bad {
            let err = parse_err(&text_setting(&shard_path, value));
            assert_eq!(
                err.to_string(),
                format!("{shard_path} = {value} at vmqtt.toml line 3: {requirement}")
            );
        }
        for value in *good {
            parse(&text_setting(&shard_path, value)).unwrap();
        }
    }
    assert_eq!(storage_keys, 2);
}

#[test]
fn empty_strings_are_rejected() {
    let err = parse_err("[log]\nlevel = \"  \"\n");
    assert_eq!(
        err.to_string(),
        "log.level = \"  \" at vmqtt.toml line 2: must not be empty (give a level such as \"info\")"
    );
    let err = parse_err("data_dir = \"\"\n");
    assert_eq!(
        err.to_string(),
        "data_dir = \"\" at vmqtt.toml line 1: must not be empty"
    );
}

#[test]
fn unlimited_settings_take_their_whole_type() {
    let c = parse(
        "[mqtt]\nmax_keepalive = 65535\ntopic_alias_maximum = 0\nmax_queued_messages = 0\n\
         max_session_expiry = 0\nretain_available = false\n",
    )
    .unwrap();
    assert_eq!(c.mqtt.max_keepalive, 65535);
    assert_eq!(c.mqtt.max_session_expiry, 0);
    assert!(!c.mqtt.retain_available);
}

#[test]
fn validate_in_code_has_no_location() {
    let mut c = Config::default();
    c.mqtt.receive_maximum = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "mqtt.receive_maximum = 0: must be between 1 and 65535"
    );
    let mut c = Config::default();
    c.storage.max_open_files = -5;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "storage.max_open_files = -5: must be -1 (no limit) or between 16 and 1000000"
    );
    let mut c = Config::default();
    c.storage.block_cache_size = 65 << 30;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "storage.block_cache_size = 69793218560: must be between 0 and 68719476736 (bytes)"
    );
    // A config read from a file keeps its locations after a change in code.
    let mut c = parse("\n[runtime]\nring_depth = 64\n").unwrap();
    c.runtime.ring_depth = 65;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "runtime.ring_depth = 65 at vmqtt.toml line 3: must be a power of two between 16 and 4096"
    );
}

// ---- per-shard overrides ---------------------------------------------------

/// An [mqtt] with every value different from the default.
fn changed_mqtt() -> MqttConfig {
    let d = MqttConfig::default();
    MqttConfig {
        max_packet_size: d.max_packet_size + 1,
        max_keepalive: d.max_keepalive + 1,
        receive_maximum: d.receive_maximum + 1,
        topic_alias_maximum: d.topic_alias_maximum + 1,
        outbound_topic_aliases: !d.outbound_topic_aliases,
        max_inflight: d.max_inflight + 1,
        max_queued_messages: d.max_queued_messages + 1,
        max_output_buffer: d.max_output_buffer + 1,
        max_retained_backlog: d.max_retained_backlog + 1,
        max_stored_messages: d.max_stored_messages + 1,
        max_stored_bytes: d.max_stored_bytes + 1,
        connect_timeout_ms: d.connect_timeout_ms + 1,
        max_session_expiry: d.max_session_expiry - 1,
        retain_available: !d.retain_available,
        sys_interval_ms: d.sys_interval_ms + 1,
        max_connections: d.max_connections + 1,
        max_connect_rate: d.max_connect_rate + 1,
        max_topic_length: d.max_topic_length - 1,
        max_topic_levels: d.max_topic_levels + 1,
        max_subscriptions: d.max_subscriptions + 1,
    }
}

#[test]
fn every_mqtt_key_can_be_overridden_for_one_shard_only() {
    let changed = changed_mqtt();
    let body = toml::to_string(&changed).unwrap();
    let c = parse(&format!("cores = 3\n[shards.1]\n{body}")).unwrap();
    assert_eq!(c.mqtt_for_shard(1), changed);
    assert_eq!(c.mqtt_for_shard(0), MqttConfig::default());
    assert_eq!(c.mqtt_for_shard(2), MqttConfig::default());
    assert_eq!(c.mqtt, MqttConfig::default());
}

#[test]
fn override_keeps_the_other_mqtt_keys() {
    let text =
        "[mqtt]\nmax_inflight = 100\nreceive_maximum = 200\n\n[shards.0]\nmax_inflight = 5\n\n\
                [shards.2]\nretain_available = false\n";
    let c = parse(text).unwrap();
    let s0 = c.mqtt_for_shard(0);
    assert_eq!(
        (s0.max_inflight, s0.receive_maximum, s0.retain_available),
        (5, 200, true)
    );
    let s1 = c.mqtt_for_shard(1);
    assert_eq!(
        (s1.max_inflight, s1.receive_maximum, s1.retain_available),
        (100, 200, true)
    );
    let s2 = c.mqtt_for_shard(2);
    assert_eq!(
        (s2.max_inflight, s2.receive_maximum, s2.retain_available),
        (100, 200, false)
    );
    assert_eq!(c.mqtt_for_shard(99), c.mqtt);
    // The same overrides written as an inline table or dotted keys.
    let inline = parse("[mqtt]\nmax_inflight = 100\nreceive_maximum = 200\n[shards]\n0 = { max_inflight = 5 }\n2 = { retain_available = false }\n").unwrap();
    assert_eq!(inline, c);
    let dotted = parse("mqtt.max_inflight = 100\nmqtt.receive_maximum = 200\nshards.0.max_inflight = 5\nshards.2.retain_available = false\n").unwrap();
    assert_eq!(dotted, c);
}

#[test]
fn storage_override_applies_to_its_shard_only() {
    let text = "[storage]\nwrite_buffer_size = 33554432\nmax_open_files = 4096\ncompression = false\n\n\
                [shards.1]\ndurability = \"fsync\"\nwrite_buffer_size = 134217728\nmax_inflight = 5\n\n\
                [shards.2]\nblock_cache_size = 0\n";
    let c = parse(text).unwrap();
    let global = StorageConfig {
        write_buffer_size: 32 << 20,
        max_open_files: 4096,
        compression: false,
        ..StorageConfig::default()
    };
    assert_eq!(c.storage, global);
    assert_eq!(c.storage_for_shard(0), global);
    assert_eq!(c.storage_for_shard(3), global);
    // Shard 1: its two storage keys; block_cache_size and the whole-database
    // keys come from [storage].
    assert_eq!(
        c.storage_for_shard(1),
        StorageConfig {
            durability: Durability::Fsync,
            write_buffer_size: 128 << 20,
            ..global.clone()
        }
    );
    assert_eq!(
        c.storage_for_shard(2),
        StorageConfig {
            block_cache_size: 0,
            ..global.clone()
        }
    );
    // The [mqtt] and [storage] keys of one table apply to their own section.
    assert_eq!(c.mqtt_for_shard(1).max_inflight, 5);
    assert_eq!(c.mqtt_for_shard(2), MqttConfig::default());
    // Inline tables and dotted keys too.
    let dotted = parse(
        "storage.write_buffer_size = 33554432\nstorage.max_open_files = 4096\n\
         storage.compression = false\nshards.1.durability = \"fsync\"\n\
         shards.1.write_buffer_size = 134217728\nshards.1.max_inflight = 5\n\
         shards.2.block_cache_size = 0\n",
    )
    .unwrap();
    assert_eq!(dotted, c);
    let inline = parse(
        "storage = { write_buffer_size = 33554432, max_open_files = 4096, compression = false }\n\
         shards = { 1 = { durability = \"fsync\", write_buffer_size = 134217728, max_inflight = 5 }, \
         2 = { block_cache_size = 0 } }\n",
    )
    .unwrap();
    assert_eq!(inline, c);
}

#[test]
fn whole_database_storage_keys_are_not_per_shard() {
    for (key, value) in [
        ("max_background_jobs", "4"),
        ("max_open_files", "-1"),
        ("compression", "false"),
    ] {
        let err = parse_err(&format!(
            "[shards.0]\nmax_inflight = 1\n\n[shards.1]\n{key} = {value}\n"
        ));
        let ConfigError::NotPerShard {
            key: path,
            at,
            allowed,
        } = &err
        else {
            panic!("{key}: {err:?}")
        };
        assert_eq!(path, &format!("shards.1.{key}"));
        assert_eq!(at.line, Some(5));
        assert!(allowed.iter().any(|k| k == "durability"), "{allowed:?}");
        assert!(!allowed.iter().any(|k| k == key), "{allowed:?}");
    }
    let err = parse_err("[shards.1]\ncompression = false\n");
    assert_eq!(
        err.to_string(),
        "`shards.1.compression` at vmqtt.toml line 2: `compression` applies to the whole \
         database and can only be set in [storage]; allowed keys in [shards.1] are \
         max_packet_size, max_keepalive, receive_maximum, topic_alias_maximum, \
         outbound_topic_aliases, max_inflight, max_queued_messages, max_output_buffer, \
         max_retained_backlog, max_stored_messages, max_stored_bytes, connect_timeout_ms, \
         max_session_expiry, retain_available, sys_interval_ms, max_connections, \
         max_connect_rate, max_topic_length, max_topic_levels, max_subscriptions, durability, write_buffer_size, block_cache_size, \
         client_shares, mesh_shares, background_shares"
    );
}

#[test]
fn shard_table_names_must_be_numbers() {
    for name in ["x", "-1", "03", "\"+3\"", "\"1.5\"", "\"\"", "\" 1\""] {
        let err = parse_err(&format!("[mqtt]\n\n[shards.{name}]\nmax_inflight = 3\n"));
        let ConfigError::BadShardName { key, at } = &err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(at.line, Some(3), "{err}");
        assert!(key.starts_with("shards."), "{err}");
    }
    let err = parse_err("[mqtt]\n\n[shards.x]\nmax_inflight = 3\n");
    assert_eq!(
        err.to_string(),
        "[shards.x] at vmqtt.toml line 3: a per-shard table must be named by a shard number \
         written without sign or leading zeros, like [shards.0]"
    );
    let err = parse_err("[shards]\nx = { max_inflight = 3 }\n");
    assert!(
        matches!(&err, ConfigError::BadShardName { key, at } if key == "shards.x" && at.line == Some(2)),
        "{err:?}"
    );
    let err = parse_err("\nshards = 5\n");
    assert!(
        matches!(&err, ConfigError::InvalidValue { key, at, .. } if key == "shards" && at.line == Some(2)),
        "{err:?}"
    );
}

#[test]
fn validate_shards_rejects_shards_beyond_the_count() {
    let c = parse("[shards.0]\nmax_inflight = 1\n\n[shards.3]\nmax_inflight = 2\n").unwrap();
    c.validate_shards(4).unwrap();
    c.validate_shards(100).unwrap();
    let err = c.validate_shards(3).unwrap_err();
    let ConfigError::NoSuchShard {
        key,
        at,
        shard,
        shards,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (key.as_str(), at.line, *shard, *shards),
        ("shards.3", Some(4), 3, 3)
    );
    assert_eq!(
        err.to_string(),
        "[shards.3] at vmqtt.toml line 4: there is no shard 3: the broker runs 3 shards, numbered 0 to 2"
    );
    assert_eq!(
        c.validate_shards(1).unwrap_err().to_string(),
        "[shards.3] at vmqtt.toml line 4: there is no shard 3: the broker runs 1 shard, numbered 0"
    );
    Config::default().validate_shards(1).unwrap();
}

// ---- syntax ----------------------------------------------------------------

#[test]
fn syntax_error_names_line_and_column() {
    let err = parse_err("[mqtt]\nmax_inflight = 5\n[runtime\n");
    let ConfigError::Syntax { at, column, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((at.line, *column), (Some(3), 9));
    assert_eq!(
        err.to_string(),
        "TOML syntax error at vmqtt.toml line 3, column 9 (`[runtime`): invalid table header; \
         expected `.`, `]`"
    );
    let err = parse_err("[mqtt]\nmax_inflight = 5\nmax_inflight = 6\n");
    assert_eq!(
        err.to_string(),
        "TOML syntax error at vmqtt.toml line 3, column 1 (`max_inflight = 6`): duplicate key \
         `max_inflight` in table `mqtt`"
    );
}

#[test]
fn equality_ignores_where_a_config_came_from() {
    let a = Config::from_toml_str("cores = 2", "a.toml").unwrap();
    let b = Config::from_toml_str("\n\n\ncores = 2", "b.toml").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.source.origin(), "a.toml");
    assert_eq!(
        (a.source.line_of("cores"), b.source.line_of("cores")),
        (Some(1), Some(4))
    );
}

/// `[tasks]` shares: defaults, per-shard overrides, and a value out of range
/// named with its key and line.
#[test]
fn task_shares_per_shard() {
    let text = "[tasks]\nbackground_shares = 100\n\n[shards.1]\nclient_shares = 500\n";
    let config = Config::from_toml_str(text, "vmqtt.toml").unwrap();
    let (t0, t1) = (config.tasks_for_shard(0), config.tasks_for_shard(1));
    assert_eq!(
        (t0.client_shares, t0.mesh_shares, t0.background_shares),
        (1000, 1000, 100)
    );
    assert_eq!(
        (t1.client_shares, t1.mesh_shares, t1.background_shares),
        (500, 1000, 100)
    );
    let err = Config::from_toml_str("[tasks]\nmesh_shares = 0\n", "vmqtt.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tasks.mesh_shares"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("between 1 and 1000"), "{err}");
    let err = Config::from_toml_str("[shards.0]\nclient_shares = 5000\n", "vmqtt.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client_shares") && err.contains("between 1 and 1000"),
        "{err}"
    );
    let err = Config::from_toml_str("[tasks]\nclient_share = 10\n", "vmqtt.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("client_share"), "{err}");
}

// ---- [tls] and [auth] ------------------------------------------------------

#[test]
fn tls_and_auth_sections() {
    let c = parse(
        "[tls]\nlisten = \"127.0.0.1:8883\"\ncert_file = \"s.crt\"\nkey_file = \"s.key\"\n\
         client_ca_file = \"ca.crt\"\nrequire_client_cert = true\nuse_identity_as_username = true\n\
         [auth]\nanonymous = \"deny\"\npassword_file = \"passwd\"\nacl_file = \"acl\"\n",
    )
    .unwrap();
    assert_eq!(c.tls.listen, vec!["127.0.0.1:8883".parse().unwrap()]);
    assert_eq!(c.tls.cert_file.as_deref(), Some(Path::new("s.crt")));
    assert!(c.tls.require_client_cert && c.tls.use_identity_as_username);
    assert_eq!(c.auth.anonymous, vmqtt_config::Anonymous::Deny);
    assert_eq!(c.auth.acl_file.as_deref(), Some(Path::new("acl")));
    // Defaults: no TLS listener, anonymous clients from loopback only.
    let d = Config::default();
    assert!(d.tls.listen.is_empty() && d.auth.password_file.is_none());
    assert_eq!(d.auth.anonymous, vmqtt_config::Anonymous::Loopback);
}

#[test]
fn tls_and_auth_mistakes_are_named() {
    let err = |text: &str| parse(text).unwrap_err().to_string();
    assert_eq!(
        err("[tls]\nlisten = [\"0.0.0.0:8883\"]\ncert_file = \"s.crt\"\n"),
        "tls.listen = [\"0.0.0.0:8883\"] at vmqtt.toml line 2: needs tls.cert_file and \
         tls.key_file (the server's certificate chain and key)"
    );
    assert_eq!(
        err("[tls]\nrequire_client_cert = true\n"),
        "tls.require_client_cert = true at vmqtt.toml line 2: needs tls.client_ca_file \
         (the CA that signs client certificates)"
    );
    assert_eq!(
        err("[tls]\nuse_identity_as_username = true\n"),
        "tls.use_identity_as_username = true at vmqtt.toml line 2: needs tls.client_ca_file \
         (the CA that signs client certificates)"
    );
    assert_eq!(
        err("listen = \"0.0.0.0:1883\"\n[tls]\nlisten = \"0.0.0.0:1883\"\ncert_file = \"a\"\nkey_file = \"b\"\n"),
        "tls.listen = \"0.0.0.0:1883\" at vmqtt.toml line 3: lists 0.0.0.0:1883, which is \
         already a listener"
    );
    let e = err("[auth]\nanonymous = \"yes\"\n");
    assert!(e.contains("auth.anonymous") && e.contains("line 2"), "{e}");
    assert!(
        e.contains("\"deny\", \"loopback\" or \"allow\"") || e.contains("deny"),
        "{e}"
    );
    let e = err("[auth]\npasword_file = \"p\"\n");
    assert!(e.contains("did you mean `password_file`"), "{e}");
    let e = err("[mqtt]\nmax_topic_levels = 0\n");
    assert_eq!(
        e,
        "mqtt.max_topic_levels = 0 at vmqtt.toml line 2: must be between 1 and 65535 (levels)"
    );
}

#[test]
fn shared_subscriptions_take_a_default_strategy_and_rules_by_group_name() {
    let text = r#"
[shared_subscriptions]
strategy = "least_inflight"
redeliver_on_disconnect = false
max_pending = 50
across_nodes = "spread"

[[shared_subscriptions.groups]]
pattern = "ordered-*"
strategy = "sticky"
"#;
    let c = Config::from_toml_str(text, "t.toml").unwrap();
    let s = &c.shared_subscriptions;
    assert_eq!(s.strategy, vmqtt_config::GroupStrategy::LeastInflight);
    assert!(!s.redeliver_on_disconnect);
    assert_eq!(s.max_pending, 50);
    assert_eq!(s.across_nodes, vmqtt_config::AcrossNodes::Spread);
    assert_eq!(s.groups[0].pattern, "ordered-*");
    assert_eq!(s.groups[0].strategy, vmqtt_config::GroupStrategy::Sticky);
}

#[test]
fn a_bad_shared_subscriptions_section_is_refused_clearly() {
    let bad_strategy = "[shared_subscriptions]\nstrategy = \"fastest\"\n";
    let e = Config::from_toml_str(bad_strategy, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("strategy") && e.contains("least_inflight"),
        "{e}"
    );
    let bad_pattern = "[[shared_subscriptions.groups]]\npattern = \"a/b\"\nstrategy = \"random\"\n";
    let e = Config::from_toml_str(bad_pattern, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shared_subscriptions.groups"), "{e}");
    let big = "[shared_subscriptions]\nmax_pending = 1000000000\n";
    let e = Config::from_toml_str(big, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_pending"), "{e}");
    let across = "[shared_subscriptions]\nacross_nodes = \"nearest\"\n";
    let e = Config::from_toml_str(across, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("across_nodes") && e.contains("local_first"),
        "{e}"
    );
}

/// The commented `[cluster]` example of the default file is valid once
/// uncommented, and without the section the node is single.
#[test]
fn cluster_example_in_the_default_file() {
    assert_eq!(Config::default().cluster, None);
    let text = Config::DEFAULT_TOML;
    let start = text.find("# [cluster]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let uncommented: String = text[start..end]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap()))
        .collect();
    let c = parse(&uncommented).unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.name, "fleet");
    assert_eq!(cluster.node_id, 1);
    assert_eq!(cluster.etcd, ["http://127.0.0.1:2379"]);
    assert_eq!(cluster.advertised().to_string(), "10.0.0.5:1884");
    assert_eq!(cluster.lease_ttl_seconds, 3);
    assert_eq!(cluster.flush_us, 200);
}

#[test]
fn cluster_section_is_validated() {
    let base = "[cluster]\nname = \"c1\"\nnode_id = 2\netcd = [\"http://127.0.0.1:2379\"]\n\
                listen = \"127.0.0.2:1884\"\nsecret_file = \"s\"\n";
    let c = parse(base).unwrap().cluster.unwrap();
    assert_eq!(c.advertised().to_string(), "127.0.0.2:1884");
    assert_eq!(c.max_link_bytes, 64 << 20);
    let bad = |text: &str, key: &str, needle: &str| {
        let err = parse_err(text);
        let msg = err.to_string();
        assert!(msg.contains(key) && msg.contains(needle), "{msg}");
    };
    bad(
        &base.replace("\"c1\"", "\"c 1\""),
        "cluster.name",
        "letters",
    );
    bad(
        &base.replace("node_id = 2", "node_id = 0"),
        "cluster.node_id",
        "between 1 and 65535",
    );
    bad(
        &base.replace("[\"http://127.0.0.1:2379\"]", "[]"),
        "cluster.etcd",
        "at least one",
    );
    bad(
        &base.replace("http://127.0.0.1:2379", "127.0.0.1:2379"),
        "cluster.etcd",
        "http://host:port",
    );
    bad(
        &base.replace("127.0.0.2:1884", "0.0.0.0:1884"),
        "cluster.advertise",
        "wildcard",
    );
    bad(
        &base.replace("127.0.0.2:1884", "0.0.0.0:1883"),
        "cluster.listen",
        "MQTT listeners",
    );
    bad(
        &format!("{base}lease_ttl_seconds = 0\n"),
        "cluster.lease_ttl_seconds",
        "between 1 and 60",
    );
    bad(
        &format!("{base}flush_us = 0\n"),
        "cluster.flush_us",
        "between 1 and 100000",
    );
    bad(
        &base.replace("secret_file = \"s\"\n", ""),
        "secret_file",
        "",
    );
    bad(&format!("{base}peers = 1\n"), "cluster.peers", "");
}
