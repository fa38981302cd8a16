//! The control plane from the main thread to the shards: one queue per
//! shard, which the shard's control task awaits (woken through a socket
//! pair, so a message is acted on at once, not on a timer tick), and the
//! acknowledgement each shard sends once it has acted on a message.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmqtt::broker::CoreConfig;

/// What the main thread asks of a shard.
#[derive(Debug)]
pub enum Control {
    /// New settings from a configuration reload (SIGHUP), applied from now
    /// on; acknowledged once the shard's core has them.
    Reconfigure(CoreConfig),
    /// The cluster's members changed (from the etcd thread; not waited
    /// for, and acknowledged to nobody).
    Membership(std::sync::Arc<vmqtt_cluster::Membership>),
    /// Stop: close every connection and let the last storage batches and
    /// bytes out (bounded); acknowledged once that is done and the shard
    /// stopped listening.
    Stop,
}

/// A control message and where to acknowledge it.
#[derive(Debug)]
struct Request {
    what: Control,
    ack: mpsc::Sender<usize>,
}

/// Acknowledges one control message, with the shard's index.
#[derive(Debug)]
pub(super) struct Ack(mpsc::Sender<usize>);

impl Ack {
    /// The message was acted on.
    pub(super) fn done(self, shard: usize) {
        // (The main thread may have stopped waiting: then nobody listens.)
        let _ = self.0.send(shard);
    }
}

/// The main thread's end of one shard's control channel.
#[derive(Debug)]
struct ControlSender {
    queue: mpsc::Sender<Request>,
    /// One byte written per message wakes the shard's control task.
    wake: UnixStream,
}

