//! The ACL file: which topics anonymous clients, each user, each client id
//! and every client (patterns with `%u`/`%c`) may read and write (format in
//! the crate docs), consulted through [`Authorizer`].

use std::path::Path;

use ahash::AHashMap;
use vmqtt::broker::Authorizer;
use vmqtt::topic::{self, SHARE_PREFIX};

use crate::error::AclLineError;
use crate::{file, AuthError};

/// Publish and subscribe permissions loaded from an ACL file.
///
/// Immutable once loaded (the broker builds a new one on SIGHUP and swaps
/// it in); `Send + Sync`, shared by every shard. Rules are indexed by user
/// name and client id, and split by access, so a check hashes two names
/// and tries only the rules that could grant it; it does not allocate.
#[derive(Debug, Default)]
pub struct Acl {
    /// Rules before the first `user`/`client` line: clients without a
    /// verified user name.
    anonymous: Rules<Box<str>>,
    /// `user NAME` sections.
    users: AHashMap<Box<str>, Rules<Box<str>>>,
    /// `client ID` sections.
    clients: AHashMap<Box<str>, Rules<Box<str>>>,
    /// `pattern` lines, for every client.
    patterns: Rules<Pattern>,
}

/// Rules of one section, by what they grant.
#[derive(Debug)]
struct Rules<R> {
    /// Filters that may be subscribed to (covered).
    read: Vec<R>,
    /// Filters whose topics may be published to.
    write: Vec<R>,
}

impl<R> Default for Rules<R> {
    fn default() -> Self {
        Rules {
            read: Vec::new(),
            write: Vec::new(),
        }
    }
}

impl<R: Clone> Rules<R> {
    fn add(&mut self, access: Access, rule: R) {
        if access != Access::Write {
            self.read.push(rule.clone());
        }
        if access != Access::Read {
            self.write.push(rule);
        }
    }
}

/// The access word of a `topic` or `pattern` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A `pattern` rule: its filter split into levels, with `%u`/`%c` kept as
/// placeholders.
#[derive(Debug, Clone)]
struct Pattern {
    levels: Box<[PatternLevel]>,
    /// Has `%u` somewhere.
    user: bool,
    /// Has `%c` somewhere.
    client: bool,
    /// The placeholder the first level starts with, if any: its value must
    /// not start with `$`.
    leading: Option<Var>,
}

#[derive(Debug, Clone)]
enum PatternLevel {
    Plus,
    Hash,
    Lit(Box<str>),
    Template(Box<[Segment]>),
}

/// A part of a pattern level: text or a placeholder.
#[derive(Debug, Clone)]
enum Segment {
    Lit(Box<str>),
    Var(Var),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    /// `%u`
    User,
    /// `%c`
    Client,
}

/// The values for `%u` and `%c` of one check; `None` where the pattern
/// must not apply (anonymous, or a value that would change the filter's
/// structure).
#[derive(Debug, Clone, Copy, Default)]
struct Subs<'a> {
    user: Option<&'a str>,
    client: Option<&'a str>,
}

impl<'a> Subs<'a> {
    fn new(client_id: &'a str, username: Option<&'a str>) -> Self {
        // A value with `/`, `+` or `#` would add levels or wildcards; an
        // empty one would make `users/%u` the parent of every `users/x`.
        let usable =
            |v: &&str| !v.is_empty() && !v.bytes().any(|b| matches!(b, b'/' | b'+' | b'#'));
        Subs {
            user: username.filter(usable),
            client: Some(client_id).filter(usable),
        }
    }

    fn get(&self, var: Var) -> Option<&'a str> {
        match var {
            Var::User => self.user,
            Var::Client => self.client,
        }
    }
}

