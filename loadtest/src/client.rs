//! One MQTT client connection on a glommio executor: socket set-up with a
//! source address, CONNECT/CONNACK, SUBSCRIBE/SUBACK, and reading packets.
//!
//! glommio's `TcpStream::connect` cannot bind a source address, so the
//! socket is made with `socket2`: bound to its source address (with
//! `IP_BIND_ADDRESS_NO_PORT`, so the port is picked per 4-tuple at connect
//! time), connected non-blocking, and handed to glommio. The first write —
//! the CONNECT — waits for the connection to complete: a send on a socket
//! still in SYN-SENT returns `EAGAIN`, and glommio then waits for POLLOUT.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};
use vmqtt::codec::{
    decode, ConnAck, Connect, DecodeError, EncodeError, Packet, PacketType, ProtocolVersion, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use vmqtt::topic::TopicFilter;
use vmqtt::{ByteStr, PacketId};

/// Largest packet the generator accepts from a broker.
pub const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Creating or configuring the socket failed (often: out of descriptors).
    #[error("socket: {0}")]
    Socket(io::Error),
    /// Binding the source address failed.
    #[error("bind {addr}: {err}")]
    Bind {
        /// The source address.
        addr: Ipv4Addr,
        /// The error.
        err: io::Error,
    },
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// The broker sent bytes the codec rejects.
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (bad topic or options).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// The broker refused (CONNACK or SUBACK failure code).
    #[error("refused by the broker: {what} reason {code:#04x}")]
    Refused {
        /// CONNACK or SUBACK.
        what: &'static str,
        /// The reason code.
        code: u8,
    },
    /// A packet arrived that does not fit the exchange.
    #[error("unexpected {0:?} from the broker")]
    Unexpected(PacketType),
    /// A topic or filter given on the command line is not valid.
    #[error("invalid topic {0:?}")]
    Topic(String),
}

impl ClientError {
    /// A short label for error counts.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Socket(_) => "socket",
            ClientError::Bind { .. } => "bind",
            ClientError::Connect(_) => "connect",
            ClientError::Io(_) => "io",
            ClientError::Timeout(_) => "timeout",
            ClientError::Closed => "closed",
            ClientError::Decode(_) => "decode",
            ClientError::Encode(_) => "encode",
            ClientError::Refused { .. } => "refused",
            ClientError::Unexpected(_) => "unexpected",
            ClientError::Topic(_) => "topic",
        }
    }
}

/// How to open one connection.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// The broker.
    pub broker: SocketAddr,
    /// Source address to bind, if any.
    pub source: Option<Ipv4Addr>,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Client identifier.
    pub client_id: String,
    /// Clean session / clean start.
    pub clean: bool,
    /// Keep alive, seconds.
    pub keep_alive: u16,
    /// v5 Session Expiry Interval (persistent sessions).
    pub session_expiry: Option<u32>,
    /// v5 Receive Maximum to announce.
    pub receive_maximum: Option<u16>,
    /// How long to wait for the CONNACK (and the TCP handshake).
    pub timeout: Duration,
    /// Bytes to read per call on this connection.
    pub read_chunk: usize,
}

/// An open MQTT connection: the stream, the bytes read but not yet decoded,
/// and the protocol version.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Read buffer: bytes not decoded yet.
    pub buf: BytesMut,
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// Where each read lands before it is appended to `buf`, so that a read
    /// abandoned half-way (raced against a timer or a stop signal) leaves
    /// `buf` as it was.
    pub scratch: Vec<u8>,
}

/// Makes the socket: non-blocking, no Nagle, bound to `source`, connect
/// started.
fn start_connect(opts: &ConnectOpts) -> Result<Socket, ClientError> {
    let domain = match opts.broker {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let socket =
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(ClientError::Socket)?;
    socket.set_nonblocking(true).map_err(ClientError::Socket)?;
    socket.set_nodelay(true).map_err(ClientError::Socket)?;
    if let Some(ip) = opts.source {
        // Best effort: without it each source address has one ephemeral
        // range shared by all destinations, which is still fine.
        let _ = vmqtt_os::set_bind_address_no_port(socket.as_raw_fd());
        let local = SocketAddr::V4(SocketAddrV4::new(ip, 0));
        socket
            .bind(&local.into())
            .map_err(|err| ClientError::Bind { addr: ip, err })?;
    }
    match socket.connect(&opts.broker.into()) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(ClientError::Connect(e)),
    }
}

