//! A minimal io_uring wrapper for file IO: one ring per thread, probed at start-up.
//!
//! It owns the ring and the encoding of `user_data`; it must not own buffers (the caller keeps
//! every buffer alive until its completion arrives) nor make storage or protocol decisions.

use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::fmt;
use std::os::fd::RawFd;

/// Submission queue entries per ring. The store needs at most four per batch (write + sync for
/// at most two segments); the network engine will size this up.
pub const RING_ENTRIES: u32 = 64;

/// What an operation was, encoded in the top byte of `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// A store log write.
    StoreWrite = 1,
    /// A store log fdatasync.
    StoreSync = 2,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        match v {
            1 => Some(OpKind::StoreWrite),
            2 => Some(OpKind::StoreSync),
            _ => None,
        }
    }
}

/// `user_data` layout: `kind:8 | generation:24 | slot:32`. The generation lets a completion for
/// a slot that has since been reused be recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData(pub u64);

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = 0x00FF_FFFF;

impl UserData {
    /// Encode an operation.
    pub fn new(kind: OpKind, slot: u32, generation: u32) -> UserData {
        UserData(
            ((kind as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | slot as u64,
        )
    }
    /// The operation kind, or `None` for a value this build never encodes.
    pub fn kind(self) -> Option<OpKind> {
        OpKind::from_u8((self.0 >> 56) as u8)
    }
    /// The slot index.
    pub fn slot(self) -> u32 {
        self.0 as u32
    }
    /// The slot generation (24 bits).
    pub fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & GENERATION_MASK
    }
}

/// One completion: whose it is and the kernel's result (`>= 0` success, `< 0` is `-errno`).
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The operation this completes.
    pub user_data: UserData,
    /// Bytes written, 0, or `-errno`.
    pub result: i32,
}

