//! Security end to end, with the real binary: authentication (password file,
//! anonymous policy) and the CONNACK codes it gives, the ACL on publishes,
//! subscriptions and wills (raw sockets and mosquitto clients), SIGHUP
//! reloading the password and ACL files, TLS (passwords over TLS, mutual TLS
//! with the certificate's CN as the user name, refusals, sessions handed
//! between cores, a stalled handshake beside a working one, a broken TLS
//! configuration), and the `vmqtt_auth_refused_total` /
//! `vmqtt_acl_denied_total` metrics.
//!
//! Certificates are made with the `openssl` CLI, with the commands of
//! `scripts/security-example.sh`, and password files with
//! `vmqtt-shard passwd FILE USER` (password on stdin), in a directory of the
//! test's own ([`Work`]: the broker's directory exists only once it runs).
//! Rust-side TLS clients are [`Raw`] clients through [`TlsProxy`], a local
//! proxy that carries each plain connection over a new rustls client
//! session, so every raw-packet helper works over TLS too.
//!
//! vmqtt only: with `VMQTT_E2E_BROKER=mosquitto` every test prints SKIP.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vmqtt::codec::{ConnAck, SubAck, Subscribe};

use crate::common::broker::check_config;
use crate::common::http::{free_port, labelled, scrape};
use crate::common::process::{runs, sub_messages, wait_exit};
use crate::common::raw::filter;
use crate::common::shard::id_on_shard;
use crate::common::*;

/// The broker binary (also `vmqtt-shard passwd` and `check-config`).
const BIN: &str = env!("CARGO_BIN_EXE_vmqtt-shard");

/// `0x87` Not authorized (v5 CONNACK, PUBACK, PUBREC, SUBACK).
const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);

// ---------------------------------------------------------------------------
// Files: the test's directory, certificates, password files, configuration.

