//! Thin libc wrappers the engine needs around sockets, eventfds, clocks and CPU affinity; this
//! module makes no scheduling or protocol decision and never blocks on the network.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A socket address in the form the kernel reads, kept on the heap by its owner while an
/// operation that points at it is in flight.
pub(crate) struct RawSockAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl RawSockAddr {
    /// Encodes `addr` as a `sockaddr_in` or `sockaddr_in6`.
    pub(crate) fn from_socket_addr(addr: SocketAddr) -> RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in;
                // the write stays inside `storage`, which this frame owns.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: as above, sockaddr_storage is large and aligned enough for sockaddr_in6.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Decodes an IPv4 or IPv6 address; other families give None.
    pub(crate) fn to_socket_addr(&self) -> Option<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in, and the kernel wrote at
                // least that many bytes; the read stays inside `self.storage`.
                let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above for sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn family(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// Opens a close-on-exec TCP socket of the family of `addr`.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the returned descriptor is owned by the OwnedFd.
    let fd = cvt(unsafe { libc::socket(family(addr), libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at a local c_int that outlives the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Opens a listening socket on `addr` with SO_REUSEADDR and SO_REUSEPORT, so that every shard can
/// bind its own socket to the same address and the kernel spreads incoming connections.
pub(crate) fn listen_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<OwnedFd> {
    let fd = tcp_socket(&addr)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let raw = RawSockAddr::from_socket_addr(addr);
    // SAFETY: `raw` is a valid sockaddr of `raw.len` bytes living on this frame for the call.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) })?;
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen(2) takes no pointers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Binds (and closes) a socket on `addr` with `SO_REUSEADDR` but without `SO_REUSEPORT`: it
/// fails with EADDRINUSE when any other socket is bound or listening there, even one that set
/// `SO_REUSEPORT` itself (see `host::ensure_no_listener`).
pub(crate) fn probe_bind(addr: SocketAddr) -> io::Result<()> {
    let fd = tcp_socket(&addr)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let raw = RawSockAddr::from_socket_addr(addr);
    // SAFETY: `raw` is a valid sockaddr of `raw.len` bytes living on this frame for the call.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) }).map(drop)
}

/// The address a socket is bound to.
pub(crate) fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, false)
}

/// The address of the peer of a connected socket.
pub(crate) fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, true)
}

fn name_of(fd: RawFd, peer: bool) -> io::Result<SocketAddr> {
    let mut raw = RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        storage: unsafe { mem::zeroed() },
        len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    let ptr = &mut raw.storage as *mut _ as *mut libc::sockaddr;
    // SAFETY: `raw` lives on this frame for the call and `raw.len` is its true size; the kernel
    // writes at most that many bytes.
    let ret = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut raw.len)
        } else {
            libc::getsockname(fd, ptr, &mut raw.len)
        }
    };
    cvt(ret)?;
    raw.to_socket_addr()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"))
}

/// Disables Nagle's algorithm: the app batches its own transmits once per loop turn, so the
/// kernel holding small segments back only adds latency.
pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Opens a close-on-exec eventfd with a zero counter. It is blocking on purpose: io_uring
/// answers a read of a non-blocking file with EAGAIN instead of waiting for it to become
/// readable, and the shard's wake-up read must wait.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; the descriptor is owned by the OwnedFd.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by eventfd(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter. A counter this close to overflow (EAGAIN) already means
/// "woken", so it is not an error; any other failure is returned.
pub(crate) fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: the source is a local u64 that outlives the call; write(2) on an eventfd reads
    // exactly 8 bytes.
    let ret = unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    if ret == 8 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Monotonic milliseconds since an arbitrary start (CLOCK_MONOTONIC): never goes backwards and
/// does not jump with wall-clock changes. The engine reads it once per loop turn.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a local the kernel fills; CLOCK_MONOTONIC always exists on Linux, so the
    // call cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The CPUs this process may run on, in ascending order (respects cgroup and taskset limits,
/// unlike counting the CPUs the machine has).
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a local of the size passed; the kernel writes at most that many bytes.
    cvt(unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) })?;
    let max = 8 * mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads inside `set` for every index below its bit size.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let max = 8 * mem::size_of::<libc::cpu_set_t>();
    if cpu >= max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu index beyond cpu_set_t",
        ));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `cpu` was checked to be inside the set above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a local of the size passed; pid 0 means the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// Shuts down both directions of a socket. Any receive or send the kernel still has in flight
/// on it then completes promptly, which bounds how long a closing slot waits for completions.
pub(crate) fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown(2) takes no pointers. ENOTCONN (never connected, already reset) is the
    // only expected failure and changes nothing, so the result is ignored on purpose.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
