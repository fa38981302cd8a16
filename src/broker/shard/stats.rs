//! Counters and gauges ([`ShardStats`]) and the `$SYS` topics shard 0
//! publishes.

use super::*;

impl ShardCore {
    /// Current counters and gauges: O(1), every gauge is kept as it
    /// changes (connections as they enter and leave
    /// `ConnState::Connected`, subscriptions as sessions gain and lose
    /// them, in-flight and queued messages in the sessions' shared
    /// [`Gauges`]).
    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats;
        s.sessions = self.sessions.len() as u64;
        s.inflight = self.gauges.inflight();
        s.queued = self.gauges.queued();
        s.retained = self.retained.len() as u64;
        s
    }

    /// The gauges `(connections, subscriptions, inflight, queued)` counted
    /// by walking every connection and session: what [`ShardCore::stats`]
    /// must report (tests).
    #[cfg(test)]
    pub(crate) fn recounted_gauges(&self) -> (u64, u64, u64, u64) {
        let connections = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Connected)
            .count() as u64;
        let (mut subscriptions, mut inflight, mut queued) = (0, 0, 0);
        for session in self.sessions.values() {
            subscriptions += session.subscriptions.len() as u64;
            inflight += session.inflight_len() as u64;
            queued += session.queued_len() as u64;
        }
        (connections, subscriptions, inflight, queued)
    }

    /// Shard 0 publishes the `$SYS` topics, retained, from every shard's
    /// latest counters.
    pub(super) fn publish_sys(&mut self, now: Instant) {
        let mut total = ShardStats::default();
        for s in &self.sys_stats {
            total.connections += s.connections;
            total.sessions += s.sessions;
            total.subscriptions += s.subscriptions;
            total.messages_received += s.messages_received;
            total.messages_sent += s.messages_sent;
            total.messages_dropped += s.messages_dropped;
            total.forwarded += s.forwarded;
            total.inflight += s.inflight;
            total.queued += s.queued;
            total.store_writes += s.store_writes;
            total.store_write_us += s.store_write_us;
            total.store_write_max_us = total.store_write_max_us.max(s.store_write_max_us);
            for (t, n) in total.limit_hits.iter_mut().zip(s.limit_hits) {
                *t += n;
            }
            for (t, n) in total.acl_denied.iter_mut().zip(s.acl_denied) {
                *t += n;
            }
            for i in 0..2 {
                total.auth_refused[i] += s.auth_refused[i];
            }
            for q in 0..3 {
                total.received_by_qos[q] += s.received_by_qos[q];
                total.sent_by_qos[q] += s.sent_by_qos[q];
                total.dropped_by_qos[q] += s.dropped_by_qos[q];
            }
        }
        total.retained = self.retained.len() as u64;
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let mut items: Vec<(&'static str, String)> = vec![
            (
                "$SYS/broker/version",
                concat!("vmqtt ", env!("CARGO_PKG_VERSION")).to_string(),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                total.connections.to_string(),
            ),
            ("$SYS/broker/sessions/count", total.sessions.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                total.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                total.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", total.messages_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                total.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/messages/forwarded",
                total.forwarded.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                total.retained.to_string(),
            ),
            ("$SYS/broker/messages/inflight", total.inflight.to_string()),
            ("$SYS/broker/messages/queued", total.queued.to_string()),
            ("$SYS/broker/storage/writes", total.store_writes.to_string()),
            (
                "$SYS/broker/storage/write time/mean us",
                (total.store_write_us / total.store_writes.max(1)).to_string(),
            ),
            (
                "$SYS/broker/storage/write time/max us",
                total.store_write_max_us.to_string(),
            ),
        ];
        const BY_QOS: [[&str; 3]; 3] = [
            [
                "$SYS/broker/messages/received/qos0",
                "$SYS/broker/messages/received/qos1",
                "$SYS/broker/messages/received/qos2",
            ],
            [
                "$SYS/broker/messages/sent/qos0",
                "$SYS/broker/messages/sent/qos1",
                "$SYS/broker/messages/sent/qos2",
            ],
            [
                "$SYS/broker/messages/dropped/qos0",
                "$SYS/broker/messages/dropped/qos1",
                "$SYS/broker/messages/dropped/qos2",
            ],
        ];
        let counts = [
            total.received_by_qos,
            total.sent_by_qos,
            total.dropped_by_qos,
        ];
        for (topics, values) in BY_QOS.iter().zip(counts) {
            for (topic, v) in topics.iter().zip(values) {
                items.push((topic, v.to_string()));
            }
        }
        items.extend(self.cluster_sys());
        let mut named: Vec<(String, u64)> = Limit::ALL
            .iter()
            .map(|l| {
                let topic = format!("$SYS/broker/limits/{}", l.as_str());
                (topic, total.limit_hits[*l as usize])
            })
            .collect();
        named.extend([
            (
                "$SYS/broker/acl/denied/publish".to_owned(),
                total.acl_denied[0],
            ),
            (
                "$SYS/broker/acl/denied/subscribe".to_owned(),
                total.acl_denied[1],
            ),
            (
                "$SYS/broker/acl/denied/revoked".to_owned(),
                total.acl_denied[2],
            ),
            (
                "$SYS/broker/auth/refused/bad credentials".to_owned(),
                total.auth_refused[0],
            ),
            (
                "$SYS/broker/auth/refused/not authorized".to_owned(),
                total.auth_refused[1],
            ),
        ]);
        let items = items
            .into_iter()
            .map(|(t, v)| (TopicName::from_static(t), v))
            .chain(
                named
                    .into_iter()
                    .map(|(t, v)| (TopicName::new(ByteStr::from(t)), v.to_string())),
            );
        for (topic, value) in items {
            if let Ok(topic) = topic {
                self.publish_sys_value(now, topic, value);
            }
        }
    }

    /// One `$SYS` value, published retained at QoS 0.
    fn publish_sys_value(&mut self, now: Instant, topic: TopicName, value: String) {
        let msg = Arc::new(Message {
            topic,
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: None,
            uid: None,
        });
        self.publish(now, msg);
    }

    /// The groups whose home is this shard publish their `$SYS` topics,
    /// retained: `$SYS/broker/groups/{group}/{filter}/{value}`, the filter
    /// with `+` and `#` written `%2B` and `%23` (not allowed in a topic
    /// name) and `%` as `%25`.
    pub(super) fn publish_group_sys(&mut self, now: Instant) {
        for g in self.groups.info() {
            let group = g.filter.share_group().unwrap_or("");
            let filter = g
                .filter
                .matching_filter()
                .replace('%', "%25")
                .replace('+', "%2B")
                .replace('#', "%23");
            let values: [(&str, String); 7] = [
                ("strategy", g.strategy.as_str().to_owned()),
                ("members", g.members.to_string()),
                ("online", g.online.to_string()),
                ("pending", g.pending.to_string()),
                ("dispatched", g.dispatched.to_string()),
                ("redelivered", g.redelivered.to_string()),
                ("dropped", g.dropped.to_string()),
            ];
            for (name, value) in values {
                let topic = format!("$SYS/broker/groups/{group}/{filter}/{name}");
                if let Ok(topic) = TopicName::new(ByteStr::from(topic)) {
                    self.publish_sys_value(now, topic, value);
                }
            }
        }
    }
}
