//! Two `lior serve` processes on one host, standing for two machines (127.0.0.2 and
//! 127.0.0.3): messages for a remote queue wait in an outgoing queue and reach the other queue
//! manager over MS-MQQB; a NACK the sender asked for comes back to its admin queue.

mod common;
use common::{alias_config as config, free_port};

use common::bodies;

use std::time::Duration;

use common::api::{get_json, metric, outgoing_len};
use common::{Client, Server};
use lior::wire::headers::AckFlags;
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

/// Two queue managers standing for two machines: `a` at `ip_a`, `b` at `ip_b` (with
/// `extra_b` in its config). Each reaches the other on its port.
fn pair(ip_a: &str, ip_b: &str, extra_b: &str) -> (Server, Server, [tempfile::TempDir; 2]) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port_a = free_port(ip_a);
    let cb = config(db.path(), ip_b, port_a, extra_b);
    let listen_b = format!("{ip_b}:0");
    let b = Server::start_with(
        &db.path().join("data"),
        &["--config", &cb, "--listen", &listen_b],
    );
    let ca = config(da.path(), ip_a, b.listen.port(), "");
    let listen_a = format!("{ip_a}:{port_a}");
    let a = Server::start_with(
        &da.path().join("data"),
        &["--config", &ca, "--listen", &listen_a],
    );
    (a, b, [da, db])
}

#[test]
fn remote_sends_wait_in_outgoing_queues_and_nacks_come_back() {
    let (a, b, _dirs) = pair(
        "127.0.0.3",
        "127.0.0.2",
        "[Parameters.Security]\nPermitInsecureNacks = true\n",
    );
    b.cli(&["queue", "create", "orders"]);
    a.cli(&["queue", "create", "admin"]);

    // A sends to B's queue: stored in A's outgoing queue, then delivered.
    let out = a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.2\\private$\\orders",
        "--label",
        "from A",
        "--body",
        "hello",
        "--recoverable",
        "--count",
        "5",
    ]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("outgoing queue TCP:127.0.0.2"))
            .count(),
        5,
        "{out}"
    );
    let got = b.receive_until("orders", 5);
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .all(|m| m["label"] == "from A" && m["class"] == "recoverable"));

    // A message to a machine where nothing listens is accepted at once and waits.
    let out = a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.9\\private$\\x",
        "--body",
        "later",
    ]);
    assert!(out.contains("outgoing queue TCP:127.0.0.9"), "{out}");
    let list = get_json(&a, "/v1/outgoing");
    let waiting = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["destination"] == "TCP:127.0.0.9")
        .unwrap();
    assert_eq!(waiting["messages"], 1);

    // A Windows-like sender asks B for negative-arrival acks on its admin queue on A, and
    // names a queue B does not have: B dead-letters it and sends NACK_BAD_DST_Q to A.
    let mut c = Client::connect(b.listen, Guid([0x44; 16]));
    let dest = utf16z("TCP:127.0.0.2\\private$\\nosuch");
    let admin = utf16z("TCP:127.0.0.3\\private$\\admin");
    let label = utf16z("lost");
    let m = UserMessage::new(
        Guid([0x44; 16]),
        77,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"payload",
    )
    .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::NA));
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    c.send(&f[..n], false, 1);
    c.wait_acked();
    let nack = a.receive_until("admin", 1);
    assert_eq!(nack.len(), 1, "the NACK reached the admin queue");
    assert_eq!(nack[0]["message_class"], "NACK_BAD_DST_Q");
    assert_eq!(nack[0]["label"], "lost");
    use base64::Engine as _;
    let corr = base64::engine::general_purpose::STANDARD
        .decode(nack[0]["correlation_id_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        &corr[..16],
        &[0x44; 16],
        "CorrelationID names the original sender"
    );
    assert_eq!(u32::from_le_bytes(corr[16..].try_into().unwrap()), 77);
    assert_eq!(b.receive_all("deadletter").len(), 1);
}

