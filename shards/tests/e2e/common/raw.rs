//! A raw MQTT client over a tokio `TcpStream`, encoding and decoding with
//! `vmqtt::codec`: every byte and flag is under the test's control (DUP,
//! packet ids, properties, acks withheld, malformed bytes).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use vmqtt::codec::{
    self, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubResponse, Publish,
    QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use vmqtt::topic::{TopicFilter, TopicName};
use vmqtt::{ByteStr, PacketId};

/// How long the harness waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long the harness watches for something that must not happen (used
/// after a control message has already bounded the race).
pub const QUIET: Duration = Duration::from_millis(300);

/// Why a read ended without a packet.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing arrived in time.
    Timeout,
    /// The server closed the connection (EOF or reset).
    Closed,
    /// The bytes could not be decoded.
    Decode(codec::DecodeError),
    /// Another I/O error.
    Io(std::io::Error),
}

/// A topic name from a string (panics on an invalid one: test input).
pub fn topic(s: &str) -> TopicName {
    TopicName::new(ByteStr::from(s)).unwrap_or_else(|e| panic!("bad topic {s:?}: {e:?}"))
}

/// A QoS 1 PUBLISH of `payload` with Topic Alias `alias`: to topic `t`
/// (setting the alias), or with an empty topic (using it) when `t` is "".
pub fn aliased_publish(t: &str, payload: &str, alias: u16) -> Publish {
    let name = if t.is_empty() {
        TopicName::empty()
    } else {
        topic(t)
    };
    let mut p = Publish::new(name, Bytes::copy_from_slice(payload.as_bytes()));
    p.qos = QoS::AtLeastOnce;
    p.properties.topic_alias = Some(alias);
    p
}

/// A topic filter from a string (panics on an invalid one: test input).
pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(ByteStr::from(s)).unwrap_or_else(|e| panic!("bad filter {s:?}: {e:?}"))
}

/// A packet id (panics on 0).
pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

/// A CONNECT with clean start, keep alive 60 s, no will.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect::new(version, client_id)
}

/// CONNECT of a persistent session: 3.1.1 clean session 0; v5 session
/// expiry `expiry`, clean start only on the `first` connection.
pub fn persistent(version: ProtocolVersion, id: &str, first: bool, expiry: u32) -> Connect {
    let mut c = connect_packet(version, id);
    if version.is_v5() {
        c.clean_start = first;
        c.properties.session_expiry_interval = Some(expiry);
    } else {
        c.clean_start = false;
    }
    c
}

/// A will message.
pub fn will(t: &str, payload: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic(t),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Default::default(),
    }
}