impl ControlSender {
    /// Queues `request` and wakes the shard.
    fn send(&self, request: Request) {
        // A shard that ended dropped its queue: it never answers.
        if self.queue.send(request).is_ok() {
            // The message is queued before the byte that wakes the shard is
            // written, so its wake-up sees it. A full socket (WouldBlock)
            // has wake-ups pending; a closed one, a shard that ended.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// The main thread's ends of every shard's control channel. Lives on the
/// main thread.
#[derive(Debug)]
pub struct Controller {
    shards: Vec<ControlSender>,
}

/// One shard's end of its control channel: made on the main thread, moved
/// to the shard (`Send`), where its wake-up socket is bound to the executor
/// ([`ControlReceiver::into_parts`]).
#[derive(Debug)]
pub struct ControlReceiver {
    queue: mpsc::Receiver<Request>,
    wake: UnixStream,
}

impl Controller {
    /// A control channel for each of `shards` shards: the controller and the
    /// shards' ends, in shard order.
    pub fn new(shards: usize) -> io::Result<(Controller, Vec<ControlReceiver>)> {
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::channel();
            let (main_end, shard_end) = UnixStream::pair()?;
            // Never blocked by a shard that does not read: a full socket
            // already holds wake-ups the shard has yet to see.
            main_end.set_nonblocking(true)?;
            shard_end.set_nonblocking(true)?;
            senders.push(ControlSender {
                queue: tx,
                wake: main_end,
            });
            receivers.push(ControlReceiver {
                queue: rx,
                wake: shard_end,
            });
        }
        Ok((Controller { shards: senders }, receivers))
    }

    /// Sends `what(shard)` to every shard and waits, until `within` has
    /// passed, for each to acknowledge it. Returns the shards that did not
    /// (in order); empty when every shard acted on it.
    pub fn request_all(
        &self,
        mut what: impl FnMut(usize) -> Control,
        within: Duration,
    ) -> Vec<usize> {
        let deadline = Instant::now() + within;
        let (ack, acks) = mpsc::channel();
        for (index, shard) in self.shards.iter().enumerate() {
            let request = Request {
                what: what(index),
                ack: ack.clone(),
            };
            shard.send(request);
        }
        // Only the shards' copies left: once each is answered or dropped
        // (a shard that ended), the wait is over before the deadline.
        drop(ack);
        let mut answered = vec![false; self.shards.len()];
        while answered.iter().any(|a| !a) {
            let left = deadline.saturating_duration_since(Instant::now());
            match acks.recv_timeout(left) {
                Ok(index) => {
                    if let Some(a) = answered.get_mut(index) {
                        *a = true;
                    }
                }
                Err(_) => break,
            }
        }
        (0..answered.len()).filter(|&i| !answered[i]).collect()
    }
}

/// A second sender to every shard, for another thread (the etcd thread):
/// its messages are queued and not waited for.
#[derive(Debug)]
pub struct Announcer {
    shards: Vec<ControlSender>,
}

impl Controller {
    /// An [`Announcer`] to the same shards.
    pub fn announcer(&self) -> io::Result<Announcer> {
        let shards = self
            .shards
            .iter()
            .map(|s| {
                Ok(ControlSender {
                    queue: s.queue.clone(),
                    wake: s.wake.try_clone()?,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Announcer { shards })
    }
}

impl Announcer {
    /// Queues `what(shard)` for every shard and wakes them; returns at once.
    pub fn send_all(&self, mut what: impl FnMut(usize) -> Control) {
        // Nobody waits for these acknowledgements.
        let (ack, _) = mpsc::channel();
        for (index, shard) in self.shards.iter().enumerate() {
            let request = Request {
                what: what(index),
                ack: ack.clone(),
            };
            shard.send(request);
        }
    }
}

impl ControlReceiver {
    /// The queue and the shard's end of the wake-up socket (to bind to the
    /// shard's executor).
    pub(super) fn into_parts(self) -> (ControlQueue, OwnedFd) {
        (ControlQueue(self.queue), OwnedFd::from(self.wake))
    }
}

/// A shard's queue of control messages. Read after each wake-up.
#[derive(Debug)]
pub(super) struct ControlQueue(mpsc::Receiver<Request>);

impl ControlQueue {
    /// The next message, if one is queued.
    pub(super) fn try_next(&self) -> Option<(Control, Ack)> {
        let r = self.0.try_recv().ok()?;
        Some((r.what, Ack(r.ack)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::thread;

    use super::*;

    /// Acts as shard `index`: waits for a wake-up byte, then acknowledges
    /// each queued message after `delay`; ends at Stop.
    fn shard(index: usize, rx: ControlReceiver, delay: Duration) -> thread::JoinHandle<usize> {
        thread::spawn(move || {
            let (queue, wake) = rx.into_parts();
            let mut wake = UnixStream::from(wake);
            let mut seen = 0;
            loop {
                let mut b = [0u8; 16];
                match wake.read(&mut b) {
                    Ok(0) => return seen,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
                while let Some((what, ack)) = queue.try_next() {
                    seen += 1;
                    thread::sleep(delay);
                    ack.done(index);
                    if matches!(what, Control::Stop) {
                        return seen;
                    }
                }
            }
        })
    }

    #[test]
    fn every_shard_acknowledges() {
        let (c, rxs) = Controller::new(3).expect("control channels");
        let shards: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| shard(i, rx, Duration::from_millis(10 * i as u64)))
            .collect();
        let started = Instant::now();
        let missing = c.request_all(
            |_| Control::Reconfigure(CoreConfig::default()),
            Duration::from_secs(10),
        );
        assert!(missing.is_empty(), "{missing:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "waited for the slowest"
        );
        assert!(c
            .request_all(|_| Control::Stop, Duration::from_secs(10))
            .is_empty());
        let seen: Vec<_> = shards
            .into_iter()
            .map(|h| h.join().expect("shard"))
            .collect();
        assert_eq!(seen, [2, 2, 2]);
    }

    #[test]
    fn a_shard_that_does_not_answer_is_named_after_the_timeout() {
        let (c, mut rxs) = Controller::new(3).expect("control channels");
        // Shard 1 never reads its queue.
        let silent = rxs.remove(1);
        let s2 = shard(2, rxs.pop().expect("2"), Duration::ZERO);
        let s0 = shard(0, rxs.pop().expect("0"), Duration::ZERO);
        let started = Instant::now();
        let missing = c.request_all(|_| Control::Stop, Duration::from_millis(300));
        assert_eq!(missing, [1]);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!((s0.join().ok(), s2.join().ok()), (Some(1), Some(1)));
        drop(silent);
    }

    #[test]
    fn a_shard_that_ended_is_named_without_waiting() {
        let (c, mut rxs) = Controller::new(2).expect("control channels");
        drop(rxs.pop());
        let s0 = shard(0, rxs.pop().expect("0"), Duration::ZERO);
        let started = Instant::now();
        let missing = c.request_all(|_| Control::Stop, Duration::from_secs(30));
        assert_eq!(missing, [1]);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(s0.join().ok(), Some(1));
    }

    #[test]
    fn an_announcer_reaches_every_shard_without_waiting() {
        let (c, rxs) = Controller::new(2).expect("control channels");
        let a = c.announcer().expect("announcer");
        let shards: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| shard(i, rx, Duration::from_millis(200)))
            .collect();
        let started = Instant::now();
        a.send_all(|_| Control::Membership(Default::default()));
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "not waited for"
        );
        assert!(c
            .request_all(|_| Control::Stop, Duration::from_secs(10))
            .is_empty());
        let seen: Vec<_> = shards
            .into_iter()
            .map(|h| h.join().expect("shard"))
            .collect();
        assert_eq!(seen, [2, 2], "the announcement, then the stop");
    }

    #[test]
    fn an_ended_main_thread_closes_the_wake_up_socket() {
        let (c, mut rxs) = Controller::new(1).expect("control channels");
        let s = shard(0, rxs.pop().expect("0"), Duration::ZERO);
        drop(c);
        assert_eq!(s.join().ok(), Some(0), "EOF, nothing queued");
    }
}
