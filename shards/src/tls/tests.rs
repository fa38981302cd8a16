//! Tests of the TLS listener pieces: configuration errors and key formats,
//! and [`TlsStream`] against a rustls client over real sockets (echo, split,
//! blocked writer, handoff to another thread, mutual TLS, bad handshakes).

use std::cell::Cell;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use glommio::{spawn_local, timer, LocalExecutor, LocalExecutorBuilder, Placement};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, SupportedProtocolVersion};

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::{RootCertStore, ServerConfig};

use super::config::TlsError;
use super::{server_config, TlsStream};

/// A 2048-bit RSA key for tests only (ring cannot generate RSA keys).
const RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDSPJGYxROK7SXj
vk8bPVQ8UH5XmXJ1RPgOUybAtKnO8xTcPFE/7mWZuqLZLTsnzKJo72+LyezYlTcC
lwF2bkJv0crHzl0+MO2xVvSHJPhQRCSQsSaCXQcOM3W+jtdazc0HKKstbRCK8ZWf
yy7zB35uRxQ7FmvCkoNzyK33OgJbdEwPlinXmLEAylQdII13HP9Bda05UrBq/VDQ
kZusguWrpFn+12ZO1fB3hMxSQvbBJ7yqouISNOmKYMfP80RhZr4bBEtS7habV825
WDBxMKArBCkl8sEHv2SvozKfjBCLOw/9knQdobR7bX2ylmJritGoNNS8S2HFelFc
wlNEJ/ypAgMBAAECggEACzwQXb++UnC80xry4uuX6kc05ofSgtYbhAxz0t10q5Si
2z1f7CYts2rdU/S4/LX7QddLDdx4YH83etcd+A8JVCy7r4oQF92JKNkS5SaXxxZK
dpmji1je99Ej1s85o+Zr2+4+Q4WuBMwcfkxfJxPnRjZcgZHU/VyoqKcjNhsZUCYM
iXcYo3HFdGZehixCnhrqmr3NYF+40jeNqQXK6LD/Ou/HtFLEb85sSFEI/n3/qdHk
IEu+1Vd08hZkX/++gMjzhhAuhHzCdvAW+rwtOPKaQBKYCdGiFkOU83bOXUPG5g4F
KTzETO97RfyItC+rcdeOMKKqEY9MpSnCyUilKSP6rwKBgQDr5Q4+//df+rsWL07B
EYAsDuqpjm/8lFC6dRVm772J9Kr3+BrFAjGEYiZpL7zNxMY3b8AKGPa8Xl6sMrM3
Oq9iOf0CVqAY0HqIum0sJ9Cii3iNbnKJGv4ekprZQG+TZ4BZu/eqV3TTj1oS5NqC
wAbRiV1H08zsxNjJxoJkkKeN8wKBgQDkJ668ngYNaHY3tm1jyrp8v3tmPSvJLOPI
9bAiefE12uOBFdJFtwJxj3q59exA/9+bBhg7ZGUaswgIEZBsCr9giCav0lBudT0b
RRSQS8aOekoE+Lc7NaUza+LZs42VT4VPf66VKmVX6kyNrfIXI1Wz9pNrtJq02yBo
CsKZNG+F8wKBgET7ld/sgI3Lx7wkF3a0RHQd5Jey9KK7SKROKvUQNLBMIVckccec
7ZgWD7+A20idO43omxMY28aYHj1jEi+bdMBXztpJNMYs6ThktBpOhl+SQ62wV8Qq
ZZfRLYFMq5RClzEmm7Vvn9ViPWf7Dr9fol7SOboQgQPYSMEw0N7Rwn3rAoGARjxN
F3WSKWiCFA6NyE2tcR/FTikApLK0ALZZnZNqhQi4RpHAJIP9NZZU0pB5RV0/qcqL
hSUX1stMaqd1jT0VwxLGzhNxfT+MKyvt86nQGyZcSQGD7q9KBvVsZVZX/KH5SQrm
ZLcjcZgILwlgYG0ZQghjQ6Hailh2tnCxjVZOCq8CgYEAyfdWIW/at3An2f2GJ4VA
0pk/VZuZSsD3gVx8DwJoQCF9IMl5cnd5WRuzUGHv8ikGSUBppKhzyZ8YcyvXdctf
qv+faFMRF8QiyIYDeQ3c2LcSnhgm+ChtxG+X4fN9RrWV+f9jt9O24AA72tz1E+Pl
C5a+5lHElJembu1zAecocEs=
-----END PRIVATE KEY-----
";

