//! The shard's timers ([`Timer`]): connect timeout, keep alive, will
//! delay, session expiry, the `$SYS` tick.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    ConnectTimeout(ConnId),
    KeepAlive(ConnId),
    Will(ClientId, u64),
    SessionExpiry(ClientId, u64),
    /// A CONNECT's claim of its client id (see `takeover.rs`).
    Claim(u64),
    /// A claim sent again (after `NotOwner`).
    ClaimRetry(u64),
    /// The grace of a session that left for another node ends (see
    /// `moving.rs`).
    Moved(ClientId, u64),
    /// A session that arrived from another node stops noting message ids.
    Seen(ClientId),
    /// A session kept here registers again with its owner (see
    /// `takeover.rs`).
    Register(ClientId),
    Sys,
}

impl ShardCore {
    // ---------------------------------------------------------- timers

    pub(super) fn fire(&mut self, now: Instant, timer: Timer) {
        self.store.begin_input();
        match timer {
            Timer::ConnectTimeout(id) => {
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.state == ConnState::AwaitConnect)
                {
                    self.stats.limit_hits[Limit::ConnectTimeout as usize] += 1;
                    self.close(now, id, CloseReason::ConnectTimeout);
                }
            }
            Timer::KeepAlive(id) => {
                let Some(c) = self.conns.get(&id) else { return };
                if c.state != ConnState::Connected || c.keep_alive.is_zero() {
                    return;
                }
                let deadline = c.last_rx + c.keep_alive.mul_f32(1.5);
                if now >= deadline {
                    self.close(now, id, CloseReason::KeepAliveTimeout);
                } else {
                    self.timers.push(Reverse((deadline, Timer::KeepAlive(id))));
                }
            }
            Timer::Will(cid, generation) => {
                let will = match self.sessions.get_mut(&cid) {
                    Some(s) if s.generation == generation && s.conn.is_none() => s.will.take(),
                    _ => None,
                };
                if let Some(w) = will {
                    self.publish_will(now, &cid, *w);
                    if self.sessions.get(&cid).is_some_and(|s| s.stored) {
                        self.store_session(&cid);
                    }
                }
            }
            Timer::SessionExpiry(cid, generation) => {
                let will = match self.sessions.get_mut(&cid) {
                    Some(s) if s.generation == generation && s.conn.is_none() => {
                        Some(s.will.take())
                    }
                    _ => None,
                };
                if let Some(will) = will {
                    if let Some(w) = will {
                        self.publish_will(now, &cid, *w);
                    }
                    self.remove_session(&cid);
                    self.released(now, &cid);
                }
            }
            Timer::Claim(claim) => self.claim_timed_out(now, claim),
            Timer::ClaimRetry(claim) => self.retry_claim(now, claim),
            Timer::Moved(cid, generation) => self.moved_timer(now, &cid, generation),
            Timer::Seen(cid) => self.seen_timer(now, &cid),
            Timer::Register(cid) => self.register_again(now, &cid),
            Timer::Sys => {
                self.timers
                    .push(Reverse((now + self.config.sys_interval, Timer::Sys)));
                let stats = self.stats();
                self.stats.store_write_max_us = 0;
                self.publish_group_sys(now);
                self.purge_tombstones(now);
                if self.id.get() == 0 {
                    self.sys_stats[0] = stats;
                    self.publish_sys(now);
                } else {
                    self.outbox[0].push(ShardMsg::Stats {
                        from: self.id,
                        stats: Box::new(stats),
                    });
                }
            }
        }
    }
}
