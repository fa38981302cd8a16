//! One shard's executor-local state and life: its task queues, acting on what
//! the core produced, the run loop, the timer task, the control task (the
//! main thread's reloads and stop) and shutdown.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{spawn_local_into, timer, Latency, Shares, TaskQueueHandle};
use tracing::{debug, info, warn};

use vmqtt::broker::{CloseReason, ConnId, IoEvent, Limit, ShardCore, ShardId};
use vmqtt::ClientId;

use super::conn::{ConnIo, CLOSE_GRACE};
use super::control::{Ack, Control, ControlReceiver};
use super::links::{self, Links};
use super::mesh::{self, OutQueue};
use super::{listener, MeshMsg, ShardSpec};
use crate::gate::{Budget, ConnectRate, Gate};
use crate::http::Metrics;
use crate::notify::Notify;
use crate::store::writer::{storage_loop, STORE_GRACE};

/// The shard's task queues: glommio divides the core between them by their
/// shares while more than one has work (`[tasks]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub(super) struct Queues {
    /// Connection readers and writers, the accept loops.
    pub(super) clients: TaskQueueHandle,
    /// The channel mesh: batches to and from other shards, handoffs.
    pub(super) mesh: TaskQueueHandle,
    /// Timers, metrics, the storage task, the HTTP endpoint.
    background: TaskQueueHandle,
}

impl Queues {
    fn new(tasks: &vmqtt_config::TasksConfig) -> Self {
        let ex = glommio::executor();
        let queue = |shares: u32, name| {
            let shares = Shares::Static(usize::try_from(shares).unwrap_or(1).max(1));
            ex.create_task_queue(shares, Latency::NotImportant, name)
        };
        Queues {
            clients: queue(tasks.client_shares, "clients"),
            mesh: queue(tasks.mesh_shares, "mesh"),
            background: queue(tasks.background_shares, "background"),
        }
    }
}

/// Spawns `future` into `queue` (a task spawned from there inherits it).
pub(super) fn spawn_into(
    queue: TaskQueueHandle,
    future: impl std::future::Future<Output = ()> + 'static,
) {
    match spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        // Only for a queue of another executor, which these are not.
        Err(e) => warn!(error = %e, "spawning into a task queue failed"),
    }
}

/// The executor-local state of a shard. Lives on its shard's core only.
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(super) shards: usize,
    pub(crate) core: RefCell<ShardCore>,
    pub(super) conns: RefCell<HashMap<ConnId, Rc<ConnIo>>>,
    /// Batches and handoffs for other shards.
    pub(super) outq: OutQueue,
    timer_notify: Notify,
    timer_at: Cell<Option<Instant>>,
    /// Stopping: set by the control task at [`Control::Stop`].
    pub(super) stopping: Cell<bool>,
    /// Storage changes wait for the storage task.
    pub(crate) store_notify: Notify,
    /// The task queues.
    pub(super) queues: Queues,
    /// Connections this shard holds: reading a CONNECT or served.
    open: Rc<Cell<usize>>,
    /// `max_connect_rate`.
    pub(super) rate: RefCell<ConnectRate>,
    /// Authentication settings.
    pub(super) gate: Arc<Gate>,
    /// The process's connection budget.
    pub(super) budget: Arc<Budget>,
    /// The node links, in a cluster.
    pub(super) links: Option<Rc<Links>>,
}

/// One connection counted in its shard's open connections, until dropped.
#[derive(Debug)]
pub(super) struct OpenSlot(Rc<Cell<usize>>);

impl OpenSlot {
    /// Counts a connection on `shard` unless it is at `max_connections`
    /// (then the limit is counted instead).
    pub(super) fn acquire(shard: &Shard) -> Option<OpenSlot> {
        let max = shard.core.borrow().config().max_connections;
        let slot = OpenSlot::take(&shard.open, max);
        if slot.is_none() {
            shard.core.borrow_mut().note_limit(Limit::Connections);
        }
        slot
    }

