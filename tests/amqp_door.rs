//! The AMQP door of a real `lior serve`: `--amqp-listen` (or `[amqp] enabled`) adds a second
//! listener to the same engine, answered by the AMQP application (`shard_app::ShardApp` routes
//! by listener), while MS-MQQB on its own listener keeps working; a busy AMQP address stops the
//! start, naming it. (Real clients: `tests/amqp_clients.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, BIN};

#[test]
fn amqp_connections_are_answered_while_mqqb_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--amqp-listen", "127.0.0.1:0"]);
    let amqp = server.amqp.expect("the ready line names the AMQP listener");
    assert_ne!(amqp.port(), server.listen.port());

    for _ in 0..4 {
        let mut s = TcpStream::connect(amqp).expect("the AMQP port listens");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // A client's SASL protocol header: the same header comes back (then the mechanisms).
        s.write_all(b"AMQP\x03\x01\x00\x00").expect("write");
        let mut head = [0u8; 8];
        s.read_exact(&mut head).expect("the AMQP app answers");
        assert_eq!(&head, b"AMQP\x03\x01\x00\x00");
    }
    assert_eq!(
        common::api::metric(&server, "lior_connections_refused_app_total"),
        0
    );

    // MS-MQQB on the same engine is untouched: a session completes its handshake.
    let _client = common::Client::connect(server.listen, lior::wire::Guid([0x44; 16]));
    assert_eq!(
        common::api::metric(&server, "lior_connections_refused_app_total"),
        0
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
