//! Topic names and topic filters (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2).
//!
//! - [`TopicName`] is what a PUBLISH carries: non-empty (except the one
//!   [`TopicName::empty`] that a v5 topic alias stands in for), no wildcards.
//! - [`TopicFilter`] is what a SUBSCRIBE or UNSUBSCRIBE carries: `+` and `#`
//!   wildcards and, optionally, the shared-subscription prefix
//!   `$share/{group}/`.
//! - [`matches()`] decides whether a filter matches a name, without allocating.
//!
//! These types are plain, immutable values (`Send + Sync`; cloning is a
//! reference-count bump). They belong to no shard and can live anywhere,
//! including inside messages that cross shards.
//!
//! The shared-subscription syntax is recognised whatever the protocol level:
//! like most brokers, a 3.1.1 client may use `$share/{group}/{filter}` too.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::iter::FusedIterator;
use std::ops::Deref;

use memchr::{memchr, memchr2, memchr3};

use crate::ByteStr;

/// The longest topic name or filter, in bytes: an MQTT UTF-8 string has a
/// 16-bit length prefix.
pub const MAX_LEN: usize = 65_535;

/// The prefix that makes a filter a shared subscription (MQTT 5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or topic filter is invalid.
///
/// Every variant is a malformed-packet condition for the packet that carried
/// the topic (MQTT 5.0 reason code 0x90 "Topic Name invalid" for a PUBLISH,
/// 0x8F "Topic Filter invalid" for a SUBSCRIBE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is empty (MQTT 3.1.1 §4.7.3, MQTT 5.0 §4.7.3).
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than 65535 bytes (MQTT 5.0 §1.5.4).
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// The topic contains the null character U+0000 (MQTT 5.0 §4.7.3).
    #[error("topic contains the null character U+0000")]
    NulChar,
    /// A topic name contains a wildcard character, `+` or `#` (MQTT 5.0 §4.7.1).
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInName,
    /// A `#` in a filter is not alone in its level or not in the last level
    /// (MQTT 5.0 §4.7.1.2).
    #[error("'#' must be a whole level and the last level of a topic filter")]
    InvalidMultiLevelWildcard,
    /// A `+` in a filter is not alone in its level (MQTT 5.0 §4.7.1.3).
    #[error("'+' must be a whole level of a topic filter")]
    InvalidSingleLevelWildcard,
    /// The share name of a shared subscription is empty or contains `/`, `+`
    /// or `#` (MQTT 5.0 §4.8.2).
    #[error("shared subscription share name is empty or contains '/', '+' or '#'")]
    InvalidShareGroup,
    /// A shared subscription has no topic filter after its share name:
    /// `$share/{group}/` or `$share/{group}` (MQTT 5.0 §4.8.2).
    #[error("shared subscription has no topic filter after the share name")]
    EmptySharedFilter,
}