/// The client certificate's subject CN.
const CLIENT_CN: &str = "sensor-7";

/// A CA, a server certificate for `localhost` (ECDSA P-256, PKCS#8 key)
/// and a client certificate, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
    ca_file: PathBuf,
    server_key: KeyPair,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_cert: CertificateDer<'static>,
    client_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "vmqtt test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(params, ca_key);
        let ca_file = write(&dir, "ca.pem", &ca.pem());

        let server_key = KeyPair::generate().expect("server key");
        let server = server_cert(&issuer, &server_key);
        let cert_file = write(&dir, "server.pem", &server.pem());
        let key_file = write(&dir, "server.key", &server_key.serialize_pem());

        let (client, client_key) = client_cert(&issuer, CLIENT_CN);
        Pki {
            dir,
            issuer,
            ca: ca.der().clone(),
            ca_file,
            server_key,
            cert_file,
            key_file,
            client_cert: client.der().clone(),
            client_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        write(&self.dir, name, contents)
    }

    /// A client configuration trusting the CA, with `auth` as its
    /// certificate and key.
    fn client(
        &self,
        auth: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA as root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let config = match auth {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    fn client_auth(&self) -> Option<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        Some((self.client_cert.clone(), self.client_key.clone_key()))
    }
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("writing a test file");
    path
}

fn server_cert(issuer: &Issuer<'static, KeyPair>, key: &KeyPair) -> Certificate {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.signed_by(key, issuer).expect("server certificate")
}

fn client_cert(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
) -> (Certificate, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("client certificate");
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert, der)
}

/// The private key inside a PKCS#8 `PrivateKeyInfo`: PKCS#1 for RSA,
/// SEC1 for EC.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    fn item(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, 2 + n)
        };
        (b[0], &b[header..header + len], &b[header + len..])
    }
    let (_, info, _) = item(pkcs8);
    let (_, _, rest) = item(info); // version
    let (_, _, rest) = item(rest); // algorithm
    let (tag, key, _) = item(rest);
    assert_eq!(tag, 0x04, "privateKey OCTET STRING");
    key.to_vec()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = Vec::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            text.push(if i <= chunk.len() {
                B64[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in text.chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Deterministic test bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .make()
        .expect("glommio executor")
}

/// Runs `server` on a glommio executor on this thread with a loopback
/// listener, and `client` with the listener's address on a std thread.
fn with_server<S, F, C, R>(server: S, client: C) -> (F::Output, R)
where
    S: FnOnce(TcpListener) -> F,
    F: Future,
    C: FnOnce(SocketAddr) -> R + Send + 'static,
    R: Send + 'static,
{
    let (out, client) = executor().run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("listener address");
        let client = thread::spawn(move || client(addr));
        (
            within(Duration::from_secs(30), server(listener)).await,
            client,
        )
    });
    (out, client.join().expect("client thread"))
}

async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(fut.await) }, async {
        timer::sleep(limit).await;
        None
    })
    .await
    .expect("server side timed out")
}

/// How the server ended the connection, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Open,
    /// close_notify.
    Clean,
    /// TCP EOF without close_notify.
    Unclean,
}

fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> (ClientConnection, StdTcpStream) {
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let sock = StdTcpStream::connect(addr).expect("connect");
    sock.set_nonblocking(true).expect("non-blocking");
    (conn, sock)
}

