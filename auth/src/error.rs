//! The errors of this crate. None of them quotes a password or a hash.

use std::io;
use std::path::PathBuf;

use vmqtt::topic::TopicError;

/// Why a password file or ACL file could not be loaded or written, or why
/// `passwd` refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read password file", "write", ...
        action: &'static str,
        /// The file (or directory).
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },

    /// A line of a password file is invalid.
    #[error("{origin}:{line}: {kind}")]
    PasswordFile {
        /// Where the text came from (the file name).
        origin: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        kind: PasswordLineError,
    },

    /// A line of an ACL file is invalid.
    #[error("{origin}:{line}: {kind}")]
    AclFile {
        /// Where the text came from (the file name).
        origin: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        kind: AclLineError,
    },

    /// A user name given to `passwd` cannot be stored in a password file.
    #[error("invalid user name: {0}")]
    InvalidUser(UserNameError),

    /// `passwd` was given an empty password.
    #[error("the password is empty")]
    EmptyPassword,

    /// `passwd` was given a password longer than MQTT allows.
    #[error("the password is longer than 65535 bytes")]
    PasswordTooLong,

    /// The password could not be read from the terminal or standard input.
    #[error("cannot read the password: {0}")]
    ReadPassword(io::Error),

    /// The password typed the second time differs from the first.
    #[error("the passwords do not match")]
    PasswordMismatch,

    /// `passwd --delete` named a user the file does not have.
    #[error("no user {user:?} in {}", path.display())]
    NoSuchUser {
        /// The password file.
        path: PathBuf,
        /// The user name.
        user: String,
    },

    /// Hashing failed (the OS random number generator failed).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// What is wrong with a user name (in a password file, or given to
/// `passwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    /// The name is empty.
    #[error("empty user name")]
    Empty,
    /// The name is longer than an MQTT string can be.
    #[error("user name is longer than 65535 bytes")]
    TooLong,
    /// The name contains `:`, which separates it from the hash.
    #[error("user name contains ':'")]
    Colon,
    /// The name contains a control character (such as a tab or newline).
    #[error("user name contains a control character")]
    ControlChar,
    /// The name starts or ends with white space, which a line cannot keep
    /// unambiguously.
    #[error("user name starts or ends with white space")]
    Whitespace,
    /// The name starts with `#`, which makes its line a comment.
    #[error("user name starts with '#'")]
    Hash,
}

/// What is wrong with a line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordLineError {
    /// The file is not UTF-8 at this line.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The line has no `:` between user name and hash.
    #[error("expected 'user:hash', found no ':'")]
    NoColon,
    /// The user name is not allowed.
    #[error("{0}")]
    User(UserNameError),
    /// The user already appeared on an earlier line.
    #[error("duplicate user {user:?} (first on line {first})")]
    Duplicate {
        /// The user name.
        user: String,
        /// The line where it first appeared.
        first: usize,
    },
    /// Nothing follows the `:`.
    #[error("missing password hash after ':'")]
    EmptyHash,
    /// The hash is not a PHC string (`$id$v=..$params$salt$hash`).
    #[error("password hash is not a valid PHC string: {0}")]
    NotPhc(String),
    /// The hash is a PHC string of another algorithm.
    #[error("unsupported password hash algorithm '{0}' (expected argon2id)")]
    Algorithm(String),
    /// The hash is an Argon2 PHC string with invalid parameters, version,
    /// salt or output.
    #[error("invalid argon2 password hash: {0}")]
    Argon2(String),
}

/// What is wrong with a line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclLineError {
    /// The file is not UTF-8 at this line.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The line starts with a word that is not a keyword.
    #[error("unknown keyword '{0}' (expected topic, pattern, user or client)")]
    UnknownKeyword(String),
    /// The word after `topic`/`pattern` is not an access word.
    #[error(
        "unknown access '{0}' (expected read, write or readwrite; for a filter that starts \
         with a word and a space, write the access first)"
    )]
    BadAccess(String),
    /// `deny` rules (Mosquitto) do not exist here.
    #[error("'deny' is not supported: whatever is not granted is denied")]
    Deny,
    /// `topic` or `pattern` has no filter.
    #[error("missing topic filter after '{0}'")]
    MissingFilter(&'static str),
    /// The filter breaks the MQTT topic filter rules.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
    /// The filter is a shared subscription.
    #[error("a rule cannot name a shared subscription ($share/...): subscriptions are checked on their inner filter")]
    SharedFilter,
    /// A `%` in a pattern is not `%u` or `%c`.
    #[error("'%' in a pattern must be followed by 'u' (user name) or 'c' (client id)")]
    BadPlaceholder,
    /// `user` or `client` has no name.
    #[error("missing name after '{0}'")]
    MissingName(&'static str),
}