impl Conn {
    /// Opens a TCP connection and completes CONNECT/CONNACK. Returns the
    /// connection and the CONNACK.
    pub async fn open(opts: &ConnectOpts) -> Result<(Conn, ConnAck), ClientError> {
        let socket = start_connect(opts)?;
        let stream = TcpStream::from(socket);
        stream
            .set_write_timeout(Some(opts.timeout))
            .map_err(|e| ClientError::Io(e.into()))?;
        stream
            .set_read_timeout(Some(opts.timeout))
            .map_err(|e| ClientError::Io(e.into()))?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
            version: opts.version,
            scratch: vec![0; opts.read_chunk.max(64)],
        };
        let mut connect = Connect::new(opts.version, ByteStr::from(opts.client_id.as_str()));
        connect.clean_start = opts.clean;
        connect.keep_alive = opts.keep_alive;
        if opts.version.is_v5() {
            connect.properties.session_expiry_interval = opts.session_expiry;
            connect.properties.receive_maximum = opts.receive_maximum;
        }
        conn.send(&Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| match e {
                // The first write is where a refused TCP connect shows.
                ClientError::Io(io) => ClientError::Connect(io),
                other => other,
            })?;
        match conn.read_packet("CONNACK").await? {
            Packet::ConnAck(ack) => {
                let ok = ack.reason == ReasonCode::SUCCESS;
                if !ok {
                    return Err(ClientError::Refused {
                        what: "CONNACK",
                        code: ack.reason.0,
                    });
                }
                Ok((conn, ack))
            }
            other => Err(ClientError::Unexpected(other.packet_type())),
        }
    }

    /// Subscribes to `filter` with `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        let filter = TopicFilter::new(ByteStr::from(filter))
            .map_err(|_| ClientError::Topic(filter.to_string()))?;
        let packet_id = PacketId::new(1).ok_or(ClientError::Topic(String::new()))?;
        let sub = Subscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![(filter, SubscriptionOptions::qos(qos))],
        };
        self.send(&Packet::Subscribe(sub)).await?;
        // The run's topics are fresh: no retained message comes before the
        // SUBACK, so anything else is unexpected.
        match self.read_packet("SUBACK").await? {
            Packet::SubAck(ack) => match ack.reasons.first() {
                Some(code) if code.0 < 0x80 => Ok(()),
                Some(code) => Err(ClientError::Refused {
                    what: "SUBACK",
                    code: code.0,
                }),
                None => Err(ClientError::Refused {
                    what: "SUBACK",
                    code: 0x80,
                }),
            },
            other => Err(ClientError::Unexpected(other.packet_type())),
        }
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out)?;
        self.write_all(&out).await
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await.map_err(map_io)
    }

    /// Decodes the next packet already in the buffer, if a whole one is
    /// there.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(decode(&mut self.buf, self.version, MAX_PACKET)?)
    }

    /// Reads once into the buffer; `Ok(0)` never happens (EOF is
    /// [`ClientError::Closed`]).
    pub async fn fill(&mut self) -> Result<usize, ClientError> {
        read_into(&mut self.stream, &mut self.buf, &mut self.scratch).await
    }

    /// Reads until one whole packet is decoded.
    pub async fn read_packet(&mut self, what: &'static str) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            match self.fill().await {
                Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(ClientError::Timeout(what))
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }
}

/// Reads once from `r` through `scratch` and appends what came to `buf`.
/// Cancel-safe: dropped before completion, it changes nothing.
pub async fn read_into<R: futures_lite::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> Result<usize, ClientError> {
    match r.read(scratch).await {
        Ok(0) => Err(ClientError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&scratch[..n]);
            Ok(n)
        }
        Err(e) => Err(map_io(e)),
    }
}

fn map_io(e: io::Error) -> ClientError {
    ClientError::Io(e)
}

/// `true` for the error a read timeout gives.
pub fn is_timeout(e: &ClientError) -> bool {
    matches!(e, ClientError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}
