//! The session registry's shape:
//! the client-id space cut into [`PARTITIONS`] partitions, the
//! [`PartitionMap`] that says which node (and shard) owns each, and the
//! [`Registry`] the owner of a partition keeps in memory — client id →
//! where its session lives. Sans-IO: the controller computes the map with
//! [`PartitionMap::assign`] and writes [`PartitionMap::to_value`] to etcd;
//! every node reads it back with [`PartitionMap::from_value`].

use std::collections::{BTreeMap, HashMap};

use super::NodeId;

/// Partitions of the client-id space, fixed for the life of a cluster.
pub const PARTITIONS: u16 = 1024;

/// One partition, `0..PARTITIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u16);

/// The partition of a client id: FNV-1a (64 bit) of its bytes modulo
/// [`PARTITIONS`] — the same on every node, build and platform (unlike the
/// process-seeded hashes of the maps).
pub fn partition_of(client_id: &str) -> Partition {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Partition((h % u64::from(PARTITIONS)) as u16)
}

/// Where a partition's registry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    /// The node.
    pub node: NodeId,
    /// Its shard that holds the partition.
    pub shard: u16,
}

/// Which node owns each partition; `revision` (etcd's revision of the key
/// the controller wrote) is the partition epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    /// The partition epoch.
    pub revision: u64,
    /// The owning node of partition `i`.
    nodes: Vec<NodeId>,
    /// Shards per owning node (the shard of a partition is
    /// `partition % shards`).
    shards: BTreeMap<NodeId, u16>,
}

impl PartitionMap {
    /// The owner of partition `p`.
    pub fn owner(&self, p: Partition) -> Owner {
        let node = self.nodes[usize::from(p.0) % self.nodes.len()];
        let shards = self.shards.get(&node).copied().unwrap_or(1).max(1);
        Owner {
            node,
            shard: p.0 % shards,
        }
    }

    /// Whether `other` assigns every partition as this map does (the
    /// revision aside).
    pub fn same_owners(&self, other: &PartitionMap) -> bool {
        self.nodes == other.nodes && self.shards == other.shards
    }

    /// Partitions owned by each node.
    pub fn per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for &id in &self.nodes {
            *out.entry(id).or_default() += 1;
        }
        out
    }

    /// Partitions owned by `node`.
    pub fn owned_by(&self, node: NodeId) -> usize {
        self.nodes.iter().filter(|&&n| n == node).count()
    }

    /// The map for `members` (node → its shards), moving as few partitions as possible from
    /// `previous`: a partition stays with its owner while that node is a
    /// member; partitions of nodes that left go to the members owning
    /// fewest; then partitions move from the most to the least loaded until
    /// no two nodes differ by more than one (a node that joins takes about
    /// `1/n` of them, all from the others; a fresh map gives each node one
    /// contiguous range). Deterministic: the same inputs
    /// give the same map on any node. `None` without members.
    pub fn assign(
        previous: Option<&PartitionMap>,
        members: &BTreeMap<NodeId, u16>,
    ) -> Option<PartitionMap> {
        let ids: Vec<NodeId> = members.keys().copied().collect();
        if ids.is_empty() {
            return None;
        }
        let n = usize::from(PARTITIONS);
        let mut nodes: Vec<Option<NodeId>> = match previous {
            Some(prev) if prev.nodes.len() == n => prev
                .nodes
                .iter()
                .map(|id| members.contains_key(id).then_some(*id))
                .collect(),
            _ => vec![None; n],
        };
        let mut load: BTreeMap<NodeId, usize> = ids.iter().map(|&id| (id, 0)).collect();
        for id in nodes.iter().flatten() {
            *load.entry(*id).or_default() += 1;
        }
        let least = |load: &BTreeMap<NodeId, usize>| {
            load.iter()
                .min_by_key(|(id, l)| (**l, **id))
                .map(|(id, _)| *id)
        };
        // Orphans go, in order, to the first node below its fair share
        // (so a fresh map is one contiguous run per node: a short value).
        let (base, extra) = (n / ids.len(), n % ids.len());
        let target = |i: usize| base + usize::from(i < extra);
        for slot in nodes.iter_mut().filter(|s| s.is_none()) {
            let id = ids
                .iter()
                .enumerate()
                .find(|(i, id)| load[id] < target(*i))
                .map(|(_, id)| *id)
                .or_else(|| least(&load));
            if let Some(id) = id {
                *slot = Some(id);
                *load.entry(id).or_default() += 1;
            }
        }
        // Even out: the most loaded gives its highest partition to the
        // least loaded until the spread is at most one.
        while let (Some(low), Some((&high, &hl))) = (
            least(&load),
            load.iter()
                .max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id))),
        ) {
            if hl <= load[&low] + 1 {
                break;
            }
            let Some(slot) = nodes.iter_mut().rev().find(|s| **s == Some(high)) else {
                break;
            };
            *slot = Some(low);
            *load.entry(high).or_default() -= 1;
            *load.entry(low).or_default() += 1;
        }
        Some(PartitionMap {
            revision: 0,
            nodes: nodes.into_iter().map(|s| s.unwrap_or(ids[0])).collect(),
            shards: members.iter().map(|(id, s)| (*id, (*s).max(1))).collect(),
        })
    }

    /// The partitions whose owner differs between `self` and `next` (they
    /// move: nodes re-register their sessions of these with the new owner).
    pub fn moved(&self, next: &PartitionMap) -> Vec<Partition> {
        (0..PARTITIONS)
            .map(Partition)
            .filter(|&p| self.owner(p) != next.owner(p))
            .collect()
    }

    /// The value the controller writes to etcd: `v1`, the shards of each
    /// owning node (`s=ID:SHARDS,...`), then the owners as runs
    /// (`o=ID*COUNT,...`), about a few hundred bytes.
    pub fn to_value(&self) -> String {
        let shards: Vec<String> = self
            .shards
            .iter()
            .map(|(id, s)| format!("{}:{s}", id.0))
            .collect();
        let mut runs: Vec<(NodeId, usize)> = Vec::new();
        for &id in &self.nodes {
            match runs.last_mut() {
                Some((last, c)) if *last == id => *c += 1,
                _ => runs.push((id, 1)),
            }
        }
        let runs: Vec<String> = runs.iter().map(|(id, c)| format!("{}*{c}", id.0)).collect();
        format!("v1 s={} o={}", shards.join(","), runs.join(","))
    }

    /// Parses [`PartitionMap::to_value`] read at etcd revision `revision`;
    /// `None` if it is not a whole, valid map.
    pub fn from_value(v: &str, revision: u64) -> Option<PartitionMap> {
        let mut words = v.split_ascii_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let shards_w = words.next()?.strip_prefix("s=")?;
        let owners_w = words.next()?.strip_prefix("o=")?;
        if words.next().is_some() {
            return None;
        }
        let mut shards = BTreeMap::new();
        for e in shards_w.split(',') {
            let (id, s) = e.split_once(':')?;
            shards.insert(NodeId(id.parse().ok()?), s.parse().ok()?);
        }
        let mut nodes = Vec::with_capacity(usize::from(PARTITIONS));
        for e in owners_w.split(',') {
            let (id, c) = e.split_once('*')?;
            let id = NodeId(id.parse().ok()?);
            let c: usize = c.parse().ok()?;
            if !shards.contains_key(&id) || nodes.len() + c > usize::from(PARTITIONS) {
                return None;
            }
            nodes.extend(std::iter::repeat_n(id, c));
        }
        (nodes.len() == usize::from(PARTITIONS)).then_some(PartitionMap {
            revision,
            nodes,
            shards,
        })
    }
}

