//! `lior serve` on real io_uring at 127.0.0.1: the spec's session, delivery to our own queue
//! read back through the CLI, many sessions beside hostile ones.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{message, vector, Client, Server};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{parse_packet, utf16z, EstablishConnection, Guid, Packet, Utf16};

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).expect("reply");
    b
}

fn raw(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn the_spec_session_gets_windows_replies_and_frame7_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    // Frame 3 as published names a ServerGuid that is not ours: refused with CS=1, as the
    // spec says, and the connection is closed.
    let mut s = raw(&server);
    s.write_all(&vector("frame3-establish-connection-request.bin"))
        .unwrap();
    let reply = read_exact(&mut s, 572);
    let ec = EstablishConnection::parse(&reply).unwrap();
    assert!(ec.internal.flags.refused());
    assert_eq!(
        &reply[..16],
        &vector("frame4-establish-connection-response.bin")[..16]
    );
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after the refusal"
    );

    // The same request for a direct format name (ServerGuid zero) opens the session.
    let mut s = raw(&server);
    let mut f3 = vector("frame3-establish-connection-request.bin");
    f3[36..52].fill(0);
    s.write_all(&f3).unwrap();
    let reply = read_exact(&mut s, 572);
    let ec = EstablishConnection::parse(&reply).unwrap();
    assert!(!ec.internal.flags.refused());
    assert_eq!(reply[1], 0x5A, "BaseHeader.Reserved 0x5A like Windows");
    assert_eq!(&reply[20..36], &f3[20..36], "ClientGuid echoed");
    assert_eq!(ec.time_stamp, 0x1DDE_CA4E, "TimeStamp echoed");
    s.write_all(&vector("frame5-connection-parameters-request.bin"))
        .unwrap();
    let cp = read_exact(&mut s, 32);
    assert_eq!(
        &cp[20..],
        &vector("frame5-connection-parameters-request.bin")[20..]
    );
    s.write_all(&vector("frame7-user-message-express.bin"))
        .unwrap();
    let ack = read_exact(&mut s, 36);
    let Ok(Packet::SessionAck(ack)) = parse_packet(&ack) else {
        panic!("a SessionAck");
    };
    assert_eq!(ack.session.ack_sequence_number, 1);
    assert_eq!(ack.session.window_size, 64);

    // Frame 7 is for OS:a04bm02\q, another machine: it is in the dead-letter queue.
    let dead = server.receive_all("deadletter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["label"], "mqsender label");
    assert_eq!(dead[0]["body_size"], 2000);
    assert_eq!(dead[0]["destination"], "DIRECT=OS:a04bm02\\q");
    assert_eq!(
        dead[0]["sender_sid"],
        "S-1-5-21-3181267629-1039849782-3663111779-1000"
    );
}

#[test]
fn frame7_addressed_to_our_queue_is_received_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.cli(&["queue", "create", "orders"]);
    let f7 = vector("frame7-user-message-express.bin");
    let mut m = UserMessage::parse(&f7).unwrap();
    let dest = utf16z("OS:localhost\\private$\\orders");
    m.user.destination = QueueRef::Direct(Utf16(&dest));
    // The spec's SentTime bytes are "LIOR" (a 2013 date): refresh it so the message is fresh.
    m.user.sent_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    m.sync();
    let mut frame = vec![0u8; m.frame_len()];
    let n = m.encode(&mut frame).unwrap();
    frame.truncate(n);

    let mut c = Client::connect(server.listen, Guid([0x33; 16]));
    c.send(&frame, false, 1);
    c.wait_acked();
    let text = server.cli(&["receive", "orders"]);
    assert!(text.contains("label:    mqsender label"), "{text}");
    assert!(text.contains("body:     2000 bytes: a"), "{text}");
    let json = server.cli(&["peek", "orders", "--json"]);
    assert!(json.is_empty(), "received means removed: {json}");
}

