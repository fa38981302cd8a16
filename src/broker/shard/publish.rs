//! PUBLISH from a client to every session that takes it: ACL checks,
//! routing to shards, local and shared delivery, per-session queues.

use super::*;

/// What became of the message being routed on this shard: sessions that
/// took it, and sessions whose queue bound refused it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    pub(super) delivered: u32,
    pub(super) refused: u32,
    /// Deliveries forwarded to a moved session's new node with the
    /// input's relay token (each acknowledged by that node's link).
    pub(super) forwards: u32,
}

impl ShardCore {
    /// Checks a topic name or filter against `max_topic_length` (the whole
    /// string) and `max_topic_levels` (`levels_of`: the filter without a
    /// `$share/group/` prefix).
    pub(super) fn check_topic(&self, whole: &str, levels_of: &str) -> Result<(), Limit> {
        if whole.len() > self.config.max_topic_length as usize {
            return Err(Limit::TopicLength);
        }
        let levels = memchr::memchr_iter(b'/', levels_of.as_bytes()).count() + 1;
        if levels > self.config.max_topic_levels as usize {
            return Err(Limit::TopicLevels);
        }
        Ok(())
    }

    /// Asks the ACL whether the client of `conn_id` may publish to `topic`
    /// (counting a denial). `client_id`: `None` while a CONNECT with an empty
    /// one is checked (a pattern with `%c` then matches nothing).
    pub(super) fn may_publish(
        &mut self,
        conn_id: ConnId,
        client_id: Option<&str>,
        topic: &str,
    ) -> bool {
        let Some(acl) = &self.config.authorizer else {
            return true;
        };
        let username = self.conns.get(&conn_id).and_then(|c| c.identity.username());
        let allowed = acl.allow_publish(client_id.unwrap_or(""), username, topic);
        if !allowed {
            self.stats.acl_denied[0] += 1;
        }
        allowed
    }

    /// Answers a PUBLISH the broker does not route: v5 QoS 1/2 get `rc` in
    /// their PUBACK/PUBREC. MQTT 3 has no negative acknowledgement: the
    /// message is acknowledged and dropped, or with `v3_close` the
    /// connection is closed. QoS 0 is dropped.
    pub(super) fn refuse_publish(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        qos: QoS,
        packet_id: Option<PacketId>,
        rc: ReasonCode,
        v3_close: bool,
    ) {
        let v5 = self.conns.get(&conn_id).is_some_and(|c| c.version.is_v5());
        if !v5 && v3_close {
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        let reason = if v5 { rc } else { ReasonCode::SUCCESS };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(
                conn_id,
                &Packet::PubAck(PubResponse::with_reason(id, reason)),
            ),
            (QoS::ExactlyOnce, Some(id)) => self.send(
                conn_id,
                &Packet::PubRec(PubResponse::with_reason(id, reason)),
            ),
            _ => {}
        }
    }

