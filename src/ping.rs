//! The optional UDP Ping responder (MS-MQQB 2.1.2, 2.2.7, 3.1.7.7) on port 3527.
//!
//! Only Windows NT4/2000/XP/2003 initiators ping before connecting; Vista and later never do and
//! answer pings only with `EnablePingService` = 1, which is also our default-off switch. A
//! datagram that is not a well-formed Ping is ignored and counted; it never stops the responder.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wire::control::PING_LEN;
use crate::wire::{Guid, Ping};

/// How often the responder looks at the shutdown flag while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Counters of the responder, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct PingCounters {
    pub answered: AtomicU64,
    pub ignored: AtomicU64,
}

/// A running responder.
pub struct PingResponder {
    pub local_addr: SocketAddr,
    pub counters: Arc<PingCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PingResponder {
    /// Binds `addr` and answers pings with `own` as QMGuid. `refusing` tells whether a TCP
    /// session would be refused now (the RF bit, e.g. at MaxInSessions).
    pub fn start(
        addr: SocketAddr,
        own: Guid,
        refusing: Arc<AtomicBool>,
    ) -> std::io::Result<PingResponder> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let local_addr = socket.local_addr()?;
        let counters = Arc::new(PingCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("lior-ping".into())
            .spawn(move || serve(socket, own, refusing, c, s))?;
        Ok(PingResponder {
            local_addr,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    socket: UdpSocket,
    own: Guid,
    refusing: Arc<AtomicBool>,
    counters: Arc<PingCounters>,
    stop: Arc<AtomicBool>,
) {
    // One byte more than a Ping, so an oversized datagram is seen as such, not truncated.
    let mut buf = [0u8; PING_LEN + 1];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "ping responder: receive failed; continuing");
                continue;
            }
        };
        let Ok(req) = Ping::parse(&buf[..n]) else {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let resp = Ping::response(&req, own, refusing.load(Ordering::Relaxed));
        let mut out = [0u8; PING_LEN];
        if resp.encode(&mut out).is_ok() && socket.send_to(&out, from).is_ok() {
            counters.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_windows_ping_over_real_udp_and_ignores_junk() {
        let own = Guid([0x42; 16]);
        let refusing = Arc::new(AtomicBool::new(false));
        let r =
            PingResponder::start("127.0.0.1:0".parse().unwrap(), own, refusing.clone()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let frame1 = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/mqqb-4.1/frame1-ping-request.bin"
        ))
        .unwrap();
        client.send_to(b"junk", r.local_addr).unwrap();
        client.send_to(&frame1, r.local_addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        let p = Ping::parse(&buf[..n]).unwrap();
        assert_eq!((p.cookie, p.flags, p.qm_guid), (4, Ping::RC, own));
        refusing.store(true, Ordering::Relaxed);
        client.send_to(&frame1, r.local_addr).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(Ping::parse(&buf[..n]).unwrap().flags, Ping::RC | Ping::RF);
        assert_eq!(r.counters.ignored.load(Ordering::Relaxed), 1);
        r.stop();
    }
}
