//! The start-up check that io_uring works here and has every opcode and feature the network
//! engine relies on; it explains a failure (errno, likely cause, the limits it read) and must not
//! try to work around one.

use std::fmt;
use std::io;

use io_uring::{opcode, IoUring, Probe};

/// The opcodes the network engine submits, with the names an operator will recognise.
const REQUIRED_OPCODES: &[(u8, &str)] = &[
    (opcode::Nop::CODE, "IORING_OP_NOP"),
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
    (opcode::Send::CODE, "IORING_OP_SEND"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT"),
    (opcode::LinkTimeout::CODE, "IORING_OP_LINK_TIMEOUT"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    (opcode::Read::CODE, "IORING_OP_READ"),
];

/// Multishot receive with provided buffer rings arrived in Linux 6.0.
const KERNEL_MIN: (u32, u32) = (6, 0);

/// What the probe found on a working system.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// The kernel release string (`uname -r`).
    pub kernel_release: String,
}

/// Why io_uring cannot be used, with everything an operator needs to fix it.
#[derive(Debug)]
pub enum ProbeError {
    /// io_uring_setup(2) or the NOP round trip failed.
    Unavailable {
        step: &'static str,
        error: io::Error,
        io_uring_disabled: Option<String>,
        memlock_bytes: Option<(u64, u64)>,
    },
    /// io_uring works but lacks an opcode or feature the engine submits.
    Missing {
        what: String,
        kernel_release: String,
    },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Unavailable {
                step,
                error,
                io_uring_disabled,
                memlock_bytes,
            } => {
                write!(f, "io_uring is not usable: {step} failed: {error}")?;
                if let Some(code) = error.raw_os_error() {
                    write!(f, " (errno {code})")?;
                }
                write!(f, ". Likely causes: ")?;
                match error.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::ENOSYS) => write!(
                        f,
                        "a seccomp filter blocks io_uring (Docker and Kubernetes default profiles \
                         do; allow io_uring_setup/io_uring_enter/io_uring_register), or \
                         kernel.io_uring_disabled forbids it"
                    )?,
                    Some(libc::ENOMEM) => write!(
                        f,
                        "the locked-memory limit (RLIMIT_MEMLOCK) is too low for the ring \
                         (raise `ulimit -l` or LimitMEMLOCK=)"
                    )?,
                    _ => write!(f, "an old kernel, seccomp, or resource limits")?,
                }
                match io_uring_disabled {
                    Some(value) => write!(
                        f,
                        "; /proc/sys/kernel/io_uring_disabled = {value} (0 allows, 1 allows only \
                         the io_uring_group, 2 forbids)"
                    )?,
                    None => write!(f, "; /proc/sys/kernel/io_uring_disabled is absent")?,
                }
                match memlock_bytes {
                    Some((soft, hard)) => write!(
                        f,
                        "; RLIMIT_MEMLOCK soft {} hard {}",
                        limit_text(*soft),
                        limit_text(*hard)
                    ),
                    None => write!(f, "; RLIMIT_MEMLOCK unreadable"),
                }
            }
            ProbeError::Missing {
                what,
                kernel_release,
            } => write!(
                f,
                "io_uring on kernel {kernel_release} lacks {what}, which the network engine \
                 needs (Linux {}.{} or newer is required)",
                KERNEL_MIN.0, KERNEL_MIN.1
            ),
        }
    }
}

impl std::error::Error for ProbeError {}

fn limit_text(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{value} bytes")
    }
}

fn io_uring_disabled() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|text| text.trim().to_string())
}

fn memlock_bytes() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a local the kernel fills for the duration of the call.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (ret == 0).then_some((limit.rlim_cur, limit.rlim_max))
}

/// The kernel release from uname(2), e.g. "6.8.0-45-generic".
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; all-zero is valid and uname fills it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a local that outlives the call.
    if unsafe { libc::uname(&mut name) } != 0 {
        return "unknown".to_string();
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses "major.minor" from the front of a release string.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn unavailable(step: &'static str, error: io::Error) -> ProbeError {
    ProbeError::Unavailable {
        step,
        error,
        io_uring_disabled: io_uring_disabled(),
        memlock_bytes: memlock_bytes(),
    }
}

/// Creates a tiny ring, runs a NOP through it, and checks the opcodes and features the network
/// engine uses. Call once at start-up; the error's Display is the message to print before exiting.
///
/// The calling thread uses (and drops) a ring, so its next blocking system call may fail once
/// with EINTR; [`super::net::Engine::start`] therefore runs this on a short-lived thread.
pub fn check() -> Result<ProbeReport, ProbeError> {
    let kernel_release = kernel_release();
    let mut ring = IoUring::new(4).map_err(|error| unavailable("io_uring_setup", error))?;

    let nop = opcode::Nop::new().build().user_data(0x6e6f70);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| unavailable("queueing a NOP", io::Error::other("submission queue full")))?;
    ring.submit_and_wait(1)
        .map_err(|error| unavailable("io_uring_enter (NOP)", error))?;
    let cqe = ring.completion().next().ok_or_else(|| {
        unavailable(
            "reaping the NOP",
            io::Error::other("no completion after waiting"),
        )
    })?;
    if cqe.result() < 0 {
        return Err(unavailable(
            "NOP",
            io::Error::from_raw_os_error(-cqe.result()),
        ));
    }

    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|error| unavailable("IORING_REGISTER_PROBE", error))?;
    let missing: Vec<&str> = REQUIRED_OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError::Missing {
            what: format!("opcode(s) {}", missing.join(", ")),
            kernel_release,
        });
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(ProbeError::Missing {
            what: "IORING_FEAT_EXT_ARG (timed waits)".to_string(),
            kernel_release,
        });
    }
    if !ring.params().is_feature_nodrop() {
        return Err(ProbeError::Missing {
            what: "IORING_FEAT_NODROP (no lost completions)".to_string(),
            kernel_release,
        });
    }
    // Multishot accept/receive and buffer rings are not opcodes, so the probe cannot see them;
    // the kernel version is the only honest check.
    match parse_release(&kernel_release) {
        Some(version) if version >= KERNEL_MIN => {}
        _ => {
            return Err(ProbeError::Missing {
                what: "multishot receive with provided buffer rings".to_string(),
                kernel_release,
            })
        }
    }
    Ok(ProbeReport { kernel_release })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(parse_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-105-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn message_names_causes_and_limits() {
        let text =
            unavailable("io_uring_setup", io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(text.contains("seccomp"), "{text}");
        assert!(text.contains("io_uring_disabled"), "{text}");
        assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
    }

    #[test]
    fn probe_passes_on_this_machine() {
        // The engine's integration tests need io_uring anyway; failing here first gives the
        // operator the diagnostic instead of a confusing socket error.
        if let Err(error) = check() {
            panic!("{error}");
        }
    }
}
