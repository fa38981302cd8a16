//! [`TlsStream`]: a rustls server connection over a glommio socket as an
//! `AsyncRead + AsyncWrite` stream (handshake, split reader and writer,
//! close), and the parts it is taken apart into to move to another shard.
//! Shard-local like the socket inside it.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::server::ServerConnection;
use rustls::ServerConfig;

/// Which task a [`TlsStream`] call is made from, once the stream is split:
/// the reader (`poll_read`, the handshake) or the writer (`poll_write`,
/// `poll_flush`, `poll_close`). Both may have to write TLS records.
#[derive(Debug, Clone, Copy)]
enum Role {
    Reader = 0,
    Writer = 1,
}

/// The tasks waiting for the socket to become writable.
///
/// glommio's `TcpStream` keeps a single waker for write readiness, but a
/// split `TlsStream` has two tasks that may wait for it (the reader flushing
/// handshake or alert records, the writer its data). The stream registers
/// this waker with the socket and keeps each task's own waker here; a wake
/// wakes both.
#[derive(Debug, Default)]
struct WriteWakers {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl WriteWakers {
    fn register(&self, role: Role, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[role as usize];
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn wake_all(&self) {
        let taken = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            [slots[0].take(), slots[1].take()]
        };
        for waker in taken.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// The socket as a `std::io` reader and writer for rustls: `Pending` becomes
/// `WouldBlock`, with the waker of `cx` registered by the socket.
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS server connection over a glommio socket, as an `AsyncRead +
/// AsyncWrite` stream that can be `futures_lite::io::split` into a reader
/// task and a writer task like a plain `TcpStream`.
///
/// - Call [`TlsStream::handshake`] (under a timeout) before splitting: a
///   handshake is driven by one task.
/// - Reading returns `Ok(0)` once the peer sent `close_notify`, and an
///   `UnexpectedEof` error when the peer closed TCP without it (after every
///   byte decrypted before). Many MQTT clients close without `close_notify`;
///   MQTT frames are self-delimiting, so treat both as the end of the
///   connection. A TLS protocol error is an `InvalidData` error, after the
///   alert was written if the socket had room for it.
/// - Closing (`poll_close`) sends `close_notify`, flushes, then shuts down
///   the writing side of the socket.
///
/// Lives on: the shard whose executor owns the socket; it moves between
/// shards only as [`TlsStream::into_parts`].
pub struct TlsStream {
    tcp: TcpStream,
    conn: Box<ServerConnection>,
    /// The tasks waiting for write readiness.
    wakers: Arc<WriteWakers>,
    /// `wakers` as a `Waker`, given to the socket.
    write_waker: Waker,
    /// A TLS error was returned: every later call fails.
    failed: bool,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("fd", &self.tcp.as_raw_fd())
            .field("handshaking", &self.conn.is_handshaking())
            .field("version", &self.conn.protocol_version())
            .field("failed", &self.failed)
            .finish()
    }
}

impl AsRawFd for TlsStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

impl TlsStream {
    /// Starts a server-side TLS connection on an accepted socket; nothing is
    /// read or written until [`TlsStream::handshake`] or the first read.
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self::from_parts(tcp, Box::new(conn)))
    }

    /// Rebuilds a stream from its parts, on the shard that received them.
    /// Whatever the connection had buffered (plaintext not read yet, a
    /// partial record, TLS records not written yet) is read or written first.
    pub fn from_parts(tcp: TcpStream, conn: Box<ServerConnection>) -> Self {
        let wakers = Arc::new(WriteWakers::default());
        let write_waker = Waker::from(wakers.clone());
        TlsStream {
            tcp,
            conn,
            wakers,
            write_waker,
            failed: false,
        }
    }

    /// Takes the stream apart to move it to another shard: the socket (send
    /// its descriptor; glommio's `TcpStream` is shard-local) and the TLS
    /// state, which is `Send`.
    pub fn into_parts(self) -> (TcpStream, Box<ServerConnection>) {
        (self.tcp, self.conn)
    }

    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TLS connection (negotiated version, cipher suite, peer
    /// certificates, SNI).
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Drives the handshake to completion, including writing the server's
    /// last flight. Fails on a TLS error (after trying to send the alert), or
    /// with `UnexpectedEof` when the client closes first. Never blocks the
    /// executor: bound it with a timeout against slow clients.
    pub async fn handshake(&mut self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    /// The subject common name (CN) of the client's certificate, when the
    /// client presented one (it was verified against the client CA). The
    /// first CN if there are several; `None` if it is not valid UTF-8.
    pub fn peer_common_name(&self) -> Option<String> {
        let cert = self.conn.peer_certificates()?.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let cn = parsed.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.failed {
                return Poll::Ready(Err(failed()));
            }
            let flushed = match self.poll_flush_tls(cx, Role::Reader) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => false,
            };
            if !self.conn.is_handshaking() {
                return if flushed {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            match self.poll_read_tls(cx, Role::Reader) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection during the TLS handshake",
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes the TLS records rustls has queued until there are none left;
    /// `Pending` when the socket is full (the task of `role` is woken when it
    /// has room).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>, role: Role) -> Poll<io::Result<()>> {
        if !self.conn.wants_write() {
            return Poll::Ready(Ok(()));
        }
        while self.conn.wants_write() {
            let mut shared = Context::from_waker(&self.write_waker);
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx: &mut shared,
            };
            match self.conn.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wakers.register(role, cx.waker());
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // A successful write drops the socket's pending readiness wait, with
        // the other task's waker in it; what it waited to write is written.
        self.wakers.wake_all();
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes from the socket and decrypts them: `Ok(0)` at the
    /// end of the TCP stream. A TLS error marks the stream failed, tries once
    /// to write the alert, and is returned as `InvalidData`.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>, role: Role) -> Poll<io::Result<usize>> {
        let mut io = SyncIo {
            tcp: &mut self.tcp,
            cx: &mut *cx,
        };
        let n = match self.conn.read_tls(&mut io) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = self.conn.process_new_packets() {
            self.failed = true;
            // Best effort: a client that does not read gets no alert.
            let _ = self.poll_flush_tls(cx, role);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }
}

/// The error of every call after a TLS error.
fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the TLS connection failed earlier",
    )
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(failed()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            // Handshake records, alerts, key updates: written as the socket
            // has room, without holding up reading.
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx, Role::Reader) {
                return Poll::Ready(Err(e));
            }
            match this.conn.reader().read(buf) {
                // `Ok(0)`: the peer sent close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // `UnexpectedEof`: TCP closed without close_notify.
                Err(e) => return Poll::Ready(Err(e)),
            }
            // At the end of the stream, rustls's reader reports it next.
            match this.poll_read_tls(cx, Role::Reader) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(failed()));
        }
        if this.conn.is_handshaking() {
            // Only before a split: the handshake is the reader's to drive.
            match this.poll_handshake(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| 0),
            }
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // rustls takes plaintext while its output buffer (64 KiB by default)
        // has room; when it is full, the records are written first.
        for _ in 0..2 {
            let n = this.conn.writer().write(buf)?;
            match this.poll_flush_tls(cx, Role::Writer) {
                Poll::Ready(Ok(())) if n > 0 => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(())) => {} // the full buffer was just written
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if n > 0 => return Poll::Ready(Ok(n)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the TLS connection takes no more data",
        )))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        match this.poll_flush_tls(cx, Role::Writer) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Idempotent: rustls queues close_notify once.
        this.conn.send_close_notify();
        match this.poll_flush_tls(cx, Role::Writer) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_close(cx),
            other => other,
        }
    }
}
