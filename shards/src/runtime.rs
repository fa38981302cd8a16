//! One shard's executor: listeners, connection tasks, the channel mesh to the
//! other shards and the timer, all around a [`ShardCore`] that makes every
//! MQTT decision. This layer only moves bytes, timers and messages.
//!
//! Everything here is shard-local (`Rc`, `RefCell`) except [`MeshMsg`],
//! which is what crosses cores.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, spawn_local_into, timer, Latency, Shares, TaskQueueHandle};
use tracing::{debug, error, info, warn};
use vmqtt_storage::{unix_ms, RocksStorage, Storage};

use vmqtt::broker::{
    connect_credentials, route_connect, CloseReason, ConnId, ConnectRoute, CoreConfig, Identity,
    IoEvent, Limit, ShardCore, ShardId, ShardMsg,
};
use vmqtt::ClientId;

use crate::gate::{Budget, BudgetSlot, ConnectRate, Gate, Peer, Verdict};
use crate::http::Metrics;
use crate::notify::{Broadcast, Notify};
use crate::tls::TlsStream;

/// The largest single read (the size of a shard's read buffer).
const MAX_READ: usize = 64 * 1024;

thread_local! {
    /// The shard's one read buffer (an executor is one thread). Every read
    /// lands here and only the bytes read are copied to the connection's
    /// own buffer, so a connection waiting for bytes holds no read buffer:
    /// an idle connection costs its state, not a buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// What crosses cores over the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// Start-up: tells the receiver which shard index this mesh peer is.
    Hello(usize),
    /// A batch of MQTT work for the receiving shard.
    Batch(Vec<ShardMsg>),
    /// A connection whose CONNECT names a client id homed on the receiver,
    /// with every byte read from it so far.
    Handoff(Handoff),
}

/// A socket moving to its home shard. `Send`: an owned descriptor, the
/// bytes read (decrypted) so far, the TLS session if any, and what the
/// accepting shard established about the client.
#[derive(Debug)]
pub struct Handoff {
    fd: OwnedFd,
    buf: BytesMut,
    tls: Option<Box<rustls::ServerConnection>>,
    identity: Identity,
    budget: BudgetSlot,
}

/// What a shard needs to serve its TLS listeners.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Addresses to accept MQTT over TLS on.
    pub listen: Vec<SocketAddr>,
    /// Certificates and client verification.
    pub config: Arc<rustls::ServerConfig>,
    /// The client certificate's Common Name is the user name.
    pub identity_as_username: bool,
}

/// What one shard needs to start.
#[derive(Debug)]
pub struct ShardSpec {
    /// This shard's index.
    pub index: usize,
    /// Number of shards.
    pub shards: usize,
    /// Addresses to listen on (one SO_REUSEPORT socket per shard each).
    pub listen: Vec<SocketAddr>,
    /// MQTT settings of this shard.
    pub core: CoreConfig,
    /// The channel mesh shared by all shards.
    pub mesh: MeshBuilder<MeshMsg, Full>,
    /// Set by the main thread to stop.
    pub stop: Arc<AtomicBool>,
    /// Start-up result, sent once listeners are bound.
    pub ready: mpsc::Sender<Result<usize, String>>,
    /// Counters published for the HTTP endpoint.
    pub metrics: Arc<Metrics>,
    /// The HTTP endpoint's address, for the one shard that serves it.
    pub http: Option<SocketAddr>,
    /// New settings from a configuration reload (SIGHUP).
    pub reconfigure: mpsc::Receiver<CoreConfig>,
    /// Durable storage, unless `durability = "off"` for this shard.
    pub storage: Option<ShardStorage>,
    /// CPU shares of the task queues (`[tasks]`).
    pub tasks: vmqtt_config::TasksConfig,
    /// TLS listeners, if any.
    pub tls: Option<TlsSpec>,
    /// Authentication settings, shared by every shard.
    pub gate: Arc<Gate>,
    /// The process's connection budget, shared by every shard.
    pub budget: Arc<Budget>,
}

