//! Issue 10 (no lock on the message path): the outgoing table is looked up (by destination on
//! every send to a remote queue, by id when a shard sends, for `GET /v1/outgoing`) in a
//! published snapshot; only its changes (a new destination, pause and resume, a new sequence
//! id) take the writers' lock, held across the write of `outgoing.json`. Here that write stalls
//! (its temporary file is a FIFO nobody reads yet) while a pause holds the lock: a send to an
//! existing outgoing queue and the listing must go on meanwhile. (Before, every lookup took the
//! table's one Mutex, so both waited for the disk write.)

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::outgoing_len;
use common::{Server, BIN};

/// Waits until a thread of process `pid` sleeps in `wchan` (the kernel function it waits in).
fn wait_for_wchan(pid: u32, wchan: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let found = tasks.filter_map(Result::ok).any(|t| {
            std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == wchan)
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no thread of lior ({pid}) ever waited in {wchan}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_outgoing_table_write_holds_up_no_send_or_listing() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start_with(&data, &["--cores", "0,1"]);
    // Nobody listens there: messages wait in the outgoing queue.
    let dest = "DIRECT=TCP:127.0.0.51\\private$\\q";
    s.cli(&["send", dest, "--body", "m1"]);
    assert_eq!(outgoing_len(&s), 1);

    // The next write of outgoing.json stalls opening its temporary file.
    let fifo = data.join("outgoing.tmp");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let api = s.api.clone();
    let pause = std::thread::spawn(move || {
        ureq::post(&format!("http://{api}/v1/outgoing/pause"))
            .send_json(serde_json::json!({ "destination": "TCP:127.0.0.51" }))
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    wait_for_wchan(s.child.id(), "wait_for_partner");

    // Meanwhile: a send to the same destination and the listing.
    let (tx, rx) = std::sync::mpsc::channel();
    let api = s.api.clone();
    std::thread::spawn(move || {
        let sent = Command::new(BIN)
            .args(["send", dest, "--body", "m2", "--api", &api])
            .output()
            .is_ok_and(|o| o.status.success());
        let listed: serde_json::Value = ureq::get(&format!("http://{api}/v1/outgoing"))
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or_default();
        let _ = tx.send((sent, listed));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));

    // The writer goes on once the FIFO has a reader (its fsync of a FIFO then fails: the pause
    // answers an error, which is not what this test is about).
    let mut buf = Vec::new();
    std::fs::File::open(&fifo)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    let _ = pause.join().unwrap();
    std::fs::remove_file(&fifo).unwrap();

    let (sent, listed) = got.expect(
        "a send and a listing waited for the outgoing table's write: lookups took the writers' lock",
    );
    assert!(sent, "the send to the existing outgoing queue was taken");
    assert_eq!(
        listed[0]["messages"].as_u64(),
        Some(2),
        "listed with both messages: {listed}"
    );
}
