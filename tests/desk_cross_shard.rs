//! Issue 10 (branch deskown): the request desk's acknowledgements go through the owner. On
//! `lior serve --cores 0,1`, an application receives (HTTP API) a message from a queue owned by
//! shard 0 whose admin queue is reached through an outgoing queue owned by shard 1: the
//! positive receive acknowledgement crosses to shard 1 as mail (`Mail::Store`), is durable
//! there before the receive is answered, and reaches the sender's admin queue exactly once,
//! `kill -9` of the receiver right after the answer included.

mod common;
use common::{alias_config as config, free_port};

use std::time::Duration;

use common::api::metric;
use common::{Client, Server};
use lior::wire::headers::AckFlags;
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

/// The catalog entry (`queues.json` of the test's own data directory) of queue `name`: its
/// partition.
fn partition_of(data: &std::path::Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(data.join("queues.json")).unwrap();
    let cat: serde_json::Value = serde_json::from_str(&text).unwrap();
    cat["queues"]
        .as_array()?
        .iter()
        .find(|q| q["name"].as_str() == Some(name))?["partition"]
        .as_u64()
}

/// The shard of the outgoing queue whose key mentions `host` (`outgoing.json`).
fn outgoing_shard(data: &std::path::Path, host: &str) -> Option<u64> {
    let text = std::fs::read_to_string(data.join("outgoing.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let all = v
        .as_array()
        .cloned()
        .or_else(|| v["queues"].as_array().cloned())
        .unwrap_or_default();
    all.iter()
        .find(|q| q["key"].as_str().is_some_and(|k| k.contains(host)))?["shard"]
        .as_u64()
}

fn tracked(sender: Guid, id: u32, dest: &str, admin: &str) -> Vec<u8> {
    let dest = utf16z(dest);
    let admin = utf16z(admin);
    let label = utf16z(&format!("m{id}"));
    let m = UserMessage::new(
        sender,
        id,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"x",
    )
    .with_recoverable(true)
    .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::PR));
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    f.truncate(n);
    f
}

#[test]
fn a_receive_ack_for_another_shards_outgoing_queue_crosses_by_mail_and_arrives_once_across_kill_9()
{
    let (ip_a, ip_b) = ("127.0.0.41", "127.0.0.42");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let cb = config(db.path(), ip_b, port_a, "cores = [0, 1]\n");
    let listen_b = format!("{ip_b}:{port_b}");
    let data_b = db.path().join("data");
    let start_b = || Server::start_with(&data_b, &["--config", &cb, "--listen", &listen_b]);
    let mut b = start_b();
    let ca = config(da.path(), ip_a, port_b, "");
    let listen_a = format!("{ip_a}:{port_a}");
    let a = Server::start_with(
        &da.path().join("data"),
        &["--config", &ca, "--listen", &listen_a],
    );
    a.cli(&["queue", "create", "admin"]);

    // B's first outgoing queue (shard 0) goes nowhere; its second, to A, is shard 1's.
    b.cli(&[
        "send",
        "DIRECT=TCP:127.0.0.43\\private$\\nowhere",
        "--body",
        "kept",
    ]);
    // A queue of B owned by partition 0 (shard 0).
    let mut queue = None;
    for i in 0..8 {
        let name = format!("orders{i}");
        b.cli(&["queue", "create", &name]);
        if partition_of(&data_b, &name) == Some(0) {
            queue = Some(name);
            break;
        }
    }
    let queue = queue.expect("a queue on partition 0");

    let sender = Guid([0x5A; 16]);
    let dest = format!("TCP:{ip_b}\\private$\\{queue}");
    let admin = format!("TCP:{ip_a}\\private$\\admin");
    let mut c = Client::connect(b.listen, sender);
    for id in [1u32, 2] {
        c.send(&tracked(sender, id, &dest, &admin), true, u64::from(id));
    }
    c.wait_acked();
    drop(c);

    // Message 1: received, its ACK_RECEIVE crosses to shard 1 and reaches A.
    let mailed_before = metric(&b, "lior_records_mailed_total");
    let got = b.cli(&["receive", &queue, "--json"]);
    assert_eq!(got.lines().count(), 1, "{got}");
    assert_eq!(
        outgoing_shard(&data_b, ip_a),
        Some(1),
        "the test needs B's outgoing queue to A on shard 1"
    );
    assert!(
        metric(&b, "lior_records_mailed_total") > mailed_before,
        "the receive's acknowledgement for shard 1's outgoing queue crossed as Mail::Store"
    );
    let acks = a.receive_until("admin", 1);
    assert_eq!(acks.len(), 1, "{acks:?}");

    // Message 2: received, and B is killed as soon as the receive is answered; its ack was
    // durable before the answer, so B sends it after the restart.
    let got = b.cli(&["receive", &queue, "--json"]);
    b.kill9();
    assert_eq!(got.lines().count(), 1, "{got}");
    let b = start_b();
    let mut all = acks;
    all.extend(a.receive_until("admin", 1));
    // Anything sent twice would arrive within these seconds too.
    std::thread::sleep(Duration::from_secs(3));
    all.extend(a.receive_all("admin"));
    let mut labels: Vec<String> = all
        .iter()
        .map(|m| {
            assert_eq!(m["message_class"], "ACK_RECEIVE", "{m}");
            m["correlation_id_base64"].as_str().unwrap().to_string()
        })
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(
        (all.len(), labels.len()),
        (2, 2),
        "one ACK_RECEIVE per received message, each once: {all:?}"
    );
    assert!(
        b.cli(&["receive", &queue, "--json"]).is_empty(),
        "both messages stay received"
    );
}
