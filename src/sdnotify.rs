//! systemd's readiness protocol (`sd_notify(3)`), without libsystemd: one datagram to the unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Outside systemd
//! (no `NOTIFY_SOCKET`) nothing is sent. `lior serve` sends `READY=1` once its listeners and API
//! accept connections, and `STOPPING=1` when it begins to shut down; `contrib/lior.service` uses
//! `Type=notify`.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nMAINPID=123"`) to the socket named by `$NOTIFY_SOCKET`.
/// Returns Ok(false) when the variable is not set (not started by systemd), Ok(true) when the
/// datagram was sent, and an error naming the socket when it could not be.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    send_to(&target, state)
        .map(|()| true)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{NOTIFY_SOCKET_ENV}={target}: {e}")))
}

/// Sends one datagram with `state` to `target`: a filesystem path, or `@name` for the abstract
/// socket `name` (as systemd writes it).
pub fn send_to(target: &str, state: &str) -> std::io::Result<()> {
    let addr = parse_target(target)?;
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(state.as_bytes(), &addr)?;
    if n != state.len() {
        return Err(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            state.len()
        )));
    }
    Ok(())
}

fn parse_target(target: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        ))
    }
}

/// Tells systemd (if it started us) that `what` happened; a failure is logged, never fatal:
/// a unit without `Type=notify` or a socket that went away must not stop lior.
pub fn notify_logged(state: &str, what: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "told systemd: {what}"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot tell systemd that {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("lior-sdnotify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_target_is_refused() {
        assert!(send_to("relative/path", "READY=1").is_err());
    }
}
