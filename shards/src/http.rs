//! The operators' HTTP endpoint (`[http]` in the configuration), served by
//! shard 0: `GET /metrics` in the Prometheus text format with a `shard`
//! label on every series, `GET /healthz` and `GET /readyz`, `GET /groups`
//! and, in a cluster, `GET /cluster` (members and links).
//!
//! Shards publish their counters into [`Metrics`] about once a second (plain
//! atomic stores, no lock, no message); the endpoint only reads them.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, timer};
use tracing::{debug, warn};
use vmqtt::broker::{GroupInfo, Limit, ShardStats};

/// One shard's published counters. Written by that shard only.
#[derive(Debug, Default)]
pub struct ShardSlot {
    ready: AtomicBool,
    values: [AtomicU64; SERIES.len()],
    /// Per QoS (0, 1, 2) series of [`BY_QOS`], in that order.
    by_qos: [[AtomicU64; 3]; BY_QOS.len()],
    /// Storage write latency: count per bucket of [`STORE_BUCKETS_US`]
    /// (not cumulative; the last one is +Inf), sum in microseconds.
    store_buckets: [AtomicU64; STORE_BUCKETS_US.len() + 1],
    store_sum_us: AtomicU64,
    /// Series with a label of their own ([`LABELLED`]), values in label order.
    labelled: [[AtomicU64; Limit::COUNT]; LABELLED.len()],
    /// The shared-subscription groups whose home is this shard (a lock:
    /// a list, replaced once a second, read by the endpoint).
    groups: Mutex<Vec<GroupInfo>>,
    /// This shard's node links (a cluster), replaced once a second.
    links: Mutex<Vec<LinkInfo>>,
}

/// One shard's stream to one peer node, as published for the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// The peer node.
    pub peer: u16,
    /// Its epoch (etcd lease id).
    pub epoch: u64,
    /// Its peer address (of the shard this stream goes to).
    pub addr: String,
    /// Connected now.
    pub up: bool,
    /// Bytes held (waiting and unacknowledged).
    pub queued_bytes: u64,
    /// Batches sent and not yet acknowledged.
    pub unacked: u64,
    /// The stream's counters.
    pub stats: vmqtt_cluster::OutStats,
    /// The last measured round trip of the link (ping to pong).
    pub rtt: Option<std::time::Duration>,
}

/// The membership as the endpoint shows it.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// This node.
    pub node: u16,
    /// The cluster's name.
    pub name: String,
    /// The last membership.
    pub membership: vmqtt_cluster::Membership,
}

/// (name, type, help, value) of one per-group series.
type GroupSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&GroupInfo) -> u64,
);

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Members listed per group in `vmqtt_group_member_inflight`, at most.
const GROUP_MEMBERS_LISTED: usize = 100;

/// `s` as a Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// (name, help, label, label values) of the counters with a label beside
/// `shard`; a series has as many values as its label has.
const LABELLED: [(&str, &str, &str, &[&str]); 3] = [
    (
        "vmqtt_limit_hits_total",
        "Times a limit refused, dropped or held back something (connections, connect_rate, connect_timeout, packet_size, topic_length, topic_levels, subscriptions, receive_maximum, inflight, queued).",
        "limit",
        &LIMIT_NAMES,
    ),
    (
        "vmqtt_acl_denied_total",
        "PUBLISHes (wills included) and subscription filters the ACL denied, and subscriptions removed because the ACL no longer allows them (revoked: after a reload, or when a session resumes).",
        "action",
        &["publish", "subscribe", "revoked"],
    ),
    (
        "vmqtt_auth_refused_total",
        "CONNECTs refused for their credentials: bad_credentials (CONNACK 0x86/0x04) or not_authorized (0x87/0x05, e.g. anonymous).",
        "reason",
        &["bad_credentials", "not_authorized"],
    ),
];

const LIMIT_NAMES: [&str; Limit::COUNT] = {
    let mut names = [""; Limit::COUNT];
    let mut i = 0;
    while i < Limit::COUNT {
        names[i] = Limit::ALL[i].as_str();
        i += 1;
    }
    names
};

