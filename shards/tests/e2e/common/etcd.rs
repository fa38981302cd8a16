//! A real etcd (Debian `etcd-server`) for the cluster tests: one process
//! per test on free loopback ports with a temporary data directory, killed
//! and removed on drop. `scripts/install-test-deps.sh` installs it.

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

/// One etcd server.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Its client URL.
    pub url: String,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd in a fresh directory under `dir` and waits until it
    /// serves clients.
    pub fn start(dir: &Path) -> Etcd {
        assert!(
            have_etcd(),
            "etcd is not installed (Debian: etcd-server; run scripts/install-test-deps.sh)"
        );
        let data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(dir).expect("etcd dir");
        let client = super::http::free_port();
        let peer = super::http::free_port();
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.join("etcd.log");
        let out = std::fs::File::create(&log).expect("etcd log");
        let child = Command::new(etcd_path())
            .arg("--name=e2e")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn etcd");
        let mut e = Etcd {
            child: Some(child),
            dir: dir.to_path_buf(),
            url,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            if let Some(c) = e.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("etcd exited with {st}:\n{}", e.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not serve within 20 s:\n{}",
                e.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// etcd's own log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- etcd log -----\n{}\n-----", self.log_text());
        }
        let _ = std::fs::remove_dir_all(self.dir.join("etcd-data"));
    }
}
