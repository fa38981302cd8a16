//! One connection's protocol state ([`Conn`]) and its packets: decoding
//! into events, encoding replies and deliveries, closing.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    AwaitConnect,
    /// CONNECT received; its client id is being claimed in the cluster
    /// (later bytes wait in `held`).
    Claiming,
    Connected,
    Closing,
}

/// A network connection on this shard.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) state: ConnState,
    /// The session this connection is attached to.
    pub(super) client_id: Option<ClientId>,
    pub(super) version: ProtocolVersion,
    pub(super) keep_alive: Duration,
    pub(super) last_rx: Instant,
    pub(super) out: BytesMut,
    /// Bytes that came behind a CONNECT being claimed ([`ConnState::Claiming`]).
    /// (Boxed: rare, and `Conn` stays small.)
    pub(super) held: Option<Box<BytesMut>>,
    /// Output held back until storage batches are written: `(offset,
    /// batch)` = the bytes of `out` from `offset` on wait for `batch`.
    pub(super) gates: VecDeque<(usize, BatchId)>,
    pub(super) woken: bool,
    pub(super) aliases_in: HashMap<u16, TopicName, crate::hash::FastState>,
    /// Topic aliases towards the client (none until CONNECT allows them).
    pub(super) aliases_out: OutboundAliases,
    pub(super) client_receive_max: u16,
    pub(super) client_max_packet: u32,
    pub(super) problem_info: bool,
    /// Session Expiry Interval in CONNECT was 0 (a DISCONNECT may not raise it).
    pub(super) connect_expiry_zero: bool,
    /// Receive Maximum granted in CONNACK.
    pub(super) receive_max: u16,
    /// Topic Alias Maximum granted in CONNACK.
    pub(super) alias_max: u16,
    /// Maximum Packet Size accepted from this client (sent in CONNACK).
    pub(super) max_packet: u32,
    /// Who the I/O layer found this connection to be.
    pub(super) identity: Identity,
}

impl Conn {
    /// Moves to `state`, keeping `connected` (the shard's gauge of
    /// connections in `ConnState::Connected`) in step.
    pub(super) fn set_state(&mut self, state: ConnState, connected: &mut u64) {
        let (was, is) = (
            self.state == ConnState::Connected,
            state == ConnState::Connected,
        );
        if is && !was {
            *connected += 1;
        } else if was && !is {
            *connected = connected.saturating_sub(1);
        }
        self.state = state;
    }
}

/// A successful PUBACK or PUBREC like `packet`, with reason 0x10 (no
/// matching subscribers); anything else as it is.
pub(super) fn no_subscribers(packet: &Packet) -> Packet {
    let rc = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    match packet {
        Packet::PubAck(r) if r.reason == ReasonCode::SUCCESS => {
            Packet::PubAck(PubResponse::with_reason(r.packet_id, rc))
        }
        Packet::PubRec(r) if r.reason == ReasonCode::SUCCESS => {
            Packet::PubRec(PubResponse::with_reason(r.packet_id, rc))
        }
        other => other.clone(),
    }
}

/// A PUBACK or PUBREC like `packet`, with reason 0x97 (quota exceeded).
pub(super) fn quota_exceeded(packet: &Packet) -> Packet {
    let rc = ReasonCode::QUOTA_EXCEEDED;
    match packet {
        Packet::PubAck(r) => Packet::PubAck(PubResponse::with_reason(r.packet_id, rc)),
        Packet::PubRec(r) => Packet::PubRec(PubResponse::with_reason(r.packet_id, rc)),
        other => other.clone(),
    }
}

impl ShardCore {
    // ----------------------------------------------------------- packets

