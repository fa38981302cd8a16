//! The cluster's control thread: this node's membership in etcd. One std
//! thread runs a current-thread tokio runtime for the etcd client (gRPC
//! needs tokio) — never a shard: no shard executor awaits etcd, and the
//! data path never waits for it.
//!
//! The node holds a lease (its id is the node's epoch) and keeps
//! `/{cluster}/nodes/{id}` under it, renewed every third of its TTL. It
//! watches the prefix and hands every change to the shards as an immutable
//! [`Membership`] snapshot (through their control queues, without waiting).
//! When etcd cannot be reached the last snapshot stays in force, marked
//! `etcd_up = false`; when the lease expired meanwhile (the node was cut
//! off longer than the TTL, and its peers dropped it), a new lease is
//! granted: a new epoch.
//!
//! The same thread takes part in electing the cluster's controller: the
//! first node to create `/{cluster}/controller` under its lease holds it
//! until that lease ends. The controller keeps `/{cluster}/partitions`
//! (the session registry's [`PartitionMap`], moved as little as possible)
//! in step with the members, writing it only while its claim on the
//! controller key still stands (a compare in the same transaction), so a
//! controller that lost its lease cannot overwrite its successor's map.
//! Every node reads the map from the watch; its etcd revision is the
//! partition epoch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use vmqtt::broker::{Epoch, NodeId};
use vmqtt_cluster::{Controller, Member, Membership, PartitionMap};
use vmqtt_config::ClusterConfig;

/// How long start-up may take to reach etcd and register, at least (more
/// with a long lease TTL: a restarted node waits for its old lease).
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Each etcd request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Between attempts while etcd cannot be reached.
const RETRY: Duration = Duration::from_millis(500);
/// How long one endpoint may take to answer before the next is tried.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often a node reports its sessions and connections (for `cluster
/// status`), when they changed.
const LOAD_EVERY: Duration = Duration::from_secs(5);

/// This node's sessions and connections now (summed over its shards).
pub type Load = Box<dyn Fn() -> (u64, u64) + Send>;

/// A client of one of `endpoints`: the first, from index `from` on in
/// turn, that answers a status request within [`PROBE_TIMEOUT`]. Pinned to
/// one endpoint (as etcd's own clients are) rather than balanced over all:
/// the balanced channel of `etcd-client` fails requests while any one of
/// its endpoints is down (etcdv3/etcd-client#39), and a dead member must
/// cost a node one failover, not its lease. Returns the index too.
async fn connect_any(endpoints: &[String], from: usize) -> anyhow::Result<(Client, usize)> {
    let mut errors = Vec::new();
    for k in 0..endpoints.len() {
        let i = (from + k) % endpoints.len();
        let url = endpoints[i].as_str();
        let options = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let mut client = match Client::connect([url], Some(options)).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, client.status()).await {
            Ok(Ok(_)) => return Ok((client, i)),
            Ok(Err(e)) => errors.push(format!("{url}: {e}")),
            Err(_) => errors.push(format!("{url}: no answer within {PROBE_TIMEOUT:?}")),
        }
    }
    bail!("no etcd endpoint answers ({})", errors.join("; "))
}

/// This node as it registers itself.
#[derive(Debug, Clone)]
pub struct ThisNode {
    /// Its id.
    pub id: NodeId,
    /// Its peer address (shard `i` on the port + `i`).
    pub peer: SocketAddr,
    /// Its shards.
    pub shards: u16,
    /// Its MQTT address, for people.
    pub mqtt: Option<SocketAddr>,
}

