//! The adversarial suite on MS-MQQB (issue 13, item 5): a real `lior serve` on 127.0.0.1 under
//! connection floods past MaxInSessions, slow and half-open handshakes, window violations,
//! forged SessionAcks, sequence jumps, lying PacketSize, bit-flipped UserMessages and bad
//! UTF-16. Every case ends the same way: the server still serves (a fresh, well-behaved session
//! delivers a recoverable message and gets its ack), its memory stays bounded, and every message
//! it acknowledged is in its queue.
//!
//! Every count is bounded (a few hundred connections and messages); hostile connections come
//! from 127.0.0.2 and up so per-address limits never touch the well-behaved client.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{message, vector, Client, Server};
use lior::session::Framer;
use lior::wire::control::{SessionAck, SessionHeader, SESSION_ACK_LEN};
use lior::wire::headers::{TransactionHeader, TxFlags};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{parse_packet, utf16z, EstablishConnection, Guid, Packet, Utf16};

fn metric(server: &Server, name: &str) -> u64 {
    common::api::metric(server, &format!("lior_{name}"))
}

/// VmRSS of a process, bytes (from /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A running `lior serve` on one core, with its memory right after start-up: the bound is
/// on growth, so it does not depend on the machine (each shard has its own buffers).
struct Lior {
    server: Server,
    rss0: u64,
}

