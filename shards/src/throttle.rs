//! Failed-login throttling, per source address and per user name: sans-IO
//! (every call takes `now`), shared by every shard behind the gate's lock.
//!
//! Each source address (an IPv4 address, or the /64 of an IPv6 address) and
//! each user name has an entry counting its failed password checks since its
//! last success. While a key has fewer than `free` failures its attempts are
//! verified at once; with `n >= free` failures each attempt waits
//! `delay · 2^(n − free)` (at most `max_delay`) after the previous attempt of
//! that key started (concurrent attempts line up one such delay apart).
//! Checks in flight are not counted: a burst of a fresh source is bounded by
//! the verifier pool's fair queue instead (see `verifier.rs`), so that a
//! fleet of legitimate clients sharing a user name or a NAT address is not
//! throttled for connecting at once. An attempt that would have to wait longer than
//! `max_delay` is refused at once, unverified, and so is every attempt of a
//! key once it has `ban_after` failures, for `ban` from the last failure
//! (MQTT 5 CONNACK 0x8A "Banned", MQTT 3 0x05, as EMQX answers banned
//! clients). A success clears the entries of its address and user name;
//! an entry with no failure for `ban` is forgotten. The tables are capped:
//! past `capacity` entries, the least recently failed one goes.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The throttle's settings (`[auth]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Whether failed logins are throttled at all.
    pub enabled: bool,
    /// Attempts per key verified without waiting (`failures_before_delay`).
    pub free: u32,
    /// The first wait; doubles with each further attempt (`failure_delay_ms`).
    pub delay: Duration,
    /// The longest wait; an attempt that would wait longer is refused
    /// (`max_failure_delay_ms`).
    pub max_delay: Duration,
    /// Failures after which a key is refused outright (`ban_after_failures`).
    pub ban_after: u32,
    /// How long a banned key stays refused after its last failure, and how
    /// long a key's failures are remembered (`ban_seconds`).
    pub ban: Duration,
    /// Entries per table (addresses, user names) (`throttle_table_size`).
    pub capacity: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            enabled: true,
            free: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            ban_after: 10,
            ban: Duration::from_secs(300),
            capacity: 65_536,
        }
    }
}

/// What a throttle key is: which table refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The source address.
    Address,
    /// The user name.
    User,
}

impl By {
    /// The label value in metrics and logs: `address` or `user`.
    pub const fn as_str(self) -> &'static str {
        match self {
            By::Address => "address",
            By::User => "user",
        }
    }
}

/// The verdict on one login attempt, before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Verify it after this wait.
    Go(Duration),
    /// Refuse it without verifying.
    Refuse(By),
}

/// A source address as the throttle counts it: an IPv4 address, or the /64
/// network of an IPv6 address (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses too).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// One key's record.
#[derive(Debug, Clone)]
struct Entry {
    /// Failed checks since the last success.
    failures: u32,
    /// When the latest attempt was (or will be) verified.
    last_start: Instant,
    /// The latest failure, for expiry.
    last: Instant,
    /// Position in the eviction order.
    seq: u64,
}