/// A directory of the test's own for certificates, password and ACL files.
/// Removed at the end, unless the test fails or `VMQTT_E2E_KEEP` is set.
#[derive(Debug)]
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(test: &str) -> Work {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmqtt-e2e-sec-{}-{}-{test}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test's directory");
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `text` to `name` (replacing it) and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VMQTT_E2E_KEEP").is_some() {
            eprintln!("(test files kept in {})", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A path as a TOML string.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Runs `openssl args` in `dir`; fails the test if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes`, as in the script.
const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// Certificates made as `scripts/security-example.sh` makes them: a CA, the
/// broker's certificate (localhost, 127.0.0.1) and a device's (CN=device-1)
/// signed by it; and a second CA with a certificate of the same CN
/// (`rogue`), which the broker must not trust.
#[derive(Debug)]
struct Pki {
    ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    device_crt: PathBuf,
    device_key: PathBuf,
    rogue_crt: PathBuf,
    rogue_key: PathBuf,
}

impl Pki {
    fn new(w: &Work) -> Pki {
        let d = &w.dir;
        let ca = |name: &str, cn: &str| {
            let subj = format!("/CN={cn}");
            let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
            let mut args = vec!["req", "-x509"];
            args.extend(EC);
            args.extend([
                "-days", "365", "-subj", &subj, "-keyout", &key, "-out", &crt,
            ]);
            openssl(d, &args);
        };
        let signed = |name: &str, cn: &str, ca: &str, ext: Option<&str>| {
            let subj = format!("/CN={cn}");
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut args = vec!["req"];
            args.extend(EC);
            args.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
            openssl(d, &args);
            let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
            let mut args = vec![
                "x509", "-req", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key,
            ];
            args.extend(["-CAcreateserial", "-days", "365", "-out", &crt]);
            if let Some(ext) = ext {
                args.extend(["-extfile", ext]);
            }
            openssl(d, &args);
        };
        ca("ca", "Example MQTT CA");
        w.write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
        signed("server", "localhost", "ca", Some("server.ext"));
        // An extension makes the client certificates X.509 v3: rustls
        // (webpki) refuses v1 ones, which `x509 -req` makes without one.
        w.write("client.ext", "extendedKeyUsage=clientAuth\n");
        signed("device-1", "device-1", "ca", Some("client.ext"));
        ca("rogue-ca", "Another CA");
        signed("rogue", "device-1", "rogue-ca", Some("client.ext"));
        Pki {
            ca: w.path("ca.crt"),
            server_crt: w.path("server.crt"),
            server_key: w.path("server.key"),
            device_crt: w.path("device-1.crt"),
            device_key: w.path("device-1.key"),
            rogue_crt: w.path("rogue.crt"),
            rogue_key: w.path("rogue.key"),
        }
    }
}

/// `vmqtt-shard passwd FILE USER` with the password on stdin (or
/// `--delete`), as an administrator runs it.
fn passwd(file: &Path, user: &str, password: Option<&str>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("passwd").arg(file).arg(user);
    if password.is_none() {
        cmd.arg("--delete");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmqtt-shard passwd");
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(p) = password {
            stdin
                .write_all(format!("{p}\n").as_bytes())
                .expect("write the password");
        }
    }
    let out = child.wait_with_output().expect("vmqtt-shard passwd");
    assert!(
        out.status.success(),
        "vmqtt-shard passwd {} {user}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A password file with `users` (name, password).
fn password_file(w: &Work, users: &[(&str, &str)]) -> PathBuf {
    let file = w.path("passwd");
    for (user, password) in users {
        passwd(&file, user, Some(password));
    }
    file
}

/// An `[auth]` section.
fn auth_toml(anonymous: Option<&str>, passwords: Option<&Path>, acl: Option<&Path>) -> String {
    let mut s = String::from("[auth]\n");
    if let Some(a) = anonymous {
        s.push_str(&format!("anonymous = {a:?}\n"));
    }
    if let Some(p) = passwords {
        s.push_str(&format!("password_file = {}\n", toml_path(p)));
    }
    if let Some(p) = acl {
        s.push_str(&format!("acl_file = {}\n", toml_path(p)));
    }
    s
}

/// What a `[tls]` section asks of client certificates.
#[derive(Debug, Clone, Copy, Default)]
struct ClientCerts {
    /// `client_ca_file` = the test CA.
    ca: bool,
    /// `require_client_cert`.
    require: bool,
    /// `use_identity_as_username`.
    identity: bool,
}

/// A `[tls]` section listening on 127.0.0.1:`port`.
fn tls_toml(port: u16, pki: &Pki, certs: ClientCerts) -> String {
    let mut s = format!(
        "[tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert_file = {}\nkey_file = {}\n",
        toml_path(&pki.server_crt),
        toml_path(&pki.server_key)
    );
    if certs.ca {
        s.push_str(&format!("client_ca_file = {}\n", toml_path(&pki.ca)));
    }
    s.push_str(&format!(
        "require_client_cert = {}\nuse_identity_as_username = {}\n",
        certs.require, certs.identity
    ));
    s
}

// ---------------------------------------------------------------------------
// MQTT helpers.

/// A CONNECT with clean start and, if given, a user name and password.
fn connect_as(
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Connect {
    let mut c = connect_packet(version, id);
    c.username = user.map(Into::into);
    c.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// Sends `c` on a new connection to `port` and expects a refusal: returns
/// the CONNACK's code as sent on the wire (MQTT 3: the return code, 0x04 or
/// 0x05; v5: the reason code), after asserting that the CONNACK is all the
/// server sent and that it closed the connection.
async fn refused(port: u16, c: Connect, what: &str) -> u8 {
    let mut raw = Raw::tcp(port, what).await;
    raw.version = c.protocol;
    raw.send(&Packet::Connect(Box::new(c))).await;
    let bytes = raw.read_bytes_until_closed(WAIT).await;
    assert!(
        bytes.len() >= 4 && bytes[0] == 0x20 && bytes.len() == 2 + usize::from(bytes[1]),
        "[{what}] expected one CONNACK and a close, got {bytes:02x?}"
    );
    bytes[3]
}

/// Connects with `c` and asserts CONNACK 0x00.
async fn accepted(port: u16, c: Connect) -> Raw {
    Raw::connect_ok(port, c).await.0
}

/// Publishes at `qos` and returns the PUBACK's or PUBREC's reason (`None`
/// for QoS 0).
async fn publish_rc(c: &mut Raw, t: &str, payload: &str, qos: QoS) -> Option<ReasonCode> {
    let p = publish(t, payload.as_bytes().to_vec(), qos, false);
    c.publish(p).await.map(|a| a.reason)
}

/// One SUBSCRIBE with several filters (maximum QoS 1 each); the SUBACK's
/// codes.
async fn subscribe_many(c: &mut Raw, filters: &[&str]) -> Vec<u8> {
    let id = c.next_packet_id();
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: id,
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|f| (filter(f), SubscriptionOptions::qos(QoS::AtLeastOnce)))
            .collect(),
    }))
    .await;
    let ack: SubAck = c
        .wait_for(&format!("SUBACK for {filters:?}"), WAIT, |p| match p {
            Packet::SubAck(a) if a.packet_id == id => Some(a.clone()),
            _ => None,
        })
        .await;
    ack.reasons.iter().map(|r| r.0).collect()
}

/// The code of a one-filter SUBSCRIBE.
async fn subscribe_rc(c: &mut Raw, f: &str) -> u8 {
    subscribe_many(c, &[f]).await[0]
}

// ---------------------------------------------------------------------------
// Metrics.

/// Polls `/metrics` (shards publish about once a second) until every
/// `(name, label, value, want)` sums to `want` over the shards; fails at
/// once if one goes past it, and after a deadline otherwise.
async fn expect_counters(http: u16, want: &[(&str, &str, &str, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = scrape(http);
        let mut all = true;
        for &(name, label, value, n) in want {
            let (got, shards) = labelled(&body, name, label, value);
            assert_eq!(
                shards, SHARDS,
                "{name}{{{label}=\"{value}\"}}: one series per shard expected:\n{body}"
            );
            assert!(
                got <= n,
                "{name}{{{label}=\"{value}\"}} = {got}, more than the {n} this test caused:\n{body}"
            );
            all &= got == n;
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the counters never reached {want:?}:\n{body}"
        );
        sleep_ms(200).await;
    }
}

// ---------------------------------------------------------------------------
// A TLS client for `Raw`: a local proxy that speaks TLS to the broker.

/// Reads every PEM certificate of `path`.
fn certs_of(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("PEM of {}: {e:?}", path.display()))
}

/// A rustls client configuration trusting `ca`, with a client certificate
/// (certificate file, key file) if given.
fn client_tls(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(ca) {
        roots.add(c).expect("a usable CA certificate");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((crt, key)) => {
            let pem = fs::read(key).expect("read the client key");
            let key = PrivateKeyDer::from_pem_slice(&pem).expect("a client key");
            builder
                .with_client_auth_cert(certs_of(crt), key)
                .expect("a client certificate")
        }
    };
    Arc::new(config)
}

/// A local proxy: each plain connection to [`TlsProxy::port`] is carried
/// over a new TLS session (`config`, server name `localhost`) to the
/// broker's TLS listener, so a [`Raw`] client connected to it speaks MQTT
/// over TLS. A TLS failure closes the plain side.
#[derive(Debug)]
struct TlsProxy {
    port: u16,
    task: JoinHandle<()>,
}

impl TlsProxy {
    async fn start(tls_port: u16, config: Arc<ClientConfig>) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let task = tokio::spawn(async move {
            while let Ok((plain, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    let Ok(tcp) = TcpStream::connect(("127.0.0.1", tls_port)).await else {
                        return;
                    };
                    let name = ServerName::try_from("localhost").expect("a server name");
                    let tls = ClientConnection::new(config, name).expect("a TLS client session");
                    relay(plain, tcp, tls).await;
                });
            }
        });
        TlsProxy { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes what the TLS session has to send; `false` if the socket failed.
async fn flush_tls(tls: &mut ClientConnection, tcp: &mut TcpStream) -> bool {
    while tls.wants_write() {
        let mut out = Vec::new();
        if tls.write_tls(&mut out).is_err() || tcp.write_all(&out).await.is_err() {
            return false;
        }
    }
    true
}

/// Moves bytes between the plain socket and the TLS session until the
/// broker's side ends (or the TLS session fails).
async fn relay(mut plain: TcpStream, mut tcp: TcpStream, mut tls: ClientConnection) {
    let _ = plain.set_nodelay(true);
    let _ = tcp.set_nodelay(true);
    let mut from_plain = vec![0u8; 16 * 1024];
    let mut from_tcp = vec![0u8; 16 * 1024];
    let mut clear = vec![0u8; 64 * 1024];
    let mut plain_open = true;
    loop {
        if !flush_tls(&mut tls, &mut tcp).await {
            return;
        }
        tokio::select! {
            r = plain.read(&mut from_plain), if plain_open => match r {
                Ok(n) if n > 0 => {
                    if tls.writer().write_all(&from_plain[..n]).is_err() {
                        return;
                    }
                }
                // The client half-closed (or failed): say so over TLS and
                // keep relaying the broker's side until it closes.
                _ => {
                    plain_open = false;
                    tls.send_close_notify();
                }
            },
            r = tcp.read(&mut from_tcp) => {
                let n = match r {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                let mut input = &from_tcp[..n];
                while !input.is_empty() {
                    if tls.read_tls(&mut input).is_err() {
                        return;
                    }
                    if tls.process_new_packets().is_err() {
                        let _ = flush_tls(&mut tls, &mut tcp).await;
                        return;
                    }
                    loop {
                        match tls.reader().read(&mut clear) {
                            Ok(0) => return,
                            Ok(n) => {
                                if plain.write_all(&clear[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => return,
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub.

/// Whether mosquitto_pub and mosquitto_sub run; skips (or fails, in CI) the
/// test if not.
fn skip_without_mosquitto_clients(test: &str) -> bool {
    let have = runs("mosquitto_pub", &["--help"])
        && runs("mosquitto_sub", &["--help"])
        && runs("stdbuf", &["--help"]);
    skip_missing_external(
        test,
        "mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients)",
        have,
    )
}

/// Runs a mosquitto client to its end (bounded): its output, stdout and
/// stderr together.
fn mosquitto(tool: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    // Pipes are drained by threads, so a chatty client never blocks.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = wait_exit(&mut child, &format!("{tool} {args:?}"), WAIT * 4);
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, text)
}

/// A mosquitto_sub that has received its SUBACK (`-d` output, line
/// buffered), and the lines it prints.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Sub {
    /// Starts `mosquitto_sub -d ARGS` and waits for its SUBACK.
    fn start(args: &[&str]) -> Sub {
        let what = format!("mosquitto_sub {args:?}");
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let (tx, lines) = mpsc::channel();
        for r in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let mut sub = Sub { child, lines, what };
        sub.wait_line("received SUBACK");
        sub
    }

    /// Waits for a line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT * 2;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("{}: no line with {needle:?}; got {seen:?}", self.what);
                }
            }
        }
    }

    /// Waits for the client to exit (it was given `-C`); the lines that are
    /// not `-d` traces.
    fn finish(mut self) -> Vec<String> {
        let st = wait_exit(&mut self.child, &self.what, WAIT * 4);
        // The reader threads end with the pipes.
        std::thread::sleep(Duration::from_millis(50));
        let lines = sub_messages(&self.lines);
        assert!(
            st.success(),
            "{} exited with {st}; printed {lines:?}",
            self.what
        );
        lines
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ===========================================================================
// 1. Authentication.

/// With a password file and `anonymous = "deny"`, on the plain listener:
/// MQTT 3.1.1 gets CONNACK 0x04 for a wrong password, an unknown user and a
/// user name without password, 0x05 without a user name; MQTT 3.1 the same;
/// MQTT 5 gets 0x86 / 0x86 / 0x86 / 0x87. Each refusal is the only packet
/// and the connection is closed after it. The right password gets 0x00.
#[tokio::test]
async fn auth_connack_codes_with_password_file() {
    let test = "auth_connack_codes_with_password_file";
    if skip_on_mosquitto(test, "vmqtt's [auth]") {
        return;
    }
    let w = Work::new(test);
    let pw = password_file(&w, &[("alice", "alice-secret"), ("bob", "bob-secret")]);
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: auth_toml(Some("deny"), Some(&pw), None),
            ..Default::default()
        },
    );
    let port = b.port();
    for (version, bad, anon) in [
        (V311, 0x04, 0x05),
        (ProtocolVersion::V3_1, 0x04, 0x05),
        (V5P, 0x86, 0x87),
    ] {
        let v = format!("{version:?}");
        let id = format!("auth-{v}");
        let cases: [(&str, Option<&str>, Option<&str>, u8); 4] = [
            ("wrong password", Some("alice"), Some("wrong"), bad),
            ("unknown user", Some("mallory"), Some("alice-secret"), bad),
            ("user name without password", Some("alice"), None, bad),
            ("no user name", None, None, anon),
        ];
        for (what, user, password, want) in cases {
            let c = connect_as(version, &id, user, password);
            let got = refused(port, c, &format!("{v} {what}")).await;
            assert_eq!(got, want, "{v}, {what}: CONNACK code");
        }
        // Another user's password is wrong too.
        let c = connect_as(version, &id, Some("alice"), Some("bob-secret"));
        assert_eq!(
            refused(port, c, "crossed").await,
            bad,
            "{v}: bob's password for alice"
        );
        // The right password.
        let c = connect_as(version, &id, Some("alice"), Some("alice-secret"));
        let mut alice = accepted(port, c).await;
        alice.ping().await;
        alice.disconnect().await;
        let c = connect_as(
            version,
            &format!("{id}-bob"),
            Some("bob"),
            Some("bob-secret"),
        );
        accepted(port, c).await.disconnect().await;
    }
}

/// The defaults (`anonymous = "loopback"`, no password file): a client on
/// 127.0.0.1 without credentials is accepted, with MQTT 3.1.1 and 5, as is
/// one from another loopback address (127.0.0.2).
#[tokio::test]
async fn anonymous_loopback_is_the_default() {
    let test = "anonymous_loopback_is_the_default";
    if skip_on_mosquitto(test, "vmqtt's [auth]") {
        return;
    }
    let b = Broker::start(test);
    let mut a = accepted(b.port(), connect_packet(V311, "loopback-a")).await;
    let mut c = accepted(b.port(), connect_packet(V5P, "loopback-c")).await;
    c.subscribe("loopback/t", QoS::AtLeastOnce).await;
    a.publish_ok("loopback/t", "hello", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&c.recv_publish_acked().await), "hello");

    // From 127.0.0.2 (still loopback).
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(([127, 0, 0, 2], 0).into())
        .expect("bind 127.0.0.2");
    match sock.connect(([127, 0, 0, 1], b.port()).into()).await {
        Ok(mut s) => {
            let mut buf = BytesMut::new();
            Packet::Connect(Box::new(connect_packet(V311, "loopback-2")))
                .encode(V311, &mut buf)
                .expect("encode");
            s.write_all(&buf).await.expect("send CONNECT");
            let mut ack = [0u8; 4];
            tokio::time::timeout(WAIT, s.read_exact(&mut ack))
                .await
                .expect("a CONNACK in time")
                .expect("read the CONNACK");
            assert_eq!(
                ack,
                [0x20, 0x02, 0x00, 0x00],
                "127.0.0.2 is loopback: accepted"
            );
        }
        Err(e) => {
            eprintln!("[{test}] note: cannot connect from 127.0.0.2 ({e}); skipped that case")
        }
    }
}

/// Without a password file a user name is not checked: a client with a
/// user name and any password counts as anonymous. With `anonymous =
/// "allow"` it is accepted, but gains none of that user's ACL rights (it
/// has the anonymous rules); with `"deny"` it is refused as anonymous
/// (0x87 / 0x05), not as a bad password.
#[tokio::test]
async fn user_names_unchecked_without_password_file() {
    let test = "user_names_unchecked_without_password_file";
    if skip_on_mosquitto(test, "vmqtt's [auth]") {
        return;
    }
    let w = Work::new(test);
    let acl = w.write(
        "acl",
        "topic readwrite public/#\n\nuser alice\ntopic readwrite alice/#\n",
    );
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: auth_toml(Some("allow"), None, Some(&acl)),
            ..Default::default()
        },
    );
    let port = b.port();
    let mut c = accepted(
        port,
        connect_as(V5P, "not-alice", Some("alice"), Some("anything")),
    )
    .await;
    assert_eq!(
        publish_rc(&mut c, "alice/x", "no", QoS::AtLeastOnce).await,
        Some(NOT_AUTHORIZED),
        "an unchecked user name gains alice's rights"
    );
    assert_eq!(subscribe_rc(&mut c, "alice/#").await, 0x87);
    // The anonymous rules apply to it.
    assert_eq!(subscribe_rc(&mut c, "public/#").await, 0x01);
    c.publish_ok("public/x", "yes", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&c.recv_publish_acked().await), "yes");
    c.disconnect().await;
    // MQTT 3.1.1: the same filter gets SUBACK 0x80.
    let mut c3 = accepted(
        port,
        connect_as(V311, "not-alice-3", Some("alice"), Some("x")),
    )
    .await;
    assert_eq!(subscribe_rc(&mut c3, "alice/#").await, 0x80);
    drop(c3);

    // With "deny", the same client is refused as anonymous.
    let deny = Broker::start_with(
        &format!("{test}_deny"),
        BrokerConfig {
            extra_toml: auth_toml(Some("deny"), None, Some(&acl)),
            ..Default::default()
        },
    );
    for (version, want) in [(V5P, 0x87), (V311, 0x05)] {
        let c = connect_as(version, "not-alice", Some("alice"), Some("anything"));
        assert_eq!(
            refused(deny.port(), c, "deny").await,
            want,
            "{version:?}: an unchecked user name is anonymous"
        );
    }
    let c = connect_packet(V5P, "anon");
    assert_eq!(refused(deny.port(), c, "anonymous").await, 0x87);
}

