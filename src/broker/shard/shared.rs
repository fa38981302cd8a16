//! Shared subscriptions inside the shard: a group's messages to its home
//! shard, the home's dispatches to members, and what member sessions report
//! back to the home (see [`super::groups`]).

use super::*;

impl ShardCore {
    /// A message for group `filter`, whose home is this shard: the group
    /// picks a member (or holds the message). `ack`: the publisher's shard
    /// and token, answered once the message is stored where it went.
    pub(super) fn group_publish(
        &mut self,
        now: Instant,
        filter: &TopicFilter,
        msg: Arc<Message>,
        ack: Option<(ShardId, u64)>,
    ) {
        let mut out = Vec::new();
        let qos = msg.qos;
        let offer = self.groups.offer(
            filter,
            msg,
            ack,
            &self.config.shared,
            self.config.persistence,
            &mut out,
        );
        self.note_offer(offer, qos);
        self.run_dispatches(now, out);
        if offer != Offer::Dispatched {
            if let Some((from, token)) = ack {
                self.ack(now, from, Some(token));
            }
        }
    }

    /// Routes `msg` to group `filter` from the publishing shard: offered
    /// here if this is the group's home, else sent there. Returns the
    /// acknowledgements the publisher's reply now waits for.
    pub(super) fn route_to_group(
        &mut self,
        now: Instant,
        filter: TopicFilter,
        msg: &Arc<Message>,
        ack: Option<u64>,
    ) -> usize {
        let home = group_home(&filter, self.shards);
        if home != self.id {
            let Some(q) = self.outbox.get_mut(home.get()) else {
                return 0;
            };
            q.push(ShardMsg::SharedPublish {
                filter,
                msg: msg.clone(),
                ack: ack.map(|t| (self.id, t)),
            });
            self.stats.forwarded += 1;
            return usize::from(ack.is_some());
        }
        let mut out = Vec::new();
        let offer = self.groups.offer(
            &filter,
            msg.clone(),
            ack.map(|t| (self.id, t)),
            &self.config.shared,
            self.config.persistence,
            &mut out,
        );
        self.note_offer(offer, msg.qos);
        self.run_dispatches(now, out)
    }

    fn note_offer(&mut self, offer: Offer, qos: QoS) {
        match offer {
            Offer::Queued => self.outcome.delivered += 1,
            Offer::Dropped => {
                self.outcome.refused += 1;
                self.stats.messages_dropped += 1;
                self.stats.dropped_by_qos[qos as usize] += 1;
            }
            Offer::Dispatched | Offer::NoGroup => {}
        }
    }

    /// Sends the home's picks to their members: delivered here, or to the
    /// member's shard. Returns the acknowledgements this shard's own
    /// publish now waits for (picks on other shards carrying its token).
    fn run_dispatches(&mut self, now: Instant, out: Vec<Dispatch>) -> usize {
        let mut acked = 0;
        for d in out {
            if d.shard == self.id {
                self.deliver_group(now, &d.filter, &d.client, d.msg);
                match d.ack {
                    // This shard's own publish: its reply already waits for
                    // this input's storage batch.
                    Some((to, _)) if to == self.id => {}
                    Some((to, token)) => self.ack(now, to, Some(token)),
                    None => {}
                }
            } else if let Some(q) = self.outbox.get_mut(d.shard.get()) {
                acked += usize::from(d.ack.is_some_and(|(to, _)| to == self.id));
                q.push(ShardMsg::GroupDeliver {
                    filter: d.filter,
                    client: d.client,
                    msg: d.msg,
                    ack: d.ack,
                });
                self.stats.forwarded += 1;
            }
        }
        acked
    }

    /// A message the group's home picked member `cid` (here) for. A member
    /// that is gone, or disconnected without a durable session, hands it
    /// back to the group.
    pub(super) fn deliver_group(
        &mut self,
        now: Instant,
        filter: &TopicFilter,
        cid: &ClientId,
        msg: Arc<Message>,
    ) {
        let persistence = self.config.persistence;
        let target = self.sessions.get(cid).and_then(|s| {
            let keeps = s.conn.is_some() || (s.stored && persistence);
            s.subscriptions.get(filter).copied().filter(|_| keeps)
        });
        let Some(sub) = target else {
            self.tell_group_home(
                now,
                GroupMsg::Return {
                    filter: filter.clone(),
                    client: cid.clone(),
                    msgs: vec![(msg, false)],
                },
            );
            return;
        };
        let d = Delivery {
            qos: msg.qos.min(sub.options.qos),
            retain: msg.retain && sub.options.retain_as_published,
            sub_ids: sub.id.into_iter().collect(),
            msg,
            store: None,
            group: Some(filter.clone()),
        };
        self.deliver(now, cid, d);
    }

