//! [`QueueBudget`]: the bytes of messages queued for persistent sessions,
//! shared by every shard of the process (`[storage] max_queued_bytes`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The process-wide allowance of bytes queued for persistent sessions.
/// Shared by every shard (`Arc`); each shard takes and gives back what its
/// sessions queue, with relaxed atomics (a bound, not a ledger).
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicU64,
    max: u64,
}

impl QueueBudget {
    /// A budget of `max` bytes; 0 = no limit.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Takes `bytes` if they fit; `false` (nothing taken) if not.
    pub fn try_take(&self, bytes: u64) -> bool {
        if self.max == 0 {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(bytes) > self.max {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes` whatever the limit (messages recovered at start: they
    /// were accepted before).
    pub fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `bytes` taken before.
    pub fn give(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit; 0 = none.
    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_gives_back() {
        let b = QueueBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41), "over the limit: nothing taken");
        assert_eq!(b.used(), 60);
        assert!(b.try_take(40));
        b.give(100);
        assert_eq!(b.used(), 0);
        b.give(5);
        assert_eq!(b.used(), 0, "never below zero");
    }

    #[test]
    fn zero_is_no_limit() {
        let b = QueueBudget::new(0);
        assert!(b.try_take(u64::MAX / 2));
        assert!(b.try_take(u64::MAX / 4));
    }
}