#[test]
fn many_sessions_deliver_while_hostile_ones_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.cli(&["queue", "create", "load"]);
    const SESSIONS: u32 = 8;
    const PER_SESSION: u32 = 300;
    let listen = server.listen;
    let senders: Vec<_> = (0..SESSIONS)
        .map(|s| {
            std::thread::spawn(move || {
                let guid = Guid([s as u8 + 1; 16]);
                let mut c = Client::connect(listen, guid);
                for i in 0..PER_SESSION {
                    let recoverable = i % 2 == 0;
                    let f = message(
                        guid,
                        i + 1,
                        "TCP:127.0.0.1\\private$\\load",
                        &[7; 100],
                        recoverable,
                    );
                    c.send(&f, recoverable, u64::from(i));
                }
                c.wait_acked();
                c.acked.len()
            })
        })
        .collect();
    // Hostile neighbours at the same time.
    let mut garbage = raw(&server);
    garbage.write_all(&[0xAB; 4096]).unwrap();
    let mut huge = raw(&server);
    let mut h = vector("frame3-establish-connection-request.bin");
    h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    huge.write_all(&h).unwrap();
    let mut early = raw(&server);
    early
        .write_all(&message(
            Guid([9; 16]),
            1,
            "OS:localhost\\load",
            b"x",
            false,
        ))
        .unwrap();
    for s in [&mut garbage, &mut huge, &mut early] {
        let mut b = Vec::new();
        // Each is closed by the server (EOF or reset), without any reply that opens a session.
        let _ = s.read_to_end(&mut b);
        assert!(b.is_empty(), "no reply to a hostile session");
    }
    for t in senders {
        assert_eq!(t.join().unwrap(), PER_SESSION as usize);
    }
    let got = server.receive_all("load");
    assert_eq!(got.len(), (SESSIONS * PER_SESSION) as usize);
    let metrics = ureq::get(&format!("http://{}/metrics", server.api))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let closed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lior_sessions_closed_protocol_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        closed >= 3,
        "the three hostile sessions are counted: {closed}"
    );
}

#[test]
fn max_in_sessions_refuses_with_cs_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lior.toml");
    std::fs::write(&cfg, "[Parameters]\nMaxInSessions = 2\n").unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.cli(&["queue", "create", "q"]);
    let mut c1 = Client::connect(server.listen, Guid([1; 16]));
    let _c2 = Client::connect(server.listen, Guid([2; 16]));
    // The third session is answered with CS=1 (connection refused), as Windows does.
    let mut s = raw(&server);
    let mut f3 = vector("frame3-establish-connection-request.bin");
    f3[36..52].fill(0);
    s.write_all(&f3).unwrap();
    let ec = read_exact(&mut s, 572);
    assert!(EstablishConnection::parse(&ec)
        .unwrap()
        .internal
        .flags
        .refused());
    // The first two keep working.
    c1.send(
        &message(Guid([1; 16]), 1, "OS:localhost\\q", b"x", true),
        true,
        1,
    );
    c1.wait_acked();
    // SIGTERM: the server finishes its work and exits 0.
    server.stop_term();
    // And what was acknowledged is there after a restart.
    let server = Server::start(&dir.path().join("data"));
    assert_eq!(server.receive_all("q").len(), 1);
}

