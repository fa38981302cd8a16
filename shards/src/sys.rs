//! The broker's own operating-system settings: signals, listening sockets
//! (binding them, ending them at shutdown, and who holds an address), file
//! locks. The facts it shares with the load generator (the CPUs this process
//! may run on, file-descriptor and locked-memory limits) are `vmqtt-os`'s,
//! re-exported here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

pub use vmqtt_os::{allowed_cpus, memlock_limit, raise_nofile_limit};

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads
/// it spawns afterwards), so that [`wait_for_signal`] receives them.
pub fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: `set` is initialised by sigemptyset before use, and every
    // pointer passed refers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits for one of the signals in `set` and returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> io::Result<i32> {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was built by `block_signals`; `sig` is a valid out-pointer.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Whether something already accepts TCP connections on `addr` (a wildcard
/// address is probed on loopback).
pub fn accepts_connections(addr: SocketAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let probe = SocketAddr::new(ip, addr.port());
    std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(200)).is_ok()
}

/// A listening TCP socket on `addr` with `SO_REUSEPORT` (what glommio's
/// `TcpListener::bind` makes, so that every shard binds the address), and a
/// second descriptor of the same socket, for [`stop_listening`] at
/// shutdown. Both close on exec.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<(OwnedFd, OwnedFd)> {
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sin` is a valid sockaddr_in of the size passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&sin).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sin6` is a valid sockaddr_in6 of the size passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&sin6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on the socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let keep = fd.try_clone()?;
    Ok((fd, keep))
}

/// Ends a listening socket at once (`shutdown(2)`): it stops accepting,
/// new connections are refused, and a pending accept (an io_uring request
/// holding the socket) completes with an error. Unlike closing the
/// descriptor, this does not wait for io_uring to let go of the socket,
/// which happens asynchronously and can outlive the process.
pub fn stop_listening(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor we own; an error (already shut
    // down) is harmless.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// A process that has a listening socket open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its name (`/proc/PID/comm`).
    pub name: String,
}

/// Parses an address of `/proc/net/tcp{,6}` (`0100007F:075B`).
fn proc_net_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_le_bytes);
    match ip.len() {
        8 => Some(SocketAddr::from((word(ip)?, port))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            Some(SocketAddr::from((b, port)))
        }
        _ => None,
    }
}

/// Whether a socket listening on `local` takes connections meant for
/// `addr`: same port, and the same address or either one a wildcard (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
fn overlaps(local: SocketAddr, addr: SocketAddr) -> bool {
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canon(local.ip()), canon(addr.ip()));
    local.port() == addr.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// The inodes of the TCP sockets listening where `addr` would (from
/// `/proc/net/tcp` and `/proc/net/tcp6`, of this network namespace).
pub fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    listening_inodes_in(&["/proc/net/tcp", "/proc/net/tcp6"], addr)
}

fn listening_inodes_in(tables: &[&str], addr: SocketAddr) -> Vec<u64> {
    let mut out = Vec::new();
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(&"0A"), Some(inode)) = (
                f.get(1).and_then(|l| proc_net_addr(l)),
                f.get(3),
                f.get(9).and_then(|i| i.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if overlaps(local, addr) && inode != 0 {
                out.push(inode);
            }
        }
    }
    out
}

/// The processes that have one of the sockets `inodes` open (a scan of
/// `/proc/*/fd`; processes that cannot be read are skipped).
pub fn socket_holders(inodes: &[u64]) -> Vec<Holder> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| l.to_str().map(|l| wanted.iter().any(|w| w == l)))
                .unwrap_or(false)
        });
        if holds {
            let name = std::fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| "?".to_owned());
            out.push(Holder { pid, name });
        }
    }
    out
}