/// The running control thread; [`Etcd::stop`] leaves the cluster.
#[derive(Debug)]
pub struct Etcd {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Etcd {
    /// Registers this node in etcd and starts watching the membership;
    /// every later snapshot goes to `publish`. Fails (clearly, naming the
    /// endpoints) when etcd cannot be reached or the node id is held by a
    /// live node.
    pub fn start(
        cfg: &ClusterConfig,
        me: ThisNode,
        load: Load,
        publish: impl Fn(Arc<Membership>) + Send + 'static,
    ) -> anyhow::Result<(Etcd, Arc<Membership>)> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let cfg = cfg.clone();
        let thread = thread::Builder::new()
            .name("vmqtt-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("starting the etcd runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let join_timeout =
                        JOIN_TIMEOUT.max(Duration::from_secs(cfg.lease_ttl_seconds * 2 + 10));
                    let joined =
                        tokio::time::timeout(join_timeout, Session::join(cfg.clone(), me)).await;
                    let mut session = match joined {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                        Err(_) => {
                            let _ = ready_tx.send(Err(anyhow!(
                                "no answer from etcd at {:?} within {} s",
                                cfg.etcd,
                                join_timeout.as_secs()
                            )));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(Arc::new(session.snapshot())));
                    session.load = Some(load);
                    session.run(stop_rx, publish).await;
                });
            })
            .context("starting the etcd thread")?;
        let first = ready_rx
            .recv()
            .map_err(|_| anyhow!("the etcd thread ended while joining"))??;
        Ok((
            Etcd {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            first,
        ))
    }

    /// Leaves the cluster: the lease is revoked, so peers drop this node's
    /// routes at once rather than after the TTL.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the etcd thread ended with a panic");
            }
        }
    }
}

/// `vmqtt-shard cluster status`: the controller, the members as etcd has
/// them, one line each (`node ID epoch HEX peer ADDR shards N mqtt ADDR
/// partitions K`), and the partition map's epoch.
pub fn status(cfg: &ClusterConfig) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the etcd client")?;
    rt.block_on(async {
        let (mut client, _) = connect_any(&cfg.etcd, 0)
            .await
            .with_context(|| format!("connecting to etcd at {:?}", cfg.etcd))?;
        let root = Membership::cluster_prefix(&cfg.name);
        let r = client
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .context("reading the cluster's keys")?;
        let mut view = View::new(&cfg.name);
        for kv in r.kvs() {
            view.put(
                kv.key_str().unwrap_or(""),
                kv.value_str().unwrap_or(""),
                kv.mod_revision(),
            );
        }
        Ok(view.status())
    })
}

/// The cluster's keys as this node last read them: members, controller,
/// partition map.
struct View {
    prefix: String,
    load_prefix: String,
    /// Each node's last report: (sessions, connections).
    loads: BTreeMap<NodeId, (u64, u64)>,
    controller_key: String,
    partitions_key: String,
    nodes: BTreeMap<NodeId, Member>,
    controller: Option<Controller>,
    partitions: Option<Arc<PartitionMap>>,
    /// Member values this version could not read, by node.
    unreadable: BTreeMap<NodeId, String>,
}

impl View {
    fn new(cluster: &str) -> View {
        View {
            prefix: Membership::prefix(cluster),
            load_prefix: Membership::load_prefix(cluster),
            loads: BTreeMap::new(),
            controller_key: Membership::controller_key(cluster),
            partitions_key: Membership::partitions_key(cluster),
            nodes: BTreeMap::new(),
            controller: None,
            partitions: None,
            unreadable: BTreeMap::new(),
        }
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.loads.clear();
        self.controller = None;
        self.partitions = None;
        self.unreadable.clear();
    }

    /// A key was put (with etcd revision `revision`).
    fn put(&mut self, key: &str, value: &str, revision: i64) {
        if key == self.controller_key {
            self.controller = Controller::from_value(value);
            if self.controller.is_none() {
                warn!(key, value, "a controller value this version does not read");
            }
        } else if key == self.partitions_key {
            match PartitionMap::from_value(value, u64::try_from(revision).unwrap_or(0)) {
                Some(m) => self.partitions = Some(Arc::new(m)),
                None => {
                    warn!(key, "a partition map this version does not read: the controller writes a new one");
                    self.partitions = None;
                }
            }
        } else if let Some(node) = Membership::node_of_key(&self.load_prefix, key) {
            if let Some(load) = parse_load(value) {
                self.loads.insert(node, load);
            }
        } else if let Some(node) = Membership::node_of_key(&self.prefix, key) {
            match Member::from_value(value) {
                Some(m) => {
                    self.unreadable.remove(&node);
                    self.nodes.insert(node, m);
                }
                None => {
                    warn!(
                        key,
                        value, "skipping a member value this version does not understand"
                    );
                    self.unreadable.insert(node, value.to_owned());
                }
            }
        }
    }

