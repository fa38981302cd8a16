//! Listening and accepting: the SO_REUSEPORT sockets, the limits checked
//! before a byte is read, a new connection's first bytes (TLS handshake,
//! CONNECT, credentials) and its handoff to the home shard.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, timer};
use tracing::{debug, info, warn};

use vmqtt::broker::{connect_credentials, route_connect, ConnectRoute, Identity, Limit};

use super::conn::{read_some, serve, Stream};
use super::shard::{OpenSlot, Shard};
use super::{Handoff, MeshMsg, TlsSpec};
use crate::gate::{BudgetSlot, Peer, Verdict};
use crate::tls::TlsStream;

/// A shard's listening sockets.
pub(super) struct Bound {
    /// Each with its TLS settings, for a TLS listener.
    pub(super) listeners: Vec<(TcpListener, Option<TlsSpec>)>,
    /// A second descriptor of each listening socket, to end it at shutdown
    /// (see `sys::stop_listening`).
    pub(super) listening: Vec<OwnedFd>,
}

/// Binds shard `index`'s SO_REUSEPORT socket on every plain address of
/// `listen` and every TLS address of `tls`.
pub(super) fn bind(
    index: usize,
    listen: &[SocketAddr],
    tls: Option<&TlsSpec>,
) -> Result<Bound, String> {
    let mut listeners = Vec::new();
    let mut listening = Vec::new();
    let tls_listen = tls.map_or(&[][..], |t| &t.listen[..]);
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
                listeners.push((l, secure.then(|| tls.cloned()).flatten()));
                listening.push(keep);
            }
            Err(e) => return Err(format!("shard {index}: cannot listen on {addr}: {e}")),
        }
    }
    Ok(Bound {
        listeners,
        listening,
    })
}

pub(super) async fn accept_loop(
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
            Ok(_) | Err(_) if shard.stopping.get() => return,
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
pub(super) struct Accepted {
    pub(super) stream: Stream,
    pub(super) identity: Identity,
    pub(super) _budget: BudgetSlot,
    pub(super) _slot: OpenSlot,
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
            shard.outq.push(home.get(), handoff);
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