// ===========================================================================
// 2. The ACL.

const ACL: &str = "\
# alice: everything under sensors/, wills/alice, and $SYS
user alice
topic readwrite sensors/#
topic write wills/alice
topic read $SYS/#

# bob: reads sensors/ only
user bob
topic read sensors/#

# carol: reads everything a wildcard can reach (not $SYS)
user carol
topic read #

# every client: its own inbox by client id, and by user name
pattern readwrite clients/%c/#
pattern readwrite users/%u/#
";

/// A broker with alice, bob and carol, `anonymous = "deny"` and [`ACL`].
fn acl_broker(test: &str, w: &Work, extra: BrokerConfig) -> Broker {
    let pw = password_file(
        w,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ],
    );
    let acl = w.write("acl", ACL);
    Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: auth_toml(Some("deny"), Some(&pw), Some(&acl)),
            ..extra
        },
    )
}

/// A client of `user` (password `{user}-pw`).
async fn login(port: u16, version: ProtocolVersion, id: &str, user: &str) -> Raw {
    let password = format!("{user}-pw");
    accepted(port, connect_as(version, id, Some(user), Some(&password))).await
}

/// Publish denied: MQTT 5 PUBACK 0x87 (QoS 1), PUBREC 0x87 (QoS 2), QoS 0
/// dropped; MQTT 3.1.1 acknowledged (PUBACK, or PUBREC…PUBCOMP) and
/// dropped. No subscriber that could read the topic receives any of it —
/// checked on both shards, after a message that was allowed.
#[tokio::test]
async fn acl_publish_denied() {
    let test = "acl_publish_denied";
    if skip_on_mosquitto(test, "vmqtt's ACL") {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(test, &w, BrokerConfig::default());
    let port = b.port();
    let (bob_id, alice_id) = ids_on_different_shards("acl-pub");
    let carol_id = id_on_shard("acl-pub-carol", home_shard(&bob_id, SHARDS));
    // Readers of sensors/: alice on one shard, carol on the other.
    let mut alice = login(port, V5P, &alice_id, "alice").await;
    alice.subscribe("sensors/#", QoS::ExactlyOnce).await;
    let mut carol = login(port, V311, &carol_id, "carol").await;
    carol.subscribe("sensors/#", QoS::ExactlyOnce).await;

    // bob (read-only) over MQTT 5.
    let mut bob = login(port, V5P, &bob_id, "bob").await;
    assert_eq!(
        publish_rc(&mut bob, "sensors/t", "bob q0", QoS::AtMostOnce).await,
        None
    );
    assert_eq!(
        publish_rc(&mut bob, "sensors/t", "bob q1", QoS::AtLeastOnce).await,
        Some(NOT_AUTHORIZED),
        "v5 QoS 1: PUBACK 0x87"
    );
    assert_eq!(
        publish_rc(&mut bob, "sensors/t", "bob q2", QoS::ExactlyOnce).await,
        Some(NOT_AUTHORIZED),
        "v5 QoS 2: PUBREC 0x87"
    );
    // Retained, too: not stored.
    let mut p = publish("sensors/r", &b"bob retained"[..], QoS::AtLeastOnce, true);
    p.packet_id = None;
    assert_eq!(bob.publish(p).await.map(|a| a.reason), Some(NOT_AUTHORIZED));
    // Not a topic of the ACL at all.
    assert_eq!(
        publish_rc(&mut bob, "elsewhere", "x", QoS::AtLeastOnce).await,
        Some(NOT_AUTHORIZED)
    );
    // bob is still connected and may do what he may.
    bob.ping().await;

    // bob over MQTT 3.1.1: acknowledged, dropped.
    let bob3_id = format!("{bob_id}-v3");
    let mut bob3 = login(port, V311, &bob3_id, "bob").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let rc = publish_rc(&mut bob3, "sensors/t", &format!("bob3 {qos:?}"), qos).await;
        if qos != QoS::AtMostOnce {
            assert_eq!(rc, Some(ReasonCode::SUCCESS), "3.1.1 {qos:?}: acknowledged");
        }
    }
    bob3.ping().await;

    // What alice may publish reaches both readers, and nothing of bob's came
    // before it.
    alice
        .publish_ok("sensors/t", "allowed", QoS::AtLeastOnce, false)
        .await;
    for r in [&mut alice, &mut carol] {
        let p = r.recv_publish_acked().await;
        assert_eq!(
            (p.topic.as_str(), text(&p).as_str()),
            ("sensors/t", "allowed"),
            "[{}] the first message must be the allowed one",
            r.name
        );
        r.expect_no_publish(QUIET, "denied publishes are dropped")
            .await;
    }
    // No retained message was stored.
    let mut late = login(port, V5P, &format!("{alice_id}-late"), "alice").await;
    late.subscribe("sensors/r", QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET, "a denied retained publish is not stored")
        .await;
}

/// Subscribe denied: SUBACK 0x87 (v5), 0x80 (3.1.1), per filter in a
/// SUBSCRIBE of several; a rule covers a filter only if it covers every topic
/// the filter can match; `$share/…` is checked on its inner filter.
#[tokio::test]
async fn acl_subscribe_denied() {
    let test = "acl_subscribe_denied";
    if skip_on_mosquitto(test, "vmqtt's ACL") {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(test, &w, BrokerConfig::default());
    let port = b.port();
    let mut bob = login(port, V5P, "acl-sub-bob", "bob").await;
    assert_eq!(
        subscribe_many(
            &mut bob,
            &[
                "sensors/#",
                "sensors/+/temp",
                "sensors",
                "other/#",
                "#",
                "+/temp",
                "$share/g/sensors/+",
                "$share/g/other/+",
            ]
        )
        .await,
        vec![0x01, 0x01, 0x01, 0x87, 0x87, 0x87, 0x01, 0x87],
        "v5: granted QoS 1 or 0x87 per filter"
    );
    let mut bob3 = login(port, V311, "acl-sub-bob3", "bob").await;
    assert_eq!(
        subscribe_many(&mut bob3, &["sensors/a", "other/a", "#"]).await,
        vec![0x01, 0x80, 0x80],
        "3.1.1: 0x80 for a denied filter"
    );
    // A denied filter delivers nothing; the granted ones work.
    let mut alice = login(port, V5P, "acl-sub-alice", "alice").await;
    alice
        .publish_ok("sensors/a", "to bob", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&bob3.recv_publish_acked().await), "to bob");
    bob3.expect_no_publish(QUIET, "one copy only").await;
}

