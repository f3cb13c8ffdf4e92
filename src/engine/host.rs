//! Process-wide resources `lior serve` claims at start-up, before any shard runs: the data
//! directory's lock file, the file-descriptor limit, and the check that no other process already
//! listens on an address lior is about to share through `SO_REUSEPORT`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::sockets;

/// The lock file's name inside the data directory.
pub const LOCK_FILE_NAME: &str = "lior.lock";

/// An exclusive `flock` on `<data_dir>/lior.lock`, holding this process's pid. The kernel
/// releases it when the process ends, however it ends (`kill -9` included), so a stale file
/// never blocks a restart.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the data directory's lock or says who holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        )
    })?;
    let path = data_dir.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    // SAFETY: flock(2) takes no pointers; the descriptor belongs to `file`, alive for the call.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text.trim();
            let holder = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("pid {holder}")
            };
            return Err(format!(
                "the data directory {} is in use by {holder} (lock file {}); stop that \
                 `lior serve` or choose another --data-dir",
                data_dir.display(),
                path.display()
            ));
        }
        return Err(format!("cannot lock {}: {err}", path.display()));
    }
    let pid = std::process::id();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .and_then(|()| file.flush());
    if let Err(e) = written {
        return Err(format!("cannot write the pid to {}: {e}", path.display()));
    }
    Ok(DataDirLock { _file: file, path })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a local the kernel fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a local the kernel reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                error = %io::Error::last_os_error(),
                "cannot raise the open-file limit to the hard limit"
            );
        }
    }
    Ok(lim.rlim_cur)
}

/// Fails when any socket already listens on `addr` (or on an address covering it, such as
/// 0.0.0.0 with the same port). lior's shards share their port through `SO_REUSEPORT`, which the
/// kernel also grants to any other process of the same user: without this check a second
/// `lior serve` would start on the same address and silently take a share of the connections.
///
/// The probe binds a socket with `SO_REUSEADDR` but without `SO_REUSEPORT`: that fails with
/// EADDRINUSE when a socket is listening there, and also when connections of an earlier run are
/// still closing on the port (a restart after `kill -9`); the kernel's socket tables tell the two
/// apart ([`listening_on`]). Port 0 is skipped (the kernel picks a free port). Another lior
/// started in the same instant cannot slip between this check and the bind: the engine first
/// takes [`claim_address`].
pub fn ensure_no_listener(addr: SocketAddr, what: &str) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + ORPHAN_LISTENER_WAIT;
    loop {
        match sockets::probe_bind(addr) {
            Ok(()) => return Ok(()),
            // The probe also collides with the last instance's connections still closing on
            // that port (FIN_WAIT, TIME_WAIT after a kill -9): only a socket in LISTEN state is
            // a server.
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && !listening_on(addr) => {
                return Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                let holders = listeners_of_port(addr.port());
                // A listener no process holds is the last instance's, killed a moment ago: the
                // kernel tears its io_uring (which references the socket) down after the process
                // is gone. It disappears on its own; a live server never looks like that to root.
                if holders.is_empty() && std::time::Instant::now() < deadline {
                    tracing::debug!(%addr, "a listener no process holds is on the address; waiting for it to close");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                let who = if holders.is_empty() {
                    "another process (not visible to this user)".to_string()
                } else {
                    holders
                        .iter()
                        .map(|(pid, comm)| format!("pid {pid} ({comm})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(format!(
                    "the {what} address {addr} is already in use by {who}; stop that server or \
                     choose another address"
                ));
            }
            // Any other refusal (a privileged port, an address not of this machine) is reported
            // by the real bind, with its remedy.
            Err(_) => return Ok(()),
        }
    }
}

/// How long [`ensure_no_listener`] waits for a listening socket that no process holds (the
/// previous instance's, still being torn down) to go away before it reports the address in use.
pub const ORPHAN_LISTENER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Claims `addr` for this process until the returned socket is dropped: binds the abstract Unix
/// socket `lior-listen-<addr>`, which the kernel grants to one socket at a time in a network
/// namespace and releases when the process ends. Two lior processes started in the same instant
/// on the same address cannot then both pass [`ensure_no_listener`] and share the port.
pub fn claim_address(addr: SocketAddr) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("lior-listen-{addr}");
    let unix = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("cannot name the claim of {addr}: {e}"))?;
    std::os::unix::net::UnixListener::bind_addr(&unix).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!(
                "the listen address {addr} is being claimed by another lior process; stop \
                 that server or choose another address"
            )
        } else {
            format!("cannot claim the listen address {addr}: {e}")
        }
    })
}