/// A PUBLISH (packet id and DUP left for the sender to fill).
pub fn publish(t: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Publish {
    let mut p = Publish::new(topic(t), payload);
    p.qos = qos;
    p.retain = retain;
    p
}

/// The payload as UTF-8 text (lossy), for messages and comparisons.
pub fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// A raw MQTT connection.
#[derive(Debug)]
pub struct Raw {
    /// A label for failure messages (usually the client id).
    pub name: String,
    stream: TcpStream,
    rbuf: BytesMut,
    /// The connection's protocol version (from the CONNECT sent).
    pub version: ProtocolVersion,
    pending: VecDeque<Packet>,
    next_pid: u16,
}

impl Raw {
    /// Opens a TCP connection to the broker (no MQTT yet).
    pub async fn tcp(port: u16, name: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("[{name}] TCP connect to 127.0.0.1:{port}: {e}"));
        Self::from_stream(stream, name)
    }

    /// Opens a TCP connection with a small receive buffer (to make a slow
    /// consumer back up quickly).
    pub async fn tcp_small_rcvbuf(port: u16, name: &str, rcvbuf: u32) -> Raw {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let stream = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .unwrap_or_else(|e| panic!("[{name}] TCP connect to 127.0.0.1:{port}: {e}"));
        Self::from_stream(stream, name)
    }

    fn from_stream(stream: TcpStream, name: &str) -> Raw {
        let _ = stream.set_nodelay(true);
        Raw {
            name: name.to_owned(),
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            version: ProtocolVersion::V5,
            pending: VecDeque::new(),
            next_pid: 0,
        }
    }

    /// Connects and sends `connect`; returns the CONNACK, whatever its code.
    pub async fn connect_with(port: u16, connect: Connect) -> (Raw, ConnAck) {
        let name = if connect.client_id.is_empty() {
            "<empty id>".to_owned()
        } else {
            connect.client_id.as_str().to_owned()
        };
        let mut raw = Raw::tcp(port, &name).await;
        let ack = raw.handshake(connect).await;
        (raw, ack)
    }

    /// Sends `connect` on this TCP connection and waits for the CONNACK.
    pub async fn handshake(&mut self, connect: Connect) -> ConnAck {
        self.version = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv(WAIT).await {
            Ok(Packet::ConnAck(ack)) => ack,
            other => panic!("[{}] expected CONNACK, got {other:?}", self.name),
        }
    }

    /// Connects with `connect` and asserts a successful CONNACK.
    pub async fn connect_ok(port: u16, connect: Connect) -> (Raw, ConnAck) {
        let (raw, ack) = Self::connect_with(port, connect).await;
        assert_eq!(
            ack.reason,
            ReasonCode::SUCCESS,
            "[{}] CONNACK refused: {ack:?}",
            raw.name
        );
        (raw, ack)
    }

    /// An MQTT 5 client with clean start and default options.
    pub async fn v5(port: u16, client_id: &str) -> Raw {
        Self::connect_ok(port, connect_packet(ProtocolVersion::V5, client_id))
            .await
            .0
    }

    /// An MQTT 3.1.1 client with clean session and default options.
    pub async fn v311(port: u16, client_id: &str) -> Raw {
        Self::connect_ok(port, connect_packet(ProtocolVersion::V3_1_1, client_id))
            .await
            .0
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        packet
            .encode(self.version, &mut buf)
            .unwrap_or_else(|e| panic!("[{}] encode {packet:?}: {e:?}", self.name));
        self.send_raw(&buf).await;
    }

    /// Encodes and writes one packet, returning a write error (the server
    /// may be gone) instead of failing.
    pub async fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        packet
            .encode(self.version, &mut buf)
            .unwrap_or_else(|e| panic!("[{}] encode {packet:?}: {e:?}", self.name));
        self.stream.write_all(&buf).await
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes).await {
            panic!("[{}] write: {e}", self.name);
        }
    }

    /// Writes bytes, tolerating a connection the server already closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet id (1, 2, …, wrapping, never 0).
    pub fn next_packet_id(&mut self) -> PacketId {
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
        pid(self.next_pid)
    }

    /// Reads the next packet: from the stash first, then from the socket.
    pub async fn recv(&mut self, within: Duration) -> Result<Packet, RecvError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        self.read_packet(within).await
    }

    /// Reads the next packet from the socket only.
    async fn read_packet(&mut self, within: Duration) -> Result<Packet, RecvError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match codec::decode(&mut self.rbuf, self.version, u32::MAX) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(e)),
            }
            self.rbuf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) => return Err(RecvError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(RecvError::Closed)
                }
                Ok(Err(e)) => return Err(RecvError::Io(e)),
            }
        }
    }

    /// Reads until a packet for which `want` returns `Some`; other packets are
    /// stashed for later `recv`s. A DISCONNECT or a close fails the test.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut want: impl FnMut(&Packet) -> Option<T>,
    ) -> T {
        if let Some(i) = self.pending.iter().position(|p| want(p).is_some()) {
            let p = self.pending.remove(i).expect("index in range");
            return want(&p).expect("matched before");
        }
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.read_packet(left).await {
                Ok(p) => {
                    if let Some(t) = want(&p) {
                        return t;
                    }
                    if let Packet::Disconnect(d) = &p {
                        panic!(
                            "[{}] waiting for {what}: the server sent DISCONNECT {:#04x} {:?}",
                            self.name, d.reason.0, d.properties.reason_string
                        );
                    }
                    self.pending.push_back(p);
                }
                Err(e) => panic!(
                    "[{}] waiting for {what} ({within:?}): {e:?}; stashed: {:?}",
                    self.name, self.pending
                ),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK.
    pub async fn subscribe_opts(
        &mut self,
        f: &str,
        opts: SubscriptionOptions,
        properties: SubscribeProperties,
    ) -> SubAck {
        let id = self.next_packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: id,
            properties,
            filters: vec![(filter(f), opts)],
        }))
        .await;
        self.wait_for(&format!("SUBACK for {f}"), WAIT, |p| match p {
            Packet::SubAck(a) if a.packet_id == id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes to `f` with maximum QoS `qos` and asserts it was granted.
    pub async fn subscribe(&mut self, f: &str, qos: QoS) {
        let ack = self
            .subscribe_opts(f, SubscriptionOptions::qos(qos), Default::default())
            .await;
        assert_eq!(
            ack.reasons,
            vec![ReasonCode(qos as u8)],
            "[{}] SUBACK for {f}",
            self.name
        );
    }

    /// Unsubscribes from `f` and returns the UNSUBACK.
    pub async fn unsubscribe(&mut self, f: &str) -> UnsubAck {
        let id = self.next_packet_id();
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![filter(f)],
        }))
        .await;
        self.wait_for(&format!("UNSUBACK for {f}"), WAIT, |p| match p {
            Packet::UnsubAck(a) if a.packet_id == id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes `p` and completes its QoS flow: returns the PUBACK (QoS 1) or
    /// the PUBREC (QoS 2, after PUBREL/PUBCOMP), `None` for QoS 0.
    pub async fn publish(&mut self, mut p: Publish) -> Option<PubResponse> {
        if p.qos == QoS::AtMostOnce {
            p.packet_id = None;
            self.send(&Packet::Publish(p)).await;
            return None;
        }
        let id = match p.packet_id {
            Some(id) => id,
            None => {
                let id = self.next_packet_id();
                p.packet_id = Some(id);
                id
            }
        };
        let qos = p.qos;
        self.send(&Packet::Publish(p)).await;
        if qos == QoS::AtLeastOnce {
            return Some(
                self.wait_for("PUBACK", WAIT, |pk| match pk {
                    Packet::PubAck(a) if a.packet_id == id => Some(a.clone()),
                    _ => None,
                })
                .await,
            );
        }
        let rec = self
            .wait_for("PUBREC", WAIT, |pk| match pk {
                Packet::PubRec(a) if a.packet_id == id => Some(a.clone()),
                _ => None,
            })
            .await;
        if rec.reason.0 >= 0x80 {
            return Some(rec);
        }
        self.send(&Packet::PubRel(PubResponse::new(id))).await;
        let comp = self
            .wait_for("PUBCOMP", WAIT, |pk| match pk {
                Packet::PubComp(a) if a.packet_id == id => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(comp.reason, ReasonCode::SUCCESS, "[{}] PUBCOMP", self.name);
        Some(rec)
    }

    /// Publishes at QoS 1 and asserts a successful PUBACK (v5: success or
    /// "no matching subscribers").
    pub async fn publish_ok(&mut self, t: &str, payload: &str, qos: QoS, retain: bool) {
        let p = publish(t, Bytes::copy_from_slice(payload.as_bytes()), qos, retain);
        if let Some(ack) = self.publish(p).await {
            assert!(
                ack.reason.0 < 0x80,
                "[{}] publish to {t} refused: {ack:?}",
                self.name
            );
        }
    }

    /// The next PUBLISH (not acknowledged). Fails on timeout, DISCONNECT or
    /// close.
    pub async fn recv_publish_within(&mut self, within: Duration) -> Publish {
        self.wait_for("PUBLISH", within, |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH within `WAIT` (not acknowledged).
    pub async fn recv_publish(&mut self) -> Publish {
        self.recv_publish_within(WAIT).await
    }

    /// Acknowledges a received PUBLISH: PUBACK (QoS 1) or PUBREC, then waits
    /// for PUBREL and sends PUBCOMP (QoS 2).
    pub async fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResponse::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResponse::new(id))).await;
                self.wait_for("PUBREL", WAIT, |pk| match pk {
                    Packet::PubRel(r) if r.packet_id == id => Some(()),
                    _ => None,
                })
                .await;
                self.send(&Packet::PubComp(PubResponse::new(id))).await;
            }
        }
    }

    /// The next PUBLISH, acknowledged.
    pub async fn recv_publish_acked(&mut self) -> Publish {
        let p = self.recv_publish().await;
        self.ack(&p).await;
        p
    }

    /// Asserts that no PUBLISH arrives within `within` (other packets are
    /// stashed; a close is not a failure here).
    pub async fn expect_no_publish(&mut self, within: Duration, why: &str) {
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| matches!(p, Packet::Publish(_)))
        {
            panic!("[{}] {why}: unexpected {p:?}", self.name);
        }
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                return;
            }
            match self.read_packet(left).await {
                Ok(Packet::Publish(p)) => panic!(
                    "[{}] {why}: unexpected PUBLISH on {:?}: {:?}",
                    self.name,
                    p.topic.as_str(),
                    text(&p)
                ),
                Ok(p) => self.pending.push_back(p),
                Err(RecvError::Timeout) | Err(RecvError::Closed) => return,
                Err(e) => panic!("[{}] {why}: {e:?}", self.name),
            }
        }
    }

    /// Waits until the server closes the connection; returns every packet
    /// received before the close. Fails if it is still open after `within`.
    pub async fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let mut got: Vec<Packet> = self.pending.drain(..).collect();
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.read_packet(left).await {
                Ok(p) => got.push(p),
                Err(RecvError::Closed) => return got,
                Err(RecvError::Timeout) => panic!(
                    "[{}] the server did not close the connection within {within:?}; received {got:?}",
                    self.name
                ),
                // Garbage after a DISCONNECT does not matter: wait for the close.
                Err(RecvError::Decode(_)) => {
                    self.rbuf.clear();
                }
                Err(RecvError::Io(e)) => panic!("[{}] read: {e}", self.name),
            }
        }
    }

    /// Reads raw bytes until the server closes the connection; fails if it is
    /// still open after `within`. For answers the codec should not interpret
    /// (e.g. a 3.1.1 CONNACK to a CONNECT of an unknown level).
    pub async fn read_bytes_until_closed(&mut self, within: Duration) -> Vec<u8> {
        let mut out = self.rbuf.split().to_vec();
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "[{}] the server did not close the connection within {within:?}; received {out:02x?}",
                    self.name
                ),
                Ok(Ok(0)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => return out,
            }
        }
    }

    /// Waits for the server to close the connection and returns the reason
    /// code of the DISCONNECT it sent first, if any.
    pub async fn expect_disconnect(&mut self, within: Duration) -> Option<ReasonCode> {
        let got = self.expect_closed(within).await;
        got.iter().rev().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
    }

    /// Sends a normal DISCONNECT, half-closes the socket and waits until the
    /// server closes it (it must, after a DISCONNECT): once that has happened
    /// the server has processed the DISCONNECT.
    pub async fn disconnect(self) {
        self.disconnect_with(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
            .await;
    }

    /// Sends `d` as DISCONNECT (v5 reason and properties), half-closes the
    /// socket and waits until the server closes it.
    pub async fn disconnect_with(mut self, d: Disconnect) {
        self.send(&Packet::Disconnect(d)).await;
        let _ = self.stream.shutdown().await;
        let got = self.expect_closed(WAIT).await;
        assert!(
            got.iter().all(|p| !matches!(p, Packet::Disconnect(_))),
            "[{}] the server answered a DISCONNECT with a DISCONNECT: {got:?}",
            self.name
        );
    }

    /// Closes the socket without DISCONNECT (an abnormal disconnect).
    pub fn drop_abruptly(self) {
        drop(self);
    }

    /// Sends PINGREQ and waits for PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        self.wait_for("PINGRESP", WAIT, |p| match p {
            Packet::PingResp => Some(()),
            _ => None,
        })
        .await;
    }

    /// The local address of the socket.
    #[allow(dead_code)]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }
}
