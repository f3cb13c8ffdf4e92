//! The queue manager over the simulated store: routing, dead-lettering, duplicates, the
//! transactional rules, and receive order. Real files for the catalog and the QM GUID.

use lior::config::Config;
use lior::qm::broker::{Broker, Verdict};
use lior::store::{SimDisk, SimStore, Store, StoreConfig};
use lior::wire::headers::{AckFlags, MessageClass, TransactionHeader, TxFlags};
use lior::wire::user::{QueueRef, UserMessage};
use lior::wire::{utf16z, Guid, Utf16};

fn broker(dir: &std::path::Path) -> Broker<SimStore> {
    broker_over(dir, sim_stores(1, 7))
}

/// `n` empty store partitions on simulated disks seeded `seed`, `seed + 1`, ...
fn sim_stores(n: u64, seed: u64) -> Vec<SimStore> {
    (0..n)
        .map(|i| {
            Store::open(SimDisk::new(seed + i), StoreConfig::default())
                .unwrap()
                .0
        })
        .collect()
}

/// A broker with the default configuration in `dir` over `stores`.
fn broker_over(dir: &std::path::Path, stores: Vec<SimStore>) -> Broker<SimStore> {
    let cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    Broker::with_stores(cfg, stores).unwrap()
}

fn frame(
    dest: &str,
    id: u32,
    recoverable: bool,
    f: impl FnOnce(UserMessage) -> UserMessage,
) -> Vec<u8> {
    let d = utf16z(dest);
    let label = utf16z("lbl");
    let body = id.to_le_bytes();
    let m = f(UserMessage::new(
        Guid([0x11; 16]),
        id,
        QueueRef::Direct(Utf16(&d)),
        Utf16(&label),
        &body,
    )
    .with_recoverable(recoverable));
    let mut out = vec![0u8; m.frame_len()];
    let n = m.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

fn deliver(b: &Broker<SimStore>, bytes: &[u8]) -> lior::qm::broker::Delivered {
    let msg = UserMessage::parse(bytes).unwrap();
    let d = b.deliver(bytes, &msg, 1_700_000_000, 0);
    let mut p = b.partition(d.partition);
    // As the server does at the end of a loop turn: wait until the message is durable.
    let wait = match d.verdict {
        Verdict::Stored { ticket, .. } | Verdict::DeadLettered { ticket, .. } => Some(ticket),
        _ => None,
    };
    p.commit(wait).unwrap();
    d
}

fn body_ids(b: &Broker<SimStore>, q: &str, n: usize) -> Vec<u32> {
    b.receive(q, n)
        .unwrap()
        .iter()
        .map(|r| {
            let m = UserMessage::parse(&r.bytes).unwrap();
            u32::from_le_bytes(m.body().try_into().unwrap())
        })
        .collect()
}

#[test]
fn messages_for_our_queues_are_stored_and_received_in_priority_order() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("orders", false).unwrap();
    for (id, prio) in [(1, 3), (2, 3), (3, 7), (4, 0)] {
        let f = frame("OS:localhost\\private$\\orders", id, true, |m| {
            m.with_priority(prio)
        });
        assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    }
    // Express goes to memory and is visible at once.
    let f = frame("TCP:127.0.0.1\\PRIVATE$\\Orders", 5, false, |m| m);
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    let q = b
        .list_queues()
        .into_iter()
        .find(|q| q.name == "orders")
        .unwrap();
    assert_eq!(q.messages, 5);
    assert_eq!(b.peek("orders", 1).unwrap().len(), 1);
    assert_eq!(body_ids(&b, "orders", 10), [3, 1, 2, 5, 4]);
    assert!(b.receive("orders", 10).unwrap().is_empty());
}

#[test]
fn frame7_style_messages_for_another_machine_go_to_the_dead_letter_queue() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    let f = frame("OS:a04bm02\\q", 1, false, |m| m);
    let v = deliver(&b, &f);
    assert!(matches!(
        v.verdict,
        Verdict::DeadLettered {
            class: MessageClass::NACK_BAD_DST_Q,
            ..
        }
    ));
    assert_eq!(v.admin_ack, None, "no negative-arrival ack was asked for");
    assert_eq!(body_ids(&b, "deadletter", 10), [1]);
}

