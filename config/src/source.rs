//! Where each key of a configuration text is: the map from dotted key paths
//! to lines that lets every error name its line.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use toml_edit::{ImDocument, TableLike};

use crate::de::parse_shard_number;
use crate::error::{ConfigError, Location};
use crate::validate::{self, Rule};
use crate::STORAGE_GLOBAL_KEYS;

/// Where a [`Config`](crate::Config) came from: the name of its text (the file
/// name) and the line of every key in it.
///
/// It is not a setting: `==` always holds between two `ConfigSource`s, so
/// configurations compare by their settings alone. A `Config` built in code
/// has the default, empty one, and its errors carry no location.
#[derive(Clone, Default)]
pub struct ConfigSource {
    origin: Arc<str>,
    keys: Vec<KeySpan>,
}

/// One key of the text.
#[derive(Clone)]
struct KeySpan {
    /// Dotted path, e.g. `shards.3.max_inflight`; a key that is not a bare
    /// TOML key is quoted, e.g. `shards."1.5"`.
    path: String,
    /// Number of keys in the path.
    depth: usize,
    /// 1-based line of the key (of the table header for a table).
    line: Option<u32>,
    /// Byte range of the key itself.
    key: Option<Range<usize>>,
    /// Byte range of its value (of the header for a table).
    value: Option<Range<usize>>,
    /// The value as written, if it is on one line.
    text: String,
}

impl PartialEq for ConfigSource {
    /// Always true: where a configuration came from is not part of it.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ConfigSource {}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSource")
            .field("origin", &self.origin)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ConfigSource {
    /// Parses `text` for its key positions. A TOML syntax error is reported
    /// here, with its line.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<ConfigSource, ConfigError> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_and_column(text, offset);
            ConfigError::Syntax {
                at: Location {
                    origin: origin.into(),
                    line: Some(line),
                },
                column,
                line_text: line_text(text, offset).to_owned(),
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
        let mut source = ConfigSource {
            origin: origin.into(),
            keys: Vec::new(),
        };
        source.walk(text, "", 0, doc.as_table());
        Ok(source)
    }

    fn walk(&mut self, text: &str, prefix: &str, depth: usize, table: &dyn TableLike) {
        for (name, item) in table.iter() {
            let bare = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let shown = if bare {
                name.to_owned()
            } else {
                format!("{name:?}")
            };
            let path = if prefix.is_empty() {
                shown
            } else {
                format!("{prefix}.{shown}")
            };
            let key = table.key(name).and_then(|k| k.span());
            let value = item.span();
            let line = key
                .as_ref()
                .or(value.as_ref())
                .map(|s| line_and_column(text, s.start).0);
            let written = match (&value, item.is_table()) {
                (Some(span), false) => text.get(span.clone()).unwrap_or_default(),
                _ => "",
            };
            let written = if written.contains('\n') {
                ""
            } else {
                written.trim()
            };
            self.keys.push(KeySpan {
                path: path.clone(),
                depth: depth + 1,
                line,
                key,
                value,
                text: written.to_owned(),
            });
            if let Some(sub) = item.as_table_like() {
                self.walk(text, &path, depth + 1, sub);
            }
        }
    }

    /// The name of the configuration text, normally its file name; empty for
    /// a configuration built in code.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line of a key given as a dotted path (for a table, the line
    /// of its header), if the text has that key.
    pub fn line_of(&self, key: &str) -> Option<u32> {
        self.keys
            .iter()
            .find(|k| k.path == key)
            .and_then(|k| k.line)
    }

    /// Every key path of the text, in order (tables and the keys in them).
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|k| k.path.as_str())
    }

    /// The location of a key, for an error message.
    pub(crate) fn locate(&self, key: &str) -> Location {
        Location {
            origin: self.origin.clone(),
            line: self.line_of(key),
        }
    }

    /// Rejects `[shards.N]` tables whose name is not a shard number.
    pub(crate) fn check_shard_names(&self) -> Result<(), ConfigError> {
        for k in self.keys.iter().filter(|k| k.depth == 2) {
            let Some(name) = k.path.strip_prefix("shards.") else {
                continue;
            };
            if parse_shard_number(name).is_none() {
                return Err(ConfigError::BadShardName {
                    key: k.path.clone(),
                    at: self.locate(&k.path),
                });
            }
        }
        Ok(())
    }

    /// Turns a serde error from deserializing `text` into an error that names
    /// the key, found from the error's byte span.
    pub(crate) fn deserialize_error(&self, text: &str, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        let span = e.span();
        // An unknown key is reported at the key itself.
        if let Some(field) = message.strip_prefix("unknown field `") {
            let name = field.split('`').next().unwrap_or_default();
            let found = span.as_ref().and_then(|s| {
                self.keys
                    .iter()
                    .find(|k| k.key.as_ref().is_some_and(|r| contains(r, s)))
            });
            let key = found.map_or_else(|| name.to_owned(), |k| k.path.clone());
            let allowed = backquoted(message.split_once(", expected ").map_or("", |(_, e)| e));
            if is_global_storage_key_in_shard(&key) {
                return ConfigError::NotPerShard {
                    at: self.locate(&key),
                    key,
                    allowed,
                };
            }
            let suggestion = closest(name, &allowed);
            return ConfigError::UnknownKey {
                at: self.locate(&key),
                key,
                allowed,
                suggestion,
            };
        }
        // Anything else is about a value: find the innermost setting whose
        // value contains the span (not a key inside a wrongly given table
        // such as `durability = { fsync = 1 }`), else the innermost key.
        let innermost = |setting_only: bool| {
            span.as_ref().and_then(|s| {
                self.keys
                    .iter()
                    .filter(|k| k.value.as_ref().is_some_and(|r| contains(r, s)))
                    .filter(|k| !setting_only || validate::rule(&k.path).is_some())
                    .min_by_key(|k| k.value.as_ref().map_or(usize::MAX, |r| r.len()))
            })
        };
        let found = innermost(true).or_else(|| innermost(false));
        let Some(found) = found else {
            let line = span.map(|s| line_and_column(text, s.start).0);
            return ConfigError::Other {
                at: Location {
                    origin: self.origin.clone(),
                    line,
                },
                message,
            };
        };
        let (problem, serde_expected) = match message.split_once(", expected ") {
            Some((problem, expected)) => (problem.to_owned(), expected.to_owned()),
            None => (message.clone(), String::new()),
        };
        let rule = validate::rule(&found.path);
        // The line of the value itself: in a multi-line array, that of the bad
        // element rather than of the key.
        let line = span
            .map(|s| line_and_column(text, s.start).0)
            .or(found.line);
        let mut problem = problem;
        if let Some(rule @ Rule::OneOf(_)) = rule {
            // A string that is not one of the names the key accepts is a
            // value of the right type that is not allowed.
            if found.text.starts_with(['"', '\'']) {
                return ConfigError::OutOfRange {
                    key: found.path.clone(),
                    value: found.text.clone(),
                    at: Location {
                        origin: self.origin.clone(),
                        line,
                    },
                    requirement: rule.requirement(),
                };
            }
            // Anything else is not a string: serde's words for it ("wanted
            // string or table", or an unknown variant for a table) mislead.
            if !found.text.is_empty() {
                "not a string".clone_into(&mut problem);
            }
        }
        let expected = rule.map(Rule::expected).unwrap_or(serde_expected);
        ConfigError::InvalidValue {
            key: found.path.clone(),
            value: found.text.clone(),
            at: Location {
                origin: self.origin.clone(),
                line,
            },
            problem,
            expected,
        }
    }
}

