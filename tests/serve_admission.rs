//! Admission that keeps serving (issues 8.3 and 9.6): one `lior serve` per address and per data
//! directory; connection, reassembly and SRMP floods held open while a legitimate client is
//! still served; an idle connection that never handshakes is closed; the SRMP endpoint bounds
//! its memory and its CPU; a dead-letter flood writes a summary, not a line per message.
//!
//! Floods come from other loopback addresses (127.0.0.2 and up: all of 127/8 is loopback on
//! Linux), the legitimate client from 127.0.0.1. Every count is bounded (a few hundred sockets).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{message, Client, Server, BIN};
use lior::wire::Guid;

/// Starts `lior serve` with its log (RUST_LOG=warn) written to `log`.
fn start_logged(data_dir: &Path, extra: &[&str], log: &Path) -> Server {
    let child = Command::new(BIN)
        .arg("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn lior serve");
    ready(child)
}

/// The `Server` of a `lior serve` child whose stdout is piped, once it said it is ready.
fn ready(mut child: Child) -> Server {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the ready line");
    assert!(line.starts_with("lior ready "), "unexpected: {line:?}");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_string()
    };
    Server {
        listen: field("listen=").parse().expect("listen address"),
        api: field("api="),
        srmp: field("srmp=").parse().ok(),
        amqp: field("amqp=").parse().ok(),
        amqps: None,
        child,
    }
}

fn config(dir: &Path, text: &str) -> String {
    let p = dir.join("lior.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Runs a `lior serve` that must fail: returns its stderr, or panics if it still runs after
/// 30 s (it started: the very bug).
fn serve_must_fail(args: &[&str]) -> String {
    let mut child: Child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = common::stderr_of(&mut child);
            assert!(!status.success(), "exit status {status:?}; stderr: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second lior serve {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(server: &Server, name: &str) -> u64 {
    common::api::metric(server, &format!("lior_{name}"))
}

fn metric_or_none(server: &Server, name: &str) -> Option<u64> {
    common::api::metric_or_none(server, &format!("lior_{name}"))
}

/// VmRSS of a process, bytes (from /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// User plus system CPU time of a process, in clock ticks (utime and stime of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A TCP connection to `to` from the loopback address `src` (127.0.0.2, ...).
fn connect_from(rt: &tokio::runtime::Runtime, src: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{src}:0").parse().unwrap())?;
            sock.connect(to).await?.into_std()
        })
        .ok()?;
    s.set_nonblocking(false).ok()?;
    Some(s)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sends one recoverable message on a fresh session from 127.0.0.1 and waits for its ack.
fn deliver_one(server: &Server, queue: &str, token: u64) {
    let mut c = Client::connect(server.listen, Guid([9; 16]));
    c.send(
        &message(
            Guid([9; 16]),
            token as u32,
            &format!("OS:localhost\\{queue}"),
            b"legit",
            true,
        ),
        true,
        token,
    );
    c.wait_acked();
}

/// Waits up to `secs` for the peer to close `s` (EOF or reset); false if it stays open.
fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_second_serve_on_the_same_address_or_data_dir_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "srmp_listen = \"127.0.0.1:0\"\n");
    let first = start_logged(
        &dir.path().join("a"),
        &["--config", &cfg],
        &dir.path().join("a.log"),
    );
    let pid = first.child.id().to_string();
    let listen = first.listen.to_string();
    let srmp = first.srmp.unwrap().to_string();

    // Same MS-MQQB address, another data directory: SO_REUSEPORT would have let it share.
    let b = dir.path().join("b");
    let err = serve_must_fail(&[
        "--listen",
        &listen,
        "--api",
        "127.0.0.1:0",
        "--data-dir",
        b.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&listen) && err.contains(&format!("pid {pid}")),
        "{err}"
    );

    // Same data directory, other addresses: the lock file names the holder.
    let a = dir.path().join("a");
    let err = serve_must_fail(&[
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--data-dir",
        a.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("lior.lock"),
        "{err}"
    );

    // Same API address, and same SRMP address (plain binds: refused before this fix too).
    let err = serve_must_fail(&[
        "--listen",
        "127.0.0.1:0",
        "--api",
        &first.api,
        "--data-dir",
        dir.path().join("c").to_str().unwrap(),
    ]);
    assert!(err.contains(&first.api), "{err}");
    let cfg_d = dir.path().join("d.toml");
    std::fs::write(&cfg_d, format!("srmp_listen = \"{srmp}\"\n")).unwrap();
    let err = serve_must_fail(&[
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--config",
        cfg_d.to_str().unwrap(),
    ]);
    assert!(err.contains(&srmp), "{err}");

    // The first server got every connection and still serves.
    first.cli(&["queue", "create", "q"]);
    for token in 1..=8 {
        deliver_one(&first, "q", token);
    }
    assert_eq!(first.receive_all("q").len(), 8);
}

#[test]
fn an_idle_connection_that_never_handshakes_is_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let mut idle = TcpStream::connect(server.listen).unwrap();
    // The default handshake time-out is 5 s; Windows' Session Initialization Timer is 60 s.
    assert!(
        closed_within(&mut idle, 30),
        "a connection that never sent EstablishConnection is still open after 30 s"
    );
    // A session that does handshake is unaffected.
    server.cli(&["queue", "create", "q"]);
    deliver_one(&server, "q", 1);
}

