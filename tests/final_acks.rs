//! FinalAcks between two `lior serve` processes standing for two machines (MS-MQQB 2.2.5,
//! 3.1.5.7, 3.1.7.2.2; DIGEST §6.2, §10.2): A sends transactional messages asking for source
//! journaling to B; B owes A a FinalAck when an application receives the message (ACK_RECEIVE),
//! when it is purged (NACK_Q_PURGED) and when it refuses it at arrival (NACK_ACCESS_DENIED);
//! A copies the message to its machine journal (JP, positive) or its transactional dead-letter
//! queue (JN, negative), and keeps a message between its OrderAck and its FinalAck across a
//! restart.

mod common;
use common::{alias_config, free_port};

use common::bodies;

use std::time::Duration;

use common::api::{metric, outgoing_len};
use common::Server;

/// One `lior serve` at `ip:port` over `dir` (kept across restarts), reaching its peer on
/// `remote_port`.
fn start_at(dir: &std::path::Path, ip: &str, port: u16, remote_port: u16) -> Server {
    let c = alias_config(dir, ip, remote_port, "");
    let listen = format!("{ip}:{port}");
    Server::start_with(&dir.join("data"), &["--config", &c, "--listen", &listen])
}

struct Pair {
    a: Server,
    b: Server,
    ports: (u16, u16),
    ips: (&'static str, &'static str),
    dirs: [tempfile::TempDir; 2],
}

/// A at 127.0.0.1 sends to B at `ip_b`; B has the transactional queue `txq`. A listens on
/// 127.0.0.1 because that is the address its connections come from (the kernel's source
/// address for loopback), the address B sends FinalAcks to (DIGEST §6.3).
fn pair(ip_b: &'static str) -> Pair {
    let ip_a = "127.0.0.1";
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let b = start_at(db.path(), ip_b, port_b, port_a);
    let a = start_at(da.path(), ip_a, port_a, port_b);
    b.cli(&["queue", "create", "txq", "--transactional"]);
    Pair {
        a,
        b,
        ports: (port_a, port_b),
        ips: (ip_a, ip_b),
        dirs: [da, db],
    }
}

fn send(p: &Pair, body: &str, flags: &[&str]) {
    let to = format!("DIRECT=TCP:{}\\private$\\txq", p.ips.1);
    let mut args = vec!["send", &to, "--transactional", "--body", body];
    args.extend_from_slice(flags);
    p.a.cli(&args);
}