#[test]
fn unknown_queues_dead_letter_and_name_the_nack_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    let admin: &'static [u8] = utf16z("OS:sender\\private$\\admin").leak();
    let f = frame("OS:localhost\\private$\\nosuch", 9, true, |m| {
        m.with_admin_queue(QueueRef::Direct(Utf16(admin)), AckFlags(0x04))
    });
    let v = deliver(&b, &f);
    assert_eq!(v.admin_ack, Some(MessageClass::NACK_BAD_DST_Q));
    assert_eq!(
        b.list_queues()
            .iter()
            .find(|q| q.name.contains("deadletter"))
            .unwrap()
            .messages,
        1
    );
}

#[test]
fn duplicates_are_dropped_by_message_id() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("q", false).unwrap();
    let f = frame("OS:localhost\\q", 1, true, |m| m);
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Duplicate { .. }));
    assert_eq!(body_ids(&b, "q", 10), [1]);
}

/// RemoveDuplicateCleanup acts: the owner's periodic clean-up forgets identifiers older than
/// it (MSMQ purges its MessageIDHistoryTable every 30 minutes), so a copy arriving after that is
/// taken again, while one arriving before it is still dropped.
#[test]
fn the_duplicate_table_forgets_identifiers_older_than_remove_duplicate_cleanup() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    let q = b.create_queue("q", false).unwrap();
    let f = frame("OS:localhost\\q", 1, true, |m| m);
    let cleanup = u64::from(b.config.parameters.RemoveDuplicateCleanup);
    let msg = UserMessage::parse(&f).unwrap();
    let at = |ms: u64| {
        let d = b.deliver(&f, &msg, 1_700_000_000, ms);
        let wait = match d.verdict {
            Verdict::Stored { ticket, .. } => Some(ticket),
            _ => None,
        };
        b.partition(d.partition).commit(wait).unwrap();
        d.verdict
    };
    assert!(matches!(at(1_000), Verdict::Stored { .. }));
    b.clean_duplicates(q.partition as usize, cleanup / 2);
    assert!(matches!(at(cleanup / 2), Verdict::Duplicate { .. }));
    // Seen again at cleanup / 2: still remembered one period after the first copy.
    b.clean_duplicates(q.partition as usize, cleanup + 1_001);
    assert!(matches!(at(cleanup + 1_001), Verdict::Duplicate { .. }));
    b.clean_duplicates(q.partition as usize, 3 * cleanup);
    assert!(matches!(at(3 * cleanup), Verdict::Stored { .. }));
    assert_eq!(body_ids(&b, "q", 10), [1, 1]);
}

fn tx(id: u32, seq_no: u32, prev: u32) -> impl FnOnce(UserMessage) -> UserMessage {
    move |m| {
        m.with_transaction(TransactionHeader::new(
            TxFlags::default().with_transaction_index(id),
            0x5F00_0000_0000_0001,
            seq_no,
            prev,
        ))
    }
}

#[test]
fn transactional_messages_are_exactly_once_in_order_and_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("txq", true).unwrap();
    let dest = "OS:localhost\\private$\\txq";
    assert!(matches!(
        deliver(&b, &frame(dest, 1, true, tx(1, 1, 0))).verdict,
        Verdict::Stored { .. }
    ));
    // Out of order (2 is missing) and a duplicate of 1: both refused.
    assert!(matches!(
        deliver(&b, &frame(dest, 3, true, tx(3, 3, 2))).verdict,
        Verdict::TxRejected { .. }
    ));
    assert!(matches!(
        deliver(&b, &frame(dest, 1, true, tx(1, 1, 0))).verdict,
        Verdict::TxRejected { .. }
    ));
    let v = deliver(&b, &frame(dest, 2, true, tx(2, 2, 1)));
    assert!(matches!(v.verdict, Verdict::Stored { .. }));
    assert_eq!(v.order_ack.unwrap().1.seq_no, 2);
    // Non-transactional to a transactional queue: dead-lettered with the spec's NACK class.
    let v = deliver(&b, &frame(dest, 4, true, |m| m));
    assert!(matches!(
        v.verdict,
        Verdict::DeadLettered {
            class: MessageClass::NACK_NOT_TRANSACTIONAL_MSG,
            ..
        }
    ));
    // A crash loses nothing durable, and the sequence state comes back with the store: the
    // sender's resend of 2 is still a duplicate, 3 is the next.
    let stores = b.into_stores();
    let store = stores.into_iter().next().unwrap();
    let (store, _) = store.crash_and_recover(StoreConfig::default()).unwrap();
    let b = broker_over(d.path(), vec![store]);
    assert!(matches!(
        deliver(&b, &frame(dest, 2, true, tx(2, 2, 1))).verdict,
        Verdict::TxRejected { .. }
    ));
    assert!(matches!(
        deliver(&b, &frame(dest, 3, true, tx(3, 3, 2))).verdict,
        Verdict::Stored { .. }
    ));
    assert_eq!(body_ids(&b, "txq", 10), [1, 2, 3]);
}

