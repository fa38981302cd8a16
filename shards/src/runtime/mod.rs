//! One shard's executor: listeners, connection tasks, the channel mesh to the
//! other shards and the timer, all around a [`ShardCore`] that makes every
//! MQTT decision. This layer only moves bytes, timers and messages.
//!
//! Everything here is shard-local (`Rc`, `RefCell`) except [`MeshMsg`],
//! which is what crosses cores. By concern:
//!
//! - `shard.rs`: a shard's state ([`Shard`]), its task queues, acting on
//!   what the core produced ([`Shard::after`]), the run loop ([`run`]), the
//!   timer task and shutdown.
//! - `listener.rs`: binding and accepting, a new connection's first bytes
//!   (TLS handshake, CONNECT, credentials) and the handoff to its home shard.
//! - `conn.rs`: a served connection's reader and writer tasks and its reads.
//! - `mesh.rs`: the channel mesh between shards (batches and handoffs).
//! - `control.rs`: the main thread's messages to the shards (reload, stop,
//!   the cluster's membership) and their acknowledgements.
//! - `links.rs`: the node links of a cluster (`[cluster]`): streams to
//!   peer nodes and from them.
//!
//! The storage task is beside the rest of storage, in `store/writer.rs`.
//!
//! [`ShardCore`]: vmqtt::broker::ShardCore

mod conn;
mod control;
mod links;
mod listener;
mod mesh;
mod shard;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};

use bytes::BytesMut;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use vmqtt::broker::{CoreConfig, Identity, ShardMsg};
use vmqtt_storage::RocksStorage;

use crate::gate::{Budget, BudgetSlot, Gate};
use crate::http::Metrics;

pub use control::{Control, ControlReceiver, Controller};
pub use links::{shard_listen, ClusterSpec};
pub use shard::run;
pub(crate) use shard::Shard;

/// What crosses cores over the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// Start-up: tells the receiver which shard index this mesh peer is.
    Hello(usize),
    /// A batch of MQTT work for the receiving shard.
    Batch(Vec<ShardMsg>),
    /// Another node's routes, received by one shard's link, for every
    /// other shard's core.
    NodeRoutes {
        /// The node.
        node: vmqtt::broker::NodeId,
        /// All its routes (replacing what was known), or only changes.
        snapshot: Option<Vec<vmqtt::topic::TopicFilter>>,
        /// Routes it gained.
        add: Vec<vmqtt::topic::TopicFilter>,
        /// Routes it lost.
        remove: Vec<vmqtt::topic::TopicFilter>,
    },
    /// A connection whose CONNECT names a client id homed on the receiver,
    /// with every byte read from it so far.
    Handoff(Handoff),
}

/// A socket moving to its home shard. `Send`: an owned descriptor, the
/// bytes read (decrypted) so far, the TLS session if any, and what the
/// accepting shard established about the client.
#[derive(Debug)]
pub struct Handoff {
    fd: OwnedFd,
    buf: BytesMut,
    tls: Option<Box<rustls::ServerConnection>>,
    identity: Identity,
    budget: BudgetSlot,
}

/// What a shard needs to serve its TLS listeners.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Addresses to accept MQTT over TLS on.
    pub listen: Vec<SocketAddr>,
    /// Certificates and client verification.
    pub config: Arc<rustls::ServerConfig>,
    /// The client certificate's Common Name is the user name.
    pub identity_as_username: bool,
}

/// What one shard needs to start.
#[derive(Debug)]
pub struct ShardSpec {
    /// This shard's index.
    pub index: usize,
    /// Number of shards.
    pub shards: usize,
    /// Addresses to listen on (one SO_REUSEPORT socket per shard each).
    pub listen: Vec<SocketAddr>,
    /// MQTT settings of this shard.
    pub core: CoreConfig,
    /// The channel mesh shared by all shards.
    pub mesh: MeshBuilder<MeshMsg, Full>,
    /// Messages from the main thread: reloads and the stop.
    pub control: ControlReceiver,
    /// Start-up result, sent once listeners are bound.
    pub ready: mpsc::Sender<Result<usize, String>>,
    /// Counters published for the HTTP endpoint.
    pub metrics: Arc<Metrics>,
    /// The HTTP endpoint's address, for the one shard that serves it.
    pub http: Option<SocketAddr>,
    /// Durable storage, unless `durability = "off"` for this shard.
    pub storage: Option<ShardStorage>,
    /// CPU shares of the task queues (`[tasks]`).
    pub tasks: vmqtt_config::TasksConfig,
    /// TLS listeners, if any.
    pub tls: Option<TlsSpec>,
    /// Authentication settings, shared by every shard.
    pub gate: Arc<Gate>,
    /// The process's connection budget, shared by every shard.
    pub budget: Arc<Budget>,
    /// This node's cluster, if it is in one.
    pub cluster: Option<ClusterSpec>,
}

/// A shard's durable storage and what was recovered from it.
pub struct ShardStorage {
    /// The node's database (a handle; each shard writes its own column
    /// family).
    pub db: RocksStorage,
    /// `durability = "fsync"`: every batch is synced before it counts as
    /// written.
    pub sync: bool,
    /// This shard's state at start.
    pub restored: vmqtt::broker::persist::Restored,
}

impl std::fmt::Debug for ShardStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStorage")
            .field("sync", &self.sync)
            .field("sessions", &self.restored.sessions.len())
            .finish_non_exhaustive()
    }
}
