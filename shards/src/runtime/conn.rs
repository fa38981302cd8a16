//! A served connection: its stream (plain or TLS), its reader and writer
//! tasks on its home shard, and how every read lands in the shard's one
//! scratch buffer.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::timer;
use tracing::debug;

use vmqtt::broker::ConnId;
use vmqtt::ClientId;

use super::listener::Accepted;
use super::shard::{spawn_into, OpenSlot, Shard};
use crate::gate::BudgetSlot;
use crate::notify::Notify;
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

/// What a connection's tasks and its shard share about it. Shard-local.
pub(super) struct ConnIo {
    /// The client identifier, once connected (for logs).
    pub(super) client: RefCell<Option<ClientId>>,
    /// Output is waiting (or the connection ends).
    pub(super) notify: Notify,
    /// The server decided to close the connection.
    pub(super) closing: Notify,
    pub(super) close: Cell<bool>,
    dead: Cell<bool>,
    fd: RawFd,
}

/// A client's byte stream: plain TCP or TLS over it.
pub(super) enum Stream {
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
pub(super) async fn read_some<R: futures_lite::AsyncRead + Unpin>(
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
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves a connection on its home shard until either side closes it: its
/// CONNECT (already read) goes to the core, then a reader and a writer task
/// (in the clients queue) take it from there.
pub(super) fn serve(shard: Rc<Shard>, accepted: Accepted, mut buf: BytesMut) {
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

    /// A reader that fails.
    struct Broken;

    impl futures_lite::AsyncRead for Broken {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }

    #[test]
    fn read_some_appends_what_was_read_and_ends_at_eof_or_error() {
        futures_lite::future::block_on(async {
            let mut r = futures_lite::io::Cursor::new(vec![0x30, 0x01, b'a']);
            let mut buf = BytesMut::new();
            assert_eq!(read_some(&mut r, &mut buf).await, Some(3));
            assert_eq!(&buf[..], &[0x30, 0x01, b'a']);
            assert_eq!(buf.capacity(), 3, "no slack from the scratch buffer");
            assert_eq!(read_some(&mut r, &mut buf).await, None, "EOF");
            assert_eq!(buf.len(), 3, "EOF appends nothing");
            assert_eq!(read_some(&mut Broken, &mut buf).await, None, "error");
            assert_eq!(buf.len(), 3);
        });
    }

    #[test]
    fn read_some_reads_at_most_the_scratch_buffer() {
        futures_lite::future::block_on(async {
            let bytes: Vec<u8> = (0..2 * MAX_READ + 10).map(|i| i as u8).collect();
            let mut r = futures_lite::io::Cursor::new(bytes.clone());
            let mut buf = BytesMut::new();
            let mut reads = Vec::new();
            while let Some(n) = read_some(&mut r, &mut buf).await {
                reads.push(n);
            }
            assert_eq!(reads, [MAX_READ, MAX_READ, 10]);
            assert_eq!(&buf[..], &bytes[..], "in order, nothing lost");
        });
    }
}