#[test]
fn messages_past_time_to_be_received_leave_their_queue_for_the_dead_letter_queue() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("q", false).unwrap();
    let now = 1_700_000_000u32;
    // Sent 100 s ago with 10 s to be received, negative journaling asked (JN).
    let f = frame("OS:localhost\\q", 1, true, |mut m| {
        m.user.flags = m.user.flags.with(lior::wire::user::UserFlags::JN, true);
        m.with_sent_time(now - 100).with_time_to_be_received(10)
    });
    // Without JN: simply removed.
    let g = frame("OS:localhost\\q", 2, true, |m| {
        m.with_sent_time(now - 100).with_time_to_be_received(10)
    });
    // Still valid.
    let h = frame("OS:localhost\\q", 3, true, |m| {
        m.with_sent_time(now - 100).with_time_to_be_received(1_000)
    });
    for x in [&f, &g, &h] {
        assert!(matches!(deliver(&b, x).verdict, Verdict::Stored { .. }));
    }
    let ql = |b: &Broker<SimStore>| {
        b.list_queues()
            .into_iter()
            .find(|q| q.name == "q")
            .unwrap()
            .messages
    };
    assert_eq!(ql(&b), 3);
    // The message without JN goes at once; the one with JN once its copy is durable (the
    // scan never waits for the disk).
    assert_eq!(b.expire_partition(0, now), (1, true));
    assert_eq!(ql(&b), 2, "the original stays until its copy is durable");
    let mut settled = (0, true);
    for _ in 0..64 {
        b.partition(0).commit(None).unwrap();
        settled = b.settle_expiry(0);
        if !settled.1 {
            break;
        }
    }
    assert_eq!(settled, (1, false));
    assert_eq!(body_ids(&b, "q", 10), [3]);
    assert_eq!(body_ids(&b, "deadletter", 10), [1]);
}

#[test]
fn the_duplicate_table_is_rebuilt_after_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("q", false).unwrap();
    let f = frame("OS:localhost\\q", 5, true, |m| m);
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    let store = b.into_stores().into_iter().next().unwrap();
    let (store, _) = store.crash_and_recover(StoreConfig::default()).unwrap();
    let b = broker_over(d.path(), vec![store]);
    // The sender never saw our ack and sends it again.
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Duplicate { .. }));
    assert_eq!(body_ids(&b, "q", 10), [5]);
}

/// The rebuilt table was stamped at time 0 of the engine's clock (CLOCK_MONOTONIC, since boot),
/// so the first cleanup after a restart on a machine up for more than RemoveDuplicateCleanup
/// (30 min) dropped every rebuilt entry and a resend after a crash was stored twice.
#[test]
fn the_rebuilt_duplicate_table_survives_the_first_cleanup_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("q", false).unwrap();
    let f = frame("OS:localhost\\q", 5, true, |m| m);
    assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    let store = b.into_stores().into_iter().next().unwrap();
    let (store, _) = store.crash_and_recover(StoreConfig::default()).unwrap();
    let b = broker_over(d.path(), vec![store]);
    // The cleanup the shard runs soon after start: at least one period past clock zero, so the
    // test means the same on a machine booted a minute ago.
    let period = Config::default().parameters.RemoveDuplicateCleanup as u64;
    let now = lior::engine::net::now_ms().max(period + 1);
    b.clean_duplicates(0, now);
    assert!(
        matches!(deliver(&b, &f).verdict, Verdict::Duplicate { .. }),
        "a resend after the restart is still a duplicate"
    );
    assert_eq!(body_ids(&b, "q", 10), [5]);
}