fn labelled(s: &ShardStats) -> [&[u64]; LABELLED.len()] {
    [&s.limit_hits, &s.acl_denied, &s.auth_refused]
}

/// Upper bounds of the storage write latency histogram, in microseconds.
const STORE_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

/// Counters of every shard, shared by all executors (`Send + Sync`).
#[derive(Debug)]
pub struct Metrics {
    shards: Vec<ShardSlot>,
    login: Arc<LoginCounters>,
    /// The membership, in a cluster (shard 0 publishes it).
    cluster: Mutex<Option<ClusterInfo>>,
}

/// Counters of the login path (`gate.rs`), which is shared by every shard:
/// process-wide, so their series have no `shard` label.
#[derive(Debug, Default)]
pub struct LoginCounters {
    /// Logins refused unverified by the throttle: by address, by user name.
    pub throttled: [AtomicU64; 2],
    /// Passwords accepted from the credential cache, and checked with
    /// argon2 (right or wrong).
    pub checks: [AtomicU64; 2],
    /// Logins refused because the verifier queue was full.
    pub busy: AtomicU64,
}

/// (name, help, label, label values) of the [`LoginCounters`] arrays.
const LOGIN: [(&str, &str, &str, [&str; 2]); 2] = [
    (
        "vmqtt_auth_throttled_total",
        "Logins refused without checking the password (CONNACK 0x8A; MQTT 3: 0x05) after failed logins from the source address or for the user name (process-wide).",
        "by",
        ["address", "user"],
    ),
    (
        "vmqtt_auth_password_checks_total",
        "Passwords checked: accepted from the credential cache, or verified with argon2 (process-wide).",
        "how",
        ["cache", "argon2"],
    ),
];

/// (name, type, help) of each series, in the order of [`values`].
const SERIES: [(&str, &str, &str); 7] = [
    (
        "vmqtt_connections",
        "gauge",
        "Open MQTT connections (CONNACK sent).",
    ),
    ("vmqtt_sessions", "gauge", "Sessions, connected or not."),
    (
        "vmqtt_subscriptions",
        "gauge",
        "Subscriptions of the sessions.",
    ),
    (
        "vmqtt_retained_messages",
        "gauge",
        "Retained messages (every shard holds a replica).",
    ),
    (
        "vmqtt_cross_shard_forwards_total",
        "counter",
        "Messages forwarded to another shard.",
    ),
    (
        "vmqtt_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent and not yet acknowledged.",
    ),
    (
        "vmqtt_queued_messages",
        "gauge",
        "Messages waiting in session queues.",
    ),
];

/// (name, help) of the series with a `qos` label, in the order of
/// [`by_qos`].
const BY_QOS: [(&str, &str); 3] = [
    (
        "vmqtt_messages_received_total",
        "PUBLISH packets received from clients, by their QoS.",
    ),
    (
        "vmqtt_messages_sent_total",
        "PUBLISH packets sent to clients, by the QoS sent.",
    ),
    (
        "vmqtt_messages_dropped_total",
        "Messages dropped (session queue full, too large for the client, expired), by delivery QoS.",
    ),
];

fn by_qos(s: &ShardStats) -> [[u64; 3]; BY_QOS.len()] {
    [s.received_by_qos, s.sent_by_qos, s.dropped_by_qos]
}

fn values(s: &ShardStats) -> [u64; SERIES.len()] {
    [
        s.connections,
        s.sessions,
        s.subscriptions,
        s.retained,
        s.forwarded,
        s.inflight,
        s.queued,
    ]
}

