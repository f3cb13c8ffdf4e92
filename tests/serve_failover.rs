//! Issue 14.4: failover as a cluster does it (docs/ha.md). The node running the queue manager
//! dies (`kill -9`) under recoverable and transactional load from real MS-MQQB senders; its data
//! directory (the replicated volume) is brought up elsewhere (here: copied) and a new `lior
//! serve` starts on it at a different address. It must be the same queue manager (same GUID in
//! the handshake and the API), hold every acknowledged message, send what its outgoing queues
//! held, and take the transactional sequences where they were (a sender that goes on after the
//! failover is neither refused nor duplicated).
//!
//! The "machines" are loopback addresses: the first node 127.0.0.41, the node taking over
//! 127.0.0.42, a remote queue manager 127.0.0.43 that starts only after the failover. Senders
//! address the queue manager by its cluster name `lior-ha` (an alias in the shared config, as
//! a Kubernetes Service or Pacemaker IP name would be).

mod common;
use common::free_port;

use common::bodies;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::{get_json, outgoing_len};
use common::{message, Client, Server};
use lior::wire::Guid;

const NODE1: &str = "127.0.0.41";
const NODE2: &str = "127.0.0.42";
const REMOTE: &str = "127.0.0.43";
const DURABLE: &str = "OS:lior-ha\\private$\\durable";
const TXQ: &str = "OS:lior-ha\\private$\\txq";
const TX_SENDER: Guid = Guid([0x7C; 16]);
const TX_SEQ: u64 = (1_800_000_000u64 << 32) | 7;