/// Whether `key` is a whole-database `[storage]` key in a `[shards.N]` table,
/// such as `shards.1.compression`.
fn is_global_storage_key_in_shard(key: &str) -> bool {
    key.strip_prefix("shards.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(_, leaf)| STORAGE_GLOBAL_KEYS.contains(&leaf))
}

/// Whether span `inner` lies within `outer`.
fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (narrow(line), narrow(column))
}

/// `offset`, moved back to the start of the character it falls in (and into
/// the text), so that slicing at it cannot panic.
fn char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The whole line that byte `offset` is on, without its line break.
fn line_text(text: &str, offset: usize) -> &str {
    let offset = char_boundary(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[start..end].trim_end_matches('\r')
}

/// The names between backquotes in serde's "expected one of `a`, `b`".
fn backquoted(list: &str) -> Vec<String> {
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The allowed name nearest to `name` by edit distance, if it is near enough
/// to be a likely typo.
fn closest(name: &str, allowed: &[String]) -> Option<String> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.clone())
}

/// Levenshtein distance, counting an exchange of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("recieve_maximum", "receive_maximum"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_and_column("a = 1\nbb = 2\n", 0), (1, 1));
        assert_eq!(line_and_column("a = 1\nbb = 2\n", 9), (2, 4));
    }

    #[test]
    fn backquoted_names() {
        assert_eq!(backquoted("one of `a`, `b`"), ["a", "b"]);
        assert_eq!(backquoted("`text` or `json`"), ["text", "json"]);
    }
}