impl Metrics {
    /// Slots for `shards` shards, none ready.
    pub fn new(shards: usize, login: Arc<LoginCounters>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards).map(|_| ShardSlot::default()).collect(),
            login,
            cluster: Mutex::new(None),
        })
    }

    /// Sessions and connections over every shard (as last published).
    pub fn sessions_and_connections(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(s, c), slot| {
            (
                s + slot.values[1].load(Ordering::Relaxed),
                c + slot.values[0].load(Ordering::Relaxed),
            )
        })
    }

    /// Shard `shard` publishes its counters.
    pub fn publish(&self, shard: usize, stats: &ShardStats) {
        if let Some(slot) = self.shards.get(shard) {
            for (cell, v) in slot.values.iter().zip(values(stats)) {
                cell.store(v, Ordering::Relaxed);
            }
            for (cells, vs) in slot.by_qos.iter().zip(by_qos(stats)) {
                for (cell, v) in cells.iter().zip(vs) {
                    cell.store(v, Ordering::Relaxed);
                }
            }
            for (cells, vs) in slot.labelled.iter().zip(labelled(stats)) {
                for (cell, v) in cells.iter().zip(vs) {
                    cell.store(*v, Ordering::Relaxed);
                }
            }
        }
    }

    /// Shard `shard` publishes the groups whose home it is.
    pub fn publish_groups(&self, shard: usize, groups: Vec<GroupInfo>) {
        if let Some(slot) = self.shards.get(shard) {
            *slot.groups.lock().unwrap_or_else(|e| e.into_inner()) = groups;
        }
    }

    /// Shard `shard` publishes its node links.
    pub fn publish_links(&self, shard: usize, links: Vec<LinkInfo>) {
        if let Some(slot) = self.shards.get(shard) {
            *slot.links.lock().unwrap_or_else(|e| e.into_inner()) = links;
        }
    }

    /// The membership, from shard 0 (a cluster only).
    pub fn publish_cluster(&self, info: ClusterInfo) {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    /// `GET /cluster`: the members (node, epoch, peer and MQTT address,
    /// shards), whether etcd answers, and every shard's link to every peer.
    pub fn cluster_json(&self) -> String {
        let cluster = self.cluster.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = cluster.as_ref() else {
            return "{\"cluster\":null}\n".to_owned();
        };
        let owned = c
            .membership
            .partitions
            .as_ref()
            .map(|p| p.per_node())
            .unwrap_or_default();
        let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
        let mut out = format!(
            "{{\"cluster\":{},\"node\":{},\"etcd_up\":{},\"revision\":{},\"controller\":{},\"partition_epoch\":{},\"nodes\":[",
            json_str(&c.name),
            c.node,
            c.membership.etcd_up,
            c.membership.revision,
            opt(c.membership.controller.map(|n| u64::from(n.0))),
            opt(c.membership.partitions.as_ref().map(|p| p.revision)),
        );
        for (i, (id, m)) in c.membership.nodes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let mqtt = m
                .mqtt
                .map_or("null".to_owned(), |a| json_str(&a.to_string()));
            let _ = write!(
                out,
                "{sep}{{\"node\":{},\"epoch\":\"{:x}\",\"peer\":{},\"shards\":{},\"mqtt\":{mqtt},\"partitions\":{}}}",
                id.0,
                m.epoch.0,
                json_str(&m.peer.to_string()),
                m.shards,
                owned.get(id).copied().unwrap_or(0)
            );
        }
        out.push_str("],\"links\":[");
        let mut first = true;
        for (shard, slot) in self.shards.iter().enumerate() {
            for l in slot.links.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(
                    out,
                    "{{\"shard\":{shard},\"peer\":{},\"epoch\":\"{:x}\",\"addr\":{},\"up\":{},\"rtt_us\":{},\"queued_bytes\":{},\"unacked_batches\":{},\"frames\":{},\"bytes\":{},\"resent\":{},\"dropped\":{},\"connects\":{}}}",
                    l.peer,
                    l.epoch,
                    json_str(&l.addr),
                    l.up,
                    l.rtt.map_or("null".to_owned(), |d| d.as_micros().to_string()),
                    l.queued_bytes,
                    l.unacked,
                    l.stats.frames,
                    l.stats.bytes,
                    l.stats.resent,
                    l.stats.dropped,
                    l.stats.connects
                );
            }
        }
        out.push_str("]}\n");
        out
    }

    /// The cluster's series: members, etcd reachability, and per shard and
    /// peer the link's state and counters.
    fn render_links(&self, out: &mut String) {
        let cluster = self.cluster.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = cluster.as_ref() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP vmqtt_cluster_nodes Nodes in the cluster's membership, this one included.\n# TYPE vmqtt_cluster_nodes gauge\nvmqtt_cluster_nodes {}",
            c.membership.nodes.len()
        );
        let _ = writeln!(
            out,
            "# HELP vmqtt_cluster_etcd_up 1 while etcd answers (else the last membership stays in force).\n# TYPE vmqtt_cluster_etcd_up gauge\nvmqtt_cluster_etcd_up {}",
            u8::from(c.membership.etcd_up)
        );
        if let Some(p) = &c.membership.partitions {
            let _ = writeln!(
                out,
                "# HELP vmqtt_cluster_partitions_owned Session-registry partitions (of 1024) this node owns.\n# TYPE vmqtt_cluster_partitions_owned gauge\nvmqtt_cluster_partitions_owned {}\n# HELP vmqtt_cluster_partition_epoch The partition map's epoch (its etcd revision).\n# TYPE vmqtt_cluster_partition_epoch gauge\nvmqtt_cluster_partition_epoch {}",
                p.owned_by(vmqtt::broker::NodeId(c.node)),
                p.revision
            );
        }
        let _ = writeln!(
            out,
            "# HELP vmqtt_cluster_is_controller 1 while this node is the cluster's controller.\n# TYPE vmqtt_cluster_is_controller gauge\nvmqtt_cluster_is_controller {}",
            u8::from(c.membership.controller == Some(vmqtt::broker::NodeId(c.node)))
        );
        drop(cluster);
        type LinkSeries = (
            &'static str,
            &'static str,
            &'static str,
            fn(&LinkInfo) -> u64,
        );
        let series: [LinkSeries; 8] = [
            (
                "vmqtt_cluster_link_up",
                "gauge",
                "1 while the shard's link to the peer is connected.",
                |l| u64::from(l.up),
            ),
            (
                "vmqtt_cluster_link_queued_bytes",
                "gauge",
                "Bytes the link holds for the peer (waiting and unacknowledged).",
                |l| l.queued_bytes,
            ),
            (
                "vmqtt_cluster_link_unacked_batches",
                "gauge",
                "Batches sent to the peer and not yet acknowledged.",
                |l| l.unacked,
            ),
            (
                "vmqtt_cluster_link_frames_total",
                "counter",
                "Batches written to the peer (resends included).",
                |l| l.stats.frames,
            ),
            (
                "vmqtt_cluster_link_bytes_total",
                "counter",
                "Bytes written to the peer.",
                |l| l.stats.bytes,
            ),
            (
                "vmqtt_cluster_link_resent_total",
                "counter",
                "Batches written again after a reconnect.",
                |l| l.stats.resent,
            ),
            (
                "vmqtt_cluster_link_dropped_total",
                "counter",
                "Messages dropped because the link held max_link_bytes.",
                |l| l.stats.dropped,
            ),
            (
                "vmqtt_cluster_link_connects_total",
                "counter",
                "Connections of the link established.",
                |l| l.stats.connects,
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP vmqtt_cluster_link_rtt_seconds The link's last measured round trip (a ping each second).\n# TYPE vmqtt_cluster_link_rtt_seconds gauge"
        );
        for (shard, slot) in self.shards.iter().enumerate() {
            for l in slot.links.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Some(rtt) = l.rtt {
                    let _ = writeln!(
                        out,
                        "vmqtt_cluster_link_rtt_seconds{{shard=\"{shard}\",peer=\"{}\"}} {:.6}",
                        l.peer,
                        rtt.as_secs_f64()
                    );
                }
            }
        }
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (shard, slot) in self.shards.iter().enumerate() {
                for l in slot.links.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    let _ = writeln!(
                        out,
                        "{name}{{shard=\"{shard}\",peer=\"{}\"}} {}",
                        l.peer,
                        value(l)
                    );
                }
            }
        }
    }

    /// `GET /groups`: every consumer group with its home shard, strategy,
    /// counters and members (each with its unfinished messages), as JSON.
    pub fn groups_json(&self) -> String {
        let mut out = String::from("{\"groups\":[");
        let mut first = true;
        for (shard, slot) in self.shards.iter().enumerate() {
            let groups = slot.groups.lock().unwrap_or_else(|e| e.into_inner());
            for g in groups.iter() {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(
                    out,
                    "{{\"group\":{},\"filter\":{},\"home_shard\":{shard},\"strategy\":\"{}\",\"members\":{},\"online\":{},\"pending\":{},\"dispatched\":{},\"redelivered\":{},\"dropped\":{},\"member_list\":[",
                    json_str(g.filter.share_group().unwrap_or("")),
                    json_str(g.filter.matching_filter()),
                    g.strategy.as_str(),
                    g.members,
                    g.online,
                    g.pending,
                    g.dispatched,
                    g.redelivered,
                    g.dropped
                );
                for (i, (client, online, n)) in g.member_inflight.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(
                        out,
                        "{sep}{{\"client_id\":{},\"online\":{online},\"inflight\":{n}}}",
                        json_str(client.as_str())
                    );
                }
                out.push_str("]}");
            }
        }
        out.push_str("]}\n");
        out
    }

    /// The groups' series: members, pending, dispatched, redelivered,
    /// dropped per group, and each member's unfinished messages.
    fn render_groups(&self, out: &mut String) {
        let mut all: Vec<GroupInfo> = Vec::new();
        for slot in &self.shards {
            all.extend(
                slot.groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            );
        }
        let series: [GroupSeries; 6] = [
            ("vmqtt_group_members", "gauge", "Members of a shared-subscription group.", |g| u64::from(g.members)),
            ("vmqtt_group_members_online", "gauge", "Connected members of a group.", |g| u64::from(g.online)),
            ("vmqtt_group_pending", "gauge", "Messages a group holds because no member can take them.", |g| g.pending),
            ("vmqtt_group_dispatched_total", "counter", "Messages a group sent to its members.", |g| g.dispatched),
            ("vmqtt_group_redelivered_total", "counter", "Messages in flight to a member that dropped, sent to another member (at least once: possible duplicates).", |g| g.redelivered),
            ("vmqtt_group_dropped_total", "counter", "Messages a group dropped: its queue full, QoS 0 with no member connected, the group gone.", |g| g.dropped),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for g in &all {
                let group = label(g.filter.share_group().unwrap_or(""));
                let filter = label(g.filter.matching_filter());
                let strategy = g.strategy.as_str();
                let _ = writeln!(
                    out,
                    "{name}{{group=\"{group}\",filter=\"{filter}\",strategy=\"{strategy}\"}} {}",
                    value(g)
                );
            }
        }
        let name = "vmqtt_group_member_inflight";
        let _ = writeln!(
            out,
            "# HELP {name} A member's unfinished QoS 1/2 messages of its group (its prefetch used), at most {GROUP_MEMBERS_LISTED} members per group.\n# TYPE {name} gauge"
        );
        for g in &all {
            let group = label(g.filter.share_group().unwrap_or(""));
            let filter = label(g.filter.matching_filter());
            for (client, online, n) in g.member_inflight.iter().take(GROUP_MEMBERS_LISTED) {
                let client = label(client.as_str());
                let _ = writeln!(
                    out,
                    "{name}{{group=\"{group}\",filter=\"{filter}\",client=\"{client}\",online=\"{online}\"}} {n}"
                );
            }
        }
    }

    /// Shard `shard` wrote a storage batch in `took` (from hand-off to the
    /// blocking thread until it returned).
    pub fn observe_store_write(&self, shard: usize, took: Duration) {
        let Some(slot) = self.shards.get(shard) else {
            return;
        };
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = STORE_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(STORE_BUCKETS_US.len());
        slot.store_buckets[i].fetch_add(1, Ordering::Relaxed);
        slot.store_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Shard `shard` serves (or stops serving) MQTT.
    pub fn set_ready(&self, shard: usize, ready: bool) {
        if let Some(slot) = self.shards.get(shard) {
            slot.ready.store(ready, Ordering::Relaxed);
        }
    }

    fn all_ready(&self) -> bool {
        self.shards.iter().all(|s| s.ready.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (i, (name, kind, help)) in SERIES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (shard, slot) in self.shards.iter().enumerate() {
                let v = slot.values[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {v}");
            }
        }
        for (i, (name, help)) in BY_QOS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (shard, slot) in self.shards.iter().enumerate() {
                for (qos, cell) in slot.by_qos[i].iter().enumerate() {
                    let v = cell.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{shard=\"{shard}\",qos=\"{qos}\"}} {v}");
                }
            }
        }
        for (i, (name, help, label, values)) in LABELLED.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (shard, slot) in self.shards.iter().enumerate() {
                for (value, cell) in values.iter().zip(&slot.labelled[i]) {
                    let v = cell.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{shard=\"{shard}\",{label}=\"{value}\"}} {v}");
                }
            }
        }
        let login = [&self.login.throttled, &self.login.checks];
        for ((name, help, label, values), cells) in LOGIN.iter().zip(login) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, cell) in values.iter().zip(cells) {
                let v = cell.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {v}");
            }
        }
        let name = "vmqtt_auth_busy_total";
        let busy = self.login.busy.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} Logins refused because every password verifier was busy and its queue full (CONNACK 0x89; MQTT 3: 0x03; process-wide).\n# TYPE {name} counter\n{name} {busy}"
        );
        let name = "vmqtt_storage_write_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to write one storage batch (group commit), per shard.\n# TYPE {name} histogram"
        );
        for (shard, slot) in self.shards.iter().enumerate() {
            let mut total = 0;
            for (i, cell) in slot.store_buckets.iter().enumerate() {
                total += cell.load(Ordering::Relaxed);
                let le = match STORE_BUCKETS_US.get(i) {
                    Some(us) => format!("{}", *us as f64 / 1e6),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {total}"
                );
            }
            let sum = slot.store_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {total}");
        }
        self.render_groups(&mut out);
        self.render_links(&mut out);
        out
    }
}