impl Pattern {
    fn parse(filter: &str) -> Result<Pattern, AclLineError> {
        let mut levels = Vec::new();
        // The filter with every placeholder replaced by `x`, to check it
        // against the topic filter rules.
        let mut plain = String::with_capacity(filter.len());
        let (mut user, mut client) = (false, false);
        for (i, level) in topic::levels(filter).enumerate() {
            if i > 0 {
                plain.push('/');
            }
            let parsed = match level {
                "+" => PatternLevel::Plus,
                "#" => PatternLevel::Hash,
                _ if !level.contains('%') => PatternLevel::Lit(level.into()),
                _ => PatternLevel::Template(parse_template(level)?.into()),
            };
            match &parsed {
                PatternLevel::Template(segments) => {
                    for segment in segments.iter() {
                        match segment {
                            Segment::Lit(s) => plain.push_str(s),
                            Segment::Var(var) => {
                                plain.push('x');
                                user |= *var == Var::User;
                                client |= *var == Var::Client;
                            }
                        }
                    }
                }
                _ => plain.push_str(level),
            }
            levels.push(parsed);
        }
        check_filter(&plain)?;
        let leading = match levels.first() {
            Some(PatternLevel::Template(segments)) => match segments.first() {
                Some(Segment::Var(var)) => Some(*var),
                _ => None,
            },
            _ => None,
        };
        Ok(Pattern {
            levels: levels.into(),
            user,
            client,
            leading,
        })
    }

    /// Whether the pattern applies to a client with these values.
    fn applies(&self, subs: Subs<'_>) -> bool {
        (!self.user || subs.user.is_some())
            && (!self.client || subs.client.is_some())
            && self
                .leading
                .is_none_or(|var| subs.get(var).is_some_and(|v| !v.starts_with('$')))
    }

    fn rule_levels(&self) -> impl Iterator<Item = Level<'_>> {
        self.levels.iter().map(|level| match level {
            PatternLevel::Plus => Level::Plus,
            PatternLevel::Hash => Level::Hash,
            PatternLevel::Lit(s) => Level::Lit(s),
            PatternLevel::Template(segments) => Level::Template(segments),
        })
    }

    fn wild_first(&self) -> bool {
        matches!(
            self.levels.first(),
            Some(PatternLevel::Plus | PatternLevel::Hash)
        )
    }

    fn matches(&self, topic: &str, subs: Subs<'_>) -> bool {
        self.applies(subs) && matches_topic(self.rule_levels(), self.wild_first(), topic, subs)
    }

    fn covers(&self, filter: &str, subs: Subs<'_>) -> bool {
        self.applies(subs) && covers_filter(self.rule_levels(), self.wild_first(), filter, subs)
    }
}

/// Splits a pattern level with `%` into text and placeholders.
fn parse_template(level: &str) -> Result<Vec<Segment>, AclLineError> {
    let mut segments = Vec::new();
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        if i > 0 {
            segments.push(Segment::Lit(rest[..i].into()));
        }
        let var = match rest.as_bytes().get(i + 1) {
            Some(b'u') => Var::User,
            Some(b'c') => Var::Client,
            _ => return Err(AclLineError::BadPlaceholder),
        };
        segments.push(Segment::Var(var));
        rest = &rest[i + 2..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Lit(rest.into()));
    }
    Ok(segments)
}

/// A level of a rule, plain or pattern, borrowed for one check.
#[derive(Debug, Clone, Copy)]
enum Level<'r> {
    Plus,
    Hash,
    Lit(&'r str),
    Template(&'r [Segment]),
}

impl Level<'_> {
    fn plain(level: &str) -> Level<'_> {
        match level {
            "+" => Level::Plus,
            "#" => Level::Hash,
            _ => Level::Lit(level),
        }
    }

    /// Whether this literal or template level is the text `text` (a level
    /// of a topic, or a literal level of a filter), substituting as it
    /// goes: no string is built.
    fn is_text(&self, text: &str, subs: Subs<'_>) -> bool {
        match self {
            Level::Lit(s) => *s == text,
            Level::Template(segments) => {
                let mut rest = text;
                for segment in segments.iter() {
                    let part = match segment {
                        Segment::Lit(s) => &**s,
                        Segment::Var(var) => match subs.get(*var) {
                            Some(v) => v,
                            None => return false,
                        },
                    };
                    match rest.strip_prefix(part) {
                        Some(r) => rest = r,
                        None => return false,
                    }
                }
                rest.is_empty()
            }
            Level::Plus | Level::Hash => false,
        }
    }
}