    /// Tells the group's home shard: applied here at once if it is this
    /// shard (reports a dispatch causes meanwhile wait their turn, so this
    /// never recurses), else sent.
    pub(super) fn tell_group_home(&mut self, now: Instant, m: GroupMsg) {
        let home = group_home(group_msg_filter(&m), self.shards);
        if home != self.id {
            if let Some(q) = self.outbox.get_mut(home.get()) {
                q.push(ShardMsg::Group(m));
            }
            return;
        }
        self.group_local.push_back(m);
        if self.group_flushing {
            return;
        }
        self.group_flushing = true;
        while let Some(m) = self.group_local.pop_front() {
            let Some(m) = self.return_elsewhere(m) else {
                continue;
            };
            let mut out = Vec::new();
            let dropped =
                self.groups
                    .apply(m, &self.config.shared, self.config.persistence, &mut out);
            self.stats.messages_dropped += dropped;
            self.run_dispatches(now, out);
        }
        self.group_flushing = false;
    }

    /// What a member that dropped left unfinished (a `Return`), when no
    /// member of its group is online on this node and another node has
    /// members: sent to that node's group (its turn, round robin), which
    /// picks one there. Returns the message if it stays here.
    fn return_elsewhere(&mut self, m: GroupMsg) -> Option<GroupMsg> {
        let GroupMsg::Return { filter, .. } = &m else {
            return Some(m);
        };
        if self.groups.has_online(filter) {
            return Some(m);
        }
        let Some(node) = self.remote_group_node(filter) else {
            return Some(m);
        };
        let GroupMsg::Return { filter, msgs, .. } = m else {
            return None;
        };
        let inflight = msgs.iter().filter(|(_, sent)| *sent).count() as u64;
        self.groups.note_redelivered(&filter, inflight);
        for (msg, _) in msgs {
            self.cluster_publish_to_group(node, msg, filter.clone());
        }
        None
    }

    /// `cid`'s state as a member of group `filter`.
    fn member_state(&self, cid: &ClientId, filter: &TopicFilter) -> Option<MemberState> {
        let s = self.sessions.get(cid)?;
        let conn = s.conn.and_then(|c| self.conns.get(&c));
        let window = conn
            .map_or(self.config.max_inflight, |c| {
                c.client_receive_max.min(self.config.max_inflight)
            })
            .max(1);
        let counts =
            |d: &Delivery| d.group.as_ref() == Some(filter) && d.msg.qos != QoS::AtMostOnce;
        let outstanding = s.inflight().filter(|f| counts(&f.delivery)).count()
            + s.queued().filter(|d| counts(d)).count();
        Some(MemberState {
            shard: self.id,
            online: conn.is_some(),
            window,
            outstanding: u32::try_from(outstanding).unwrap_or(u32::MAX),
            persistent: s.stored,
        })
    }

    /// `cid` subscribed to group `filter` (or its session was restored).
    pub(super) fn group_join(&mut self, now: Instant, cid: &ClientId, filter: &TopicFilter) {
        if let Some(state) = self.member_state(cid, filter) {
            let m = GroupMsg::Join {
                filter: filter.clone(),
                client: cid.clone(),
                state,
            };
            self.tell_group_home(now, m);
        }
    }

    /// `cid` left group `filter`.
    pub(super) fn group_leave(&mut self, now: Instant, cid: &ClientId, filter: &TopicFilter) {
        let m = GroupMsg::Leave {
            filter: filter.clone(),
            client: cid.clone(),
        };
        self.tell_group_home(now, m);
    }

    /// The shared filters `cid` is a member of.
    fn groups_of(&self, cid: &ClientId) -> Vec<TopicFilter> {
        self.sessions.get(cid).map_or_else(Vec::new, |s| {
            s.subscriptions
                .keys()
                .filter(|f| f.is_shared())
                .cloned()
                .collect()
        })
    }

