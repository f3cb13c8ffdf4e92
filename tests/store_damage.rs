//! Damage is not a torn tail: one flipped byte in any record of a multi-batch log (first,
//! middle, last-but-one and last batch, sealed segments and the tail) never costs another
//! record. Start-up refuses naming the segment and offset, changing nothing; salvage keeps every
//! other record and later starts are clean. Over the simulated disk and over real files.
//! Also: a cleanly stopped store whose segments are recycled files full of stale records
//! restarts with bounded work and cuts nothing.

use lior::store::record::{self, Kind};
mod common;

use common::stores::{self, tagged_body, tagged_meta};
use lior::store::{
    check, Cursor, Disk, FileStore, MessageMeta, QueueId, QueueStore, Select, SimDisk, SimStore,
    Store, StoreConfig, StoreError, UringDisk,
};
use std::path::Path;

fn sim_cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 32 << 10,
        batch_bytes_max: 4 << 10,
        message_bytes_max: 1 << 10,
        removal_reserve_bytes: 2 << 10,
        ..StoreConfig::default()
    }
}

fn file_cfg() -> StoreConfig {
    StoreConfig {
        segment_bytes: 32 << 10,
        batch_bytes_max: 8 << 10,
        message_bytes_max: 1 << 10,
        removal_reserve_bytes: 4 << 10,
        ..StoreConfig::default()
    }
}

fn meta(tag: u64) -> MessageMeta {
    tagged_meta(tag, (tag % 8) as u8)
}

fn payload(tag: u64) -> Vec<u8> {
    tagged_body(tag, 40 + (tag % 300) as usize)
}

/// Flush and wait until nothing is staged or in flight.
fn settle<S: QueueStore>(s: &mut S) {
    stores::settle(s, 100)
}

/// Appends `n` messages in batches of 10, each batch durable before the next; consumes a few.
fn fill<S: QueueStore>(s: &mut S, n: u64) {
    for t in 0..n {
        s.append(QueueId((t % 2) as u32), &meta(t), &payload(t))
            .unwrap();
        if t % 10 == 9 {
            settle(s);
        }
        if t % 37 == 36 {
            let r = s.receive(QueueId(0), Select::Front).unwrap().unwrap();
            settle(s);
            s.release(r).unwrap();
        }
    }
    settle(s);
}

/// Every visible message: (lookup id, payload).
fn contents<S: QueueStore>(s: &S) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for q in 0..2 {
        let mut c = Cursor::new(QueueId(q));
        while let Some(m) = s.cursor_next(&mut c) {
            out.push((m.lookup_id.0, m.bytes.to_vec()));
        }
    }
    out.sort();
    out
}

/// Salvage keeps every message but the damaged one; a damaged removal brings its message back
/// (delivered twice rather than lost: salvage cannot know it was removed).
fn assert_kept(
    got: &[(u64, Vec<u8>)],
    all: &[(u64, Vec<u8>)],
    rec: &(u64, usize, usize, Kind, u64),
    i: usize,
) {
    let lost: Vec<u64> = all
        .iter()
        .filter(|m| !got.contains(m))
        .map(|m| m.0)
        .collect();
    let extra: Vec<u64> = got
        .iter()
        .filter(|m| !all.contains(m))
        .map(|m| m.0)
        .collect();
    match rec.3 {
        Kind::Message => assert!(
            lost.iter().all(|&l| l == rec.4),
            "record {i} {rec:?}: lost {lost:?}"
        ),
        _ => assert!(lost.is_empty(), "record {i} {rec:?}: lost {lost:?}"),
    }
    match rec.3 {
        Kind::Remove => assert!(
            extra.iter().all(|&l| l == rec.4),
            "record {i}: extra {extra:?}"
        ),
        _ => assert!(extra.is_empty(), "record {i} {rec:?}: extra {extra:?}"),
    }
}