/// `%c` and `%u` patterns: a client reaches only its own client id's and
/// user name's topics; a client id with `+` or `#` (which would widen the
/// filter) or `/` gains nothing from `%c`.
#[tokio::test]
async fn acl_patterns() {
    let test = "acl_patterns";
    if skip_on_mosquitto(test, "vmqtt's ACL") {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(test, &w, BrokerConfig::default());
    let port = b.port();
    let mut c = login(port, V5P, "dev-1", "bob").await;
    let q1 = QoS::AtLeastOnce;
    assert_eq!(subscribe_rc(&mut c, "clients/dev-1/#").await, 0x01);
    assert_eq!(subscribe_rc(&mut c, "users/bob/inbox").await, 0x01);
    assert_eq!(subscribe_rc(&mut c, "clients/dev-2/#").await, 0x87);
    assert_eq!(subscribe_rc(&mut c, "clients/+/#").await, 0x87);
    assert_eq!(subscribe_rc(&mut c, "users/alice/#").await, 0x87);
    assert_eq!(subscribe_rc(&mut c, "users/#").await, 0x87);
    assert_ne!(
        publish_rc(&mut c, "clients/dev-1/x", "mine", q1).await,
        Some(NOT_AUTHORIZED)
    );
    assert_eq!(text(&c.recv_publish_acked().await), "mine");
    assert_ne!(
        publish_rc(&mut c, "users/bob/inbox", "by user", q1).await,
        Some(NOT_AUTHORIZED)
    );
    assert_eq!(text(&c.recv_publish_acked().await), "by user");
    assert_eq!(
        publish_rc(&mut c, "clients/dev-2/x", "theirs", q1).await,
        Some(NOT_AUTHORIZED)
    );
    assert_eq!(
        publish_rc(&mut c, "users/alice/x", "theirs", q1).await,
        Some(NOT_AUTHORIZED)
    );

    // Client ids that would change the pattern's structure.
    for (id, filters, topics) in [
        (
            "+",
            &["clients/+/#", "clients/+", "clients/#"][..],
            &["clients/x/y"][..],
        ),
        ("#", &["clients/#", "clients/+/#"][..], &["clients/x"][..]),
        (
            "a/b",
            &["clients/a/b/#", "clients/a/#"][..],
            &["clients/a/b/c", "clients/a/x"][..],
        ),
    ] {
        let (mut c, ack) =
            Raw::connect_with(port, connect_as(V5P, id, Some("bob"), Some("bob-pw"))).await;
        if ack.reason != ReasonCode::SUCCESS {
            // A broker may refuse such client ids outright: nothing gained.
            eprintln!(
                "[{test}] note: client id {id:?} refused with {:?}",
                ack.reason
            );
            continue;
        }
        for f in filters {
            assert_eq!(
                subscribe_rc(&mut c, f).await,
                0x87,
                "client id {id:?} subscribing {f}"
            );
        }
        for t in topics {
            assert_eq!(
                publish_rc(&mut c, t, "x", q1).await,
                Some(NOT_AUTHORIZED),
                "client id {id:?} publishing to {t}"
            );
        }
    }
}

/// `$SYS`: granted by name only. alice (`read $SYS/#`) subscribes and
/// receives it; bob may not subscribe to it; carol (`read #`) may subscribe
/// to `#` and `+/broker/#` but never receives a `$SYS` message through them
/// (and may not subscribe to `$SYS/#`).
#[tokio::test]
async fn acl_sys_only_where_granted() {
    let test = "acl_sys_only_where_granted";
    if skip_on_mosquitto(test, "vmqtt's ACL") {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(
        test,
        &w,
        BrokerConfig {
            sys_interval_ms: Some(200),
            ..Default::default()
        },
    );
    let port = b.port();
    let mut carol = login(port, V5P, "sys-carol", "carol").await;
    assert_eq!(subscribe_rc(&mut carol, "#").await, 0x01);
    assert_eq!(subscribe_rc(&mut carol, "+/broker/#").await, 0x01);
    assert_eq!(subscribe_rc(&mut carol, "$SYS/#").await, 0x87);
    let mut bob = login(port, V5P, "sys-bob", "bob").await;
    assert_eq!(subscribe_rc(&mut bob, "$SYS/#").await, 0x87);
    assert_eq!(subscribe_rc(&mut bob, "$SYS/broker/uptime").await, 0x87);
    let mut alice = login(port, V5P, "sys-alice", "alice").await;
    assert_eq!(subscribe_rc(&mut alice, "$SYS/broker/uptime").await, 0x01);
    // A live (not retained) $SYS publication after carol subscribed.
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let p = alice.recv_publish_within(WAIT * 2).await;
        alice.ack(&p).await;
        assert_eq!(p.topic.as_str(), "$SYS/broker/uptime");
        if !p.retain {
            break;
        }
        assert!(Instant::now() < deadline, "no live $SYS publication");
    }
    // carol's subscriptions work, and saw no $SYS before this message.
    alice
        .publish_ok("sensors/sys", "ordinary", QoS::AtLeastOnce, false)
        .await;
    let p = carol.recv_publish_acked().await;
    assert_eq!(
        p.topic.as_str(),
        "sensors/sys",
        "a `#` subscription received {:?}",
        p.topic.as_str()
    );
    carol
        .expect_no_publish(Duration::from_millis(600), "`#` never receives $SYS")
        .await;
}

/// A will to a topic the client may not publish to: CONNACK 0x87 (v5),
/// 0x05 (3.1.1), and the connection closed; a will it may publish is
/// accepted and sent.
#[tokio::test]
async fn acl_will_denied() {
    let test = "acl_will_denied";
    if skip_on_mosquitto(test, "vmqtt's ACL") {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(test, &w, BrokerConfig::default());
    let port = b.port();
    for (version, want) in [(V5P, 0x87), (V311, 0x05)] {
        for (user, t) in [
            ("bob", "sensors/will"),
            ("alice", "wills/bob"),
            ("alice", "$SYS/x"),
        ] {
            let mut c = connect_as(
                version,
                "will-denied",
                Some(user),
                Some(&format!("{user}-pw")),
            );
            c.will = Some(will(t, "gone", QoS::AtLeastOnce, false));
            let got = refused(port, c, &format!("{version:?} {user} will to {t}")).await;
            assert_eq!(got, want, "{version:?}: {user}'s will to {t}");
        }
    }
    // Allowed wills are accepted, and published when the client vanishes.
    let (wid, sid) = ids_on_different_shards("acl-will");
    let mut sub = login(port, V5P, &sid, "alice").await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut c = connect_as(V311, &wid, Some("alice"), Some("alice-pw"));
    c.will = Some(will("sensors/will", "alice gone", QoS::AtLeastOnce, false));
    let c = accepted(port, c).await;
    c.drop_abruptly();
    let p = sub.recv_publish_acked().await;
    assert_eq!(
        (p.topic.as_str(), text(&p).as_str()),
        ("sensors/will", "alice gone")
    );
}

/// The ACL with mosquitto clients: MQTT 5 mosquitto_pub is told "not
/// authorized" (PUBACK 0x87), mosquitto_sub's SUBACK refuses a filter
/// (0x87 v5, 0x80 3.1.1), and what is allowed flows.
#[tokio::test]
async fn acl_with_mosquitto_clients() {
    let test = "acl_with_mosquitto_clients";
    if skip_on_mosquitto(test, "vmqtt's ACL") || skip_without_mosquitto_clients(test) {
        return;
    }
    let w = Work::new(test);
    let b = acl_broker(test, &w, BrokerConfig::default());
    let port = b.port().to_string();
    let h = ["-h", "127.0.0.1", "-p", port.as_str()];
    let (pub_id, sub_id) = ids_on_different_shards("mosq-acl");

    // bob reads sensors/; alice writes; bob's own write is refused.
    let mut sub_args = h.to_vec();
    sub_args.extend([
        "-i",
        &sub_id,
        "-u",
        "bob",
        "-P",
        "bob-pw",
        "-t",
        "sensors/#",
    ]);
    sub_args.extend(["-q", "1", "-C", "1", "-W", "20", "-v", "-V", "mqttv5"]);
    let sub = Sub::start(&sub_args);
    let mut args = h.to_vec();
    args.extend([
        "-i",
        &pub_id,
        "-u",
        "bob",
        "-P",
        "bob-pw",
        "-t",
        "sensors/x",
    ]);
    args.extend(["-m", "from bob", "-q", "1", "-V", "mqttv5"]);
    let (_, out) = mosquitto("mosquitto_pub", &args);
    assert!(
        out.to_ascii_lowercase().contains("not authori"),
        "mosquitto_pub -V mqttv5 as bob should report 'not authorized': {out:?}"
    );
    let mut args = h.to_vec();
    args.extend([
        "-i",
        &pub_id,
        "-u",
        "alice",
        "-P",
        "alice-pw",
        "-t",
        "sensors/x",
    ]);
    args.extend(["-m", "from alice", "-q", "1", "-V", "mqttv311"]);
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(st.success(), "alice publishing: {st} {out}");
    assert_eq!(
        sub.finish(),
        vec!["sensors/x from alice"],
        "bob receives alice's only"
    );

    // Subscriptions refused, with both versions.
    for v in ["mqttv5", "mqttv311"] {
        let mut args = h.to_vec();
        args.extend(["-i", &sub_id, "-u", "bob", "-P", "bob-pw", "-t", "other/#"]);
        args.extend(["-C", "1", "-W", "3", "-d", "-V", v]);
        let (_, out) = mosquitto("mosquitto_sub", &args);
        let want = if v == "mqttv5" { "135" } else { "128" };
        assert!(
            out.contains(&format!("Subscribed (mid: 1): {want}")),
            "{v}: expected a SUBACK refusing the filter ({want}): {out}"
        );
    }
}

// ===========================================================================
// 3. SIGHUP.

/// SIGHUP re-reads the password and ACL files: a user added with
/// `vmqtt-shard passwd` can connect, a deleted one cannot, new ACL rules
/// apply to new connections. A broken ACL file is reported (naming it) and
/// the rules in force stay.
#[tokio::test]
async fn sighup_reloads_passwords_and_acl() {
    let test = "sighup_reloads_passwords_and_acl";
    if skip_on_mosquitto(test, "vmqtt's SIGHUP") {
        return;
    }
    let w = Work::new(test);
    let pw = password_file(&w, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let acl = w.write("acl", "user alice\ntopic readwrite a/#\n");
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: auth_toml(Some("deny"), Some(&pw), Some(&acl)),
            ..Default::default()
        },
    );
    let port = b.port();
    let q1 = QoS::AtLeastOnce;
    let carol = || connect_as(V5P, "hup-carol", Some("carol"), Some("carol-pw"));
    let bob = || connect_as(V5P, "hup-bob", Some("bob"), Some("bob-pw"));
    assert_eq!(refused(port, carol(), "carol before").await, 0x86);
    accepted(port, bob()).await.disconnect().await;
    let mut alice = login(port, V5P, "hup-alice", "alice").await;
    assert_eq!(
        publish_rc(&mut alice, "b/1", "x", q1).await,
        Some(NOT_AUTHORIZED)
    );
    assert_ne!(
        publish_rc(&mut alice, "a/1", "x", q1).await,
        Some(NOT_AUTHORIZED)
    );
    alice.disconnect().await;

    // Add carol, delete bob, widen alice's rules; reload.
    passwd(&pw, "carol", Some("carol-pw"));
    passwd(&pw, "bob", None);
    w.write(
        "acl",
        "user alice\ntopic readwrite a/#\ntopic readwrite b/#\n\nuser carol\ntopic readwrite c/#\n",
    );
    let reloaded = "SIGHUP: [auth] and its files reloaded";
    b.signal(libc::SIGHUP);
    eventually("the SIGHUP reload logged", WAIT, || {
        let n = b.log().matches(reloaded).count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let mut carol_c = accepted(port, carol()).await;
    assert_eq!(
        refused(port, bob(), "bob after").await,
        0x86,
        "bob was deleted"
    );
    // Every shard applied the ACL before the [auth] line above was logged
    // (polled anyway).
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let mut alice = login(port, V5P, "hup-alice", "alice").await;
        let rc = publish_rc(&mut alice, "b/1", "x", q1).await;
        alice.disconnect().await;
        if rc != Some(NOT_AUTHORIZED) {
            break;
        }
        assert!(Instant::now() < deadline, "alice's new rule never applied");
        sleep_ms(100).await;
    }
    // carol's connection may live on the other shard, which applies the new
    // ACL on its own tick: poll it too.
    loop {
        if publish_rc(&mut carol_c, "c/1", "x", q1).await != Some(NOT_AUTHORIZED) {
            break;
        }
        assert!(Instant::now() < deadline, "carol's rule never applied");
        sleep_ms(100).await;
    }
    assert_eq!(
        publish_rc(&mut carol_c, "a/1", "x", q1).await,
        Some(NOT_AUTHORIZED)
    );
    carol_c.disconnect().await;

    // A broken ACL file: reported, the rules in force stay (and the
    // password file too).
    passwd(&pw, "dave", Some("dave-pw"));
    w.write(
        "acl",
        "user alice\ntopic readwrite a/#\nthis is not a rule\n",
    );
    b.signal(libc::SIGHUP);
    let kept = "SIGHUP: keeping the running configuration";
    let line = eventually("the broken ACL reported", WAIT, || {
        let line = b
            .log()
            .lines()
            .find(|l| l.contains(kept))
            .map(str::to_owned);
        async move { line }
    })
    .await;
    assert!(
        line.contains(&acl.display().to_string()),
        "the report names the ACL file {}: {line}",
        acl.display()
    );
    // Give the shards a tick, as above, to show nothing changed.
    sleep_ms(500).await;
    let mut alice = login(port, V5P, "hup-alice", "alice").await;
    assert_ne!(
        publish_rc(&mut alice, "b/1", "x", q1).await,
        Some(NOT_AUTHORIZED),
        "the rules in force before the broken file stay"
    );
    alice.disconnect().await;
    let mut carol_c = accepted(port, carol()).await;
    assert_ne!(
        publish_rc(&mut carol_c, "c/1", "x", q1).await,
        Some(NOT_AUTHORIZED)
    );
    carol_c.disconnect().await;
    let dave = connect_as(V5P, "hup-dave", Some("dave"), Some("dave-pw"));
    assert_eq!(
        refused(port, dave, "dave").await,
        0x86,
        "a failed reload applies nothing, the password file included"
    );
    assert_eq!(
        b.log().matches(reloaded).count(),
        1,
        "the broken file was not reloaded"
    );
}

// ===========================================================================
// 4. TLS.

/// MQTT over TLS with mosquitto clients, as in the README: bob subscribes
/// and alice publishes with passwords (`--cafile`); device-1 publishes with
/// its certificate and no password (CN = user name); the ACL applies to
/// device-1 as that user, also when it sends another user's name; a wrong
/// password over TLS is refused; plain MQTT to the TLS port gets no
/// CONNACK.
#[tokio::test]
async fn tls_passwords_and_certificates_with_mosquitto_clients() {
    let test = "tls_passwords_and_certificates_with_mosquitto_clients";
    if skip_on_mosquitto(test, "vmqtt's TLS") || skip_without_mosquitto_clients(test) {
        return;
    }
    let w = Work::new(test);
    let pki = Pki::new(&w);
    let pw = password_file(&w, &[("alice", "alice-secret"), ("bob", "bob-secret")]);
    let acl = w.write(
        "acl",
        "user alice\ntopic readwrite sensors/#\n\nuser bob\ntopic read sensors/#\n\n\
         user device-1\ntopic write sensors/device-1/#\n",
    );
    let tls = free_port();
    let certs = ClientCerts {
        ca: true,
        require: false,
        identity: true,
    };
    let _b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: format!(
                "{}\n{}",
                tls_toml(tls, &pki, certs),
                auth_toml(Some("deny"), Some(&pw), Some(&acl))
            ),
            ..Default::default()
        },
    );
    let tls_port = tls.to_string();
    let ca = pki.ca.display().to_string();
    let (dcrt, dkey) = (
        pki.device_crt.display().to_string(),
        pki.device_key.display().to_string(),
    );
    let over_tls = [
        "-h",
        "localhost",
        "-p",
        tls_port.as_str(),
        "--cafile",
        ca.as_str(),
    ];
    let (bob_id, alice_id) = ids_on_different_shards("tls-mosq");
    let device_id = id_on_shard("tls-mosq-device", home_shard(&bob_id, SHARDS));

    let mut args = over_tls.to_vec();
    args.extend([
        "-i",
        &bob_id,
        "-u",
        "bob",
        "-P",
        "bob-secret",
        "-t",
        "sensors/#",
    ]);
    args.extend(["-v", "-q", "1", "-C", "2", "-W", "20"]);
    let sub = Sub::start(&args);
    let mut args = over_tls.to_vec();
    args.extend(["-i", &alice_id, "-u", "alice", "-P", "alice-secret"]);
    args.extend(["-t", "sensors/room1", "-m", "21.5", "-q", "1"]);
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(st.success(), "alice over TLS: {st} {out}");
    let mut args = over_tls.to_vec();
    args.extend(["--cert", &dcrt, "--key", &dkey, "-i", &device_id]);
    args.extend(["-t", "sensors/device-1/temp", "-m", "19.0", "-q", "1"]);
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(st.success(), "device-1 with its certificate: {st} {out}");
    assert_eq!(
        sub.finish(),
        vec!["sensors/room1 21.5", "sensors/device-1/temp 19.0"],
        "bob receives both"
    );

    // The ACL applies to device-1: not to sensors/room1, even when it sends
    // alice's name (the certificate is the user name).
    for user in [None, Some(("alice", "wrong"))] {
        let mut args = over_tls.to_vec();
        args.extend(["--cert", &dcrt, "--key", &dkey, "-i", &device_id]);
        if let Some((u, p)) = user {
            args.extend(["-u", u, "-P", p]);
        }
        args.extend(["-t", "sensors/room1", "-m", "no", "-q", "1", "-V", "mqttv5"]);
        let (_, out) = mosquitto("mosquitto_pub", &args);
        assert!(
            out.to_ascii_lowercase().contains("not authori"),
            "device-1 (user name {user:?}) publishing to sensors/room1: {out:?}"
        );
    }
    // A wrong password over TLS.
    let mut args = over_tls.to_vec();
    args.extend(["-u", "alice", "-P", "wrong", "-t", "sensors/x", "-m", "no"]);
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(!st.success(), "a wrong password was accepted: {out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("bad user name or password"),
        "wrong password: {out:?}"
    );
    // No credentials over TLS (anonymous = "deny", no certificate).
    let mut args = over_tls.to_vec();
    args.extend(["-t", "sensors/x", "-m", "no"]);
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(!st.success(), "an anonymous TLS client was accepted: {out}");
    assert!(
        out.to_ascii_lowercase().contains("not authori"),
        "anonymous: {out:?}"
    );

    // Plain MQTT to the TLS port: mosquitto_pub fails; a raw CONNECT gets
    // no CONNACK, at most a TLS alert, and the connection closes.
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &tls_port,
        "-u",
        "alice",
        "-P",
        "alice-secret",
        "-t",
        "sensors/x",
        "-m",
        "no",
    ];
    let (st, out) = mosquitto("mosquitto_pub", &args);
    assert!(!st.success(), "plain MQTT accepted on the TLS port: {out}");
    let mut raw = Raw::tcp(tls, "plain-on-tls").await;
    raw.version = V311;
    raw.send(&Packet::Connect(Box::new(connect_as(
        V311,
        "plain-on-tls",
        Some("alice"),
        Some("alice-secret"),
    ))))
    .await;
    let bytes = raw.read_bytes_until_closed(WAIT * 3).await;
    assert!(
        bytes.first().is_none_or(|&t| t == 0x15),
        "plain MQTT on the TLS port: expected nothing or a TLS alert, got {bytes:02x?}"
    );
}