/// Waits (about 15 s at most) until `metric` on `s` reaches `n`; returns its last value.
fn metric_reaches(s: &Server, name: &str, n: u64) -> u64 {
    let mut v = 0;
    for _ in 0..150 {
        v = metric(s, name);
        if v >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    v
}

/// Peeks at `queue` until it holds `n` messages (about 10 s at most).
fn peek_until(s: &Server, queue: &str, n: usize) -> usize {
    let mut got = 0;
    for _ in 0..100 {
        got = s
            .cli(&["peek", queue, "--count", "100", "--json"])
            .lines()
            .count();
        if got >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    got
}

#[test]
fn a_received_message_brings_its_final_ack_and_lands_in_the_senders_journal() {
    let p = pair("127.0.0.20");
    for i in 1..=3 {
        send(&p, &format!("j{i}"), &["--journal"]);
    }
    let got = p.b.receive_until("txq", 3);
    assert_eq!(bodies(&got), ["j1", "j2", "j3"]);
    assert_eq!(
        metric_reaches(&p.b, "lior_final_acks_sent_total", 3),
        3,
        "B owes one FinalAck per received message"
    );
    assert_eq!(
        metric_reaches(&p.a, "lior_final_acks_in_total", 3),
        3,
        "A took the three FinalAcks"
    );
    // The journal copies are records of the shard running the journal's partition, stored
    // (and visible once durable) a moment after the FinalAck is counted: wait for them.
    let journal = p.a.receive_until("journal", 3);
    assert_eq!(
        bodies(&journal),
        ["j1", "j2", "j3"],
        "each positively acknowledged message is in A's machine journal, in order"
    );
    assert_eq!(metric(&p.a, "lior_journal_copies_total"), 3);
    assert_eq!(outgoing_len(&p.a), 0, "nothing of them is left to send");
    assert_eq!(metric(&p.a, "lior_final_acks_unmatched_total"), 0);
}

#[test]
fn a_purge_brings_a_negative_final_ack_and_jn_keeps_a_dead_letter() {
    let p = pair("127.0.0.22");
    send(&p, "dead", &["--dead-letter"]);
    send(&p, "kept", &["--journal"]);
    assert_eq!(peek_until(&p.b, "txq", 2), 2);
    p.b.cli(&["queue", "purge", "txq"]);
    assert_eq!(metric_reaches(&p.a, "lior_final_acks_in_total", 2), 2);
    assert_eq!(
        bodies(&p.a.receive_all("deadxact")),
        ["dead"],
        "the purged message asking for negative journaling is in A's transactional dead-letter queue"
    );
    assert!(
        p.a.receive_all("journal").is_empty(),
        "a negative FinalAck journals nothing"
    );
    assert_eq!(outgoing_len(&p.a), 0);
}

#[test]
fn a_message_refused_at_its_destination_brings_a_negative_final_ack() {
    let p = pair("127.0.0.24");
    p.b.cli(&["queue", "revoke", "txq", "Everyone", "send"]);
    p.b.cli(&["queue", "revoke", "txq", "Anonymous", "send"]);
    send(&p, "refused", &["--dead-letter"]);
    assert_eq!(metric_reaches(&p.b, "lior_access_denied_total", 1), 1);
    assert_eq!(metric_reaches(&p.a, "lior_final_acks_in_total", 1), 1);
    assert_eq!(bodies(&p.a.receive_all("deadxact")), ["refused"]);
    // Nothing is left waiting at A for a message B will never take.
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = outgoing_len(&p.a);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left, 0);
}

#[test]
fn a_message_awaiting_its_final_ack_survives_a_sender_restart() {
    let mut p = pair("127.0.0.26");
    send(&p, "w1", &["--journal"]);
    assert_eq!(peek_until(&p.b, "txq", 1), 1);
    // The OrderAck came: A's outgoing queue is empty, the message awaits its FinalAck.
    let mut left = u64::MAX;
    for _ in 0..150 {
        left = outgoing_len(&p.a);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left, 0, "the OrderAck emptied the outgoing queue");
    // Let the partition's commit of that move land, then crash A.
    std::thread::sleep(Duration::from_millis(500));
    p.a.kill9();
    p.a = start_at(p.dirs[0].path(), p.ips.0, p.ports.0, p.ports.1);
    assert_eq!(bodies(&p.b.receive_until("txq", 1)), ["w1"]);
    assert_eq!(metric_reaches(&p.a, "lior_final_acks_in_total", 1), 1);
    assert_eq!(
        bodies(&p.a.receive_all("journal")),
        ["w1"],
        "the restarted sender still knew the message and journaled it"
    );
}

#[test]
fn a_non_transactional_message_with_jp_is_journaled_once_the_next_hop_has_it() {
    let p = pair("127.0.0.28");
    p.b.cli(&["queue", "create", "plain"]);
    let to = format!("DIRECT=TCP:{}\\private$\\plain", p.ips.1);
    p.a.cli(&["send", &to, "--recoverable", "--journal", "--body", "s1"]);
    p.a.cli(&["send", &to, "--recoverable", "--body", "s2"]);
    assert_eq!(bodies(&p.b.receive_until("plain", 2)), ["s1", "s2"]);
    assert_eq!(metric_reaches(&p.a, "lior_journal_copies_total", 1), 1);
    assert_eq!(
        bodies(&p.a.receive_all("journal")),
        ["s1"],
        "only the message sent with JP is in the sender's machine journal"
    );
}

/// Issue 10 (branch deskown): where a sender's FinalAcks go is kept by the partition that
/// stores its message (the one that owes the FinalAck), not in a machine-wide table: on
/// `--cores 0,1`, B's table for `txq`'s partition holds A's address, the other partition's
/// holds nothing, and the FinalAck still reaches A whichever shard the session landed on.
#[test]
fn the_final_ack_address_is_kept_by_the_partition_storing_the_message() {
    let ip_a = "127.0.0.1";
    let ip_b = "127.0.0.26";
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let cb = db.path().join("lior.toml");
    std::fs::write(
        &cb,
        format!("aliases = [\"{ip_b}\"]\nremote_port = {port_a}\ncores = [0, 1]\n"),
    )
    .unwrap();
    let data_b = db.path().join("data");
    let listen_b = format!("{ip_b}:{port_b}");
    let b = Server::start_with(
        &data_b,
        &["--config", cb.to_str().unwrap(), "--listen", &listen_b],
    );
    let a = start_at(da.path(), ip_a, port_a, port_b);
    b.cli(&["queue", "create", "txq", "--transactional"]);
    let to = format!("DIRECT=TCP:{ip_b}\\private$\\txq");
    a.cli(&["send", &to, "--transactional", "--body", "t1", "--journal"]);
    let got = b.receive_until("txq", 1);
    assert_eq!(bodies(&got), ["t1"]);
    assert_eq!(metric_reaches(&a, "lior_final_acks_in_total", 1), 1);
    let cat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_b.join("queues.json")).unwrap()).unwrap();
    let p = cat["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "txq")
        .and_then(|q| q["partition"].as_u64())
        .expect("txq's partition");
    let table = |p: u64| std::fs::read_to_string(data_b.join(format!("final_ack_peers.p{p}.json")));
    let own = table(p).expect("the storing partition's table is written");
    assert!(own.contains(ip_a), "{own}");
    assert!(
        table(1 - p).map_or(true, |t| !t.contains(ip_a)),
        "the other partition keeps no entry for a message it did not store"
    );
    assert!(
        !data_b.join("final_ack_peers.json").exists(),
        "no machine-wide table"
    );
}