/// Every record of the log: (segment, offset, len, kind, lookup).
fn records(disk: &impl Disk, bases: &[u64]) -> Vec<(u64, usize, usize, Kind, u64)> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &b in bases {
        let data = disk.read(b);
        let mut off = 0;
        while let Ok(r) = record::decode(&data[off..]) {
            if r.seq <= prev || r.seq < b {
                break;
            }
            prev = r.seq;
            let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            out.push((b, off, len, r.kind, r.lookup));
            off += r.space;
            if r.kind == Kind::Seal {
                break;
            }
        }
    }
    out
}

/// A byte inside record `i`'s crc-covered bytes.
fn flip_at(rec: &(u64, usize, usize, Kind, u64), i: usize) -> usize {
    rec.1 + 8 + (i * 7919) % (rec.2 - 8)
}

fn build_sim() -> (SimDisk, Vec<(u64, Vec<u8>)>) {
    let mut disk = SimDisk::new(11);
    disk.faults.complete_percent = 100;
    let mut s: SimStore = Store::open(disk, sim_cfg()).unwrap().0;
    fill(&mut s, 300);
    let all = contents(&s);
    (s.into_disk(), all)
}

#[test]
fn a_flipped_byte_in_any_record_loses_no_other_record_sim() {
    let (disk, all) = build_sim();
    let bases = disk.bases();
    assert!(bases.len() >= 3, "the log spans sealed segments and a tail");
    let recs = records(&disk, &bases);
    let last = recs.len() - 1;
    for (i, rec) in recs.iter().enumerate() {
        let (mut disk, _) = build_sim();
        disk.flip_bit(rec.0, flip_at(rec, i), (i % 8) as u8);
        match Store::open(disk, sim_cfg()) {
            Err(StoreError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(
                    (segment, offset),
                    (rec.0, rec.1 as u64),
                    "record {i} {rec:?}"
                );
            }
            Ok((s, _)) => {
                // Only the idle commit marker ending the log may read as a torn tail: it
                // confirms nothing that is not confirmed again, and nothing is lost.
                assert_eq!(i, last, "record {i} {rec:?}: damage taken for a torn tail");
                assert_eq!(rec.3, Kind::Marker);
                assert!(contents(&s) == all, "record {i}: contents differ");
                continue;
            }
            Err(e) => panic!("record {i}: {e}"),
        }
        // Nothing was changed: refused again; salvage keeps every other record.
        let (mut disk, _) = build_sim();
        disk.flip_bit(rec.0, flip_at(rec, i), (i % 8) as u8);
        let Err(StoreError::Corrupt { .. }) = Store::open(disk, sim_cfg()) else {
            panic!("record {i}: second start differs");
        };
        let (mut disk, _) = build_sim();
        disk.flip_bit(rec.0, flip_at(rec, i), (i % 8) as u8);
        let salvage = StoreConfig {
            salvage: true,
            ..sim_cfg()
        };
        let (s, report) = Store::open(disk, salvage).unwrap();
        assert!(report.salvaged && report.holes >= 1, "record {i}");
        let keep = contents(&s);
        assert_kept(&keep, &all, rec, i);
        // Later starts are clean, and the store keeps working.
        let (mut s, report) = Store::open(s.into_disk(), sim_cfg())
            .unwrap_or_else(|e| panic!("record {i}: start after salvage: {e}"));
        assert!(!report.salvaged && report.holes == 0);
        assert!(contents(&s) == keep, "record {i}: second start differs");
        let a = s.append(QueueId(1), &meta(9999), &payload(9999)).unwrap();
        settle(&mut s);
        let s = Store::open(s.into_disk(), sim_cfg()).unwrap().0;
        assert_eq!(
            s.peek(QueueId(1), Select::Lookup(a.lookup_id))
                .unwrap()
                .bytes,
            &payload(9999)[..]
        );
    }
}