impl std::ops::Deref for Lior {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Growth past start-up that no bounded attack here comes near (unbounded, each reaches GBs).
const RSS_GROWTH_MAX: u64 = 128 << 20;

fn assert_rss_bounded(server: &Lior) {
    let rss = rss_bytes(server.child.id());
    assert!(
        rss.saturating_sub(server.rss0) < RSS_GROWTH_MAX,
        "server RSS {} MiB, {} MiB at start",
        rss >> 20,
        server.rss0 >> 20
    );
}

fn start(dir: &Path, config: &str) -> Lior {
    let cfg = dir.join("lior.toml");
    std::fs::write(&cfg, format!("cores = [0]\n{config}")).unwrap();
    let server = Server::start_with(&dir.join("data"), &["--config", cfg.to_str().unwrap()]);
    server.cli(&["queue", "create", "q"]);
    let rss0 = rss_bytes(server.child.id());
    Lior { server, rss0 }
}

/// A fresh well-behaved session from 127.0.0.1 delivers one recoverable message, gets its ack,
/// and the message is in `q` (read back by peeking, so earlier checks still see the queue).
fn still_serving(server: &Lior, token: u32) {
    let guid = Guid([0xEE; 16]);
    let mut c = Client::connect(server.listen, guid);
    let body = format!("still serving {token}");
    c.send(
        &message(guid, token, "OS:localhost\\q", body.as_bytes(), true),
        true,
        u64::from(token),
    );
    c.wait_acked();
    assert!(
        bodies(server, "q").contains(&body),
        "the acknowledged message {body:?} is not in the queue"
    );
    assert_rss_bounded(server);
}

/// Every body in `queue`, by peeking (nothing is removed).
fn bodies(server: &Server, queue: &str) -> Vec<String> {
    use base64::Engine as _;
    server
        .cli(&["peek", queue, "--count", "10000", "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let b = base64::engine::general_purpose::STANDARD
                .decode(v["body_base64"].as_str().unwrap())
                .unwrap();
            String::from_utf8_lossy(&b).into_owned()
        })
        .collect()
}

/// A TCP connection to `to` from the loopback address `src` (127.0.0.2, ...).
fn connect_from(src: &str, to: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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

/// Waits up to `secs` for the peer to close `s` (EOF or reset); false if it stays open.
fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
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

/// The spec's EstablishConnection request (frame 3) for any server, from client `guid`.
fn ec_request(guid: Guid) -> Vec<u8> {
    let mut f3 = vector("frame3-establish-connection-request.bin");
    f3[20..36].copy_from_slice(&guid.0);
    f3[36..52].fill(0);
    f3
}

/// A raw session: the handshake done by hand (frames 3 and 5), then bytes as the test likes.
/// Returns None when the server refused the session (CS=1).
struct Raw {
    s: TcpStream,
    framer: Framer,
    /// Highest AckSequenceNumber seen.
    acked_seq: u16,
    /// Every recoverable number the server acknowledged, through this one.
    rec_through: u16,
    closed: bool,
}

impl Raw {
    fn open(to: SocketAddr, guid: Guid) -> Option<Raw> {
        let mut s = TcpStream::connect(to).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&ec_request(guid)).unwrap();
        let mut ec = vec![0u8; 572];
        s.read_exact(&mut ec).ok()?;
        if EstablishConnection::parse(&ec)
            .ok()?
            .internal
            .flags
            .refused()
        {
            return None;
        }
        s.write_all(&vector("frame5-connection-parameters-request.bin"))
            .unwrap();
        let mut cp = vec![0u8; 32];
        s.read_exact(&mut cp).ok()?;
        Some(Raw {
            s,
            framer: Framer::new(),
            acked_seq: 0,
            rec_through: 0,
            closed: false,
        })
    }

    /// Reads for about `ms`, taking every SessionAck; stops early on close.
    fn read_for(&mut self, ms: u64) {
        self.s
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !self.closed {
            match self.s.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    let (seq, rec) = (&mut self.acked_seq, &mut self.rec_through);
                    let r = self.framer.feed(&buf[..n], |frame| {
                        if let Ok(Packet::SessionAck(a)) = parse_packet(frame) {
                            take_ack(&a.session, seq, rec);
                        }
                        Ok::<(), ()>(())
                    });
                    assert!(r.is_ok(), "the server sent bytes that do not frame");
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// Reads until the recoverable ack reaches `n` (or the session closes, or 20 s pass).
    fn wait_rec(&mut self, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.rec_through < n && !self.closed && Instant::now() < deadline {
            self.read_for(50);
        }
    }

    fn write(&mut self, b: &[u8]) {
        if self.s.write_all(b).is_err() {
            self.closed = true;
        }
    }
}

fn take_ack(h: &SessionHeader, seq: &mut u16, rec: &mut u16) {
    *seq = (*seq).max(h.ack_sequence_number);
    let f = h.recoverable_msg_ack_flags;
    if h.recoverable_msg_ack_seq_number != 0 && f != 0 {
        let top = h.recoverable_msg_ack_seq_number + (31 - f.leading_zeros()) as u16;
        *rec = (*rec).max(top);
    }
}

fn session_ack(h: SessionHeader) -> Vec<u8> {
    let mut b = vec![0u8; SESSION_ACK_LEN];
    SessionAck::new(h).encode(&mut b).unwrap();
    b
}

#[test]
fn a_connection_flood_past_max_in_sessions_is_refused_with_cs_and_the_held_sessions_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "[Parameters]\nMaxInSessions = 4\n");
    // Four well-behaved sessions hold every slot.
    let mut held: Vec<Client> = (1..=4u8)
        .map(|i| Client::connect(server.listen, Guid([i; 16])))
        .collect();
    // A flood of 60 more handshakes: each is answered with CS=1 and closed.
    let mut refused = 0;
    for i in 0..60u8 {
        let mut s = TcpStream::connect(server.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&ec_request(Guid([0x80 | (i & 0x3f); 16])))
            .unwrap();
        let mut ec = vec![0u8; 572];
        s.read_exact(&mut ec).unwrap();
        if EstablishConnection::parse(&ec)
            .unwrap()
            .internal
            .flags
            .refused()
        {
            refused += 1;
        }
        assert!(closed_within(&mut s, 10), "a refused session stays open");
    }
    assert_eq!(refused, 60);
    assert!(metric(&server, "sessions_refused_total") >= 60);
    // The held sessions were never disturbed: each delivers, and what is acked is stored.
    for (i, c) in held.iter_mut().enumerate() {
        let guid = Guid([i as u8 + 1; 16]);
        c.send(
            &message(
                guid,
                1,
                "OS:localhost\\q",
                format!("held {i}").as_bytes(),
                true,
            ),
            true,
            1,
        );
        c.wait_acked();
    }
    let b = bodies(&server, "q");
    for i in 0..4 {
        assert!(b.contains(&format!("held {i}")), "{b:?}");
    }
    // Once the holders leave, their slots serve a newcomer.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Raw::open(server.listen, Guid([0x55; 16])).is_none() {
        assert!(Instant::now() < deadline, "the freed slots never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    still_serving(&server, 1);
}

#[test]
fn half_open_handshakes_are_closed_after_the_handshake_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let f3 = ec_request(Guid([0x61; 16]));
    // 100 connections that say nothing, 100 that send half an EstablishConnection, 50 that
    // finish EstablishConnection and never send ConnectionParameters: from three addresses.
    let mut half: Vec<TcpStream> = Vec::new();
    for i in 0..250 {
        let src = ["127.0.0.2", "127.0.0.3", "127.0.0.4"][i % 3];
        let Some(mut s) = connect_from(src, server.listen) else {
            continue;
        };
        if (100..200).contains(&i) {
            let _ = s.write_all(&f3[..f3.len() / 2]);
        } else if i >= 200 {
            let _ = s.write_all(&f3);
        }
        half.push(s);
    }
    assert!(half.len() >= 200, "the flood could not connect");
    // While they hang, a real sender is served.
    still_serving(&server, 1);
    // Each is closed by the server (default limits.handshake_timeout_ms is 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &mut half {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        assert!(
            closed_within(s, left.max(1)),
            "a half-open handshake is still open after 30 s"
        );
    }
    still_serving(&server, 2);
}

