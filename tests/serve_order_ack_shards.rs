//! Issue 10 (one owner per queue): an outgoing queue's transactional sequence (what it numbered,
//! sent, and to which queue manager) lives with the partition storing the queue, run by one
//! shard. An OrderAck may arrive on a session of the other shard (a session the peer opened to
//! us, which the kernel gave to either shard): it crosses to the owner unverified, and the owner
//! verifies it (from the queue manager the sequence was sent to? numbers sent?) and removes
//! what it acknowledges, or counts and logs the refusal. Two `lior serve` on `--cores 0,1`
//! standing for two machines (127.0.0.x aliases); the test plays the peer's second session,
//! bound to the peer's address, and checks on `/metrics` which shard accepted it.

mod common;
use common::free_port;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::api::{get_json, metric, outgoing_len};
use common::{Client, Server};
use lior::wire::user::{OrderAckBody, QueueRef, UserMessage};
use lior::wire::Guid;

fn start(dir: &std::path::Path, ip: &str, port: u16, remote_port: u16) -> Server {
    let cfg = dir.join("lior.toml");
    std::fs::write(
        &cfg,
        format!("cores = [0, 1]\naliases = [\"{ip}\"]\nremote_port = {remote_port}\n"),
    )
    .unwrap();
    let listen = format!("{ip}:{port}");
    Server::start_with(
        &dir.join("data"),
        &["--config", cfg.to_str().unwrap(), "--listen", &listen],
    )
}

fn status_guid(s: &Server) -> Guid {
    let v = get_json(s, "/v1/status");
    Guid::parse_text(v["qm_guid"].as_str().unwrap()).unwrap()
}

fn accepted(s: &Server, shard: u64) -> u64 {
    metric(
        s,
        &format!("lior_shard_connections_accepted_total{{shard=\"{shard}\"}}"),
    )
}

