//! Session lifecycle: CONNECT (authentication, takeover, session
//! present), DISCONNECT, detach, wills, resending what was in flight.

use super::*;

impl ShardCore {
    pub(super) fn on_connect(&mut self, now: Instant, conn_id: ConnId, c: Connect) {
        if let Some(rc) = self.connect_refusal(conn_id, &c) {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.version = c.protocol;
            }
            self.send(conn_id, &Packet::ConnAck(ConnAck::refuse(rc)));
            self.close(now, conn_id, CloseReason::Refused(rc));
            return;
        }
        if self.is_fenced() {
            let rc = ReasonCode::SERVER_UNAVAILABLE;
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.version = c.protocol;
            }
            self.send(conn_id, &Packet::ConnAck(ConnAck::refuse(rc)));
            self.close(now, conn_id, CloseReason::Refused(rc));
            return;
        }
        // In a cluster the client id is claimed first (the session may
        // have to come from another node): see `takeover.rs`.
        if let Some(owner) = self.must_claim(c.client_id.as_str()) {
            self.begin_claim(now, conn_id, owner, c);
            return;
        }
        self.accept_connect(now, conn_id, c);
    }

    /// A CONNECT that may go on: takes the session over (on this shard),
    /// resumes or creates it, and answers CONNACK.
    pub(super) fn accept_connect(&mut self, now: Instant, conn_id: ConnId, c: Connect) {
        let v5 = c.protocol.is_v5();
        let assigned = c.client_id.is_empty();
        let client_id = if assigned {
            self.assign_client_id()
        } else {
            ClientId::new(c.client_id.clone())
        };

        let mut ack = ConnAck::accept(false);
        let mut keep_alive = c.keep_alive;
        if self.config.max_keepalive > 0
            && (keep_alive == 0 || keep_alive > self.config.max_keepalive)
        {
            keep_alive = self.config.max_keepalive;
            if v5 {
                ack.properties.server_keep_alive = Some(keep_alive);
            }
        }
        let expiry = if v5 {
            let asked = c.properties.session_expiry_interval.unwrap_or(0);
            let granted = asked.min(self.config.max_session_expiry);
            if granted != asked {
                ack.properties.session_expiry_interval = Some(granted);
            }
            granted
        } else if c.clean_start {
            0
        } else {
            self.config.max_session_expiry
        };

        // Take over: close the connection that holds the session now.
        if let Some(old) = self
            .sessions
            .get_mut(&client_id)
            .and_then(|s| s.conn.take())
        {
            self.close_taken_over(now, old);
        }
        if !self.sessions.contains_key(&client_id) {
            // (What is left here of an earlier session that left for
            // another node: ends, or is the session if never taken.)
            self.reclaim_moved(now, &client_id, c.clean_start);
        }
        let session_present = !c.clean_start && self.sessions.contains_key(&client_id);
        self.trace(|| format!("connect {client_id}: session present={session_present}"));
        if c.clean_start {
            // The old session ends: its will (if any) goes out now.
            if let Some(will) = self
                .sessions
                .get_mut(&client_id)
                .and_then(|s| s.will.take())
            {
                self.publish_will(now, &client_id, *will);
            }
            self.remove_session(&client_id);
        }
        let session = self.sessions.entry(client_id.clone()).or_insert_with(|| {
            let mut s = Session::new(client_id.clone(), c.protocol);
            s.budget = self.config.queue_budget.clone();
            s.share_gauges(self.gauges.clone());
            Box::new(s)
        });
        session.version = c.protocol;
        session.conn = Some(conn_id);
        self.generations += 1;
        session.generation = self.generations;
        session.expiry_interval = expiry;
        // A reconnect cancels a pending will of the previous connection.
        session.will = c.will.map(Box::new);
        session.disconnected_at = None;
        self.store_session(&client_id);

        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.set_state(ConnState::Connected, &mut self.stats.connections);
        conn.client_id = Some(client_id.clone());
        conn.version = c.protocol;
        conn.keep_alive = Duration::from_secs(u64::from(keep_alive));
        conn.client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
        conn.client_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let aliases_out = match (v5, self.config.outbound_topic_aliases) {
            (true, true) => c.properties.topic_alias_maximum.unwrap_or(0),
            _ => 0,
        };
        conn.aliases_out = OutboundAliases::new(aliases_out);
        conn.problem_info = c.properties.request_problem_information.unwrap_or(true);
        conn.connect_expiry_zero = expiry == 0;
        conn.receive_max = self.config.receive_maximum.max(1);
        conn.alias_max = self.config.topic_alias_maximum;
        if keep_alive > 0 {
            let deadline = now + conn.keep_alive.mul_f32(1.5);
            self.timers
                .push(Reverse((deadline, Timer::KeepAlive(conn_id))));
        }

        ack.session_present = session_present;
        self.events.push_back(IoEvent::Connected {
            conn: conn_id,
            client_id: client_id.clone(),
            version: c.protocol,
            session_present,
        });
        if v5 {
            let p = &mut ack.properties;
            p.receive_maximum = Some(conn.receive_max);
            p.maximum_packet_size = Some(conn.max_packet);
            p.topic_alias_maximum = Some(conn.alias_max);
            if !self.config.retain_available {
                p.retain_available = Some(false);
            }
            if assigned {
                p.assigned_client_identifier = Some(client_id.as_bytestr().clone());
            }
        }
        // A resumed session keeps only what this identity may still read.
        self.recheck_session(&client_id);
        self.send(conn_id, &Packet::ConnAck(ack));
        self.resend_inflight(now, conn_id, &client_id);
        self.pump(now, &client_id);
        self.group_member_online(now, &client_id);
    }

    /// Why a CONNECT is refused, if it is: credentials the I/O layer
    /// refused, an authentication method (enhanced authentication is not
    /// supported), or a will the client could not publish.
    pub(super) fn connect_refusal(&mut self, conn_id: ConnId, c: &Connect) -> Option<ReasonCode> {
        let conn = self.conns.get(&conn_id)?;
        if let Identity::Refused(rc) = conn.identity {
            let i = usize::from(rc != ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            self.stats.auth_refused[i] += 1;
            return Some(rc);
        }
        if c.protocol.is_v5() && c.properties.authentication_method.is_some() {
            return Some(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let will = c.will.as_ref()?;
        let topic = will.topic.as_str();
        if let Err(limit) = self.check_topic(topic, topic) {
            self.stats.limit_hits[limit as usize] += 1;
            return Some(ReasonCode::TOPIC_NAME_INVALID);
        }
        let client_id = if c.client_id.is_empty() {
            None
        } else {
            Some(c.client_id.as_str())
        };
        if !self.may_publish(conn_id, client_id, topic) {
            return Some(ReasonCode::NOT_AUTHORIZED);
        }
        None
    }

    /// A server-assigned client id that hashes to this shard.
    pub(super) fn assign_client_id(&mut self) -> ClientId {
        loop {
            self.next_assigned += 1;
            let id = format!(
                "vmqtt-{:x}-{:x}-{}",
                self.config.instance,
                self.id.get(),
                self.next_assigned
            );
            if home_shard(&id, self.shards) == self.id && !self.sessions.contains_key(id.as_str()) {
                return ClientId::new(ByteStr::from(id));
            }
        }
    }

    pub(super) fn on_disconnect(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        cid: &ClientId,
        d: Disconnect,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(exp) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2]: a session that had expiry 0 cannot get one now.
            if conn.connect_expiry_zero && exp != 0 {
                let rc = ReasonCode::PROTOCOL_ERROR;
                return self.close(now, conn_id, CloseReason::ProtocolError(rc));
            }
            if let Some(s) = self.sessions.get_mut(cid) {
                s.expiry_interval = exp.min(self.config.max_session_expiry);
            }
        }
        let with_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL;
        conn.client_id = None;
        conn.set_state(ConnState::Closing, &mut self.stats.connections);
        self.events
            .push_back(IoEvent::Close(conn_id, CloseReason::ClientDisconnect));
        self.detach(now, cid, conn_id, with_will);
    }

    // -------------------------------------------------------- sessions

    /// The connection of `cid` ended; `abnormal` publishes the will.
    pub(super) fn detach(&mut self, now: Instant, cid: &ClientId, conn_id: ConnId, abnormal: bool) {
        let Some(session) = self.sessions.get_mut(cid) else {
            return;
        };
        if session.conn != Some(conn_id) {
            return;
        }
        session.conn = None;
        self.generations += 1;
        session.generation = self.generations;
        let generation = session.generation;
        let expiry = session.expiry_interval;
        let will = session.will.take().filter(|_| abnormal);
        self.group_member_offline(now, cid);
        if expiry == 0 {
            if let Some(w) = will {
                self.publish_will(now, cid, *w);
            }
            self.remove_session(cid);
            self.released(now, cid);
            return;
        }
        if let Some(s) = self.sessions.get_mut(cid) {
            s.disconnected_at = Some(now);
        }
        if let Some(w) = will {
            let delay = w.properties.will_delay_interval.unwrap_or(0).min(expiry);
            if delay == 0 {
                self.publish_will(now, cid, *w);
            } else if let Some(s) = self.sessions.get_mut(cid) {
                s.will = Some(w);
                let at = now + Duration::from_secs(u64::from(delay));
                self.timers
                    .push(Reverse((at, Timer::Will(cid.clone(), generation))));
            }
        }
        self.store_session(cid);
        if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            self.timers
                .push(Reverse((at, Timer::SessionExpiry(cid.clone(), generation))));
        }
    }

    pub(super) fn remove_session(&mut self, cid: &ClientId) {
        self.unstore_session(cid);
        self.forget_seen(cid);
        let Some(session) = self.sessions.get(cid) else {
            return;
        };
        let filters: Vec<TopicFilter> = session.subscriptions.keys().cloned().collect();
        for f in &filters {
            self.unsubscribe(cid, f);
        }
        self.sessions.remove(cid);
    }

    pub(super) fn publish_will(&mut self, now: Instant, cid: &ClientId, w: LastWill) {
        let mut properties = PublishProperties {
            payload_format_indicator: w.properties.payload_format_indicator,
            content_type: w.properties.content_type,
            response_topic: w.properties.response_topic,
            correlation_data: w.properties.correlation_data,
            user_properties: w.properties.user_properties,
            ..PublishProperties::default()
        };
        let expires_at = properties
            .message_expiry_interval
            .take()
            .or(w.properties.message_expiry_interval)
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain && self.config.retain_available,
            properties,
            expires_at,
            origin: Some(cid.clone()),
            uid: self.next_uid(),
        });
        self.publish(now, msg);
    }

    /// On reconnect, resends what was in flight ([MQTT-4.4.0-1]).
    pub(super) fn resend_inflight(&mut self, now: Instant, conn_id: ConnId, cid: &ClientId) {
        let Some(session) = self.sessions.get(cid) else {
            return;
        };
        let Some(version) = self.conns.get(&conn_id).map(|c| c.version) else {
            return;
        };
        let mut packets = Vec::new();
        for f in session.inflight() {
            match f.stage {
                Stage::AwaitComp => {
                    packets.push(Packet::PubRel(PubResponse::new(f.packet_id)));
                }
                Stage::AwaitAck | Stage::AwaitRec => {
                    // An expired message is still resent: its packet id is in
                    // use until acknowledged, and the spec does not allow
                    // dropping a message that is partway through delivery.
                    let mut d = f.delivery.clone();
                    if d.msg.is_expired(now) {
                        let mut m = (*d.msg).clone();
                        m.expires_at = None;
                        d.msg = Arc::new(m);
                    }
                    if let Some(p) = outbound_publish(now, &d, Some(f.packet_id), true, version) {
                        packets.push(Packet::Publish(p));
                    }
                }
            }
        }
        for p in packets {
            match p {
                Packet::Publish(p) => {
                    self.send_publish(conn_id, p);
                }
                other => self.send(conn_id, &other),
            }
        }
    }
}

/// The protocol level of a CONNECT at the start of `buf`, if enough of it is
/// there, so a refusal can be answered in the client's version.
pub(super) fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]));
    buf.get(i + 3 + name_len).copied()
}
