//! Authentication and authorization for vmqtt: the password file and the
//! ACL file. Plain blocking library code with no runtime: the broker loads
//! the files at start and on SIGHUP, calls [`Passwords::verify`] on a
//! blocking thread (it is slow by design) and consults an [`Acl`] through
//! [`vmqtt::broker::Authorizer`] on the shard's executor (it is cheap).
//!
//! # The password file
//!
//! Named by `auth.password_file`, written with
//! `vmqtt-shard passwd FILE USER [--delete]` (see [`passwd`]). One user per
//! line:
//!
//! ```text
//! # comments and blank lines are allowed
//! alice:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! bob:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! ```
//!
//! - A line is `user:hash`, split at the first `:`. A line whose first
//!   non-blank character is `#` is a comment; comments are whole lines.
//!   Trailing white space (and a `\r`) is ignored.
//! - The user name is taken as written: non-empty, at most 65535 bytes, no
//!   `:`, no control characters, and it neither starts nor ends with white
//!   space nor starts with `#`. A user appears at most once.
//! - The hash is a PHC string of Argon2 (`$argon2id$…`; `argon2i` and
//!   `argon2d` are accepted too) with its salt and output. vmqtt writes
//!   argon2id with m=19456 KiB, t=2, p=1 (the OWASP recommendation) and a
//!   16-byte random salt.
//! - Errors name the file and the line and never quote a hash.
//!
//! # The ACL file
//!
//! Named by `auth.acl_file`. Once an ACL is configured, everything it does
//! not grant is denied.
//!
//! ```text
//! # Lines before any `user` or `client` line apply to anonymous clients.
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic write cmd/+
//!
//! client device-42
//! topic write devices/42/#
//!
//! # `pattern` lines apply to every client, wherever they appear:
//! # %u is the user name, %c the client id.
//! pattern readwrite devices/%c/#
//! pattern read users/%u/inbox/#
//!
//! # Topics starting with `$` are not matched by `#` or `+`: grant them
//! # by name.
//! topic read $SYS/#
//! ```
//!
//! - `topic [ACCESS] FILTER` grants ACCESS on FILTER to the current section:
//!   anonymous clients (before the first `user`/`client` line), the user of
//!   the last `user NAME` line, or the client id of the last
//!   `client ID` line. Sections with the same name add up.
//! - `pattern [ACCESS] FILTER` grants ACCESS to every client, with `%u`
//!   replaced by its user name and `%c` by its client id (anywhere in a
//!   level: `devices/%c`, `inbox-%u`). A `%` followed by anything else is
//!   an error. A pattern with `%u` never applies to an anonymous client.
//!   It does not apply either when a substituted value is empty or contains
//!   `+`, `#` or `/`, or when a value starting with `$` would begin the
//!   topic: a client cannot widen its own rights by choosing its id.
//! - ACCESS is `read` (subscribe), `write` (publish) or `readwrite`; left
//!   out, it is `readwrite`. FILTER is the rest of the line and may contain
//!   spaces; when it starts with a word and a space (`topic my room/#`),
//!   write the access word first (`topic readwrite my room/#`), otherwise
//!   the word is read as an access word and refused. FILTER follows the
//!   MQTT topic filter rules (`+` and `#` as whole levels, `#` last) and
//!   cannot be a shared subscription (`$share/…`: a subscription is checked
//!   on its inner filter). In `topic` lines `%` is an ordinary character.
//! - `user NAME` and `client ID` take the rest of the line as the name.
//!   User rules apply to the verified user name (password file or client
//!   certificate), client rules to the client id, which the client chooses:
//!   give client ids rights only where the clients that can connect are
//!   trusted to name themselves.
//! - A PUBLISH is allowed when some `write` rule matches its topic. A
//!   subscription is allowed when some `read` rule covers its filter: every
//!   topic the filter can match is matched by the rule (`a/#` covers
//!   `a/+/b`, `a/#` and `a`; `a/+` does not cover `a/#`).
//! - Matching follows MQTT: a rule whose first level is `+` or `#` does not
//!   match topics that start with `$`, so `$SYS/#` must be granted by name.
//! - `#` starts a comment only at the beginning of a line (`#` in a filter
//!   is the wildcard). Errors name the file and the line.

mod acl;
mod error;
mod file;
mod passwords;

pub use acl::Acl;
pub use error::{AclLineError, AuthError, PasswordLineError, UserNameError};
pub use passwords::{
    delete_user, hash_password, passwd, set_password, validate_username, PasswordInput, Passwords,
};
