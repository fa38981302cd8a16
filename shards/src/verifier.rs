//! Where passwords are checked: [`VerifyPool`], a small pool of threads of
//! the process with a bounded queue served fairly, one source address after
//! the other (argon2 is slow and takes 19 MiB per check by design, so a few
//! threads bound both CPU and memory, and the shards' own blocking threads
//! stay free for storage), and
//! [`CredentialCache`], the credentials verified recently, so that a
//! reconnect storm of legitimate clients is not bounded by argon2.
//!
//! Both are shared by every shard (`Send + Sync`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ring::hmac;

use crate::throttle::Source;

/// Locks `m`, recovering from poisoning (the data stays consistent: every
/// critical section here is a few field updates that cannot panic halfway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Whose check a job is: its source address (`None`: unknown).
pub type SourceKey = Option<Source>;

/// Checks one source may have waiting at most: a quarter of the queue.
fn per_source(capacity: usize) -> usize {
    (capacity / 4).max(1)
}

/// The waiting checks, one queue per source, served in turn.
#[derive(Default)]
struct Queues {
    by_source: HashMap<SourceKey, VecDeque<Job>>,
    /// Sources with checks waiting, in the order they are served.
    turn: VecDeque<SourceKey>,
    /// Checks waiting in all.
    len: usize,
    /// The pool is gone: threads exit once the queues are empty.
    closed: bool,
}

impl Queues {
    fn pop(&mut self) -> Option<Job> {
        let key = self.turn.pop_front()?;
        let q = self.by_source.get_mut(&key)?;
        let job = q.pop_front();
        if q.is_empty() {
            self.by_source.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        if job.is_some() {
            self.len -= 1;
        }
        job
    }
}

struct PoolShared {
    queues: Mutex<Queues>,
    ready: Condvar,
    /// Checks that may wait in all.
    capacity: usize,
}

/// Threads that check passwords, with a bounded queue served one source
/// address after the other: a source that sends a thousand logins at once
/// waits for its own, while a login from anywhere else is served after at
/// most one check of each other waiting source.
pub struct VerifyPool {
    shared: Arc<PoolShared>,
    threads: usize,
}

impl std::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("threads", &self.threads)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// The verifier queue is full (in all, or for that source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password verifiers are busy")]
pub struct Busy;

impl VerifyPool {
    /// Starts `threads` threads (at least one) with room for `capacity`
    /// waiting checks (a quarter of them per source at most).
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<VerifyPool> {
        let threads = threads.max(1);
        let shared = Arc::new(PoolShared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("vmqtt-verify-{i}"))
                .spawn(move || worker(&shared))?;
        }
        Ok(VerifyPool { shared, threads })
    }

    /// Queues `f` for `source`; its result comes out of the returned future
    /// (`None` if it was dropped unrun).
    ///
    /// # Errors
    /// [`Busy`] if the queue is full, or `source` holds a quarter of it.
    pub fn submit<T, F>(&self, source: SourceKey, f: F) -> Result<Outcome<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            done: false,
            waker: None,
        }));
        let filler = Filler(slot.clone());
        let job: Job = Box::new(move || filler.fill(f()));
        {
            let mut q = lock(&self.shared.queues);
            if q.len >= self.shared.capacity {
                return Err(Busy);
            }
            let per_source = per_source(self.shared.capacity);
            let mine = q.by_source.entry(source).or_default();
            if mine.len() >= per_source {
                return Err(Busy);
            }
            mine.push_back(job);
            if mine.len() == 1 {
                q.turn.push_back(source);
            }
            q.len += 1;
        }
        self.shared.ready.notify_one();
        Ok(Outcome(slot))
    }
}