/// Drives a client connection full duplex (the handshake included):
/// sends `send`, reads until `expect` bytes came back and, with
/// `until_close`, until the server closed. Errors on a TLS error or when
/// the server closes before `expect` bytes.
fn pump(
    conn: &mut ClientConnection,
    sock: &mut StdTcpStream,
    send: &[u8],
    expect: usize,
    until_close: bool,
) -> io::Result<(Vec<u8>, End)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sent, mut got, mut end) = (0, Vec::new(), End::Open);
    let mut buf = vec![0; 64 << 10];
    loop {
        assert!(Instant::now() < deadline, "client timed out");
        let mut progress = false;
        if sent < send.len() {
            let n = conn.writer().write(&send[sent..])?;
            sent += n;
            progress |= n > 0;
        }
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if end == End::Open {
            match conn.read_tls(sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            conn.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => {
                        end = End::Clean;
                        break;
                    }
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        end = End::Unclean;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let sent_all = sent == send.len() && !conn.wants_write() && !conn.is_handshaking();
        if sent_all && got.len() >= expect && (!until_close || end != End::Open) {
            return Ok((got, end));
        }
        if end != End::Open && got.len() < expect {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("server closed ({end:?}) after {} bytes", got.len()),
            ));
        }
        if !progress {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sends close_notify and waits for the server's.
fn close(conn: &mut ClientConnection, sock: &mut StdTcpStream) -> End {
    conn.send_close_notify();
    let (_, end) = pump(conn, sock, &[], 0, true).expect("closing");
    end
}

/// Server side of a connection that answers "ping" with "pong".
async fn pong(tls: &mut TlsStream) {
    let mut ping = [0; 4];
    tls.read_exact(&mut ping).await.expect("ping");
    assert_eq!(&ping, b"ping");
    tls.write_all(b"pong").await.expect("pong");
    tls.flush().await.expect("flush");
}

fn ping(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<()> {
    let (mut conn, mut sock) = connect(addr, config);
    let (got, _) = pump(&mut conn, &mut sock, b"ping", 4, false)?;
    assert_eq!(got, b"pong");
    Ok(())
}

async fn accept(listener: &TcpListener, config: &Arc<ServerConfig>) -> TlsStream {
    let tcp = listener.accept().await.expect("accept");
    TlsStream::new(tcp, config.clone()).expect("server connection")
}

#[test]
fn echo_one_mebibyte_tls12_and_tls13() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let pki = Pki::new();
        let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
        let client = pki.client(None, &[version]);
        let data = pattern(1 << 20, 1);
        let sent = data.clone();
        let ((echoed, negotiated, end), (got, client_end)) = with_server(
            |listener| async move {
                let mut tls = accept(&listener, &config).await;
                tls.handshake().await.expect("handshake");
                let negotiated = tls.connection().protocol_version();
                let mut buf = vec![0; 16 << 10];
                let mut echoed = 0;
                let end = loop {
                    match tls.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            tls.write_all(&buf[..n]).await.expect("echo");
                            echoed += n;
                        }
                        Err(e) => break Err(e.kind()),
                    }
                };
                tls.close().await.expect("close");
                (echoed, negotiated, end)
            },
            move |addr| {
                let (mut conn, mut sock) = connect(addr, client);
                let (got, _) = pump(&mut conn, &mut sock, &sent, sent.len(), false).expect("echo");
                (got, close(&mut conn, &mut sock))
            },
        );
        assert_eq!(negotiated, Some(version.version));
        assert_eq!(echoed, data.len());
        assert!(got == data, "echoed bytes differ");
        // The client's close_notify is a clean EOF; the server's close
        // sends close_notify.
        assert_eq!(end, Ok(()));
        assert_eq!(client_end, End::Clean);
    }
}

#[test]
fn split_reader_and_writer_run_concurrently() {
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let client = pki.client(None, rustls::DEFAULT_VERSIONS);
    let up = pattern(1 << 20, 2);
    let down = pattern(1 << 20, 3);
    let (up_sent, down_sent) = (up.clone(), down.clone());
    let ((got_up, end), (got_down, client_end)) = with_server(
        |listener| async move {
            let mut tls = accept(&listener, &config).await;
            tls.handshake().await.expect("handshake");
            let (mut rd, mut wr) = futures_lite::io::split(tls);
            let writer = spawn_local(async move {
                for chunk in down_sent.chunks(7000) {
                    wr.write_all(chunk).await?;
                }
                wr.close().await
            });
            let mut got = Vec::new();
            let end = rd.read_to_end(&mut got).await.map_err(|e| e.kind());
            writer.await.expect("writer task");
            (got, end)
        },
        move |addr| {
            let (mut conn, mut sock) = connect(addr, client);
            let (got, end) =
                pump(&mut conn, &mut sock, &up_sent, up_sent.len(), true).expect("duplex");
            conn.send_close_notify();
            pump(&mut conn, &mut sock, &[], 0, false).expect("close_notify");
            (got, end)
        },
    );
    assert!(got_up == up, "bytes read by the reader task differ");
    assert!(got_down == down, "bytes written by the writer task differ");
    assert_eq!(end, Ok(got_up.len()));
    assert_eq!(client_end, End::Clean);
}