/// Processes (pid, command name) holding a listening TCP socket on `port`, as far as /proc shows
/// them to this user. Best effort, for error messages only.
/// Whether the kernel's socket tables hold a TCP socket in LISTEN state that a bind of `addr`
/// would collide with: same port, and the same IPv4 address or a wildcard on either side (IPv6
/// listeners are matched by port).
pub fn listening_on(addr: SocketAddr) -> bool {
    for (table, v4) in [("/proc/net/tcp", true), ("/proc/net/tcp6", false)] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            let Some((ip_hex, port_hex)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
                continue;
            }
            let same_ip = match (v4, addr.ip()) {
                // The kernel prints the address as the native-endian u32 of its network bytes.
                (true, std::net::IpAddr::V4(want)) => u32::from_str_radix(ip_hex, 16)
                    .map(|raw| std::net::Ipv4Addr::from(raw.to_ne_bytes()))
                    .is_ok_and(|have| {
                        have == want || have.is_unspecified() || want.is_unspecified()
                    }),
                (true, std::net::IpAddr::V6(_)) => true,
                (false, _) => true,
            };
            if same_ip {
                return true;
            }
        }
    }
    false
}

pub fn listeners_of_port(port: u16) -> Vec<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let p = f[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    let mut out = Vec::new();
    if inodes.is_empty() {
        return out;
    }
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
                .and_then(|l| l.to_str().map(|s| inodes.iter().any(|i| i == s)))
                .unwrap_or(false)
        });
        if holds && !out.iter().any(|(q, _)| *q == pid) {
            let comm = std::fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push((pid, comm));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_socket_counts_as_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert!(listening_on(a));
        assert!(listening_on(SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            a.port()
        )));
        // A connection accepted from the listener stays on the port once the listener is gone.
        let c = std::net::TcpStream::connect(a).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(l);
        assert!(!listening_on(a));
        assert!(ensure_no_listener(a, "test").is_ok());
        drop((c, s));
    }

    #[test]
    fn a_second_lock_names_the_holder_and_a_listener_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).unwrap_err();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains(LOCK_FILE_NAME), "{e}");
        drop(first);
        lock_data_dir(dir.path()).unwrap();

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let claim = claim_address(l.local_addr().unwrap()).unwrap();
        assert!(claim_address(l.local_addr().unwrap()).is_err());
        drop(claim);
        let addr = l.local_addr().unwrap();
        let e = ensure_no_listener(addr, "test").unwrap_err();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(l);
        ensure_no_listener(addr, "test").unwrap();
    }
}

/// The file-descriptor budget of each door, from RLIMIT_NOFILE at start-up: a full door
/// refuses new connections instead of taking the descriptors the other doors (and the store)
/// need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft RLIMIT_NOFILE the split started from.
    pub nofile: usize,
    /// MS-MQQB connections per shard (incoming and outgoing).
    pub mqqb_per_shard: usize,
    /// SRMP connections in all.
    pub srmp: usize,
    /// Local API connections in all.
    pub api: usize,
}

impl FdBudget {
    /// Splits `nofile - reserve` descriptors (the reserve at most a quarter of `nofile`): 70% MS-MQQB, 20% SRMP, 10% the API (90% MS-MQQB
    /// when SRMP is off), each capped by its configured maximum and at least a few, so even a
    /// tiny limit leaves every door usable.
    pub fn split(
        nofile: usize,
        reserve: usize,
        shards: usize,
        srmp_on: bool,
        mqqb_per_shard_max: usize,
        srmp_max: usize,
        api_max: usize,
    ) -> FdBudget {
        // A small limit still leaves three quarters to the doors.
        let spare = nofile.saturating_sub(reserve.min(nofile / 4)).max(64);
        let (mqqb, srmp) = if srmp_on {
            (spare * 7 / 10, spare * 2 / 10)
        } else {
            (spare * 9 / 10, 0)
        };
        let api = spare / 10;
        let shards = shards.max(1);
        FdBudget {
            nofile,
            mqqb_per_shard: (mqqb / shards).clamp(4, mqqb_per_shard_max.max(4)),
            srmp: srmp.clamp(4, srmp_max.max(4)),
            api: api.clamp(4, api_max.max(4)),
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::FdBudget;

    #[test]
    fn the_split_leaves_every_door_a_share() {
        let b = FdBudget::split(20_000, 1_024, 2, true, 4_096, 4_096, 256);
        assert_eq!(b.mqqb_per_shard, 4_096);
        assert_eq!(b.srmp, 3_795);
        assert_eq!(b.api, 256);
        let b = FdBudget::split(1_024, 1_024, 2, true, 4_096, 4_096, 256);
        assert_eq!((b.mqqb_per_shard, b.srmp, b.api), (268, 153, 76));
        assert!(2 * b.mqqb_per_shard + b.srmp + b.api < 1_024);
    }
}
