//! SIGTERM/SIGINT turned into a clean engine shutdown: a handler that only sets a flag and
//! writes to a process-lifetime eventfd, and a blocking wait on it; nothing here touches shards.

use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use super::sockets;

/// The eventfd the handler writes to; created once and never closed, so a late signal can
/// never write into a descriptor number that was reused for something else.
static SIGNAL_EVENTFD: AtomicI32 = AtomicI32::new(-1);
/// The number of the last shutdown signal received, 0 before any.
static SIGNAL_RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALLED: OnceLock<Result<RawFd, i32>> = OnceLock::new();

extern "C" fn on_shutdown_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: atomics and write(2).
    SIGNAL_RECEIVED.store(signal, Ordering::SeqCst);
    let fd = SIGNAL_EVENTFD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to an eventfd that is never closed. The result is
        // ignored: EAGAIN means already signalled and nothing else can be done in a handler.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// The installed shutdown-signal handlers; [`ShutdownSignal::wait`] blocks until one fires.
#[derive(Clone, Copy, Debug)]
pub struct ShutdownSignal {
    eventfd: RawFd,
}

/// Installs handlers for SIGTERM and SIGINT (once per process; later calls return the same
/// handle). After this, those signals no longer kill the process: call
/// [`ShutdownSignal::wait`] (or [`super::net::EngineHandle::run_until_signal`]) to act on them.
pub fn install() -> io::Result<ShutdownSignal> {
    let installed = INSTALLED.get_or_init(|| {
        let fd = sockets::eventfd().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let fd = fd.into_raw_fd();
        SIGNAL_EVENTFD.store(fd, Ordering::SeqCst);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: sigaction is plain old data; all-zero is a valid starting value.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_shutdown_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: `action` lives on this frame for the call; the mask it points into is
            // inside it; the handler is async-signal-safe (see above).
            let ret = unsafe {
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if ret != 0 {
                return Err(io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
        }
        Ok(fd)
    });
    match installed {
        Ok(fd) => Ok(ShutdownSignal { eventfd: *fd }),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

impl ShutdownSignal {
    /// Blocks until SIGTERM or SIGINT arrives (returns at once if one already did) and returns
    /// the signal number.
    pub fn wait(&self) -> i32 {
        loop {
            let received = SIGNAL_RECEIVED.load(Ordering::SeqCst);
            if received != 0 {
                return received;
            }
            let mut value: u64 = 0;
            // SAFETY: reads 8 bytes into a local from the never-closed eventfd. EINTR (another
            // signal) and spurious wake-ups just loop and re-check the flag.
            unsafe { libc::read(self.eventfd, &mut value as *mut u64 as *mut libc::c_void, 8) };
        }
    }

    /// The shutdown signal received so far, if any.
    pub fn received(&self) -> Option<i32> {
        match SIGNAL_RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

/// Non-blocking: the shutdown signal received so far, if any (`None` before one, or when no
/// handlers are installed).
/// Long start-up work (store recovery) polls this to stop promptly on SIGTERM/SIGINT.
pub fn stop_requested() -> Option<i32> {
    match SIGNAL_RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}
