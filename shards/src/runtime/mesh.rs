//! The channel mesh between shards: joining it, the queue of what waits for
//! it, the sender task and the receiver tasks (batches, and the receipt of
//! connections handed to this shard).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Instant;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpStream;
use glommio::TaskQueueHandle;
use tracing::warn;

use super::conn::{serve, Stream};
use super::listener::Accepted;
use super::shard::{spawn_into, OpenSlot, Shard};
use super::MeshMsg;
use crate::notify::{Broadcast, Notify};
use crate::tls::TlsStream;

/// Batches queued for other shards beyond which readers stop reading: the
/// receiving shards are slower than this one's publishers, so the
/// publishers wait (TCP backpressure) instead of the queue growing.
pub(super) const OUTQ_LIMIT: usize = 64;

/// What waits for the channel mesh on one shard: batches and handoffs, each
/// with its destination shard. Shard-local.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    queue: RefCell<VecDeque<(usize, MeshMsg)>>,
    /// Wakes the sender task.
    ready: Notify,
    /// Signalled by the sender task as the queue falls to the limit.
    drained: Broadcast,
}

impl OutQueue {
    /// Queues `msg` for shard `to` and wakes the sender task.
    pub(super) fn push(&self, to: usize, msg: MeshMsg) {
        self.queue.borrow_mut().push_back((to, msg));
        self.ready.notify();
    }

