//! Reading one segment's records for recovery, `lior store check` and salvage: a sequential
//! walk that verifies every record, and past a bad record a cheap search for proof that the
//! bad bytes were synced (then they are damage, a hole) or not (then they are the torn tail).
//!
//! It owns the rules of telling a torn tail from damage; it must not change the disk.
//!
//! Why commit markers decide it: batches are written one at a time, the next only after the
//! previous one's fdatasync completed, and each batch starts with a commit marker record (the
//! store also writes one when it goes idle after a batch, and at a clean close). So a valid
//! marker found *after* a bad record, with a sequence number above the last good one, was
//! written after the bad record's batch had been synced: the bad record is damage to synced
//! data. Without such a marker, the bad record belongs to the last batch, whose fdatasync may
//! never have completed: a torn tail. Residual case: media damage in the very last batch when
//! a crash also lost the idle marker written after it (that marker is written without a sync
//! of its own) is taken for a torn tail.
//!
//! Why the search is cheap: every candidate position (each 8 bytes) first passes
//! [`record::plausible`] (kind, format version, length within the segment, sequence number
//! above the last good one and below the next segment's base), which stale records of a
//! recycled segment file always fail (their sequence numbers are older than the segment's
//! base); only then is a crc computed. In the last segment the search wants a commit marker,
//! whose crc covers 24 bytes, so no candidate ever costs a large crc there. (A tighter upper
//! bound like "last seq + remaining bytes / 32" does not hold here: express messages take
//! sequence numbers, their lookup ids, without writing records, so the gap between two
//! records is unbounded.)

use super::record::{self, Bad, Kind, Record, ALIGN, COMMON_HEADER};

/// Steps of the search between two stop checks.
const STOP_CHECK_STEPS: usize = 1 << 20;
/// Records replayed between two stop checks.
const STOP_CHECK_RECORDS: u64 = 1 << 16;

/// A damaged region: bad bytes followed by valid records (within its segment) or, at the end of
/// a segment that is not the last, a missing seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    /// Byte offset of the first bad byte (where a record should start).
    pub offset: usize,
    /// Bytes up to the next valid record (or the segment's end).
    pub len: usize,
    /// The sequence number of the last valid record before it.
    pub after_seq: u64,
    /// The sequence number of the first valid record after it, if any in this segment.
    pub next_seq: Option<u64>,
}

/// What a segment holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Offset after the last valid record: where writing continues.
    pub end: usize,
    /// Whether it ends with a seal.
    pub sealed: bool,
    /// Sequence number of its last valid record (the previous one's if none).
    pub last_seq: u64,
    /// Valid records and their bytes.
    pub records: u64,
    /// Bytes of the valid records (fillers count their span).
    pub record_bytes: u64,
    /// Damaged regions, in order.
    pub holes: Vec<Hole>,
    /// The version byte of a record of another format at the start, if so.
    pub old_format: Option<u8>,
    /// Bytes whose crc was computed.
    pub crc_bytes: u64,
}

/// The stop check fired.
#[derive(Debug)]
pub struct Stopped;