#[test]
fn blocked_writer_does_not_block_the_reader() {
    const UP: usize = 256 << 10;
    const DOWN: usize = 8 << 20;
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let client = pki.client(None, &[&rustls::version::TLS13]);
    let up = pattern(UP, 5);
    let down = pattern(DOWN, 6);
    let (up_sent, down_sent) = (up.clone(), down.clone());
    let ((got_up, writer_blocked, end), (got_down, client_end)) = with_server(
        |listener| async move {
            let mut tls = accept(&listener, &config).await;
            set_buffer(tls.as_raw_fd(), libc::SO_SNDBUF);
            tls.handshake().await.expect("handshake");
            let (mut rd, mut wr) = futures_lite::io::split(tls);
            let done = Rc::new(Cell::new(false));
            let writer_done = done.clone();
            let writer = spawn_local(async move {
                for chunk in down_sent.chunks(16 << 10) {
                    wr.write_all(chunk).await?;
                }
                wr.close().await?;
                writer_done.set(true);
                io::Result::Ok(())
            });
            // The client reads nothing until it has sent all of this (and
            // a key update that the server must answer behind the blocked
            // output).
            let mut got = vec![0; UP];
            rd.read_exact(&mut got)
                .await
                .expect("read while writes block");
            let writer_blocked = !done.get();
            let end = rd.read(&mut [0; 16]).await.map_err(|e| e.kind());
            writer.await.expect("writer task");
            (got, writer_blocked, end)
        },
        move |addr| {
            let (mut conn, mut sock) = connect(addr, client);
            set_buffer(sock.as_raw_fd(), libc::SO_RCVBUF);
            pump(&mut conn, &mut sock, &[], 0, false).expect("handshake");
            conn.refresh_traffic_keys().expect("key update");
            // Send without reading.
            let mut sent = 0;
            while sent < up_sent.len() || conn.wants_write() {
                sent += conn.writer().write(&up_sent[sent..]).expect("plaintext");
                match conn.write_tls(&mut sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("client write: {e}"),
                }
            }
            thread::sleep(Duration::from_millis(200));
            let (got, end) = pump(&mut conn, &mut sock, &[], DOWN, true).expect("read");
            conn.send_close_notify();
            pump(&mut conn, &mut sock, &[], 0, false).expect("close_notify");
            (got, end)
        },
    );
    assert!(
        got_up == up,
        "bytes read while the writer was blocked differ"
    );
    assert!(
        writer_blocked,
        "the writer never blocked: the test proves nothing"
    );
    assert_eq!(end, Ok(0));
    assert!(
        got_down == down,
        "bytes written by the blocked writer differ"
    );
    assert_eq!(client_end, End::Clean);
}

