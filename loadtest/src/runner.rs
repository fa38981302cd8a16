//! One executor of the load generator: its connections (idle, publishers,
//! subscribers), its counters and histograms, and the barriers that keep
//! every executor of every process in step.
//!
//! An executor talks to its process's hub ([`crate::hub`]) over a
//! `std::sync::mpsc` channel ([`MemberEvent`], from [`crate::tick`]) and waits for barrier releases
//! on the atomics of [`Control`]. Everything else here is `Rc`/`RefCell`,
//! local to the executor's thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::{or, yield_now};
use futures_lite::AsyncWriteExt;
use glommio::sync::Semaphore;
use glommio::{spawn_local, spawn_local_into, timer, Latency, Shares, Task, TaskQueueHandle};
use vmqtt::codec::{Disconnect, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode};
use vmqtt::topic::TopicName;
use vmqtt::{ByteStr, PacketId};
use vmqtt_os::mono_ns;

use crate::client::{is_timeout, read_into, ClientError, Conn, ConnectOpts};
use crate::hist::Hist;
use crate::payload::{self, Stamp};
use crate::plan::{ConnPlan, ConnSpec, PubSubPlan, Role, RunConfig, Scenario};
use crate::sync::{Gate, Notify};
use crate::tick::{Counters, MemberEvent, Part, StepTiming, TickData, MAX_ERROR_SAMPLES};
use crate::track::{ReceiverStreams, SeqSet, Tracking};

/// Most barriers a run uses (start, one per conn step, end).
pub const MAX_BARRIERS: usize = 64;

/// Barrier releases, shared by the hub and the executors of a process.
#[derive(Debug)]
pub struct Control {
    /// Barriers released so far: barrier `n` is released when this is > n.
    released: AtomicU32,
    /// The value each release carries (a start time, a load end).
    values: Vec<AtomicU64>,
    /// Set when the run is abandoned: executors stop waiting and close.
    abort: AtomicBool,
    /// Messages received by this process's subscribers so far (lets the hub
    /// see the end of the drain sooner than the per-second ticks would).
    received: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            released: AtomicU32::new(0),
            values: (0..MAX_BARRIERS).map(|_| AtomicU64::new(0)).collect(),
            abort: AtomicBool::new(false),
            received: AtomicU64::new(0),
        }
    }
}

impl Control {
    /// Releases barrier `n` with `value`.
    pub fn release(&self, n: u32, value: u64) {
        if let Some(v) = self.values.get(n as usize) {
            v.store(value, Ordering::Release);
        }
        self.released.fetch_max(n + 1, Ordering::AcqRel);
    }

    /// Tells every executor to stop.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Release);
    }

    /// Messages received so far by this process's subscribers.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether the run was abandoned.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    fn released_value(&self, n: u32) -> Option<u64> {
        (self.released.load(Ordering::Acquire) > n).then(|| {
            self.values
                .get(n as usize)
                .map_or(0, |v| v.load(Ordering::Acquire))
        })
    }
}

/// What an executor starts with.
#[derive(Debug)]
pub struct CoreSpec {
    /// Executor index in this process.
    pub core: usize,
    /// The run.
    pub cfg: Arc<RunConfig>,
    /// Barrier releases.
    pub control: Arc<Control>,
    /// To the hub.
    pub events: mpsc::Sender<MemberEvent>,
}

#[derive(Debug, Default)]
struct Stats {
    tick: Counters,
    total: Counters,
    tick_latency: Hist,
    tick_connect: Hist,
    latency: Hist,
    connect_latency: Hist,
    error_kinds: std::collections::BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

/// An executor's shared state (local to its thread).
struct Core {
    index: usize,
    cfg: Arc<RunConfig>,
    control: Arc<Control>,
    events: mpsc::Sender<MemberEvent>,
    stats: RefCell<Stats>,
    connected: Cell<u64>,
    /// When measuring starts (end of warm-up), CLOCK_MONOTONIC ns.
    measure_from: Cell<u64>,
    /// When publishers stop (timed runs); `u64::MAX` for counted runs.
    load_end: Cell<u64>,
    /// The run's start (barrier 0), 0 before.
    t0: Cell<u64>,
    start: Gate,
    finish: Gate,
    /// Connections that finished setting up (or failed to).
    set_up: Cell<usize>,
    set_up_notify: Notify,
    /// Publishers that finished (sent everything, acknowledgements in).
    pubs_done: Cell<usize>,
    pubs_done_notify: Notify,
    /// Last CONNACK time, for step timings.
    last_connack: Cell<u64>,
    step_connected: Cell<u64>,
    step_failed: Cell<u64>,
    stopped: Cell<bool>,
    /// Task queue of everything that reads (subscribers, publishers'
    /// acknowledgement readers): high shares, latency-sensitive, so that
    /// open-loop publishers on the same executor cannot starve the
    /// measurement.
    recv_q: TaskQueueHandle,
    /// Task queue of the publishers' writers.
    send_q: TaskQueueHandle,
}

/// Spawns `fut` into task queue `q`.
fn spawn_in<T: 'static>(
    q: TaskQueueHandle,
    fut: impl std::future::Future<Output = T> + 'static,
) -> Task<T> {
    match spawn_local_into(fut, q) {
        Ok(t) => t,
        // Only an unknown queue fails; both are created by `run_core`
        // before anything is spawned into them.
        Err(e) => panic!("spawning into a task queue: {e}"),
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("index", &self.index).finish()
    }
}