#[test]
fn routes_follow_the_catalog_when_queues_are_deleted_and_created() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    let first = b.create_queue("q", false).unwrap().id;
    let f = |id| frame("OS:localhost\\private$\\q", id, true, |m| m);
    assert!(matches!(deliver(&b, &f(1)).verdict, Verdict::Stored { queue, .. } if queue == first));
    b.delete_queue("q").unwrap();
    assert!(
        matches!(deliver(&b, &f(2)).verdict, Verdict::DeadLettered { .. }),
        "not to the deleted queue"
    );
    let second = b.create_queue("q", false).unwrap().id;
    assert_ne!(first, second);
    assert!(matches!(deliver(&b, &f(3)).verdict, Verdict::Stored { queue, .. } if queue == second));
}

fn tx_in(seq_id: u64, seq_no: u32, prev: u32) -> impl FnOnce(UserMessage) -> UserMessage {
    move |m| {
        m.with_transaction(TransactionHeader::new(
            TxFlags::default(),
            seq_id,
            seq_no,
            prev,
        ))
    }
}

/// Issue 9.5: a message claiming a victim's GUID with TxSequenceID 0xFFFF... moved the victim's
/// sequence state past every id it would ever use, blocking it for good, across restarts.
#[test]
fn a_spoofed_highest_sequence_id_does_not_block_the_real_sender_even_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("txq", true).unwrap();
    let dest = "OS:localhost\\private$\\txq";
    let seq = 0x6500_0000_0000_0001u64;
    for n in 1..=2 {
        let v = deliver(&b, &frame(dest, n, true, tx_in(seq, n, n - 1)));
        assert!(matches!(v.verdict, Verdict::Stored { .. }));
    }
    // The spoofer (same source GUID as the victim, frame() always uses it) starts a sequence
    // with the highest id there is. It is taken: MS-MQQB has no way to tell it from a sender.
    let v = deliver(&b, &frame(dest, 100, true, tx_in(u64::MAX, 1, 0)));
    assert!(matches!(v.verdict, Verdict::Stored { .. }));
    // A crash and a restart.
    let store = b.into_stores().into_iter().next().unwrap();
    let (store, _) = store.crash_and_recover(StoreConfig::default()).unwrap();
    let b = broker_over(d.path(), vec![store]);
    // The victim goes on with its own sequence: taken, exactly once, and the OrderAck names
    // the victim's sequence.
    let v = deliver(&b, &frame(dest, 3, true, tx_in(seq, 3, 2)));
    assert!(
        matches!(v.verdict, Verdict::Stored { .. }),
        "the victim is blocked: {v:?}"
    );
    let s = v.order_ack.unwrap().1;
    assert_eq!((s.seq_id, s.seq_no), (seq, 3));
    for n in 1..=3 {
        let v = deliver(&b, &frame(dest, n, true, tx_in(seq, n, n - 1)));
        assert!(matches!(v.verdict, Verdict::TxRejected { .. }), "{n} again");
    }
    let v = deliver(&b, &frame(dest, 4, true, tx_in(seq, 4, 3)));
    assert!(matches!(v.verdict, Verdict::Stored { .. }));
    assert_eq!(body_ids(&b, "txq", 10), [1, 2, 100, 3, 4]);
}

