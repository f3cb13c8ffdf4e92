//! Issue 10, one owner per queue: on `lior serve --cores 0,1`, under traffic that crosses
//! shards on every door (MS-MQQB sessions sending to queues of both shards, express,
//! recoverable and transactional; the API sending and receiving; a remote destination whose
//! outgoing queue is created on first use; AMQP producers and consumers whichever shard their
//! connection lands on), no thread locks a store partition it does not run. The daemon counts
//! such locks in `lior_partition_locks_foreign_total` (a probe in `Broker::partition`).

mod common;

use std::process::Command;

use common::api::metric;
use common::{tx_message, Client, Server, BIN};
use lior::wire::Guid;

/// Runs `lior bench` with `args`; panics with its output when it fails.
fn bench(args: &[&str]) {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("run lior bench");
    assert!(
        out.status.success(),
        "lior bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn traffic_on_every_door_takes_no_partition_lock_of_another_shard() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &["--cores", "0,1", "--amqp-listen", "127.0.0.1:0"],
    );
    let amqp = s.amqp.expect("the AMQP listener runs").to_string();
    let listen = s.listen.to_string();
    // Two queues, so each shard owns one (a new queue goes to the least loaded partition).
    s.cli(&["queue", "create", "q0"]);
    s.cli(&["queue", "create", "q1"]);
    s.cli(&["queue", "create", "tq", "--transactional"]);

    for q in ["q0", "q1"] {
        let to = format!("DIRECT=TCP:127.0.0.1\\PRIVATE$\\{q}");
        for delivery in ["express", "recoverable"] {
            // Four sessions: whichever shard each lands on, half the queues are the other's.
            bench(&[
                "--to",
                &to,
                "--connect",
                &listen,
                "--sessions",
                "4",
                "--count",
                "200",
                "--delivery",
                delivery,
            ]);
        }
        // Four AMQP producer connections and two consumers, on either shard.
        bench(&[
            "--produce-amqp",
            q,
            "--amqp",
            &amqp,
            "--sessions",
            "4",
            "--count",
            "200",
        ]);
        bench(&[
            "--consume-amqp",
            q,
            "--amqp",
            &amqp,
            "--consumers",
            "2",
            "--api",
            &s.api,
        ]);
        assert_eq!(s.receive_all(q).len(), 0, "the consumers drained {q}");
    }
    // Four transactional senders (a sequence each), on whichever shard they land.
    for k in 0..4u8 {
        let guid = Guid([0x60 + k; 16]);
        let mut c = Client::connect(s.listen, guid);
        let seq = ((1_800_000_000u64 + u64::from(k)) << 32) | 1;
        for no in 1..=50u32 {
            c.send(
                &tx_message(guid, no, "TCP:127.0.0.1\\private$\\tq", seq, no, no == 1),
                true,
                u64::from(no),
            );
        }
        c.wait_acked();
    }
    // The API: sends, receives, a remote destination (its outgoing queue is created now).
    for q in ["q0", "q1", "tq"] {
        let mut args = vec!["send", "--count", "5", "--recoverable"];
        if q == "tq" {
            args = vec!["send", "--count", "5", "--transactional"];
        }
        let to = format!("DIRECT=OS:.\\private$\\{q}");
        args.push(&to);
        s.cli(&args);
    }
    s.cli(&[
        "send",
        "--recoverable",
        "--dead-letter",
        "DIRECT=TCP:127.0.0.9\\private$\\far",
    ]);
    assert_eq!(s.receive_all("q0").len(), 5);
    assert_eq!(s.receive_all("q1").len(), 5);
    assert_eq!(s.receive_all("tq").len(), 205);

    assert!(
        metric(&s, "lior_handoffs_total") > 0,
        "messages crossed shards (the test needs both shards to take sessions)"
    );
    assert_eq!(
        metric(&s, "lior_partition_locks_foreign_total"),
        0,
        "a thread locked a store partition it does not run (RUST_LOG=lior::qm::broker=debug \
         names the call sites)"
    );
}