#[test]
fn receive_and_purge_send_the_receive_acknowledgements_the_sender_asked_for() {
    let (a, b, _dirs) = pair("127.0.0.5", "127.0.0.4", "");
    b.cli(&["queue", "create", "orders"]);
    a.cli(&["queue", "create", "admin"]);

    let mut c = Client::connect(b.listen, Guid([0x55; 16]));
    let dest = utf16z("TCP:127.0.0.4\\private$\\orders");
    let admin = utf16z("TCP:127.0.0.5\\private$\\admin");
    let label = utf16z("tracked");
    for id in [1u32, 2] {
        let m = UserMessage::new(
            Guid([0x55; 16]),
            id,
            QueueRef::Direct(Utf16(&dest)),
            Utf16(&label),
            b"x",
        )
        .with_recoverable(true)
        .with_admin_queue(
            QueueRef::Direct(Utf16(&admin)),
            AckFlags(AckFlags::PR | AckFlags::NR),
        );
        let mut f = vec![0u8; m.frame_len()];
        let n = m.encode(&mut f).unwrap();
        c.send(&f[..n], true, u64::from(id));
    }
    c.wait_acked();
    // The application receives message 1: ACK_RECEIVE. The queue is purged with 2 in it:
    // NACK_Q_PURGED.
    assert_eq!(b.cli(&["receive", "orders", "--json"]).lines().count(), 1);
    b.cli(&["queue", "purge", "orders"]);
    let acks = a.receive_until("admin", 2);
    let mut classes: Vec<String> = acks
        .iter()
        .map(|m| m["message_class"].as_str().unwrap().to_string())
        .collect();
    classes.sort();
    assert_eq!(classes, ["ACK_RECEIVE", "NACK_Q_PURGED"]);
}

#[test]
fn transactional_sends_arrive_exactly_once_in_order_and_leave_on_the_order_ack() {
    let (a, b, _dirs) = pair("127.0.0.7", "127.0.0.6", "");
    b.cli(&["queue", "create", "txq", "--transactional"]);
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.6\\private$\\txq",
        "--transactional",
        "--count",
        "20",
    ]);
    let got = b.receive_until("txq", 20);
    let numbers: Vec<u64> = got
        .iter()
        .map(|m| m["tx_sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=20).collect::<Vec<u64>>(),
        "exactly once, in order"
    );
    assert_eq!(
        bodies(&got),
        (1..=20).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    // The OrderAck came back: A's outgoing queue is empty.
    let mut left = u64::MAX;
    for _ in 0..100 {
        let list = get_json(&a, "/v1/outgoing");
        left = list[0]["messages"].as_u64().unwrap();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left, 0, "messages wait until the OrderAck and no longer");
}

/// One `lior serve` at `ip:port` over data directory `dir` (kept across restarts), reaching its
/// peer on `remote_port`.
fn start_at(dir: &std::path::Path, ip: &str, port: u16, remote_port: u16) -> Server {
    start_at_with(dir, ip, port, remote_port, "")
}

fn start_at_with(
    dir: &std::path::Path,
    ip: &str,
    port: u16,
    remote_port: u16,
    extra: &str,
) -> Server {
    let c = config(dir, ip, remote_port, extra);
    let listen = format!("{ip}:{port}");
    Server::start_with(&dir.join("data"), &["--config", &c, "--listen", &listen])
}

/// What is left in `s`'s outgoing queues once they are empty or about 15 s passed.
fn outgoing_left(s: &Server) -> u64 {
    let mut left = u64::MAX;
    for _ in 0..150 {
        left = outgoing_len(s);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    left
}

/// Issue 8.2: transactional messages queued before the sender restarted used to stay in its
/// outgoing queue (the OrderAck matched no sequence the restarted sender knew) and were resent
/// every 30 s; messages sent later waited behind them.
#[test]
fn transactional_sends_survive_a_sender_restart_and_the_outgoing_queue_empties() {
    let (ip_a, ip_b) = ("127.0.0.11", "127.0.0.10");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let mut b = start_at(db.path(), ip_b, port_b, port_a);
    b.cli(&["queue", "create", "txq", "--transactional"]);
    b.cli(&["queue", "create", "rq"]);
    b.kill9();
    let mut a = start_at(da.path(), ip_a, port_a, port_b);
    for i in 1..=3 {
        a.cli(&[
            "send",
            "DIRECT=TCP:127.0.0.10\\private$\\txq",
            "--transactional",
            "--body",
            &format!("t{i}"),
        ]);
    }
    for i in 1..=2 {
        a.cli(&[
            "send",
            "DIRECT=TCP:127.0.0.10\\private$\\rq",
            "--recoverable",
            "--body",
            &format!("r{i}"),
        ]);
    }
    assert_eq!(outgoing_len(&a), 5);
    // The sender restarts while the receiver is away, then the receiver comes back.
    a.kill9();
    let a = start_at(da.path(), ip_a, port_a, port_b);
    let b = start_at(db.path(), ip_b, port_b, port_a);
    let tx = b.receive_until("txq", 3);
    assert_eq!(bodies(&tx), ["t1", "t2", "t3"], "exactly once, in order");
    // The OrderAck reaches the restarted sender: its outgoing queue empties well before the
    // first transactional resend (30 s).
    assert_eq!(
        outgoing_left(&a),
        0,
        "the OrderAck emptied the outgoing queue"
    );
    // Later messages of every class go through at once, none behind a resend.
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.10\\private$\\rq",
        "--body",
        "e1",
    ]);
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.10\\private$\\txq",
        "--transactional",
        "--body",
        "t4",
    ]);
    let r = b.receive_until("rq", 3);
    assert_eq!(bodies(&r), ["r1", "r2", "e1"]);
    let tx = b.receive_until("txq", 1);
    assert_eq!(bodies(&tx), ["t4"]);
    assert_eq!(outgoing_left(&a), 0);
    assert!(b.receive_all("txq").is_empty() && b.receive_all("rq").is_empty());
}

