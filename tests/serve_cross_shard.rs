//! Issue 10, S7c: on `lior serve --cores 0,1`, a write one shard decides for a queue another
//! shard owns (a dead letter decided under a full queue's state, an admin acknowledgement)
//! crosses to that shard as mail (`qm::handoff::Mail::Store`) and lands exactly once, counted.

mod common;

use std::time::{Duration, Instant};

use common::api::metric;
use common::{Client, Server};
use lior::wire::headers::AckFlags;
use lior::wire::user::{QueueRef, UserFlags, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

/// Messages in queue `name` as `lior queue list --json` shows them (0 when not listed).
fn messages_in(s: &Server, name: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&s.cli(&["queue", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"].as_str() == Some(name))
        .and_then(|q| q["messages"].as_u64())
        .unwrap_or(0)
}

/// The partition owning queue `name`, as the catalog (`queues.json` in the test's own data
/// directory) keeps it.
fn partition_of(data: &std::path::Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(data.join("queues.json")).unwrap();
    let cat: serde_json::Value = serde_json::from_str(&text).unwrap();
    let q = cat["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no queue {name} in {cat}"))
        .clone();
    q["partition"]
        .as_u64()
        .unwrap_or_else(|| panic!("no partition for {name}: {q}"))
}

/// A full queue owned by one shard dead-letters the messages whose senders asked for negative
/// journaling (JN) into the dead-letter queue, owned by the other shard; their NACKs go to a
/// local admin queue owned by that other shard too. Each dead letter lands once, is counted,
/// and crossed as mail (whichever shard the session landed on, the queue's owner decides).
#[test]
fn dead_letters_and_nacks_for_the_other_shards_queues_land_once_by_mail() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("lior.toml");
    std::fs::write(&cfg, "cores = [0, 1]\n[limits]\nqueue_messages_max = 10\n").unwrap();
    let data = d.path().join("data");
    let s = Server::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    s.cli(&["queue", "create", "full"]);
    s.cli(&["queue", "create", "adminq"]);
    let dead_p = partition_of(&data, "system$;deadletter");
    assert_ne!(
        partition_of(&data, "full"),
        dead_p,
        "the test needs the full queue and the dead-letter queue on different shards"
    );
    assert_eq!(partition_of(&data, "adminq"), dead_p);

    // Ten fill the queue (limits.queue_messages_max), ten overflow: the dead-letter queue and
    // the admin queue (same limit) take them all.
    const SENT: u32 = 10;
    // Two sessions: the shard each lands on differs or not; either way the owner decides.
    for sender in 0..2u8 {
        let guid = Guid([0x41 + sender; 16]);
        let mut c = Client::connect(s.listen, guid);
        let dest = utf16z("TCP:127.0.0.1\\private$\\full");
        let admin = utf16z("TCP:127.0.0.1\\private$\\adminq");
        let label = utf16z("overflow");
        for id in 1..=SENT {
            let mut m = UserMessage::new(
                guid,
                id,
                QueueRef::Direct(Utf16(&dest)),
                Utf16(&label),
                b"x",
            )
            .with_recoverable(true)
            .with_admin_queue(QueueRef::Direct(Utf16(&admin)), AckFlags(AckFlags::NA));
            m.user.flags = m.user.flags.with(UserFlags::JN, true);
            m.sync();
            let mut f = vec![0u8; m.frame_len()];
            let n = m.encode(&mut f).unwrap();
            c.send(&f[..n], true, u64::from(id));
        }
        // Acknowledged only once stored and durable where they went.
        c.wait_acked();
    }
    let dead_expected = u64::from(SENT);
    assert_eq!(messages_in(&s, "full"), 10, "the queue holds its quota");
    assert_eq!(
        messages_in(&s, "system$;deadletter"),
        dead_expected,
        "every message the full queue refused is in the dead-letter queue once, and was \
         acknowledged only after it was there"
    );
    assert_eq!(metric(&s, "lior_dead_lettered_total"), dead_expected);
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages_in(&s, "adminq") < dead_expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let nacks = s.receive_all("adminq");
    assert_eq!(
        nacks.len() as u64,
        dead_expected,
        "one NACK per dead letter"
    );
    assert!(nacks
        .iter()
        .all(|m| m["message_class"] == "NACK_Q_EXCEED_QUOTA"));
    // They crossed as mail: the dead letters (decided by the full queue's shard) and the
    // NACKs (built there too, for the other shard's admin queue).
    let mailed = metric(&s, "lior_records_mailed_total");

    assert!(
        mailed >= 2 * dead_expected,
        "dead letters and NACKs for the other shard's queues cross as Mail::Store: {mailed}"
    );
    let dead = s.receive_all("deadletter");
    assert_eq!(dead.len() as u64, dead_expected);
}

/// An expired message with JN, in a queue owned by one shard, is copied into the dead-letter
/// queue owned by the other: the copy crosses as mail, the original goes only once the copy's
/// owner said where it stored it and that is durable; the dead-letter queue holds it once.
#[test]
fn an_expired_message_is_copied_into_the_other_shards_dead_letter_queue_by_mail() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start_with(&data, &["--cores", "0,1"]);
    s.cli(&["queue", "create", "q"]);
    assert_ne!(
        partition_of(&data, "q"),
        partition_of(&data, "system$;deadletter"),
        "the test needs q and the dead-letter queue on different shards"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let dest = utf16z("TCP:127.0.0.1\\private$\\q");
    let label = utf16z("expiring");
    let guid = Guid([0x72; 16]);
    let mut m = UserMessage::new(
        guid,
        1,
        QueueRef::Direct(Utf16(&dest)),
        Utf16(&label),
        b"late",
    )
    .with_recoverable(true)
    .with_sent_time(now - 100)
    .with_time_to_be_received(10);
    m.user.flags = m.user.flags.with(UserFlags::JN, true);
    m.sync();
    let mut f = vec![0u8; m.frame_len()];
    let n = m.encode(&mut f).unwrap();
    let mut c = Client::connect(s.listen, guid);
    c.send(&f[..n], true, 1);
    c.wait_acked();
    let deadline = Instant::now() + Duration::from_secs(20);
    let counts = || (messages_in(&s, "system$;deadletter"), messages_in(&s, "q"));
    let mut seen = counts();
    while seen != (1, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = counts();
    }
    assert_eq!(seen, (1, 0), "(dead-letter queue, q) after the expiry scan");
    assert!(
        // Nothing else is mailed in this test (no acknowledgement was asked for).
        metric(&s, "lior_records_mailed_total") > 0,
        "the copy crossed to the dead-letter queue's shard as Mail::Store"
    );
    let dead = s.receive_all("deadletter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["label"], "expiring");
}