/// Defect (src/server.rs `MsmqApp::accept`): a TCP connection takes a MaxInSessions slot when it
/// is accepted, not when its EstablishConnection arrives, so connections that never handshake
/// lock every real sender out (refused with CS=1) for as long as the attacker renews them
/// (each lives limits.handshake_timeout_ms).
#[test]
fn half_open_connections_past_max_in_sessions_do_not_lock_out_a_real_sender() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "[Parameters]\nMaxInSessions = 4\n");
    let silent: Vec<TcpStream> = (0..8)
        .filter_map(|_| connect_from("127.0.0.2", server.listen))
        .collect();
    assert_eq!(silent.len(), 8);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        Raw::open(server.listen, Guid([0x42; 16])).is_some(),
        "a real sender was refused while silent connections held every MaxInSessions slot"
    );
    drop(silent);
    still_serving(&server, 1);
}

#[test]
fn slow_senders_a_byte_at_a_time_are_served_and_a_dribbled_handshake_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    // Slowloris: the handshake dribbled one byte per 50 ms takes 29 s; the server closes it at
    // its handshake time-out (5 s), without waiting for the rest.
    let listen = server.listen;
    let loris = std::thread::spawn(move || {
        let mut s = connect_from("127.0.0.2", listen).unwrap();
        let started = Instant::now();
        for b in ec_request(Guid([0x71; 16])) {
            if s.write_all(&[b]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(closed_within(&mut s, 30), "a dribbled handshake stays open");
        started.elapsed()
    });
    // A sender that writes everything one byte at a time (handshake and two messages), as a
    // slow link would deliver it: served, and its messages acknowledged and stored.
    let guid = Guid([0x72; 16]);
    let mut s = TcpStream::connect(server.listen).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let dribble = |s: &mut TcpStream, bytes: &[u8]| {
        for b in bytes {
            s.write_all(std::slice::from_ref(b)).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
    };
    dribble(&mut s, &ec_request(guid));
    let mut ec = vec![0u8; 572];
    s.read_exact(&mut ec).unwrap();
    dribble(&mut s, &vector("frame5-connection-parameters-request.bin"));
    let mut cp = vec![0u8; 32];
    s.read_exact(&mut cp).unwrap();
    let mut raw = Raw {
        s,
        framer: Framer::new(),
        acked_seq: 0,
        rec_through: 0,
        closed: false,
    };
    for i in 1..=2u32 {
        let f = message(
            guid,
            i,
            "OS:localhost\\q",
            format!("slow {i}").as_bytes(),
            true,
        );
        dribble(&mut raw.s, &f);
    }
    raw.wait_rec(2);
    assert_eq!(
        raw.rec_through, 2,
        "the slow sender's messages were not acknowledged"
    );
    let b = bodies(&server, "q");
    assert!(
        b.contains(&"slow 1".into()) && b.contains(&"slow 2".into()),
        "{b:?}"
    );
    let cut = loris.join().unwrap();
    assert!(
        cut < Duration::from_secs(25),
        "the dribbled handshake ran {cut:?}"
    );
    still_serving(&server, 1);
}

#[test]
fn a_window_violation_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let guid = Guid([0x81; 16]);
    let mut raw = Raw::open(server.listen, guid).expect("session");
    // The server's window is 64 (MaxUnackedPacket); 600 recoverable messages are written
    // before a single ack is read.
    let mut burst = Vec::new();
    for i in 1..=600u32 {
        burst.extend_from_slice(&message(
            guid,
            i,
            "OS:localhost\\q",
            format!("win {i}").as_bytes(),
            true,
        ));
    }
    raw.write(&burst);
    raw.wait_rec(600);
    // Whatever the server chose (taking them or closing), each message it acknowledged is
    // stored.
    let b = bodies(&server, "q");
    for i in 1..=raw.rec_through {
        assert!(
            b.contains(&format!("win {i}")),
            "acked message {i} is not stored"
        );
    }
    assert!(raw.rec_through > 0 || raw.closed, "no ack and no close");
    still_serving(&server, 1);
}

#[test]
fn forged_session_acks_on_an_incoming_session_close_it_or_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let before = metric(&server, "sessions_closed_protocol_total");
    let guid = Guid([0x91; 16]);

    // Acking messages the server never sent, with honest counts: nothing to delete, the
    // session goes on and its next message is acknowledged and stored.
    let mut a = Raw::open(server.listen, guid).expect("session");
    a.write(&session_ack(SessionHeader {
        ack_sequence_number: 500,
        recoverable_msg_ack_seq_number: 100,
        recoverable_msg_ack_flags: u32::MAX,
        user_msg_sequence_number: 0,
        recoverable_msg_seq_number: 0,
        window_size: 64,
        reserved: 0,
    }));
    a.write(&message(
        guid,
        1,
        "OS:localhost\\q",
        b"after forged ack",
        true,
    ));
    a.wait_rec(1);
    assert_eq!(a.rec_through, 1);
    assert!(bodies(&server, "q").contains(&"after forged ack".into()));

    // Claiming to have received recoverable messages the server never sent: the counts
    // disagree (MS-MQQB 3.1.5.5.5), the session is closed and counted.
    let mut b = Raw::open(server.listen, Guid([0x92; 16])).expect("session");
    b.write(&session_ack(SessionHeader {
        ack_sequence_number: 7,
        recoverable_msg_ack_seq_number: 1,
        recoverable_msg_ack_flags: 0x7f,
        user_msg_sequence_number: 7,
        recoverable_msg_seq_number: 7,
        window_size: 64,
        reserved: 0,
    }));
    assert!(closed_within(&mut b.s, 10), "the lying session stays open");
    assert!(metric(&server, "sessions_closed_protocol_total") > before);
    still_serving(&server, 1);
}