    /// Counts one more in `open` unless it holds `max` already (0: no limit).
    fn take(open: &Rc<Cell<usize>>, max: u32) -> Option<OpenSlot> {
        let max = max as usize;
        if max > 0 && open.get() >= max {
            return None;
        }
        open.set(open.get() + 1);
        Some(OpenSlot(open.clone()))
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Shard {
    /// Waits while too many batches wait for the channel mesh.
    pub(super) async fn backpressure(&self) {
        self.outq.wait_for_room().await;
    }

    /// Acts on everything the core produced: wakes writers, closes
    /// connections, queues batches for other shards and other nodes,
    /// re-arms the timer.
    pub(crate) fn after(self: &Rc<Self>) {
        loop {
            let done = self.after_once();
            if done.is_empty() {
                return;
            }
            // Publishes no link will carry (no such peer, a full stream):
            // the publishers' acknowledgements wait for them no more.
            let now = Instant::now();
            let mut core = self.core.borrow_mut();
            for t in done {
                core.handle_cluster_lost(now, t);
            }
        }
    }

    /// One pass of [`Shard::after`]; returns the tokens to complete.
    fn after_once(self: &Rc<Self>) -> Vec<u64> {
        let mut done = Vec::new();
        let mut core = self.core.borrow_mut();
        let conns = self.conns.borrow();
        while let Some(ev) = core.poll_event() {
            match ev {
                IoEvent::Wake(c) => {
                    if let Some(io) = conns.get(&c) {
                        io.notify.notify();
                    }
                }
                IoEvent::Close(c, reason) => {
                    let client = conns.get(&c).and_then(|io| io.client.borrow().clone());
                    log_close(self.index, c, client.as_ref(), reason);
                    if let Some(io) = conns.get(&c) {
                        io.close.set(true);
                        io.notify.notify();
                        io.closing.notify();
                    }
                }
                IoEvent::Limited {
                    client_id,
                    limit,
                    dropped,
                } => {
                    warn!(
                        shard = self.index,
                        client_id = client_id.as_str(),
                        limit = limit.as_str(),
                        dropped,
                        "messages for a session dropped at a limit (reported at most every 10 s per session)"
                    );
                }
                IoEvent::Connected {
                    conn,
                    client_id,
                    version,
                    session_present,
                } => {
                    info!(
                        shard = self.index,
                        conn = conn.0,
                        client_id = client_id.as_str(),
                        ?version,
                        session_present,
                        "client connected"
                    );
                    if let Some(io) = conns.get(&conn) {
                        *io.client.borrow_mut() = Some(client_id);
                    }
                }
            }
        }
        let (revoked, more) = core.take_revoked();
        for (client, filter) in &revoked {
            info!(
                shard = self.index,
                client_id = client.as_str(),
                filter = filter.as_str(),
                "subscription removed: the ACL no longer allows it"
            );
        }
        if more > 0 {
            info!(
                shard = self.index,
                more, "more subscriptions removed: the ACL no longer allows them"
            );
        }
        for (to, msgs) in core.poll_shard_msgs() {
            self.outq.push(to.get(), MeshMsg::Batch(msgs));
        }
        if core.has_store_ops() {
            self.store_notify.notify();
        }
        if let Some(next) = core.poll_timeout() {
            // `None` means the timer task is running now and re-reads the
            // deadline itself.
            if self.timer_at.get().is_some_and(|t| next < t) {
                self.timer_notify.notify();
            }
        }
        if let Some(links) = &self.links {
            let out = core.take_cluster_out();
            let stored = core.take_cluster_done();
            let sessions = core.take_session_out();
            for line in core.take_trace() {
                debug!(target: "vmqtt_shard::runtime::links", shard = self.index, "session: {line}");
            }
            drop(core);
            drop(conns);
            if !out.is_empty() {
                links.dispatch(self, out, &mut done);
            }
            if !sessions.is_empty() {
                links.send_sessions(self, sessions, &mut done);
            }
            if !stored.is_empty() {
                links.tickets_done(stored);
            }
        }
        done
    }
}

fn log_close(shard: usize, conn: ConnId, client: Option<&ClientId>, reason: CloseReason) {
    let client_id = client.map_or("", |c| c.as_str());
    match reason {
        CloseReason::ClientDisconnect => {
            info!(shard, conn = conn.0, client_id, "client disconnected")
        }
        other => info!(shard, conn = conn.0, client_id, reason = ?other, "closing connection"),
    }
}

/// Runs one shard until the main thread stops it ([`Control::Stop`], or its
/// end of the control channel closed).
pub async fn run(spec: ShardSpec) {
    let ShardSpec {
        index,
        shards,
        listen,
        core,
        mesh,
        control,
        ready,
        metrics,
        http,
        storage,
        tasks,
        tls,
        gate,
        budget,
        cluster,
    } = spec;
    let Some(joined) = mesh::join(mesh, index, shards).await else {
        let _ = ready.send(Err(format!(
            "shard {index}: joining the channel mesh failed"
        )));
        return;
    };

    let connect_timeout = core.connect_timeout;
    let max_packet = core.max_packet_size;
    let peer_listener = match &cluster {
        Some(c) => {
            let addr = links::shard_listen(c.listen, index);
            match crate::sys::reuseport_listener(addr) {
                Ok((fd, keep)) => {
                    // SAFETY: `fd` is a listening TCP socket we own; the
                    // listener takes it over.
                    let l = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
                    Some((l, keep))
                }
                Err(e) => {
                    let _ = ready.send(Err(format!(
                        "shard {index}: cannot listen for node links on {addr}: {e}"
                    )));
                    return;
                }
            }
        }
        None => None,
    };
    let in_cluster = cluster.as_ref().map(|c| c.node);
    let shard = Rc::new(Shard {
        index,
        shards,
        core: RefCell::new(ShardCore::new(
            ShardId::new(index as u16),
            shards,
            core,
            Instant::now(),
        )),
        conns: RefCell::new(HashMap::new()),
        outq: OutQueue::default(),
        timer_notify: Notify::default(),
        timer_at: Cell::new(None),
        stopping: Cell::new(false),
        store_notify: Notify::default(),
        queues: Queues::new(&tasks),
        open: Rc::new(Cell::new(0)),
        rate: RefCell::new(ConnectRate::new(Instant::now())),
        gate,
        budget,
        links: cluster.map(|c| Rc::new(Links::new(c))),
    });
    let q = shard.queues;
    if let Some(node) = in_cluster {
        // Before restore: the node's routes are counted from the start.
        let wall = (
            Instant::now(),
            vmqtt_storage::unix_ms(std::time::SystemTime::now()),
        );
        let mut core = shard.core.borrow_mut();
        core.enable_cluster(node, wall);
        // (The session trace is logged with the links' debug lines.)
        core.trace_sessions(tracing::enabled!(
            target: "vmqtt_shard::runtime::links",
            tracing::Level::DEBUG
        ));
    }
    debug!(
        shard = index,
        client_shares = tasks.client_shares,
        mesh_shares = tasks.mesh_shares,
        background_shares = tasks.background_shares,
        "task queues"
    );
    let storage = storage.map(|st| {
        let sessions = st.restored.sessions.len();
        shard.core.borrow_mut().restore(Instant::now(), st.restored);
        if sessions > 0 {
            info!(shard = index, sessions, "sessions restored");
        }
        (st.db, st.sync)
    });

    let bound = match listener::bind(index, &listen, tls.as_ref()) {
        Ok(bound) => bound,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let http_listener = match http.map(TcpListener::bind) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            let _ = ready.send(Err(format!("shard {index}: cannot serve HTTP: {e}")));
            return;
        }
        None => None,
    };
    if let Some(l) = http_listener {
        spawn_into(q.background, crate::http::serve(l, metrics.clone()));
    }
    metrics.set_ready(index, true);
    let _ = ready.send(Ok(index));

    mesh::spawn(&shard, q.mesh, joined);
    if let Some((db, sync)) = storage {
        spawn_into(
            q.background,
            storage_loop(shard.clone(), db, sync, metrics.clone()),
        );
    }
    // Wills of sessions lost in the crash, routes: out to the other shards.
    shard.after();
    let mut peer_keep = None;
    if let (Some((l, keep)), Some(links)) = (peer_listener, shard.links.clone()) {
        spawn_into(q.mesh, links::accept_loop(shard.clone(), l));
        peer_keep = Some(keep);
        let first = links.membership();
        let mut done = Vec::new();
        links.on_membership(&shard, first, &mut done);
        links::lost(&shard, done);
        shard.after();
    }
    for (l, tls) in bound.listeners {
        spawn_into(
            q.clients,
            listener::accept_loop(shard.clone(), l, tls, connect_timeout, max_packet),
        );
    }
    debug!(shard = index, "running");
    spawn_into(q.background, timer_loop(shard.clone(), metrics.clone()));
    let control = spawn_local_into(
        control_loop(shard.clone(), control, metrics.clone()),
        q.background,
    );
    let stopped = match control {
        Ok(task) => task.await,
        Err(e) => {
            warn!(shard = index, error = %e, "starting the control task failed");
            None
        }
    };
    metrics.set_ready(index, false);
    // The listening sockets end now, while the process lives: left to the
    // executor's teardown, their pending io_uring accepts would keep them
    // listening for a while after the process exited, and a restart would
    // find the address taken.
    for fd in bound.listening.iter().chain(peer_keep.iter()) {
        crate::sys::stop_listening(fd);
    }
    info!(shard = index, "shard stopped");
    if let Some(ack) = stopped {
        ack.done(index);
    }
}

/// Fires the core's timers and, once a second, publishes the shard's
/// metrics and gives memory back; ends when the shard stops.
async fn timer_loop(shard: Rc<Shard>, metrics: Arc<Metrics>) {
    let tick = Duration::from_millis(200);
    let mut published = Instant::now();
    loop {
        let now = Instant::now();
        let next = shard
            .core
            .borrow()
            .poll_timeout()
            .map_or(now + tick, |t| t.min(now + tick));
        shard.timer_at.set(Some(next));
        let wait = next.saturating_duration_since(now);
        futures_lite::future::or(timer::sleep(wait), shard.timer_notify.wait()).await;
        shard.timer_at.set(None);
        if shard.stopping.get() {
            // (Shutdown is the control task's, without timers.)
            return;
        }
        shard.core.borrow_mut().handle_timeout(Instant::now());
        shard.after();
        glommio::yield_if_needed().await;
        if published.elapsed() >= Duration::from_secs(1) {
            published = Instant::now();
            metrics.publish(shard.index, &shard.core.borrow().stats());
            metrics.publish_groups(shard.index, shard.core.borrow().groups());
            if let Some(links) = &shard.links {
                metrics.publish_links(shard.index, links.link_infos(shard.index));
                if shard.index == 0 {
                    metrics.publish_cluster(links.cluster_info());
                    shard.core.borrow_mut().set_cluster_status(links.status());
                    links.check_fence(&shard);
                }
            }
            shard.core.borrow_mut().release_memory();
            vmqtt::broker::shrink_if_sparse(&mut shard.conns.borrow_mut());
            // SAFETY: mi_collect only walks and purges the calling thread's
            // own mimalloc heap; it has no preconditions (with another
            // global allocator, as in tests, that heap is just empty).
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }
}

/// Acts on the main thread's messages as they arrive (woken by its
/// socket, not a timer tick): new settings are applied and acknowledged at
/// once; `Stop` shuts the shard down and hands back its acknowledgement,
/// sent once the shard stopped listening. A closed control channel (the
/// main thread gone) stops the shard too, with nobody to acknowledge.
async fn control_loop(
    shard: Rc<Shard>,
    control: ControlReceiver,
    metrics: Arc<Metrics>,
) -> Option<Ack> {
    let (queue, wake) = control.into_parts();
    // SAFETY: `wake` is an open Unix stream socket owned by nothing else;
    // the glommio stream takes it over.
    let mut wake = unsafe { glommio::net::UnixStream::from_raw_fd(wake.into_raw_fd()) };
    let mut bytes = [0u8; 64];
    loop {
        while let Some((what, ack)) = queue.try_next() {
            match what {
                Control::Reconfigure(config) => {
                    shard.core.borrow_mut().set_config(config);
                    // (A new ACL may have removed subscriptions: act on it now.)
                    shard.after();
                    ack.done(shard.index);
                }
                Control::Membership(m) => {
                    if let Some(links) = shard.links.clone() {
                        let mut done = Vec::new();
                        links.on_membership(&shard, m, &mut done);
                        super::links::lost(&shard, done);
                        shard.after();
                    }
                    ack.done(shard.index);
                }
                Control::Stop => {
                    stop(&shard, &metrics).await;
                    return Some(ack);
                }
            }
        }
        match futures_lite::AsyncReadExt::read(&mut wake, &mut bytes).await {
            Ok(0) => {
                warn!(shard = shard.index, "control channel closed: stopping");
                stop(&shard, &metrics).await;
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(shard = shard.index, error = %e, "reading the control socket failed");
                timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Stops accepting, then [`shutdown`].
async fn stop(shard: &Rc<Shard>, metrics: &Metrics) {
    shard.stopping.set(true);
    metrics.set_ready(shard.index, false);
    shutdown(shard).await;
}

/// Closes every connection (v5 clients get DISCONNECT 0x8B) and waits,
/// bounded, for their last bytes to be written — after the storage
/// changes they depend on.
async fn shutdown(shard: &Rc<Shard>) {
    let start = Instant::now();
    shard.core.borrow_mut().handle_shutdown(start);
    shard.after();
    while !shard.core.borrow().store_idle() && start.elapsed() < STORE_GRACE {
        timer::sleep(Duration::from_millis(5)).await;
    }
    if !shard.core.borrow().store_idle() {
        warn!(
            shard = shard.index,
            "stopping with storage writes unfinished"
        );
    }
    while !shard.conns.borrow().is_empty() && start.elapsed() < CLOSE_GRACE {
        timer::sleep(Duration::from_millis(10)).await;
    }
    // Let the sender task pass the last batches on.
    while !shard.outq.is_empty() && start.elapsed() < CLOSE_GRACE {
        timer::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_slots_stop_at_the_limit_and_come_back_when_dropped() {
        let open = Rc::new(Cell::new(0));
        let a = OpenSlot::take(&open, 2).expect("first");
        let b = OpenSlot::take(&open, 2).expect("second");
        assert_eq!(open.get(), 2);
        assert!(OpenSlot::take(&open, 2).is_none(), "over max_connections");
        assert_eq!(open.get(), 2, "a refusal counts nothing");
        drop(a);
        assert_eq!(open.get(), 1);
        let c = OpenSlot::take(&open, 2).expect("a place freed");
        drop((b, c));
        assert_eq!(open.get(), 0);
    }

    #[test]
    fn open_slots_without_a_limit() {
        let open = Rc::new(Cell::new(0));
        let held: Vec<_> = (0..1000)
            .map(|_| OpenSlot::take(&open, 0).expect("max_connections = 0: no limit"))
            .collect();
        assert_eq!(open.get(), 1000);
        drop(held);
        assert_eq!(open.get(), 0);
    }

    #[test]
    fn a_lowered_limit_refuses_until_enough_close() {
        // max_connections lowered by a reload below what is open.
        let open = Rc::new(Cell::new(0));
        let held: Vec<_> = (0..3).map(|_| OpenSlot::take(&open, 3)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(OpenSlot::take(&open, 1).is_none());
        let mut held = held;
        held.truncate(1);
        assert!(OpenSlot::take(&open, 1).is_none(), "one is still open");
        held.clear();
        assert!(OpenSlot::take(&open, 1).is_some());
    }
}
