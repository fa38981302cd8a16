//! SUBSCRIBE and UNSUBSCRIBE, retained messages sent on subscribe, and
//! the recheck of existing subscriptions when the ACL changes.

use super::*;

impl ShardCore {
    /// Why one filter of a SUBSCRIBE is refused, if it is: a topic limit,
    /// the ACL, or `max_subscriptions`.
    pub(super) fn subscribe_refusal(
        &mut self,
        conn_id: ConnId,
        cid: &ClientId,
        filter: &TopicFilter,
    ) -> Option<ReasonCode> {
        if let Err(limit) = self.check_topic(filter.as_str(), filter.matching_filter()) {
            self.stats.limit_hits[limit as usize] += 1;
            return Some(ReasonCode::TOPIC_FILTER_INVALID);
        }
        if let Some(acl) = &self.config.authorizer {
            let username = self.conns.get(&conn_id).and_then(|c| c.identity.username());
            if !acl.allow_subscribe(cid.as_str(), username, filter.matching_filter()) {
                self.stats.acl_denied[1] += 1;
                return Some(ReasonCode::NOT_AUTHORIZED);
            }
        }
        let max = self.config.max_subscriptions as usize;
        let session = self.sessions.get(cid)?;
        if max > 0
            && session.subscriptions.len() >= max
            && !session.subscriptions.contains_key(filter)
        {
            self.stats.limit_hits[Limit::Subscriptions as usize] += 1;
            return Some(ReasonCode::QUOTA_EXCEEDED);
        }
        None
    }

    pub(super) fn on_subscribe(
        &mut self,
        now: Instant,
        conn_id: ConnId,
        cid: &ClientId,
        sub: Subscribe,
    ) {
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for = Vec::new();
        let token = self.new_token();
        let mut announced = 0;
        for (filter, options) in sub.filters {
            if let Some(rc) = self.subscribe_refusal(conn_id, cid, &filter) {
                reasons.push(rc);
                continue;
            }
            let entry = Subscription {
                options,
                id: sub.properties.subscription_identifier,
            };
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            let existed = session
                .subscriptions
                .insert(filter.clone(), entry)
                .is_some();
            if !existed {
                self.stats.subscriptions += 1;
            }
            if session.stored {
                self.store.ops.push(StoreOp::PutSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                    sub: entry,
                });
            }
            self.routes.index(cid, &filter, entry);
            if filter.is_shared() && !existed {
                // Before the route announcement: the home knows the member
                // before any shard routes a message to the group for it.
                self.group_join(now, cid, &filter);
            }
            if !filter.is_shared() {
                let send = match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
                if send {
                    retained_for.push((filter.clone(), entry));
                }
            }
            if !existed && self.add_local_filter(&filter, Some(token)) {
                announced += 1;
            }
            reasons.push(ReasonCode(options.qos as u8));
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: AckProperties::default(),
            reasons,
        };
        let replies = vec![Packet::SubAck(ack)];
        if announced > 0 && self.shards > 1 {
            // The SUBACK goes out once every shard routes the new filters, so
            // a message published anywhere after it is delivered.
            let pending = Pending {
                remaining: announced * (self.shards - 1),
                quota_check: false,
                delivered: false,
                refused: false,
                after: self.store.own_barrier(),
                waiter: Waiter::Client {
                    conn: conn_id,
                    client: cid.clone(),
                    replies,
                    retained_for,
                },
            };
            self.pending.insert(token, pending);
            return;
        }
        for p in &replies {
            self.send(conn_id, p);
        }
        self.send_retained(now, cid, retained_for);
    }

    /// Sends the retained messages matching new subscriptions
    /// ([MQTT-3.3.1-9]: with RETAIN set).
    pub(super) fn send_retained(
        &mut self,
        now: Instant,
        cid: &ClientId,
        filters: Vec<(TopicFilter, Subscription)>,
    ) {
        if filters.is_empty() {
            return;
        }
        let limit = self.config.max_retained_backlog;
        for (filter, entry) in filters {
            let mut found = VecDeque::new();
            let no_local = entry.options.no_local;
            self.retained
                .for_each_match(now, filter.matching_filter(), |m| {
                    if !(no_local && m.origin.as_ref() == Some(cid)) {
                        found.push_back(m.clone());
                    }
                });
            let Some(session) = self.sessions.get_mut(cid) else {
                return;
            };
            // They wait in the session's backlog and go out as the window
            // and the socket take them (`pump`): none is lost to a full
            // output buffer, however many match.
            let over = session.push_retained(filter, entry, found, limit);
            if over > 0 {
                session.dropped += over as u64;
                self.stats.limit_hits[Limit::RetainedBacklog as usize] += over as u64;
                self.stats.messages_dropped += over as u64;
                self.note_limited(now, cid, Limit::RetainedBacklog, over as u64);
            }
        }
        self.pump(now, cid);
    }

    pub(super) fn on_unsubscribe(&mut self, conn_id: ConnId, cid: &ClientId, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let stored = self.sessions.get(cid).is_some_and(|s| s.stored);
        for filter in &u.filters {
            let removed = self.unsubscribe(cid, filter);
            if removed && stored {
                self.store.ops.push(StoreOp::DeleteSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                });
            }
            reasons.push(if removed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        };
        self.send(conn_id, &Packet::UnsubAck(ack));
    }

    pub(super) fn unsubscribe(&mut self, cid: &ClientId, filter: &TopicFilter) -> bool {
        if let Some(s) = self.sessions.get_mut(cid) {
            s.drop_retained_for(filter);
        }
        let Some(session) = self.sessions.get_mut(cid) else {
            return false;
        };
        if session.subscriptions.remove(filter).is_none() {
            return false;
        }
        self.stats.subscriptions -= 1;
        self.routes.unindex(cid, filter);
        self.remove_local_filter(filter);
        if filter.is_shared() {
            self.group_leave(self.clock, cid, filter);
        }
        true
    }
}