/// A fake peer (the test, at 127.0.0.5) that lior's outgoing queue connects to: it answers the
/// handshake with a window of 1, takes one message, and acks five that were never sent.
#[test]
fn forged_session_acks_from_a_remote_peer_delete_only_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = std::net::TcpListener::bind("127.0.0.5:0").unwrap();
    let port = fake.local_addr().unwrap().port();
    let server = start(
        dir.path(),
        &format!("remote_port = {port}\n[Parameters]\nTryConnectInterval = 60000\n"),
    );
    let out = server.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.5\\private$\\far",
        "--body",
        "far",
        "--recoverable",
        "--count",
        "5",
    ]);
    assert_eq!(out.lines().count(), 5, "{out}");
    fake.set_nonblocking(false).unwrap();
    let (mut s, _) = fake.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ec = vec![0u8; 572];
    s.read_exact(&mut ec).unwrap();
    let req = EstablishConnection::parse(&ec).unwrap();
    let mut reply = vec![0u8; 572];
    EstablishConnection::response(&req, Guid([0xA5; 16]), false)
        .encode(&mut reply)
        .unwrap();
    s.write_all(&reply).unwrap();
    let mut cp = vec![0u8; 32];
    s.read_exact(&mut cp).unwrap();
    let cpr = lior::wire::control::ConnectionParameters::parse(&cp).unwrap();
    let mut answer = vec![0u8; 32];
    lior::wire::control::ConnectionParameters::new(cpr.recoverable_ack_timeout, cpr.ack_timeout, 1)
        .encode(&mut answer)
        .unwrap();
    s.write_all(&answer).unwrap();
    // One message comes (the window is 1).
    let mut framer = Framer::new();
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got == 0 && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            framer
                .feed(&buf[..n], |f| {
                    if let Ok(Packet::User(_)) = parse_packet(f) {
                        got += 1;
                    }
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
    }
    assert_eq!(got, 1, "lior sent more than the window or nothing");
    // Ack five messages, four of which were never sent, with the counts lior expects.
    s.write_all(&session_ack(SessionHeader {
        ack_sequence_number: 5,
        recoverable_msg_ack_seq_number: 1,
        recoverable_msg_ack_flags: 0x1f,
        user_msg_sequence_number: 0,
        recoverable_msg_seq_number: 0,
        window_size: 1,
        reserved: 0,
    }))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    drop(fake);
    // Exactly the one message sent is gone from the outgoing queue; four wait for a real peer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::api::outgoing_len(&server) != 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(common::api::outgoing_len(&server), 4);
    still_serving(&server, 1);
}

