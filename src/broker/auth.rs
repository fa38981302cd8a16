//! Who a connection is, and what it may do: the identity established before
//! its CONNECT reaches the core (password or client certificate, checked by
//! the I/O layer off the reactor), and the [`Authorizer`] the core asks
//! before it routes a PUBLISH or grants a subscription.

use std::fmt;

use crate::ByteStr;

/// The authenticated identity of a connection, given to
/// [`ShardCore::handle_open_as`](super::ShardCore).
///
/// Only a verified user name is kept: a user name in a CONNECT that nothing
/// checked (no password file, no client certificate) does not count, so
/// ACL rules for users cannot be claimed by naming someone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name verified against the password file, or taken from the
    /// client certificate; `None` for an anonymous client.
    pub username: Option<ByteStr>,
}

impl Identity {
    /// An anonymous connection.
    pub const ANONYMOUS: Identity = Identity { username: None };

    /// A connection authenticated as `username`.
    pub fn user(username: impl Into<ByteStr>) -> Self {
        Identity {
            username: Some(username.into()),
        }
    }
}

/// Publish and subscribe permissions (an ACL), consulted by the core.
///
/// Called on the shard's executor for every PUBLISH a client sends (and
/// will message at CONNECT) and every filter it subscribes to, so it must be
/// fast and must not block. `username` is the verified one of [`Identity`].
pub trait Authorizer: fmt::Debug + Send + Sync {
    /// May this client publish to the topic name `topic`?
    fn allow_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool;

    /// May this client subscribe to `filter`? For a shared subscription
    /// (`$share/group/f`) the core passes the inner filter `f`. A filter is
    /// allowed only when every topic it can match is readable.
    fn allow_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool;
}