fn open_file(dir: &Path, cfg: StoreConfig) -> Result<FileStore, StoreError> {
    Ok(Store::open(UringDisk::open(dir)?, cfg)?.0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn flip_file(dir: &Path, base: u64, off: usize) {
    let p = dir.join(lior::store::segment_file_name(base));
    let mut data = std::fs::read(&p).unwrap();
    data[off] ^= 0x20;
    std::fs::write(&p, data).unwrap();
}

#[test]
fn a_flipped_byte_in_any_record_loses_no_other_record_files() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = tmp.path().join("golden");
    let mut s = open_file(&golden, file_cfg()).unwrap();
    fill(&mut s, 400);
    let all = contents(&s);
    drop(s);
    // Read the layout back from the files.
    let disk = UringDisk::open(&golden).unwrap();
    let bases = {
        let mut d = disk;
        let b = d.segments().unwrap();
        let recs = records(&d, &b);
        drop(d);
        (b, recs)
    };
    let (bases, recs) = bases;
    assert!(bases.len() >= 3, "the log spans sealed segments and a tail");
    // First records, every 9th, the last twenty (last-but-one and last batch, the idle marker).
    let picks: Vec<usize> = (0..recs.len())
        .filter(|&i| i < 3 || i % 9 == 0 || i + 20 >= recs.len())
        .collect();
    for &i in &picks {
        let rec = &recs[i];
        let dir = tmp.path().join(format!("case-{i}"));
        copy_dir(&golden, &dir);
        flip_file(&dir, rec.0, flip_at(rec, i));
        match open_file(&dir, file_cfg()) {
            Err(StoreError::Corrupt {
                segment, offset, ..
            }) => assert_eq!((segment, offset), (rec.0, rec.1 as u64), "record {i}"),
            Ok(s) => {
                assert_eq!(
                    i,
                    recs.len() - 1,
                    "record {i} {rec:?}: damage taken for torn"
                );
                assert!(contents(&s) == all, "record {i}: contents differ");
                continue;
            }
            Err(e) => panic!("record {i}: {e}"),
        }
        let report = check::check(&dir).unwrap();
        assert!(report.damaged(), "record {i}: check missed it");
        let done = check::salvage(&dir).unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].copies[0]
            .to_string_lossy()
            .ends_with(".log.damaged"));
        assert_eq!(done[0].skipped[0].0, rec.0);
        let s = open_file(&dir, file_cfg())
            .unwrap_or_else(|e| panic!("record {i}: start after salvage: {e}"));
        assert_kept(&contents(&s), &all, rec, i);
        drop(s);
        assert!(!check::check(&dir).unwrap().damaged(), "record {i}");
    }
}

/// A cleanly stopped store whose segment files are recycled (full of stale records and random
/// payload bytes) restarts without computing a crc over stale data and cuts nothing.
#[test]
fn clean_stop_with_recycled_segments_restarts_with_bounded_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 128 << 10,
        message_bytes_max: 16 << 10,
        removal_reserve_bytes: 64 << 10,
        ..StoreConfig::default()
    };
    let mut s = open_file(tmp.path(), cfg).unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    // Several rounds: fill a few segments with random payloads, consume everything, reclaim
    // (the files go to the recycle list and come back as new segments full of stale data).
    for round in 0..4u64 {
        for t in 0..400 {
            s.append(QueueId(0), &meta(round * 1000 + t), &random(8 << 10))
                .unwrap();
            if t % 16 == 15 {
                settle(&mut s);
            }
        }
        settle(&mut s);
        while let Some(r) = s.receive(QueueId(0), Select::Front).unwrap() {
            settle(&mut s);
            s.release(r).unwrap();
        }
        settle(&mut s);
        s.maintain().unwrap();
    }
    // A few live messages at the end, then a clean stop.
    for t in 0..10 {
        s.append(QueueId(0), &meta(50_000 + t), &random(8 << 10))
            .unwrap();
    }
    settle(&mut s);
    s.close().unwrap();
    let live = s.stats().messages;
    drop(s);
    let recycled = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().ends_with(".log")
        })
        .count();
    assert!(recycled >= 1);
    // What the log holds, and how much stale data lies beyond its end in recycled files.
    let layout = check::check(tmp.path()).unwrap();
    assert!(!layout.damaged());
    let log_bytes: u64 = layout.partitions[0]
        .segments
        .iter()
        .map(|s| s.record_bytes)
        .sum();
    let last = layout.partitions[0].segments.last().unwrap();
    let tail = std::fs::read(tmp.path().join(lior::store::segment_file_name(last.base))).unwrap();
    let stale = tail[last.end as usize..]
        .iter()
        .filter(|&&b| b != 0)
        .count();
    assert!(
        stale > 256 << 10,
        "the tail segment is a recycled file: {stale} stale bytes"
    );
    let (s, report) = Store::open(UringDisk::open(tmp.path()).unwrap(), cfg).unwrap();
    assert_eq!(s.stats().messages, live);
    assert_eq!(
        report.cut_bytes, 0,
        "a cleanly stopped store has no torn tail"
    );
    // Work is bounded by the log, not the stale bytes: only the records replayed are
    // checksummed (stale data costs comparisons, never a crc).
    assert!(
        report.crc_bytes <= log_bytes,
        "recovery computed crcs over {} bytes for a log of {log_bytes}",
        report.crc_bytes
    );
}