    /// A key was deleted.
    fn delete(&mut self, key: &str) {
        if key == self.controller_key {
            if let Some(c) = self.controller.take() {
                info!(node = c.node.0, "the cluster's controller is gone");
            }
        } else if key == self.partitions_key {
            self.partitions = None;
        } else if let Some(node) = Membership::node_of_key(&self.load_prefix, key) {
            self.loads.remove(&node);
        } else if let Some(node) = Membership::node_of_key(&self.prefix, key) {
            self.unreadable.remove(&node);
            if self.nodes.remove(&node).is_some() {
                info!(node = node.0, "node left the cluster");
            }
        }
    }

    /// The text of `cluster status`.
    fn status(&self) -> String {
        let mut out = match self.controller {
            Some(c) if self.nodes.get(&c.node).is_some_and(|m| m.epoch == c.epoch) => {
                format!("controller node {} epoch {:x}\n", c.node.0, c.epoch.0)
            }
            Some(c) => format!("controller node {} (an earlier life)\n", c.node.0),
            None => "controller none (being elected)\n".to_owned(),
        };
        let owned = self
            .partitions
            .as_ref()
            .map(|p| p.per_node())
            .unwrap_or_default();
        let ids: std::collections::BTreeSet<NodeId> = self
            .nodes
            .keys()
            .chain(self.unreadable.keys())
            .copied()
            .collect();
        if ids.is_empty() {
            out.push_str("no node registered\n");
        }
        for node in ids {
            let Some(m) = self.nodes.get(&node) else {
                out.push_str(&format!(
                    "node {} (a value this version does not read)\n",
                    node.0
                ));
                continue;
            };
            let mqtt = m.mqtt.map_or("-".to_owned(), |a| a.to_string());
            let load = self.loads.get(&node).map_or(String::new(), |(s, c)| {
                format!(" sessions {s} connections {c}")
            });
            out.push_str(&format!(
                "node {} epoch {:x} peer {} shards {} mqtt {mqtt} partitions {}{load}\n",
                node.0,
                m.epoch.0,
                m.peer,
                m.shards,
                owned.get(&node).copied().unwrap_or(0)
            ));
        }
        match &self.partitions {
            Some(p) => {
                let orphaned: usize = owned
                    .iter()
                    .filter(|(id, _)| !self.nodes.contains_key(id))
                    .map(|(_, n)| n)
                    .sum();
                out.push_str(&format!("partitions epoch {}", p.revision));
                if orphaned > 0 {
                    out.push_str(&format!(" ({orphaned} owned by nodes that left)"));
                }
                out.push('\n');
            }
            None => out.push_str("partitions none (no map written yet)\n"),
        }
        out
    }
}

/// The value of a node's load report.
fn load_value((sessions, connections): (u64, u64)) -> String {
    format!("v1 sessions={sessions} connections={connections}")
}

/// Parses [`load_value`].
fn parse_load(v: &str) -> Option<(u64, u64)> {
    let mut words = v.split_ascii_whitespace();
    if words.next()? != "v1" {
        return None;
    }
    let (mut s, mut c) = (None, None);
    for w in words {
        match w.split_once('=')? {
            ("sessions", n) => s = n.parse().ok(),
            ("connections", n) => c = n.parse().ok(),
            _ => {}
        }
    }
    Some((s?, c?))
}

/// The etcd thread's state.
struct Session {
    client: Client,
    /// The index in `cfg.etcd` of the endpoint `client` talks to.
    endpoint: usize,
    cfg: ClusterConfig,
    me: ThisNode,
    /// Every key of the cluster starts with this.
    root: String,
    key: String,
    lease: i64,
    revision: i64,
    view: View,
    etcd_up: bool,
    /// Where this node's load comes from (set once serving).
    load: Option<Load>,
    /// The load last written, and when.
    last_load: Option<((u64, u64), tokio::time::Instant)>,
    /// The last snapshot handed to the shards (another that differs only
    /// in its revision is not sent).
    published: Option<Membership>,
}

/// Why [`Session::serve`] returned.
enum Served {
    Stopped,
    Lost(anyhow::Error),
}