/// `require_client_cert = true`: a TLS client without a certificate is
/// refused (even with a good password), and so is one with a certificate
/// from another CA (same CN); device-1's certificate gets in, as device-1.
#[tokio::test]
async fn tls_require_client_cert() {
    let test = "tls_require_client_cert";
    if skip_on_mosquitto(test, "vmqtt's TLS") {
        return;
    }
    let w = Work::new(test);
    let pki = Pki::new(&w);
    let pw = password_file(&w, &[("alice", "alice-secret")]);
    let acl = w.write(
        "acl",
        "user alice\ntopic readwrite #\n\nuser device-1\ntopic readwrite devices/#\n",
    );
    let tls = free_port();
    let certs = ClientCerts {
        ca: true,
        require: true,
        identity: true,
    };
    let _b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: format!(
                "{}\n{}",
                tls_toml(tls, &pki, certs),
                auth_toml(Some("deny"), Some(&pw), Some(&acl))
            ),
            ..Default::default()
        },
    );
    let good = TlsProxy::start(
        tls,
        client_tls(&pki.ca, Some((&pki.device_crt, &pki.device_key))),
    )
    .await;
    let none = TlsProxy::start(tls, client_tls(&pki.ca, None)).await;
    let rogue = TlsProxy::start(
        tls,
        client_tls(&pki.ca, Some((&pki.rogue_crt, &pki.rogue_key))),
    )
    .await;
    for (proxy, what) in [
        (&none, "no certificate"),
        (&rogue, "another CA's certificate"),
    ] {
        let mut raw = Raw::tcp(proxy.port, what).await;
        raw.version = V5P;
        let c = connect_as(V5P, "no-cert", Some("alice"), Some("alice-secret"));
        // The broker may refuse before or after the CONNECT is written.
        let _ = raw.try_send(&Packet::Connect(Box::new(c))).await;
        let bytes = raw.read_bytes_until_closed(WAIT * 2).await;
        assert!(bytes.is_empty(), "{what}: refused, yet got {bytes:02x?}");
    }
    // device-1 gets in, as device-1.
    let mut dev = accepted(good.port, connect_packet(V5P, "req-dev")).await;
    dev.subscribe("devices/1", QoS::AtLeastOnce).await;
    dev.publish_ok("devices/1", "hello", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&dev.recv_publish_acked().await), "hello");
    assert_eq!(
        publish_rc(&mut dev, "other", "x", QoS::AtLeastOnce).await,
        Some(NOT_AUTHORIZED),
        "device-1's rights only"
    );

    // The same with mosquitto_pub, if installed.
    if !skip_without_mosquitto_clients(test) {
        let port = tls.to_string();
        let ca = pki.ca.display().to_string();
        let base = [
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "devices/2",
            "-m",
            "x",
        ];
        let (st, out) = mosquitto(
            "mosquitto_pub",
            &[&base[..], &["-u", "alice", "-P", "alice-secret"]].concat(),
        );
        assert!(!st.success(), "no client certificate was accepted: {out}");
        let (rc, rk) = (
            pki.rogue_crt.display().to_string(),
            pki.rogue_key.display().to_string(),
        );
        let (st, out) = mosquitto(
            "mosquitto_pub",
            &[&base[..], &["--cert", &rc, "--key", &rk]].concat(),
        );
        assert!(
            !st.success(),
            "another CA's certificate was accepted: {out}"
        );
        let (dc, dk) = (
            pki.device_crt.display().to_string(),
            pki.device_key.display().to_string(),
        );
        let (st, out) = mosquitto(
            "mosquitto_pub",
            &[&base[..], &["--cert", &dc, "--key", &dk, "-q", "1"]].concat(),
        );
        assert!(st.success(), "device-1's certificate was refused: {out}");
    }
}