fn write_config(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A transactional message `no` of the sender's one sequence, its number as the body.
fn tx_msg(id: u32, no: u32) -> Vec<u8> {
    common::tx_message(TX_SENDER, id, TXQ, TX_SEQ, no, no == 1)
}

fn body_u32(m: &serde_json::Value) -> u32 {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(m["body_base64"].as_str().unwrap())
        .unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

/// Copies the data directory as a replicated volume would present it on the other node: every
/// file byte for byte (the dead node's lock file included; it is only an flock).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn qm_guid(s: &Server) -> String {
    get_json(s, "/v1/status")["qm_guid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_new_node_on_a_copy_of_the_data_directory_is_the_same_queue_manager_and_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (port1, port2, port_remote) = (free_port(NODE1), free_port(NODE2), free_port(REMOTE));
    // One config for both nodes, as a cluster ships it: the cluster name, the remote machine's
    // port, quick retries of the outgoing queues.
    let cfg = write_config(
        &work.path().join("lior.toml"),
        &format!(
            "aliases = [\"lior-ha\"]\nremote_port = {port_remote}\n\
             [Parameters]\nTryConnectInterval = 200\n"
        ),
    );
    let data1 = work.path().join("node1");
    let mut node1 = Server::start_with(
        &data1,
        &["--config", &cfg, "--listen", &format!("{NODE1}:{port1}")],
    );
    node1.cli(&["queue", "create", "durable"]);
    node1.cli(&["queue", "create", "txq", "--transactional"]);
    let guid = qm_guid(&node1);

    // Outgoing queues to a machine that is down: recoverable and transactional sends wait.
    node1.cli(&[
        "send",
        &format!("DIRECT=TCP:{REMOTE}\\private$\\orders"),
        "--recoverable",
        "--body",
        "out",
        "--count",
        "5",
    ]);
    for i in 1..=3 {
        node1.cli(&[
            "send",
            &format!("DIRECT=TCP:{REMOTE}\\private$\\txq"),
            "--transactional",
            "--body",
            &format!("t{i}"),
        ]);
    }
    assert_eq!(outgoing_len(&node1), 8);

    // The transactional sender's first ten messages, acknowledged before the load.
    let mut tx = Client::connect(node1.listen, TX_SENDER);
    assert_eq!(
        tx.session.remote_qm().to_string(),
        guid,
        "the handshake names the queue manager"
    );
    for no in 1..=10u32 {
        tx.send(&tx_msg(no, no), true, u64::from(no));
    }
    tx.wait_acked();

    // Recoverable load from two senders, and the transactional sender going on, until node 1
    // is killed.
    let acked: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2u32)
        .map(|s| {
            let (acked, stop, listen) = (acked.clone(), stop.clone(), node1.listen);
            std::thread::spawn(move || {
                let g = Guid([0x50 + s as u8; 16]);
                let mut c = Client::connect(listen, g);
                let mut id = 1 + s * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let f = message(g, id, DURABLE, &id.to_le_bytes(), true);
                    if !c.try_send(&f, true, u64::from(id)) {
                        break;
                    }
                    id += 1;
                    c.pump();
                    let mut a = acked.lock().unwrap();
                    for t in c.acked.drain(..) {
                        *a.entry(t as u32).or_default() += 1;
                    }
                }
                while !c.closed {
                    c.pump();
                }
                let mut a = acked.lock().unwrap();
                for t in c.acked.drain(..) {
                    *a.entry(t as u32).or_default() += 1;
                }
            })
        })
        .collect();
    let tx_stop = stop.clone();
    let tx_thread = std::thread::spawn(move || {
        let mut no = 11u32;
        while !tx_stop.load(Ordering::Relaxed) {
            if !tx.try_send(&tx_msg(no, no), true, u64::from(no)) {
                break;
            }
            no += 1;
            tx.pump();
            // A slow transactional stream beside the bulk load.
            std::thread::sleep(Duration::from_millis(5));
        }
        while !tx.closed {
            tx.pump();
        }
        let mut acked: Vec<u32> = tx.acked.drain(..).map(|t| t as u32).collect();
        acked.sort_unstable();
        (no - 1, acked)
    });
    std::thread::sleep(Duration::from_millis(700));
    node1.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in senders {
        t.join().unwrap();
    }
    let (tx_last, tx_acked) = tx_thread.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.values().all(|&n| n == 1), "an ack was reported twice");
    assert!(acked.len() > 100, "the load ran: {} acks", acked.len());
    println!(
        "node 1 killed: {} recoverable acknowledged, transactional sent up to {tx_last} \
         ({} acknowledged in the load)",
        acked.len(),
        tx_acked.len()
    );

    // The volume comes up on node 2; lior starts there at another address.
    let data2 = work.path().join("node2");
    copy_dir(&data1, &data2);
    let started = Instant::now();
    let node2 = Server::start_with(
        &data2,
        &["--config", &cfg, "--listen", &format!("{NODE2}:{port2}")],
    );
    println!(
        "node 2 ready {} ms after its start (recovery of the copied store included)",
        started.elapsed().as_millis()
    );
    assert_eq!(
        node2.listen.to_string(),
        format!("{NODE2}:{port2}"),
        "another address"
    );
    assert_eq!(
        qm_guid(&node2),
        guid,
        "the API names the same queue manager"
    );

    // The transactional sender reconnects to the new address: the handshake names the same
    // queue manager. It resends everything of its sequence that it has no OrderAck for (here:
    // all of it) and goes on with three new messages; none is refused, none is duplicated.
    let mut tx = Client::connect(node2.listen, TX_SENDER);
    assert_eq!(
        tx.session.remote_qm().to_string(),
        guid,
        "the handshake names the same queue manager"
    );
    let tx_end = tx_last + 3;
    for no in 1..=tx_end {
        tx.send(&tx_msg(1000 + no, no), true, u64::from(no));
    }
    tx.wait_acked();
    let got: Vec<u32> = node2.receive_all("txq").iter().map(body_u32).collect();
    assert_eq!(
        got,
        (1..=tx_end).collect::<Vec<u32>>(),
        "the sequence goes on after the failover, exactly once, in order"
    );

    // Every acknowledged recoverable message is there, once.
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for m in node2.receive_all("durable") {
        *seen.entry(body_u32(&m)).or_default() += 1;
    }
    let lost: Vec<_> = acked.keys().filter(|id| !seen.contains_key(id)).collect();
    let dup: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(dup.is_empty(), "duplicated: {dup:?}");

    // The outgoing queues came along; once the remote machine is up they are delivered, the
    // transactional ones exactly once and in order.
    assert_eq!(
        outgoing_len(&node2),
        8,
        "the outgoing queues moved with the data"
    );
    let remote_dir = work.path().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();
    std::fs::write(
        remote_dir.join("queues.json"),
        r#"{"next_id": 18, "queues": [
            {"id": 16, "name": "orders", "kind": "private", "transactional": false},
            {"id": 17, "name": "txq", "kind": "private", "transactional": true}]}"#,
    )
    .unwrap();
    let remote_cfg = write_config(
        &work.path().join("remote.toml"),
        &format!("aliases = [\"{REMOTE}\"]\nremote_port = {port2}\n"),
    );
    let remote = Server::start_with(
        &remote_dir,
        &[
            "--config",
            &remote_cfg,
            "--listen",
            &format!("{REMOTE}:{port_remote}"),
        ],
    );
    assert_eq!(bodies(&remote.receive_until("orders", 5)), ["out"; 5]);
    assert_eq!(
        bodies(&remote.receive_until("txq", 3)),
        ["t1", "t2", "t3"],
        "exactly once, in order"
    );
    assert!(remote.receive_all("orders").is_empty() && remote.receive_all("txq").is_empty());
    let mut left = u64::MAX;
    for _ in 0..150 {
        left = outgoing_len(&node2);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        left, 0,
        "acknowledged by the remote machine, the outgoing queues empty"
    );
}
