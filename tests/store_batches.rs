//! Commit batches that cannot wedge: a full batch is submitted (after the one in flight) and a
//! new one started, so `append`/`receive` never fail for a record that fits a batch, and staged
//! memory stays below two batches. And a full disk: appends work again as soon as space exists,
//! without consuming anything first.

mod common;

use common::stores::{self, tagged_body as body, tagged_meta};
use lior::store::{
    Cursor, MessageMeta, QueueId, QueueStore, Select, SimDisk, SimStore, Store, StoreConfig,
    StoreError, UringDisk,
};

fn big_cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 32 << 20,
        batch_bytes_max: 8 << 20,
        message_bytes_max: 4 << 20,
        ..StoreConfig::default()
    }
}

fn meta(tag: u64) -> MessageMeta {
    tagged_meta(tag, 3)
}

fn settle<S: QueueStore>(s: &mut S) {
    stores::settle(s, 1000)
}

/// Many 3-4 MB recoverable messages in one loop turn (as from many sessions at once): every
/// append succeeds, staged memory stays within a batch, and all of them commit.
fn large_messages<S: QueueStore>(s: &mut S, cfg: &StoreConfig) -> Vec<(u64, usize)> {
    let mut sent = Vec::new();
    for t in 0..16u64 {
        let len = if t % 2 == 0 { 4 << 20 } else { 3 << 20 };
        let a = s
            .append(QueueId(0), &meta(t), &body(t, len))
            .unwrap_or_else(|e| panic!("append {t} of {len} bytes in one turn: {e}"));
        assert!(s.stats().pending_bytes <= cfg.batch_bytes_max as u64 + 64);
        sent.push((a.lookup_id.0, len));
    }
    settle(s);
    sent
}

fn present<S: QueueStore>(s: &S) -> Vec<(u64, usize)> {
    let mut c = Cursor::new(QueueId(0));
    let mut out = Vec::new();
    while let Some(m) = s.cursor_next(&mut c) {
        let tag = u64::from_le_bytes(m.bytes[..8].try_into().unwrap());
        assert_eq!(m.bytes, &body(tag, m.bytes.len())[..]);
        out.push((m.lookup_id.0, m.bytes.len()));
    }
    out
}

#[test]
fn many_large_messages_in_one_turn_commit_sim() {
    let cfg = big_cfg();
    let mut s: SimStore = Store::open(SimDisk::new(5), cfg).unwrap().0;
    let sent = large_messages(&mut s, &cfg);
    let (s, _) = s.crash_and_recover(cfg).unwrap();
    assert_eq!(present(&s), sent);
}

#[test]
fn many_large_messages_in_one_turn_commit_files() {
    let cfg = big_cfg();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(UringDisk::open(dir.path()).unwrap(), cfg)
        .unwrap()
        .0;
    let sent = large_messages(&mut s, &cfg);
    drop(s);
    let s = Store::open(UringDisk::open(dir.path()).unwrap(), cfg)
        .unwrap()
        .0;
    assert_eq!(present(&s), sent);
}

/// Tens of thousands of small records staged in one turn: appends, then receives of all of
/// them (removal records), never `BatchFull`.
#[test]
fn a_burst_of_small_records_in_one_turn_never_fails() {
    let cfg = StoreConfig {
        segment_bytes: 4 << 20,
        batch_bytes_max: 256 << 10,
        message_bytes_max: 64 << 10,
        removal_reserve_bytes: 64 << 10,
        ..StoreConfig::default()
    };
    let mut s: SimStore = Store::open(SimDisk::new(6), cfg).unwrap().0;
    let n = 40_000u64;
    for t in 0..n {
        s.append(QueueId((t % 3) as u32), &meta(t), &body(t, 100))
            .unwrap_or_else(|e| panic!("append {t}: {e}"));
    }
    settle(&mut s);
    let mut held = Vec::new();
    for q in 0..3 {
        while let Some(r) = s
            .receive(QueueId(q), Select::Front)
            .unwrap_or_else(|e| panic!("receive: {e}"))
        {
            held.push(r);
        }
    }
    assert_eq!(held.len() as u64, n);
    settle(&mut s);
    for r in held {
        s.release(r).unwrap();
    }
    let (s, _) = s.crash_and_recover(cfg).unwrap();
    assert_eq!(s.stats().messages, 0);
}

/// Disk full while the oldest segment is worth compacting: the commit's maintenance must not
/// fail (it did, with `DiskFull` from copying forward, and the shard stopped acknowledging),
/// and appends work again as soon as space exists, with nothing consumed first.
#[test]
fn freed_space_is_used_at_once_after_disk_full() {
    let cfg = StoreConfig {
        segment_bytes: 32 << 10,
        batch_bytes_max: 4 << 10,
        message_bytes_max: 1 << 10,
        removal_reserve_bytes: 2 << 10,
        compact_segments_min: 3,
        compact_live_percent: 40,
        ..StoreConfig::default()
    };
    let mut s: SimStore = Store::open(SimDisk::new(8), cfg).unwrap().0;
    // Three segments; consume most of the oldest one's messages so it is worth compacting.
    let mut t = 0u64;
    while s.stats().segments < 3 {
        s.append(QueueId(0), &meta(t), &body(t, 900)).unwrap();
        t += 1;
        settle(&mut s);
    }
    for _ in 0..25 {
        let r = s.receive(QueueId(0), Select::Front).unwrap().unwrap();
        settle(&mut s);
        s.release(r).unwrap();
    }
    // The disk fills up: appends fail with DiskFull once the active segment is full.
    s.disk_mut().faults.disk_full = true;
    let err = loop {
        match s.append(QueueId(1), &meta(t), &body(t, 900)) {
            Ok(_) => {
                t += 1;
                settle(&mut s);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, StoreError::DiskFull);
    // What the queue manager does every turn: commit and maintain. Nothing may fail.
    settle(&mut s);
    s.maintain()
        .unwrap_or_else(|e| panic!("maintenance on a full disk: {e}"));
    // Space is freed (by someone else): the very next append works, nothing consumed.
    let before = s.stats().messages;
    s.disk_mut().faults.disk_full = false;
    let a = s
        .append(QueueId(1), &meta(99_999), &body(99_999, 900))
        .unwrap_or_else(|e| panic!("append after space was freed: {e}"));
    settle(&mut s);
    s.maintain().unwrap();
    assert!(s.is_durable(a.ticket));
    assert_eq!(s.stats().messages, before + 1);
}