/// A small socket buffer, so that writes block early.
fn set_buffer(fd: RawFd, option: libc::c_int) {
    let size: libc::c_int = 16 << 10;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of
    // the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

#[test]
fn handoff_to_another_thread_keeps_buffered_plaintext() {
    fn assert_send<T: Send>() {}
    assert_send::<Box<ServerConnection>>();
    assert_send::<Arc<ServerConfig>>();

    const LEN: usize = 200_000;
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let client = pki.client(None, rustls::DEFAULT_VERSIONS);
    let data = pattern(LEN, 4);
    let sent = data.clone();

    let (tx, rx) = mpsc::channel::<(OwnedFd, Box<ServerConnection>, Vec<u8>)>();
    // The "home shard": another thread, another executor.
    let home = thread::spawn(move || {
        let (fd, conn, head) = rx.recv().expect("handoff");
        executor().run(async move {
            // SAFETY: `fd` is an open socket that nothing else owns;
            // ownership moves into the stream.
            let tcp = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
            let mut tls = TlsStream::from_parts(tcp, conn);
            let mut got = head;
            let mut buf = vec![0; 4096];
            while got.len() < LEN {
                let n = within(Duration::from_secs(30), tls.read(&mut buf))
                    .await
                    .expect("read after the handoff");
                assert_ne!(n, 0, "EOF after the handoff");
                got.extend_from_slice(&buf[..n]);
            }
            tls.write_all(&(got.len() as u64).to_be_bytes())
                .await
                .expect("reply");
            tls.close().await.expect("close");
            got
        })
    });

    let (buffered, (reply, end)) = with_server(
        |listener| async move {
            let mut tls = accept(&listener, &config).await;
            tls.handshake().await.expect("handshake");
            // Let the client's bytes arrive: one record gets decrypted by
            // the read below, the rest waits in rustls and the socket.
            timer::sleep(Duration::from_millis(100)).await;
            let mut head = vec![0; 10];
            let n = tls.read(&mut head).await.expect("read");
            head.truncate(n);
            let (tcp, mut conn) = tls.into_parts();
            let buffered = conn
                .process_new_packets()
                .expect("TLS state")
                .plaintext_bytes_to_read();
            // SAFETY: `tcp` is an open socket; dup returns a new
            // descriptor (checked) that only the handoff owns.
            let dup = unsafe { libc::dup(tcp.as_raw_fd()) };
            assert!(dup >= 0, "dup: {}", io::Error::last_os_error());
            drop(tcp);
            // SAFETY: `dup` is a fresh descriptor owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            tx.send((fd, conn, head)).expect("handoff");
            buffered
        },
        move |addr| {
            let (mut conn, mut sock) = connect(addr, client);
            pump(&mut conn, &mut sock, &sent, 8, true).expect("client")
        },
    );
    let got = home.join().expect("home thread");
    assert!(buffered > 0, "no plaintext was buffered at the handoff");
    assert!(got == data, "bytes differ after the handoff");
    assert_eq!(reply, (LEN as u64).to_be_bytes());
    assert_eq!(end, End::Clean);
}

#[test]
fn mutual_tls_gives_the_common_name() {
    let pki = Pki::new();
    let (cert, key, ca) = (&pki.cert_file, &pki.key_file, Some(&*pki.ca_file));
    let required = server_config(cert, key, ca, true).expect("config");
    let optional = server_config(cert, key, ca, false).expect("config");
    let clients = [
        pki.client(pki.client_auth(), &[&rustls::version::TLS13]),
        pki.client(None, &[&rustls::version::TLS13]),
        pki.client(pki.client_auth(), &[&rustls::version::TLS12]),
    ];
    let (names, ()) = with_server(
        |listener| async move {
            let mut names = Vec::new();
            for config in [required, optional.clone(), optional] {
                let mut tls = accept(&listener, &config).await;
                tls.handshake().await.expect("handshake");
                names.push(tls.peer_common_name());
                pong(&mut tls).await;
            }
            names
        },
        move |addr| {
            for client in clients {
                ping(addr, client).expect("ping");
            }
        },
    );
    let cn = Some(CLIENT_CN.to_string());
    assert_eq!(names, [cn.clone(), None, cn]);
}

#[test]
fn required_client_certificate_missing_or_untrusted() {
    let pki = Pki::new();
    let config = server_config(
        &pki.cert_file,
        &pki.key_file,
        Some(pki.ca_file.as_path()),
        true,
    )
    .expect("config");
    // A certificate from a CA the server does not trust.
    let rogue = Pki::new();
    let clients = [
        pki.client(None, &[&rustls::version::TLS13]),
        pki.client(None, &[&rustls::version::TLS12]),
        pki.client(rogue.client_auth(), &[&rustls::version::TLS13]),
    ];
    let (errors, client_errors) = with_server(
        |listener| async move {
            let mut errors = Vec::new();
            for _ in 0..3 {
                let mut tls = accept(&listener, &config).await;
                let e = tls.handshake().await.expect_err("handshake succeeded");
                // Later calls fail too, without panicking.
                let mut buf = [0; 8];
                assert!(tls.read(&mut buf).await.is_err());
                assert!(tls.write_all(b"x").await.is_err());
                errors.push(e);
            }
            errors
        },
        move |addr| {
            clients
                .into_iter()
                .map(|c| ping(addr, c).is_err())
                .collect::<Vec<_>>()
        },
    );
    for e in &errors {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
    eprintln!("server errors: {errors:?}");
    assert_eq!(client_errors, [true, true, true]);
}

#[test]
fn garbage_instead_of_a_client_hello() {
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let (error, reply) = with_server(
        |listener| async move {
            let mut tls = accept(&listener, &config).await;
            tls.handshake().await.expect_err("handshake succeeded")
        },
        |addr| {
            let mut sock = StdTcpStream::connect(addr).expect("connect");
            sock.write_all(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n")
                .expect("write");
            let mut reply = Vec::new();
            let _ = sock.read_to_end(&mut reply);
            reply
        },
    );
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    // The server answered with a TLS alert record, then closed.
    assert_eq!(reply.first(), Some(&0x15), "reply {reply:?}");
}

#[test]
fn stalled_handshake_does_not_delay_another() {
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let client = pki.client(None, rustls::DEFAULT_VERSIONS);
    let ((b_handshake, b_before_a_gave_up, a_timed_out), ()) = with_server(
        |listener| async move {
            let mut stalled = accept(&listener, &config).await;
            let a = spawn_local(async move {
                let timed_out = futures_lite::future::or(
                    async {
                        let _ = stalled.handshake().await;
                        false
                    },
                    async {
                        timer::sleep(Duration::from_secs(1)).await;
                        true
                    },
                )
                .await;
                (timed_out, Instant::now())
            });
            let mut tls = accept(&listener, &config).await;
            let start = Instant::now();
            tls.handshake().await.expect("handshake");
            let b_handshake = start.elapsed();
            pong(&mut tls).await;
            let b_done = Instant::now();
            let (a_timed_out, a_end) = a.await;
            (b_handshake, b_done < a_end, a_timed_out)
        },
        move |addr| {
            // Client A: the start of a ClientHello record, then nothing.
            let mut a = StdTcpStream::connect(addr).expect("connect");
            a.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .expect("write");
            ping(addr, client).expect("client B");
            // Until the server gives up on A.
            let _ = a.read_to_end(&mut Vec::new());
        },
    );
    assert!(a_timed_out, "the stalled handshake ended");
    assert!(b_before_a_gave_up);
    assert!(
        b_handshake < Duration::from_millis(500),
        "handshake took {b_handshake:?}"
    );
}

#[test]
fn tcp_eof_without_close_notify_is_unexpected_eof() {
    let pki = Pki::new();
    let config = server_config(&pki.cert_file, &pki.key_file, None, false).expect("config");
    let client = pki.client(None, rustls::DEFAULT_VERSIONS);
    let ((got, end), ()) = with_server(
        |listener| async move {
            let mut tls = accept(&listener, &config).await;
            tls.handshake().await.expect("handshake");
            let mut got = Vec::new();
            let mut buf = [0; 64];
            let end = loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e.kind()),
                }
            };
            (got, end)
        },
        move |addr| {
            let (mut conn, mut sock) = connect(addr, client);
            pump(&mut conn, &mut sock, b"bye", 0, false).expect("client");
            sock.shutdown(Shutdown::Write).expect("shutdown");
            sock.set_nonblocking(false).expect("blocking");
            let _ = sock.read_to_end(&mut Vec::new());
        },
    );
    // Everything decrypted before the EOF is delivered first.
    assert_eq!(got, b"bye");
    assert_eq!(end, Err(io::ErrorKind::UnexpectedEof));
}