#[test]
fn half_sent_huge_packets_cannot_exhaust_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lior.toml");
    // One shard, so all sessions share one reassembly budget of 1 MiB.
    std::fs::write(
        &cfg,
        "cores = [0]\n[limits]\nreassembly_bytes_per_shard_max = 1048576\n",
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.cli(&["queue", "create", "q"]);
    let mut c = Client::connect(server.listen, Guid([1; 16]));
    // Each flooder announces a 4 MB UserMessage and sends 600 KB of it.
    let mut header = message(Guid([2; 16]), 1, "OS:localhost\\q", b"x", false);
    header[8..12].copy_from_slice(&0x0040_0000u32.to_le_bytes());
    let mut flooders = Vec::new();
    for _ in 0..3 {
        let mut s = raw(&server);
        let mut f3 = vector("frame3-establish-connection-request.bin");
        f3[36..52].fill(0);
        s.write_all(&f3).unwrap();
        let _ = read_exact(&mut s, 572);
        s.write_all(&vector("frame5-connection-parameters-request.bin"))
            .unwrap();
        let _ = read_exact(&mut s, 32);
        s.write_all(&header[..64]).unwrap();
        let _ = s.write_all(&vec![0u8; 600 << 10]);
        flooders.push(s);
    }
    // At least one flooder was cut off (counted as a protocol close or a drop); the well-behaved session
    // still delivers.
    let mut closed = 0;
    for _ in 0..50 {
        let metrics = ureq::get(&format!("http://{}/metrics", server.api))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        // Cut off as the newcomer past the budget, or dropped as the oldest partial packet.
        closed = [
            "lior_sessions_closed_protocol_total ",
            "lior_sessions_dropped_reassembly_total ",
        ]
        .iter()
        .map(|name| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
        if closed >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed >= 1, "a flooder past the budget is closed");
    drop(flooders);
    c.send(
        &message(Guid([1; 16]), 7, "OS:localhost\\q", b"fine", true),
        true,
        7,
    );
    c.wait_acked();
    assert_eq!(server.receive_all("q").len(), 1);
}

/// Issue 10: one queue is delivered in MSMQ order whatever the number of cores. With two shards,
/// sessions land on both (the kernel spreads the connections); 10,000 messages from 8 or more
/// senders, in random priorities, to one queue owned by one partition, are received in
/// priority order and, within a priority, in each sender's order.
#[test]
fn sessions_on_two_shards_deliver_one_queue_in_priority_then_fifo_order_per_sender() {
    use common::api::metric_or_none;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--cores", "0,1"]);
    server.cli(&["queue", "create", "q"]);
    let shard_accepts = |s: &Server| {
        (0..2)
            .map(|i| {
                metric_or_none(
                    s,
                    &format!("lior_shard_connections_accepted_total{{shard=\"{i}\"}}"),
                )
                .unwrap_or(0)
            })
            .collect::<Vec<u64>>()
    };
    // At least 8 senders, and more until both shards have some (bounded).
    let mut clients = Vec::new();
    while clients.len() < 8 || shard_accepts(&server).contains(&0) {
        assert!(
            clients.len() < 64,
            "the connections never reached both shards: {:?}",
            shard_accepts(&server)
        );
        let n = clients.len() as u8;
        clients.push((
            Guid([0x60 + n; 16]),
            Client::connect(server.listen, Guid([0x60 + n; 16])),
        ));
    }
    let dest = utf16z("TCP:127.0.0.1\\private$\\q");
    let label = utf16z("order");
    let senders = clients.len();
    let total = 10_000usize;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for k in 0..total {
        let (guid, c) = &mut clients[k % senders];
        let id = (k / senders) as u32 + 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let m = UserMessage::new(
            *guid,
            id,
            QueueRef::Direct(Utf16(&dest)),
            Utf16(&label),
            b"x",
        )
        .with_recoverable(true)
        .with_priority((rng % 8) as u8);
        let mut f = vec![0u8; m.frame_len()];
        let n = m.encode(&mut f).unwrap();
        c.send(&f[..n], true, k as u64);
    }
    for (_, c) in &mut clients {
        c.wait_acked();
    }
    let got = server.receive_all("q");
    assert_eq!(got.len(), total);
    let mut last_priority = 7u64;
    let mut last: std::collections::HashMap<(String, u64), u64> = Default::default();
    for m in &got {
        let p = m["priority"].as_u64().unwrap();
        assert!(p <= last_priority, "priority {p} after {last_priority}");
        last_priority = p;
        let id = m["message_id"].as_str().unwrap();
        let (sender, ordinal) = id.rsplit_once('\\').unwrap();
        let ordinal: u64 = ordinal.parse().unwrap();
        if let Some(prev) = last.insert((sender.to_string(), p), ordinal) {
            assert!(
                prev < ordinal,
                "{sender} priority {p}: {ordinal} after {prev}"
            );
        }
    }
}

/// A message whose TimeToBeReceived passed, sent with negative journaling (JN), leaves its queue
/// for the dead-letter queue through the shards' expiry scan, which never waits for the disk: the
/// copy's commit is started, and the original goes once the copy is durable (two shards, so the
/// dead-letter queue may be another shard's).
#[test]
fn an_expired_message_with_jn_reaches_the_dead_letter_queue_through_the_shards_scan() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--cores", "0,1"]);
    server.cli(&["queue", "create", "q"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let dest = utf16z("TCP:127.0.0.1\\private$\\q");
    let label = utf16z("expiring");
    let mut m = UserMessage::new(
        Guid([0x71; 16]),
        1,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"late",
    )
    .with_recoverable(true)
    .with_sent_time(now - 100)
    .with_time_to_be_received(10);
    m.user.flags = m.user.flags.with(lior::wire::user::UserFlags::JN, true);
    m.sync();
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    let mut c = Client::connect(server.listen, Guid([0x71; 16]));
    c.send(&f[..n], true, 1);
    c.wait_acked();
    // Both moves show in the queue list: the copy in the dead-letter queue (once durable) and
    // the original gone from q (once the copy is durable).
    let counts = || -> (u64, u64) {
        let list: serde_json::Value =
            serde_json::from_str(&server.cli(&["queue", "list", "--json"])).unwrap();
        let n = |name: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"].as_str() == Some(name))
                .and_then(|q| q["messages"].as_u64())
                .unwrap_or(0)
        };
        (n("system$;deadletter"), n("q"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = counts();
    while seen != (1, 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = counts();
    }
    assert_eq!(seen, (1, 0), "(dead-letter queue, q) after the expiry scan");
    let dead = server.receive_all("deadletter");
    assert_eq!(dead.len(), 1);
}
