//! Bugs the simulation (`sim_sessions`) found, each reduced to a direct reproduction.

use lior::store::{
    Class, MessageId, MessageMeta, QueueId, QueueStore, SimDisk, Store, StoreConfig, EXPIRY_NEVER,
};

fn meta(i: u8, class: Class) -> MessageMeta {
    MessageMeta {
        priority: 3,
        class,
        message_id: MessageId([i; 20]),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

/// Found by simulation seed 5903450285490166807: an express message appended first on a fresh
/// log takes sequence number 1 without writing a record, so the first record on disk had seq 2
/// and recovery, which wanted the first record of a segment to carry the segment's base, cut
/// the whole log: every acknowledged recoverable message was gone after a restart (or, with
/// more records behind it, start-up refused with "log damaged ... at offset 0").
#[test]
fn a_recoverable_message_behind_an_express_one_survives_a_crash() {
    let cfg = StoreConfig {
        segment_bytes: 128 << 10,
        batch_bytes_max: 16 << 10,
        message_bytes_max: 4 << 10,
        removal_reserve_bytes: 8 << 10,
        ..StoreConfig::default()
    };
    let (mut s, _) = Store::open(SimDisk::new(1), cfg).unwrap();
    s.append(QueueId(5), &meta(0, Class::Express), &[0; 300])
        .unwrap();
    let a = s
        .append(QueueId(5), &meta(1, Class::Recoverable), &[1; 300])
        .unwrap();
    s.flush().unwrap();
    while !s.is_durable(a.ticket) {
        s.poll_durable(true).unwrap();
    }
    let (mut s, report) = s.crash_and_recover(cfg).unwrap();
    assert_eq!(report.messages, 1, "{report:?}");
    assert_eq!(s.queue_len(QueueId(5)), (1, 300));
    // And the log goes on from there across another crash.
    s.append(QueueId(5), &meta(2, Class::Express), &[2; 300])
        .unwrap();
    let b = s
        .append(QueueId(5), &meta(3, Class::Recoverable), &[3; 300])
        .unwrap();
    s.flush().unwrap();
    while !s.is_durable(b.ticket) {
        s.poll_durable(true).unwrap();
    }
    let (s, report) = s.crash_and_recover(cfg).unwrap();
    assert_eq!(report.messages, 2, "{report:?}");
    assert_eq!(s.queue_len(QueueId(5)), (2, 600));
}