#[test]
fn key_formats() {
    let pki = Pki::new();
    let ec_sec1 = pem_block(
        "EC PRIVATE KEY",
        &pkcs8_inner(&pki.server_key.serialize_der()),
    );
    let rsa_key =
        KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8, &rcgen::PKCS_RSA_SHA256).expect("RSA");
    let rsa_cert = pki.write("rsa.pem", &server_cert(&pki.issuer, &rsa_key).pem());
    let rsa_pkcs1 = pem_block("RSA PRIVATE KEY", &pkcs8_inner(&rsa_key.serialize_der()));
    let files = [
        (pki.cert_file.clone(), pki.key_file.clone()),
        (pki.cert_file.clone(), pki.write("ec-sec1.key", &ec_sec1)),
        (rsa_cert.clone(), pki.write("rsa-pkcs8.key", RSA_PKCS8)),
        (rsa_cert, pki.write("rsa-pkcs1.key", &rsa_pkcs1)),
    ];
    let configs = files
        .iter()
        .map(|(cert, key)| {
            server_config(cert, key, None, false)
                .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
        })
        .collect::<Vec<_>>();
    let client = pki.client(None, rustls::DEFAULT_VERSIONS);
    let n = configs.len();
    let ((), ()) = with_server(
        |listener| async move {
            for config in configs {
                let mut tls = accept(&listener, &config).await;
                tls.handshake().await.expect("handshake");
                pong(&mut tls).await;
            }
        },
        move |addr| {
            for _ in 0..n {
                ping(addr, client.clone()).expect("ping");
            }
        },
    );
}

