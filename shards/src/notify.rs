//! [`Notify`]: a single-waiter wake-up flag for tasks of one executor.
//!
//! Shard-local (`!Send`): it lives in an `Rc` shared by the tasks of one core.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A flag that one task waits on and others set.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notify")
            .field("set", &self.set.get())
            .finish_non_exhaustive()
    }
}

impl Notify {
    /// Sets the flag and wakes the waiting task, if any.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits until the flag is set, then clears it.
    pub fn wait(&self) -> Wait<'_> {
        Wait(self)
    }
}

/// The future returned by [`Notify::wait`].
#[derive(Debug)]
pub struct Wait<'a>(&'a Notify);

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            Poll::Ready(())
        } else {
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// Wakes every task waiting on it (e.g. all readers held back by
/// backpressure). Shard-local (`!Send`).
#[derive(Default)]
pub struct Broadcast {
    generation: Cell<u64>,
    wakers: std::cell::RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast")
            .field("generation", &self.generation.get())
            .finish_non_exhaustive()
    }
}

impl Broadcast {
    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits for the next [`Broadcast::notify_all`].
    pub fn wait(&self) -> BroadcastWait<'_> {
        BroadcastWait {
            b: self,
            start: self.generation.get(),
        }
    }
}

/// The future returned by [`Broadcast::wait`].
#[derive(Debug)]
pub struct BroadcastWait<'a> {
    b: &'a Broadcast,
    start: u64,
}

impl Future for BroadcastWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.b.generation.get() != self.start {
            Poll::Ready(())
        } else {
            self.b.wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }
    }
}