/// Why an address cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum InUse {
    /// A running process listens there.
    #[error("address already in use by {}", describe(.0))]
    Process(Vec<Holder>),
    /// Something still accepts there after the wait, and no process holds
    /// it: a socket of an exited process that the kernel has not closed.
    #[error(
        "address still in use {0:?} after waiting, by no running process (a socket of an exited \
         process that the kernel has not closed yet)"
    )]
    Lingering(Duration),
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| format!("pid {} ({})", h.pid, h.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes sure nothing else accepts connections on `addr` before the shards
/// bind it (with `SO_REUSEPORT` they would share it with another process of
/// the same user). A running process that listens there is an error naming
/// it, at once; a socket no process holds (a process that just exited,
/// whose io_uring the kernel is still tearing down) is waited for, up to
/// `bound`. Returns how long it waited.
pub fn wait_until_free(addr: SocketAddr, bound: Duration) -> Result<Duration, InUse> {
    let start = Instant::now();
    loop {
        if !accepts_connections(addr) {
            return Ok(start.elapsed());
        }
        let me = std::process::id();
        let holders: Vec<Holder> = socket_holders(&listening_inodes(addr))
            .into_iter()
            .filter(|h| h.pid != me)
            .collect();
        if !holders.is_empty() {
            return Err(InUse::Process(holders));
        }
        if start.elapsed() >= bound {
            return Err(InUse::Lingering(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process holding a POSIX write lock on `file` (RocksDB's `LOCK` in a
/// data directory, held while a database is open), if any; `None` also if
/// the file does not exist. Asks without taking the lock.
pub fn lock_holder(file: &Path) -> io::Result<Option<u32>> {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: `flock` is plain data; zeroed is a valid value to fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_GETLK with a valid descriptor and a pointer to `fl`.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            proc_net_addr("0100007F:075B"),
            Some("127.0.0.1:1883".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("00000000:0050"),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("00000000000000000000000001000000:075B"),
            Some("[::1]:1883".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("0000000000000000FFFF00000100007F:075B"),
            Some("[::ffff:127.0.0.1]:1883".parse().unwrap())
        );
        assert_eq!(proc_net_addr("zz:1"), None);
    }

    #[test]
    fn wildcards_and_mapped_addresses_overlap() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:1883"), a("127.0.0.1:1883")));
        assert!(overlaps(a("127.0.0.1:1883"), a("0.0.0.0:1883")));
        assert!(overlaps(a("[::]:1883"), a("127.0.0.1:1883")));
        assert!(overlaps(a("[::ffff:127.0.0.1]:1883"), a("127.0.0.1:1883")));
        assert!(!overlaps(a("127.0.0.2:1883"), a("127.0.0.1:1883")));
        assert!(!overlaps(a("127.0.0.1:1884"), a("127.0.0.1:1883")));
    }

    #[test]
    fn a_listener_is_found_with_its_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inodes = listening_inodes(addr);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let holders = socket_holders(&inodes);
        assert_eq!(
            holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
            [std::process::id()]
        );
        drop(l);
        assert!(listening_inodes(addr).is_empty());
    }

    #[test]
    fn a_stopped_listener_refuses_at_once() {
        let (fd, keep) = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = std::net::TcpListener::from(fd);
        let addr = l.local_addr().unwrap();
        assert!(accepts_connections(addr));
        stop_listening(&keep);
        // The descriptors are still open, but the socket no longer listens.
        assert!(!accepts_connections(addr));
        assert!(listening_inodes(addr).is_empty());
        assert!(wait_until_free(addr, Duration::ZERO).is_ok());
    }

    #[test]
    fn a_foreign_listener_is_named_without_waiting() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Our own process is skipped (it never competes with itself), so a
        // child holds the socket: python, with the descriptor inherited.
        let fd = l.as_raw_fd();
        // SAFETY: clears FD_CLOEXEC on a descriptor we own, so the child
        // inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(30)"])
            .spawn()
            .unwrap();
        let start = Instant::now();
        let err = wait_until_free(addr, Duration::from_secs(10)).unwrap_err();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no wait for a live process"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("address already in use by pid {} (", child.id())),
            "{msg}"
        );
    }

    #[test]
    fn lock_holders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("LOCK");
        assert_eq!(lock_holder(&file).unwrap(), None);
        std::fs::write(&file, b"").unwrap();
        assert_eq!(lock_holder(&file).unwrap(), None);
        // A child holds a POSIX lock on it, as RocksDB does.
        let script = format!(
            "import fcntl, sys, time\nf = open({:?}, 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\ntime.sleep(30)\n",
            file.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let held = lock_holder(&file).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(line.trim(), "locked");
        assert_eq!(held, Some(child.id()));
    }
}