/// The shard's task queues: glommio divides the core between them by their
/// shares while more than one has work (`[tasks]` in the configuration).
#[derive(Debug, Clone, Copy)]
struct Queues {
    /// Connection readers and writers, the accept loops.
    clients: TaskQueueHandle,
    /// The channel mesh: batches to and from other shards, handoffs.
    mesh: TaskQueueHandle,
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
fn spawn_into(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    match spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        // Only for a queue of another executor, which these are not.
        Err(e) => warn!(error = %e, "spawning into a task queue failed"),
    }
}

/// A shard's durable storage and what was recovered from it.
pub struct ShardStorage {
    /// The node's database (a handle; each shard writes its own column
    /// family).
    pub db: RocksStorage,
    /// `durability = "fsync"`: every batch is synced before it counts as
    /// written.
    pub sync: bool,
    /// This shard's state at start.
    pub restored: vmqtt::broker::persist::Restored,
}

impl std::fmt::Debug for ShardStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStorage")
            .field("sync", &self.sync)
            .field("sessions", &self.restored.sessions.len())
            .finish_non_exhaustive()
    }
}

struct ConnIo {
    /// The client identifier, once connected (for logs).
    client: RefCell<Option<ClientId>>,
    /// Output is waiting (or the connection ends).
    notify: Notify,
    /// The server decided to close the connection.
    closing: Notify,
    close: Cell<bool>,
    dead: Cell<bool>,
    fd: RawFd,
}

/// The executor-local state of a shard.
struct Shard {
    index: usize,
    shards: usize,
    core: RefCell<ShardCore>,
    conns: RefCell<HashMap<ConnId, Rc<ConnIo>>>,
    outq: RefCell<VecDeque<(usize, MeshMsg)>>,
    out_notify: Notify,
    /// Signalled by the sender task as `outq` falls below the limit.
    outq_drained: Broadcast,
    timer_notify: Notify,
    timer_at: Cell<Option<Instant>>,
    stop: Arc<AtomicBool>,
    /// Storage changes wait for the storage task.
    store_notify: Notify,
    /// The task queues.
    queues: Queues,
    /// Connections this shard holds: reading a CONNECT or served.
    open: Cell<usize>,
    /// `max_connect_rate`.
    rate: RefCell<ConnectRate>,
    /// Authentication settings.
    gate: Arc<Gate>,
    /// The process's connection budget.
    budget: Arc<Budget>,
}

/// One connection counted in its shard's `open`, until dropped.
struct OpenSlot(Rc<Shard>);