/// A capped map of entries with least-recently-touched eviction.
#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Entry>,
    /// Keys in the order they were touched; stale pairs (an older `seq`)
    /// are skipped and compacted away.
    order: VecDeque<(K, u64)>,
    seq: u64,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// Marks `key` as touched now (moves it to the back of the order).
    fn touch(&mut self, key: &K) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.map.get_mut(key) {
            e.seq = seq;
            self.order.push_back((key.clone(), seq));
        }
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// The entry of `key`, made if missing (evicting to stay within
    /// `capacity`: expired entries first, else the least recently touched).
    fn entry(&mut self, key: &K, now: Instant, s: &ThrottleSettings) -> &mut Entry {
        self.expire_front(now, s);
        if !self.map.contains_key(key) {
            while self.map.len() >= s.capacity.max(1) {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&old);
                }
            }
        }
        self.map.entry(key.clone()).or_insert(fresh_entry(now));
        self.touch(key);
        self.map.entry(key.clone()).or_insert(fresh_entry(now))
    }

    /// Drops entries at the front of the order that have expired.
    fn expire_front(&mut self, now: Instant, s: &ThrottleSettings) {
        while let Some((k, seq)) = self.order.front() {
            match self.map.get(k) {
                Some(e) if e.seq != *seq => {}
                Some(e) if now.saturating_duration_since(e.last) >= s.ban => {
                    self.map.remove(k);
                }
                Some(_) => return,
                None => {}
            }
            self.order.pop_front();
        }
    }

    /// Whether `key` is refused at `now`.
    fn banned(&self, key: &K, now: Instant, s: &ThrottleSettings) -> bool {
        self.map.get(key).is_some_and(|e| {
            s.ban_after > 0
                && e.failures >= s.ban_after
                && now.saturating_duration_since(e.last) < s.ban
        })
    }

    /// Failures of `key` that still count at `now`.
    fn load(&self, key: &K, now: Instant, s: &ThrottleSettings) -> u32 {
        self.map.get(key).map_or(0, |e| {
            if now.saturating_duration_since(e.last) >= s.ban {
                0
            } else {
                e.failures
            }
        })
    }

    /// When an attempt of `key` may start (`n`: its [`Table::load`]).
    fn start(&self, key: &K, now: Instant, n: u32, s: &ThrottleSettings) -> Instant {
        match self.map.get(key) {
            Some(e) if n >= s.free => (e.last_start + delay(n, s)).max(now),
            _ => now,
        }
    }

    /// Records that an attempt of a key with failures starts at `start`.
    fn admit(&mut self, key: &K, start: Instant) {
        if let Some(e) = self.map.get_mut(key) {
            e.last_start = e.last_start.max(start);
        }
    }

    fn settle(&mut self, key: &K, now: Instant, failed: bool, s: &ThrottleSettings) {
        if !failed {
            self.map.remove(key);
            return;
        }
        let e = self.entry(key, now, s);
        if now.saturating_duration_since(e.last) >= s.ban {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
    }
}

fn fresh_entry(now: Instant) -> Entry {
    Entry {
        failures: 0,
        last_start: now,
        last: now,
        seq: 0,
    }
}

/// The wait after the previous attempt for attempt `n` (`n >= free`).
fn delay(n: u32, s: &ThrottleSettings) -> Duration {
    let doublings = n.saturating_sub(s.free).min(31);
    s.delay
        .checked_mul(1u32 << doublings)
        .unwrap_or(s.max_delay)
        .min(s.max_delay)
}

/// The failed-login tables of the process. Sans-IO: every call takes `now`.
#[derive(Debug)]
pub struct Throttle {
    settings: ThrottleSettings,
    addresses: Table<Source>,
    users: Table<Box<str>>,
}

impl Throttle {
    /// Empty tables with `settings`.
    pub fn new(settings: ThrottleSettings) -> Self {
        Throttle {
            settings,
            addresses: Table::new(),
            users: Table::new(),
        }
    }

    /// Replaces the settings (SIGHUP); what was counted stays.
    pub fn set_settings(&mut self, settings: ThrottleSettings) {
        self.settings = settings;
    }