/// Why a ring could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// `io_uring_setup` failed (errno). Usually seccomp, `kernel.io_uring_disabled` or memlock.
    Setup(i32),
    /// The kernel lacks an opcode we need.
    Unsupported(&'static str),
    /// The submission queue is full: submit before pushing more.
    SubmissionFull,
    /// `io_uring_enter` failed with an errno we do not retry.
    Enter(i32),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Setup(errno) => write!(
                f,
                "io_uring is not available (io_uring_setup: {}). Likely causes: a seccomp \
                 profile that blocks io_uring (Docker/containerd default profiles do), \
                 sysctl kernel.io_uring_disabled set to 1 or 2, or RLIMIT_MEMLOCK too low for \
                 the ring (raise `ulimit -l`)",
                std::io::Error::from_raw_os_error(*errno)
            ),
            RingError::Unsupported(op) => {
                write!(
                    f,
                    "io_uring on this kernel does not support {op}; lior needs Linux 5.6+"
                )
            }
            RingError::SubmissionFull => write!(f, "io_uring submission queue full"),
            RingError::Enter(errno) => write!(
                f,
                "io_uring_enter failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// What to do about an errno returned by a file write or sync. Every errno gets a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileErrnoDecision {
    /// Submit the same operation again (nothing happened): EINTR, EAGAIN.
    Resubmit,
    /// The disk or quota is full: a clear, recoverable operating error (ENOSPC, EDQUOT).
    DiskFull,
    /// The operation was cancelled because an earlier linked one failed or was short; the
    /// earlier one's completion carries the real decision.
    LinkCancelled,
    /// Anything else (EIO, EBADF, EINVAL, EFBIG, EROFS, ...): the file's state is unknown, so the
    /// log is poisoned. Never retried (a failed fsync may have dropped dirty pages).
    Poison,
}

/// The errno decision table for file writes and syncs.
pub fn classify_file_errno(errno: i32) -> FileErrnoDecision {
    match errno {
        libc::EINTR | libc::EAGAIN => FileErrnoDecision::Resubmit,
        libc::ENOSPC | libc::EDQUOT => FileErrnoDecision::DiskFull,
        libc::ECANCELED => FileErrnoDecision::LinkCancelled,
        _ => FileErrnoDecision::Poison,
    }
}

/// One io_uring, owned by one thread.
pub struct Ring {
    ring: IoUring,
    in_flight: u32,
}

impl Ring {
    /// Create and probe a ring. Fails with a message naming the likely cause.
    pub fn new(entries: u32) -> Result<Ring, RingError> {
        let ring = IoUring::new(entries)
            .map_err(|e| RingError::Setup(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|_| RingError::Unsupported("IORING_REGISTER_PROBE"))?;
        if !probe.is_supported(opcode::Write::CODE) {
            return Err(RingError::Unsupported("IORING_OP_WRITE"));
        }
        if !probe.is_supported(opcode::Fsync::CODE) {
            return Err(RingError::Unsupported("IORING_OP_FSYNC"));
        }
        Ok(Ring { ring, in_flight: 0 })
    }

    /// Signal eventfd `fd` whenever a completion is posted to this ring (so another thread's
    /// loop, reading that eventfd on its own ring, wakes when this ring has work done). The
    /// kernel keeps its own reference to the eventfd: closing `fd` later is safe.
    pub fn register_eventfd(&self, fd: RawFd) -> Result<(), RingError> {
        self.ring
            .submitter()
            .register_eventfd(fd)
            .map_err(|e| RingError::Enter(e.raw_os_error().unwrap_or(libc::EINVAL)))
    }

    /// Operations submitted whose completion has not been drained yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Queue a positioned write. `link` makes the next pushed operation wait for this one and be
    /// cancelled if this one fails or is short.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this operation's completion is
    /// drained, and `fd` must stay open until then.
    pub unsafe fn push_write(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
        user_data: UserData,
        link: bool,
    ) -> Result<(), RingError> {
        let mut e = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .user_data(user_data.0);
        // ASYNC: the copy into the page cache runs on an io-wq worker (the other core) instead
        // of inline in io_uring_enter, so the shard keeps staging records meanwhile.
        let mut flags = squeue::Flags::ASYNC;
        if link {
            flags |= squeue::Flags::IO_LINK;
        }
        e = e.flags(flags);
        // SAFETY: the caller guarantees the buffer and fd outlive the operation (see above).
        unsafe { self.ring.submission().push(&e) }.map_err(|_| RingError::SubmissionFull)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Queue an fdatasync of `fd`.
    pub fn push_fdatasync(
        &mut self,
        fd: RawFd,
        user_data: UserData,
        link: bool,
    ) -> Result<(), RingError> {
        let mut e = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data.0);
        if link {
            e = e.flags(squeue::Flags::IO_LINK);
        }
        // SAFETY: fsync carries no buffer; the caller keeps `fd` open until the completion.
        unsafe { self.ring.submission().push(&e) }.map_err(|_| RingError::SubmissionFull)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Submit everything queued and wait for at least `wait_nr` completions.
    /// EINTR/EBUSY/EAGAIN from io_uring_enter mean "try again later" and are reported as success
    /// with nothing submitted; anything else is an error.
    pub fn submit(&mut self, wait_nr: usize) -> Result<(), RingError> {
        match self.ring.submit_and_wait(wait_nr) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
                Some(errno) => Err(RingError::Enter(errno)),
                None => Err(RingError::Enter(libc::EIO)),
            },
        }
    }

    /// Move every available completion into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            self.in_flight = self.in_flight.saturating_sub(1);
            out.push(Completion {
                user_data: UserData(cqe.user_data()),
                result: cqe.result(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let u = UserData::new(OpKind::StoreSync, 0xDEAD_BEEF, 0x1ABCDEF);
        assert_eq!(u.kind(), Some(OpKind::StoreSync));
        assert_eq!(u.slot(), 0xDEAD_BEEF);
        assert_eq!(u.generation(), 0xABCDEF);
        assert_eq!(UserData(0).kind(), None);
    }

    #[test]
    fn errno_decisions() {
        assert_eq!(
            classify_file_errno(libc::ENOSPC),
            FileErrnoDecision::DiskFull
        );
        assert_eq!(classify_file_errno(libc::EIO), FileErrnoDecision::Poison);
        assert_eq!(
            classify_file_errno(libc::EINTR),
            FileErrnoDecision::Resubmit
        );
        assert_eq!(
            classify_file_errno(libc::ECANCELED),
            FileErrnoDecision::LinkCancelled
        );
    }

    #[test]
    fn write_and_sync_through_ring() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("x")).unwrap();
        let mut ring = Ring::new(RING_ENTRIES).unwrap();
        let buf = vec![7u8; 4096];
        // SAFETY: `buf` and `f` live until the completions are drained below.
        unsafe {
            ring.push_write(
                f.as_raw_fd(),
                buf.as_ptr(),
                4096,
                4096,
                UserData::new(OpKind::StoreWrite, 1, 1),
                true,
            )
            .unwrap();
        }
        ring.push_fdatasync(f.as_raw_fd(), UserData::new(OpKind::StoreSync, 1, 1), false)
            .unwrap();
        let mut out = Vec::new();
        while out.len() < 2 {
            ring.submit(2 - out.len()).unwrap();
            ring.drain(&mut out);
        }
        assert_eq!(out[0].result, 4096);
        assert_eq!(out[1].result, 0);
        assert_eq!(std::fs::metadata(dir.path().join("x")).unwrap().len(), 8192);
    }
}
