//! Simulated crashes with torn writes, and property tests of recovery from damaged tails.

use lior::store::{
    Class, Cursor, MessageId, MessageMeta, QueueId, QueueStore, SimDisk, SimStore, Store,
    StoreConfig, StoreError, EXPIRY_NEVER,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 32 << 10,
        batch_bytes_max: 4 << 10,
        message_bytes_max: 1 << 10,
        compact_segments_min: 3,
        removal_reserve_bytes: 2 << 10,
        compact_live_percent: 40,
        ..StoreConfig::default()
    }
}

fn meta(prio: u8, tag: u64) -> MessageMeta {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&tag.to_le_bytes());
    MessageMeta {
        priority: prio,
        class: Class::Recoverable,
        message_id: MessageId(id),
        expiry_unix_s: EXPIRY_NEVER,
    }
}

fn payload(tag: u64) -> Vec<u8> {
    let len = 8 + (tag % 200) as usize;
    let mut v = vec![(tag % 251) as u8; len];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    v
}

/// Everything visible, in delivery order: (queue, prio, lookup, payload).
fn contents(s: &SimStore, queues: u32) -> Vec<(u32, u8, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for q in 0..queues {
        let mut c = Cursor::new(QueueId(q));
        while let Some(m) = s.cursor_next(&mut c) {
            out.push((q, m.meta.priority, m.lookup_id.0, m.bytes.to_vec()));
        }
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random appends, receives, flushes and maintenance with crashes in between. After each
/// crash: every acknowledged message is present exactly once and intact, nothing whose
/// removal was acknowledged comes back, and order within a priority holds.
#[test]
fn simulated_crashes_keep_the_promise() {
    let (mut total_crashes, mut total_acked, mut total_consumed) = (0, 0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut s: SimStore = Store::open(SimDisk::new(seed), cfg()).unwrap().0;
        // lookup -> (queue, prio, tag) of acknowledged appends, not acknowledged consumed.
        let mut acked: BTreeMap<u64, (u32, u8, u64)> = BTreeMap::new();
        let mut consumed: BTreeSet<u64> = BTreeSet::new();
        let mut unacked: BTreeMap<u64, (u32, u8, u64, u64)> = BTreeMap::new();
        let mut held = Vec::new();
        let mut tag = 0u64;
        for _round in 0..6 {
            for _ in 0..(200 + rng.next() % 400) {
                let q = (rng.next() % 3) as u32;
                match rng.next() % 8 {
                    0..=3 => {
                        tag += 1;
                        let prio = (rng.next() % 8) as u8;
                        match s.append(QueueId(q), &meta(prio, tag), &payload(tag)) {
                            Ok(a) => {
                                unacked.insert(a.lookup_id.0, (q, prio, tag, a.ticket.0));
                            }
                            Err(StoreError::BatchFull) => {
                                s.flush().unwrap();
                            }
                            Err(e) => panic!("seed {seed}: {e}"),
                        }
                    }
                    4 | 5 => match s.receive(QueueId(q), lior::store::Select::Front) {
                        Ok(Some(r)) => held.push(r),
                        Ok(None) => {}
                        Err(StoreError::BatchFull) => s.flush().unwrap(),
                        Err(e) => panic!("seed {seed}: {e}"),
                    },
                    6 => s.flush().unwrap(),
                    _ => {
                        let w = s.poll_durable(rng.next() % 2 == 0).unwrap();
                        let done: Vec<u64> = unacked
                            .iter()
                            .filter(|(_, v)| v.3 < w.0)
                            .map(|(k, _)| *k)
                            .collect();
                        for l in done {
                            let (q, p, t, _) = unacked.remove(&l).unwrap();
                            acked.insert(l, (q, p, t));
                        }
                        let mut keep = Vec::new();
                        for r in held.drain(..) {
                            match s.reserved(&r) {
                                Ok(m) => {
                                    assert_eq!(m.bytes, payload(acked[&r.lookup_id.0].2));
                                    acked.remove(&r.lookup_id.0);
                                    consumed.insert(r.lookup_id.0);
                                    s.release(r).unwrap();
                                }
                                Err(StoreError::NotDurable) => keep.push(r),
                                Err(e) => panic!("{e}"),
                            }
                        }
                        held = keep;
                        s.maintain().unwrap();
                    }
                }
            }
            // Crash. Removals staged but not acknowledged may or may not survive.
            let removing: BTreeSet<u64> = held.iter().map(|r| r.lookup_id.0).collect();
            let (s2, _report) = s
                .crash_and_recover(cfg())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            s = s2;
            total_crashes += 1;
            held.clear();
            let seen = contents(&s, 3);
            let mut present = BTreeMap::new();
            let mut last: BTreeMap<(u32, u8), u64> = BTreeMap::new();
            let mut last_prio: BTreeMap<u32, u8> = BTreeMap::new();
            for (q, p, l, bytes) in &seen {
                assert!(present.insert(*l, ()).is_none(), "seed {seed}: {l} twice");
                assert!(!consumed.contains(l), "seed {seed}: consumed {l} came back");
                let prev = last.insert((*q, *p), *l).unwrap_or(0);
                assert!(prev < *l, "seed {seed}: order within priority broken");
                let lp = last_prio.insert(*q, *p).unwrap_or(7);
                assert!(lp >= *p, "seed {seed}: priority order broken");
                let tag = acked.get(l).map(|v| v.2).or(unacked.get(l).map(|v| v.2));
                let tag = tag.unwrap_or_else(|| panic!("seed {seed}: unknown message {l}"));
                assert_eq!(bytes, &payload(tag));
            }
            for l in acked.keys() {
                assert!(
                    present.contains_key(l) || removing.contains(l),
                    "seed {seed}: acknowledged {l} lost"
                );
            }
            // Unacknowledged messages that survived are now durable; the rest are gone.
            for (l, (q, p, t, _)) in std::mem::take(&mut unacked) {
                if present.contains_key(&l) {
                    acked.insert(l, (q, p, t));
                }
            }
            // Unacknowledged removals that did not survive are effective now.
            let now: BTreeSet<u64> = present.keys().copied().collect();
            acked.retain(|l, _| {
                if now.contains(l) {
                    true
                } else {
                    consumed.insert(*l);
                    false
                }
            });
        }
        total_acked += acked.len() + consumed.len();
        total_consumed += consumed.len();
    }
    println!(
        "sim: {total_crashes} crashes, {total_acked} durable messages, {total_consumed} consumed"
    );
    assert!(total_crashes == 240 && total_consumed > 1000);
}

/// Two durable batches; returns the store's disk, the lookups of the first batch, the byte range
/// of the second batch in the last segment, and all lookups in order.
fn two_batches(n1: u64, n2: u64) -> (SimDisk, u64, (usize, usize), Vec<u64>) {
    let mut s: SimStore = Store::open(SimDisk::new(7), cfg()).unwrap().0;
    let mut lookups = Vec::new();
    for t in 0..n1 {
        lookups.push(
            s.append(QueueId(0), &meta(3, t), &payload(t))
                .unwrap()
                .lookup_id
                .0,
        );
    }
    s.flush().unwrap();
    s.poll_durable(true).unwrap();
    let start = s.stats();
    let _ = start;
    let bases = s.disk_mut().bases();
    let base = *bases.last().unwrap();
    let used = |d: &SimDisk| {
        let data = lior::store::Disk::read(d, base);
        let mut off = 0;
        while let Ok(r) = lior::store::record::decode(&data[off..]) {
            off += r.space;
        }
        off
    };
    let from = used(s.disk_mut());
    for t in n1..n1 + n2 {
        lookups.push(
            s.append(QueueId(0), &meta(3, t), &payload(t))
                .unwrap()
                .lookup_id
                .0,
        );
    }
    s.flush().unwrap();
    s.poll_durable(true).unwrap();
    let to = used(s.disk_mut());
    assert_eq!(
        *s.disk_mut().bases().last().unwrap(),
        base,
        "test batches stay in one segment"
    );
    (s.into_disk(), base, (from, to), lookups)
}

/// Flush and wait until nothing is staged or in flight.
fn settle(s: &mut SimStore) {
    loop {
        s.flush().unwrap();
        s.poll_durable(true).unwrap();
        if s.stats().pending_bytes == 0 && !s.in_flight() {
            return;
        }
    }
}

fn recovered_lookups(disk: SimDisk) -> Result<Vec<u64>, StoreError> {
    let (s, _) = Store::open(disk, cfg())?;
    Ok(contents(&s, 1).iter().map(|m| m.2).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any bit flip in the last durable batch is damage, not a torn tail (the idle commit
    /// marker after it proves it was synced): start-up refuses naming it, and salvage keeps
    /// every record but the damaged one. A flip in alignment padding harms nothing.
    #[test]
    fn bit_flip_in_last_batch_is_damage_not_a_torn_tail(n1 in 1u64..10, n2 in 1u64..15, at in 0.0f64..1.0, bit in 0u8..8) {
        let (mut disk, base, (from, to), all) = two_batches(n1, n2);
        let off = (from + ((to - from) as f64 * at) as usize).min(to - 1);
        disk.flip_bit(base, off, bit);
        let mut copy = SimDisk::new(0);
        std::mem::swap(&mut copy, &mut disk);
        match Store::open(copy, cfg()) {
            Ok((s, _)) => {
                let got: Vec<u64> = contents(&s, 1).iter().map(|m| m.2).collect();
                prop_assert_eq!(&got, &all);
            }
            Err(StoreError::Corrupt { segment, offset, .. }) => {
                prop_assert_eq!(segment, base);
                prop_assert!((from as u64..=off as u64).contains(&offset));
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Any truncation of the last batch recovers a valid prefix that keeps the earlier batch.
    #[test]
    fn truncated_tail_recovers_a_prefix(n1 in 1u64..10, n2 in 1u64..15, at in 0.0f64..1.0) {
        let (mut disk, base, (from, to), all) = two_batches(n1, n2);
        let off = from + ((to - from) as f64 * at) as usize;
        disk.truncate(base, off);
        let got = recovered_lookups(disk).unwrap();
        prop_assert!(got.len() >= n1 as usize);
        prop_assert_eq!(&all[..got.len()], &got[..]);
    }
}

#[test]
fn mid_segment_damage_stops_start_up_unless_salvage() {
    // Durable batches after the damage prove it is not a torn last batch.
    let (disk, base, _, _) = two_batches(1, 0);
    let mut s: SimStore = Store::open(disk, cfg()).unwrap().0;
    for t in 0..100 {
        s.append(QueueId(0), &meta(1, t), &payload(t)).unwrap();
        if t % 10 == 9 {
            s.flush().unwrap();
            s.poll_durable(true).unwrap();
        }
    }
    let mut disk = s.into_disk();
    assert_eq!(disk.bases(), vec![base]);
    // Offset 32 is the first message record (after the first batch's commit marker); its
    // byte 40 is inside the crc-covered header.
    disk.flip_bit(base, 40, 0);
    let err = Store::open(disk, cfg()).err().unwrap();
    let StoreError::Corrupt {
        segment,
        offset,
        records_after,
        ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!((segment, offset), (base, 32));
    assert!(records_after >= 100, "{records_after}");
    assert!(err
        .to_string()
        .contains("00000000000000000001.log at offset 32"));
}

#[test]
fn failed_sync_poisons_and_disk_full_is_recoverable() {
    let mut s: SimStore = Store::open(SimDisk::new(3), cfg()).unwrap().0;
    s.append(QueueId(0), &meta(1, 1), b"a").unwrap();
    s.disk_mut().faults.fail_next_sync = Some(libc::EIO);
    s.flush().unwrap();
    assert_eq!(
        s.poll_durable(true),
        Err(StoreError::Poisoned { errno: libc::EIO })
    );
    assert_eq!(
        s.append(QueueId(0), &meta(1, 2), b"b").unwrap_err(),
        StoreError::Poisoned { errno: libc::EIO }
    );
    assert!(s.flush().is_err() && s.poll_durable(false).is_err());

    let mut s: SimStore = Store::open(SimDisk::new(4), cfg()).unwrap().0;
    s.disk_mut().faults.disk_full = true;
    let mut appended = 0;
    let err = loop {
        match s.append(QueueId(0), &meta(1, appended), &[1u8; 1000]) {
            Ok(_) => appended += 1,
            Err(StoreError::BatchFull) => {
                s.flush().unwrap();
                s.poll_durable(true).unwrap();
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err, StoreError::DiskFull);
    settle(&mut s);
    // Consume everything, free the disk: appends work again, nothing was harmed.
    let mut got = 0;
    while let Some(r) = s.receive(QueueId(0), lior::store::Select::Front).unwrap() {
        settle(&mut s);
        assert_eq!(s.reserved(&r).unwrap().bytes, &[1u8; 1000][..]);
        s.release(r).unwrap();
        got += 1;
    }
    assert_eq!(got, appended);
    s.disk_mut().faults.disk_full = false;
    s.append(QueueId(0), &meta(1, 9999), &[1u8; 1000]).unwrap();
}