/// Whether a rule (as levels) matches the topic name `topic`, by MQTT's
/// rules. `wild_first`: the rule's first level is `+` or `#`, so it does not
/// match topics that start with `$`.
fn matches_topic<'r>(
    mut rule: impl Iterator<Item = Level<'r>>,
    wild_first: bool,
    topic: &str,
    subs: Subs<'_>,
) -> bool {
    if wild_first && topic.starts_with('$') {
        return false;
    }
    let mut topic = topic::levels(topic);
    loop {
        match (rule.next(), topic.next()) {
            // `#` matches any number of levels, none included: `a/#`
            // matches `a`.
            (Some(Level::Hash), _) => return true,
            (Some(Level::Plus), Some(_)) => {}
            (Some(level), Some(t)) => {
                if !level.is_text(t, subs) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a rule (as levels) covers the topic filter `filter`: matches
/// every topic name that the filter matches. `wild_first` as for
/// [`matches_topic`].
fn covers_filter<'r>(
    mut rule: impl Iterator<Item = Level<'r>>,
    wild_first: bool,
    filter: &str,
    subs: Subs<'_>,
) -> bool {
    // A filter whose first level is a literal starting with `$` matches
    // only such topics, which a rule starting with a wildcard does not.
    // (A filter starting with a wildcard does not match them either.)
    if wild_first && filter.starts_with('$') {
        return false;
    }
    // Whether the filter levels seen so far could be a whole topic name.
    // They cannot when there are none, or just one empty level (the empty
    // string is not a topic name): then a `#` that follows matches at
    // least one more level, as `+/#` does.
    let mut prefix_is_topic = false;
    let mut first = true;
    let mut filter = topic::levels(filter).map(Level::plain);
    loop {
        let level = filter.next();
        match (rule.next(), level) {
            (Some(Level::Hash), _) => return true,
            (Some(Level::Plus), Some(Level::Hash)) if !prefix_is_topic => {
                return matches!((rule.next(), rule.next()), (Some(Level::Hash), None))
            }
            // The filter matches any number of further levels, none
            // included; only `#` does that.
            (_, Some(Level::Hash)) => return false,
            (Some(Level::Plus), Some(_)) => {}
            (Some(_), Some(Level::Plus)) => return false,
            (Some(rule_level), Some(Level::Lit(f))) => {
                if !rule_level.is_text(f, subs) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        // After one level that is not empty, or after two levels.
        prefix_is_topic = !first || !matches!(level, Some(Level::Lit("")));
        first = false;
    }
}

/// Whether the plain filter `rule` covers `filter`; see [`covers_filter`].
fn plain_covers(rule: &str, filter: &str) -> bool {
    let wild_first = rule.starts_with(['+', '#']);
    covers_filter(
        topic::levels(rule).map(Level::plain),
        wild_first,
        filter,
        Subs::default(),
    )
}

/// The filter rules of a `topic` line (and of a pattern with its
/// placeholders filled in).
fn check_filter(filter: &str) -> Result<(), AclLineError> {
    if filter.starts_with(SHARE_PREFIX) {
        return Err(AclLineError::SharedFilter);
    }
    topic::validate_topic_filter(filter).map_err(AclLineError::InvalidFilter)
}

/// The first word of `s` and the rest, without the white space between.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// The access word (if any) and the filter of a `topic`/`pattern` line.
fn parse_access<'a>(
    rest: &'a str,
    keyword: &'static str,
) -> Result<(Access, &'a str), AclLineError> {
    if rest.is_empty() {
        return Err(AclLineError::MissingFilter(keyword));
    }
    let (word, after) = split_word(rest);
    let access = match word {
        "read" => Access::Read,
        "write" => Access::Write,
        "readwrite" => Access::ReadWrite,
        "deny" => return Err(AclLineError::Deny),
        // A word followed by more text is meant as an access word; a
        // filter that starts like that needs the access word first.
        _ if !after.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err(AclLineError::BadAccess(word.to_owned()))
        }
        _ => return Ok((Access::ReadWrite, rest)),
    };
    if after.is_empty() {
        return Err(AclLineError::MissingFilter(keyword));
    }
    Ok((access, after))
}

/// Which rules a `topic` line adds to.
enum Section<'t> {
    Anonymous,
    User(&'t str),
    Client(&'t str),
}

impl Acl {
    /// Reads and parses the ACL file at `path`.
    ///
    /// # Errors
    /// [`AuthError::Io`] if it cannot be read, [`AuthError::AclFile`] (with
    /// the file and line) if a line is invalid.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, AuthError> {
        let path = path.as_ref();
        let bytes = file::read(path, "read ACL file")?;
        let origin = path.display().to_string();
        let text = file::utf8(&bytes).map_err(|line| AuthError::AclFile {
            origin: origin.clone(),
            line,
            kind: AclLineError::NotUtf8,
        })?;
        Acl::parse(text, &origin)
    }

    /// Parses the text of an ACL file; `origin` (the file name) is quoted
    /// in errors.
    ///
    /// # Errors
    /// [`AuthError::AclFile`] for the first invalid line: an unknown
    /// keyword or access word, a missing or invalid filter, a `%` other
    /// than `%u`/`%c` in a pattern, a `user`/`client` line without a name.
    pub fn parse(text: &str, origin: &str) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut section = Section::Anonymous;
        for (line_no, line) in file::lines(text) {
            if file::is_blank_or_comment(line) {
                continue;
            }
            let err = |kind| AuthError::AclFile {
                origin: origin.to_owned(),
                line: line_no,
                kind,
            };
            let (keyword, rest) = split_word(line.trim_start());
            match keyword {
                "user" | "client" => {
                    if rest.is_empty() {
                        let keyword = if keyword == "user" { "user" } else { "client" };
                        return Err(err(AclLineError::MissingName(keyword)));
                    }
                    section = if keyword == "user" {
                        Section::User(rest)
                    } else {
                        Section::Client(rest)
                    };
                }
                "topic" => {
                    let (access, filter) = parse_access(rest, "topic").map_err(err)?;
                    check_filter(filter).map_err(err)?;
                    let rules = match section {
                        Section::Anonymous => &mut acl.anonymous,
                        Section::User(name) => acl.users.entry(name.into()).or_default(),
                        Section::Client(id) => acl.clients.entry(id.into()).or_default(),
                    };
                    rules.add(access, Box::from(filter));
                }
                "pattern" => {
                    let (access, filter) = parse_access(rest, "pattern").map_err(err)?;
                    let pattern = Pattern::parse(filter).map_err(err)?;
                    acl.patterns.add(access, pattern);
                }
                _ => return Err(err(AclLineError::UnknownKeyword(keyword.to_owned()))),
            }
        }
        Ok(acl)
    }

    /// The `topic` rules for this client: its user's (or the anonymous
    /// ones) and its client id's.
    fn sections(&self, client_id: &str, username: Option<&str>) -> [Option<&Rules<Box<str>>>; 2] {
        let user = match username {
            None => Some(&self.anonymous),
            Some(name) => self.users.get(name),
        };
        [user, self.clients.get(client_id)]
    }
}

impl Authorizer for Acl {
    fn allow_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.sections(client_id, username)
            .into_iter()
            .flatten()
            .any(|rules| rules.write.iter().any(|f| topic::matches(f, topic)))
            || (!self.patterns.write.is_empty() && {
                let subs = Subs::new(client_id, username);
                self.patterns.write.iter().any(|p| p.matches(topic, subs))
            })
    }

    fn allow_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.sections(client_id, username)
            .into_iter()
            .flatten()
            .any(|rules| rules.read.iter().any(|f| plain_covers(f, filter)))
            || (!self.patterns.read.is_empty() && {
                let subs = Subs::new(client_id, username);
                self.patterns.read.iter().any(|p| p.covers(filter, subs))
            })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text, "acl").expect("parses")
    }

    fn parse_err(text: &str) -> String {
        Acl::parse(text, "acl").expect_err("invalid").to_string()
    }

    fn plain_matches(rule: &str, topic: &str) -> bool {
        matches_topic(
            topic::levels(rule).map(Level::plain),
            rule.starts_with(['+', '#']),
            topic,
            Subs::default(),
        )
    }

    const BRIEF: &str = "\
# lines before any `user`/`client` line apply to anonymous clients
topic read public/#
user alice
topic readwrite alice/#
topic write cmd/+
client device-42
topic write devices/42/#
# `pattern` lines apply to every client, wherever they appear
pattern readwrite devices/%c/#
pattern read users/%u/inbox/#
";

    #[test]
    fn parse_errors_name_line_and_problem() {
        let cases = [
            ("topic read a\nbogus a/b\n", "acl:2: unknown keyword 'bogus' (expected topic, pattern, user or client)"),
            ("Topic a\n", "acl:1: unknown keyword 'Topic' (expected topic, pattern, user or client)"),
            (
                "\n\ntopic reed a/b\n",
                "acl:3: unknown access 'reed' (expected read, write or readwrite; for a filter \
                 that starts with a word and a space, write the access first)",
            ),
            ("topic deny a/#\n", "acl:1: 'deny' is not supported: whatever is not granted is denied"),
            ("# c\ntopic\n", "acl:2: missing topic filter after 'topic'"),
            ("topic read   \n", "acl:1: missing topic filter after 'topic'"),
            ("pattern write\n", "acl:1: missing topic filter after 'pattern'"),
            ("topic a/#/b\n", "acl:1: invalid topic filter: '#' must be a whole level and the last level of a topic filter"),
            ("topic read a+/b\n", "acl:1: invalid topic filter: '+' must be a whole level of a topic filter"),
            ("topic read a\0b\n", "acl:1: invalid topic filter: topic contains the null character U+0000"),
            (
                "topic read $share/g/a\n",
                "acl:1: a rule cannot name a shared subscription ($share/...): subscriptions are \
                 checked on their inner filter",
            ),
            (
                "pattern read a/%x/b\n",
                "acl:1: '%' in a pattern must be followed by 'u' (user name) or 'c' (client id)",
            ),
            (
                "pattern read a/%\n",
                "acl:1: '%' in a pattern must be followed by 'u' (user name) or 'c' (client id)",
            ),
            ("pattern read a/%u+\n", "acl:1: invalid topic filter: '+' must be a whole level of a topic filter"),
            ("pattern read a/#%c\n", "acl:1: invalid topic filter: '#' must be a whole level and the last level of a topic filter"),
            ("user\n", "acl:1: missing name after 'user'"),
            ("topic a\nclient   \n", "acl:2: missing name after 'client'"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_err(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let path = std::env::temp_dir().join(format!("vmqtt-auth-acl-{}", std::process::id()));
        std::fs::write(&path, b"topic a\ntopic read \xff\n").expect("write");
        let e = Acl::load(&path).expect_err("not utf8").to_string();
        assert_eq!(e, format!("{}:2: not valid UTF-8", path.display()));
        std::fs::write(&path, BRIEF).expect("write");
        let loaded = Acl::load(&path).expect("loads");
        assert!(loaded.allow_publish("device-42", None, "devices/42/x"));
        std::fs::remove_file(&path).expect("remove");
        let e = Acl::load(&path).expect_err("missing").to_string();
        assert!(e.starts_with("cannot read ACL file "), "{e}");
    }

    #[test]
    fn sections_apply_to_anonymous_users_and_client_ids() {
        let acl = acl(BRIEF);
        // Anonymous rules: anonymous clients only.
        assert!(acl.allow_subscribe("c1", None, "public/news"));
        assert!(acl.allow_subscribe("c1", None, "public/#"));
        assert!(!acl.allow_publish("c1", None, "public/news"));
        assert!(!acl.allow_subscribe("c1", Some("alice"), "public/news"));
        assert!(!acl.allow_subscribe("c1", Some("bob"), "public/news"));
        // User rules: that verified user only.
        assert!(acl.allow_publish("c1", Some("alice"), "alice/x/y"));
        assert!(acl.allow_publish("c1", Some("alice"), "alice"));
        assert!(acl.allow_subscribe("c1", Some("alice"), "alice/+/y"));
        assert!(acl.allow_publish("c1", Some("alice"), "cmd/reboot"));
        assert!(!acl.allow_publish("c1", Some("alice"), "cmd/reboot/now"));
        assert!(!acl.allow_subscribe("c1", Some("alice"), "cmd/reboot"));
        assert!(!acl.allow_publish("c1", Some("bob"), "alice/x"));
        assert!(!acl.allow_publish("alice", None, "alice/x"));
        // Client rules: that client id, whoever it is.
        assert!(acl.allow_publish("device-42", None, "devices/42/temp"));
        assert!(acl.allow_publish("device-42", Some("bob"), "devices/42/temp"));
        assert!(!acl.allow_subscribe("device-43", None, "devices/42/temp"));
        // Patterns: everyone, with their own values.
        assert!(acl.allow_subscribe("device-43", None, "devices/device-43/#"));
        assert!(acl.allow_publish("device-43", None, "devices/device-43/x"));
        assert!(!acl.allow_publish("device-43", None, "devices/device-44/x"));
        assert!(acl.allow_subscribe("c1", Some("bob"), "users/bob/inbox/#"));
        assert!(acl.allow_subscribe("c1", Some("bob"), "users/bob/inbox"));
        assert!(!acl.allow_subscribe("c1", Some("bob"), "users/bob/#"));
        assert!(!acl.allow_subscribe("c1", Some("bob"), "users/+/inbox/#"));
        assert!(!acl.allow_publish("c1", Some("bob"), "users/bob/inbox/x"));
        // Default deny.
        assert!(!acl.allow_publish("c1", Some("alice"), "other"));
        assert!(!acl.allow_subscribe("c1", None, "#"));
        assert!(!Acl::default().allow_publish("c1", None, "a"));
        // The broker shares one between its shards.
        let shared: std::sync::Arc<dyn Authorizer> = std::sync::Arc::new(acl);
        assert!(shared.allow_publish("c1", Some("alice"), "alice/x"));
    }

    #[test]
    fn sections_with_the_same_name_add_up_and_patterns_apply_anywhere() {
        let acl = acl(
            "user alice\ntopic read a\nuser bob\npattern write p/%u\ntopic read b\n\
             user alice\ntopic write c\n",
        );
        assert!(acl.allow_subscribe("x", Some("alice"), "a"));
        assert!(acl.allow_publish("x", Some("alice"), "c"));
        assert!(!acl.allow_subscribe("x", Some("alice"), "b"));
        assert!(acl.allow_subscribe("x", Some("bob"), "b"));
        assert!(acl.allow_publish("x", Some("alice"), "p/alice"));
        assert!(acl.allow_publish("x", Some("bob"), "p/bob"));
        assert!(!acl.allow_publish("x", None, "p/bob"));
    }

    #[test]
    fn filters_and_names_may_contain_spaces_and_percent() {
        let acl = acl("topic readwrite my room/#\ntopic write 100%/done\n\
             user Alice Smith\ntopic read a b\nclient  my client \ntopic write x y/z\n\
             pattern read  in box/%u/%c \n");
        assert!(acl.allow_publish("c", None, "my room/lamp"));
        assert!(acl.allow_publish("c", None, "100%/done"));
        assert!(acl.allow_subscribe("c", Some("Alice Smith"), "a b"));
        // Only the rest of the line, without the white space around it.
        assert!(acl.allow_publish("my client", None, "x y/z"));
        assert!(acl.allow_subscribe("c 1", Some("u 2"), "in box/u 2/c 1"));
        // Without an access word, one that looks like one is refused.
        assert!(Acl::parse("topic my room/#", "acl").is_err());
        // A single word is a filter.
        assert!(self::acl("topic lamp").allow_publish("c", None, "lamp"));
    }

    #[test]
    fn dollar_topics_are_granted_only_by_name() {
        let acl = acl("topic #\ntopic +/#\ntopic +/uptime\ntopic read $SYS/broker/#\n");
        assert!(acl.allow_publish("c", None, "a/b"));
        assert!(!acl.allow_publish("c", None, "$SYS/broker/uptime"));
        assert!(!acl.allow_publish("c", None, "$SYS/uptime"));
        assert!(!acl.allow_subscribe("c", None, "$SYS/uptime"));
        assert!(!acl.allow_subscribe("c", None, "$SYS/#"));
        assert!(acl.allow_subscribe("c", None, "$SYS/broker/#"));
        assert!(acl.allow_subscribe("c", None, "$SYS/broker/clients/+"));
        assert!(!acl.allow_publish("c", None, "$SYS/broker/x"));
        // `#` covers every filter that matches no `$` topic.
        assert!(acl.allow_subscribe("c", None, "#"));
        assert!(acl.allow_subscribe("c", None, "+/+"));
        assert!(acl.allow_subscribe("c", None, "a/$b/#"));
        let patterns = self::acl("pattern read #\npattern read %u/#\n");
        assert!(!patterns.allow_subscribe("c", Some("u"), "$SYS/#"));
        assert!(patterns.allow_subscribe("c", Some("u"), "#"));
    }

    #[test]
    fn covers_follows_mqtt_matching() {
        let yes = [
            ("a/#", "a/+/b"),
            ("a/#", "a/#"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "#"),
            ("#", "+/+/#"),
            ("+/#", "#"),
            ("#", "+/#"),
            ("+", "+"),
            ("+/b", "a/b"),
            ("a/+", "a/"),
            ("a", "a"),
            ("$SYS/#", "$SYS"),
            ("+/+", "/"),
            // `/#` matches no topic `` (that is not a topic name), so no
            // fewer than two levels.
            ("/+/#", "/#"),
            ("+/+/#", "/#"),
        ];
        let no = [
            ("a/+", "a/#"),
            ("a/+/#", "a/#"),
            ("a", "a/#"),
            ("a", "+"),
            ("+", "#"),
            ("+/+/#", "#"),
            ("a/b", "a"),
            ("a", "a/b"),
            ("#", "$SYS/#"),
            ("+/#", "$SYS"),
            ("$SYS/#", "#"),
            ("a/#", "b"),
            ("a/+/#", "a/#"),
            ("//+/#", "//#"),
            ("+/+/#", "+/#"),
        ];
        for (rule, filter) in yes {
            assert!(plain_covers(rule, filter), "{rule} covers {filter}");
        }
        for (rule, filter) in no {
            assert!(
                !plain_covers(rule, filter),
                "{rule} does not cover {filter}"
            );
        }
    }

    #[test]
    fn substituted_values_cannot_widen_rights() {
        let acl =
            acl("pattern readwrite devices/%c/#\npattern readwrite %u/#\npattern read u-%u/x\n");
        // Wildcards or levels in a value: the pattern does not apply.
        for id in ["#", "+", "a/b", "a/+", "a#", "", "x/#"] {
            assert!(!acl.allow_subscribe(id, None, "devices/#"), "{id:?}");
            assert!(!acl.allow_subscribe(id, None, "devices/+/#"), "{id:?}");
            assert!(!acl.allow_publish(id, None, "devices/a/b/c"), "{id:?}");
            assert!(
                !acl.allow_subscribe(id, None, &format!("devices/{id}")),
                "{id:?}"
            );
        }
        for user in ["#", "+", "a/b", ""] {
            assert!(!acl.allow_subscribe("c", Some(user), "#"), "{user:?}");
            assert!(
                !acl.allow_publish("c", Some(user), &format!("{user}/x")),
                "{user:?}"
            );
            assert!(!acl.allow_subscribe("c", Some(user), "u-+/x"), "{user:?}");
        }
        // A value starting with `$` cannot begin the topic...
        assert!(!acl.allow_subscribe("c", Some("$SYS"), "$SYS/#"));
        assert!(!acl.allow_publish("c", Some("$SYS"), "$SYS/broker/uptime"));
        // ...but may sit anywhere else.
        assert!(acl.allow_publish("$dev", None, "devices/$dev/x"));
        assert!(acl.allow_subscribe("c", Some("$u"), "u-$u/x"));
        // `%u` needs a user.
        assert!(!acl.allow_subscribe("c", None, "u-/x"));
        assert!(!acl.allow_publish("c", None, "%u/x"));
        // Text around a placeholder is matched exactly.
        assert!(acl.allow_subscribe("c", Some("bob"), "u-bob/x"));
        assert!(!acl.allow_subscribe("c", Some("bob"), "u-bobx/x"));
        assert!(!acl.allow_subscribe("c", Some("bo"), "u-bob/x"));
    }

    /// Rule and filter strings: up to three levels from a small alphabet,
    /// `+` among them, and maybe a final `#`.
    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", "", "+"]), 0..=3),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("a valid filter", |f| {
                topic::validate_topic_filter(f).is_ok()
            })
    }

    /// Every topic name of up to `max` levels over `alphabet` (which should
    /// have a level that no rule uses, standing for every other level).
    fn topics(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for depth in 0..max {
            let mut next = Vec::new();
            for prefix in &last {
                for level in alphabet {
                    next.push(if depth == 0 {
                        (*level).to_owned()
                    } else {
                        format!("{prefix}/{level}")
                    });
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all.retain(|t| topic::validate_topic_name(t).is_ok());
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `covers` agrees with brute force: a rule covers a filter exactly
        /// when it matches every topic the filter matches. Topics of up to
        /// four levels over the alphabet plus a fresh level `z` are enough
        /// to find a topic that tells them apart, if there is one.
        #[test]
        fn covers_agrees_with_brute_force(rule in filter_strategy(), filter in filter_strategy()) {
            let universe = topics(&["a", "b", "$s", "", "z"], 4);
            let expected = universe
                .iter()
                .all(|t| !topic::matches(&filter, t) || topic::matches(&rule, t));
            prop_assert_eq!(plain_covers(&rule, &filter), expected);
            for t in &universe {
                prop_assert_eq!(plain_matches(&rule, t), topic::matches(&rule, t), "{}", t);
            }
        }

        /// A pattern behaves as the plain rule with its values written in,
        /// when it applies, and grants nothing when it does not.
        #[test]
        fn patterns_match_as_if_substituted(
            levels in prop::collection::vec(
                prop::sample::select(vec!["a", "%u", "%c", "x%u", "%u-%c", "+", ""]), 1..=3),
            hash in any::<bool>(),
            user in prop::sample::select(vec![None, Some("a"), Some("b"), Some("$s"), Some(""), Some("a/b"), Some("+")]),
            client in prop::sample::select(vec!["a", "$s", "", "c/d", "#"]),
            filter in filter_strategy(),
        ) {
            let mut levels = levels;
            // `` alone is not a filter.
            if hash || levels == [""] {
                levels.push("#");
            }
            let text = levels.join("/");
            let pattern = Pattern::parse(&text).expect("valid pattern");
            let subs = Subs::new(client, user);
            let usable = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
            let uses_user = text.contains("%u");
            let uses_client = text.contains("%c");
            let leading = if text.starts_with("%u") {
                user.unwrap_or("")
            } else if text.starts_with("%c") {
                client
            } else {
                ""
            };
            let applies = (!uses_user || user.is_some_and(usable))
                && (!uses_client || usable(client))
                && !leading.starts_with('$');
            let plain = text.replace("%u", user.unwrap_or("")).replace("%c", client);
            let universe = topics(&["a", "b", "$s", "", "z", "xa", "a-a", "$s-a", "x$s"], 3);
            for t in &universe {
                let expected = applies && topic::matches(&plain, t);
                prop_assert_eq!(pattern.matches(t, subs), expected, "{} {}", plain, t);
            }
            let expected = applies && plain_covers(&plain, &filter);
            prop_assert_eq!(pattern.covers(&filter, subs), expected, "{} {}", plain, filter);
        }
    }
}