impl Drop for VerifyPool {
    fn drop(&mut self) {
        lock(&self.shared.queues).closed = true;
        self.shared.ready.notify_all();
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let job = {
            let mut q = lock(&shared.queues);
            loop {
                if let Some(job) = q.pop() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = match shared.ready.wait(q) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        };
        // A panicking check loses its result (its waiter sees `None`), not
        // the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

struct Slot<T> {
    value: Option<T>,
    done: bool,
    waker: Option<Waker>,
}

/// The job's end of a result slot: fills it, or marks it done (empty)
/// if the job is dropped unrun.
struct Filler<T>(Arc<Mutex<Slot<T>>>);

impl<T> Filler<T> {
    fn fill(self, value: T) {
        lock(&self.0).value = Some(value);
        // (Drop marks it done and wakes the waiter.)
    }
}

impl<T> Drop for Filler<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.done = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The result of a job submitted to a [`VerifyPool`]: `None` if it was
/// dropped unrun. Waking works across threads (glommio queues a foreign
/// wake-up to the task's executor).
pub struct Outcome<T>(Arc<Mutex<Slot<T>>>);

impl<T> std::fmt::Debug for Outcome<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome").finish_non_exhaustive()
    }
}

impl<T> Future for Outcome<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.0);
        if slot.done {
            return Poll::Ready(slot.value.take());
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One cached credential.
#[derive(Debug)]
struct Cached {
    /// Whose (to drop a user's entries when the password file changes).
    user: Box<str>,
    /// Until when it counts.
    expires: Instant,
    /// Position in the eviction order.
    seq: u64,
}

/// Credentials verified recently: a keyed MAC (HMAC-SHA256 with a random
/// key made at start, never stored) of the user name and password, the
/// user name and an expiry. No password is kept, and only successful
/// checks are ever cached. Bounded: at `capacity` entries the oldest goes.
pub struct CredentialCache {
    key: hmac::Key,
    entries: HashMap<[u8; 32], Cached>,
    order: VecDeque<([u8; 32], u64)>,
    seq: u64,
    capacity: usize,
    ttl: Duration,
    /// Bumped whenever the password file is replaced: a check started
    /// against an older file is not cached.
    generation: u64,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The OS random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("no random key for the credential cache (the OS random number generator failed)")]
pub struct NoRandom;

impl CredentialCache {
    /// An empty cache of `capacity` entries (0: caches nothing) that count
    /// for `ttl`, with a fresh random key.
    ///
    /// # Errors
    /// [`NoRandom`] if the OS gives no random bytes.
    pub fn new(capacity: usize, ttl: Duration) -> Result<Self, NoRandom> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| NoRandom)?;
        Ok(CredentialCache {
            key,
            entries: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity,
            ttl,
            generation: 0,
        })
    }

    /// Changes the size and lifetime of entries (SIGHUP).
    pub fn resize(&mut self, capacity: usize, ttl: Duration) {
        self.capacity = capacity;
        self.ttl = ttl;
        self.evict_to(capacity);
    }

    fn mac(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The current generation, to pass back to [`CredentialCache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `password` was verified as `user`'s within the TTL.
    pub fn hit(&mut self, now: Instant, user: &str, password: &[u8]) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mac = self.mac(user, password);
        match self.entries.get(&mac) {
            Some(c) if c.expires > now && &*c.user == user => true,
            Some(_) => {
                self.entries.remove(&mac);
                false
            }
            None => false,
        }
    }

    /// Remembers that `password` is `user`'s, verified against the
    /// password file of `generation` (ignored if it was replaced since).
    pub fn insert(&mut self, now: Instant, generation: u64, user: &str, password: &[u8]) {
        if self.capacity == 0 || generation != self.generation {
            return;
        }
        let mac = self.mac(user, password);
        self.seq += 1;
        let seq = self.seq;
        self.entries.insert(
            mac,
            Cached {
                user: user.into(),
                expires: now + self.ttl,
                seq,
            },
        );
        self.order.push_back((mac, seq));
        self.evict_to(self.capacity);
    }

    fn evict_to(&mut self, capacity: usize) {
        while self.entries.len() > capacity {
            let Some((mac, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&mac).is_some_and(|c| c.seq == seq) {
                self.entries.remove(&mac);
            }
        }
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(m, s)| entries.get(m).is_some_and(|c| c.seq == *s));
        }
    }

    /// The password file was replaced: keeps only the entries of users for
    /// whom `unchanged` says their password line is the same, and starts a
    /// new generation (checks still running against the old file are not
    /// cached).
    pub fn reload(&mut self, unchanged: impl Fn(&str) -> bool) {
        self.generation += 1;
        self.entries.retain(|_, c| unchanged(&c.user));
        self.evict_to(self.capacity);
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn block_on<F: Future>(f: F) -> F::Output {
        futures_lite::future::block_on(f)
    }

    fn src(last: u8) -> SourceKey {
        Some(Source::V4([127, 0, 0, last]))
    }

    #[test]
    fn pool_runs_jobs_and_returns_results() {
        let pool = VerifyPool::new(2, 64).expect("threads");
        let outcomes: Vec<_> = (0..8u32)
            .map(|i| pool.submit(src(i as u8 % 3), move || i * 10).expect("room"))
            .collect();
        let results: Vec<_> = outcomes.into_iter().map(block_on).collect();
        assert_eq!(results, (0..8u32).map(|i| Some(i * 10)).collect::<Vec<_>>());
    }

    /// A gate a test opens: a flag and its condition variable.
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// A pool of one thread, held busy until the returned gate opens.
    fn held_pool(capacity: usize) -> (VerifyPool, Gate, Outcome<()>) {
        let pool = VerifyPool::new(1, capacity).expect("threads");
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = gate.clone();
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let blocker = pool
            .submit(None, move || {
                s.fetch_add(1, Ordering::SeqCst);
                let (m, cv) = &*g;
                let mut open = lock(m);
                while !*open {
                    open = cv.wait(open).expect("not poisoned");
                }
            })
            .expect("room");
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        (pool, gate, blocker)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *lock(&gate.0) = true;
        gate.1.notify_all();
    }

    #[test]
    fn pool_serves_sources_in_turn() {
        let (pool, gate, blocker) = held_pool(64);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut outcomes = Vec::new();
        // A flood from .2 queued first, then one login each from .3 and .4.
        for (source, name) in [
            (2, "flood1"),
            (2, "flood2"),
            (2, "flood3"),
            (3, "real"),
            (4, "other"),
            (2, "flood4"),
        ] {
            let o = order.clone();
            outcomes.push(
                pool.submit(src(source), move || lock(&o).push(name))
                    .expect("room"),
            );
        }
        open(&gate);
        assert_eq!(block_on(blocker), Some(()));
        for o in outcomes {
            assert_eq!(block_on(o), Some(()));
        }
        assert_eq!(
            *lock(&order),
            ["flood1", "real", "other", "flood2", "flood3", "flood4"]
        );
    }

    #[test]
    fn pool_queue_is_bounded_in_all_and_per_source() {
        let (pool, gate, blocker) = held_pool(20);
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(pool.submit(src(2), || ()).expect("room"));
        }
        assert_eq!(pool.submit(src(2), || ()).err(), Some(Busy), "per source");
        for i in 0..15 {
            outcomes.push(pool.submit(src(10 + i), || ()).expect("room"));
        }
        assert_eq!(pool.submit(src(99), || ()).err(), Some(Busy), "in all");
        open(&gate);
        assert_eq!(block_on(blocker), Some(()));
        for o in outcomes {
            assert_eq!(block_on(o), Some(()));
        }
        assert!(pool.submit(src(2), || ()).is_ok(), "room again");
    }

    #[test]
    fn a_job_that_panics_resolves_to_none_and_the_pool_goes_on() {
        let pool = VerifyPool::new(1, 4).expect("threads");
        let bad = pool
            .submit(None, || -> u8 { panic!("boom (expected by this test)") })
            .expect("room");
        assert_eq!(block_on(bad), None);
        let next = pool.submit(None, || 7).expect("room");
        assert_eq!(block_on(next), Some(7), "the thread survived");
    }

    #[test]
    fn cache_hits_only_the_exact_credentials_within_the_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut c = CredentialCache::new(10, ttl).expect("random");
        assert!(!c.hit(t0, "alice", b"pw"));
        let g = c.generation();
        c.insert(t0, g, "alice", b"pw");
        assert!(c.hit(t0, "alice", b"pw"));
        assert!(!c.hit(t0, "alice", b"pW"), "another password");
        assert!(!c.hit(t0, "alicep", b"w"), "the same bytes split otherwise");
        assert!(!c.hit(t0, "bob", b"pw"));
        assert!(c.hit(t0 + ttl - Duration::from_millis(1), "alice", b"pw"));
        assert!(!c.hit(t0 + ttl, "alice", b"pw"), "expired");
        assert_eq!(c.len(), 0, "an expired entry is dropped when seen");
    }

    #[test]
    fn cache_stores_no_password_and_another_process_key_differs() {
        let a = CredentialCache::new(10, Duration::from_secs(1)).expect("random");
        let b = CredentialCache::new(10, Duration::from_secs(1)).expect("random");
        let (ma, mb) = (a.mac("alice", b"pw"), b.mac("alice", b"pw"));
        assert_ne!(ma, mb, "a random key per cache");
        assert_eq!(ma, a.mac("alice", b"pw"));
        assert!(!format!("{a:?}").contains("pw"));
    }

    #[test]
    fn cache_is_bounded() {
        let t0 = Instant::now();
        let mut c = CredentialCache::new(100, Duration::from_secs(60)).expect("random");
        for i in 0..1000 {
            let g = c.generation();
            c.insert(t0, g, &format!("u{i}"), b"pw");
        }
        assert_eq!(c.len(), 100);
        assert!(c.order.len() <= 2 * 100 + 16);
        assert!(c.hit(t0, "u999", b"pw"));
        assert!(!c.hit(t0, "u0", b"pw"), "the oldest went first");
        c.resize(10, Duration::from_secs(60));
        assert_eq!(c.len(), 10);
        c.resize(0, Duration::from_secs(60));
        let g = c.generation();
        c.insert(t0, g, "x", b"pw");
        assert!(!c.hit(t0, "x", b"pw"), "size 0 caches nothing");
    }

    #[test]
    fn reload_keeps_unchanged_users_and_refuses_stale_checks() {
        let t0 = Instant::now();
        let mut c = CredentialCache::new(10, Duration::from_secs(60)).expect("random");
        let g = c.generation();
        c.insert(t0, g, "alice", b"a");
        c.insert(t0, g, "bob", b"b");
        // bob is deleted (or his password changed) in the new file.
        c.reload(|user| user == "alice");
        assert!(c.hit(t0, "alice", b"a"));
        assert!(!c.hit(t0, "bob", b"b"));
        // A check that started before the reload finishes after it: it was
        // made against the old file, so it is not cached.
        c.insert(t0, g, "bob", b"b");
        assert!(!c.hit(t0, "bob", b"b"));
        let g2 = c.generation();
        c.insert(t0, g2, "bob", b"b2");
        assert!(c.hit(t0, "bob", b"b2"));
    }
}