fn tx_message(guid: Guid, id: u32, seq: u32, prev: u32, body: &str) -> Vec<u8> {
    let dest = utf16z("OS:localhost\\private$\\txq");
    let label = utf16z("tx");
    let m = UserMessage::new(
        guid,
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        body.as_bytes(),
    )
    .with_recoverable(true)
    .with_sent_time(unix_now())
    .with_time_to_reach_queue(345_600)
    .with_transaction(TransactionHeader::new(
        TxFlags::default(),
        0x7100_0000_0000_0001,
        seq,
        prev,
    ));
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

#[test]
fn sequence_jumps_store_nothing_out_of_order_and_the_session_counts_stay_honest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    server.cli(&["queue", "create", "txq", "--transactional"]);
    let guid = Guid([0xB1; 16]);
    let mut c = Client::connect(server.listen, guid);
    // Transactional numbers 1, then 5 (previous 4: a jump over 2..4), then 2.
    c.send(&tx_message(guid, 1, 1, 0, "tx 1"), true, 1);
    c.send(&tx_message(guid, 2, 5, 4, "tx 5"), true, 2);
    c.send(&tx_message(guid, 3, 2, 1, "tx 2"), true, 3);
    c.wait_acked();
    let got = bodies(&server, "txq");
    assert_eq!(got, ["tx 1", "tx 2"], "the jumped-ahead message was stored");
    assert!(metric(&server, "tx_rejected_total") >= 1);

    // A SessionHeader whose recoverable count jumps ahead of what was sent closes the session.
    let before = metric(&server, "sessions_closed_protocol_total");
    let mut raw = Raw::open(server.listen, Guid([0xB2; 16])).expect("session");
    raw.write(&message(
        Guid([0xB2; 16]),
        1,
        "OS:localhost\\q",
        b"before jump",
        true,
    ));
    raw.wait_rec(1);
    assert_eq!(raw.rec_through, 1);
    raw.write(&session_ack(SessionHeader {
        ack_sequence_number: 0,
        recoverable_msg_ack_seq_number: 0,
        recoverable_msg_ack_flags: 0,
        user_msg_sequence_number: 0,
        recoverable_msg_seq_number: 40_000,
        window_size: 64,
        reserved: 0,
    }));
    assert!(
        closed_within(&mut raw.s, 10),
        "the session survived the jump"
    );
    assert!(metric(&server, "sessions_closed_protocol_total") > before);
    assert!(bodies(&server, "q").contains(&"before jump".into()));
    still_serving(&server, 1);
}

