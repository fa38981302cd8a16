//! Who gets in: the checks a new connection passes on its accepting shard
//! before the core sees its CONNECT — the process-wide connection budget,
//! each shard's connection count and connect rate, and authentication
//! (password file, client certificate, anonymous policy).
//!
//! Password hashes are slow by design (argon2id), so a password is checked
//! in this order, all of it process-wide (shared by every shard):
//!
//! 1. the [`CredentialCache`]: credentials verified within its TTL are
//!    accepted at once (a reconnect storm costs one HMAC each);
//! 2. the [`Throttle`]: a source address or user name with recent failures
//!    waits (doubling) before its next check, or is refused unverified
//!    (CONNACK 0x8A, MQTT 3 0x05) when it would wait too long or is banned;
//! 3. the [`VerifyPool`]: a few threads of the process with a bounded queue
//!    served one source address after the other (full: CONNACK 0x89, MQTT 3
//!    0x03), so that one source's burst delays only itself — never a
//!    shard's reactor, never the blocking thread its storage writes on. A
//!    queued check whose source or user got banned meanwhile is refused
//!    unverified.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vmqtt::broker::{Credentials, Identity};
use vmqtt::codec::ReasonCode;
use vmqtt_auth::Passwords;
use vmqtt_config::{Anonymous, AuthConfig};

use crate::http::LoginCounters;
use crate::throttle::{By, Decision, Source, Throttle, ThrottleSettings};
use crate::verifier::{CredentialCache, NoRandom, VerifyPool};