impl OpenSlot {
    /// Counts a connection on `shard` unless it is at `max_connections`
    /// (then the limit is counted instead).
    fn acquire(shard: &Rc<Shard>) -> Option<OpenSlot> {
        let max = shard.core.borrow().config().max_connections as usize;
        if max > 0 && shard.open.get() >= max {
            shard.core.borrow_mut().note_limit(Limit::Connections);
            return None;
        }
        shard.open.set(shard.open.get() + 1);
        Some(OpenSlot(shard.clone()))
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

/// Batches queued for other shards beyond which readers stop reading: the
/// receiving shards are slower than this one's publishers, so the
/// publishers wait (TCP backpressure) instead of the queue growing.
const OUTQ_LIMIT: usize = 64;

impl Shard {
    /// Waits while too many batches wait for the channel mesh.
    async fn backpressure(&self) {
        while self.outq.borrow().len() > OUTQ_LIMIT {
            self.outq_drained.wait().await;
        }
    }

    /// Acts on everything the core produced: wakes writers, closes
    /// connections, queues batches for other shards, re-arms the timer.
    fn after(&self) {
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
        let mut queued = false;
        for (to, msgs) in core.poll_shard_msgs() {
            self.outq
                .borrow_mut()
                .push_back((to.get(), MeshMsg::Batch(msgs)));
            queued = true;
        }
        if queued {
            self.out_notify.notify();
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

/// Runs one shard until the stop flag is set.
pub async fn run(spec: ShardSpec) {
    let ShardSpec {
        index,
        shards,
        listen,
        core,
        mesh,
        stop,
        ready,
        metrics,
        http,
        reconfigure,
        storage,
        tasks,
        tls,
        gate,
        budget,
    } = spec;
    let (senders, receivers) = match mesh.join().await {
        Ok(x) => x,
        Err(_) => {
            let _ = ready.send(Err(format!(
                "shard {index}: joining the channel mesh failed"
            )));
            return;
        }
    };
    // Learn which mesh peer is which shard.
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

    let connect_timeout = core.connect_timeout;
    let max_packet = core.max_packet_size;
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
        outq: RefCell::new(VecDeque::new()),
        out_notify: Notify::default(),
        outq_drained: Broadcast::default(),
        timer_notify: Notify::default(),
        timer_at: Cell::new(None),
        stop,
        store_notify: Notify::default(),
        queues: Queues::new(&tasks),
        open: Cell::new(0),
        rate: RefCell::new(ConnectRate::new(Instant::now())),
        gate,
        budget,
    });
    let q = shard.queues;
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

    let mut listeners = Vec::new();
    // A second descriptor of each listening socket, to end it at shutdown
    // (see `sys::stop_listening`).
    let mut listening = Vec::new();
    let tls_listen = tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
    for (addr, secure) in listen
        .iter()
        .map(|a| (a, false))
        .chain(tls_listen.iter().map(|a| (a, true)))
    {
        match crate::sys::reuseport_listener(*addr) {
            Ok((fd, keep)) => {
                // SAFETY: `fd` is a listening TCP socket we own; the
                // listener takes it over.
                let l = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
                listeners.push((l, secure.then(|| tls.clone()).flatten()));
                listening.push(keep);
            }
            Err(e) => {
                let _ = ready.send(Err(format!("shard {index}: cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
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

    let receivers = Rc::new(receivers);
    for peer in 0..receivers.nr_producers() {
        if peer != me {
            spawn_into(q.mesh, receive_loop(shard.clone(), receivers.clone(), peer));
        }
    }
    spawn_into(q.mesh, send_loop(shard.clone(), senders, peer_of_shard));
    if let Some((db, sync)) = storage {
        spawn_into(
            q.background,
            storage_loop(shard.clone(), db, sync, metrics.clone()),
        );
    }
    // Wills of sessions lost in the crash, routes: out to the other shards.
    shard.after();
    for (l, tls) in listeners {
        spawn_into(
            q.clients,
            accept_loop(shard.clone(), l, tls, connect_timeout, max_packet),
        );
    }
    debug!(shard = index, "running");
    let timers = spawn_local_into(
        timer_loop(shard.clone(), metrics.clone(), reconfigure),
        q.background,
    );
    match timers {
        Ok(task) => task.await,
        Err(e) => warn!(shard = index, error = %e, "starting the timer task failed"),
    }
    metrics.set_ready(index, false);
    // The listening sockets end now, while the process lives: left to the
    // executor's teardown, their pending io_uring accepts would keep them
    // listening for a while after the process exited, and a restart would
    // find the address taken.
    for fd in &listening {
        crate::sys::stop_listening(fd);
    }
    info!(shard = index, "shard stopped");
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
            Ok(Some(MeshMsg::Hello(_))) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

async fn send_loop(shard: Rc<Shard>, senders: Senders<MeshMsg>, peer_of_shard: Vec<usize>) {
    loop {
        shard.out_notify.wait().await;
        loop {
            let next = shard.outq.borrow_mut().pop_front();
            let Some((to, msg)) = next else { break };
            if let Some(&peer) = peer_of_shard.get(to) {
                // Awaiting a full channel is the backpressure between shards.
                if senders.send_to(peer, msg).await.is_err() {
                    warn!(shard = shard.index, to, "shard channel closed");
                }
            }
            if shard.outq.borrow().len() <= OUTQ_LIMIT {
                shard.outq_drained.notify_all();
            }
        }
    }
}

async fn timer_loop(
    shard: Rc<Shard>,
    metrics: Arc<Metrics>,
    reconfigure: mpsc::Receiver<CoreConfig>,
) {
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
        shard.core.borrow_mut().handle_timeout(Instant::now());
        shard.after();
        glommio::yield_if_needed().await;
        while let Ok(config) = reconfigure.try_recv() {
            shard.core.borrow_mut().set_config(config);
            // (A new ACL may have removed subscriptions: act on it now.)
            shard.after();
        }
        if published.elapsed() >= Duration::from_secs(1) {
            published = Instant::now();
            metrics.publish(shard.index, &shard.core.borrow().stats());
            metrics.publish_groups(shard.index, shard.core.borrow().groups());
            shard.core.borrow_mut().release_memory();
            vmqtt::broker::shrink_if_sparse(&mut shard.conns.borrow_mut());
            // SAFETY: mi_collect only walks and purges the calling thread's
            // own mimalloc heap; it has no preconditions (with another
            // global allocator, as in tests, that heap is just empty).
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
        if shard.stop.load(Ordering::Relaxed) {
            metrics.set_ready(shard.index, false);
            shutdown(&shard).await;
            return;
        }
    }
}

/// Writes the core's storage batches, one at a time, off the reactor (on
/// glommio's blocking thread): what the core produces while one batch is
/// written goes into the next (group commit). A failed write is retried
/// until it succeeds: the replies that wait for it are never sent before.
async fn storage_loop(shard: Rc<Shard>, db: RocksStorage, sync: bool, metrics: Arc<Metrics>) {
    let id = ShardId::new(shard.index as u16);
    let mut failures = 0u32;
    loop {
        let next = shard.core.borrow_mut().poll_store();
        let Some((batch_no, ops)) = next else {
            shard.store_notify.wait().await;
            continue;
        };
        let now = Instant::now();
        let batch = crate::store::to_write_batch(ops, now, unix_ms(std::time::SystemTime::now()));
        loop {
            let mut db = db.clone();
            let b = batch.clone();
            let started = Instant::now();
            // A write's error is rare and carries diagnostics (see storage's
            // lib.rs): its size is not a hot-path cost.
            #[allow(clippy::result_large_err)]
            let write = move || db.write(id, b, sync);
            let res = glommio::executor().spawn_blocking(write).await;
            match res {
                Ok(()) => {
                    let took = started.elapsed();
                    metrics.observe_store_write(shard.index, took);
                    shard.core.borrow_mut().note_store_write(took);
                    if failures > 0 {
                        info!(shard = shard.index, failures, "storage writes work again");
                        failures = 0;
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    error!(
                        shard = shard.index,
                        error = %e,
                        failures,
                        "storage write failed; acknowledgements wait, retrying"
                    );
                    let backoff = Duration::from_millis(100 << failures.min(5));
                    timer::sleep(backoff).await;
                }
            }
        }
        shard.core.borrow_mut().handle_stored(batch_no);
        shard.after();
    }
}

/// How long a stopping shard waits for its last storage batch.
const STORE_GRACE: Duration = Duration::from_secs(10);

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
    while !shard.outq.borrow().is_empty() && start.elapsed() < CLOSE_GRACE {
        timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<TlsSpec>,
    connect_timeout: Duration,
    max: u32,
) {
    debug!(shard = shard.index, addr = ?listener.local_addr().ok(), tls = tls.is_some(), "accepting");
    let tls = tls.map(Rc::new);
    loop {
        match listener.accept().await {
            Ok(_) | Err(_) if shard.stop.load(Ordering::Relaxed) => return,
            Ok(stream) => {
                // Limits first, before a byte is read: over any of them the
                // socket is closed at once (and the limit counted).
                let rate = shard.core.borrow().config().max_connect_rate;
                if !shard.rate.borrow_mut().admit(Instant::now(), rate) {
                    shard.core.borrow_mut().note_limit(Limit::ConnectRate);
                    continue;
                }
                let Some(budget) = shard.budget.acquire() else {
                    shard.core.borrow_mut().note_limit(Limit::Connections);
                    continue;
                };
                let Some(slot) = OpenSlot::acquire(&shard) else {
                    continue;
                };
                debug!(shard = shard.index, peer = ?stream.peer_addr().ok(), "accepted");
                let new = NewConn {
                    tcp: stream,
                    budget,
                    slot,
                };
                spawn_local(first_bytes(
                    shard.clone(),
                    new,
                    tls.clone(),
                    connect_timeout,
                    max,
                ))
                .detach();
            }
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                warn!(shard = shard.index, error = %e, "accept failed");
                timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection just accepted, with its places in the limits.
struct NewConn {
    tcp: TcpStream,
    budget: BudgetSlot,
    slot: OpenSlot,
}

/// A connection ready to serve: its stream, who it is, its places in the
/// limits (given back when it ends).
struct Accepted {
    stream: Stream,
    identity: Identity,
    _budget: BudgetSlot,
    _slot: OpenSlot,
}

/// Reads a new connection until its CONNECT shows the home shard (after the
/// TLS handshake, on a TLS listener), settles its credentials, then serves
/// it here or hands it over. All of it within the connect timeout: a client
/// that dribbles its handshake or CONNECT (slowloris) is closed then, and
/// blocks only its own task meanwhile.
async fn first_bytes(
    shard: Rc<Shard>,
    new: NewConn,
    tls: Option<Rc<TlsSpec>>,
    timeout: Duration,
    max: u32,
) {
    let NewConn { tcp, budget, slot } = new;
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().ok();
    let work = async {
        let mut stream = match &tls {
            Some(spec) => {
                let mut s = match TlsStream::new(tcp, spec.config.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(shard = shard.index, error = %e, "TLS session setup failed");
                        return None;
                    }
                };
                if let Err(e) = s.handshake().await {
                    info!(shard = shard.index, peer = ?addr, error = %e, "TLS handshake failed");
                    return None;
                }
                let version = s.connection().protocol_version();
                debug!(shard = shard.index, peer = ?addr, ?version, "TLS handshake done");
                Stream::Tls(Box::new(s))
            }
            None => Stream::Plain(tcp),
        };
        let mut buf = BytesMut::new();
        let route = loop {
            match route_connect(&buf, shard.shards, max) {
                ConnectRoute::NeedMore => {
                    read_some(&mut stream, &mut buf).await?;
                }
                route => break route,
            }
        };
        let cert_user = match (&stream, tls.as_deref()) {
            (Stream::Tls(s), Some(spec)) if spec.identity_as_username => s.peer_common_name(),
            _ => None,
        };
        let peer = Peer { addr, cert_user };
        // (Decoding the CONNECT once more only when a password is checked.)
        let credentials = shard
            .gate
            .checks_passwords()
            .then(|| connect_credentials(&buf, max))
            .flatten();
        let identity = match shard.gate.judge(&peer, credentials.as_ref()) {
            Verdict::Now(identity) => identity,
            // The cache, the throttle's waits and the verifier pool all
            // count against the connect timeout too.
            Verdict::Verify(login) => shard.gate.check_password(addr.map(|a| a.ip()), login).await,
        };
        Some((stream, buf, route, identity))
    };
    let timed_out = async {
        timer::sleep(timeout).await;
        Err(())
    };
    let (stream, buf, route, identity) =
        match futures_lite::future::or(async { Ok(work.await) }, timed_out).await {
            Ok(Some(done)) => done,
            // Closed or failed before a whole CONNECT.
            Ok(None) => return,
            Err(()) => {
                shard.core.borrow_mut().note_limit(Limit::ConnectTimeout);
                debug!(shard = shard.index, peer = ?addr, "no CONNECT within the connect timeout");
                return;
            }
        };
    if let Identity::Refused(rc) = &identity {
        info!(shard = shard.index, peer = ?addr, reason = ?rc, "credentials refused");
    }
    if let ConnectRoute::Shard(home) = route {
        if home.get() != shard.index {
            let (tcp, tls) = match stream {
                Stream::Plain(tcp) => (tcp, None),
                Stream::Tls(s) => {
                    let (tcp, conn) = s.into_parts();
                    (tcp, Some(conn))
                }
            };
            let fd = tcp.as_raw_fd();
            // SAFETY: `fd` is the open socket of `tcp`; dup returns a new
            // descriptor that we own (or -1, checked below).
            let dup = unsafe { libc::dup(fd) };
            if dup < 0 {
                warn!(
                    shard = shard.index,
                    "dup failed: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            drop(tcp);
            drop(slot);
            // SAFETY: `dup` is a fresh descriptor owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            let handoff = MeshMsg::Handoff(Handoff {
                fd,
                buf,
                tls,
                identity,
                budget,
            });
            shard.outq.borrow_mut().push_back((home.get(), handoff));
            shard.out_notify.notify();
            return;
        }
    }
    let conn = Accepted {
        stream,
        identity,
        _budget: budget,
        _slot: slot,
    };
    // Tasks of their own: the handshake's and the password check's futures
    // (most of this one's size) are not held for the life of the connection.
    serve(shard, conn, buf);
}

/// A client's byte stream: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl futures_lite::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl futures_lite::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_close(cx),
            Stream::Tls(s) => std::pin::Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// Reads more bytes into `buf`; `None` on EOF, error or timeout.
///
/// The read goes to the shard's [`SCRATCH`] buffer, then what was read is
/// appended to `buf` ([`append_exact`]): the payload slices that queued
/// messages keep alive pin no slack, and a connection between packets
/// (`buf` empty, see [`serve`]) holds no buffer.
async fn read_some<R: futures_lite::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Option<usize> {
    let read = futures_lite::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            // Not re-entered: the borrow lasts for this synchronous poll only.
            let mut scratch = scratch.borrow_mut();
            match std::pin::Pin::new(&mut *r).poll_read(cx, &mut scratch[..]) {
                std::task::Poll::Ready(Ok(n)) => {
                    append_exact(buf, &scratch[..n]);
                    std::task::Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
    })
    .await;
    match read {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Appends `bytes` to `buf`, growing it only to what it then holds (or
/// towards the frame it starts, when that is longer and its header is
/// complete).
fn append_exact(buf: &mut BytesMut, bytes: &[u8]) {
    let have = buf.len() + bytes.len();
    if buf.capacity() >= have {
        buf.extend_from_slice(bytes);
        return;
    }
    let frame = if buf.is_empty() {
        vmqtt::codec::peek_frame_len(bytes)
    } else {
        vmqtt::codec::peek_frame_len(buf)
    };
    // Towards the frame's size, but at most twice what is held (or twice
    // MAX_READ, whichever is more): a header announcing 256 MB reserves nothing
    // (the core refuses it over max_packet_size before another read), and
    // a big frame grows in O(its size) copies.
    let room = frame.map_or(have, |f| f.clamp(have, have.max(MAX_READ) * 2));
    let mut fresh = BytesMut::with_capacity(room);
    fresh.extend_from_slice(buf);
    fresh.extend_from_slice(bytes);
    *buf = fresh;
}

/// How long a closing connection may take to flush its last bytes, and how
/// long its reader keeps draining the client's bytes so that the close is a
/// FIN, not a reset that could discard the final DISCONNECT.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves a connection on its home shard until either side closes it: its
/// CONNECT (already read) goes to the core, then a reader and a writer task
/// (in the clients queue) take it from there.
fn serve(shard: Rc<Shard>, accepted: Accepted, mut buf: BytesMut) {
    let Accepted {
        stream,
        identity,
        _budget,
        _slot,
    } = accepted;
    let _ = stream.tcp().set_nodelay(true);
    let fd = stream.tcp().as_raw_fd();
    let conn = shard
        .core
        .borrow_mut()
        .handle_open_as(Instant::now(), identity);
    debug!(
        shard = shard.index,
        conn = conn.0,
        buffered = buf.len(),
        "serving"
    );
    let io = Rc::new(ConnIo {
        client: RefCell::new(None),
        notify: Notify::default(),
        closing: Notify::default(),
        close: Cell::new(false),
        dead: Cell::new(false),
        fd,
    });
    shard.conns.borrow_mut().insert(conn, io.clone());
    let tls = matches!(stream, Stream::Tls(_));
    let (rd, wr) = futures_lite::io::split(stream);
    let queue = shard.queues.clients;
    spawn_into(queue, write_loop(shard.clone(), conn, io.clone(), wr, tls));
    if !buf.is_empty() {
        shard
            .core
            .borrow_mut()
            .handle_bytes(Instant::now(), conn, &mut buf);
        shard.after();
    }
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    spawn_into(queue, read_loop(shard, conn, io, rd, buf, (_budget, _slot)));
}

/// Reads a connection's bytes into the core until either side closes it.
/// `_held`: its places in the limits, given back when it ends.
async fn read_loop<R: futures_lite::AsyncRead + Unpin>(
    shard: Rc<Shard>,
    conn: ConnId,
    io: Rc<ConnIo>,
    mut rd: R,
    mut buf: BytesMut,
    _held: (BudgetSlot, OpenSlot),
) {
    while !io.close.get() {
        if read_some(&mut rd, &mut buf).await.is_none() {
            break;
        }
        shard
            .core
            .borrow_mut()
            .handle_bytes(Instant::now(), conn, &mut buf);
        shard.after();
        shard.backpressure().await;
        // A client that always has bytes ready must not starve the others:
        // after each read, the other tasks of this core (the subscribers'
        // writers among them) get their turn. glommio's own preemption
        // (`yield_if_needed`) only fires every 100 ms.
        futures_lite::future::yield_now().await;
        if buf.is_empty() {
            // Between packets a connection holds no buffer (the rest of the
            // last allocation stays with the payloads that share it).
            buf = BytesMut::new();
        }
    }
    if io.close.get() {
        // Boxed: a serving connection's future does not carry room for it.
        Box::pin(drain_for_close(rd)).await;
        return;
    }
    io.dead.set(true);
    io.notify.notify();
    shard.core.borrow_mut().handle_closed(Instant::now(), conn);
    shard.after();
}

/// The server is closing a connection: the writer flushes and sends FIN;
/// what the client still sends is drained until it closes too, for a
/// bounded time.
async fn drain_for_close<R: futures_lite::AsyncRead + Unpin>(mut rd: R) {
    let mut buf = BytesMut::new();
    let drain = async {
        while read_some(&mut rd, &mut buf).await.is_some() {
            buf.clear();
        }
    };
    futures_lite::future::or(drain, timer::sleep(CLOSE_GRACE)).await;
}

async fn write_loop<W: futures_lite::AsyncWrite + Unpin>(
    shard: Rc<Shard>,
    conn: ConnId,
    io: Rc<ConnIo>,
    mut wr: W,
    tls: bool,
) {
    'outer: loop {
        io.notify.wait().await;
        loop {
            let out = shard.core.borrow_mut().take_output(Instant::now(), conn);
            shard.after();
            let Some(out) = out else {
                // A closing connection's last bytes (a DISCONNECT, acks) may
                // wait for a storage batch: wait for them, bounded.
                if io.close.get() && !io.dead.get() && shard.core.borrow().has_output(conn) {
                    let woken = async {
                        io.notify.wait().await;
                        true
                    };
                    let give_up = async {
                        timer::sleep(CLOSE_GRACE).await;
                        false
                    };
                    if futures_lite::future::or(woken, give_up).await {
                        continue;
                    }
                }
                break;
            };
            // A client that stopped reading blocks only this task; once the
            // server decides to close it, it gets CLOSE_GRACE to take its bytes.
            // (TLS: the flush pushes out records rustls still buffers.)
            let write = async { wr.write_all(&out).await.is_ok() && wr.flush().await.is_ok() };
            let give_up = async {
                io.closing.wait().await;
                timer::sleep(CLOSE_GRACE).await;
                false
            };
            if !futures_lite::future::or(write, give_up).await {
                break 'outer;
            }
        }
        if io.close.get() || io.dead.get() {
            break;
        }
    }
    let _ = wr.flush().await;
    if tls && !io.dead.get() {
        // close_notify, so the client sees a clean TLS close (bounded: the
        // client may not be reading).
        let notify = async {
            let _ = wr.close().await;
        };
        futures_lite::future::or(notify, timer::sleep(Duration::from_millis(200))).await;
    }
    // SAFETY: `io.fd` is the socket of this connection; the reader half still
    // owns it, so the descriptor is open. SHUT_WR sends FIN after the queued
    // bytes; a reader blocked on a dead client is woken by SHUT_RD.
    unsafe {
        libc::shutdown(
            io.fd,
            if io.dead.get() {
                libc::SHUT_RDWR
            } else {
                libc::SHUT_WR
            },
        )
    };
    io.dead.set(true);
    shard.core.borrow_mut().handle_closed(Instant::now(), conn);
    shard.after();
    shard.conns.borrow_mut().remove(&conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_exact_allocates_what_is_held() {
        let mut buf = BytesMut::new();
        append_exact(&mut buf, &[0xC0, 0x00]); // PINGREQ: a whole frame
        assert_eq!(&buf[..], &[0xC0, 0x00]);
        assert_eq!(buf.capacity(), 2);
        // Half a frame whose header says 5 bytes: room for all of it.
        let mut buf = BytesMut::new();
        append_exact(&mut buf, &[0x30, 0x03, b'a']);
        assert_eq!(buf.capacity(), 5);
        let before = buf.as_ptr();
        append_exact(&mut buf, b"bc");
        assert_eq!(&buf[..], &[0x30, 0x03, b'a', b'b', b'c']);
        assert_eq!(buf.as_ptr(), before, "the rest of the frame fits in place");
    }

    #[test]
    fn append_exact_does_not_reserve_what_a_header_only_announces() {
        // PUBLISH announcing 256 MB: room for twice the read size at most.
        let mut buf = BytesMut::new();
        append_exact(&mut buf, &[0x30, 0xff, 0xff, 0xff, 0x7f, b'x']);
        assert!(buf.capacity() <= 2 * MAX_READ, "{}", buf.capacity());
        // A 200 KiB frame arriving in 64 KiB reads ends in one exact buffer.
        let frame = 200 * 1024;
        let mut head = vec![0x30, 0x80 | 0x7b, 0x80 | 0x3f, 0x0c]; // varint
        let len = frame - head.len();
        head[1] = 0x80 | (len & 0x7f) as u8;
        head[2] = 0x80 | ((len >> 7) & 0x7f) as u8;
        head[3] = (len >> 14) as u8;
        assert_eq!(vmqtt::codec::peek_frame_len(&head), Some(frame));
        let mut bytes = head.clone();
        bytes.resize(frame, b'p');
        let mut buf = BytesMut::new();
        for chunk in bytes.chunks(MAX_READ) {
            append_exact(&mut buf, chunk);
        }
        assert_eq!(&buf[..], &bytes[..]);
        assert_eq!(buf.capacity(), frame);
    }

    #[test]
    fn append_exact_keeps_a_partial_header_and_what_follows() {
        // One byte of a header: nothing known, exactly what was read.
        let mut buf = BytesMut::new();
        append_exact(&mut buf, &[0x30]);
        assert_eq!(buf.capacity(), 1);
        // The length arrives with two more frames' bytes: all kept, in order.
        append_exact(&mut buf, &[0x02, b'x', b'y', 0xC0, 0x00]);
        assert_eq!(&buf[..], &[0x30, 0x02, b'x', b'y', 0xC0, 0x00]);
        assert!(buf.capacity() >= buf.len());
    }

    #[test]
    fn append_exact_after_a_split_does_not_touch_the_split_off_bytes() {
        let mut buf = BytesMut::new();
        append_exact(&mut buf, &[0x30, 0x01, b'a', 0x30]);
        let first = buf.split_to(3).freeze();
        append_exact(&mut buf, &[0x01, b'b']);
        assert_eq!(&first[..], &[0x30, 0x01, b'a']);
        assert_eq!(&buf[..], &[0x30, 0x01, b'b']);
    }
}
