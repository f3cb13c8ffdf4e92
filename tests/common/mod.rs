//! Shared helpers of the loopback tests: a real `lior serve` child process, and a blocking
//! MS-MQQB client built on lior's own initiator session over a std TcpStream.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lior::session::{Event, Framer, Inbound, Session, SessionConfig};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

pub mod api;
pub mod stores;

pub const BIN: &str = env!("CARGO_BIN_EXE_lior");

pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/mqqb-4.1/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vector file")
}

/// A running `lior serve`.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    pub api: String,
    /// The SRMP endpoint, when one runs.
    pub srmp: Option<SocketAddr>,
    /// The AMQP listener, when one runs (`--amqp-listen`).
    pub amqp: Option<SocketAddr>,
    /// The AMQPS listener, when one runs (`[amqp] tls_listen`).
    pub amqps: Option<SocketAddr>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(listen)
            .args(["--api", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            // Issue 10: a store partition touched by a thread that does not run it aborts the
            // server (and fails the test) instead of being counted.
            .env("LIOR_PARTITION_OWNERSHIP", "strict")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lior serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the ready line");
        assert!(
            line.starts_with("lior ready "),
            "unexpected first line: {line:?}"
        );
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_string()
        };
        Server {
            // In hardened mode no raw listener runs; the field says so.
            listen: field("listen=")
                .parse()
                .unwrap_or_else(|_| "0.0.0.0:0".parse().expect("literal")),
            api: field("api="),
            srmp: field("srmp=").parse().ok(),
            amqp: field("amqp=").parse().ok(),
            amqps: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("amqps="))
                .and_then(|a| a.parse().ok()),
            child,
        }
    }

    /// `kill -9`: no shutdown step of any kind runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and asserts it exited 0 (it finishes its work first).
    pub fn stop_term(&mut self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// Runs the `lior` CLI against this server's API and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .args(["--api", &self.api])
            .output()
            .expect("run lior");
        assert!(
            out.status.success(),
            "lior {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Receives from `queue` until `n` messages came or about 10 s passed (messages from another
    /// queue manager arrive asynchronously); returns what came.
    pub fn receive_until(&self, queue: &str, n: usize) -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        for _ in 0..50 {
            let o = self.cli(&[
                "receive",
                queue,
                "--count",
                "100",
                "--wait-ms",
                "200",
                "--json",
            ]);
            got.extend(
                o.lines()
                    .map(|l| serde_json::from_str(l).expect("json line")),
            );
            if got.len() >= n {
                break;
            }
        }
        got
    }

    /// Receives everything in `queue` as JSON objects.
    pub fn receive_all(&self, queue: &str) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        loop {
            let out = self.cli(&["receive", queue, "--count", "5000", "--json"]);
            let batch: Vec<serde_json::Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect();
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking MS-MQQB client: lior's initiator session over a std socket.
pub struct Client {
    pub stream: TcpStream,
    pub session: Session,
    framer: Framer,
    start: Instant,
    pub acked: Vec<u64>,
    pub closed: bool,
}

impl Client {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn connect(addr: SocketAddr, own: Guid) -> Client {
        Self::over(TcpStream::connect(addr).expect("connect"), own)
    }

    /// [`Client::connect`] from local address `from` (a loopback alias standing for another
    /// machine).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr, own: Guid) -> Client {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        sock.bind(&SocketAddr::new(from, 0).into()).expect("bind");
        sock.connect(&addr.into()).expect("connect");
        Self::over(sock.into(), own)
    }

    /// The handshake of an initiator session over `stream`, as `own`.
    pub fn over(stream: TcpStream, own: Guid) -> Client {
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .ok();
        let cfg = SessionConfig {
            own_guid: own,
            ..SessionConfig::default()
        };
        let mut c = Client {
            stream,
            session: Session::initiator(cfg, Guid::NULL, 0),
            framer: Framer::new(),
            start: Instant::now(),
            acked: Vec::new(),
            closed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.session.state() != lior::session::SessionState::Open {
            assert!(Instant::now() < deadline, "handshake timed out");
            assert!(
                !c.session.is_closed(),
                "session closed during the handshake"
            );
            c.pump();
        }
        c
    }

    /// Writes what the session wants to send, reads what arrived, handles events.
    pub fn pump(&mut self) {
        if self.session.has_transmit() {
            let bytes = self.session.take_transmit(Vec::new());
            if self.stream.write_all(&bytes).is_err() {
                self.closed = true;
            }
        }
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                let now = self.now();
                let session = &mut self.session;
                let r = self.framer.feed(&buf[..n], |frame| {
                    session.handle_frame(now, frame).map(|i| {
                        // Messages from the server (OrderAcks) are taken as durable at once.
                        if let Inbound::Message {
                            rec_seq: Some(r), ..
                        } = i
                        {
                            session.handle_durable(now, r);
                        }
                    })
                });
                if r.is_err() {
                    self.closed = true;
                }
                self.session.flush_acks();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => self.closed = true,
        }
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Acked { token } => self.acked.push(token),
                Event::Closed(_) => self.closed = true,
                Event::Established { .. } => {}
            }
        }
    }

    /// Sends one message, waiting for window space.
    pub fn send(&mut self, frame: &[u8], recoverable: bool, token: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.now();
            match self.session.send_message(now, frame, recoverable, token) {
                Ok(_) => return,
                Err(_) => {
                    assert!(!self.closed, "session closed while sending");
                    assert!(Instant::now() < deadline, "window never opened");
                    self.pump();
                }
            }
        }
    }

    /// Sends one message unless the session closes first; false once it is closed.
    pub fn try_send(&mut self, frame: &[u8], recoverable: bool, token: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.closed || self.session.is_closed() {
                return false;
            }
            let now = self.now();
            if self
                .session
                .send_message(now, frame, recoverable, token)
                .is_ok()
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.pump();
        }
    }

    /// Pumps until every sent message is acknowledged.
    pub fn wait_acked(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.session.in_flight() > 0 {
            assert!(!self.closed, "session closed with messages in flight");
            assert!(Instant::now() < deadline, "acks never came");
            self.pump();
        }
    }
}