/// Accepts HTTP connections until the process stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let listener = Rc::new(listener);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(handle(stream, metrics.clone())).detach();
            }
            Err(e) => {
                warn!(error = %e, "http accept failed");
                timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One request per connection (`Connection: close`), at most 8 KiB of
/// headers, 5 s to send them.
async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 8192 {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
            return;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    debug!(method, path, "http request");
    let path = path.split('?').next().unwrap_or("");
    let text = "text/plain; version=0.0.4";
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", text, metrics.render()),
        ("GET", "/groups") => ("200 OK", "application/json", metrics.groups_json()),
        ("GET", "/cluster") => ("200 OK", "application/json", metrics.cluster_json()),
        ("GET", "/healthz") => ("200 OK", text, "ok\n".to_owned()),
        ("GET", "/readyz") if metrics.all_ready() => ("200 OK", text, "ready\n".to_owned()),
        ("GET", "/readyz") => ("503 Service Unavailable", text, "not ready\n".to_owned()),
        ("GET", _) => ("404 Not Found", text, "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", text, "GET only\n".to_owned()),
    };
    let _ = respond(&mut stream, status, kind, &body).await;
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_render_as_series_and_json_with_escaped_names() {
        use vmqtt::broker::Strategy;
        use vmqtt::topic::TopicFilter;
        use vmqtt::ClientId;
        let m = Metrics::new(2, Arc::new(LoginCounters::default()));
        let g = GroupInfo {
            filter: TopicFilter::from_static("$share/jobs/a/\"q\"/#").unwrap(),
            strategy: Strategy::LeastInflight,
            members: 2,
            online: 1,
            pending: 5,
            dispatched: 40,
            redelivered: 3,
            dropped: 1,
            member_inflight: vec![
                (ClientId::new("w\\1".into()), true, 4),
                (ClientId::new("w2".into()), false, 0),
            ],
        };
        m.publish_groups(1, vec![g]);
        let text = m.render();
        let labels = r#"group="jobs",filter="a/\"q\"/#",strategy="least_inflight""#;
        assert!(
            text.contains(&format!("vmqtt_group_members{{{labels}}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!("vmqtt_group_pending{{{labels}}} 5\n")));
        assert!(text.contains(&format!("vmqtt_group_redelivered_total{{{labels}}} 3\n")));
        assert!(text.contains(
            r#"vmqtt_group_member_inflight{group="jobs",filter="a/\"q\"/#",client="w\\1",online="true"} 4"#
        ));
        let json = m.groups_json();
        assert!(json.starts_with(r#"{"groups":[{"group":"jobs","filter":"a/\"q\"/#","home_shard":1,"strategy":"least_inflight","members":2,"online":1,"pending":5,"#), "{json}");
        assert!(
            json.contains(r#"{"client_id":"w\\1","online":true,"inflight":4}"#),
            "{json}"
        );
        m.publish_groups(1, Vec::new());
        assert_eq!(m.groups_json(), "{\"groups\":[]}\n");
    }

    #[test]
    fn renders_every_series_for_every_shard() {
        let login = Arc::new(LoginCounters::default());
        login.throttled[1].store(12, Ordering::Relaxed);
        login.checks[0].store(30, Ordering::Relaxed);
        login.busy.store(2, Ordering::Relaxed);
        let m = Metrics::new(2, login);
        let mut stats = ShardStats {
            connections: 3,
            messages_received: 7,
            received_by_qos: [4, 2, 1],
            acl_denied: [5, 6, 7],
            auth_refused: [8, 9],
            ..ShardStats::default()
        };
        stats.limit_hits[Limit::Subscriptions as usize] = 4;
        m.publish(1, &stats);
        m.observe_store_write(0, Duration::from_micros(80));
        m.observe_store_write(0, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("# TYPE vmqtt_connections gauge"));
        assert!(text.contains("vmqtt_connections{shard=\"0\"} 0\n"));
        assert!(text.contains("vmqtt_connections{shard=\"1\"} 3\n"));
        assert!(text.contains("vmqtt_messages_received_total{shard=\"1\",qos=\"1\"} 2\n"));
        assert!(text.contains("vmqtt_messages_received_total{shard=\"1\",qos=\"2\"} 1\n"));
        assert!(text.contains("vmqtt_limit_hits_total{shard=\"1\",limit=\"subscriptions\"} 4\n"));
        assert!(text.contains("vmqtt_limit_hits_total{shard=\"0\",limit=\"connect_rate\"} 0\n"));
        assert!(text.contains("vmqtt_acl_denied_total{shard=\"1\",action=\"subscribe\"} 6\n"));
        assert!(text.contains("vmqtt_acl_denied_total{shard=\"1\",action=\"revoked\"} 7\n"));
        assert!(
            text.contains("vmqtt_auth_refused_total{shard=\"1\",reason=\"bad_credentials\"} 8\n")
        );
        assert!(text.contains("vmqtt_auth_throttled_total{by=\"address\"} 0\n"));
        assert!(text.contains("vmqtt_auth_throttled_total{by=\"user\"} 12\n"));
        assert!(text.contains("vmqtt_auth_password_checks_total{how=\"cache\"} 30\n"));
        assert!(text.contains("vmqtt_auth_busy_total 2\n"));
        // Cumulative buckets: 80 us is under 100 us, 3 ms under 5 ms.
        assert!(text.contains("vmqtt_storage_write_seconds_bucket{shard=\"0\",le=\"0.00005\"} 0\n"));
        assert!(text.contains("vmqtt_storage_write_seconds_bucket{shard=\"0\",le=\"0.0001\"} 1\n"));
        assert!(text.contains("vmqtt_storage_write_seconds_bucket{shard=\"0\",le=\"0.005\"} 2\n"));
        assert!(text.contains("vmqtt_storage_write_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("vmqtt_storage_write_seconds_count{shard=\"0\"} 2\n"));
        let histogram = 2 * (STORE_BUCKETS_US.len() + 1 + 2);
        let labelled: usize = LABELLED
            .iter()
            .map(|(_, _, _, values)| 2 * values.len())
            .sum();
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            2 * SERIES.len() + 2 * 3 * BY_QOS.len() + histogram + labelled + 2 * 2 + 1
        );
    }

    #[test]
    fn ready_only_when_every_shard_is() {
        let m = Metrics::new(2, Arc::default());
        m.set_ready(0, true);
        assert!(!m.all_ready());
        m.set_ready(1, true);
        assert!(m.all_ready());
    }
}
