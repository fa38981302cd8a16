//! Who a connection is, and what it may do: the identity established before
//! its CONNECT reaches the core (password or client certificate, checked by
//! the I/O layer off the reactor), and the [`Authorizer`] the core asks
//! before it routes a PUBLISH or grants a subscription.

use std::fmt;

use crate::codec::ReasonCode;
use crate::ByteStr;

/// What the I/O layer established about a connection before its CONNECT
/// reaches the core (password checked off the reactor, client certificate,
/// anonymous policy), given to
/// [`ShardCore::handle_open_as`](super::ShardCore::handle_open_as).
///
/// Only a verified user name is kept: a user name in a CONNECT that nothing
/// checked (no password file, no client certificate) does not count, so
/// ACL rules for users cannot be claimed by naming someone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Identity {
    /// No verified user name (anonymous access is allowed for it).
    #[default]
    Anonymous,
    /// Authenticated as this user (password file or client certificate).
    User(ByteStr),
    /// Not let in: the core answers the CONNECT with a CONNACK of this
    /// reason (0x86 bad user name or password, 0x87 not authorized; MQTT 3:
    /// 0x04 / 0x05) and closes the connection.
    Refused(ReasonCode),
}

impl Identity {
    /// The verified user name, if any.
    pub fn username(&self) -> Option<&str> {
        match self {
            Identity::User(name) => Some(name.as_str()),
            _ => None,
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