#[test]
fn lying_packet_sizes_close_the_session_and_leave_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let before = metric(&server, "sessions_closed_protocol_total");
    let guid = Guid([0xC1; 16]);
    let good = message(guid, 1, "OS:localhost\\q", &[b'p'; 200], false);
    let real = good.len() as u32;
    // Smaller than the frame: below the headers, mid-body, zero, one, not a multiple of 4.
    let smaller = [
        0u32,
        1,
        15,
        16,
        20,
        40,
        real / 2,
        real - 4,
        real - 1,
        real - 3,
    ];
    // Bigger than the frame: the next bytes (a second message, junk, nothing) are read as its
    // rest; past 4 MiB refused at once.
    let bigger = [
        real + 4,
        real + 100,
        real + 4096,
        4 << 20,
        (4 << 20) + 1,
        u32::MAX,
    ];
    let mut closed = 0;
    for (i, size) in smaller.iter().chain(bigger.iter()).enumerate() {
        let mut raw =
            Raw::open(server.listen, Guid([0xC0 | (i as u8 & 0xf); 16])).expect("session");
        let mut f = good.clone();
        f[8..12].copy_from_slice(&size.to_le_bytes());
        raw.write(&f);
        raw.write(&good);
        raw.write(&[0x5A; 300]);
        if closed_within(&mut raw.s, 3) {
            closed += 1;
        }
    }
    // Every lie that cannot be a frame closes its session; a bigger PacketSize that still fits
    // 4 MiB just waits for bytes that never come (the session idles out).
    assert!(closed >= smaller.len() + 2, "only {closed} sessions closed");
    assert!(metric(&server, "sessions_closed_protocol_total") >= before + closed as u64 - 1);
    still_serving(&server, 1);
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn bit_flipped_user_messages_over_live_sessions_never_lose_an_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let closed_before = metric(&server, "sessions_closed_protocol_total");
    let seeds: u64 = std::env::var("LIOR_ADVERSARIAL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let guid = Guid([0x10 + (seed % 200) as u8; 16]);
        let mut raw = Raw::open(server.listen, guid).expect("session");
        // A valid message first, acknowledged before the mutated one is sent.
        let valid = format!("valid {seed}");
        raw.write(&message(guid, 1, "OS:localhost\\q", valid.as_bytes(), true));
        raw.wait_rec(1);
        assert_eq!(
            raw.rec_through, 1,
            "seed {seed}: the valid message was not acked"
        );
        // Then the same kind of message with 1-4 bits flipped in its headers (not in
        // PacketSize, whose lies have their own test, and not in the body).
        let body = format!("mutant {seed}");
        let mut m = message(guid, 2, "OS:localhost\\q", body.as_bytes(), true);
        let header_len = m.len() - body.len() - 8;
        for _ in 0..1 + rng.below(4) {
            let mut at = rng.below(header_len);
            if (8..12).contains(&at) {
                at = 12 + rng.below(header_len - 12);
            }
            m[at] ^= 1 << rng.below(8);
        }
        raw.write(&m);
        raw.read_for(30);
    }
    // Every valid message was acknowledged before its mutant, so every one is stored.
    let b = bodies(&server, "q");
    for seed in 1..=seeds {
        assert!(
            b.contains(&format!("valid {seed}")),
            "seed {seed}: acked message lost"
        );
    }
    assert!(
        metric(&server, "sessions_closed_protocol_total") > closed_before,
        "no mutant closed its session"
    );
    still_serving(&server, 1);
}