fn status_guid(s: &Server) -> Guid {
    let v = get_json(s, "/v1/status");
    Guid::parse_text(v["qm_guid"].as_str().unwrap()).unwrap()
}

/// Issue 9.4: an OrderAck was matched by its TxSequenceID alone, so anyone who guessed it (the
/// send time in seconds, ordinal 1) could delete undelivered transactional messages from an
/// outgoing queue. Now only the queue manager the sequence was sent to may acknowledge it.
#[test]
fn spoofed_order_acks_delete_nothing_from_the_outgoing_queue() {
    let (ip_a, ip_b) = ("127.0.0.13", "127.0.0.12");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let b = start_at(db.path(), ip_b, port_b, port_a);
    // Resends every 2 s, so the real delivery at the end needs no long wait.
    let a = start_at_with(
        da.path(),
        ip_a,
        port_a,
        port_b,
        "[Parameters]\nSeqResend13Time = 2\n",
    );
    // B has no queue txq yet: it dead-letters what A sends and sends no OrderAck, so A's
    // messages are sent but stay in its outgoing queue.
    for i in 1..=3 {
        a.cli(&[
            "send",
            "DIRECT=TCP:127.0.0.12\\private$\\txq",
            "--transactional",
            "--body",
            &format!("t{i}"),
        ]);
    }
    let dead = b.receive_until("deadxact", 3);
    assert_eq!(dead.len(), 3);
    let seq_id = u64::from_str_radix(
        dead[0]["tx_sequence_id"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(outgoing_len(&a), 3);
    // Spoofers on their own sessions: a random queue manager, and one claiming B's GUID from
    // another address. Each acknowledges the right sequence id, and a spread of guesses.
    let own_a = status_guid(&a);
    for spoofer in [Guid([0x66; 16]), status_guid(&b)] {
        let mut c = Client::connect(a.listen, spoofer);
        for (k, id) in [seq_id, seq_id - (1 << 32), seq_id + (1 << 32), seq_id + 1]
            .into_iter()
            .enumerate()
        {
            let body = lior::wire::user::OrderAckBody {
                tx_sequence_id: id,
                tx_sequence_number: 100,
                tx_previous_sequence_number: 99,
            }
            .to_bytes();
            let m = UserMessage::order_ack(
                spoofer,
                1000 + k as u32,
                QueueRef::DestinationPrivate(4),
                &body,
            )
            .with_queue_manager_address(own_a);
            let mut f = vec![0u8; m.frame_len()];
            let n = m.encode(&mut f).unwrap();
            c.send(&f[..n], false, k as u64);
        }
        c.wait_acked();
    }
    assert_eq!(outgoing_len(&a), 3, "the spoofed OrderAcks deleted nothing");
    assert!(metric(&a, "lior_tx_acks_refused_total") >= 8);
    // Once B has the queue, A's resend delivers every message, and B's own OrderAck empties
    // A's outgoing queue.
    b.cli(&["queue", "create", "txq", "--transactional"]);
    let got = b.receive_until("txq", 3);
    assert_eq!(bodies(&got), ["t1", "t2", "t3"]);
    assert_eq!(outgoing_left(&a), 0);
}

/// Issue 10: a data directory keeps the store partitions an earlier run with more cores made;
/// each is run by shard `p % shards`. Here A has four partitions and two shards, and its
/// outgoing queue to B is the fourth one created (partition 3): shard 1 must send it. (Before,
/// a shard only sent the outgoing queues whose partition equalled its index, so the messages
/// waited forever.)
#[test]
fn an_outgoing_queue_on_a_partition_beyond_the_shard_count_is_sent() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ip_a, ip_b) = ("127.0.0.3", "127.0.0.2");
    let port_a = free_port(ip_a);
    let cb = config(db.path(), ip_b, port_a, "");
    let listen_b = format!("{ip_b}:0");
    let b = Server::start_with(
        &db.path().join("data"),
        &["--config", &cb, "--listen", &listen_b],
    );
    b.cli(&["queue", "create", "orders"]);
    let data_a = da.path().join("data");
    for p in 0..4 {
        std::fs::create_dir_all(data_a.join(format!("partition-{p}"))).unwrap();
    }
    let ca = config(da.path(), ip_a, b.listen.port(), "");
    let listen_a = format!("{ip_a}:{port_a}");
    let a = Server::start_with(
        &data_a,
        &["--config", &ca, "--listen", &listen_a, "--cores", "0,1"],
    );
    // Outgoing queues take partitions 0, 1, 2, 3 in order of creation.
    for host in ["127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        a.cli(&[
            "send",
            &format!("DIRECT=TCP:{host}\\private$\\x"),
            "--body",
            "waits",
        ]);
    }
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.2\\private$\\orders",
        "--body",
        "from partition 3",
        "--recoverable",
        "--count",
        "3",
    ]);
    let list = get_json(&a, "/v1/outgoing");
    let to_b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["destination"] == "TCP:127.0.0.2")
        .cloned()
        .unwrap();
    assert_eq!(to_b["partition"], 3, "{to_b}");
    let got = b.receive_until("orders", 3);
    assert_eq!(got.len(), 3);
}