#[test]
fn a_connection_flood_from_one_address_leaves_other_clients_served() {
    let dir = tempfile::tempdir().unwrap();
    // One shard of 512 slots; the flood opens 600 connections from 127.0.0.2 and holds them.
    let cfg = config(
        dir.path(),
        "cores = [0]\n[limits]\nconnections_per_shard_max = 512\n",
    );
    let log = dir.path().join("serve.log");
    let server = start_logged(&dir.path().join("data"), &["--config", &cfg], &log);
    server.cli(&["queue", "create", "q"]);
    let rt = runtime();
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| connect_from(&rt, "127.0.0.2", server.listen))
        .collect();
    assert!(flood.len() >= 500, "the flood could not connect");
    // Let the engine accept (and refuse) them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "connections_accepted_total")
        + metric(&server, "connections_refused_limit_total")
        + metric_or_none(&server, "connections_refused_per_ip_total").unwrap_or(0)
        < 600
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the flood is held open, a client from another address is served.
    deliver_one(&server, "q", 1);
    assert_eq!(server.receive_all("q").len(), 1);
    assert!(metric(&server, "connections_refused_per_ip_total") >= 300);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("too many connections from one address"),
        "the refusal is logged: {text}"
    );
    drop(flood);
}

/// A session that completed the handshake then sends the first `bytes` of a UserMessage that
/// announces 4 MiB, and stops there.
fn half_sent_packet(server: &Server, guid: u8, bytes: usize) -> Client {
    let mut c = Client::connect(server.listen, Guid([guid; 16]));
    let mut header = message(Guid([guid; 16]), 1, "OS:localhost\\q", b"x", false);
    header[8..12].copy_from_slice(&0x0040_0000u32.to_le_bytes());
    c.stream.write_all(&header[..64]).unwrap();
    c.stream.write_all(&vec![0u8; bytes]).unwrap();
    c
}

#[test]
fn a_reassembly_flood_drops_the_oldest_partial_packet_not_the_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    // One shard with an 8 MiB reassembly budget; six sessions hold 1.25 MiB partial packets
    // each (7.5 MiB, under the budget).
    let cfg = config(
        dir.path(),
        "cores = [0]\n[limits]\nreassembly_bytes_per_shard_max = 8388608\n",
    );
    let server = Server::start_with(&dir.path().join("data"), &["--config", &cfg]);
    server.cli(&["queue", "create", "q"]);
    let flood: Vec<Client> = (0..6)
        .map(|i| half_sent_packet(&server, 0x40 + i, 5 << 18))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "bytes_in_total") < 15 << 19 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A legitimate 1 MiB message pushes the shard past its budget: the oldest flooder goes,
    // the newcomer is served.
    let mut c = Client::connect(server.listen, Guid([9; 16]));
    c.send(
        &message(
            Guid([9; 16]),
            1,
            "OS:localhost\\q",
            &vec![7u8; 1 << 20],
            true,
        ),
        true,
        1,
    );
    c.wait_acked();
    assert_eq!(server.receive_all("q").len(), 1);
    assert!(metric(&server, "sessions_dropped_reassembly_total") >= 1);
    // Memory stays bounded: the budget (8 MiB) plus the process's own; 256 MiB is far above.
    let rss = rss_bytes(server.child.id());
    assert!(rss < 256 << 20, "server RSS {rss} bytes");
    drop(flood);
}