#[test]
fn bad_utf16_in_format_names_and_labels_is_dead_lettered_or_stored_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "");
    let guid = Guid([0xD1; 16]);
    let mut c = Client::connect(server.listen, guid);
    let units = |s: &str, bad: &[u16], nul: bool| {
        let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
        v.extend(bad.iter().flat_map(|u| u.to_le_bytes()));
        if nul {
            v.extend_from_slice(&[0, 0]);
        }
        v
    };
    let good_dest = utf16z("OS:localhost\\q");
    let good_label = utf16z("label");
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        // Lone surrogates in the queue name, a high surrogate at the end, a reversed pair.
        (
            units("OS:localhost\\q", &[0xD800], true),
            good_label.clone(),
        ),
        (
            units("OS:localhost\\", &[0xDC00, 0x71], true),
            good_label.clone(),
        ),
        (
            units("OS:localhost\\q", &[0xDC00, 0xD800], true),
            good_label.clone(),
        ),
        // A NUL in the middle of the name, and no NUL at all.
        (units("OS:local", &[0, 0x68], true), good_label.clone()),
        (units("OS:localhost\\q", &[], false), good_label.clone()),
        // Labels: lone surrogates, reversed pair, unterminated, embedded NUL, U+FFFF.
        (good_dest.clone(), units("lbl", &[0xD800], true)),
        (
            good_dest.clone(),
            units("lbl", &[0xDFFF, 0xD800, 0x41], true),
        ),
        (good_dest.clone(), units("lbl", &[], false)),
        (good_dest.clone(), units("l", &[0, 0x41, 0xFFFF], true)),
    ];
    let mut sent = 0u32;
    let mut framed = Vec::new();
    for (i, (dest, label)) in cases.iter().enumerate() {
        let body = format!("utf16 case {i}");
        let m = UserMessage::new(
            guid,
            i as u32 + 1,
            QueueRef::Direct(Utf16(dest)),
            Utf16(label),
            body.as_bytes(),
        )
        .with_recoverable(true)
        .with_sent_time(unix_now())
        .with_time_to_reach_queue(345_600);
        let mut out = vec![0u8; m.frame_len()];
        // A value the encoder itself refuses is not a wire case; it is skipped.
        let Ok(n) = m.encode(&mut out) else { continue };
        out.truncate(n);
        framed.push(out);
    }
    assert!(framed.len() >= 7, "only {} cases encodable", framed.len());
    for (i, f) in framed.iter().enumerate() {
        if !c.try_send(f, true, i as u64 + 1) {
            break;
        }
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.session.in_flight() > 0 && !c.closed && Instant::now() < deadline {
        c.pump();
    }
    assert!(sent > 0);
    // Whatever was stored or dead-lettered reads back through the CLI (peek and receive,
    // JSON and text) without an error.
    for queue in ["q", "deadletter"] {
        server.cli(&["peek", queue, "--count", "100"]);
        server.cli(&["peek", queue, "--count", "100", "--json"]);
    }
    let stored = bodies(&server, "q").len() + bodies(&server, "deadletter").len();
    assert!(
        stored >= c.acked.len(),
        "{} acked, {stored} stored or dead-lettered",
        c.acked.len()
    );
    // The unreadable destinations are dead-lettered (each with its reason in the log).
    assert!(
        metric(&server, "dead_lettered_total") >= 3,
        "{} dead-lettered",
        metric(&server, "dead_lettered_total")
    );
    server.cli(&["receive", "q", "--count", "100"]);
    server.cli(&["receive", "deadletter", "--count", "100", "--json"]);
    still_serving(&server, 1);
}
