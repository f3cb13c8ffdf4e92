//! The AMQP door of a real `lior serve`: `--amqp-listen` (or `[amqp] enabled`) adds a second
//! listener to the same engine; until the AMQP application is served, a connection there is
//! refused at once by the MS-MQQB application (counted, logged at debug), while MS-MQQB on its
//! own listener keeps working; a busy AMQP address stops the start, naming it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, BIN};

/// Reads until the server closes the connection: end of stream or a reset. Never bytes.
fn expect_closed_without_a_byte(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("the AMQP door answered {:?}", &buf[..n]),
        Err(e) => panic!("expected a close, got {e}"),
    }
}

#[test]
fn amqp_connections_are_refused_cleanly_while_mqqb_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    let amqp = server.amqp.expect("the ready line names the AMQP listener");
    assert_ne!(amqp.port(), server.listen.port());

    for _ in 0..4 {
        let mut s = TcpStream::connect(amqp).expect("the AMQP port listens");
        // A client's SASL protocol header; nothing comes back, the connection is closed.
        let _ = s.write_all(b"AMQP\x03\x01\x00\x00");
        expect_closed_without_a_byte(&mut s);
    }
    let refused = common::api::metric(&server, "lior_connections_refused_app_total");
    assert_eq!(refused, 4);
    assert_eq!(
        common::api::metric(&server, "lior_connections_accepted_total"),
        0
    );

    // MS-MQQB on the same engine is untouched: a session completes its handshake.
    let _client = common::Client::connect(server.listen, lior::wire::Guid([0x44; 16]));
    assert_eq!(
        common::api::metric(&server, "lior_connections_accepted_total"),
        1
    );
    assert_eq!(
        common::api::metric(&server, "lior_connections_refused_app_total"),
        4
    );
}

#[test]
fn without_the_flag_no_amqp_port_is_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    assert_eq!(server.amqp, None);
}

#[test]
fn a_busy_amqp_address_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .args(["--amqp-listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lior serve started beside a listener on its AMQP address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = common::stderr_of(&mut child);
    assert!(!status.success());
    assert!(err.contains("AMQP"), "{err}");
    assert!(err.contains(&addr), "{err}");
}