    /// `cid` connected: its groups may send to it again, within its window.
    pub(super) fn group_member_online(&mut self, now: Instant, cid: &ClientId) {
        for filter in self.groups_of(cid) {
            if let Some(state) = self.member_state(cid, &filter) {
                let m = GroupMsg::Status {
                    filter,
                    client: cid.clone(),
                    state,
                };
                self.tell_group_home(now, m);
            }
        }
    }

    /// `cid`'s connection ended: its groups stop sending to it, and what it
    /// had not finished goes back to them — queued messages always, QoS 1
    /// in flight with `redeliver_on_disconnect` (QoS 2 in flight stays with
    /// the member, [MQTT-4.8.2-4/5]). A durable session (storage on) keeps
    /// its messages: they are in the log, handing them back would not be.
    pub(super) fn group_member_offline(&mut self, now: Instant, cid: &ClientId) {
        let filters = self.groups_of(cid);
        if filters.is_empty() {
            return;
        }
        let redeliver = self.config.shared.redeliver_on_disconnect;
        let persistence = self.config.persistence;
        let mut back: Vec<Delivery> = Vec::new();
        if let Some(s) = self.sessions.get_mut(cid) {
            if !(s.stored && persistence) {
                if redeliver {
                    back = s.take_inflight_unless(|f| {
                        !(f.delivery.group.is_some()
                            && f.delivery.qos == QoS::AtLeastOnce
                            && f.stage == Stage::AwaitAck)
                    });
                }
                let inflight = back.len();
                back.extend(s.take_queued_unless(|d| d.group.is_none()));
                // Sent ones first (they are older), then the queued.
                let mut marks = vec![true; inflight];
                marks.resize(back.len(), false);
                let back_marked: Vec<(Delivery, bool)> = back.drain(..).zip(marks).collect();
                self.report_offline(now, cid, &filters, back_marked);
                return;
            }
        }
        self.report_offline(now, cid, &filters, Vec::new());
    }

    fn report_offline(
        &mut self,
        now: Instant,
        cid: &ClientId,
        filters: &[TopicFilter],
        back: Vec<(Delivery, bool)>,
    ) {
        for filter in filters {
            if let Some(state) = self.member_state(cid, filter) {
                let m = GroupMsg::Status {
                    filter: filter.clone(),
                    client: cid.clone(),
                    state,
                };
                self.tell_group_home(now, m);
            }
            let msgs: Vec<(Arc<Message>, bool)> = back
                .iter()
                .filter(|(d, _)| d.group.as_ref() == Some(filter))
                .map(|(d, inflight)| (d.msg.clone(), *inflight))
                .collect();
            if !msgs.is_empty() {
                let m = GroupMsg::Return {
                    filter: filter.clone(),
                    client: cid.clone(),
                    msgs,
                };
                self.tell_group_home(now, m);
            }
        }
    }

    /// A delivery of `cid` is finished (acknowledged, sent at QoS 0, or
    /// dropped): room in its window at the group's home.
    pub(super) fn group_done(&mut self, now: Instant, cid: &ClientId, d: &Delivery) {
        let Some(filter) = &d.group else { return };
        if d.msg.qos == QoS::AtMostOnce {
            return;
        }
        let m = GroupMsg::Credit {
            filter: filter.clone(),
            client: cid.clone(),
            n: 1,
        };
        self.tell_group_home(now, m);
    }

    /// The groups whose home is this shard, for metrics and status.
    pub fn groups(&self) -> Vec<GroupInfo> {
        self.groups.info()
    }

    /// Recounts what member `cid` (a session here) holds unfinished of group
    /// `filter`, to check the home's bookkeeping against.
    #[cfg(test)]
    pub(crate) fn recounted_outstanding(
        &self,
        cid: &ClientId,
        filter: &TopicFilter,
    ) -> Option<u32> {
        self.member_state(cid, filter).map(|s| s.outstanding)
    }
}

fn group_msg_filter(m: &GroupMsg) -> &TopicFilter {
    match m {
        GroupMsg::Join { filter, .. }
        | GroupMsg::Leave { filter, .. }
        | GroupMsg::Status { filter, .. }
        | GroupMsg::Credit { filter, .. }
        | GroupMsg::Return { filter, .. } => filter,
    }
}