/// Issue 10: a queue is delivered in priority order, FIFO within a priority, whichever shard
/// takes each message. Two partitions; eight senders whose messages arrive interleaved as two
/// shards would hand them to the queue's owner (a sender moves between the shards at each
/// phase, as a reconnecting session lands on another shard), 10,000 messages with random
/// priorities. One thread: a partition is only ever touched by its owner, one step at a time
/// (two threads delivering into one partition at once panic, see
/// `a_second_thread_inside_a_partition_panics_and_never_waits`); the real shards and their
/// hand-off are tests/serve_loopback.rs's
/// `sessions_on_two_shards_deliver_one_queue_in_priority_then_fifo_order_per_sender`.
#[test]
fn one_queue_is_fifo_per_priority_whoever_delivers() {
    const SENDERS: usize = 8;
    const PHASES: usize = 10;
    const PER_PHASE: usize = 125; // per sender: 8 * 10 * 125 = 10,000 messages
    let d = tempfile::tempdir().unwrap();
    let b = broker_over(d.path(), sim_stores(2, 21));
    b.create_queue("fifo", false).unwrap();
    // Priorities from a fixed xorshift sequence, per sender and message number.
    let prio = |s: usize, n: usize| -> u8 {
        let mut x = ((s as u64) << 32 | n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        (x % 8) as u8
    };
    for phase in 0..PHASES {
        let mut tickets = Vec::new();
        for k in 0..PER_PHASE {
            // The two shards' senders of this phase, their hand-offs interleaved.
            for t in 0..2 {
                let mine: Vec<usize> = (0..SENDERS).filter(|s| (s + phase) % 2 == t).collect();
                for &s in &mine {
                    let n = phase * PER_PHASE + k;
                    let mut body = [0u8; 8];
                    body[..4].copy_from_slice(&(s as u32).to_le_bytes());
                    body[4..].copy_from_slice(&(n as u32).to_le_bytes());
                    let dst = utf16z("OS:localhost\\private$\\fifo");
                    let label = utf16z("x");
                    let m = UserMessage::new(
                        Guid([0x40 + s as u8; 16]),
                        n as u32 + 1,
                        QueueRef::Direct(Utf16(&dst)),
                        Utf16(&label),
                        &body,
                    )
                    .with_recoverable(true)
                    .with_priority(prio(s, n));
                    let mut f = vec![0u8; m.frame_len()];
                    let len = m.encode(&mut f).unwrap();
                    f.truncate(len);
                    let msg = UserMessage::parse(&f).unwrap();
                    let d = b.deliver(&f, &msg, 1_700_000_000, 0);
                    let Verdict::Stored { ticket, .. } = d.verdict else {
                        panic!("not stored: {:?}", d.verdict);
                    };
                    tickets.push((d.partition, ticket));
                }
            }
        }
        // The end of the owner's turn: commit what it appended.
        for p in 0..b.partition_count() {
            if let Some(t) = tickets.iter().filter(|x| x.0 == p).map(|x| x.1).max() {
                b.partition(p).commit(Some(t)).unwrap();
            }
        }
    }
    let key = |r: &lior::qm::broker::Received| {
        let m = UserMessage::parse(&r.bytes).unwrap();
        let b = m.body();
        (
            r.priority,
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    };
    let total = SENDERS * PHASES * PER_PHASE;
    let peeked: Vec<_> = b.peek("fifo", total).unwrap().iter().map(key).collect();
    let mut received = Vec::new();
    while received.len() < total {
        let got = b.receive("fifo", 1_000).unwrap();
        assert!(!got.is_empty(), "only {} received", received.len());
        received.extend(got.iter().map(key));
    }
    assert_eq!(peeked.len(), total);
    if let Some(i) = (0..total).find(|&i| peeked[i] != received[i]) {
        panic!(
            "peek and receive disagree at {i}: peeked {:?}, received {:?} (priority, sender, number)",
            &peeked[i..(i + 4).min(total)],
            &received[i..(i + 4).min(total)]
        );
    }
    // Priority descending; within one priority, each sender's messages in the order sent.
    let mut last: std::collections::HashMap<(u8, u32), u32> = Default::default();
    for w in received.windows(2) {
        assert!(
            w[0].0 >= w[1].0,
            "priority order broken: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    for &(p, s, n) in &received {
        assert_eq!(p, prio(s as usize, n as usize));
        if let Some(&prev) = last.get(&(p, s)) {
            assert!(prev < n, "sender {s} priority {p}: {n} after {prev}");
        }
        last.insert((p, s), n);
    }
}

/// Appends `frames` straight into `store` and waits until they are durable (as an older lior
/// stored them).
fn store_raw(store: &mut SimStore, queue: u32, frames: &[Vec<u8>]) {
    use lior::store::{QueueId, QueueStore};
    for f in frames {
        let msg = UserMessage::parse(f).unwrap();
        let a = store
            .append(QueueId(queue), &lior::qm::broker::message_meta(&msg), f)
            .unwrap();
        store.flush().unwrap();
        while !store.is_durable(a.ticket) {
            store.poll_durable(true).unwrap();
        }
    }
}

/// A catalog from before queues had an owning partition: queue 16 "old" (owner 16 % 2 = 0).
fn old_catalog(dir: &std::path::Path) {
    std::fs::write(
        dir.join("queues.json"),
        r#"{"next_id": 17, "queues": [
            {"id": 16, "name": "old", "kind": "private", "transactional": false}]}"#,
    )
    .unwrap();
}

/// Message `n` of queue "old", sent at second 1000 + n.
fn old_frame(n: u32) -> Vec<u8> {
    frame("OS:localhost\\private$\\old", n, true, |m| {
        m.with_sent_time(1000 + n)
    })
}

/// Issue 10: an older lior stored each message in the partition of the shard that took it, so
/// a queue's messages may lie in several partitions. At start-up they move into the owner (copy
/// durable first, then the foreign copies go), once; nothing is lost and peek and receive then
/// agree on one order: the owner's messages, then the others by SentTime.
#[test]
fn a_queue_an_older_lior_spread_over_partitions_is_moved_into_its_owner_once() {
    use lior::store::{QueueId, QueueStore};
    let d = tempfile::tempdir().unwrap();
    old_catalog(d.path());
    let mut stores = sim_stores(2, 31);
    // Message n in partition n % 2, as two shards stored them.
    for n in 1..=6u32 {
        store_raw(&mut stores[(n % 2) as usize], 16, &[old_frame(n)]);
    }
    let b = broker_over(d.path(), stores);
    assert_eq!(b.lookup("old").unwrap().partition, 0, "16 % 2");
    assert_eq!(
        b.partition(1).store.queue_len(QueueId(16)).0,
        0,
        "moved out of partition 1"
    );
    assert_eq!(b.partition(0).store.queue_len(QueueId(16)).0, 6);
    // A restart finds nothing more to move and keeps the order.
    let b = broker_over(d.path(), b.into_stores());
    assert_eq!(
        b.partition(0).store.queue_len(QueueId(16)).0,
        6,
        "moved once"
    );
    let f = frame("OS:localhost\\private$\\old", 7, true, |m| m);
    let dl = deliver(&b, &f);
    assert!(matches!(dl.verdict, Verdict::Stored { .. }));
    assert_eq!(dl.partition, 0, "a new message goes to the owner");
    let peeked: Vec<u32> = b
        .peek("old", 10)
        .unwrap()
        .iter()
        .map(|r| {
            u32::from_le_bytes(
                UserMessage::parse(&r.bytes)
                    .unwrap()
                    .body()
                    .try_into()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(peeked, [2, 4, 6, 1, 3, 5, 7]);
    assert_eq!(
        body_ids(&b, "old", 10),
        peeked,
        "receive order is peek order"
    );
}

/// Issue 10: a crash after the moved copies were durable and before the originals were removed
/// leaves both; the next start removes the originals and copies nothing twice.
#[test]
fn a_move_interrupted_between_copy_and_removal_leaves_no_duplicate() {
    use lior::store::{QueueId, QueueStore};
    let d = tempfile::tempdir().unwrap();
    old_catalog(d.path());
    let mut stores = sim_stores(2, 41);
    store_raw(&mut stores[0], 16, &[old_frame(2), old_frame(4)]);
    // Partition 1 still holds 1, 3, 5; the owner already has copies of 1 and 3.
    store_raw(
        &mut stores[1],
        16,
        &[old_frame(1), old_frame(3), old_frame(5)],
    );
    store_raw(&mut stores[0], 16, &[old_frame(1), old_frame(3)]);
    let b = broker_over(d.path(), stores);
    assert_eq!(b.partition(1).store.queue_len(QueueId(16)).0, 0);
    let mut got = body_ids(&b, "old", 10);
    assert_eq!(got, [2, 4, 1, 3, 5]);
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 5, "no duplicate");
}

/// Issue 10: a message dead-lettered from one partition is stored where the dead-letter queue
/// lives (its owner), so the dead-letter queue is one queue in one order too.
#[test]
fn an_expired_message_is_dead_lettered_into_the_dead_letter_queues_owner() {
    use lior::qm::catalog::DEADLETTER_ID;
    use lior::store::{QueueId, QueueStore};
    let d = tempfile::tempdir().unwrap();
    let b = broker_over(d.path(), sim_stores(2, 41));
    let q = b.create_queue("q", false).unwrap();
    let dlq = b.lookup("deadletter").unwrap();
    assert_ne!(b.owner(&q), b.owner(&dlq), "the test needs two owners");
    let now = 1_700_000_000u32;
    let f = frame("OS:localhost\\q", 1, true, |mut m| {
        m.user.flags = m.user.flags.with(lior::wire::user::UserFlags::JN, true);
        m.with_sent_time(now - 100).with_time_to_be_received(10)
    });
    assert_eq!(deliver(&b, &f).partition, b.owner(&q));
    assert_eq!(b.expire_partition(b.owner(&q), now), (0, true));
    let mut settled = (0, true);
    for _ in 0..64 {
        b.partition(b.owner(&dlq)).commit(None).unwrap();
        settled = b.settle_expiry(b.owner(&q));
        if !settled.1 {
            break;
        }
    }
    assert_eq!(settled, (1, false));
    assert_eq!(
        b.partition(b.owner(&dlq))
            .store
            .queue_len(QueueId(DEADLETTER_ID))
            .0,
        1,
        "the copy is in the dead-letter queue's partition"
    );
    assert_eq!(body_ids(&b, "deadletter", 10), [1]);
    assert!(body_ids(&b, "q", 10).is_empty());
}

/// Two partition locks held by one thread could deadlock against another thread taking them
/// in the other order; no code needs two, and debug builds refuse it.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "second store partition")]
fn one_thread_never_holds_two_partition_locks() {
    let d = tempfile::tempdir().unwrap();
    let b = broker_over(d.path(), sim_stores(2, 51));
    let _first = b.partition(0);
    let _second = b.partition(1);
}

fn send_req(label: &str) -> lior::qm::broker::SendRequest<'_> {
    lior::qm::broker::SendRequest {
        label,
        body: b"x",
        priority: 3,
        recoverable: true,
        time_to_reach_queue: None,
        time_to_be_received: None,
        app_specific: 0,
        transactional: false,
        mqf: None,
        journal: false,
        dead_letter: false,
    }
}

/// `limits.queue_messages_max` acts: past it a message from the network gets
/// NACK_Q_EXCEED_QUOTA and the queue keeps what it had.
#[test]
fn a_queue_refuses_messages_past_limits_queue_messages_max() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: d.path().to_path_buf(),
        ..Config::default()
    };
    cfg.limits.queue_messages_max = 2;
    let b = Broker::with_stores(cfg, sim_stores(1, 61)).unwrap();
    b.create_queue("small", false).unwrap();
    for n in 1..=2 {
        let f = frame("OS:localhost\\private$\\small", n, true, |m| m);
        assert!(matches!(deliver(&b, &f).verdict, Verdict::Stored { .. }));
    }
    let f = frame("OS:localhost\\private$\\small", 3, true, |m| m);
    match deliver(&b, &f).verdict {
        Verdict::DeadLettered { class, .. } => {
            assert_eq!(class, MessageClass::NACK_Q_EXCEED_QUOTA)
        }
        other => panic!("third message: {other:?}"),
    }
    assert_eq!(body_ids(&b, "small", 10), [1, 2]);
}