/// The partition (and so the shard, with two) of the only outgoing queue in `data`.
fn outgoing_partition(data: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(data.join("outgoing.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let qs = v["queues"].as_array().unwrap();
    assert_eq!(qs.len(), 1, "one outgoing queue: {v}");
    qs[0]["shard"].as_u64().unwrap()
}

/// A session to `a` from `from` as queue manager `guid`, accepted by shard `shard` (sessions
/// the kernel gave to the other shard are closed and another is tried).
fn session_on_shard(a: &Server, from: IpAddr, guid: Guid, shard: u64) -> Client {
    for _ in 0..64 {
        let before = (accepted(a, 0), accepted(a, 1));
        let c = Client::connect_from(a.listen, from, guid);
        let after = (accepted(a, 0), accepted(a, 1));
        let grew = (after.0 - before.0, after.1 - before.1);
        let want = if shard == 0 { (1, 0) } else { (0, 1) };
        if grew == want {
            return c;
        }
    }
    panic!("64 sessions and none accepted by shard {shard} alone");
}

/// An OrderAck for sequence `seq_id` up to `number`, from `from` to `to`'s order queue.
fn order_ack(from: Guid, to: Guid, ordinal: u32, seq_id: u64, number: u32) -> Vec<u8> {
    let body = OrderAckBody {
        tx_sequence_id: seq_id,
        tx_sequence_number: number,
        tx_previous_sequence_number: number.saturating_sub(1),
    }
    .to_bytes();
    let m = UserMessage::order_ack(from, ordinal, QueueRef::DestinationPrivate(4), &body)
        .with_queue_manager_address(to);
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    f.truncate(n);
    f
}

/// `a`'s outgoing queues once they hold `n` messages, or what they hold after about 15 s.
fn outgoing_becomes(a: &Server, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = outgoing_len(a);
        if left == n || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `a`'s refused OrderAcks/FinalAcks once at least `n`, or the count after about 15 s.
fn refused_reaches(a: &Server, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = metric(a, "lior_tx_acks_refused_total");
        if got >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sender A (two shards) with three transactional messages sent to B and waiting for their
/// OrderAck (B has no queue txq: it dead-letters them and acknowledges no order). Returns A,
/// B, B's address, the sequence id and the shard that does NOT run A's outgoing queue.
fn three_sent_and_unacknowledged(
    ip_a: &str,
    ip_b: &str,
    dirs: &[tempfile::TempDir; 2],
) -> (Server, Server, IpAddr, u64, u64) {
    let (port_a, port_b) = (free_port(ip_a), free_port(ip_b));
    let b = start(dirs[1].path(), ip_b, port_b, port_a);
    let a = start(dirs[0].path(), ip_a, port_a, port_b);
    for i in 1..=3 {
        a.cli(&[
            "send",
            &format!("DIRECT=TCP:{ip_b}\\private$\\txq"),
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
    assert_eq!(outgoing_len(&a), 3, "sent, not acknowledged by order");
    let other = 1 - outgoing_partition(&dirs[0].path().join("data")) % 2;
    (a, b, ip_b.parse().unwrap(), seq_id, other)
}

/// The peer's OrderAck arrives on a session of the shard that does not run the outgoing queue:
/// the owner verifies it and removes exactly what it acknowledges; one for numbers beyond what
/// was sent is counted as refused (and takes what was sent).
#[test]
fn an_order_ack_on_the_other_shard_is_verified_and_applied_by_the_owner() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b, ip_b, seq_id, other) =
        three_sent_and_unacknowledged("127.0.0.41", "127.0.0.40", &dirs);
    let (guid_a, guid_b) = (status_guid(&a), status_guid(&b));
    let mut c = session_on_shard(&a, ip_b, guid_b, other);
    c.send(&order_ack(guid_b, guid_a, 900, seq_id, 1), false, 1);
    c.wait_acked();
    assert_eq!(
        outgoing_becomes(&a, 2),
        2,
        "the OrderAck for number 1 removed message 1 only"
    );
    assert_eq!(metric(&a, "lior_order_acks_in_total"), 1);
    let refused = metric(&a, "lior_tx_acks_refused_total");
    // Numbers 1..100 acknowledged, 3 sent: what was sent leaves, the rest is refused.
    c.send(&order_ack(guid_b, guid_a, 901, seq_id, 100), false, 2);
    c.wait_acked();
    assert_eq!(outgoing_becomes(&a, 0), 0, "messages 2 and 3 left");
    assert_eq!(refused_reaches(&a, refused + 1), refused + 1);
    assert_eq!(metric(&a, "lior_order_acks_in_total"), 2);
}

/// OrderAcks arriving on the shard that does not run the outgoing queue, from a queue manager
/// the sequence was not sent to, or naming a sequence never sent there, are refused by the
/// owner: counted once each, nothing removed.
#[test]
fn a_wrong_order_ack_on_the_other_shard_is_refused_by_the_owner() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b, ip_b, seq_id, other) =
        three_sent_and_unacknowledged("127.0.0.43", "127.0.0.42", &dirs);
    let (guid_a, guid_b) = (status_guid(&a), status_guid(&b));
    let before = metric(&a, "lior_tx_acks_refused_total");
    // A stranger from the peer's address; the peer itself for a sequence id never sent.
    let mut stranger = session_on_shard(&a, ip_b, Guid([0x66; 16]), other);
    stranger.send(
        &order_ack(Guid([0x66; 16]), guid_a, 900, seq_id, 3),
        false,
        1,
    );
    stranger.wait_acked();
    let mut peer = session_on_shard(&a, ip_b, guid_b, other);
    peer.send(&order_ack(guid_b, guid_a, 901, seq_id + 1, 3), false, 1);
    peer.wait_acked();
    assert_eq!(
        refused_reaches(&a, before + 2),
        before + 2,
        "each counted once"
    );
    assert_eq!(outgoing_len(&a), 3, "nothing removed");
    assert_eq!(metric(&a, "lior_order_acks_in_total"), 0);
    // The peer's right OrderAck on that shard is still taken.
    peer.send(&order_ack(guid_b, guid_a, 902, seq_id, 3), false, 2);
    peer.wait_acked();
    assert_eq!(outgoing_becomes(&a, 0), 0);
    assert_eq!(metric(&a, "lior_tx_acks_refused_total"), before + 2);
}
