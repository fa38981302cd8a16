//! Who gets in: the checks a new connection passes on its accepting shard
//! before the core sees its CONNECT — the process-wide connection budget,
//! each shard's connection count and connect rate, and authentication
//! (password file, client certificate, anonymous policy).
//!
//! Password hashes are slow by design (argon2id), so they are verified on
//! glommio's blocking thread, one at a time per shard: a flood of bad
//! passwords costs that shard's blocking thread, never its reactor, and the
//! storage task always has the other blocking thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use vmqtt::broker::{Credentials, Identity};
use vmqtt::codec::ReasonCode;
use vmqtt_auth::Passwords;
use vmqtt_config::Anonymous;

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
}

/// The authentication settings shared by every shard.
#[derive(Debug)]
pub struct Gate {
    settings: RwLock<Arc<AuthSettings>>,
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
    /// A password to verify (slowly, off the reactor) for this user.
    Verify {
        /// The password file.
        passwords: Arc<Passwords>,
        /// The user name of the CONNECT.
        username: String,
        /// Its password (empty if the CONNECT had none).
        password: Vec<u8>,
    },
}

impl Gate {
    /// A gate with `settings`.
    pub fn new(settings: AuthSettings) -> Arc<Self> {
        Arc::new(Gate {
            settings: RwLock::new(Arc::new(settings)),
        })
    }

    /// Replaces the settings (SIGHUP); connections already in keep theirs.
    pub fn replace(&self, settings: AuthSettings) {
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
            return Verdict::Verify {
                passwords: passwords.clone(),
                username: username.as_str().to_owned(),
                password,
            };
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

/// Settles a [`Verdict::Verify`]: the result of checking the password.
pub fn verify(passwords: &Passwords, username: &str, password: &[u8]) -> Identity {
    if passwords.verify(username, password) {
        Identity::User(username.into())
    } else {
        Identity::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
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
            Verdict::Verify { username, .. } => panic!("would verify {username}"),
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
            let gate = Gate::new(AuthSettings {
                anonymous: policy,
                passwords: None,
            });
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
        let gate = Gate::new(AuthSettings {
            anonymous: Anonymous::Deny,
            passwords: Some(passwords),
        });
        let mut p = peer("10.0.0.7:1");
        p.cert_user = Some("device-1".into());
        assert_eq!(now(gate.judge(&p, None)), Identity::User("device-1".into()));
        match gate.judge(&peer("10.0.0.7:1"), Some(&creds(Some("bob"), None))) {
            Verdict::Verify {
                username, password, ..
            } => assert_eq!((username.as_str(), password.len()), ("bob", 0)),
            Verdict::Now(i) => panic!("decided without verifying: {i:?}"),
        }
        // No user name: anonymous, denied here.
        assert_eq!(
            now(gate.judge(&peer("127.0.0.1:1"), Some(&creds(None, None)))),
            Identity::Refused(ReasonCode::NOT_AUTHORIZED)
        );
        gate.replace(AuthSettings {
            anonymous: Anonymous::Allow,
            passwords: None,
        });
        assert_eq!(
            now(gate.judge(&peer("10.0.0.7:1"), None)),
            Identity::Anonymous
        );
    }
}