impl Core {
    fn error(&self, e: &ClientError) {
        let mut s = self.stats.borrow_mut();
        s.tick.errors += 1;
        self.note(&mut s, e);
    }

    fn note(&self, s: &mut Stats, e: &ClientError) {
        *s.error_kinds.entry(e.kind().to_string()).or_default() += 1;
        if s.error_samples.len() < MAX_ERROR_SAMPLES {
            s.error_samples.push(e.to_string());
        }
    }

    fn connect_failed(&self, e: &ClientError) {
        let mut s = self.stats.borrow_mut();
        s.tick.connect_failures += 1;
        self.note(&mut s, e);
        self.step_failed.set(self.step_failed.get() + 1);
    }

    fn connected_ok(&self, started: u64) {
        let now = mono_ns();
        let lat = now.saturating_sub(started);
        let mut s = self.stats.borrow_mut();
        s.tick.connects += 1;
        s.tick_connect.record(lat);
        s.connect_latency.record(lat);
        self.connected.set(self.connected.get() + 1);
        self.last_connack.set(now);
        self.step_connected.set(self.step_connected.get() + 1);
    }

    fn disconnected(&self) {
        self.connected.set(self.connected.get().saturating_sub(1));
    }

    fn closed_by_broker(&self, e: &ClientError) {
        let mut s = self.stats.borrow_mut();
        s.tick.closed += 1;
        self.note(&mut s, e);
    }

    fn setup_done(&self) {
        self.set_up.set(self.set_up.get() + 1);
        self.set_up_notify.notify();
    }

    fn publisher_done(&self) {
        self.pubs_done.set(self.pubs_done.get() + 1);
        self.pubs_done_notify.notify();
    }

    fn connect_opts(&self, spec: &ConnSpec, read_chunk: usize) -> ConnectOpts {
        let cfg = &self.cfg;
        let broker = match (&spec.role, cfg.sub_broker) {
            (Role::Subscriber { .. }, Some(b)) => b,
            _ => cfg.broker,
        };
        ConnectOpts {
            broker,
            source: spec.source,
            version: cfg.version,
            client_id: spec.client_id.clone(),
            clean: cfg.clean,
            keep_alive: cfg.keepalive,
            session_expiry: cfg.session_expiry,
            receive_maximum: None,
            timeout: cfg.connect_timeout,
            read_chunk,
        }
    }

    /// Takes this second's data.
    fn tick(&self, t: u32) -> TickData {
        let mut s = self.stats.borrow_mut();
        let counts = std::mem::take(&mut s.tick);
        s.total.add(&counts);
        let latency = std::mem::take(&mut s.tick_latency);
        let connect_latency = std::mem::take(&mut s.tick_connect);
        TickData {
            t,
            counts,
            connected: self.connected.get(),
            latency,
            connect_latency,
        }
    }

