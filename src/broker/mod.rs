//! The sans-IO broker: everything one shard decides, with no sockets, no
//! clock reads and no runtime.
//!
//! A [`ShardCore`] owns the sessions whose home is its shard, their
//! subscriptions (a [`crate::trie::SubscriptionTrie`]), a copy of the route
//! table (filter → shards with subscribers) and a replica of the retained
//! messages. The I/O layer (`vmqtt-shard`) feeds it bytes, closed sockets,
//! messages from other shards and the time; it hands back bytes to write,
//! sockets to close, batches of [`ShardMsg`] for other shards and its next
//! deadline.
//!
//! Inputs are `handle_*(now, …)`, outputs are `poll_*()` / `take_*()`.

mod alias;
pub mod auth;
mod budget;
mod message;
mod node;
pub mod partition;
pub mod persist;
mod retain;
mod session;
mod shard;

use std::fmt;

pub use auth::{Authorizer, Identity};
pub use budget::QueueBudget;
pub use message::{Limit, Message, MessageUid, ShardMsg, ShardStats};
pub use node::{Epoch, NodeId};
pub use retain::{RetainVersion, RetainedStore, TOMBSTONE_KEEP_MS};
pub use session::{Session, Subscription};
pub use shard::{
    glob_match, shrink_if_sparse, AcrossNodes, CloseReason, ClusterOut, ClusterStatus, CoreConfig,
    Forward, GroupInfo, GroupMsg, IoEvent, MemberState, SessionMsg, SessionTransfer, ShardCore,
    SharedConfig, Strategy, TransferEntry, CLAIM_RETRY, CLAIM_TIMEOUT, LIMITED_LOG_INTERVAL,
    MOVE_GRACE, REGISTER_RETRY,
};

/// Index of a shard (one per core), `0..shards`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(u16);

impl ShardId {
    /// Shard `n`.
    pub const fn new(n: u16) -> Self {
        Self(n)
    }

    /// The index as `usize`.
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A connection, unique within its shard for the life of the process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

/// The home shard of a client identifier: where its session lives.
///
/// A pure, stable function (64-bit FNV-1a of the identifier's bytes, modulo
/// the shard count), so every core computes the same answer and a reconnect
/// or a duplicate client id meets the same session.
pub fn home_shard(client_id: &str, shards: usize) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in client_id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let shards = shards.clamp(1, usize::from(u16::MAX)) as u64;
    ShardId((h % shards) as u16)
}

/// Where the accepting core should send a new connection, decided from the
/// bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRoute {
    /// More bytes are needed to see the whole CONNECT.
    NeedMore,
    /// Hand the connection (and every byte read so far) to this shard.
    Shard(ShardId),
    /// Serve it on the accepting shard: the CONNECT is invalid (the local
    /// core answers it) or carries an empty client id (the local core
    /// assigns one that lives here).
    Local,
}

/// Looks at the first bytes of a new connection and decides its home shard.
///
/// Decodes nothing but the CONNECT frame, once; the home shard decodes it
/// again from the same bytes.
pub fn route_connect(buf: &[u8], shards: usize, max_packet_size: u32) -> ConnectRoute {
    use crate::codec::{check, decode_body, Packet, PacketType, ProtocolVersion};
    match check(buf, max_packet_size) {
        Ok(None) => ConnectRoute::NeedMore,
        Ok(Some(h)) if h.packet_type == PacketType::Connect => {
            let body = bytes::Bytes::copy_from_slice(&buf[h.header_len..h.frame_len()]);
            match decode_body(h, body, ProtocolVersion::V5) {
                Ok(Packet::Connect(c)) if !c.client_id.is_empty() => {
                    ConnectRoute::Shard(home_shard(&c.client_id, shards))
                }
                _ => ConnectRoute::Local,
            }
        }
        _ => ConnectRoute::Local,
    }
}

/// The credentials of a complete CONNECT at the start of `buf`, for the I/O
/// layer to check before the core sees it: `None` if `buf` does not start
/// with a whole, valid CONNECT (the core then answers it as it would
/// anyway).
pub fn connect_credentials(buf: &[u8], max_packet_size: u32) -> Option<Credentials> {
    use crate::codec::{check, decode_body, Packet, PacketType, ProtocolVersion};
    let h = check(buf, max_packet_size).ok()??;
    if h.packet_type != PacketType::Connect {
        return None;
    }
    let body = bytes::Bytes::copy_from_slice(&buf[h.header_len..h.frame_len()]);
    match decode_body(h, body, ProtocolVersion::V5) {
        Ok(Packet::Connect(c)) => Some(Credentials {
            username: c.username,
            password: c.password,
        }),
        _ => None,
    }
}

/// The user name and password of a CONNECT.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The user name, if the CONNECT has one.
    pub username: Option<crate::ByteStr>,
    /// The password, if the CONNECT has one.
    pub password: Option<bytes::Bytes>,
}

impl fmt::Debug for Credentials {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

#[cfg(test)]
mod tests;