/// Writes the head of an SRMP POST announcing `len` body bytes and the first `send` of them.
fn slow_srmp_body(
    rt: &tokio::runtime::Runtime,
    src: &str,
    to: SocketAddr,
    len: usize,
    send: usize,
) -> Option<TcpStream> {
    let mut s = connect_from(rt, src, to)?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let head = format!(
        "POST /msmq/private$/q HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; \
         boundary=b\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    // The server may drop this body to make room (503 and close): a failed write is fine.
    let _ = s.write_all(&vec![b'x'; send]);
    Some(s)
}

const SPEC_SRMP: &str = "--MSMQ - SOAP boundary, 53287\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: 619\r\n\r\n<se:Envelope xmlns:se=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"http://schemas.xmlsoap.org/srmp/\"><se:Header><path xmlns=\"http://schemas.xmlsoap.org/rp/\" se:mustUnderstand=\"1\"><action>MSMQ:mqsender label</action><to>http://machine2/msmq/private$/q</to><id>uuid:1@00000000-0000-0000-0000-000000000000</id></path><properties se:mustUnderstand=\"1\"><expiresAt>20380119T031407</expiresAt></properties><services><durable/></services></se:Header><se:Body></se:Body></se:Envelope>--MSMQ - SOAP boundary, 53287\r\nContent-Type: application/octet-stream\r\nContent-Length: 13\r\nContent-Id: body@ff3af301-3196-497a-a918-72147c871a13\r\n\r\nFirst Message--MSMQ - SOAP boundary, 53287--";

/// A `lior serve` with an SRMP endpoint, its data and config in `dir`.
fn srmp_server(dir: &Path) -> Server {
    let cfg = config(dir, "srmp_listen = \"127.0.0.1:0\"\n");
    Server::start_with(&dir.join("data"), &["--config", &cfg])
}

fn srmp_post(server: &Server, body: &str) -> u16 {
    let url = format!("http://{}/msmq/private$/q", server.srmp.unwrap());
    match ureq::post(&url)
        .timeout(Duration::from_secs(60))
        .set(
            "Content-Type",
            "multipart/related; boundary=\"MSMQ - SOAP boundary, 53287\"; type=text/xml",
        )
        .send_string(body)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn srmp_slow_bodies_are_bounded_in_memory_and_the_endpoint_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = srmp_server(dir.path());
    server.cli(&["queue", "create", "q"]);
    let srmp = server.srmp.unwrap();
    let pid = server.child.id();
    let before = rss_bytes(pid);
    let rt = runtime();
    // 200 unfinished 4 MiB bodies, 1.5 MiB of each sent, from two addresses, held open.
    let flood = || -> Vec<TcpStream> {
        let f: Vec<TcpStream> = (0..200)
            .filter_map(|i| {
                let src = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
                slow_srmp_body(&rt, src, srmp, 4 << 20, 3 << 19)
            })
            .collect();
        assert!(f.len() >= 150, "the flood could not connect");
        std::thread::sleep(Duration::from_secs(1));
        f
    };
    let first = flood();
    let grown = rss_bytes(pid).saturating_sub(before);
    // The bound: limits.srmp_body_bytes_in_flight_max (64 MiB), hyper's per-connection
    // buffers (200 x 64 KiB) and allocator slack; unbounded, 200 x 1.5 MiB is 300 MiB.
    assert!(
        grown < 160 << 20,
        "SRMP bodies grew the server by {} MiB",
        grown >> 20
    );
    // While the flood is held open, the spec's message from 127.0.0.1 is stored.
    assert_eq!(srmp_post(&server, SPEC_SRMP), 200);
    assert_eq!(server.receive_all("q").len(), 1);
    // Once the requests end their memory is free for the next ones: a second flood does not
    // add to the first.
    drop(first);
    std::thread::sleep(Duration::from_secs(1));
    let high = rss_bytes(pid);
    let second = flood();
    let again = rss_bytes(pid).saturating_sub(high);
    assert!(
        again < 48 << 20,
        "a second flood grew the server by {} MiB more",
        again >> 20
    );
    assert_eq!(srmp_post(&server, SPEC_SRMP), 200);
    drop(second);
}

#[test]
fn an_idle_srmp_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = srmp_server(dir.path());
    let mut idle = TcpStream::connect(server.srmp.unwrap()).unwrap();
    idle.write_all(b"POST /msmq/private$/q HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The default header time-out is 10 s.
    assert!(
        closed_within(&mut idle, 40),
        "a request head left unfinished is still open after 40 s"
    );
}

#[test]
fn an_srmp_post_with_a_huge_boundary_is_answered_without_burning_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let server = srmp_server(dir.path());
    server.cli(&["queue", "create", "q"]);
    let pid = server.child.id();
    let ticks_before = cpu_ticks(pid);
    // A 300 KB boundary and a 4 MiB body of near-matches: a naive search compares about
    // 300 KB at every one of 4 million positions.
    let boundary = "-".repeat(300_000) + "x";
    let body = "-".repeat(4 << 20);
    let mut s = TcpStream::connect(server.srmp.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /msmq/private$/q HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; \
         boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "refused: {answer}"
    );
    // The endpoint still serves, and the hostile request cost little CPU (ticks are 1/100 s;
    // a quadratic search spends tens of seconds here).
    assert_eq!(srmp_post(&server, SPEC_SRMP), 200);
    let spent = cpu_ticks(pid) - ticks_before;
    assert!(spent < 500, "the server spent {spent} ticks of CPU");
}