    /// Waits for barrier `n` to be released; `None` if the run was aborted.
    async fn barrier(&self, n: u32) -> Option<u64> {
        let _ = self.events.send(MemberEvent::Barrier {
            member: self.index,
            n,
            connected: self.connected.get(),
        });
        loop {
            if let Some(v) = self.control.released_value(n) {
                return Some(v);
            }
            if self.control.aborted() {
                return None;
            }
            timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `cond` holds, woken by `notify`.
    async fn until(&self, notify: &Notify, cond: impl Fn() -> bool) {
        while !cond() && !self.control.aborted() {
            or(notify.wait(), timer::sleep(Duration::from_millis(100))).await;
        }
    }
}

/// Sends one [`TickData`] per second from `t0` until the executor stops.
async fn ticker(core: Rc<Core>, t0: u64) {
    let mut t = 1u32;
    loop {
        let at = t0 + u64::from(t) * 1_000_000_000;
        let now = mono_ns();
        if at > now {
            timer::sleep(Duration::from_nanos(at - now)).await;
        }
        if core.stopped.get() {
            return;
        }
        let data = core.tick(t);
        let _ = core.events.send(MemberEvent::Tick {
            member: core.index,
            data: Box::new(data),
        });
        t += 1;
    }
}

/// Runs one executor to the end of the run.
pub async fn run_core(spec: CoreSpec) {
    let CoreSpec {
        core,
        cfg,
        control,
        events,
    } = spec;
    let c = Rc::new(Core {
        index: core,
        cfg: cfg.clone(),
        control,
        events,
        stats: RefCell::default(),
        connected: Cell::new(0),
        measure_from: Cell::new(u64::MAX),
        load_end: Cell::new(u64::MAX),
        t0: Cell::new(0),
        start: Gate::default(),
        finish: Gate::default(),
        set_up: Cell::new(0),
        set_up_notify: Notify::default(),
        pubs_done: Cell::new(0),
        pubs_done_notify: Notify::default(),
        last_connack: Cell::new(0),
        step_connected: Cell::new(0),
        step_failed: Cell::new(0),
        stopped: Cell::new(false),
        recv_q: glommio::executor().create_task_queue(
            Shares::Static(1000),
            Latency::Matters(Duration::from_micros(cfg.preempt_us.max(50))),
            "recv",
        ),
        send_q: glommio::executor().create_task_queue(
            Shares::Static(100),
            Latency::NotImportant,
            "send",
        ),
    });
    let conns = cfg.connections_of(core);
    let (tracking, steps) = match &cfg.scenario {
        Scenario::Conn(plan) => (Tracking::default(), run_conn(&c, conns, plan).await),
        Scenario::PubSub(plan) => (run_pubsub(&c, conns, plan).await, Vec::new()),
    };
    c.stopped.set(true);
    let mut s = c.stats.borrow_mut();
    let rest = std::mem::take(&mut s.tick);
    s.total.add(&rest);
    let part = Part {
        counts: s.total,
        latency: std::mem::take(&mut s.latency),
        connect_latency: std::mem::take(&mut s.connect_latency),
        steps,
        tracking,
        error_kinds: std::mem::take(&mut s.error_kinds),
        error_samples: std::mem::take(&mut s.error_samples),
    };
    drop(s);
    let _ = c.events.send(MemberEvent::Done {
        member: core,
        part: Box::new(part),
    });
}

// ---------------------------------------------------------------- conn

async fn run_conn(c: &Rc<Core>, conns: Vec<ConnSpec>, plan: &ConnPlan) -> Vec<StepTiming> {
    let mut timings = Vec::new();
    let Some(t0) = c.barrier(0).await else {
        return timings;
    };
    c.t0.set(t0);
    spawn_local(ticker(c.clone(), t0)).detach();
    let sem = Rc::new(Semaphore::new(c.cfg.concurrency_per_core as u64));
    let mut tasks: Vec<Task<()>> = Vec::with_capacity(conns.len());
    let mut next = 0usize;
    let mut aborted = false;
    for (i, &target) in plan.steps.iter().enumerate() {
        let first_start = mono_ns();
        c.step_connected.set(0);
        c.step_failed.set(0);
        c.last_connack.set(0);
        let begin = next;
        while next < conns.len() && conns[next].global < target && !c.control.aborted() {
            let Ok(permit) = sem.acquire_static_permit(1).await else {
                break;
            };
            let spec = conns[next].clone();
            tasks.push(spawn_local(idle_conn(c.clone(), spec, permit)));
            next += 1;
        }
        let want = next;
        c.until(&c.set_up_notify, || c.set_up.get() >= want).await;
        timings.push(StepTiming {
            target,
            connected: c.step_connected.get(),
            failed: c.step_failed.get(),
            first_start_ns: if next > begin { first_start } else { 0 },
            last_done_ns: c.last_connack.get(),
        });
        if c.barrier(1 + i as u32).await.is_none() {
            aborted = true;
            break;
        }
    }
    if !aborted {
        let hold_from = c
            .control
            .released_value(plan.steps.len() as u32)
            .unwrap_or_else(mono_ns);
        let until = hold_from + (c.cfg.duration * 1e9) as u64;
        while mono_ns() < until && !c.control.aborted() {
            let left = until.saturating_sub(mono_ns()).min(100_000_000);
            timer::sleep(Duration::from_nanos(left)).await;
        }
        let _ = c.barrier(1 + plan.steps.len() as u32).await;
    }
    c.finish.open();
    for t in tasks {
        t.await;
    }
    timings
}

async fn idle_conn(c: Rc<Core>, spec: ConnSpec, permit: glommio::sync::StaticPermit) {
    let started = mono_ns();
    let opened = Conn::open(&c.connect_opts(&spec, 256)).await;
    drop(permit);
    let mut conn = match opened {
        Ok((conn, _)) => {
            c.connected_ok(started);
            c.setup_done();
            conn
        }
        Err(e) => {
            c.connect_failed(&e);
            c.setup_done();
            return;
        }
    };
    hold_idle(&c, &mut conn).await;
    c.disconnected();
}

/// Reads more bytes into `conn`, or `None` once the run finishes first.
async fn fill_until_finish(c: &Core, conn: &mut Conn) -> Option<Result<usize, ClientError>> {
    or(
        async {
            c.finish.wait().await;
            None
        },
        async { Some(conn.fill().await) },
    )
    .await
}

/// Keeps an idle connection alive (PINGREQ every keep-alive) until the run
/// finishes, then disconnects.
async fn hold_idle(c: &Core, conn: &mut Conn) {
    let ka = Duration::from_secs(u64::from(c.cfg.keepalive.max(1)));
    let _ = conn.stream.set_read_timeout(Some(ka));
    loop {
        let read = fill_until_finish(c, conn).await;
        match read {
            None => break,
            Some(Err(e)) if is_timeout(&e) => {
                if let Err(e) = conn.send(&Packet::PingReq).await {
                    c.closed_by_broker(&e);
                    return;
                }
            }
            Some(Err(e)) => {
                c.closed_by_broker(&e);
                return;
            }
            Some(Ok(_)) => loop {
                match conn.next_buffered() {
                    Ok(Some(Packet::PingResp)) => {}
                    Ok(Some(Packet::Disconnect(d))) => {
                        c.closed_by_broker(&ClientError::Refused {
                            what: "DISCONNECT",
                            code: d.reason.0,
                        });
                        return;
                    }
                    Ok(Some(other)) => c.error(&ClientError::Unexpected(other.packet_type())),
                    Ok(None) => break,
                    Err(e) => {
                        c.error(&e);
                        return;
                    }
                }
            },
        }
    }
    disconnect(conn).await;
}

async fn disconnect(conn: &mut Conn) {
    let _ = conn
        .send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
    let _ = conn.stream.close().await;
}

// ---------------------------------------------------------------- pubsub

async fn run_pubsub(c: &Rc<Core>, conns: Vec<ConnSpec>, plan: &PubSubPlan) -> Tracking {
    let plan = Rc::new(plan.clone());
    let sem = Rc::new(Semaphore::new(c.cfg.concurrency_per_core as u64));
    let total = conns.len();
    let publishers = conns
        .iter()
        .filter(|s| matches!(s.role, Role::Publisher { .. }))
        .count();
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for spec in conns {
        match spec.role.clone() {
            Role::Subscriber {
                id,
                receiver,
                filter,
            } => subs.push(spawn_in(
                c.recv_q,
                subscriber(
                    c.clone(),
                    plan.clone(),
                    sem.clone(),
                    spec,
                    id,
                    receiver,
                    filter,
                ),
            )),
            Role::Publisher { id, topic } => pubs.push(spawn_in(
                c.send_q,
                publisher(c.clone(), plan.clone(), sem.clone(), spec, id, topic),
            )),
            Role::Idle => {}
        }
    }
    c.until(&c.set_up_notify, || c.set_up.get() >= total).await;
    if let Some(t0) = c.barrier(0).await {
        c.t0.set(t0);
        c.measure_from.set(t0 + (plan.warmup * 1e9) as u64);
        if plan.count.is_none() {
            c.load_end
                .set(t0 + ((plan.warmup + c.cfg.duration) * 1e9) as u64);
        }
        spawn_local(ticker(c.clone(), t0)).detach();
        c.start.open();
        c.until(&c.pubs_done_notify, || c.pubs_done.get() >= publishers)
            .await;
        let _ = c.barrier(1).await;
    }
    c.start.open();
    c.finish.open();
    let mut tracking = Tracking::default();
    for t in subs {
        if let Some((receiver, streams)) = t.await {
            for (p, s) in &streams.by_publisher {
                tracking.add_stream(receiver, *p, s);
            }
        }
    }
    for t in pubs {
        if let Some((id, sent, acked)) = t.await {
            tracking.add_publisher(id, sent, &acked);
        }
    }
    tracking
}

/// Opens a connection under a concurrency permit; counts the outcome.
async fn open_counted(
    c: &Core,
    sem: &Semaphore,
    spec: &ConnSpec,
    read_chunk: usize,
) -> Option<Conn> {
    let permit = sem.acquire_permit(1).await.ok()?;
    let started = mono_ns();
    let r = Conn::open(&c.connect_opts(spec, read_chunk)).await;
    drop(permit);
    match r {
        Ok((conn, _)) => {
            c.connected_ok(started);
            Some(conn)
        }
        Err(e) => {
            c.connect_failed(&e);
            None
        }
    }
}

async fn subscriber(
    c: Rc<Core>,
    plan: Rc<PubSubPlan>,
    sem: Rc<Semaphore>,
    spec: ConnSpec,
    _id: u32,
    receiver: u32,
    filter: String,
) -> Option<(u32, ReceiverStreams)> {
    let Some(mut conn) = open_counted(&c, &sem, &spec, 64 * 1024).await else {
        c.setup_done();
        return None;
    };
    if let Err(e) = conn.subscribe(&filter, plan.qos()).await {
        c.connect_failed(&e);
        c.setup_done();
        c.disconnected();
        return None;
    }
    c.setup_done();
    let mut streams = ReceiverStreams::default();
    let version = conn.version;
    let ka_ns = u64::from(c.cfg.keepalive.max(1)) * 1_000_000_000;
    let _ = conn
        .stream
        .set_read_timeout(Some(Duration::from_nanos(ka_ns / 2)));
    let mut out = BytesMut::new();
    let mut last_write = mono_ns();
    let mut failed = false;
    loop {
        let read = fill_until_finish(&c, &mut conn).await;
        match read {
            None => break,
            Some(Err(e)) if is_timeout(&e) => {}
            Some(Err(e)) => {
                c.closed_by_broker(&e);
                failed = true;
                break;
            }
            Some(Ok(_)) => {
                let now = mono_ns();
                let mut received = 0u64;
                let mut invalid = 0u64;
                let mut st = c.stats.borrow_mut();
                let measure = now >= c.measure_from.get();
                loop {
                    let packet = match conn.next_buffered() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => {
                            c.note(&mut st, &e);
                            st.tick.errors += 1;
                            failed = true;
                            break;
                        }
                    };
                    match packet {
                        Packet::Publish(p) => {
                            received += 1;
                            match Stamp::read(&p.payload) {
                                Some(stamp) => {
                                    let lat = now.saturating_sub(stamp.sent_ns);
                                    st.tick_latency.record(lat);
                                    if measure {
                                        st.latency.record(lat);
                                    }
                                    if streams.record(stamp.publisher, stamp.seq)
                                        == crate::track::Arrival::Invalid
                                    {
                                        invalid += 1;
                                    }
                                }
                                None => invalid += 1,
                            }
                            if let Some(pid) = p.packet_id {
                                let ack = PubResponse::new(pid);
                                let pkt = if p.qos == QoS::ExactlyOnce {
                                    Packet::PubRec(ack)
                                } else {
                                    Packet::PubAck(ack)
                                };
                                let _ = pkt.encode(version, &mut out);
                            }
                        }
                        Packet::PubRel(r) => {
                            let _ = Packet::PubComp(PubResponse::new(r.packet_id))
                                .encode(version, &mut out);
                        }
                        Packet::PingResp | Packet::SubAck(_) => {}
                        Packet::Disconnect(d) => {
                            let e = ClientError::Refused {
                                what: "DISCONNECT",
                                code: d.reason.0,
                            };
                            c.note(&mut st, &e);
                            st.tick.closed += 1;
                            failed = true;
                            break;
                        }
                        other => {
                            c.note(&mut st, &ClientError::Unexpected(other.packet_type()));
                            st.tick.errors += 1;
                        }
                    }
                }
                st.tick.received += received;
                c.control.received.fetch_add(received, Ordering::Relaxed);
                st.tick.invalid += invalid;
                drop(st);
                if failed {
                    break;
                }
            }
        }
        let now = mono_ns();
        if out.is_empty() && now.saturating_sub(last_write) >= ka_ns / 2 {
            let _ = Packet::PingReq.encode(version, &mut out);
        }
        if !out.is_empty() {
            if let Err(e) = conn.write_all(&out).await {
                c.closed_by_broker(&e);
                failed = true;
                break;
            }
            out.clear();
            last_write = now;
        }
        yield_now().await;
    }
    if !failed {
        disconnect(&mut conn).await;
    }
    c.disconnected();
    Some((receiver, streams))
}

/// A publisher's state shared by its writer and its reader task.
#[derive(Debug, Default)]
struct PubShared {
    inflight: Cell<u32>,
    /// Packet id → sequence number, for messages not yet acknowledged
    /// (QoS 1) or completed (QoS 2).
    pending: RefCell<HashMap<u16, u32>>,
    acked: RefCell<SeqSet>,
    /// PUBRELs to write.
    control: RefCell<BytesMut>,
    wake_writer: Notify,
    stop_reader: Gate,
    failed: Cell<bool>,
}

/// A PUBLISH encoded once by the codec, with the offsets of the fields
/// that change per message.
#[derive(Debug, Clone)]
pub struct Template {
    /// The encoded packet.
    pub bytes: Vec<u8>,
    /// Offset of the packet identifier (QoS > 0).
    pub packet_id_at: Option<usize>,
    /// Offset of the payload.
    pub payload_at: usize,
}

impl Template {
    /// Encodes a PUBLISH of `payload` bytes to `topic`.
    pub fn new(
        topic: &str,
        qos: QoS,
        payload: usize,
        version: ProtocolVersion,
    ) -> Result<Self, ClientError> {
        let topic_name = TopicName::new(ByteStr::from(topic))
            .map_err(|_| ClientError::Topic(topic.to_string()))?;
        let body = payload::blank(payload);
        let payload_len = body.len();
        let mut p = Publish::new(topic_name, body);
        p.qos = qos;
        if qos != QoS::AtMostOnce {
            p.packet_id = PacketId::new(1);
        }
        let mut buf = BytesMut::new();
        Packet::Publish(p).encode(version, &mut buf)?;
        let payload_at = buf.len() - payload_len;
        // Before the payload: v5 has a one-byte empty property length; before
        // that (QoS > 0) the two-byte packet identifier.
        let props = usize::from(version.is_v5());
        let packet_id_at = (qos != QoS::AtMostOnce).then(|| payload_at - props - 2);
        Ok(Self {
            bytes: buf.to_vec(),
            packet_id_at,
            payload_at,
        })
    }