fn check_len(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_LEN {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

/// Checks the rules for a topic name: non-empty, at most 65535 bytes, no
/// U+0000, no `+` or `#`.
///
/// UTF-8 validity is the caller's (a `&str` is UTF-8); the general rules for
/// MQTT strings (MQTT 5.0 §1.5.4) are the codec's.
pub fn validate_topic_name(s: &str) -> Result<(), TopicError> {
    check_len(s)?;
    match memchr3(b'+', b'#', 0, s.as_bytes()) {
        None => Ok(()),
        Some(i) if s.as_bytes()[i] == 0 => Err(TopicError::NulChar),
        Some(_) => Err(TopicError::WildcardInName),
    }
}

/// Checks the rules for a topic filter: non-empty, at most 65535 bytes, no
/// U+0000, the wildcard rules, and the shared-subscription syntax when the
/// filter starts with `$share/`.
pub fn validate_topic_filter(s: &str) -> Result<(), TopicError> {
    check_len(s)?;
    let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
        return validate_wildcards(s.as_bytes());
    };
    let (group, filter) = match memchr(b'/', rest.as_bytes()) {
        Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
        None => (rest, None),
    };
    if group.is_empty() || memchr2(b'+', b'#', group.as_bytes()).is_some() {
        return Err(TopicError::InvalidShareGroup);
    }
    if memchr(0, group.as_bytes()).is_some() {
        return Err(TopicError::NulChar);
    }
    match filter {
        None | Some("") => Err(TopicError::EmptySharedFilter),
        Some(filter) => validate_wildcards(filter.as_bytes()),
    }
}

/// The wildcard rules and the U+0000 rule, over a filter without its
/// `$share/{group}/` prefix.
fn validate_wildcards(f: &[u8]) -> Result<(), TopicError> {
    let mut from = 0;
    while let Some(p) = memchr3(b'+', b'#', 0, &f[from..]) {
        let i = from + p;
        let starts_level = i == 0 || f[i - 1] == b'/';
        let ends_level = i + 1 == f.len() || f[i + 1] == b'/';
        match f[i] {
            0 => return Err(TopicError::NulChar),
            b'+' if !(starts_level && ends_level) => {
                return Err(TopicError::InvalidSingleLevelWildcard)
            }
            b'#' if !(starts_level && i + 1 == f.len()) => {
                return Err(TopicError::InvalidMultiLevelWildcard)
            }
            _ => {}
        }
        from = i + 1;
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `None` for a
/// filter that is not a shared subscription.
fn split_share(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix(SHARE_PREFIX)?;
    let slash = memchr(b'/', rest.as_bytes())?;
    Some((&rest[..slash], &rest[slash + 1..]))
}

/// The levels of a topic name or filter: the parts between `/` separators.
///
/// `"a//b/"` has the levels `"a"`, `""`, `"b"`, `""`; the empty string has
/// one empty level. Does not allocate.
pub fn levels(s: &str) -> Levels<'_> {
    Levels { rest: Some(s) }
}

/// Iterator over the levels of a topic name or filter; see [`levels`].
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match memchr(b'/', s.as_bytes()) {
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

impl FusedIterator for Levels<'_> {}

/// Whether the topic filter `filter` matches the topic name `topic`
/// (MQTT 5.0 §4.7).
///
/// - `+` matches exactly one level, which may be empty (`+/+` matches `/`).
/// - `#` matches any number of levels, including none: `sport/#` matches
///   `sport`, `sport/` and `sport/tennis/player1`.
/// - A filter that starts with a wildcard does not match a topic name that
///   starts with `$` (§4.7.2): `#` does not match `$SYS/uptime`.
///
/// `filter` is the part matched against names, without a `$share/{group}/`
/// prefix (see [`TopicFilter::matching_filter`]). For an invalid filter the
/// result is unspecified, but this never panics. Does not allocate.
pub fn matches(filter: &str, topic: &str) -> bool {
    let f = filter.as_bytes();
    let t = topic.as_bytes();
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    // `i` and `j`: the starts of the current level in the filter and the topic.
    let mut i = 0;
    let mut j = 0;
    loop {
        if is_wildcard_level(f, i, b'#') {
            return true;
        }
        // `fe` and `te`: the ends of the current level.
        let (fe, te) = if is_wildcard_level(f, i, b'+') {
            (i + 1, memchr(b'/', &t[j..]).map_or(t.len(), |p| j + p))
        } else {
            // A literal level: compare up to the first difference or `/`,
            // without a separate search for the end of the level.
            let (mut a, mut b) = (i, j);
            while a < f.len() && b < t.len() && f[a] == t[b] && f[a] != b'/' {
                a += 1;
                b += 1;
            }
            let f_end = a == f.len() || f[a] == b'/';
            let t_end = b == t.len() || t[b] == b'/';
            if !(f_end && t_end) {
                return false;
            }
            (a, b)
        };
        if fe == f.len() {
            return te == t.len();
        }
        if te == t.len() {
            // The topic has no levels left: only `#` matches no level at all
            // (`sport/#` matches `sport`).
            return is_wildcard_level(f, fe + 1, b'#');
        }
        i = fe + 1;
        j = te + 1;
    }
}

/// Whether the level of `f` that starts at `i` is exactly the byte `c`.
fn is_wildcard_level(f: &[u8], i: usize, c: u8) -> bool {
    f.get(i) == Some(&c) && f.get(i + 1).is_none_or(|&n| n == b'/')
}

/// A validated topic name: what a PUBLISH is sent to (MQTT 5.0 §4.7).
///
/// Invariant: non-empty, at most 65535 bytes, no U+0000, no `+` or `#` —
/// except for the value from [`TopicName::empty`]. A plain value that can
/// live anywhere; cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicName(ByteStr);

impl TopicName {
    /// Validates `s` as a topic name.
    pub fn new(s: ByteStr) -> Result<Self, TopicError> {
        validate_topic_name(&s)?;
        Ok(Self(s))
    }

    /// The empty topic name: what a v5 PUBLISH carries when a topic alias
    /// stands in for the name (MQTT 5.0 §3.3.2.3.4). The only way to get an
    /// empty `TopicName`.
    pub const fn empty() -> Self {
        Self(ByteStr::new())
    }

    /// Validates a `'static` string as a topic name, without copying it.
    pub fn from_static(s: &'static str) -> Result<Self, TopicError> {
        Self::new(ByteStr::from_static(s))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying string.
    pub fn as_bytestr(&self) -> &ByteStr {
        &self.0
    }

    /// Consumes the name, returning the underlying string.
    pub fn into_bytestr(self) -> ByteStr {
        self.0
    }

    /// Whether this is the empty name of [`TopicName::empty`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with `$` (such as `$SYS/...`): wildcards at
    /// the start of a filter do not match it (MQTT 5.0 §4.7.2).
    pub fn is_system(&self) -> bool {
        self.0.as_bytes().first() == Some(&b'$')
    }

    /// The levels of the name; see [`levels`].
    pub fn levels(&self) -> Levels<'_> {
        levels(self.as_str())
    }
}

/// A validated topic filter: what a SUBSCRIBE asks for (MQTT 5.0 §4.7, §4.8.2).
///
/// Invariant: non-empty, at most 65535 bytes, no U+0000, `+` and `#` only as
/// whole levels and `#` only last; if it starts with `$share/`, it is
/// `$share/{group}/{filter}` with a non-empty group without `+` or `#` and a
/// non-empty `filter` that obeys the same rules. A plain value that can live
/// anywhere; cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicFilter(ByteStr);

impl TopicFilter {
    /// Validates `s` as a topic filter.
    pub fn new(s: ByteStr) -> Result<Self, TopicError> {
        validate_topic_filter(&s)?;
        Ok(Self(s))
    }

    /// Validates a `'static` string as a topic filter, without copying it.
    pub fn from_static(s: &'static str) -> Result<Self, TopicError> {
        Self::new(ByteStr::from_static(s))
    }

    /// The whole filter as a string, including any `$share/{group}/` prefix.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying string.
    pub fn as_bytestr(&self) -> &ByteStr {
        &self.0
    }

    /// Consumes the filter, returning the underlying string.
    pub fn into_bytestr(self) -> ByteStr {
        self.0
    }

    /// Whether this is a shared subscription, `$share/{group}/{filter}`.
    pub fn is_shared(&self) -> bool {
        split_share(self.as_str()).is_some()
    }

    /// The share name of a shared subscription (`g` in `$share/g/a/b`).
    pub fn share_group(&self) -> Option<&str> {
        split_share(self.as_str()).map(|(group, _)| group)
    }

    /// The part matched against topic names: the whole filter, or for a
    /// shared subscription `$share/g/a/+/c` the `a/+/c` part.
    pub fn matching_filter(&self) -> &str {
        split_share(self.as_str()).map_or(self.as_str(), |(_, filter)| filter)
    }

    /// Whether the matching part contains a `+` or `#` wildcard.
    pub fn has_wildcards(&self) -> bool {
        memchr2(b'+', b'#', self.matching_filter().as_bytes()).is_some()
    }

    /// Whether this filter matches the topic name `topic`; see [`matches()`].
    pub fn matches(&self, topic: &str) -> bool {
        matches(self.matching_filter(), topic)
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        // `Hash` hashes the `str`, so that it agrees with `Borrow<str>`.
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }

        impl TryFrom<ByteStr> for $t {
            type Error = TopicError;
            fn try_from(s: ByteStr) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $t {
            type Error = TopicError;
            fn try_from(s: &str) -> Result<Self, TopicError> {
                Self::new(ByteStr::from(s))
            }
        }

        impl TryFrom<String> for $t {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, TopicError> {
                Self::new(ByteStr::from(s))
            }
        }

        impl From<$t> for ByteStr {
            fn from(t: $t) -> ByteStr {
                t.0
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:?})"), self.as_str())
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_newtype_impls!(TopicName);
string_newtype_impls!(TopicFilter);

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::try_from(s)
    }

    fn filter(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::try_from(s)
    }

    /// A straightforward reference implementation of [`matches()`].
    fn naive_matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A straightforward reference implementation of the filter rules.
    fn naive_validate_filter(s: &str) -> Result<(), TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(TopicError::TooLong);
        }
        let mut part = s;
        if let Some(rest) = s.strip_prefix("$share/") {
            let Some((group, f)) = rest.split_once('/') else {
                if rest.is_empty() || rest.contains(['+', '#']) {
                    return Err(TopicError::InvalidShareGroup);
                }
                if rest.contains('\0') {
                    return Err(TopicError::NulChar);
                }
                return Err(TopicError::EmptySharedFilter);
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(TopicError::InvalidShareGroup);
            }
            if group.contains('\0') {
                return Err(TopicError::NulChar);
            }
            if f.is_empty() {
                return Err(TopicError::EmptySharedFilter);
            }
            part = f;
        }
        let levels: Vec<&str> = part.split('/').collect();
        for (n, level) in levels.iter().enumerate() {
            // Report the first offending character, as the real validator does.
            for c in level.chars() {
                match c {
                    '\0' => return Err(TopicError::NulChar),
                    '+' if level.len() != 1 => return Err(TopicError::InvalidSingleLevelWildcard),
                    '#' if level.len() != 1 || n + 1 != levels.len() => {
                        return Err(TopicError::InvalidMultiLevelWildcard)
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    #[test]
    fn types_are_plain_send_sync_values() {
        fn plain<T: Send + Sync + Clone + 'static>() {}
        plain::<TopicName>();
        plain::<TopicFilter>();
        plain::<TopicError>();
    }

    #[test]
    fn names_reject_empty_nul_wildcards_and_overlong() {
        assert_eq!(name(""), Err(TopicError::Empty));
        assert_eq!(name("a/\0/b"), Err(TopicError::NulChar));
        assert_eq!(name("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(name("a/b#"), Err(TopicError::WildcardInName));
        assert_eq!(name("#"), Err(TopicError::WildcardInName));
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(name(&long), Err(TopicError::TooLong));
        assert!(name(&long[1..]).is_ok());
    }

    #[test]
    fn names_accept_spaces_slashes_and_dollar() {
        for ok in [
            "/",
            "//",
            "a",
            "/finance",
            "sport/tennis/player1",
            "$SYS/x",
            "a b/ü/€",
        ] {
            assert_eq!(name(ok).unwrap().as_str(), ok);
        }
        assert!(name("$SYS/monitor").unwrap().is_system());
        assert!(!name("SYS/$monitor").unwrap().is_system());
    }

    #[test]
    fn empty_name_is_only_by_constructor() {
        let e = TopicName::empty();
        assert!(e.is_empty());
        assert_eq!(e.as_str(), "");
        assert!(!e.is_system());
        assert!(!name("a").unwrap().is_empty());
    }

    #[test]
    fn name_accessors_and_traits() {
        let n = TopicName::from_static("sport/tennis").unwrap();
        assert_eq!(n.as_bytestr(), "sport/tennis");
        assert_eq!(n.len(), 12); // via Deref<Target = str>
        assert_eq!(format!("{n}"), "sport/tennis");
        assert_eq!(format!("{n:?}"), "TopicName(\"sport/tennis\")");
        assert_eq!(n.levels().collect::<Vec<_>>(), ["sport", "tennis"]);
        assert_eq!(n.clone().into_bytestr(), "sport/tennis");
        assert!(TopicName::from_static("a/+").is_err());
        // Borrow<str> agrees with Hash and Eq: look a name up by &str.
        let set: std::collections::HashSet<TopicName> = [n.clone()].into_iter().collect();
        assert!(set.contains("sport/tennis"));
        assert!(name("a").unwrap() < name("b").unwrap());
    }

    #[test]
    fn filters_multi_level_wildcard_rules() {
        for ok in [
            "#",
            "sport/#",
            "sport/tennis/#",
            "/#",
            "+/#",
            "sport/tennis/player1/#",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "##",
            "a/#b",
            "a/b#/c",
        ] {
            assert_eq!(
                filter(bad),
                Err(TopicError::InvalidMultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn filters_single_level_wildcard_rules() {
        for ok in [
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "+/",
            "a/+/+/b",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["sport+", "sport/+x", "a/x+/b", "++", "+#"] {
            assert_eq!(
                filter(bad),
                Err(TopicError::InvalidSingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn filters_reject_empty_nul_and_overlong() {
        assert_eq!(filter(""), Err(TopicError::Empty));
        assert_eq!(filter("a/\0"), Err(TopicError::NulChar));
        let long = "a/".repeat(MAX_LEN / 2) + "ab";
        assert_eq!(filter(&long), Err(TopicError::TooLong));
        assert!(filter(&long[2..]).is_ok());
    }

    #[test]
    fn shared_filters_parse() {
        let f = filter("$share/g1/a/+/c").unwrap();
        assert!(f.is_shared());
        assert_eq!(f.share_group(), Some("g1"));
        assert_eq!(f.matching_filter(), "a/+/c");
        assert!(f.has_wildcards());
        assert!(f.matches("a/b/c"));
        assert!(!f.matches("$share/g1/a/b/c"));
        assert_eq!(f.as_str(), "$share/g1/a/+/c");

        let f = filter("$share/consumer1/sport/tennis/+").unwrap();
        assert_eq!(f.share_group(), Some("consumer1"));
        assert_eq!(f.matching_filter(), "sport/tennis/+");

        let f = filter("$share/g/#").unwrap();
        assert_eq!(f.matching_filter(), "#");
        let f = filter("$share/g//").unwrap();
        assert_eq!(f.matching_filter(), "/");
        assert!(!f.has_wildcards());
        let f = filter("$share/g/$SYS/#").unwrap();
        assert_eq!(f.matching_filter(), "$SYS/#");
    }

    #[test]
    fn shared_filters_reject_bad_groups_and_empty_filters() {
        assert_eq!(filter("$share/"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share//a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share/g+/a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share/+/a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share/g#/a"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share/#"), Err(TopicError::InvalidShareGroup));
        assert_eq!(filter("$share/g\0/a"), Err(TopicError::NulChar));
        assert_eq!(filter("$share/group"), Err(TopicError::EmptySharedFilter));
        assert_eq!(filter("$share/group/"), Err(TopicError::EmptySharedFilter));
        // The wildcard rules apply to the filter part.
        assert_eq!(
            filter("$share/g/a#"),
            Err(TopicError::InvalidMultiLevelWildcard)
        );
        assert_eq!(
            filter("$share/g/a/#/b"),
            Err(TopicError::InvalidMultiLevelWildcard)
        );
        assert_eq!(
            filter("$share/g/a+"),
            Err(TopicError::InvalidSingleLevelWildcard)
        );
        assert_eq!(filter("$share/g/a\0"), Err(TopicError::NulChar));
    }

    #[test]
    fn only_the_share_prefix_makes_a_filter_shared() {
        for plain in [
            "$share",
            "$sharefoo/x",
            "$SHARE/g/x",
            "a/$share/g/x",
            "$shared/g/x",
        ] {
            let f = filter(plain).unwrap();
            assert!(!f.is_shared(), "{plain}");
            assert_eq!(f.share_group(), None);
            assert_eq!(f.matching_filter(), plain);
        }
        let f = filter("$share/+").unwrap_err();
        assert_eq!(f, TopicError::InvalidShareGroup);
    }

    #[test]
    fn filter_accessors_and_traits() {
        let f = TopicFilter::from_static("sport/+").unwrap();
        assert!(f.has_wildcards());
        assert!(!f.is_shared());
        assert!(!filter("sport/tennis").unwrap().has_wildcards());
        assert_eq!(format!("{f}"), "sport/+");
        assert_eq!(format!("{f:?}"), "TopicFilter(\"sport/+\")");
        assert_eq!(f, "sport/+");
        assert!(f.starts_with("sport")); // via Deref<Target = str>
        let b: ByteStr = f.clone().into();
        assert_eq!(b, "sport/+");
        let set: std::collections::HashSet<TopicFilter> = [f].into_iter().collect();
        assert!(set.contains("sport/+"));
        assert!(TopicFilter::from_static("sport+").is_err());
    }

    #[test]
    fn levels_split_on_every_slash() {
        assert_eq!(levels("a//b/").collect::<Vec<_>>(), ["a", "", "b", ""]);
        assert_eq!(levels("").collect::<Vec<_>>(), [""]);
        assert_eq!(levels("/").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(levels("abc").collect::<Vec<_>>(), ["abc"]);
        let mut it = levels("a");
        assert_eq!(it.next(), Some("a"));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    /// The examples of MQTT 5.0 §4.7.1 and §4.7.2 (the same as 3.1.1 §4.7).
    #[test]
    fn spec_examples() {
        // §4.7.1.2 multi-level wildcard.
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(matches("sport/#", "sport"));
        // §4.7.1.3 single-level wildcard.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/+", "/"));
        // §4.7.2 topics beginning with $.
        assert!(!matches("#", "$SYS"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/monitor/Clients"));
        // Topic names and filters are case sensitive; spaces are ordinary.
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(matches("Accounts payable", "Accounts payable"));
        // A leading / makes a distinct (empty) first level.
        assert!(!matches("/finance", "finance"));
        assert!(!matches("finance", "/finance"));
    }

    #[test]
    fn matches_edge_cases() {
        assert!(matches("#", "a"));
        assert!(matches("#", "/"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("+", "a"));
        assert!(matches("+", ""));
        assert!(!matches("+", "a/b"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/#", "ab"));
        assert!(!matches("a/#", "b"));
        assert!(!matches("a/b/#", "a"));
        assert!(matches("a/+/#", "a/b"));
        assert!(!matches("a/+/#", "a"));
        assert!(matches("a/+/#", "a/"));
        assert!(!matches("a/b", "a/bc"));
        assert!(!matches("a/bc", "a/b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b/", "a/b"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("$x/+", "$x/y"));
        assert!(matches("a/$x", "a/$x"));
        assert!(matches("+/$x", "a/$x"));
        assert!(matches("€/+", "€/ü"));
    }

    proptest! {
        #[test]
        fn constructors_never_panic(s in "\\PC{0,40}") {
            let _ = TopicName::try_from(s.as_str());
            if let Ok(f) = TopicFilter::try_from(s.as_str()) {
                let _ = (f.is_shared(), f.share_group(), f.matching_filter(), f.has_wildcards());
            }
        }

        #[test]
        fn filter_validation_agrees_with_naive(s in "(\\$share/|\\$share|[ab+#/\\x00$]){0,12}") {
            prop_assert_eq!(validate_topic_filter(&s), naive_validate_filter(&s));
        }

        #[test]
        fn name_validation(s in "[ab+#/\\x00$]{0,8}") {
            let expected = if s.is_empty() {
                Err(TopicError::Empty)
            } else {
                match s.find(['\0', '+', '#']) {
                    None => Ok(()),
                    Some(i) if s.as_bytes()[i] == 0 => Err(TopicError::NulChar),
                    Some(_) => Err(TopicError::WildcardInName),
                }
            };
            prop_assert_eq!(validate_topic_name(&s), expected);
        }

        #[test]
        fn matches_agrees_with_naive(
            f in "([ab+#/$]|ab){0,10}",
            t in "([ab/$]|ab){0,10}",
        ) {
            prop_assert_eq!(matches(&f, &t), naive_matches(&f, &t), "{} {}", f, t);
        }

        #[test]
        fn matches_never_panics(f in "\\PC{0,20}", t in "\\PC{0,20}") {
            let _ = matches(&f, &t);
        }
    }
}