/// Issue 10: no thread wakes the shards once a second any more; an outgoing queue whose
/// destination was down retries on the shard's own timer (TryConnectInterval) and delivers
/// once the destination is up, with no other traffic to wake the sender.
#[test]
fn an_outgoing_queue_retries_on_its_own_timer_until_the_destination_is_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ip_a, ip_b) = ("127.0.0.7", "127.0.0.6");
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let ca = config(
        da.path(),
        ip_a,
        port_b,
        "[Parameters]\nTryConnectInterval = 200\n",
    );
    let listen_a = format!("{ip_a}:{port_a}");
    let a = Server::start_with(
        &da.path().join("data"),
        &["--config", &ca, "--listen", &listen_a],
    );
    // Nothing listens at B yet: the connection is refused and the queue waits to retry.
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.6\\private$\\orders",
        "--body",
        "later",
        "--recoverable",
        "--count",
        "2",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(outgoing_len(&a), 2, "still waiting");
    // B comes up with its queue already there (so nothing arrives before it exists).
    let data_b = db.path().join("data");
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::write(
        data_b.join("queues.json"),
        r#"{"next_id": 17, "queues": [
            {"id": 16, "name": "orders", "kind": "private", "transactional": false}]}"#,
    )
    .unwrap();
    let cb = config(db.path(), ip_b, port_a, "");
    let listen_b = format!("{ip_b}:{port_b}");
    let b = Server::start_with(&data_b, &["--config", &cb, "--listen", &listen_b]);
    let got = b.receive_until("orders", 2);
    assert_eq!(got.len(), 2);
}