/// A TLS client and a plain client exchange QoS 1 messages both ways
/// (small and 200 KB ones), their client ids on different home shards, in
/// rounds that swap the shards: the TLS session is handed to its home
/// shard whenever the kernel gives the connection to the other one (with
/// 8 TLS connections, the chance that none is handed over is 1/256). The
/// TLS client writes CONNECT and SUBSCRIBE in one go, so decrypted bytes
/// travel with the handoff.
#[tokio::test]
async fn tls_and_plain_clients_across_shards() {
    let test = "tls_and_plain_clients_across_shards";
    if skip_on_mosquitto(test, "vmqtt's TLS") {
        return;
    }
    let w = Work::new(test);
    let pki = Pki::new(&w);
    let tls = free_port();
    let b = Broker::start_with(
        test,
        BrokerConfig {
            extra_toml: tls_toml(tls, &pki, ClientCerts::default()),
            ..Default::default()
        },
    );
    let proxy = TlsProxy::start(tls, client_tls(&pki.ca, None)).await;
    let big = "z".repeat(200 * 1024);
    for round in 0..8 {
        let (a, p) = ids_on_different_shards(&format!("tls-x{round}"));
        let (tls_id, plain_id) = if round % 2 == 0 { (a, p) } else { (p, a) };
        let version = if round % 4 < 2 { V5P } else { V311 };
        let (to_tls, to_plain) = (format!("x/{round}/tls"), format!("x/{round}/plain"));

        let mut plain = Raw::connect_ok(b.port(), connect_packet(V5P, &plain_id))
            .await
            .0;
        plain.subscribe(&to_plain, QoS::AtLeastOnce).await;

        // CONNECT + SUBSCRIBE in one write over TLS.
        let mut t = Raw::tcp(proxy.port, &tls_id).await;
        t.version = version;
        let sub_id = t.next_packet_id();
        let mut buf = BytesMut::new();
        Packet::Connect(Box::new(connect_packet(version, &tls_id)))
            .encode(version, &mut buf)
            .expect("encode CONNECT");
        Packet::Subscribe(Subscribe {
            packet_id: sub_id,
            properties: Default::default(),
            filters: vec![(filter(&to_tls), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        })
        .encode(version, &mut buf)
        .expect("encode SUBSCRIBE");
        t.send_raw(&buf).await;
        let ack: ConnAck = t
            .wait_for("CONNACK over TLS", WAIT, |p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.reason,
            ReasonCode::SUCCESS,
            "round {round}: CONNACK over TLS"
        );
        let granted = t
            .wait_for("SUBACK over TLS", WAIT, |p| match p {
                Packet::SubAck(a) if a.packet_id == sub_id => Some(a.reasons.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            granted,
            vec![ReasonCode(1)],
            "round {round}: SUBACK over TLS"
        );

        for (i, m) in [format!("p{round}-1"), big.clone(), format!("p{round}-3")]
            .iter()
            .enumerate()
        {
            plain.publish_ok(&to_tls, m, QoS::AtLeastOnce, false).await;
            let got = t.recv_publish_acked().await;
            assert!(
                text(&got) == *m,
                "round {round}: message {i} plain -> TLS differs"
            );
            t.publish_ok(&to_plain, m, QoS::AtLeastOnce, false).await;
            let got = plain.recv_publish_acked().await;
            assert!(
                text(&got) == *m,
                "round {round}: message {i} TLS -> plain differs"
            );
        }
        t.disconnect().await;
        plain.disconnect().await;
    }
}

/// Slow TLS clients (TCP connections to the TLS port that send half a
/// ClientHello and stall) do not delay another client's TLS handshake,
/// CONNECT and publish, which must finish within `WAIT` while the connect
/// timeout (8 s) is longer; the stalled ones are closed after
/// `connect_timeout_ms` and counted as `connect_timeout` limit hits.
#[tokio::test]
async fn tls_stalled_handshake_does_not_block_others() {
    let test = "tls_stalled_handshake_does_not_block_others";
    if skip_on_mosquitto(test, "vmqtt's TLS") {
        return;
    }
    let w = Work::new(test);
    let pki = Pki::new(&w);
    let tls = free_port();
    let http = free_port();
    let timeout_ms = 8000;
    let _b = Broker::start_with(
        test,
        BrokerConfig {
            connect_timeout_ms: Some(timeout_ms),
            http_port: Some(http),
            extra_toml: tls_toml(tls, &pki, ClientCerts::default()),
            ..Default::default()
        },
    );
    let config = client_tls(&pki.ca, None);
    let mut hello = Vec::new();
    ClientConnection::new(
        config.clone(),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client session")
    .write_tls(&mut hello)
    .expect("ClientHello");
    assert!(hello.len() > 8, "a ClientHello: {hello:02x?}");
    let stalled_at = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", tls))
            .await
            .expect("connect");
        s.write_all(&hello[..hello.len() / 2])
            .await
            .expect("half a ClientHello");
        stalled.push(s);
    }

    // Another client meanwhile: handshake, CONNECT, publish, receive.
    let proxy = TlsProxy::start(tls, config).await;
    let (a, c) = ids_on_different_shards("tls-slow");
    let mut sub = accepted(proxy.port, connect_packet(V5P, &a)).await;
    sub.subscribe("slow/t", QoS::AtLeastOnce).await;
    let mut publ = accepted(proxy.port, connect_packet(V311, &c)).await;
    publ.publish_ok("slow/t", "not delayed", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&sub.recv_publish_acked().await), "not delayed");
    if stalled_at.elapsed() < Duration::from_millis(timeout_ms - 1000) {
        // Still within the timeout: the stalled ones are still open.
        let mut byte = [0u8; 1];
        for s in &mut stalled {
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut byte)).await {
                Err(_) => {}
                Ok(r) => panic!("a stalled handshake was closed before the connect timeout: {r:?}"),
            }
        }
    }

    // Closed after the connect timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms) + WAIT * 2;
    for (i, s) in stalled.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => {
                    panic!("stalled connection {i} still open long after the connect timeout")
                }
                Ok(Ok(0)) | Ok(Err(_)) => break,
                // An alert, perhaps: read on to the close.
                Ok(Ok(_)) => {}
            }
        }
    }
    let body = loop {
        let body = scrape(http);
        let (n, _) = labelled(&body, "vmqtt_limit_hits_total", "limit", "connect_timeout");
        if n >= 6 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "the stalled handshakes were not counted as connect timeouts:\n{body}"
        );
        sleep_ms(200).await;
    };
    let (n, _) = labelled(&body, "vmqtt_limit_hits_total", "limit", "connect_timeout");
    assert_eq!(n, 6, "exactly the stalled ones timed out:\n{body}");
    // The working clients are still there.
    sub.ping().await;
    publ.ping().await;
}