    /// Appends one message to `out`.
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16, stamp: Stamp) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.packet_id_at {
            out[base + at..base + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        stamp.write(&mut out[base + self.payload_at..]);
    }
}

async fn publisher(
    c: Rc<Core>,
    plan: Rc<PubSubPlan>,
    sem: Rc<Semaphore>,
    spec: ConnSpec,
    id: u32,
    topic: String,
) -> Option<(u32, u32, SeqSet)> {
    let opened = open_counted(&c, &sem, &spec, 16 * 1024).await;
    c.setup_done();
    let template = Template::new(&topic, plan.qos(), plan.payload as usize, c.cfg.version);
    let (conn, template) = match (opened, template) {
        (Some(conn), Ok(t)) => (conn, t),
        (conn, t) => {
            if let Err(e) = t {
                c.error(&e);
            }
            if conn.is_some() {
                c.disconnected();
            }
            c.publisher_done();
            return None;
        }
    };
    c.start.wait().await;
    let Conn {
        stream,
        buf,
        version,
        scratch,
    } = conn;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let (rd, mut wr) = futures_lite::io::split(stream);
    let sh = Rc::new(PubShared::default());
    let reader = spawn_in(
        c.recv_q,
        pub_reader(c.clone(), sh.clone(), rd, buf, scratch, version),
    );

    let qos = plan.qos();
    let window = if qos == QoS::AtMostOnce {
        u32::MAX
    } else {
        plan.inflight
    };
    let count = plan.count.unwrap_or(u32::MAX);
    let rate = plan.rate;
    let t0 = c.t0.get();
    let interval_ns = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    // Spread the publishers' send times over one interval.
    let phase = ((f64::from(id) * 0.618_033_988_75).fract() * interval_ns) as u64;
    let start = t0 + phase;
    let batch_cap = if rate > 0.0 { 1024 } else { plan.batch };
    let ka_ns = u64::from(c.cfg.keepalive.max(1)) * 1_000_000_000;
    let mut sent: u32 = 0;
    let mut next_pid: u16 = 1;
    let mut out: Vec<u8> = Vec::with_capacity(template.bytes.len() * batch_cap as usize);
    let mut last_write = mono_ns();

    loop {
        if sh.failed.get() || c.control.aborted() {
            break;
        }
        let now = mono_ns();
        if now >= c.load_end.get() || sent >= count {
            break;
        }
        out.clear();
        {
            let mut ctl = sh.control.borrow_mut();
            out.extend_from_slice(&ctl);
            ctl.clear();
        }
        let room = window.saturating_sub(sh.inflight.get());
        let due = if rate > 0.0 {
            if now < start {
                0
            } else {
                let d = ((now - start) as f64 / interval_ns) as u64 + 1;
                d.min(u64::from(count)).saturating_sub(u64::from(sent)) as u32
            }
        } else {
            count - sent
        };
        let n = room.min(due).min(batch_cap);
        let mut written = 0u32;
        if n > 0 {
            let stamp_ns = mono_ns();
            let mut pending = sh.pending.borrow_mut();
            for _ in 0..n {
                let mut pid = 0u16;
                if qos != QoS::AtMostOnce {
                    // Packet ids cycle 1..=65535; skip one still in use.
                    let mut tries = 0;
                    while pending.contains_key(&next_pid) && tries < 65_535 {
                        next_pid = next_pid.checked_add(1).unwrap_or(1);
                        tries += 1;
                    }
                    if pending.contains_key(&next_pid) {
                        break;
                    }
                    pid = next_pid;
                    pending.insert(pid, sent + written);
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                template.append(
                    &mut out,
                    pid,
                    Stamp {
                        sent_ns: stamp_ns,
                        publisher: id,
                        seq: sent + written,
                    },
                );
                written += 1;
            }
            if qos != QoS::AtMostOnce {
                sh.inflight.set(sh.inflight.get() + written);
            }
        }
        if out.is_empty() && now.saturating_sub(last_write) >= ka_ns / 2 {
            let mut ping = BytesMut::new();
            let _ = Packet::PingReq.encode(version, &mut ping);
            out.extend_from_slice(&ping);
        }
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                c.closed_by_broker(&ClientError::Io(e));
                sh.failed.set(true);
                break;
            }
            last_write = mono_ns();
            sent += written;
            c.stats.borrow_mut().tick.sent += u64::from(written);
            yield_now().await;
            continue;
        }
        // Nothing to send now: wait for an acknowledgement, the next due
        // time, or the end of the load.
        let mut wait_ns = 50_000_000u64;
        if rate > 0.0 && room > 0 {
            let next_due = start + (f64::from(sent) * interval_ns) as u64;
            wait_ns = wait_ns.min(next_due.saturating_sub(now).max(10_000));
        }
        wait_ns = wait_ns.min(c.load_end.get().saturating_sub(now).max(10_000));
        or(
            sh.wake_writer.wait(),
            timer::sleep(Duration::from_nanos(wait_ns)),
        )
        .await;
    }

