//! A real etcd (Debian `etcd-server`) for the cluster tests: one server or
//! a cluster of several per test, on free loopback ports with a temporary
//! data directory, killed and removed on drop.
//! `scripts/install-test-deps.sh` installs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `etcd` binary: `ETCD` or the one on `PATH`.
fn etcd_path() -> String {
    std::env::var("ETCD").unwrap_or_else(|_| "etcd".into())
}

/// Whether etcd can be run here.
pub fn have_etcd() -> bool {
    Command::new(etcd_path())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `n` consecutive ports free on 127.0.0.1 (a node's peer port and its
/// shards' ports after it).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if base > 65000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// `GET /metrics` of an etcd member, or `None` if it does not answer.
fn metrics(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// One etcd server process.
struct Member {
    child: Option<Child>,
    client: u16,
    log: PathBuf,
}

/// An etcd of one or more members.
pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    /// The first member's client URL.
    pub url: String,
    /// Every member's client URL.
    pub urls: Vec<String>,
}

impl Etcd {
    /// One etcd server in a fresh directory under `dir`, serving clients.
    pub fn start(dir: &Path) -> Etcd {
        Etcd::start_members(dir, 1)
    }

    /// An etcd cluster of `n` members, serving clients (a leader elected).
    pub fn start_members(dir: &Path, n: usize) -> Etcd {
        Etcd::start_members_on(dir, n, None)
    }

    /// [`Etcd::start_members`], serving clients also on `host` (an address
    /// of a test's own network) and telling them that address.
    pub fn start_members_on(dir: &Path, n: usize, host: Option<std::net::Ipv4Addr>) -> Etcd {
        assert!(
            have_etcd(),
            "etcd is not installed (Debian: etcd-server; run scripts/install-test-deps.sh)"
        );
        std::fs::create_dir_all(dir).expect("etcd dir");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (super::http::free_port(), super::http::free_port()))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.join(format!("etcd-data-{i}"));
            let _ = std::fs::remove_dir_all(&data);
            let url = format!("http://127.0.0.1:{client}");
            let (listen, url) = match host {
                Some(h) => (
                    format!("{url},http://{h}:{client}"),
                    format!("http://{h}:{client}"),
                ),
                None => (url.clone(), url),
            };
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.join(format!("etcd-{i}.log"));
            let out = std::fs::File::create(&log).expect("etcd log");
            let child = Command::new(etcd_path())
                .arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={listen}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out)
                .spawn()
                .expect("spawn etcd");
            members.push(Member {
                child: Some(child),
                client: *client,
                log,
            });
        }
        let host = host.map_or("127.0.0.1".to_owned(), |h| h.to_string());
        let urls: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("http://{host}:{c}"))
            .collect();
        let mut e = Etcd {
            members,
            dir: dir.to_path_buf(),
            url: urls[0].clone(),
            urls,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..n {
            while TcpStream::connect(("127.0.0.1", e.members[i].client)).is_err() {
                if let Some(c) = e.members[i].child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!("etcd member {i} exited with {st}:\n{}", e.log_text());
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd did not serve within 30 s:\n{}",
                    e.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        while e.leader().is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd elected no leader:\n{}",
                e.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// The member that is the leader now (`etcd_server_is_leader 1` in its
    /// metrics), if one is.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && metrics(m.client)
                    .is_some_and(|b| b.lines().any(|l| l == "etcd_server_is_leader 1"))
        })
    }

    /// Kills every member (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The members' own logs.
    pub fn log_text(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "--- etcd member {i} ---\n{}",
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- etcd log -----\n{}\n-----", self.log_text());
        }
        for i in 0..self.members.len() {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("etcd-data-{i}")));
        }
    }
}