#[test]
fn a_dead_letter_flood_is_summarised_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = start_logged(&dir.path().join("data"), &[], &log);
    let mut c = Client::connect(server.listen, Guid([5; 16]));
    for i in 1..=500u32 {
        c.send(
            &message(Guid([5; 16]), i, "OS:localhost\\nosuch", b"x", false),
            false,
            u64::from(i),
        );
    }
    c.wait_acked();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "dead_lettered_total") < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&server, "dead_lettered_total"), 500);
    // The summary comes once the interval (5 s) ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("suppressed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = text
        .lines()
        .filter(|l| l.contains("moved to the dead-letter queue"))
        .count();
    assert!(lines <= 60, "{lines} dead-letter lines for 500 messages");
    assert!(
        text.contains("suppressed") && text.contains("dead-letter"),
        "no summary line: {text}"
    );
}

#[test]
fn a_descriptor_flood_on_srmp_leaves_mqqb_and_the_api_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "srmp_listen = \"127.0.0.1:0\"\n");
    let data = dir.path().join("data");
    // `lior serve` under a 512-descriptor limit (soft and hard).
    let script = format!(
        "ulimit -n 512 && exec {BIN} serve --listen 127.0.0.1:0 --api 127.0.0.1:0 \
         --data-dir {} --config {cfg}",
        data.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = ready(child);
    server.cli(&["queue", "create", "q"]);
    // 600 idle SRMP connections from three addresses: more than the process's descriptors.
    let rt = runtime();
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|i| {
            let src = ["127.0.0.2", "127.0.0.3", "127.0.0.4"][i % 3];
            connect_from(&rt, src, server.srmp.unwrap())
        })
        .collect();
    assert!(flood.len() >= 500, "the flood could not connect");
    std::thread::sleep(Duration::from_secs(1));
    // MS-MQQB and the API still have their descriptors.
    deliver_one(&server, "q", 1);
    assert_eq!(metric(&server, "dead_lettered_total"), 0);
    assert_eq!(server.receive_all("q").len(), 1);
    drop(flood);
}
