//! Queue journals (MS-MQDMPR Journal, JournalQuota): a queue with `journal` on keeps a copy of
//! every message an application receives from it in `NAME;journal`, in order, durable with
//! the receive (kept across `kill -9`), readable and purgeable like any queue; over
//! `JournalQuota` the copy is dropped and counted while the receive succeeds.

mod common;

use common::bodies;

use common::api::metric;
use common::Server;

fn start(dir: &std::path::Path, config: &str) -> Server {
    let path = dir.join("lior.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_with(&dir.join("data"), &["--config", path.to_str().unwrap()])
}

fn receive(s: &Server, queue: &str, count: usize) -> Vec<serde_json::Value> {
    s.cli(&["receive", queue, "--count", &count.to_string(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn peek(s: &Server, queue: &str) -> Vec<serde_json::Value> {
    s.cli(&["peek", queue, "--count", "100", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_received_message_of_a_journaled_queue_is_in_its_journal_across_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let mut s = start(d.path(), "");
    s.cli(&["queue", "create", "orders"]);
    let shown = s.cli(&["queue", "journal", "orders", "on"]);
    assert!(shown.contains("journal: yes"), "{shown}");
    assert!(!shown.contains("no queue journals"), "{shown}");
    for i in 1..=5 {
        s.cli(&[
            "send",
            "DIRECT=OS:.\\private$\\orders",
            "--recoverable",
            "--body",
            &format!("m{i}"),
        ]);
    }
    assert_eq!(bodies(&receive(&s, "orders", 3)), ["m1", "m2", "m3"]);
    assert_eq!(
        bodies(&peek(&s, "orders;journal")),
        ["m1", "m2", "m3"],
        "each received message is in the journal, in order"
    );
    assert_eq!(bodies(&receive(&s, "orders", 5)), ["m4", "m5"]);
    assert_eq!(metric(&s, "lior_journal_copies_total"), 5);
    // The receives were answered, so their copies are on disk: a crash keeps them.
    s.kill9();
    let s = start(d.path(), "");
    assert!(
        receive(&s, "orders", 10).is_empty(),
        "received stays received"
    );
    assert_eq!(
        bodies(&peek(&s, "orders;journal")),
        ["m1", "m2", "m3", "m4", "m5"]
    );
    // Read and purged like any queue; turning the journal off stops the copies.
    assert_eq!(bodies(&receive(&s, "orders;journal", 2)), ["m1", "m2"]);
    s.cli(&["queue", "purge", "orders;journal"]);
    assert!(peek(&s, "orders;journal").is_empty());
    let shown = s.cli(&["queue", "journal", "orders", "off"]);
    assert!(shown.contains("journal: no"), "{shown}");
    s.cli(&["send", "DIRECT=OS:.\\private$\\orders", "--body", "m6"]);
    assert_eq!(bodies(&receive(&s, "orders", 1)), ["m6"]);
    assert!(peek(&s, "orders;journal").is_empty());
}

#[test]
fn the_journal_quota_is_honoured_and_counted_and_the_receive_still_succeeds() {
    let d = tempfile::tempdir().unwrap();
    // 1 KB of journal: two of these messages fit, not five.
    let s = start(d.path(), "[Parameters]\nJournalQuota = 1\n");
    s.cli(&["queue", "create", "small"]);
    s.cli(&["queue", "journal", "small", "on"]);
    let body = "x".repeat(300);
    for _ in 0..5 {
        s.cli(&["send", "DIRECT=OS:.\\private$\\small", "--body", &body]);
    }
    assert_eq!(receive(&s, "small", 5).len(), 5, "every receive succeeds");
    let kept = peek(&s, "small;journal").len() as u64;
    assert!((1..5).contains(&kept), "{kept} copies kept under 1 KB");
    assert_eq!(metric(&s, "lior_journal_copies_total"), kept);
    assert_eq!(metric(&s, "lior_journal_dropped_total"), 5 - kept);
}

#[test]
fn a_message_sent_with_jp_to_a_local_queue_is_in_the_machine_journal() {
    let d = tempfile::tempdir().unwrap();
    let s = start(d.path(), "");
    s.cli(&["queue", "create", "here"]);
    s.cli(&[
        "send",
        "DIRECT=OS:.\\private$\\here",
        "--journal",
        "--body",
        "src",
    ]);
    s.cli(&["send", "DIRECT=OS:.\\private$\\here", "--body", "plain"]);
    assert_eq!(bodies(&peek(&s, "journal")), ["src"]);
    assert_eq!(bodies(&receive(&s, "here", 2)), ["src", "plain"]);
}