    /// Entries held (addresses, user names).
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.addresses.map.len(), self.users.map.len())
    }

    /// Decides on a login attempt from `addr` (if known) for `user`.
    pub fn check(&mut self, now: Instant, addr: Option<Source>, user: &str) -> Decision {
        let s = &self.settings;
        if !s.enabled {
            return Decision::Go(Duration::ZERO);
        }
        if let Some(a) = &addr {
            if self.addresses.banned(a, now, s) {
                return Decision::Refuse(By::Address);
            }
        }
        let u: Box<str> = user.into();
        if self.users.banned(&u, now, s) {
            return Decision::Refuse(By::User);
        }
        let na = addr.as_ref().map_or(0, |a| self.addresses.load(a, now, s));
        let nu = self.users.load(&u, now, s);
        let sa = addr
            .as_ref()
            .map_or(now, |a| self.addresses.start(a, now, na, s));
        let su = self.users.start(&u, now, nu, s);
        let start = sa.max(su);
        let wait = start.saturating_duration_since(now);
        if wait > s.max_delay {
            let by = if sa >= su { By::Address } else { By::User };
            return Decision::Refuse(by);
        }
        if let Some(a) = &addr {
            self.addresses.admit(a, start);
        }
        self.users.admit(&u, start);
        Decision::Go(wait)
    }

    /// Whether `addr` or `user` is banned at `now` (checked again just
    /// before a queued attempt is verified).
    pub fn banned(&self, now: Instant, addr: Option<Source>, user: &str) -> Option<By> {
        let s = &self.settings;
        if !s.enabled {
            return None;
        }
        if addr.is_some_and(|a| self.addresses.banned(&a, now, s)) {
            return Some(By::Address);
        }
        let u: Box<str> = user.into();
        self.users.banned(&u, now, s).then_some(By::User)
    }

    /// An attempt's password was checked: `ok` clears the address's and the
    /// user's failures, a failure counts for both.
    pub fn settle(&mut self, now: Instant, addr: Option<Source>, user: &str, ok: bool) {
        if !self.settings.enabled {
            return;
        }
        let s = self.settings.clone();
        if let Some(a) = &addr {
            self.addresses.settle(a, now, !ok, &s);
        }
        self.users.settle(&user.into(), now, !ok, &s);
    }

    /// Failures counted for `user` now (for logs).
    pub fn failures(&self, addr: Option<Source>, user: &str) -> (u32, u32) {
        let a = addr
            .and_then(|a| self.addresses.map.get(&a))
            .map_or(0, |e| e.failures);
        let u = self.users.map.get(user).map_or(0, |e| e.failures);
        (a, u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<Source> {
        Some(Source::from(s.parse::<IpAddr>().expect("an address")))
    }

    const MS: Duration = Duration::from_millis(1);

    fn go(d: Decision) -> Duration {
        match d {
            Decision::Go(wait) => wait,
            Decision::Refuse(by) => panic!("refused by {by:?}"),
        }
    }

    /// Fails `n` attempts one after the other at `now`.
    fn fail(t: &mut Throttle, now: Instant, addr: Option<Source>, user: &str, n: u32) {
        for _ in 0..n {
            go(t.check(now, addr, user));
            t.settle(now, addr, user, false);
        }
    }

    #[test]
    fn free_attempts_then_doubling_waits_then_refusal() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleSettings {
            ban_after: 100,
            ..ThrottleSettings::default()
        });
        let a = ip("127.0.0.2");
        // Three failures are verified at once.
        fail(&mut t, t0, a, "mallory", 3);
        // Then each attempt waits after the previous one started: 1 s
        // after 3 failures, 2 s after 4, 4 s, 8 s (the maximum), 8 s...
        let mut now = t0;
        for expected in [1000, 2000, 4000, 8000, 8000] {
            let wait = go(t.check(now, a, "mallory"));
            assert_eq!(wait, expected * MS);
            now += wait;
            t.settle(now, a, "mallory", false);
        }
        // Concurrent attempts line up one delay apart; one that would wait
        // longer than the maximum is refused without being verified.
        assert_eq!(go(t.check(now, a, "other")), 8000 * MS);
        assert_eq!(t.check(now, a, "other"), Decision::Refuse(By::Address));
    }

    #[test]
    fn a_burst_after_failures_is_spread_out_then_refused() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleSettings {
            ban_after: 0,
            ..ThrottleSettings::default()
        });
        let a = ip("127.0.0.3");
        fail(&mut t, t0, a, "x", 3);
        // 600 attempts at once from that address, other user names.
        let waits: Vec<Decision> = (0..600)
            .map(|i| t.check(t0, a, &format!("user{i}")))
            .collect();
        let admitted: Vec<Duration> = waits
            .iter()
            .filter_map(|d| match d {
                Decision::Go(w) => Some(*w),
                Decision::Refuse(_) => None,
            })
            .collect();
        let expected: Vec<Duration> = (1..=8).map(|s| s * 1000 * MS).collect();
        assert_eq!(admitted, expected, "one a second, up to 8 s ahead");
        assert_eq!(waits[599], Decision::Refuse(By::Address));
    }

    #[test]
    fn addresses_are_distinct_and_users_are_counted_across_addresses() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleSettings::default());
        fail(&mut t, t0, ip("127.0.0.2"), "alice", 3);
        // Another loopback address is another source...
        assert_eq!(go(t.check(t0, ip("127.0.0.4"), "bob")), Duration::ZERO);
        t.settle(t0, ip("127.0.0.4"), "bob", true);
        // ...but alice's failures follow her name to any address.
        assert_eq!(go(t.check(t0, ip("127.0.0.5"), "alice")), 1000 * MS);
        // A legitimate fleet sharing a user name and an address, connecting
        // at once, is not throttled: only failures count.
        for _ in 0..100 {
            assert_eq!(go(t.check(t0, ip("10.1.1.1"), "fleet")), Duration::ZERO);
        }
        // IPv6: one /64 is one source; IPv4-mapped is the IPv4 address.
        assert_eq!(ip("2001:db8::1"), ip("2001:db8::ffff:2"));
        assert_ne!(ip("2001:db8::1"), ip("2001:db8:0:1::1"));
        assert_eq!(ip("::ffff:127.0.0.2"), ip("127.0.0.2"));
    }

    #[test]
    fn banned_after_failures_until_ban_passes_and_success_clears() {
        let t0 = Instant::now();
        let s = ThrottleSettings {
            free: 100, // no waits: only the ban matters here
            ..ThrottleSettings::default()
        };
        let mut t = Throttle::new(s);
        let a = ip("127.0.0.2");
        fail(&mut t, t0, a, "u1", 9);
        assert_eq!(t.banned(t0, a, "u1"), None);
        fail(&mut t, t0, a, "u1", 1);
        assert_eq!(t.banned(t0, a, "u1"), Some(By::Address));
        assert_eq!(t.banned(t0, ip("127.0.0.9"), "u1"), Some(By::User));
        assert_eq!(t.check(t0, a, "u2"), Decision::Refuse(By::Address));
        assert_eq!(
            t.check(t0, ip("127.0.0.9"), "u1"),
            Decision::Refuse(By::User)
        );
        let almost = t0 + Duration::from_secs(299);
        assert_eq!(t.check(almost, a, "u3"), Decision::Refuse(By::Address));
        // After the ban the failures are forgotten.
        let after = t0 + Duration::from_secs(300);
        assert_eq!(go(t.check(after, a, "u1")), Duration::ZERO);
        t.settle(after, a, "u1", false);
        assert_eq!(t.failures(a, "u1"), (1, 1));
        // A success clears both keys.
        go(t.check(after, a, "u1"));
        t.settle(after, a, "u1", true);
        assert_eq!(t.failures(a, "u1"), (0, 0));
    }

    #[test]
    fn tables_are_capped_and_expire() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleSettings {
            capacity: 100,
            ..ThrottleSettings::default()
        });
        for i in 0..1000u32 {
            let [_, _, b, c] = i.to_be_bytes();
            let addr = Some(Source::V4([10, 0, b, c]));
            fail(&mut t, t0, addr, &format!("user{i}"), 1);
        }
        assert_eq!(t.len(), (100, 100));
        assert!(t.addresses.order.len() <= 2 * 100 + 16);
        // The newest are kept, the oldest evicted.
        let newest = Some(Source::V4([10, 0, 3, 231]));
        assert_eq!(t.failures(newest, "user999"), (1, 1));
        assert_eq!(t.failures(Some(Source::V4([10, 0, 0, 0])), "user0"), (0, 0));
        // Entries whose failures are older than `ban` go when others come.
        let later = t0 + Duration::from_secs(301);
        fail(&mut t, later, ip("127.0.0.2"), "fresh", 1);
        assert_eq!(t.len(), (1, 1));
    }

    #[test]
    fn disabled_admits_everything() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleSettings {
            enabled: false,
            ..ThrottleSettings::default()
        });
        fail(&mut t, t0, ip("127.0.0.2"), "x", 50);
        assert_eq!(go(t.check(t0, ip("127.0.0.2"), "x")), Duration::ZERO);
        assert_eq!(t.banned(t0, ip("127.0.0.2"), "x"), None);
    }
}
