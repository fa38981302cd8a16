//! Registration: the sessions a node holds, registered with the owners of
//! their partitions (when the map changes, when the node begins a new
//! life, when a session kept here must register again), their release,
//! and which nodes this node found gone. The owner's side (its
//! `Registry`) answers in `takeover.rs`.

use super::takeover::REGISTER_RETRY;
use super::*;
use crate::broker::partition::{partition_of, PartitionMap};

impl ShardCore {
    /// The epoch granted to `client`'s session here, as this node knows it
    /// (0: none known, e.g. restored from disk).
    fn known_epoch(&self, client: &ClientId) -> u64 {
        self.cluster
            .as_ref()
            .and_then(|c| c.takeover.epochs.get(client).copied())
            .unwrap_or(0)
    }

    /// This node began a new life (its lease was lost and granted again):
    /// the owners forgot its registrations when its old life left, so every
    /// session of this shard registers again.
    pub fn reregister_all(&mut self, now: Instant) {
        self.clock = now;
        self.store.begin_input();
        let Some(map) = self.cluster.as_ref().and_then(|c| c.takeover.map.clone()) else {
            return;
        };
        let msgs: Vec<(NodeId, SessionMsg)> = self
            .sessions
            .keys()
            .map(|cid| {
                let epoch = self.known_epoch(cid);
                (
                    map.owner(partition_of(cid.as_str())).node,
                    SessionMsg::Register {
                        client: cid.clone(),
                        epoch,
                    },
                )
            })
            .collect();
        for (node, msg) in msgs {
            self.send_to_node(now, node, msg);
        }
    }

    /// A new partition map: registrations of partitions this node no
    /// longer owns are dropped, and every session of this shard whose
    /// partition has a new owner (all of them, with the first map) is
    /// registered there.
    pub fn set_partition_map(&mut self, now: Instant, map: Arc<PartitionMap>) {
        self.clock = now;
        self.store.begin_input();
        let me = self.node();
        let Some(t) = self.takeover() else {
            return;
        };
        let old = t.map.replace(map.clone());
        t.registry.keep_only(|p| map.owner(p).node == me);
        let mut moved: Vec<(NodeId, SessionMsg)> = Vec::new();
        for cid in self.sessions.keys() {
            let p = partition_of(cid.as_str());
            let owner = map.owner(p).node;
            if old.as_ref().is_some_and(|o| o.owner(p).node == owner) {
                continue;
            }
            let epoch = self.known_epoch(cid);
            moved.push((
                owner,
                SessionMsg::Register {
                    client: cid.clone(),
                    epoch,
                },
            ));
        }
        for (node, msg) in moved {
            self.send_to_node(now, node, msg);
        }
    }

    /// A session ended here: the owner forgets it.
    pub(super) fn released(&mut self, now: Instant, client: &ClientId) {
        let Some(owner) = self.registry_owner(client.as_str()) else {
            return;
        };
        if let Some(t) = self.takeover() {
            t.epochs.remove(client);
        }
        self.send_to_node(
            now,
            owner,
            SessionMsg::Release {
                client: client.clone(),
            },
        );
    }

    /// The nodes of the cluster now (from the runtime, at every change of
    /// membership): those found gone before and listed again are back (a
    /// new life), sessions may be handed to them again.
    pub fn set_members(&mut self, nodes: &[NodeId]) {
        if let Some(t) = self.takeover() {
            t.gone.retain(|n| !nodes.contains(n));
        }
    }

    /// Whether `node` was found gone and not seen back since.
    pub(super) fn node_gone(&self, node: NodeId) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.takeover.gone.contains(&node))
    }

    /// `client`'s session here registers again with its owner after
    /// [`REGISTER_RETRY`].
    pub(super) fn register_later(&mut self, now: Instant, client: ClientId) {
        if self.sessions.contains_key(&client) {
            self.timers
                .push(Reverse((now + REGISTER_RETRY, Timer::Register(client))));
        }
    }

    /// A [`Timer::Register`]: `client`'s session, if still here,
    /// registers with the owner of its partition.
    pub(super) fn register_again(&mut self, now: Instant, client: &ClientId) {
        if !self.sessions.contains_key(client) {
            return;
        }
        let Some(owner) = self.registry_owner(client.as_str()) else {
            return;
        };
        let epoch = self.known_epoch(client);
        let client = client.clone();
        self.send_to_node(now, owner, SessionMsg::Register { client, epoch });
    }

    /// Sessions registered here per node (for `cluster status`).
    pub fn registered_per_node(&self) -> std::collections::BTreeMap<NodeId, usize> {
        self.cluster
            .as_ref()
            .map(|c| c.takeover.registry.per_node())
            .unwrap_or_default()
    }
}