/// A UserMessage to a queue of the local machine, with `body`.
pub fn message(source: Guid, id: u32, queue_path: &str, body: &[u8], recoverable: bool) -> Vec<u8> {
    let dest = utf16z(queue_path);
    let label = utf16z(&format!("msg {id}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let m = UserMessage::new(
        source,
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        body,
    )
    .with_recoverable(recoverable)
    .with_sent_time(now)
    .with_time_to_reach_queue(345_600);
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).expect("encode");
    out.truncate(n);
    out
}

/// Transactional message `no` of sequence `seq_id` from `source` to `queue_path` (labelled
/// "tx", its number as the body, recoverable; FM, the sequence's first message, when `first`).
pub fn tx_message(
    source: Guid,
    id: u32,
    queue_path: &str,
    seq_id: u64,
    no: u32,
    first: bool,
) -> Vec<u8> {
    use lior::wire::headers::{TransactionHeader, TxFlags};
    let dest = utf16z(queue_path);
    let label = utf16z("tx");
    let body = no.to_le_bytes();
    let m = UserMessage::new(
        source,
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        &body,
    )
    .with_recoverable(true)
    .with_transaction(TransactionHeader::new(
        TxFlags::default().with(TxFlags::FM, first),
        seq_id,
        no,
        no - 1,
    ));
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).expect("encode");
    f.truncate(n);
    f
}

/// Everything a child process wrote to its piped stderr (call once it has exited or been
/// killed).
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// The bodies of messages as `lior receive --json` / `lior peek --json` print them, as text.
pub fn bodies(got: &[serde_json::Value]) -> Vec<String> {
    use base64::Engine as _;
    got.iter()
        .map(|m| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(m["body_base64"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect()
}

/// Whether python3 with python-qpid-proton is here (the AMQP client tests use it); panics
/// under CI, skips loudly elsewhere.
pub fn have_proton() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import proton, proton.utils"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = "python3 with python-qpid-proton is not installed: `pip install \
                   python-qpid-proton` (bash .ci/run installs it)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED (loudly): {msg}");
    }
    ok
}

/// A free TCP port on `ip` (bound, then released for the server to take).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `DIR/lior.toml` naming this machine `alias`, reaching peers on `remote_port`, plus
/// `extra` lines; returns its path.
pub fn alias_config(dir: &std::path::Path, alias: &str, remote_port: u16, extra: &str) -> String {
    let path = dir.join("lior.toml");
    std::fs::write(
        &path,
        format!("aliases = [\"{alias}\"]\nremote_port = {remote_port}\n{extra}"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}