#[test]
fn server_config_errors_name_the_file() {
    let pki = Pki::new();
    let other_key = pki.write(
        "other.key",
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    let missing = pki.path("missing.pem");
    let garbage_cert = pki.write("garbage-cert.pem", &pem_block("CERTIFICATE", b"garbage"));
    let garbage_key = pki.write("garbage.key", &pem_block("PRIVATE KEY", b"garbage"));
    let bad_pem = pki.write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let (cert, key, ca) = (&pki.cert_file, &pki.key_file, &pki.ca_file);
    // What was built, the file the message names, a phrase of it.
    type Case<'a> = (Result<Arc<ServerConfig>, TlsError>, &'a Path, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            server_config(&missing, key, None, false),
            missing.as_path(),
            "cannot read certificate file",
        ),
        (
            server_config(cert, &missing, None, false),
            missing.as_path(),
            "cannot read key file",
        ),
        (
            server_config(key, key, None, false),
            key.as_path(),
            "no certificate in it",
        ),
        (
            server_config(cert, cert, None, false),
            cert.as_path(),
            "no private key in it",
        ),
        (
            server_config(&bad_pem, key, None, false),
            bad_pem.as_path(),
            "malformed PEM",
        ),
        (
            server_config(&garbage_cert, key, None, false),
            garbage_cert.as_path(),
            "invalid certificate",
        ),
        (
            server_config(cert, &garbage_key, None, false),
            garbage_key.as_path(),
            "unusable private key",
        ),
        (
            server_config(cert, &other_key, None, false),
            other_key.as_path(),
            "does not match the certificate",
        ),
        (
            server_config(cert, key, Some(missing.as_path()), false),
            missing.as_path(),
            "cannot read client CA file",
        ),
        (
            server_config(cert, key, Some(key.as_path()), true),
            key.as_path(),
            "client CA file",
        ),
        (
            server_config(cert, key, Some(garbage_cert.as_path()), true),
            garbage_cert.as_path(),
            "client CA file",
        ),
        (
            server_config(cert, key, None, true),
            Path::new(""),
            "no client CA file is set",
        ),
    ];
    for (result, path, phrase) in cases {
        let e = result.expect_err(phrase);
        let message = e.to_string();
        eprintln!("{message}");
        assert!(message.contains(phrase), "{message:?} lacks {phrase:?}");
        assert!(
            message.contains(&*path.to_string_lossy()),
            "{message:?} lacks the path"
        );
    }
    // The key mismatch names both files.
    let e = server_config(cert, &other_key, None, false).expect_err("mismatch");
    assert!(e.to_string().contains(&*cert.to_string_lossy()));
    assert!(server_config(cert, key, Some(ca.as_path()), true).is_ok());
}