impl Session {
    async fn join(cfg: ClusterConfig, me: ThisNode) -> anyhow::Result<Session> {
        let (client, endpoint) = connect_any(&cfg.etcd, 0)
            .await
            .with_context(|| format!("connecting to etcd at {:?}", cfg.etcd))?;
        let root = Membership::cluster_prefix(&cfg.name);
        let key = Membership::key(&cfg.name, me.id);
        let view = View::new(&cfg.name);
        let mut s = Session {
            client,
            endpoint,
            cfg,
            me,
            root,
            key,
            lease: 0,
            revision: 0,
            view,
            etcd_up: true,
            load: None,
            last_load: None,
            published: None,
        };
        s.register(true).await?;
        s.list().await?;
        s.steer().await?;
        info!(
            cluster = %s.cfg.name,
            node = s.me.id.0,
            epoch = format_args!("{:x}", s.lease),
            nodes = s.view.nodes.len(),
            controller = s.view.controller.map(|c| c.node.0),
            "joined the cluster"
        );
        Ok(s)
    }

    fn ttl(&self) -> i64 {
        i64::try_from(self.cfg.lease_ttl_seconds)
            .unwrap_or(3)
            .max(1)
    }

    /// Grants a lease and puts this node's key under it. The key must be
    /// free: a node id held by a live lease is another node's (or this
    /// node's previous life, killed: waited for, up to its TTL).
    async fn register(&mut self, starting: bool) -> anyhow::Result<()> {
        // A lease outlives its TTL a little (etcd checks expiry every
        // half second, later under load): wait twice the TTL and more.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.ttl() as u64 * 2 + 5);
        let lease = loop {
            // A lease per attempt: one granted before a long wait would
            // expire (nobody keeps it alive yet) right after the key is
            // put under it.
            let granted = self
                .client
                .lease_grant(self.ttl(), None)
                .await
                .context("granting the node's etcd lease")?;
            let lease = granted.id();
            let value = self.value(lease);
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let r = self
                .client
                .txn(txn)
                .await
                .context("registering the node in etcd")?;
            if r.succeeded() {
                break lease;
            }
            let _ = self.client.lease_revoke(lease).await;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "node id {} is already registered in cluster {:?} by a live node ({} in etcd): \
                     each node needs its own node_id",
                    self.me.id.0,
                    self.cfg.name,
                    self.key
                );
            }
            if starting {
                info!(
                    node = self.me.id.0,
                    "this node id is still registered (a previous run, killed?): waiting for its lease to expire"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if self.lease != 0 && self.lease != lease {
            warn!(
                old = format_args!("{:x}", self.lease),
                new = format_args!("{lease:x}"),
                "the node's lease had expired (cut off from etcd longer than its TTL): \
                 registered again with a new epoch"
            );
        }
        self.lease = lease;
        // A new lease has no load key: written again at the next tick.
        self.last_load = None;
        Ok(())
    }

    /// This node's value in etcd, with epoch `lease`.
    fn value(&self, lease: i64) -> String {
        Member {
            epoch: Epoch(lease as u64),
            peer: self.me.peer,
            shards: self.me.shards,
            mqtt: self.me.mqtt,
        }
        .to_value()
    }

    /// Reads every key of the cluster.
    async fn list(&mut self) -> anyhow::Result<()> {
        let r = self
            .client
            .get(self.root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .context("reading the cluster's keys")?;
        self.revision = r.header().map_or(0, |h| h.revision());
        self.view.clear();
        for kv in r.kvs() {
            self.view.put(
                kv.key_str().unwrap_or(""),
                kv.value_str().unwrap_or(""),
                kv.mod_revision(),
            );
        }
        Ok(())
    }

    /// This node's claim on the controller key.
    fn me_as_controller(&self) -> Controller {
        Controller {
            node: self.me.id,
            epoch: Epoch(self.lease as u64),
        }
    }

    /// Takes part in the controller's election when there is none, and as
    /// the controller writes a new partition map when the members changed.
    /// Both are transactions: at most one node wins the controller key, and
    /// the map is written only while this node's claim on it stands.
    async fn steer(&mut self) -> anyhow::Result<()> {
        let ckey = self.view.controller_key.clone();
        let mine = self.me_as_controller();
        let live =
            |c: &Controller, v: &View| v.nodes.get(&c.node).is_some_and(|m| m.epoch == c.epoch);
        if self.view.controller.is_none() {
            let txn = Txn::new()
                .when([Compare::create_revision(ckey.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    ckey.as_str(),
                    mine.to_value(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )])
                .or_else([TxnOp::get(ckey.as_str(), None)]);
            let r = self
                .client
                .txn(txn)
                .await
                .context("campaigning for the controller key")?;
            if r.succeeded() {
                info!(node = self.me.id.0, "this node is the cluster's controller");
                self.view.controller = Some(mine);
            } else {
                for op in r.op_responses() {
                    if let etcd_client::TxnOpResponse::Get(g) = op {
                        if let Some(kv) = g.kvs().first() {
                            self.view
                                .put(&ckey, kv.value_str().unwrap_or(""), kv.mod_revision());
                        }
                    }
                }
            }
        }
        if self.view.controller != Some(mine) || !live(&mine, &self.view) {
            return Ok(());
        }
        let members = self.snapshot();
        let Some(next) = PartitionMap::assign(self.view.partitions.as_deref(), &members.shards())
        else {
            return Ok(());
        };
        if self
            .view
            .partitions
            .as_deref()
            .is_some_and(|cur| cur.same_owners(&next))
        {
            return Ok(());
        }
        let pkey = self.view.partitions_key.clone();
        let txn = Txn::new()
            .when([Compare::value(
                ckey.as_str(),
                CompareOp::Equal,
                mine.to_value(),
            )])
            .and_then([TxnOp::put(pkey.as_str(), next.to_value(), None)]);
        let r = self
            .client
            .txn(txn)
            .await
            .context("writing the partition map")?;
        if r.succeeded() {
            let revision = r.header().map_or(0, |h| h.revision());
            let mut next = next;
            next.revision = u64::try_from(revision).unwrap_or(0);
            info!(
                epoch = revision,
                nodes = members.nodes.len(),
                "wrote the partition map"
            );
            self.view.partitions = Some(Arc::new(next));
        } else {
            warn!("no longer the controller: the partition map is left to the new one");
            self.view.controller = None;
        }
        Ok(())
    }

    /// Hands the snapshot to the shards unless only its revision changed
    /// (another node's load report, say).
    fn publish_if_changed(&mut self, publish: &impl Fn(Arc<Membership>)) {
        let now = self.snapshot();
        let same = self.published.as_ref().is_some_and(|p| {
            Membership {
                revision: now.revision,
                ..p.clone()
            } == now
        });
        if !same {
            self.published = Some(now.clone());
            publish(Arc::new(now));
        }
    }

    /// Writes this node's sessions and connections (under its lease) when
    /// they changed, at most every [`LOAD_EVERY`].
    async fn report_load(&mut self) -> anyhow::Result<()> {
        let Some(load) = &self.load else {
            return Ok(());
        };
        let at = tokio::time::Instant::now();
        if self
            .last_load
            .is_some_and(|(_, t)| at.duration_since(t) < LOAD_EVERY)
        {
            return Ok(());
        }
        let now = load();
        if self.last_load.is_some_and(|(l, _)| l == now) {
            self.last_load = Some((now, at));
            return Ok(());
        }
        let key = format!("{}{}", self.view.load_prefix, self.me.id.0);
        self.client
            .put(
                key,
                load_value(now),
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .context("reporting the node's load")?;
        self.last_load = Some((now, at));
        Ok(())
    }

    fn snapshot(&self) -> Membership {
        Membership {
            revision: self.revision,
            nodes: self.view.nodes.clone(),
            etcd_up: self.etcd_up,
            controller: self.view.controller.map(|c| c.node),
            partitions: self.view.partitions.clone(),
        }
    }

    /// Keeps the lease and follows the membership until stopped, through
    /// any number of lost connections to etcd.
    async fn run(
        &mut self,
        mut stop: oneshot::Receiver<()>,
        publish: impl Fn(Arc<Membership>) + Send + 'static,
    ) {
        loop {
            match self.serve(&mut stop, &publish).await {
                Served::Stopped => break,
                Served::Lost(e) => {
                    if self.etcd_up {
                        warn!(error = %format!("{e:#}"), "lost etcd: the last membership stays in force");
                        self.etcd_up = false;
                        self.publish_if_changed(&publish);
                    }
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                    let recovered = tokio::select! {
                        _ = &mut stop => break,
                        r = self.recover() => r,
                    };
                    if let Err(e) = recovered {
                        warn!(error = %format!("{e:#}"), "etcd still unreachable");
                        continue;
                    }
                    info!("etcd reachable again");
                    self.etcd_up = true;
                    self.publish_if_changed(&publish);
                }
            }
        }
        if !self.etcd_up {
            warn!("stopping while etcd is unreachable: peers drop this node after its lease TTL");
            return;
        }
        // Leaving: the lease goes, and the key with it.
        let revoke = self.client.lease_revoke(self.lease);
        match tokio::time::timeout(REQUEST_TIMEOUT, revoke).await {
            Ok(Ok(_)) => info!(node = self.me.id.0, "left the cluster"),
            Ok(Err(e)) => {
                warn!(error = %e, "revoking the node's lease failed: peers drop it after its TTL")
            }
            Err(_) => warn!("revoking the node's lease timed out: peers drop it after its TTL"),
        }
    }

    /// After a lost connection: an endpoint that answers (the next ones
    /// first), the lease if it is still alive (else a new one), and the
    /// membership read again.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let (client, endpoint) = connect_any(&self.cfg.etcd, self.endpoint + 1).await?;
        if endpoint != self.endpoint {
            info!(
                from = %self.cfg.etcd[self.endpoint],
                to = %self.cfg.etcd[endpoint],
                "etcd: now talking to another endpoint"
            );
        }
        self.client = client;
        self.endpoint = endpoint;
        let alive = match self.client.lease_time_to_live(self.lease, None).await {
            Ok(r) => r.ttl() > 0,
            Err(e) => return Err(e).context("asking etcd for the node's lease"),
        };
        if alive {
            // (The key may have been deleted by hand: put it back.)
            let value = self.value(self.lease);
            self.client
                .put(
                    self.key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(self.lease)),
                )
                .await
                .context("putting the node's key back")?;
        } else {
            self.register(false).await?;
        }
        self.list().await?;
        self.steer().await
    }

    async fn serve(
        &mut self,
        stop: &mut oneshot::Receiver<()>,
        publish: &impl Fn(Arc<Membership>),
    ) -> Served {
        let keep = async {
            let (keeper, stream) = self.client.lease_keep_alive(self.lease).await?;
            let watch = self
                .client
                .watch(
                    self.root.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(self.revision + 1),
                    ),
                )
                .await?;
            Ok::<_, etcd_client::Error>((keeper, stream, watch))
        };
        let (mut keeper, mut alive, mut watch) = match keep.await {
            Ok(x) => x,
            Err(e) => return Served::Lost(e.into()),
        };
        let every = Duration::from_millis((self.ttl() as u64 * 1000 / 3).max(200));
        // An answer later than half the TTL: this endpoint is dead or cut
        // off from the quorum; another one is tried while the lease lasts.
        let answer = Duration::from_millis(self.ttl() as u64 * 500).min(REQUEST_TIMEOUT);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut *stop => return Served::Stopped,
                _ = tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return Served::Lost(e.into());
                    }
                    if let Err(e) = self.report_load().await {
                        return Served::Lost(e);
                    }
                    match tokio::time::timeout(answer, alive.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => {
                            return Served::Lost(anyhow!("the node's lease expired"));
                        }
                        Ok(Ok(None)) => return Served::Lost(anyhow!("keepalive stream ended")),
                        Ok(Err(e)) => return Served::Lost(e.into()),
                        Err(_) => return Served::Lost(anyhow!("no keepalive answer")),
                    }
                }
                m = watch.message() => {
                    let r = match m {
                        Ok(Some(r)) => r,
                        Ok(None) => return Served::Lost(anyhow!("watch stream ended")),
                        Err(e) => return Served::Lost(e.into()),
                    };
                    if r.canceled() {
                        return Served::Lost(anyhow!("watch canceled: {}", r.cancel_reason()));
                    }
                    if r.events().is_empty() {
                        continue;
                    }
                    for ev in r.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = kv.key_str().unwrap_or("");
                        match ev.event_type() {
                            EventType::Put => {
                                self.view.put(key, kv.value_str().unwrap_or(""), kv.mod_revision())
                            }
                            EventType::Delete => self.view.delete(key),
                        }
                        self.revision = self.revision.max(kv.mod_revision());
                    }
                    if let Some(h) = r.header() {
                        self.revision = self.revision.max(h.revision());
                    }
                    if !self.view.nodes.contains_key(&self.me.id) {
                        // Our key went (lease expired meanwhile, or someone
                        // deleted it): register again.
                        return Served::Lost(anyhow!("this node's key is gone from etcd"));
                    }
                    if let Err(e) = self.steer().await {
                        return Served::Lost(e);
                    }
                    self.publish_if_changed(publish);
                }
            }
        }
    }
}
