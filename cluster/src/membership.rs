//! Who is in the cluster: the snapshot the etcd thread hands to every
//! shard, and the value each node keeps under its lease in etcd.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::sync::Arc;

use vmqtt::broker::{Epoch, NodeId};

use vmqtt::broker::partition::PartitionMap;

/// A node as etcd has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its life (lease id).
    pub epoch: Epoch,
    /// Its peer address: shard `i` listens on the port + `i`.
    pub peer: SocketAddr,
    /// Its number of shards.
    pub shards: u16,
    /// Its MQTT address, for people (`cluster status`).
    pub mqtt: Option<SocketAddr>,
}

impl Member {
    /// The peer address of `shard` of this node.
    pub fn shard_addr(&self, shard: u16) -> SocketAddr {
        let mut a = self.peer;
        a.set_port(a.port().wrapping_add(shard));
        a
    }

    /// The shard of this node that a stream from `from_shard` of another
    /// node goes to: spread evenly, always the same.
    pub fn shard_for(&self, from_shard: u16) -> u16 {
        from_shard % self.shards.max(1)
    }

    /// The value under `/{cluster}/nodes/{id}`.
    pub fn to_value(&self) -> String {
        let mut v = format!(
            "v1 epoch={:x} peer={} shards={}",
            self.epoch.0, self.peer, self.shards
        );
        if let Some(m) = self.mqtt {
            v.push_str(&format!(" mqtt={m}"));
        }
        v
    }

    /// Parses [`Member::to_value`]; `None` for a value this version does
    /// not understand (a newer node's is skipped, not fatal).
    pub fn from_value(v: &str) -> Option<Member> {
        let mut words = v.split_ascii_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let (mut epoch, mut peer, mut shards, mut mqtt) = (None, None, None, None);
        for w in words {
            let (k, val) = w.split_once('=')?;
            match k {
                "epoch" => epoch = Some(Epoch(u64::from_str_radix(val, 16).ok()?)),
                "peer" => peer = Some(val.parse().ok()?),
                "shards" => shards = Some(val.parse().ok().filter(|&n: &u16| n > 0)?),
                "mqtt" => mqtt = Some(val.parse().ok()?),
                _ => {}
            }
        }
        Some(Member {
            epoch: epoch?,
            peer: peer?,
            shards: shards?,
            mqtt,
        })
    }
}

/// The cluster's members at one etcd revision, this node included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The etcd revision this snapshot is of.
    pub revision: i64,
    /// Every node whose lease is alive.
    pub nodes: BTreeMap<NodeId, Member>,
    /// `false` while etcd cannot be reached: the snapshot is the last known.
    pub etcd_up: bool,
    /// The node that keeps the partition map, if one is elected.
    pub controller: Option<NodeId>,
    /// The session registry's partition map, once the controller wrote one.
    pub partitions: Option<Arc<PartitionMap>>,
}

/// The controller's claim in etcd (`/{cluster}/controller`, under the
/// controller's lease): which node, in which life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controller {
    /// The node.
    pub node: NodeId,
    /// Its epoch (lease) when it was elected.
    pub epoch: Epoch,
}

impl Controller {
    /// The value under `/{cluster}/controller`.
    pub fn to_value(&self) -> String {
        format!("v1 node={} epoch={:x}", self.node.0, self.epoch.0)
    }

    /// Parses [`Controller::to_value`]; `None` for anything else.
    pub fn from_value(v: &str) -> Option<Controller> {
        let mut words = v.split_ascii_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let (mut node, mut epoch) = (None, None);
        for w in words {
            let (k, val) = w.split_once('=')?;
            match k {
                "node" => node = Some(NodeId(val.parse().ok()?)),
                "epoch" => epoch = Some(Epoch(u64::from_str_radix(val, 16).ok()?)),
                _ => {}
            }
        }
        Some(Controller {
            node: node?,
            epoch: epoch?,
        })
    }
}

impl Membership {
    /// The key prefix of the nodes of cluster `name`.
    pub fn prefix(name: &str) -> String {
        format!("/{name}/nodes/")
    }

    /// The prefix of every key of cluster `name` (what a node watches).
    pub fn cluster_prefix(name: &str) -> String {
        format!("/{name}/")
    }

    /// The prefix of the nodes' load reports (sessions, connections).
    pub fn load_prefix(name: &str) -> String {
        format!("/{name}/load/")
    }

    /// The key of cluster `name`'s controller.
    pub fn controller_key(name: &str) -> String {
        format!("/{name}/controller")
    }

    /// The key of cluster `name`'s partition map.
    pub fn partitions_key(name: &str) -> String {
        format!("/{name}/partitions")
    }

    /// The key of node `id` of cluster `name`.
    pub fn key(name: &str, id: NodeId) -> String {
        format!("/{name}/nodes/{}", id.0)
    }

    /// The node id of a key under [`Membership::prefix`].
    pub fn node_of_key(prefix: &str, key: &str) -> Option<NodeId> {
        key.strip_prefix(prefix)?.parse().ok().map(NodeId)
    }

    /// Each member's shards (what [`PartitionMap::assign`] takes).
    pub fn shards(&self) -> BTreeMap<NodeId, u16> {
        self.nodes.iter().map(|(id, m)| (*id, m.shards)).collect()
    }

    /// The epoch of `node`, if it is a member.
    pub fn epoch_of(&self, node: NodeId) -> Option<Epoch> {
        self.nodes.get(&node).map(|m| m.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_values_round_trip_and_bad_ones_are_skipped() {
        let m = Member {
            epoch: Epoch(0x694d_8a1c_22f0_11ab),
            peer: "127.0.0.2:1884".parse().unwrap(),
            shards: 4,
            mqtt: Some("127.0.0.2:1883".parse().unwrap()),
        };
        assert_eq!(Member::from_value(&m.to_value()), Some(m.clone()));
        assert_eq!(m.shard_addr(3).to_string(), "127.0.0.2:1887");
        assert_eq!(m.shard_for(6), 2);
        for bad in [
            "",
            "v2 epoch=1",
            "v1 epoch=zz peer=1.2.3.4:5 shards=1",
            "v1 peer=1.2.3.4:5 shards=1",
            "v1 epoch=1 peer=x shards=1",
            "v1 epoch=1 peer=1.2.3.4:5 shards=0",
        ] {
            assert_eq!(Member::from_value(bad), None, "{bad}");
        }
        assert_eq!(
            Membership::node_of_key("/c/nodes/", "/c/nodes/12"),
            Some(NodeId(12))
        );
        assert_eq!(Membership::node_of_key("/c/nodes/", "/c/nodes/x"), None);
    }

    #[test]
    fn controller_values_round_trip_and_bad_ones_are_refused() {
        let c = Controller {
            node: NodeId(7),
            epoch: Epoch(0x694d_8a1c_22f0_11ab),
        };
        assert_eq!(c.to_value(), "v1 node=7 epoch=694d8a1c22f011ab");
        assert_eq!(Controller::from_value(&c.to_value()), Some(c));
        for bad in [
            "",
            "v2 node=1 epoch=1",
            "v1 node=x epoch=1",
            "v1 epoch=1",
            "v1 node=1",
        ] {
            assert_eq!(Controller::from_value(bad), None, "{bad}");
        }
    }
}