/// Where a client's session lives, and which claim made it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The node with the session.
    pub node: NodeId,
    /// Its shard.
    pub shard: u16,
    /// The session epoch: the owner's count of claims of this client id;
    /// a higher one is a later CONNECT (0: registered from a node's disk,
    /// no claim known).
    pub epoch: u64,
}

/// What [`Registry::reregister`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reregistered {
    /// The registration stands.
    Accepted,
    /// It replaced this one (another node's, older): that node must drop
    /// its copy of the session.
    Replaced(Registration),
    /// A newer registration holds the client: the node must drop its copy.
    Refused(Registration),
}

/// What the owner of a partition keeps of its client ids (in memory, never
/// in etcd).
#[derive(Debug, Default)]
pub struct Registry {
    clients: HashMap<String, Registration>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A CONNECT of `client` on `node`/`shard`: the newest CONNECT wins
    /// (MQTT's takeover), so the claim is granted with the next epoch, and
    /// the registration it replaces (whose node must close that
    /// connection and hand the session over) comes back.
    pub fn claim(
        &mut self,
        client: &str,
        node: NodeId,
        shard: u16,
    ) -> (Registration, Option<Registration>) {
        let previous = self.clients.get(client).copied();
        let reg = Registration {
            node,
            shard,
            epoch: previous.map_or(1, |p| p.epoch + 1),
        };
        self.clients.insert(client.to_owned(), reg);
        (reg, previous)
    }

    /// A node tells the owner of a session it holds: after a partition
    /// moved, or when it starts with sessions from its disk. The node that
    /// the owner has on record keeps its registration (at the higher
    /// epoch: a restarted node knows no epochs); another node's is taken if
    /// it is newer, and the holder it replaces must drop its copy.
    pub fn reregister(&mut self, client: &str, reg: Registration) -> Reregistered {
        match self.clients.get(client).copied() {
            None => {
                self.clients.insert(client.to_owned(), reg);
                Reregistered::Accepted
            }
            Some(cur) if cur.node == reg.node => {
                let epoch = cur.epoch.max(reg.epoch);
                self.clients
                    .insert(client.to_owned(), Registration { epoch, ..reg });
                Reregistered::Accepted
            }
            Some(cur) if cur.epoch >= reg.epoch => Reregistered::Refused(cur),
            Some(cur) => {
                self.clients.insert(client.to_owned(), reg);
                Reregistered::Replaced(cur)
            }
        }
    }

    /// Forgets every registration of `node` (it left the cluster: its
    /// clients connecting elsewhere get fresh sessions; when it returns it
    /// registers what it still has). Returns how many.
    pub fn forget_node(&mut self, node: NodeId) -> usize {
        let before = self.clients.len();
        self.clients.retain(|_, r| r.node != node);
        before - self.clients.len()
    }

    /// The session of `client` on `node` ended (expired, or clean):
    /// forgotten unless another node's claim replaced it.
    pub fn release(&mut self, client: &str, node: NodeId) {
        if self.clients.get(client).is_some_and(|r| r.node == node) {
            self.clients.remove(client);
        }
    }

    /// Where `client`'s session lives, if registered.
    pub fn get(&self, client: &str) -> Option<Registration> {
        self.clients.get(client).copied()
    }

    /// Forgets the clients of partitions this owner no longer has (after a
    /// map change); returns how many.
    pub fn keep_only(&mut self, mut mine: impl FnMut(Partition) -> bool) -> usize {
        let before = self.clients.len();
        self.clients.retain(|c, _| mine(partition_of(c)));
        before - self.clients.len()
    }

    /// Sessions registered per node (for `cluster status`).
    pub fn per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for r in self.clients.values() {
            *out.entry(r.node).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests;