/// How many revoked subscriptions [`ShardCore::take_revoked`] lists at most
/// (the others are only counted).
pub(super) const REVOKED_LISTED: usize = 100;

/// Whether two ACL settings are the same one (a reload makes a new one).
pub(super) fn same_authorizer(
    a: &Option<Arc<dyn Authorizer>>,
    b: &Option<Arc<dyn Authorizer>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Revoked rights: subscriptions re-checked against the ACL in force.
impl ShardCore {
    /// Re-checks the subscriptions of every session attached to a
    /// connection against the ACL in force (called when the ACL changes)
    /// and removes those it no longer allows. A session without a
    /// connection is checked when it reconnects, with the identity it then
    /// has (a restored session's user name is known only then): until
    /// then nothing is delivered to it, and what was queued for a revoked
    /// subscription is dropped before anything is sent.
    pub fn recheck_subscriptions(&mut self) {
        if self.config.authorizer.is_none() {
            return;
        }
        let attached: Vec<ClientId> = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some())
            .map(|s| s.client_id.clone())
            .collect();
        for cid in attached {
            self.recheck_session(&cid);
        }
    }

    /// Re-checks the subscriptions of `cid`'s session against the ACL with
    /// the identity of its connection; removes (and unstores) the ones no
    /// longer allowed, counts them (`acl_denied[2]`), and drops the queued,
    /// not yet sent deliveries that no remaining subscription matches.
    /// Returns how many were removed.
    pub(super) fn recheck_session(&mut self, cid: &ClientId) -> usize {
        let Some(acl) = self.config.authorizer.clone() else {
            return 0;
        };
        let Some(session) = self.sessions.get(cid) else {
            return 0;
        };
        let Some(conn) = session.conn.and_then(|c| self.conns.get(&c)) else {
            return 0;
        };
        let username = conn.identity.username();
        let revoked: Vec<TopicFilter> = session
            .subscriptions
            .keys()
            .filter(|f| !acl.allow_subscribe(cid.as_str(), username, f.matching_filter()))
            .cloned()
            .collect();
        if revoked.is_empty() {
            return 0;
        }
        let stored = session.stored;
        for filter in &revoked {
            if self.unsubscribe(cid, filter) && stored {
                self.store.ops.push(StoreOp::DeleteSubscription {
                    client_id: cid.clone(),
                    filter: filter.clone(),
                });
            }
            self.stats.acl_denied[2] += 1;
            if self.revoked.0.len() < REVOKED_LISTED {
                self.revoked.0.push((cid.clone(), filter.clone()));
            } else {
                self.revoked.1 += 1;
            }
        }
        let dropped = match self.sessions.get_mut(cid) {
            Some(session) => {
                let filters: Vec<TopicFilter> = session.subscriptions.keys().cloned().collect();
                session.take_queued_unless(|d| {
                    let topic = d.msg.topic.as_str();
                    filters.iter().any(|f| f.matches(topic))
                })
            }
            None => Vec::new(),
        };
        for d in dropped {
            if let Some(r) = d.store {
                self.store.dequeue(cid, r);
            }
            self.count_drop(cid, d.qos);
            self.group_done(self.clock, cid, &d);
        }
        revoked.len()
    }

    /// The subscriptions removed because the ACL no longer allowed them
    /// since the last call (at most [`REVOKED_LISTED`]), and how many more
    /// were removed beyond those, for the I/O layer to log.
    pub fn take_revoked(&mut self) -> (Vec<(ClientId, TopicFilter)>, u64) {
        std::mem::take(&mut self.revoked)
    }
}
