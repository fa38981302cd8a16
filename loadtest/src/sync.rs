//! Executor-local wake-ups (`!Send`): a single-waiter [`Notify`] and a
//! many-waiter, open-once [`Gate`]. Cross-thread signals are atomics in
//! [`crate::runner::Control`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes one waiting task; a notification with no waiter is kept until the
/// next wait.
#[derive(Debug, Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter (or the next one to wait).
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for a notification and consumes it.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A gate that opens once and then lets every waiter through, now and
/// later. Waiters that give up (their future is dropped) free their slot.
#[derive(Debug, Default)]
pub struct Gate {
    open: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Gate {
    /// Opens the gate and wakes every waiter.
    pub fn open(&self) {
        self.open.set(true);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        self.free.borrow_mut().clear();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        self.open.get()
    }

    /// Waits until the gate is open.
    pub fn wait(&self) -> GateWait<'_> {
        GateWait {
            gate: self,
            slot: None,
        }
    }
}

/// The future of [`Gate::wait`].
#[derive(Debug)]
pub struct GateWait<'a> {
    gate: &'a Gate,
    slot: Option<usize>,
}

impl Future for GateWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let gate = self.gate;
        if gate.open.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut wakers = gate.wakers.borrow_mut();
        match self.slot {
            Some(i) if i < wakers.len() => {
                let stale = wakers[i].as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
                if stale {
                    wakers[i] = Some(cx.waker().clone());
                }
            }
            _ => {
                let i = match gate.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for GateWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if self.gate.open.get() {
                return;
            }
            let mut wakers = self.gate.wakers.borrow_mut();
            if let Some(w) = wakers.get_mut(i) {
                *w = None;
                self.gate.free.borrow_mut().push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn notify_is_kept_until_waited() {
        let n = Notify::default();
        n.notify();
        future::block_on(n.wait());
        assert!(future::block_on(future::poll_once(n.wait())).is_none());
    }

    #[test]
    fn gate_releases_everyone_and_reuses_slots() {
        let g = Gate::default();
        {
            let mut a = Box::pin(g.wait());
            assert!(future::block_on(future::poll_once(&mut a)).is_none());
        }
        assert_eq!(g.free.borrow().len(), 1);
        let mut b = Box::pin(g.wait());
        assert!(future::block_on(future::poll_once(&mut b)).is_none());
        assert_eq!(g.wakers.borrow().len(), 1);
        g.open();
        assert!(future::block_on(future::poll_once(&mut b)).is_some());
        assert!(future::block_on(future::poll_once(g.wait())).is_some());
        assert!(g.is_open());
    }
}