    pub(super) fn handle_packet(&mut self, now: Instant, conn_id: ConnId, packet: Packet) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        if conn.state == ConnState::AwaitConnect {
            match packet {
                Packet::Connect(c) => self.on_connect(now, conn_id, *c),
                // [MQTT-3.1.0-1]: the first packet must be CONNECT.
                _ => self.close(
                    now,
                    conn_id,
                    CloseReason::ProtocolError(ReasonCode::PROTOCOL_ERROR),
                ),
            }
            return;
        }
        let Some(cid) = conn.client_id.clone() else {
            return;
        };
        let v5 = conn.version.is_v5();
        match packet {
            Packet::Publish(p) => self.on_publish(now, conn_id, &cid, p),
            Packet::PubAck(r) => {
                let done = self
                    .sessions
                    .get_mut(&cid)
                    .and_then(|s| s.puback(r.packet_id));
                if let Some(d) = done {
                    if let Some(sr) = d.store {
                        self.store.dequeue(&cid, sr);
                    }
                    // A failure code drops the message: no other member
                    // gets it [MQTT-4.8.2-6].
                    self.group_done(now, &cid, &d);
                }
                self.pump(now, &cid);
            }
            Packet::PubRec(r) => {
                let rec = match self.sessions.get_mut(&cid) {
                    Some(s) => s.pubrec(r.packet_id, r.reason.is_success()),
                    None => Rec::Unknown,
                };
                let known = match rec {
                    Rec::Unknown => false,
                    Rec::Release { delivery, changed } => {
                        if changed {
                            let state = OutState::AwaitPubComp(r.packet_id);
                            self.store.put_entry(&cid, &delivery, state);
                        }
                        true
                    }
                    Rec::Ended(d) => {
                        if let Some(sr) = d.store {
                            self.store.dequeue(&cid, sr);
                        }
                        self.group_done(now, &cid, &d);
                        false
                    }
                };
                if known {
                    self.send(conn_id, &Packet::PubRel(PubResponse::new(r.packet_id)));
                } else if r.reason.is_success() {
                    let rc = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    self.send(
                        conn_id,
                        &Packet::PubRel(PubResponse::with_reason(r.packet_id, rc)),
                    );
                }
                self.pump(now, &cid);
            }
            Packet::PubRel(r) => {
                let (known, stored) = match self.sessions.get_mut(&cid) {
                    Some(s) => (s.release_incoming_qos2(r.packet_id), s.stored),
                    None => (false, false),
                };
                if known && stored {
                    self.store.ops.push(StoreOp::DeleteInboundQos2 {
                        client_id: cid.clone(),
                        packet_id: r.packet_id,
                    });
                }
                let rc = if known || !v5 {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(
                    conn_id,
                    &Packet::PubComp(PubResponse::with_reason(r.packet_id, rc)),
                );
            }
            Packet::PubComp(r) => {
                let done = self
                    .sessions
                    .get_mut(&cid)
                    .and_then(|s| s.pubcomp(r.packet_id));
                if let Some(d) = done {
                    if let Some(sr) = d.store {
                        self.store.dequeue(&cid, sr);
                    }
                    self.group_done(now, &cid, &d);
                }
                self.pump(now, &cid);
            }
            Packet::Subscribe(s) => self.on_subscribe(now, conn_id, &cid, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(conn_id, &cid, u),
            Packet::PingReq => self.send(conn_id, &Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(now, conn_id, &cid, d),
            // No enhanced authentication method is offered, so AUTH is
            // unexpected; so is a second CONNECT and any server-to-client packet.
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.close(
                now,
                conn_id,
                CloseReason::ProtocolError(ReasonCode::PROTOCOL_ERROR),
            ),
        }
    }

    pub(super) fn decode_failed(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        awaiting_connect: bool,
        level: Option<u8>,
        e: &DecodeError,
    ) {
        if matches!(e, DecodeError::PacketTooLarge { .. }) {
            self.stats.limit_hits[Limit::PacketSize as usize] += 1;
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if awaiting_connect {
            // Answer the CONNECT in the version it asked for, where the spec
            // gives an answer; otherwise just close.
            let reply = match (level, e.v3_connack_code()) {
                (Some(5), _) => Some((ProtocolVersion::V5, e.reason_code())),
                (_, Some(_)) => Some((ProtocolVersion::V3_1_1, e.reason_code())),
                _ => None,
            };
            if let Some((version, rc)) = reply {
                conn.version = version;
                let mut ack = ConnAck::refuse(rc);
                ack.properties.reason_string = Some(ByteStr::from(e.to_string()));
                self.send(conn_id, &Packet::ConnAck(ack));
                self.close(now, conn_id, CloseReason::Refused(rc));
            } else {
                self.close(now, conn_id, CloseReason::ProtocolError(e.reason_code()));
            }
        } else {
            let reason = CloseReason::ProtocolError(e.reason_code());
            self.close_with(now, conn_id, reason, Some(e.to_string()));
        }
    }

    // ---------------------------------------------------------- output

    /// Encodes `packet` into the connection's output buffer.
    pub(super) fn send(&mut self, conn_id: ConnId, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let was_empty = conn.out.is_empty();
        // A persistent session's output waits for every change made before
        // it (conservative: its state is in the log). A clean session's waits
        // only for the changes its cause made (e.g. a QoS 1 message it
        // published, stored for a persistent subscriber; a stored session
        // its clean start removed); a message delivered to it waits for
        // nothing, since nothing it is told depends on the log.
        let persistent = conn
            .client_id
            .as_ref()
            .and_then(|c| self.sessions.get(c))
            .is_some_and(|s| s.stored);
        let barrier = if persistent {
            self.store.barrier()
        } else if matches!(packet, Packet::Publish(_)) {
            None
        } else {
            self.store.own_barrier()
        };
        if let Some(batch) = barrier {
            // Whatever is said after a change waits until it is written.
            if conn.gates.back().is_none_or(|g| g.1 != batch) {
                conn.gates.push_back((conn.out.len(), batch));
            }
        }
        let stripped;
        let packet = if !conn.problem_info && has_problem_info(packet) {
            // [MQTT-3.1.2-29]: without Request Problem Information, reason
            // strings and user properties go only in PUBLISH, CONNACK and
            // DISCONNECT.
            stripped = strip_problem_info(packet);
            &stripped
        } else {
            packet
        };
        if packet.encode(conn.version, &mut conn.out).is_err() {
            return;
        }
        if was_empty && !conn.woken {
            conn.woken = true;
            self.events.push_back(IoEvent::Wake(conn_id));
        }
    }

    /// Encodes a PUBLISH unless it exceeds the client's Maximum Packet Size
    /// ([MQTT-3.1.2-25]: such a message is discarded). Returns whether it was
    /// written. Towards a client that allows topic aliases, the topic is
    /// replaced by its alias when the client knows it, or sent with a new
    /// (or the least recently used) alias; an alias is bound only by a
    /// PUBLISH that is written.
    pub(super) fn send_publish(&mut self, conn_id: ConnId, mut p: Publish) -> bool {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return false;
        };
        let qos = p.qos;
        let max = u64::from(conn.client_max_packet);
        let version = conn.version;
        let mut plan = conn.aliases_out.plan(p.topic.as_str());
        // The topic a Known alias stands for, put back if that form is
        // refused.
        let mut topic = None;
        match plan {
            AliasPlan::None => p.properties.topic_alias = None,
            AliasPlan::Known(a) => {
                p.properties.topic_alias = Some(a);
                topic = Some(std::mem::replace(&mut p.topic, TopicName::empty()));
            }
            AliasPlan::Bind(a) => p.properties.topic_alias = Some(a),
        }
        let fits = |p: &Packet| matches!(p.encoded_len(version), Ok(len) if len as u64 <= max);
        let mut packet = Packet::Publish(p);
        if !fits(&packet) {
            if let (AliasPlan::Bind(_), Packet::Publish(p)) = (plan, &mut packet) {
                // Three bytes less without the alias.
                p.properties.topic_alias = None;
                plan = AliasPlan::None;
            }
            if !fits(&packet) {
                return false;
            }
        }
        if let (Some(conn), Packet::Publish(p)) = (self.conns.get_mut(&conn_id), &packet) {
            let t = topic.as_ref().unwrap_or(&p.topic);
            conn.aliases_out.commit(t.as_str(), plan);
        }
        self.send(conn_id, &packet);
        self.stats.messages_sent += 1;
        self.stats.sent_by_qos[qos as usize] += 1;
        true
    }

    /// Closes a connection from the server side: v5 clients get DISCONNECT
    /// with the reason first; the session is detached at once.
    pub(super) fn close(&mut self, now: Instant, conn_id: ConnId, reason: CloseReason) {
        self.close_with(now, conn_id, reason, None);
    }

    /// [`ShardCore::close`] with a reason string for the v5 DISCONNECT
    /// (allowed whatever Request Problem Information says, §3.1.2.11.7).
    pub(super) fn close_with(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        reason: CloseReason,
        text: Option<String>,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        let connected = conn.state == ConnState::Connected;
        let v5 = conn.version.is_v5();
        conn.set_state(ConnState::Closing, &mut self.stats.connections);
        let rc = match reason {
            CloseReason::ProtocolError(rc) => Some(rc),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            _ => None,
        };
        if let (true, true, Some(rc)) = (connected, v5, rc) {
            // The DISCONNECT goes out even if the buffer is otherwise full.
            let mut d = Disconnect::new(rc);
            d.properties.reason_string = text.map(ByteStr::from);
            self.send(conn_id, &Packet::Disconnect(d));
        }
        let cid = self
            .conns
            .get_mut(&conn_id)
            .and_then(|c| c.client_id.take());
        self.events.push_back(IoEvent::Close(conn_id, reason));
        if let Some(cid) = cid {
            self.detach(now, &cid, conn_id, true);
        }
    }
}

/// Builds the PUBLISH for one delivery at `now`, or `None` if the message
/// has expired ([MQTT-3.3.2-5]).
pub(super) fn outbound_publish(
    now: Instant,
    d: &Delivery,
    packet_id: Option<PacketId>,
    dup: bool,
    version: ProtocolVersion,
) -> Option<Publish> {
    if d.msg.is_expired(now) {
        return None;
    }
    let properties = if version.is_v5() {
        let mut p = d.msg.properties.clone();
        p.message_expiry_interval = d.msg.remaining_expiry(now);
        p.subscription_identifiers.clone_from(&d.sub_ids);
        p
    } else {
        PublishProperties::default()
    };
    Some(Publish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.clone(),
        packet_id,
        properties,
        payload: d.msg.payload.clone(),
    })
}

pub(super) fn has_problem_info(packet: &Packet) -> bool {
    match packet {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            !r.properties.is_empty()
        }
        Packet::SubAck(a) => !a.properties.is_empty(),
        Packet::UnsubAck(a) => !a.properties.is_empty(),
        _ => false,
    }
}

pub(super) fn strip_problem_info(packet: &Packet) -> Packet {
    let mut p = packet.clone();
    match &mut p {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.properties = AckProperties::default();
        }
        Packet::SubAck(a) => a.properties = AckProperties::default(),
        Packet::UnsubAck(a) => a.properties = AckProperties::default(),
        _ => {}
    }
    p
}