/// A broken TLS configuration: the broker refuses to start with a message
/// naming the file, and `vmqtt-shard check-config` exits 2 with it.
#[test]
fn tls_broken_config_refused() {
    let test = "tls_broken_config_refused";
    if skip_on_mosquitto(test, "vmqtt's configuration") {
        return;
    }
    let w = Work::new(test);
    let pki = Pki::new(&w);
    let missing = w.path("missing.key");
    let port = free_port();
    let tls = free_port();
    let config = |tls_section: &str| {
        format!(
            "listen = [\"127.0.0.1:{port}\"]\ndata_dir = {}\n\n{tls_section}",
            toml_path(&w.path("data"))
        )
    };
    let section = |cert: &Path, key: &Path, ca: Option<&Path>| {
        let mut s = format!(
            "[tls]\nlisten = [\"127.0.0.1:{tls}\"]\ncert_file = {}\nkey_file = {}\n",
            toml_path(cert),
            toml_path(key)
        );
        if let Some(ca) = ca {
            s.push_str(&format!("client_ca_file = {}\n", toml_path(ca)));
        }
        s
    };
    let missing_key = w.write(
        "missing-key.toml",
        &config(&section(&pki.server_crt, &missing, None)),
    );

    // The broker refuses to start.
    let mut child = Command::new(BIN)
        .args(["--cores", "2", "--config"])
        .arg(&missing_key)
        .current_dir(&w.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the broker");
    let status = wait_exit(&mut child, "a broker with a missing key file", WAIT * 4);
    let Output { stdout, stderr, .. } = child.wait_with_output().expect("output");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert!(
        !status.success(),
        "the broker started without its key file: {out}"
    );
    assert!(
        out.contains(&missing.display().to_string()),
        "the refusal names the key file {}: {out}",
        missing.display()
    );
    assert!(
        !out.contains("vmqtt listening"),
        "it must not listen: {out}"
    );
    assert!(
        StdTcpStream::connect(("127.0.0.1", tls)).is_err(),
        "nothing listens on the TLS port"
    );

    // check-config, on that and other broken TLS settings.
    let missing_ca = w.path("missing-ca.crt");
    let cases: Vec<(&str, PathBuf, Vec<PathBuf>)> = vec![
        ("missing key file", missing_key, vec![missing.clone()]),
        (
            "missing certificate file",
            w.write(
                "missing-cert.toml",
                &config(&section(&w.path("missing.crt"), &pki.server_key, None)),
            ),
            vec![w.path("missing.crt")],
        ),
        (
            "key of another certificate",
            w.write(
                "mismatch.toml",
                &config(&section(&pki.server_crt, &pki.device_key, None)),
            ),
            vec![pki.device_key.clone()],
        ),
        (
            "a certificate as the key",
            w.write(
                "cert-as-key.toml",
                &config(&section(&pki.server_crt, &pki.server_crt, None)),
            ),
            vec![pki.server_crt.clone()],
        ),
        (
            "missing client CA file",
            w.write(
                "missing-ca.toml",
                &config(&section(
                    &pki.server_crt,
                    &pki.server_key,
                    Some(&missing_ca),
                )),
            ),
            vec![missing_ca.clone()],
        ),
    ];
    for (what, file, named) in cases {
        let out = check_config(&file);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "check-config, {what}: {text}");
        for p in named {
            assert!(
                text.contains(&p.display().to_string()),
                "check-config, {what}: the message names {}: {text}",
                p.display()
            );
        }
    }
    // The good one passes.
    let good = w.write(
        "good.toml",
        &config(&section(&pki.server_crt, &pki.server_key, Some(&pki.ca))),
    );
    let out = check_config(&good);
    assert!(
        out.status.success(),
        "check-config of a good TLS configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ===========================================================================
// 5. Metrics.

/// After a known number of refusals and denials, `/metrics` shows exactly
/// them: `vmqtt_auth_refused_total{reason="bad_credentials"}` (wrong
/// password, unknown user), `{reason="not_authorized"}` (anonymous),
/// `vmqtt_acl_denied_total{action="publish"}` (PUBLISHes of any QoS and
/// version, and wills) and `{action="subscribe"}` (per filter).
#[tokio::test]
async fn metrics_count_refusals_and_denials() {
    let test = "metrics_count_refusals_and_denials";
    if skip_on_mosquitto(test, "vmqtt's metrics") {
        return;
    }
    let w = Work::new(test);
    let http = free_port();
    let b = acl_broker(
        test,
        &w,
        BrokerConfig {
            http_port: Some(http),
            ..Default::default()
        },
    );
    let port = b.port();
    // Spread over both shards.
    let (s0, s1) = ids_on_different_shards("metrics");
    // 3 bad credentials.
    for (v, id, user, pass) in [
        (V5P, &s0, "alice", "wrong"),
        (V311, &s1, "alice", "wrong"),
        (V5P, &s1, "nobody", "x"),
    ] {
        refused(port, connect_as(v, id, Some(user), Some(pass)), "bad").await;
    }
    // 2 not authorized (anonymous).
    for (v, id) in [(V5P, &s0), (V311, &s1)] {
        refused(port, connect_packet(v, id), "anonymous").await;
    }
    // Publish denials: 3 (v5 QoS 0, 1, 2) + 2 (3.1.1 QoS 1, 2) + 1 will = 6.
    let mut bob = login(port, V5P, &s0, "bob").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publish_rc(&mut bob, "sensors/m", "x", qos).await;
    }
    bob.ping().await;
    let mut bob3 = login(port, V311, &s1, "bob").await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publish_rc(&mut bob3, "sensors/m", "x", qos).await;
    }
    let mut c = connect_as(V5P, "metrics-will", Some("bob"), Some("bob-pw"));
    c.will = Some(will("sensors/will", "x", QoS::AtMostOnce, false));
    assert_eq!(refused(port, c, "will").await, 0x87);
    // Subscribe denials: 2 of 3 filters (v5) + 1 (3.1.1) = 3.
    assert_eq!(
        subscribe_many(&mut bob, &["sensors/#", "other/#", "#"]).await,
        vec![0x01, 0x87, 0x87]
    );
    assert_eq!(subscribe_rc(&mut bob3, "other/+").await, 0x80);

    expect_counters(
        http,
        &[
            ("vmqtt_auth_refused_total", "reason", "bad_credentials", 3),
            ("vmqtt_auth_refused_total", "reason", "not_authorized", 2),
            ("vmqtt_acl_denied_total", "action", "publish", 6),
            ("vmqtt_acl_denied_total", "action", "subscribe", 3),
        ],
    )
    .await;
}

/// The harness's own check: [`labelled`] reads the broker's series format.
#[test]
fn labelled_series_are_summed() {
    let body = "# TYPE vmqtt_acl_denied_total counter\n\
        vmqtt_acl_denied_total{shard=\"0\",action=\"publish\"} 2\n\
        vmqtt_acl_denied_total{shard=\"0\",action=\"subscribe\"} 7\n\
        vmqtt_acl_denied_total{shard=\"1\",action=\"publish\"} 3\n\
        vmqtt_acl_denied_total{shard=\"1\",action=\"subscribe\"} 0\n";
    assert_eq!(
        labelled(body, "vmqtt_acl_denied_total", "action", "publish"),
        (5, 2)
    );
    assert_eq!(
        labelled(body, "vmqtt_acl_denied_total", "action", "subscribe"),
        (7, 2)
    );
    assert_eq!(
        labelled(body, "vmqtt_acl_denied_total", "action", "other"),
        (0, 0)
    );
}

// ===========================================================================
// 6. Revoked rights: subscriptions re-checked against the ACL in force.

/// alice may read `a/#` and `b/#`; everyone may publish anywhere.
const ACL_AB: &str = "user alice\ntopic read a/#\ntopic read b/#\n\npattern write #\n";
/// The same without alice's `b/#`.
const ACL_A: &str = "user alice\ntopic read a/#\n\npattern write #\n";

/// A persistent session (v5, expiry one hour) of `user` (password
/// `{user}-pw`).
fn persistent_login(id: &str, user: &str) -> Connect {
    let password = format!("{user}-pw");
    let mut c = connect_as(V5P, id, Some(user), Some(&password));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// A broker with alice and pub (anonymous denied), the ACL `acl` and the
/// metrics endpoint on `http`.
fn revoke_broker(test: &str, w: &Work, acl: &str, http: u16) -> (Broker, PathBuf) {
    let pw = password_file(w, &[("alice", "alice-pw"), ("pub", "pub-pw")]);
    let acl_path = w.write("acl", acl);
    let b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_toml: auth_toml(Some("deny"), Some(&pw), Some(&acl_path)),
            ..Default::default()
        },
    );
    (b, acl_path)
}

/// Rewrites the ACL file to `acl`, sends SIGHUP and waits until the
/// reload is reported (`n`-th time): by then every shard applied it.
async fn reload_acl(b: &Broker, w: &Work, acl: &str, n: usize) {
    w.write("acl", acl);
    b.signal(libc::SIGHUP);
    let reloaded = "SIGHUP: reloaded, every shard applied it";
    eventually("the SIGHUP reload reported", WAIT, || {
        let done = b.log().matches(reloaded).count() >= n;
        async move { done.then_some(()) }
    })
    .await;
}

/// Publishes `a/<tag>` and `b/<tag>` (QoS 1) as `pub`.
async fn publish_ab(port: u16, tag: &str) {
    let mut p = login(port, V5P, &format!("revoke-pub-{tag}"), "pub").await;
    for t in [format!("a/{tag}"), format!("b/{tag}")] {
        // (0x00, or 0x10 once nobody subscribes to it any more.)
        assert_ne!(
            publish_rc(&mut p, &t, tag, QoS::AtLeastOnce).await,
            Some(NOT_AUTHORIZED),
            "{t}"
        );
    }
    p.disconnect().await;
}

/// The topics of the PUBLISHes `c` receives within `within` (acknowledged).
async fn topics_received(c: &mut Raw, within: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => {
                c.ack(&p).await;
                got.push(p.topic.as_str().to_owned());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

/// SIGHUP with an ACL that no longer lets alice read `b/#`: her existing
/// subscription is removed (logged, counted as revoked), she receives
/// nothing more on `b/`, still everything on `a/`.
#[tokio::test]
async fn revoked_subscription_stops_after_sighup() {
    let test = "revoked_subscription_stops_after_sighup";
    if skip_on_mosquitto(test, "vmqtt's ACL reload") {
        return;
    }
    let w = Work::new(test);
    let http = free_port();
    let (b, _) = revoke_broker(test, &w, ACL_AB, http);
    let port = b.port();
    let mut alice = accepted(port, persistent_login("revoke-alice", "alice")).await;
    assert_eq!(subscribe_many(&mut alice, &["a/#", "b/#"]).await, [1, 1]);
    publish_ab(port, "before").await;
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/before", "b/before"]
    );
    reload_acl(&b, &w, ACL_A, 1).await;
    publish_ab(port, "after").await;
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/after"],
        "nothing on b/ once the right is revoked"
    );
    assert!(
        b.log()
            .contains("subscription removed: the ACL no longer allows it")
            && b.log().contains("b/#"),
        "the removal is logged"
    );
    expect_counters(http, &[("vmqtt_acl_denied_total", "action", "revoked", 1)]).await;
    alice.disconnect().await;
}

/// alice's persistent session is offline when her right to `b/#` goes:
/// messages published meanwhile on `b/` are not delivered when she comes
/// back (session present), `a/` ones are, and new `b/` ones neither.
#[tokio::test]
async fn revoked_subscription_of_an_offline_session_is_removed_at_reconnect() {
    let test = "revoked_subscription_of_an_offline_session_is_removed_at_reconnect";
    if skip_on_mosquitto(test, "vmqtt's ACL reload") {
        return;
    }
    let w = Work::new(test);
    let http = free_port();
    let (b, _) = revoke_broker(test, &w, ACL_AB, http);
    let port = b.port();
    let mut alice = accepted(port, persistent_login("revoke-off", "alice")).await;
    assert_eq!(subscribe_many(&mut alice, &["a/#", "b/#"]).await, [1, 1]);
    alice.disconnect().await;
    reload_acl(&b, &w, ACL_A, 1).await;
    publish_ab(port, "away").await;
    let (mut alice, ack) = Raw::connect_ok(port, persistent_login("revoke-off", "alice")).await;
    assert!(ack.session_present);
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/away"],
        "what was queued for the revoked subscription is not delivered"
    );
    publish_ab(port, "later").await;
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/later"]
    );
    expect_counters(http, &[("vmqtt_acl_denied_total", "action", "revoked", 1)]).await;
    alice.disconnect().await;
}

