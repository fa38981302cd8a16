//! The protocol of a vmqtt cluster, sans-IO like the core: the links' wire
//! format ([`frame`]), their authenticated handshake ([`handshake`]), the
//! sequencing, resend and acknowledgement of batches ([`link`]), and the
//! membership snapshot etcd's thread hands to the shards
//! ([`membership`]). The session registry's partitions are the core's
//! ([`vmqtt::broker::partition`]), re-exported here. Time is passed in; nothing here reads a clock or does
//! I/O, so `tests/sim.rs` runs links over a simulated lossy network.

pub mod frame;
pub mod handshake;
pub mod link;
pub mod membership;

pub use frame::{Frame, FrameError, Hello, Item, Seq, PROTOCOL_VERSION};
pub use handshake::{nonce, AcceptStep, Acceptor, DialStep, Dialer, LinkSecret, Refused};
pub use link::{Accept, Gap, Inbound, OutItem, OutStats, Outbound};
pub use membership::{Controller, Member, Membership};
pub use vmqtt::broker::partition::{
    partition_of, Owner, Partition, PartitionMap, Registration, Registry, Reregistered, PARTITIONS,
};
pub use vmqtt::broker::{Epoch, NodeId};