    /// Waits while more than [`OUTQ_LIMIT`] wait.
    pub(super) async fn wait_for_room(&self) {
        while self.queue.borrow().len() > OUTQ_LIMIT {
            self.drained.wait().await;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// The next one to send.
    fn pop(&self) -> Option<(usize, MeshMsg)> {
        self.queue.borrow_mut().pop_front()
    }

    /// One was sent: at or below the limit again, the waiting readers go on.
    fn sent(&self) {
        if self.queue.borrow().len() <= OUTQ_LIMIT {
            self.drained.notify_all();
        }
    }
}

/// This shard's ends of the mesh, and which mesh peer each shard is.
pub(super) struct Joined {
    senders: Senders<MeshMsg>,
    receivers: Receivers<MeshMsg>,
    /// This shard's own peer id.
    me: usize,
    /// Indexed by shard.
    peer_of_shard: Vec<usize>,
}

/// Joins the mesh and learns which mesh peer is which shard (every shard
/// says `Hello` with its index to every other). `None` if joining failed.
pub(super) async fn join(
    mesh: MeshBuilder<MeshMsg, Full>,
    index: usize,
    shards: usize,
) -> Option<Joined> {
    let (senders, receivers) = mesh.join().await.ok()?;
    let me = senders.peer_id();
    for peer in 0..senders.nr_consumers() {
        if peer != me {
            let _ = senders.send_to(peer, MeshMsg::Hello(index)).await;
        }
    }
    let mut peer_of_shard = vec![me; shards];
    for peer in 0..receivers.nr_producers() {
        if peer == me {
            continue;
        }
        if let Ok(Some(MeshMsg::Hello(i))) = receivers.recv_from(peer).await {
            if let Some(slot) = peer_of_shard.get_mut(i) {
                *slot = peer;
            }
        }
    }
    Some(Joined {
        senders,
        receivers,
        me,
        peer_of_shard,
    })
}

/// Starts a receiver task per other shard and the sender task, in `queue`.
pub(super) fn spawn(shard: &Rc<Shard>, queue: TaskQueueHandle, joined: Joined) {
    let Joined {
        senders,
        receivers,
        me,
        peer_of_shard,
    } = joined;
    let receivers = Rc::new(receivers);
    for peer in 0..receivers.nr_producers() {
        if peer != me {
            spawn_into(queue, receive_loop(shard.clone(), receivers.clone(), peer));
        }
    }
    spawn_into(queue, send_loop(shard.clone(), senders, peer_of_shard));
}

async fn receive_loop(shard: Rc<Shard>, receivers: Rc<Receivers<MeshMsg>>, peer: usize) {
    loop {
        match receivers.recv_from(peer).await {
            Ok(Some(MeshMsg::Batch(msgs))) => {
                shard
                    .core
                    .borrow_mut()
                    .handle_shard_msgs(Instant::now(), msgs);
                shard.after();
            }
            Ok(Some(MeshMsg::Handoff(h))) => {
                // SAFETY: the descriptor was dup'ed for this handoff and is
                // owned by `h.fd` alone; ownership moves into the stream.
                let tcp = unsafe { TcpStream::from_raw_fd(h.fd.into_raw_fd()) };
                // The home shard's own limit: over it, the socket closes here.
                let Some(slot) = OpenSlot::acquire(&shard) else {
                    continue;
                };
                let stream = match h.tls {
                    Some(conn) => Stream::Tls(Box::new(TlsStream::from_parts(tcp, conn))),
                    None => Stream::Plain(tcp),
                };
                let conn = Accepted {
                    stream,
                    identity: h.identity,
                    _budget: h.budget,
                    _slot: slot,
                };
                serve(shard.clone(), conn, h.buf);
            }
            Ok(Some(MeshMsg::NodeRoutes {
                node,
                snapshot,
                add,
                remove,
            })) => {
                shard
                    .core
                    .borrow_mut()
                    .handle_node_routes(node, snapshot, &add, &remove);
            }
            Ok(Some(MeshMsg::Hello(_))) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

async fn send_loop(shard: Rc<Shard>, senders: Senders<MeshMsg>, peer_of_shard: Vec<usize>) {
    loop {
        shard.outq.ready.wait().await;
        while let Some((to, msg)) = shard.outq.pop() {
            if let Some(&peer) = peer_of_shard.get(to) {
                // Awaiting a full channel is the backpressure between shards.
                if senders.send_to(peer, msg).await.is_err() {
                    warn!(shard = shard.index, to, "shard channel closed");
                }
            }
            shard.outq.sent();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    fn noop() -> Waker {
        Waker::from(Arc::new(NoWake))
    }

    /// Polls `f` once with a waker that does nothing.
    fn ready<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        f.poll(&mut cx).is_ready()
    }

    #[test]
    fn readers_wait_only_over_the_limit() {
        let q = OutQueue::default();
        for i in 0..OUTQ_LIMIT {
            q.push(i % 3, MeshMsg::Hello(i));
        }
        assert!(ready(pin!(q.wait_for_room())), "at the limit: no wait");
        q.push(0, MeshMsg::Hello(OUTQ_LIMIT));
        let mut wait = pin!(q.wait_for_room());
        assert!(!ready(wait.as_mut()), "one over the limit: wait");
        // The sender takes one and sends it: at the limit again.
        assert!(matches!(q.pop(), Some((0, MeshMsg::Hello(0)))), "FIFO");
        assert!(!ready(wait.as_mut()), "not before the send is done");
        q.sent();
        assert!(ready(wait.as_mut()));
    }

    #[test]
    fn a_send_over_the_limit_releases_nobody() {
        let q = OutQueue::default();
        for i in 0..OUTQ_LIMIT + 2 {
            q.push(1, MeshMsg::Hello(i));
        }
        let mut wait = pin!(q.wait_for_room());
        assert!(!ready(wait.as_mut()));
        let _ = q.pop();
        q.sent();
        // Woken or not, it waits again: still one over.
        assert!(!ready(wait.as_mut()));
        let _ = q.pop();
        q.sent();
        assert!(ready(wait.as_mut()));
        assert!(!q.is_empty());
    }

    #[test]
    fn pushing_wakes_the_sender() {
        let q = OutQueue::default();
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        let mut first = pin!(q.ready.wait());
        assert!(first.as_mut().poll(&mut cx).is_pending(), "nothing queued");
        q.push(1, MeshMsg::Hello(1));
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
        while q.pop().is_some() {}
        assert!(q.is_empty());
    }
}