/// The broker restarts with an ACL that no longer lets alice read `b/#`:
/// her stored subscription does not bring `b/` messages back.
#[tokio::test]
async fn revoked_subscription_stays_removed_after_a_restart() {
    let test = "revoked_subscription_stays_removed_after_a_restart";
    if skip_on_mosquitto(test, "vmqtt's persistence") {
        return;
    }
    let w = Work::new(test);
    let http = free_port();
    let (mut b, _) = revoke_broker(test, &w, ACL_AB, http);
    let port = b.port();
    let mut alice = accepted(port, persistent_login("revoke-rst", "alice")).await;
    assert_eq!(subscribe_many(&mut alice, &["a/#", "b/#"]).await, [1, 1]);
    alice.disconnect().await;
    b.stop_gracefully(Duration::from_secs(15));
    w.write("acl", ACL_A);
    b.restart();
    // Published before alice is back: queued for her session, but b/ is no
    // longer hers.
    publish_ab(port, "restarted").await;
    let (mut alice, ack) = Raw::connect_ok(port, persistent_login("revoke-rst", "alice")).await;
    assert!(ack.session_present);
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/restarted"]
    );
    publish_ab(port, "again").await;
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/again"]
    );
    alice.disconnect().await;
    // And it is gone from storage: after another restart, still nothing.
    b.stop_gracefully(Duration::from_secs(15));
    b.restart();
    let (mut alice, _) = Raw::connect_ok(port, persistent_login("revoke-rst", "alice")).await;
    publish_ab(port, "third").await;
    assert_eq!(
        topics_received(&mut alice, Duration::from_millis(800)).await,
        ["a/third"]
    );
    alice.disconnect().await;
}

// ===========================================================================
// 7. Login floods: throttling, the verifier pool, the credential cache.

/// A TCP connection to the broker from the loopback address `source`.
async fn tcp_from(port: u16, source: std::net::Ipv4Addr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind((source, 0).into())?;
    sock.connect(([127, 0, 0, 1], port).into()).await
}

/// One MQTT 3.1.1 login from `source`: the CONNACK's return code, or
/// `None` if the connection failed or closed without one within `within`.
async fn try_login(
    port: u16,
    source: std::net::Ipv4Addr,
    id: &str,
    user: &str,
    password: &str,
    within: Duration,
) -> Option<u8> {
    let mut s = tcp_from(port, source).await.ok()?;
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(connect_as(V311, id, Some(user), Some(password))))
        .encode(V311, &mut buf)
        .ok()?;
    s.write_all(&buf).await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(within, s.read_exact(&mut ack))
        .await
        .ok()?
        .ok()?;
    (ack[0] == 0x20).then_some(ack[3])
}

/// The value of the unlabelled or process-wide series `series` (e.g.
/// `vmqtt_auth_throttled_total{by="address"}`).
fn process_counter(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}:\n{body}"))
}

/// 600 attackers hammer wrong passwords from 127.0.0.2–127.0.0.7 (100
/// connections each, each reconnecting 50 ms after its answer, some of them
/// guessing alice's password): meanwhile real users still log in at once —
/// bob1..bob4 (never logged in before, so each is one argon2 check) from
/// 127.0.0.1, and alice, whose name is attacked, because her client logged
/// in before (the credential cache). The attackers get refusals without
/// their passwords being checked: argon2 runs a bounded number of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_does_not_lock_out_real_users() {
    let test = "login_flood_does_not_lock_out_real_users";
    if skip_on_mosquitto(test, "vmqtt's login throttle") {
        return;
    }
    crate::common::broker::raise_nofile_limit();
    let w = Work::new(test);
    let http = free_port();
    let users: Vec<(String, String)> = ["alice", "bob1", "bob2", "bob3", "bob4"]
        .iter()
        .map(|u| (u.to_string(), format!("{u}-pw")))
        .collect();
    let refs: Vec<(&str, &str)> = users.iter().map(|(u, p)| (&**u, &**p)).collect();
    let pw = password_file(&w, &refs);
    let b = Broker::start_with(
        test,
        BrokerConfig {
            http_port: Some(http),
            extra_toml: auth_toml(Some("deny"), Some(&pw), None),
            ..Default::default()
        },
    );
    let port = b.port();
    let me = std::net::Ipv4Addr::new(127, 0, 0, 1);
    // alice's device logged in before the flood.
    assert_eq!(
        try_login(port, me, "flood-alice", "alice", "alice-pw", WAIT).await,
        Some(0)
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        Option<u8>,
        u64,
    >::new()));
    let mut attackers = Vec::new();
    for i in 0..600u32 {
        let (stop, answers) = (stop.clone(), answers.clone());
        attackers.push(tokio::spawn(async move {
            let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 6) as u8);
            let user = if i % 4 == 0 {
                "alice".to_owned()
            } else {
                format!("admin{}", i % 10)
            };
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("atk-{i}-{n}");
                let rc =
                    try_login(port, source, &id, &user, "guess", Duration::from_secs(15)).await;
                *answers.lock().expect("not poisoned").entry(rc).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // Let the flood build up.
    sleep_ms(2000).await;
    let mut latencies = Vec::new();
    for user in ["bob1", "bob2", "bob3", "bob4"] {
        let started = Instant::now();
        let rc = try_login(
            port,
            me,
            &format!("flood-{user}"),
            user,
            &format!("{user}-pw"),
            WAIT,
        )
        .await;
        let took = started.elapsed();
        assert_eq!(rc, Some(0), "{user} logs in during the flood");
        latencies.push(took);
        sleep_ms(500).await;
    }
    let started = Instant::now();
    let rc = try_login(port, me, "flood-alice-2", "alice", "alice-pw", WAIT).await;
    let alice_took = started.elapsed();
    assert_eq!(rc, Some(0), "alice (attacked by name, cached) logs in");
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    let answers = answers.lock().expect("not poisoned").clone();
    let body = scrape(http);
    let argon2 = process_counter(&body, "vmqtt_auth_password_checks_total{how=\"argon2\"}");
    let by_address = process_counter(&body, "vmqtt_auth_throttled_total{by=\"address\"}");
    let by_user = process_counter(&body, "vmqtt_auth_throttled_total{by=\"user\"}");
    let attempts: u64 = answers.values().sum();
    eprintln!(
        "[{test}] cold logins during the flood: {latencies:?}; alice (cached): {alice_took:?}; \
         attacker answers by CONNACK code: {answers:?} ({attempts} attempts); \
         argon2 checks {argon2}; throttled by address {by_address}, by user {by_user}"
    );
    // The correctness bound is generous; the figures are in the output.
    for (user, took) in ["bob1", "bob2", "bob3", "bob4"].iter().zip(&latencies) {
        assert!(
            *took < Duration::from_secs(1),
            "{user}'s login took {took:?} during the flood"
        );
    }
    assert!(
        alice_took < Duration::from_secs(1),
        "alice took {alice_took:?}"
    );
    // Wrong guesses checked: at most ban_after_failures (10) per attacking
    // address and user name, plus the 6 real logins.
    assert!(argon2 <= 6 * 10 + 11 * 10 + 6, "argon2 ran {argon2} times");
    assert!(
        attempts > 1000,
        "the flood was a flood: {attempts} attempts"
    );
    assert!(
        by_address + by_user > attempts / 2,
        "most attempts refused unverified: {by_address} + {by_user} of {attempts}"
    );
    assert_eq!(answers.get(&Some(0)), None, "no attacker got in");
}

/// A reconnect storm of 200 password clients (one user name, the fleet
/// spread over 8 source addresses): the first wave costs argon2 checks, the
/// second is answered from the credential cache — no argon2 at all. With
/// `credential_cache_size = 0` the second wave hashes again (the figures of
/// both are printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_served_from_the_credential_cache() {
    let test = "reconnect_storm_is_served_from_the_credential_cache";
    if skip_on_mosquitto(test, "vmqtt's credential cache") {
        return;
    }
    crate::common::broker::raise_nofile_limit();
    let w = Work::new(test);
    let pw = password_file(&w, &[("fleet", "fleet-pw")]);
    const N: u32 = 200;
    /// Connects N clients at once; returns how long until every CONNACK.
    async fn wave(port: u16, tag: &str) -> Duration {
        let started = Instant::now();
        let clients: Vec<_> = (0..N)
            .map(|i| {
                let source = std::net::Ipv4Addr::new(127, 0, 0, 10 + (i % 8) as u8);
                let id = format!("storm-{tag}-{i}");
                tokio::spawn(async move {
                    try_login(
                        port,
                        source,
                        &id,
                        "fleet",
                        "fleet-pw",
                        Duration::from_secs(20),
                    )
                    .await
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.await.expect("joined"), Some(0), "every client gets in");
        }
        started.elapsed()
    }
    let mut figures = Vec::new();
    for cache in [true, false] {
        let http = free_port();
        let mut auth = auth_toml(Some("deny"), Some(&pw), None);
        if !cache {
            auth.push_str("credential_cache_size = 0\n");
        }
        let name = format!("{test}-{}", if cache { "cache" } else { "nocache" });
        let mut b = Broker::start_with(
            &name,
            BrokerConfig {
                http_port: Some(http),
                extra_toml: auth,
                ..Default::default()
            },
        );
        let port = b.port();
        let first = wave(port, "1").await;
        let after_first = process_counter(
            &scrape(http),
            "vmqtt_auth_password_checks_total{how=\"argon2\"}",
        );
        let second = wave(port, "2").await;
        let body = scrape(http);
        let argon2 = process_counter(&body, "vmqtt_auth_password_checks_total{how=\"argon2\"}");
        let hits = process_counter(&body, "vmqtt_auth_password_checks_total{how=\"cache\"}");
        figures.push(format!(
            "cache {cache}: wave 1 {first:?} ({after_first} argon2), wave 2 {second:?} \
             ({} argon2, {hits} cache hits)",
            argon2 - after_first
        ));
        if cache {
            assert!(after_first >= 1 && after_first <= u64::from(N));
            assert_eq!(argon2, after_first, "the second wave hashes nothing");
            assert!(hits >= u64::from(N), "{hits} cache hits");
        } else {
            assert_eq!(hits, 0);
            assert_eq!(
                argon2,
                2 * u64::from(N),
                "without a cache every login hashes"
            );
        }
        b.terminate(Duration::from_secs(15));
    }
    eprintln!("[{test}] {N} clients: {}", figures.join("; "));
}
