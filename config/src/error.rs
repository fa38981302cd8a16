//! Configuration errors. Each message names the file, the key (a dotted path
//! such as `mqtt.receive_maximum` or `shards.3.max_inflight`), the line, and
//! what is allowed.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where in a configuration something was found: the origin (file name) and
/// the 1-based line, when known.
///
/// Its `Display` form starts with a space so that it can follow a key
/// directly: ` at vmqtt.toml line 12`, ` in vmqtt.toml` (line unknown), or
/// nothing at all for a configuration built in code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Name of the configuration text, normally its file name; empty for a
    /// configuration built in code.
    pub origin: Arc<str>,
    /// 1-based line number, if known.
    pub line: Option<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.origin.is_empty(), self.line) {
            (false, Some(line)) => write!(f, " at {} line {line}", self.origin),
            (false, None) => write!(f, " in {}", self.origin),
            (true, Some(line)) => write!(f, " at line {line}"),
            (true, None) => Ok(()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// The text is not valid TOML (including a key given twice).
    #[error(
        "TOML syntax error{at}, column {column}{}: {message}",
        quote_line(line_text)
    )]
    Syntax {
        /// Where.
        at: Location,
        /// 1-based column of the error in its line.
        column: u32,
        /// The text of the offending line.
        line_text: String,
        /// What the TOML parser expected.
        message: String,
    },

    /// A key that no setting has (a typo, or a key in the wrong section).
    #[error(
        "unknown key `{key}`{at}: {}allowed keys {} are {}",
        did_you_mean(suggestion.as_deref()),
        section_of(key),
        allowed.join(", ")
    )]
    UnknownKey {
        /// The unknown key as a dotted path, e.g. `mqtt.recieve_maximum`.
        key: String,
        /// Where.
        at: Location,
        /// The keys that section allows.
        allowed: Vec<String>,
        /// The allowed key closest to the unknown one, if any is close.
        suggestion: Option<String>,
    },

    /// A value of the wrong type, or one that does not parse as its type: a
    /// string for a number, 70000 for a 16-bit setting, a malformed socket
    /// address.
    #[error("{key}{}{at}: {problem}; expected {expected}", show_value(value))]
    InvalidValue {
        /// The key as a dotted path.
        key: String,
        /// The value as written in the file (empty if it spans lines).
        value: String,
        /// Where.
        at: Location,
        /// What is wrong with it.
        problem: String,
        /// What the key accepts.
        expected: String,
    },

    /// A value of the right type that is not allowed: out of range, not a
    /// power of two, not one of the names a key accepts (`log.format`,
    /// `storage.durability`), an empty or duplicated `listen` entry, an
    /// empty string.
    #[error("{key} = {value}{at}: {requirement}")]
    OutOfRange {
        /// The key as a dotted path.
        key: String,
        /// The value.
        value: String,
        /// Where.
        at: Location,
        /// What is allowed, e.g. `must be between 1 and 65535`.
        requirement: String,
    },

    /// A `[storage]` key that applies to the whole database (such as
    /// `compression`), given in a `[shards.N]` table.
    #[error(
        "`{key}`{at}: `{}` applies to the whole database and can only be set in [storage]; \
         allowed keys {} are {}",
        leaf_of(key),
        section_of(key),
        allowed.join(", ")
    )]
    NotPerShard {
        /// The key as a dotted path, e.g. `shards.1.compression`.
        key: String,
        /// Where.
        at: Location,
        /// The keys a `[shards.N]` table allows.
        allowed: Vec<String>,
    },

    /// A `[shards.N]` table whose name is not a shard number.
    #[error(
        "[{key}]{at}: a per-shard table must be named by a shard number written \
         without sign or leading zeros, like [shards.0]"
    )]
    BadShardName {
        /// The table as a dotted path, e.g. `shards.x`.
        key: String,
        /// Where.
        at: Location,
    },

    /// A `[shards.N]` table for a shard the broker does not run
    /// (see [`Config::validate_shards`](crate::Config::validate_shards)).
    #[error("[{key}]{at}: there is no shard {shard}: {}", shard_range(*shards))]
    NoSuchShard {
        /// The table as a dotted path, e.g. `shards.5`.
        key: String,
        /// Where.
        at: Location,
        /// The shard number it names.
        shard: usize,
        /// How many shards the broker runs.
        shards: usize,
    },

    /// Any other error from the TOML deserializer, where no key could be
    /// found (not expected with this crate's types).
    #[error("invalid configuration{at}: {message}")]
    Other {
        /// Where.
        at: Location,
        /// What the deserializer said.
        message: String,
    },
}

fn quote_line(line: &str) -> String {
    let line = line.trim();
    if line.is_empty() {
        String::new()
    } else {
        format!(" (`{line}`)")
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!("did you mean `{s}`? "))
        .unwrap_or_default()
}

/// The section a dotted key is in: `in [mqtt]`, `in [shards.3]`, `at the top level`.
fn section_of(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((table, _)) => format!("in [{table}]"),
        None => "at the top level".to_owned(),
    }
}

/// The last key of a dotted path: `compression` of `shards.1.compression`.
fn leaf_of(key: &str) -> &str {
    key.rsplit_once('.').map_or(key, |(_, leaf)| leaf)
}

fn show_value(value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!(" = {value}")
    }
}

fn shard_range(shards: usize) -> String {
    match shards {
        0 => "the broker runs no shards".to_owned(),
        1 => "the broker runs 1 shard, numbered 0".to_owned(),
        n => format!("the broker runs {n} shards, numbered 0 to {}", n - 1),
    }
}