    pub(super) fn on_publish(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        cid: &ClientId,
        mut p: Publish,
    ) {
        self.stats.messages_received += 1;
        self.stats.received_by_qos[p.qos as usize] += 1;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let v5 = conn.version.is_v5();
        let receive_max = usize::from(conn.receive_max.max(1));
        // Topic alias (v5 §3.3.2.3.4).
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias > conn.alias_max {
                let rc = ReasonCode::TOPIC_ALIAS_INVALID;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if p.topic.is_empty() {
                match conn.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        let rc = ReasonCode::PROTOCOL_ERROR;
                        return self.close(now, conn_id, CloseReason::ProtocolError(rc));
                    }
                }
            } else {
                conn.aliases_in.insert(alias, p.topic.clone());
            }
        }
        // [MQTT-3.3.4-6]: clients do not send subscription identifiers.
        if !p.properties.subscription_identifiers.is_empty() {
            let rc = ReasonCode::PROTOCOL_ERROR;
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        if p.retain && !self.config.retain_available {
            let rc = ReasonCode::RETAIN_NOT_SUPPORTED;
            return self.close(now, conn_id, CloseReason::ProtocolError(rc));
        }
        if v5 && !p.payload_format_valid() {
            let rc = ReasonCode::PAYLOAD_FORMAT_INVALID;
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    self.send(conn_id, &Packet::PubAck(PubResponse::with_reason(id, rc)))
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    self.send(conn_id, &Packet::PubRec(PubResponse::with_reason(id, rc)))
                }
                _ => self.close(now, conn_id, CloseReason::ProtocolError(rc)),
            }
            return;
        }
        if p.topic.as_str().starts_with('$') {
            // Clients may not publish into $-topics (reserved for the server).
            let rc = ReasonCode::TOPIC_NAME_INVALID;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, false);
        }
        if let Err(limit) = self.check_topic(p.topic.as_str(), p.topic.as_str()) {
            self.stats.limit_hits[limit as usize] += 1;
            let rc = ReasonCode::TOPIC_NAME_INVALID;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, true);
        }
        if !self.may_publish(conn_id, Some(cid.as_str()), p.topic.as_str()) {
            let rc = ReasonCode::NOT_AUTHORIZED;
            return self.refuse_publish(now, conn_id, p.qos, p.packet_id, rc, false);
        }
        if p.qos == QoS::ExactlyOnce {
            let Some(id) = p.packet_id else { return };
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            if session.incoming_qos2_len() >= receive_max && !session.has_incoming_qos2(id) {
                self.stats.limit_hits[Limit::ReceiveMaximum as usize] += 1;
                let rc = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if !session.begin_incoming_qos2(id) {
                // A resend of a message already accepted: acknowledge, do not
                // deliver twice.
                self.send(conn_id, &Packet::PubRec(PubResponse::new(id)));
                return;
            }
            if session.stored {
                self.store.ops.push(StoreOp::PutInboundQos2 {
                    client_id: cid.clone(),
                    packet_id: id,
                });
            }
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let msg = self.message_from_publish(now, cid, p);
        // A retained QoS 1/2 message is acknowledged once every replica has
        // it, so a subscriber anywhere sees it after the publisher's PUBACK.
        let wait_replicas = msg.retain && packet_id.is_some() && self.shards > 1;
        // With storage, the publisher is acknowledged once every shard that
        // takes the message has stored it for its persistent sessions.
        // In a cluster, a QoS 1/2 publish waits for the links' acknowledgement
        // of every node it went to too.
        let wait_stores = packet_id.is_some()
            && ((self.config.persistence && self.shards > 1) || self.cluster.is_some());
        let token = (wait_replicas || wait_stores).then(|| self.new_token());
        self.outcome = Outcome::default();
        let forwards_before = self.stats.forwarded;
        self.relay = token.filter(|_| wait_stores);
        let (matched, forwarded) = self.publish_with_token(now, msg, token, wait_stores);
        self.relay = None;
        let local = self.outcome;
        // Every target says whether it took the message only if each
        // forward is acknowledged.
        let all_report = (self.stats.forwarded - forwards_before) as usize == forwarded;
        let remaining =
            forwarded + local.forwards as usize + if wait_replicas { self.shards - 1 } else { 0 };
        let rc = if !v5 {
            ReasonCode::SUCCESS
        } else if !matched {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else if forwarded == 0 && all_report && local.delivered == 0 && local.refused > 0 {
            // It reached no subscriber: every queue it was for is full.
            ReasonCode::QUOTA_EXCEEDED
        } else {
            ReasonCode::SUCCESS
        };
        let reply = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(PubResponse::with_reason(id, rc)),
            (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(PubResponse::with_reason(id, rc)),
            _ => return,
        };
        match token {
            Some(token) if remaining > 0 => {
                let pending = Pending {
                    remaining,
                    quota_check: v5 && matched && all_report,
                    delivered: local.delivered > 0,
                    refused: local.refused > 0,
                    after: self.store.own_barrier(),
                    waiter: Waiter::Client {
                        conn: conn_id,
                        client: cid.clone(),
                        replies: vec![reply],
                        retained_for: Vec::new(),
                    },
                };
                self.pending.insert(token, pending);
            }
            _ => self.send(conn_id, &reply),
        }
    }

    pub(super) fn message_from_publish(
        &mut self,
        now: Instant,
        cid: &ClientId,
        p: Publish,
    ) -> Arc<Message> {
        let mut properties = p.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        properties.topic_alias = None;
        Arc::new(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin: Some(cid.clone()),
            uid: self.next_uid(),
        })
    }

    // --------------------------------------------------------- routing

    /// Publishes `msg` from this shard: updates the retained replicas and
    /// routes it to every shard with matching subscribers. Returns whether
    /// any subscription matched.
    pub(super) fn publish(&mut self, now: Instant, msg: Arc<Message>) -> bool {
        self.publish_with_token(now, msg, None, false).0
    }

    /// [`ShardCore::publish`], asking every other replica to acknowledge a
    /// retained update with `token`, and with `ack_forwards` every shard
    /// the message is forwarded to. Returns whether any subscription matched
    /// and the number of forwards that will be acknowledged.
    pub(super) fn publish_with_token(
        &mut self,
        now: Instant,
        msg: Arc<Message>,
        token: Option<u64>,
        ack_forwards: bool,
    ) -> (bool, usize) {
        if msg.retain {
            let version = self.retained.next_version(
                msg.topic.as_str(),
                self.wall_ms(now),
                self.node(),
                self.id,
            );
            self.cluster_retain(&msg, version);
            self.apply_retained(&msg, version);
            for s in 0..self.shards {
                if s != self.id.get() {
                    let from = self.id;
                    self.outbox[s].push(ShardMsg::Retain {
                        msg: msg.clone(),
                        version,
                        from,
                        token,
                    });
                }
            }
        }
        let ack = token.filter(|_| ack_forwards);
        self.route(now, msg, ack)
    }

    pub(super) fn route(
        &mut self,
        now: Instant,
        msg: Arc<Message>,
        ack: Option<u64>,
    ) -> (bool, usize) {
        let mut acked = 0;
        let Targets {
            shards,
            wide,
            shared,
        } = self.routes.targets(&msg.topic);
        // (A message for other nodes' groups only skips plain subscribers.)
        let plain = !self.groups_only();
        let mut matched = plain && !wide.is_empty();
        let targets = (0..self.shards.min(64))
            .filter(|&s| plain && shards[s])
            .map(|s| ShardId::new(s as u16))
            .chain(wide.into_iter().filter(|_| plain));
        for shard in targets {
            matched = true;
            if shard == self.id {
                self.deliver_local(now, &msg);
            } else if let Some(q) = self.outbox.get_mut(shard.get()) {
                q.push(match ack {
                    Some(token) => {
                        acked += 1;
                        ShardMsg::PublishAcked {
                            msg: msg.clone(),
                            from: self.id,
                            token,
                        }
                    }
                    None => ShardMsg::Publish(msg.clone()),
                });
                self.stats.forwarded += 1;
            }
        }
        let (here, away) = self.split_groups(&msg, shared);
        matched |= !here.is_empty();
        for filter in here {
            acked += self.route_to_group(now, filter, &msg, ack);
        }
        let nodes = self.route_to_nodes(&msg, ack, away);
        if nodes > 0 {
            matched = true;
            if ack.is_some() {
                acked += nodes;
            }
        }
        (matched, acked)
    }

    /// Delivers to this shard's non-shared subscribers of `msg.topic`, once
    /// per session whatever the number of its matching subscriptions (with
    /// the highest QoS and every subscription identifier, v5 §3.3.4).
    pub(super) fn deliver_local(&mut self, now: Instant, msg: &Arc<Message>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.routes.for_each_local(&msg.topic, |cid, sub| {
            if sub.options.no_local && msg.origin.as_ref() == Some(cid) {
                return;
            }
            let agg = scratch.entry(cid.clone()).or_default();
            agg.qos = agg.qos.max(sub.options.qos as u8);
            agg.retain_as_published |= sub.options.retain_as_published;
            if let Some(id) = sub.id {
                agg.ids.push(id);
            }
        });
        for (cid, agg) in scratch.drain() {
            let qos = msg
                .qos
                .min(QoS::from_u8(agg.qos).unwrap_or(QoS::ExactlyOnce));
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain: msg.retain && agg.retain_as_published,
                sub_ids: agg.ids,
                store: None,
                group: None,
            };
            self.deliver(now, &cid, d);
        }
        self.scratch = scratch;
    }

    pub(super) fn deliver(&mut self, now: Instant, cid: &ClientId, d: Delivery) {
        if !self.sessions.contains_key(cid) {
            // (A session that just left for another node: its messages
            // follow it there.)
            self.forward_moved(cid, &d);
            return;
        }
        if let Some(uid) = d.msg.uid {
            if self.seen_before(cid, uid) {
                // Taken already (directly and forwarded, or in its handover).
                self.outcome.delivered += 1;
                return;
            }
        }
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if d.qos == QoS::AtMostOnce {
            // QoS 0 is not kept for an absent client. For a connected one it
            // goes straight out when nothing is queued ahead of it and the
            // output buffer has room; otherwise it waits in the bounded
            // session queue like QoS 1/2, absorbing bursts.
            let Some(conn_id) = session.conn else {
                session.dropped += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[0] += 1;
                self.group_done(now, cid, &d);
                return;
            };
            let direct = session.queued_len() == 0
                && self
                    .conns
                    .get(&conn_id)
                    .is_some_and(|c| c.out.len() < self.config.max_output_buffer);
            if direct {
                let version = self
                    .conns
                    .get(&conn_id)
                    .map_or(ProtocolVersion::V5, |c| c.version);
                if let Some(p) = outbound_publish(now, &d, None, false, version) {
                    if self.send_publish(conn_id, p) {
                        self.outcome.delivered += 1;
                    } else {
                        self.count_drop(cid, QoS::AtMostOnce);
                    }
                }
                self.group_done(now, cid, &d);
                return;
            }
        }
        let connected = session.conn.is_some();
        self.enqueue_delivery(now, cid, d);
        if connected {
            self.pump(now, cid);
        }
    }

    /// Puts `d` in the session queue of `cid` (storing it for a persistent
    /// session), or drops and counts it if the queue is full.
    pub(super) fn enqueue_delivery(&mut self, now: Instant, cid: &ClientId, d: Delivery) {
        self.enqueue_delivery_bounded(now, cid, d, self.config.max_queued_messages);
    }

    pub(super) fn enqueue_delivery_bounded(
        &mut self,
        now: Instant,
        cid: &ClientId,
        mut d: Delivery,
        limit: usize,
    ) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if let Some(conn) = session.conn.and_then(|c| self.conns.get(&c)) {
            let window = conn.client_receive_max.min(self.config.max_inflight).max(1);
            if d.qos != QoS::AtMostOnce && session.inflight_len() >= usize::from(window) {
                self.stats.limit_hits[Limit::Inflight as usize] += 1;
            }
        }
        if session.stored && d.qos != QoS::AtMostOnce {
            // A persistent session's QoS 1/2 messages are in the log: they
            // are bounded by what the log may hold for it, not by the
            // in-memory `max_queued_messages`.
            let bounds = StoredBounds {
                messages: self.config.max_stored_messages,
                bytes: self.config.max_stored_bytes,
            };
            if let Err(limit) = session.admit_stored(&d.msg, bounds) {
                self.stats.limit_hits[limit as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[d.qos as usize] += 1;
                self.outcome.refused += 1;
                self.note_limited(now, cid, limit, 1);
                self.group_done(now, cid, &d);
                return;
            }
            let seq = session.store_seq;
            session.store_seq += 1;
            let msg_id = self.store.retain(&d.msg);
            d.store = Some(StoreRef { msg_id, seq });
            self.store.put_entry(cid, &d, OutState::Queued);
            if let Some(session) = self.sessions.get_mut(cid) {
                session.push_stored(d);
            }
            self.outcome.delivered += 1;
            return;
        }
        match session.enqueue(d, limit) {
            Ok(()) => self.outcome.delivered += 1,
            Err(Dropped::Displaced) => {
                self.outcome.delivered += 1;
                self.stats.limit_hits[Limit::Queued as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[0] += 1;
                self.note_limited(now, cid, Limit::Queued, 1);
            }
            Err(Dropped::New(d)) => {
                self.outcome.refused += 1;
                self.stats.limit_hits[Limit::Queued as usize] += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[d.qos as usize] += 1;
                self.note_limited(now, cid, Limit::Queued, 1);
                self.group_done(now, cid, &d);
            }
        }
    }

    /// Moves queued QoS 1/2 messages of `cid` into flight while the window and
    /// the connection's output buffer allow.
    pub(super) fn pump(&mut self, now: Instant, cid: &ClientId) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        let Some(conn_id) = session.conn else { return };
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let version = conn.version;
        let window = usize::from(conn.client_receive_max.min(self.config.max_inflight).max(1));
        loop {
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            if conn.out.len() >= self.config.max_output_buffer {
                return;
            }
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            if session.queued_len() == 0 {
                if let Some((m, sub)) = session.next_retained() {
                    let d = Delivery {
                        qos: m.qos.min(sub.options.qos),
                        retain: true,
                        sub_ids: sub.id.into_iter().collect(),
                        msg: m,
                        store: None,
                        group: None,
                    };
                    // The queue is empty: this one always fits.
                    self.enqueue_delivery_bounded(now, cid, d, usize::MAX);
                    continue;
                }
            }
            let Some((id, d)) = session.start_next(window) else {
                return;
            };
            let publish = outbound_publish(now, &d, id, false, version);
            if let (Some(_), Some(id)) = (&publish, id) {
                // Stored before it is sent (the output waits for it), so a
                // restart resends it with the same packet id.
                let state = match d.qos {
                    QoS::ExactlyOnce => OutState::AwaitPubRec(id),
                    _ => OutState::AwaitPubAck(id),
                };
                self.store.put_entry(cid, &d, state);
            }
            let sent = match publish {
                Some(p) => self.send_publish(conn_id, p),
                None => false,
            };
            if !sent {
                if let (Some(session), Some(id)) = (self.sessions.get_mut(cid), id) {
                    session.abandon(id);
                }
                if let Some(r) = d.store {
                    self.store.dequeue(cid, r);
                }
                self.count_drop(cid, d.qos);
                self.group_done(now, cid, &d);
            } else if id.is_none() {
                // Sent at QoS 0: finished.
                self.group_done(now, cid, &d);
            }
        }
    }

    /// Reports `dropped` messages of `cid` dropped at `limit`, as an
    /// [`IoEvent::Limited`] at most every [`LIMITED_LOG_INTERVAL`].
    pub(super) fn note_limited(
        &mut self,
        now: Instant,
        cid: &ClientId,
        limit: Limit,
        dropped: u64,
    ) {
        let Some(s) = self.sessions.get_mut(cid) else {
            return;
        };
        s.unlogged_drops += dropped;
        if s.last_limit_log
            .is_some_and(|t| now < t + LIMITED_LOG_INTERVAL)
        {
            return;
        }
        s.last_limit_log = Some(now);
        let dropped = std::mem::take(&mut s.unlogged_drops);
        self.events.push_back(IoEvent::Limited {
            client_id: cid.clone(),
            limit,
            dropped,
        });
    }

    pub(super) fn count_drop(&mut self, cid: &ClientId, qos: QoS) {
        if let Some(session) = self.sessions.get_mut(cid) {
            session.dropped += 1;
        }
        self.stats.messages_dropped += 1;
        self.stats.dropped_by_qos[qos as usize] += 1;
    }
}