/// Connections of the whole process (`[runtime] max_connections`), shared by
/// every shard.
#[derive(Debug)]
pub struct Budget {
    open: AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Budget {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes one connection out of the budget, if there is room.
    pub fn acquire(self: &Arc<Self>) -> Option<BudgetSlot> {
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if open >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(BudgetSlot(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One connection's place in the [`Budget`], given back when dropped.
/// `Send`: it moves with a connection handed to another shard.
#[derive(Debug)]
pub struct BudgetSlot(Arc<Budget>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` new connections per second, bursts of up to one
/// second's worth.
#[derive(Debug)]
pub struct ConnectRate {
    tokens: f64,
    last: Instant,
}

impl ConnectRate {
    /// A full bucket.
    pub fn new(now: Instant) -> Self {
        ConnectRate {
            tokens: f64::MAX,
            last: now,
        }
    }

    /// Whether one more connection may be accepted at `now` under `rate`
    /// per second (0 = no limit); takes its token if so.
    pub fn admit(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens.min(rate) + elapsed * rate).min(rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `[auth]` settings in force; replaced as a whole on SIGHUP.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Who may connect without credentials.
    pub anonymous: Anonymous,
    /// The password file, if one is configured.
    pub passwords: Option<Arc<Passwords>>,
    /// Failed-login throttling.
    pub throttle: ThrottleSettings,
    /// Credentials the cache holds at most (0: no cache).
    pub cache_size: usize,
    /// How long a cached credential counts.
    pub cache_ttl: Duration,
    /// The credential cache's generation this password file belongs to
    /// (set by the gate).
    generation: u64,
}

impl AuthSettings {
    /// The settings of `[auth]`, with the password file loaded from
    /// `auth.password_file` (or none).
    pub fn new(auth: &AuthConfig, passwords: Option<Arc<Passwords>>) -> Self {
        AuthSettings {
            anonymous: auth.anonymous,
            passwords,
            throttle: ThrottleSettings {
                enabled: auth.throttle,
                free: auth.failures_before_delay,
                delay: Duration::from_millis(auth.failure_delay_ms),
                max_delay: Duration::from_millis(auth.max_failure_delay_ms),
                ban_after: auth.ban_after_failures,
                ban: Duration::from_secs(auth.ban_seconds),
                capacity: usize::try_from(auth.throttle_table_size).unwrap_or(usize::MAX),
            },
            cache_size: usize::try_from(auth.credential_cache_size).unwrap_or(usize::MAX),
            cache_ttl: Duration::from_secs(auth.credential_cache_seconds),
            generation: 0,
        }
    }

    /// Anonymous policy and password file only; the other settings at their
    /// defaults.
    #[cfg(test)]
    fn basic(anonymous: Anonymous, passwords: Option<Arc<Passwords>>) -> Self {
        let auth = AuthConfig {
            anonymous,
            ..AuthConfig::default()
        };
        AuthSettings::new(&auth, passwords)
    }
}

/// How often a kind of refusal is logged at most; the ones in between are
/// counted and reported with the next line.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit of one kind of log line.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(lines suppressed since the last one)` if a line may be logged
    /// at `now`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The login state of the process, behind one lock (every use is a few
/// map operations).
#[derive(Debug)]
struct LoginState {
    throttle: Throttle,
    cache: CredentialCache,
    throttled_log: LogLimit,
    busy_log: LogLimit,
}

/// The authentication settings and login state shared by every shard.
#[derive(Debug)]
pub struct Gate {
    settings: RwLock<Arc<AuthSettings>>,
    /// Shared with the verifier jobs (they check bans again before they run).
    state: Arc<Mutex<LoginState>>,
    /// Started once the process knows its shard count (after signals are
    /// blocked, so that its threads never take a signal).
    pool: OnceLock<VerifyPool>,
    counters: Arc<LoginCounters>,
}

/// What a connection presented, besides its CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Its address (`None` if the OS would not say).
    pub addr: Option<SocketAddr>,
    /// The Common Name of its verified client certificate, when the TLS
    /// listener uses it as the user name.
    pub cert_user: Option<String>,
}

/// How a connection's credentials are to be settled.
#[derive(Debug)]
pub enum Verdict {
    /// Decided without hashing.
    Now(Identity),
    /// A password to check with [`Gate::check_password`].
    Verify(Login),
}

/// A user name and password to check against a password file.
pub struct Login {
    /// The password file.
    passwords: Arc<Passwords>,
    /// The user name of the CONNECT.
    username: String,
    /// Its password (empty if the CONNECT had none).
    password: Vec<u8>,
    /// The credential cache's generation of `passwords`.
    generation: u64,
}

impl std::fmt::Debug for Login {
    /// The user name only: passwords are not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Gate {
    /// A gate with `settings`; verifier threads come with
    /// [`Gate::start_verifiers`].
    ///
    /// # Errors
    /// [`NoRandom`] if the OS gives no random key for the credential cache.
    pub fn new(settings: AuthSettings) -> Result<Arc<Self>, NoRandom> {
        let state = LoginState {
            throttle: Throttle::new(settings.throttle.clone()),
            cache: CredentialCache::new(settings.cache_size, settings.cache_ttl)?,
            throttled_log: LogLimit::default(),
            busy_log: LogLimit::default(),
        };
        Ok(Arc::new(Gate {
            settings: RwLock::new(Arc::new(settings)),
            state: Arc::new(Mutex::new(state)),
            pool: OnceLock::new(),
            counters: Arc::new(LoginCounters::default()),
        }))
    }

    /// Starts the password verifier threads (once; later calls do nothing).
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn start_verifiers(&self, threads: usize, queue: usize) -> std::io::Result<()> {
        if self.pool.get().is_none() {
            let _ = self.pool.set(VerifyPool::new(threads, queue)?);
        }
        Ok(())
    }

    /// The counters of the login path, for the metrics endpoint.
    pub fn counters(&self) -> Arc<LoginCounters> {
        self.counters.clone()
    }

    fn state(&self) -> MutexGuard<'_, LoginState> {
        lock(&self.state)
    }

    /// Replaces the settings (SIGHUP); connections already in keep theirs.
    /// Cached credentials of users whose password line changed or went are
    /// dropped; what the throttle counted stays.
    pub fn replace(&self, mut settings: AuthSettings) {
        let old = self.current();
        {
            let mut st = self.state();
            st.throttle.set_settings(settings.throttle.clone());
            st.cache.resize(settings.cache_size, settings.cache_ttl);
            let (old_pw, new_pw) = (old.passwords.clone(), settings.passwords.clone());
            st.cache.reload(|user| match (&old_pw, &new_pw) {
                (Some(a), Some(b)) => a.same_hash(b, user),
                _ => false,
            });
            settings.generation = st.cache.generation();
        }
        match self.settings.write() {
            Ok(mut s) => *s = Arc::new(settings),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(settings),
        }
    }

    fn current(&self) -> Arc<AuthSettings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a password file is in force, so that [`Gate::judge`] needs the
    /// CONNECT's credentials (without one, user names are not checked).
    pub fn checks_passwords(&self) -> bool {
        self.current().passwords.is_some()
    }

    /// Decides what can be decided at once; a password is left to verify.
    ///
    /// - a client certificate used as the user name: that user;
    /// - a user name, with a password file: verify (a wrong or missing
    ///   password, or an unknown user: CONNACK 0x86 / 0x04);
    /// - otherwise (no user name, or no password file to check it against)
    ///   the client is anonymous: `anonymous` decides (refused: CONNACK
    ///   0x87 / 0x05).
    pub fn judge(&self, peer: &Peer, credentials: Option<&Credentials>) -> Verdict {
        if let Some(user) = &peer.cert_user {
            return Verdict::Now(Identity::User(user.as_str().into()));
        }
        let settings = self.current();
        let username = credentials.and_then(|c| c.username.as_ref());
        if let (Some(passwords), Some(username)) = (&settings.passwords, username) {
            let password = credentials
                .and_then(|c| c.password.as_ref())
                .map_or_else(Vec::new, |p| p.to_vec());
            return Verdict::Verify(Login {
                passwords: passwords.clone(),
                username: username.as_str().to_owned(),
                password,
                generation: settings.generation,
            });
        }
        let allowed = match settings.anonymous {
            Anonymous::Allow => true,
            Anonymous::Deny => false,
            Anonymous::Loopback => peer.addr.is_some_and(|a| is_loopback(&a)),
        };
        Verdict::Now(if allowed {
            Identity::Anonymous
        } else {
            Identity::Refused(ReasonCode::NOT_AUTHORIZED)
        })
    }

    /// Settles a [`Verdict::Verify`] from `addr`: the credential cache, the
    /// throttle (waiting on this task if it says so), then a verifier
    /// thread. Runs on a shard's executor and never blocks it.
    pub async fn check_password(&self, addr: Option<IpAddr>, login: Login) -> Identity {
        let Login {
            passwords,
            username,
            password,
            generation,
        } = login;
        let source = addr.map(Source::from);
        let decision = {
            let now = Instant::now();
            let mut st = self.state();
            if st.cache.hit(now, &username, &password) {
                self.counters.checks[0].fetch_add(1, Ordering::Relaxed);
                // A known-good password clears failures as a verified one
                // does.
                st.throttle.settle(now, source, &username, true);
                return Identity::User(username.as_str().into());
            }
            st.throttle.check(now, source, &username)
        };
        match decision {
            Decision::Refuse(by) => {
                self.refused_by_throttle(by, addr, &username);
                return Identity::Refused(ReasonCode::BANNED);
            }
            Decision::Go(wait) => {
                if !wait.is_zero() {
                    glommio::timer::sleep(wait).await;
                }
            }
        }
        let Some(pool) = self.pool.get() else {
            warn!("no password verifier threads: refusing a login");
            return Identity::Refused(ReasonCode::SERVER_UNAVAILABLE);
        };
        let (user, pw, state) = (username.clone(), password.clone(), self.state.clone());
        let job = pool.submit(source, move || {
            // Banned while it waited (its other attempts failed): not
            // worth a check.
            if let Some(by) = lock(&state).throttle.banned(Instant::now(), source, &user) {
                return Err(by);
            }
            Ok(passwords.verify(&user, &pw))
        });
        let outcome = match job {
            Ok(outcome) => outcome,
            Err(busy) => {
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.state().busy_log.admit(Instant::now()) {
                    warn!(
                        peer = ?addr,
                        user = username.as_str(),
                        suppressed,
                        "{busy}: login refused (CONNACK 0x89 server busy)"
                    );
                }
                return Identity::Refused(ReasonCode::SERVER_BUSY);
            }
        };
        let ok = match outcome.await {
            Some(Ok(ok)) => ok,
            Some(Err(by)) => {
                self.refused_by_throttle(by, addr, &username);
                return Identity::Refused(ReasonCode::BANNED);
            }
            None => {
                warn!("a password check failed to run: refusing the login");
                return Identity::Refused(ReasonCode::SERVER_UNAVAILABLE);
            }
        };
        self.counters.checks[1].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut st = self.state();
        st.throttle.settle(now, source, &username, ok);
        if ok {
            st.cache.insert(now, generation, &username, &password);
            Identity::User(username.as_str().into())
        } else {
            Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
    }

    /// Counts (and logs, rate-limited) a login the throttle refused.
    fn refused_by_throttle(&self, by: By, addr: Option<IpAddr>, user: &str) {
        let i = match by {
            By::Address => 0,
            By::User => 1,
        };
        self.counters.throttled[i].fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        if let Some(suppressed) = st.throttled_log.admit(Instant::now()) {
            let (address_failures, user_failures) =
                st.throttle.failures(addr.map(Source::from), user);
            info!(
                peer = ?addr,
                user,
                by = by.as_str(),
                address_failures,
                user_failures,
                suppressed,
                "login refused unverified after failed logins (CONNACK 0x8A banned)"
            );
        }
    }
}

/// 127.0.0.0/8, ::1, and IPv4-mapped 127.0.0.0/8.
fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_counts_slots_and_gives_them_back() {
        let b = Budget::new(2);
        let one = b.acquire().expect("room for one");
        let two = b.acquire().expect("room for two");
        assert!(b.acquire().is_none(), "the third is over the budget");
        drop(one);
        assert_eq!(b.open(), 1);
        let three = b.acquire().expect("room again");
        drop((two, three));
        assert_eq!(b.open(), 0);
    }

    #[test]
    fn connect_rate_allows_a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = ConnectRate::new(t0);
        let admitted = (0..20).filter(|_| r.admit(t0, 10)).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        assert!(!r.admit(t0, 10));
        assert!(
            r.admit(t0 + Duration::from_millis(100), 10),
            "one token per 100 ms"
        );
        assert!(!r.admit(t0 + Duration::from_millis(100), 10));
        // Idle for long: the bucket refills to one second's worth only.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| r.admit(later, 10)).count(), 10);
        // 0 = no limit.
        assert!((0..1000).all(|_| r.admit(later, 0)));
    }

    fn peer(addr: &str) -> Peer {
        Peer {
            addr: Some(addr.parse().unwrap()),
            cert_user: None,
        }
    }

    fn creds(user: Option<&str>, password: Option<&str>) -> Credentials {
        Credentials {
            username: user.map(Into::into),
            password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        }
    }

    fn now(v: Verdict) -> Identity {
        match v {
            Verdict::Now(i) => i,
            Verdict::Verify(login) => panic!("would verify {}", login.username),
        }
    }

    #[test]
    fn anonymous_policy() {
        let refused = Identity::Refused(ReasonCode::NOT_AUTHORIZED);
        for (policy, addr, expect) in [
            (Anonymous::Loopback, "127.0.0.1:5000", Identity::Anonymous),
            (Anonymous::Loopback, "127.9.9.9:5000", Identity::Anonymous),
            (Anonymous::Loopback, "[::1]:5000", Identity::Anonymous),
            (
                Anonymous::Loopback,
                "[::ffff:127.0.0.1]:5000",
                Identity::Anonymous,
            ),
            (Anonymous::Loopback, "10.0.0.7:5000", refused.clone()),
            (Anonymous::Loopback, "[2001:db8::1]:5000", refused.clone()),
            (Anonymous::Deny, "127.0.0.1:5000", refused.clone()),
            (Anonymous::Allow, "10.0.0.7:5000", Identity::Anonymous),
        ] {
            let gate = Gate::new(AuthSettings::basic(policy, None)).expect("a gate");
            assert_eq!(
                now(gate.judge(&peer(addr), None)),
                expect,
                "{policy:?} {addr}"
            );
            // Without a password file a user name is not checked: still
            // anonymous, and never that user.
            let c = creds(Some("admin"), Some("x"));
            assert_eq!(
                now(gate.judge(&peer(addr), Some(&c))),
                expect,
                "{policy:?} {addr}"
            );
        }
    }

    #[test]
    fn certificate_user_and_passwords() {
        let passwords = Arc::new(Passwords::parse("", "passwd").expect("an empty file"));
        let gate =
            Gate::new(AuthSettings::basic(Anonymous::Deny, Some(passwords))).expect("a gate");
        let mut p = peer("10.0.0.7:1");
        p.cert_user = Some("device-1".into());
        assert_eq!(now(gate.judge(&p, None)), Identity::User("device-1".into()));
        match gate.judge(&peer("10.0.0.7:1"), Some(&creds(Some("bob"), None))) {
            Verdict::Verify(login) => {
                assert_eq!((login.username.as_str(), login.password.len()), ("bob", 0));
                assert!(!format!("{login:?}").contains("password:"));
            }
            Verdict::Now(i) => panic!("decided without verifying: {i:?}"),
        }
        // No user name: anonymous, denied here.
        assert_eq!(
            now(gate.judge(&peer("127.0.0.1:1"), Some(&creds(None, None)))),
            Identity::Refused(ReasonCode::NOT_AUTHORIZED)
        );
        gate.replace(AuthSettings::basic(Anonymous::Allow, None));
        assert_eq!(
            now(gate.judge(&peer("10.0.0.7:1"), None)),
            Identity::Anonymous
        );
    }

    fn login(gate: &Gate, user: &str, password: &str) -> Login {
        match gate.judge(
            &peer("127.0.0.1:1"),
            Some(&creds(Some(user), Some(password))),
        ) {
            Verdict::Verify(login) => login,
            Verdict::Now(i) => panic!("decided without verifying: {i:?}"),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("an address"))
    }

    /// A gate over a password file of alice ("a-pw") and bob ("b-pw"),
    /// throttling with no waits (`free` high) and bans after 3 failures.
    fn password_gate() -> Arc<Gate> {
        let text = format!(
            "alice:{}\nbob:{}\n",
            vmqtt_auth::hash_password(b"a-pw"),
            vmqtt_auth::hash_password(b"b-pw")
        );
        let passwords = Arc::new(Passwords::parse(&text, "passwd").expect("parses"));
        let auth = AuthConfig {
            anonymous: Anonymous::Deny,
            failures_before_delay: 1000,
            ban_after_failures: 3,
            ..AuthConfig::default()
        };
        let gate = Gate::new(AuthSettings::new(&auth, Some(passwords))).expect("a gate");
        gate.start_verifiers(2, 8).expect("threads");
        gate
    }

    fn check(gate: &Gate, addr: &str, user: &str, password: &str) -> Identity {
        let l = login(gate, user, password);
        futures_lite::future::block_on(gate.check_password(ip(addr), l))
    }

    #[test]
    fn passwords_are_checked_on_the_pool_then_cached() {
        let gate = password_gate();
        let alice = Identity::User("alice".into());
        assert_eq!(check(&gate, "127.0.0.2", "alice", "a-pw"), alice);
        let c = gate.counters();
        assert_eq!(c.checks[1].load(Ordering::Relaxed), 1, "one argon2 check");
        for _ in 0..10 {
            assert_eq!(check(&gate, "127.0.0.2", "alice", "a-pw"), alice);
        }
        assert_eq!(c.checks[0].load(Ordering::Relaxed), 10, "ten cache hits");
        assert_eq!(c.checks[1].load(Ordering::Relaxed), 1);
        // A wrong password is checked (not a hit) and refused, never cached.
        let bad = Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        assert_eq!(check(&gate, "127.0.0.2", "alice", "a-pW"), bad);
        assert_eq!(check(&gate, "127.0.0.2", "alice", "a-pW"), bad);
        assert_eq!(c.checks[1].load(Ordering::Relaxed), 3);
    }

    #[test]
    fn failures_ban_the_address_and_the_user_but_not_cached_clients() {
        let gate = password_gate();
        let alice = Identity::User("alice".into());
        assert_eq!(check(&gate, "127.0.0.9", "alice", "a-pw"), alice);
        let bad = Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        let banned = Identity::Refused(ReasonCode::BANNED);
        for _ in 0..3 {
            assert_eq!(check(&gate, "127.0.0.2", "alice", "guess"), bad);
        }
        // 127.0.0.2 is banned, for any user, even with the right password.
        assert_eq!(check(&gate, "127.0.0.2", "bob", "b-pw"), banned);
        // alice's name is banned from other addresses too...
        assert_eq!(check(&gate, "127.0.0.3", "alice", "guess"), banned);
        let c = gate.counters();
        assert_eq!(c.throttled[0].load(Ordering::Relaxed), 1);
        assert_eq!(c.throttled[1].load(Ordering::Relaxed), 1);
        // ...but her client that logged in before is recognised by the cache
        // and not locked out, from anywhere.
        assert_eq!(check(&gate, "127.0.0.9", "alice", "a-pw"), alice);
        assert_eq!(check(&gate, "127.0.0.2", "alice", "a-pw"), alice);
        // Another address and user are not affected.
        assert_eq!(
            check(&gate, "127.0.0.4", "bob", "b-pw"),
            Identity::User("bob".into())
        );
    }

    #[test]
    fn reload_drops_the_cache_of_changed_or_deleted_users() {
        let gate = password_gate();
        assert_eq!(
            check(&gate, "127.0.0.2", "alice", "a-pw"),
            Identity::User("alice".into())
        );
        assert_eq!(
            check(&gate, "127.0.0.2", "bob", "b-pw"),
            Identity::User("bob".into())
        );
        let old = gate.current();
        let stale = login(&gate, "alice", "a-pw"); // judged before the reload
                                                   // alice's password changes and bob is deleted.
        let text = format!("alice:{}\n", vmqtt_auth::hash_password(b"other"));
        let mut next = (*old).clone();
        next.passwords = Some(Arc::new(Passwords::parse(&text, "passwd").expect("parses")));
        gate.replace(next);
        let c = gate.counters();
        let hashed = c.checks[1].load(Ordering::Relaxed);
        // alice's password changed and bob went: neither is a cache hit.
        assert_eq!(
            check(&gate, "127.0.0.2", "alice", "a-pw"),
            Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(
            check(&gate, "127.0.0.3", "bob", "b-pw"),
            Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(c.checks[1].load(Ordering::Relaxed), hashed + 2);
        // A check judged against the old file and finished after the reload
        // is not cached (it verified against the old file).
        let r = futures_lite::future::block_on(gate.check_password(ip("127.0.0.5"), stale));
        assert_eq!(r, Identity::User("alice".into()));
        assert_eq!(
            check(&gate, "127.0.0.5", "alice", "a-pw"),
            Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
    }

    #[test]
    fn reload_keeps_the_cache_of_unchanged_users() {
        let gate = password_gate();
        assert_eq!(
            check(&gate, "127.0.0.2", "alice", "a-pw"),
            Identity::User("alice".into())
        );
        // The same file read again (SIGHUP with no change to alice's line).
        let same = gate.current().as_ref().clone();
        gate.replace(same);
        let c = gate.counters();
        let hashed = c.checks[1].load(Ordering::Relaxed);
        assert_eq!(
            check(&gate, "127.0.0.2", "alice", "a-pw"),
            Identity::User("alice".into())
        );
        assert_eq!(c.checks[1].load(Ordering::Relaxed), hashed, "a cache hit");
    }

    #[test]
    fn log_lines_are_rate_limited() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), None);
    }
}