    // Wait for the acknowledgements of what is in flight.
    let deadline = mono_ns() + (plan.drain * 1e9) as u64;
    while (sh.inflight.get() > 0 || !sh.control.borrow().is_empty())
        && !sh.failed.get()
        && mono_ns() < deadline
        && !c.control.aborted()
    {
        let ctl = std::mem::take(&mut *sh.control.borrow_mut());
        if !ctl.is_empty() && wr.write_all(&ctl).await.is_err() {
            break;
        }
        let left = deadline.saturating_sub(mono_ns()).min(100_000_000);
        or(
            sh.wake_writer.wait(),
            timer::sleep(Duration::from_nanos(left)),
        )
        .await;
    }
    c.publisher_done();
    c.finish.wait().await;
    if !sh.failed.get() {
        let mut bye = BytesMut::new();
        let _ = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
            .encode(version, &mut bye);
        let _ = wr.write_all(&bye).await;
        let _ = wr.close().await;
    }
    sh.stop_reader.open();
    reader.await;
    c.disconnected();
    let acked = std::mem::take(&mut *sh.acked.borrow_mut());
    Some((id, sent, acked))
}

async fn pub_reader(
    c: Rc<Core>,
    sh: Rc<PubShared>,
    mut rd: futures_lite::io::ReadHalf<glommio::net::TcpStream>,
    mut buf: BytesMut,
    mut scratch: Vec<u8>,
    version: ProtocolVersion,
) {
    loop {
        let read = or(
            async {
                sh.stop_reader.wait().await;
                None
            },
            async { Some(read_into(&mut rd, &mut buf, &mut scratch).await) },
        )
        .await;
        match read {
            None => return,
            Some(Err(e)) => {
                if !sh.stop_reader.is_open() && !c.finish.is_open() {
                    c.closed_by_broker(&e);
                }
                sh.failed.set(true);
                sh.wake_writer.notify();
                return;
            }
            Some(Ok(_)) => {}
        }
        let mut acked_now = 0u64;
        loop {
            let packet = match vmqtt::codec::decode(&mut buf, version, crate::client::MAX_PACKET) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    c.error(&ClientError::Decode(e));
                    sh.failed.set(true);
                    sh.wake_writer.notify();
                    return;
                }
            };
            match packet {
                Packet::PubAck(r) => {
                    if let Some(seq) = sh.pending.borrow_mut().remove(&r.packet_id.get()) {
                        sh.inflight.set(sh.inflight.get().saturating_sub(1));
                        if r.reason.0 < 0x80 {
                            sh.acked.borrow_mut().insert(seq);
                            acked_now += 1;
                        } else {
                            c.error(&ClientError::Refused {
                                what: "PUBACK",
                                code: r.reason.0,
                            });
                        }
                    }
                }
                Packet::PubRec(r) => {
                    let pid = r.packet_id.get();
                    let seq = sh.pending.borrow().get(&pid).copied();
                    if let Some(seq) = seq {
                        if r.reason.0 < 0x80 {
                            if sh.acked.borrow_mut().insert(seq) {
                                acked_now += 1;
                            }
                            let _ = Packet::PubRel(PubResponse::new(r.packet_id))
                                .encode(version, &mut sh.control.borrow_mut());
                        } else {
                            sh.pending.borrow_mut().remove(&pid);
                            sh.inflight.set(sh.inflight.get().saturating_sub(1));
                            c.error(&ClientError::Refused {
                                what: "PUBREC",
                                code: r.reason.0,
                            });
                        }
                    }
                }
                Packet::PubComp(r) => {
                    if sh.pending.borrow_mut().remove(&r.packet_id.get()).is_some() {
                        sh.inflight.set(sh.inflight.get().saturating_sub(1));
                    }
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => {
                    c.closed_by_broker(&ClientError::Refused {
                        what: "DISCONNECT",
                        code: d.reason.0,
                    });
                    sh.failed.set(true);
                    sh.wake_writer.notify();
                    return;
                }
                other => c.error(&ClientError::Unexpected(other.packet_type())),
            }
        }
        if acked_now > 0 {
            c.stats.borrow_mut().tick.acked += acked_now;
        }
        sh.wake_writer.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmqtt::codec::decode;

    fn check_template(version: ProtocolVersion, qos: QoS) {
        let t = Template::new("lt/x/p2p/7", qos, 40, version).unwrap();
        let mut out = Vec::new();
        let stamp = Stamp {
            sent_ns: 99,
            publisher: 7,
            seq: 12,
        };
        t.append(&mut out, 513, stamp);
        t.append(&mut out, 514, Stamp { seq: 13, ..stamp });
        let mut buf = BytesMut::from(&out[..]);
        for (pid, seq) in [(513, 12), (514, 13)] {
            let Some(Packet::Publish(p)) = decode(&mut buf, version, 1 << 20).unwrap() else {
                panic!("not a publish")
            };
            assert_eq!(p.qos, qos);
            assert_eq!(p.topic.as_str(), "lt/x/p2p/7");
            assert_eq!(p.payload.len(), 40);
            let got = Stamp::read(&p.payload).unwrap();
            assert_eq!(got, Stamp { seq, ..stamp });
            if qos == QoS::AtMostOnce {
                assert_eq!(p.packet_id, None);
            } else {
                assert_eq!(p.packet_id.map(PacketId::get), Some(pid));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn templates_decode_with_patched_fields() {
        for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                check_template(v, q);
            }
        }
    }

    #[test]
    fn control_releases_barriers() {
        let control = Control::default();
        assert_eq!(control.released_value(0), None);
        control.release(0, 42);
        assert_eq!(control.released_value(0), Some(42));
        assert_eq!(control.released_value(1), None);
    }
}