/// Issue 12 (5): outgoing queues show their state and can be paused and resumed, as MSMQ's
/// console offers; a paused queue keeps its messages (across a restart too) and sends them
/// once resumed.
#[test]
fn an_outgoing_queue_shows_its_state_and_can_be_paused_and_resumed() {
    let (mut a, b, dirs) = pair("127.0.0.9", "127.0.0.8", "");
    b.cli(&["queue", "create", "orders"]);
    let to_b = "DIRECT=TCP:127.0.0.8\\private$\\orders";
    a.cli(&["send", to_b, "--body", "first", "--recoverable"]);
    assert_eq!(b.receive_until("orders", 1).len(), 1);
    let state = |a: &Server| {
        let list = get_json(a, "/v1/outgoing");
        list.as_array()
            .unwrap()
            .iter()
            .find(|q| q["destination"] == "TCP:127.0.0.8")
            .cloned()
            .unwrap()
    };
    // Published by the shard within a turn or two.
    let wait_state = |a: &Server, want: &str| {
        for _ in 0..100 {
            if state(a)["state"] == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("outgoing queue never {want}: {}", state(a));
    };
    wait_state(&a, "connected");
    let out = a.cli(&["outgoing", "pause", "tcp:127.0.0.8"]);
    assert!(out.contains("paused TCP:127.0.0.8"), "{out}");
    wait_state(&a, "paused");
    a.cli(&[
        "send",
        to_b,
        "--body",
        "held",
        "--recoverable",
        "--count",
        "3",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&a)["messages"], 3, "kept while paused");
    assert!(
        b.receive_all("orders").is_empty(),
        "nothing sent while paused"
    );
    let listed = a.cli(&["outgoing", "list"]);
    assert!(
        listed.contains("TCP:127.0.0.8") && listed.contains("paused"),
        "{listed}"
    );

    // Paused survives a restart of the sender.
    a.kill9();
    let ca = dirs[0].path().join("lior.toml");
    let a = Server::start_with(
        &dirs[0].path().join("data"),
        &[
            "--config",
            ca.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.9:{}", free_port("127.0.0.9")),
        ],
    );
    wait_state(&a, "paused");
    assert_eq!(state(&a)["messages"], 3);

    a.cli(&["outgoing", "resume", "TCP:127.0.0.8"]);
    assert_eq!(b.receive_until("orders", 3).len(), 3);
    let err = std::process::Command::new(common::BIN)
        .args(["outgoing", "pause", "TCP:10.9.9.9", "--api", &a.api])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("TCP:10.9.9.9"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

/// Issue 12 item 6: a remote machine that listens on its own port (`[remotes."HOST"] port`) is
/// reached there, while the others keep `remote_port`.
#[test]
fn a_remote_machine_with_its_own_port_is_reached_on_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = start_at(db.path(), "127.0.0.2", 0, free_port("127.0.0.3"));
    b.cli(&["queue", "create", "orders"]);
    // A's default remote port leads nowhere; B's own entry names its real port.
    let nowhere = free_port("127.0.0.2");
    let extra = format!("[remotes.\"127.0.0.2\"]\nport = {}\n", b.listen.port());
    let a = start_at_with(da.path(), "127.0.0.3", 0, nowhere, &extra);
    a.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.2\\private$\\orders",
        "--body",
        "on its own port",
        "--recoverable",
    ]);
    let got = b.receive_until("orders", 1);
    assert_eq!(bodies(&got), ["on its own port"]);
    assert_eq!(outgoing_left(&a), 0);
}

/// Issue 12 item 6: the address a queue manager listens on names it, without an `aliases`
/// entry: a send to `DIRECT=TCP:<listen address>\private$\q` is local.
#[test]
fn the_listen_address_names_this_machine_without_an_alias() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(&d.path().join("data"), &["--listen", "127.0.0.5:0"]);
    s.cli(&["queue", "create", "q"]);
    let out = s.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.5\\private$\\q",
        "--body",
        "here",
    ]);
    assert!(!out.contains("outgoing queue"), "{out}");
    assert_eq!(bodies(&s.receive_until("q", 1)), ["here"]);
}