/// `limits.outgoing_queue_messages_max` acts: a send to a remote machine whose outgoing queue
/// is full is refused, saying so, and nothing more is kept.
#[test]
fn an_outgoing_queue_refuses_sends_past_limits_outgoing_queue_messages_max() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: d.path().to_path_buf(),
        ..Config::default()
    };
    cfg.limits.outgoing_queue_messages_max = 2;
    let b = Broker::with_stores(cfg, sim_stores(1, 71)).unwrap();
    let to = "DIRECT=OS:remotebox\\private$\\q";
    b.send(to, &send_req("a")).unwrap();
    b.send(to, &send_req("b")).unwrap();
    let e = b.send(to, &send_req("c")).unwrap_err().to_string();
    assert!(
        e.contains("outgoing queue to") && e.contains("is full"),
        "{e}"
    );
    assert!(e.contains("limits.outgoing_queue_messages_max"), "{e}");
    let waiting: u64 = b.list_outgoing().iter().map(|o| o.messages).sum();
    assert_eq!(waiting, 2);
}

/// A peek stops once about the byte bound is copied (the API answers it with `x-lior-more`):
/// 10,000 messages of 4 MB must not be copied into one answer.
#[test]
fn a_peek_is_bounded_by_bytes_and_says_more_is_left() {
    let d = tempfile::tempdir().unwrap();
    let b = broker(d.path());
    b.create_queue("q", false).unwrap();
    for id in 1..=5u32 {
        deliver(&b, &frame("OS:localhost\\private$\\q", id, true, |m| m));
    }
    let one = b.peek("q", 1).unwrap()[0].bytes.len();
    let (got, more) = b.peek_bounded("q", 10, one * 2).unwrap();
    assert_eq!(got.len(), 2);
    assert!(more);
    let (got, more) = b.peek_bounded("q", 10, 1).unwrap();
    assert_eq!(got.len(), 1, "at least one message, whatever the bound");
    assert!(more);
    let (got, more) = b.peek_bounded("q", 10, usize::MAX).unwrap();
    assert_eq!(got.len(), 5);
    assert!(!more);
}