/// A stop request (what `lior serve` asks on SIGTERM/SIGINT) abandons recovery with
/// `Interrupted` and changes nothing; the next start recovers everything.
#[test]
fn recovery_stops_when_asked_and_changes_nothing() {
    let (disk, all) = build_sim();
    let mut asked = 0;
    let err = Store::open_until(disk, sim_cfg(), &mut || {
        asked += 1;
        asked > 2
    })
    .err()
    .unwrap();
    assert_eq!(err, StoreError::Interrupted);
    assert!(err.to_string().contains("stopped by a signal"));
    let (disk, _) = build_sim();
    let (s, _) = Store::open_until(disk, sim_cfg(), &mut || false).unwrap();
    assert!(contents(&s) == all);
}

/// A segment file missing from the middle of the log: start-up refuses naming the next one;
/// salvage keeps every message of the other segments and later starts are clean.
#[test]
fn a_missing_segment_is_refused_then_salvaged() {
    let (mut disk, all) = build_sim();
    let bases = disk.bases();
    assert!(bases.len() >= 3);
    let gone: Vec<u64> = records(&disk, &bases)
        .iter()
        .filter(|r| r.0 == bases[1] && r.3 == Kind::Message)
        .map(|r| r.4)
        .collect();
    // Removals recorded in the lost segment: their messages come back (never lost).
    let revived: Vec<u64> = records(&disk, &bases)
        .iter()
        .filter(|r| r.0 == bases[1] && r.3 == Kind::Remove)
        .map(|r| r.4)
        .collect();
    disk.remove_segment(bases[1]).unwrap();
    let Err(StoreError::Corrupt {
        segment, offset, ..
    }) = Store::open(disk, sim_cfg())
    else {
        panic!("a missing segment was not refused")
    };
    assert_eq!((segment, offset), (bases[2], 0));
    let (mut disk, _) = build_sim();
    disk.remove_segment(bases[1]).unwrap();
    let salvage = StoreConfig {
        salvage: true,
        ..sim_cfg()
    };
    let (s, _) = Store::open(disk, salvage).unwrap();
    let keep: Vec<_> = all
        .iter()
        .filter(|m| !gone.contains(&m.0))
        .cloned()
        .collect();
    let got = contents(&s);
    assert!(
        keep.iter().all(|m| got.contains(m)),
        "salvage lost messages"
    );
    assert!(
        got.iter()
            .all(|m| keep.contains(m) || revived.contains(&m.0)),
        "unexpected messages"
    );
    let (s, report) = Store::open(s.into_disk(), sim_cfg()).unwrap();
    assert!(!report.salvaged);
    assert!(contents(&s) == got);
}

/// A log written in the record format before commit markers (version byte 0) is refused with
/// a message saying so, not misread as damage or an empty log.
#[test]
fn an_old_record_format_is_refused() {
    let mut disk = SimDisk::new(1);
    disk.create_segment(1, sim_cfg().segment_bytes).unwrap();
    let mut rec = record::control(1, Kind::Remove, 7);
    rec[19] = 0;
    let crc = crc32fast::hash(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    disk.write_at(1, 0, &rec, true).unwrap();
    let err = Store::open(disk, sim_cfg()).err().unwrap();
    assert_eq!(err, StoreError::Format { found: 0 });
    assert!(err.to_string().contains("record format 0"), "{err}");
}
