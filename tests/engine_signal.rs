//! SIGTERM reaches the engine's signal helper and shuts every shard down cleanly. A file of its
//! own: the handlers it installs are process-wide.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use lior::engine::net::{App, AppError, CloseReason, ConnId, Engine, EngineConfig, Listener};
use lior::engine::signal;

const WAIT: Duration = Duration::from_secs(5);

struct Echo;

impl App for Echo {
    type Conn = Vec<u8>;

    fn accept(
        &mut self,
        _now_ms: u64,
        _id: ConnId,
        _peer: SocketAddr,
        _listener: Listener,
    ) -> Option<Vec<u8>> {
        Some(Vec::new())
    }

    fn on_recv(&mut self, _now_ms: u64, conn: &mut Vec<u8>, bytes: &[u8]) -> Result<(), AppError> {
        conn.extend_from_slice(bytes);
        Ok(())
    }

    fn poll_transmit(&mut self, _now_ms: u64, conn: &mut Vec<u8>, buf: &mut Vec<u8>) {
        std::mem::swap(buf, conn);
    }

    fn deadline(&self, _conn: &Vec<u8>) -> Option<u64> {
        None
    }

    fn on_timeout(&mut self, _now_ms: u64, _conn: &mut Vec<u8>) {}

    fn wants_close(&self, _conn: &Vec<u8>) -> bool {
        false
    }

    fn on_closed(&mut self, _now_ms: u64, _conn: Vec<u8>, _reason: CloseReason) {}

    fn end_of_turn(&mut self, _now_ms: u64) {}
}

#[test]
fn sigterm_shuts_the_engine_down_cleanly() {
    let shutdown_signal = signal::install().expect("install handlers");
    assert_eq!(shutdown_signal.received(), None);
    let config = EngineConfig {
        listen: vec![(Listener::FIRST, "127.0.0.1:0".parse().expect("address"))],
        cores: vec![0],
        ..EngineConfig::default()
    };
    let handle = Engine::start(config, |_| Echo).expect("engine starts");
    let mut stream = TcpStream::connect(handle.local_addr().expect("listening")).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");

    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(
            handle
                .run_until_signal(&shutdown_signal)
                .map_err(|e| e.to_string()),
        );
    });
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    done_rx
        .recv_timeout(WAIT)
        .expect("shutdown after SIGTERM")
        .expect("clean shutdown");
    assert_eq!(shutdown_signal.received(), Some(libc::SIGTERM));
    let mut rest = [0u8; 16];
    loop {
        match stream.read(&mut rest) {
            Ok(0) => break,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}