/// Walk segment `base` (bytes `data`) whose log continues from `prev_seq`. `next_base` is the
/// next segment's base, `None` for the last segment. `on_record` sees every valid record with
/// its offset, in order. `stop` is asked now and then; `true` abandons the walk.
pub fn scan_segment(
    data: &[u8],
    base: u64,
    prev_seq: u64,
    next_base: Option<u64>,
    stop: &mut dyn FnMut() -> bool,
    on_record: &mut dyn FnMut(usize, &Record<'_>),
) -> Result<SegmentScan, Stopped> {
    let below = next_base.unwrap_or(u64::MAX);
    let mut s = SegmentScan {
        last_seq: prev_seq,
        ..SegmentScan::default()
    };
    let mut off = 0usize;
    loop {
        if s.records % STOP_CHECK_RECORDS == STOP_CHECK_RECORDS - 1 && stop() {
            return Err(Stopped);
        }
        if off + COMMON_HEADER <= data.len() {
            let after = s.last_seq.max(base.saturating_sub(1));
            if let Some((_, len, _)) =
                record::plausible(&data[off..], after, below, data.len() - off)
            {
                s.crc_bytes += len as u64;
                if let Ok(r) = record::decode(&data[off..]) {
                    on_record(off, &r);
                    s.records += 1;
                    s.record_bytes += r.space as u64;
                    s.last_seq = r.seq;
                    off += r.space;
                    if r.kind == Kind::Seal {
                        s.sealed = true;
                        break;
                    }
                    continue;
                }
            } else if off == 0 && data[19] != record::FORMAT_VERSION {
                if let Err(Bad::Version(v)) = record::decode(data) {
                    s.old_format = Some(v);
                    break;
                }
            }
        }
        // `off` ends the valid records. Anything valid further on?
        match resume(
            data,
            off,
            s.last_seq,
            base,
            next_base,
            stop,
            &mut s.crc_bytes,
        )? {
            Some((at, seq)) => {
                s.holes.push(Hole {
                    offset: off,
                    len: at - off,
                    after_seq: s.last_seq,
                    next_seq: Some(seq),
                });
                off = at;
            }
            None => {
                if next_base.is_some() && off < data.len() {
                    // A segment before the last ends with a seal: its absence is damage.
                    s.holes.push(Hole {
                        offset: off,
                        len: data.len() - off,
                        after_seq: s.last_seq,
                        next_seq: None,
                    });
                }
                break;
            }
        }
    }
    s.end = match s.holes.last() {
        Some(h) if h.next_seq.is_none() => h.offset,
        _ => off,
    };
    Ok(s)
}

/// The offset and seq of the first valid record after `off` that proves the bytes at `off`
/// were synced, or `None` if nothing does (the end of the log, clean or torn).
fn resume(
    data: &[u8],
    off: usize,
    last: u64,
    base: u64,
    next_base: Option<u64>,
    stop: &mut dyn FnMut() -> bool,
    crc_bytes: &mut u64,
) -> Result<Option<(usize, u64)>, Stopped> {
    let after = last.max(base.saturating_sub(1));
    let mut verify = |p: usize, len: usize| -> Option<u64> {
        *crc_bytes += len as u64;
        record::decode(&data[p..]).ok().map(|r| r.seq)
    };
    let mut p = off + ALIGN;
    let mut steps = 0usize;
    let limit = match next_base {
        // Before the last segment every record is synced (a later segment exists only once a
        // seal here was written and synced): any valid record is proof, and its sequence number
        // is bounded by the next segment's base.
        Some(below) => {
            while p + COMMON_HEADER <= data.len() {
                steps += 1;
                if steps % STOP_CHECK_STEPS == 0 && stop() {
                    return Err(Stopped);
                }
                if let Some((_, len, _)) =
                    record::plausible(&data[p..], after, below, data.len() - p)
                {
                    if let Some(seq) = verify(p, len) {
                        return Ok(Some((p, seq)));
                    }
                }
                p += ALIGN;
            }
            return Ok(None);
        }
        // The last segment: look for a commit marker (a 32-byte record, so a cheap crc).
        None => {
            let mut found = None;
            while p + COMMON_HEADER <= data.len() {
                steps += 1;
                if steps % STOP_CHECK_STEPS == 0 && stop() {
                    return Err(Stopped);
                }
                if data[p + 16] == Kind::Marker as u8 {
                    if let Some((seq, len, _)) =
                        record::plausible(&data[p..], after, u64::MAX, COMMON_HEADER)
                    {
                        if verify(p, len).is_some() {
                            found = Some((p, seq));
                            break;
                        }
                    }
                }
                p += ALIGN;
            }
            match found {
                Some(m) => m,
                None => return Ok(None),
            }
        }
    };
    // The marker proves the region synced; records of the damaged batch may lie between the
    // bad one and the marker: the first valid one (seq below the marker's) ends the hole.
    let (mpos, mseq) = limit;
    let mut p = off + ALIGN;
    while p < mpos {
        if let Some((_, len, _)) = record::plausible(&data[p..], after, mseq, mpos - p) {
            if let Some(seq) = verify(p, len) {
                return Ok(Some((p, seq)));
            }
        }
        p += ALIGN;
    }
    Ok(Some((mpos, mseq)))
}

/// Whether `data[from..to]` holds a record that verifies and belongs after `last` (a torn
/// batch's leftovers), which must be zeroed so it is never read as a record once new ones are
/// written before it. Only headers passing [`record::plausible`] are checksummed, within the
/// window, so stale data costs comparisons. Returns it and the bytes checksummed.
pub fn torn_leftovers(data: &[u8], from: usize, to: usize, last: u64, base: u64) -> (bool, u64) {
    let after = last.max(base.saturating_sub(1));
    let to = to.min(data.len());
    let mut crc = 0u64;
    let mut p = from;
    while p + COMMON_HEADER <= to {
        if let Some((_, len, _)) = record::plausible(&data[p..to], after, u64::MAX, to - p) {
            crc += len as u64;
            if record::decode(&data[p..to]).is_ok() {
                return (true, crc);
            }
        }
        p += ALIGN;
    }
    (false, crc)
}
