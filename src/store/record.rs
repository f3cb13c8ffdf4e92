//! The on-disk record format. Records are 8-byte aligned; all integers little-endian.
//!
//! ```text
//!  0 len     u32  record bytes before padding (header + payload)
//!  4 crc     u32  crc32 over bytes 8..len
//!  8 seq     u64  strictly increasing across the log; every record of a segment has
//!                 seq >= the segment's base (its file name), which is one past the previous
//!                 segment's seal (stale records in a reused file are below it)
//! 16 kind    u8   1 message, 2 remove, 3 purge, 4 seal, 5 commit marker, 6 filler
//! 17 prio    u8   message priority 0..=7
//! 18 class   u8   1 recoverable, 2 transactional
//! 19 version u8   the record format, [`FORMAT_VERSION`] (format 1, before commit markers, had 0)
//! 20 queue   u32
//! 24 lookup  u64  message: its lookup id (== seq unless copied forward); remove: the
//!                 removed message; purge: messages below it are removed; marker: D, every
//!                 seq below D was durable when the marker was written; filler: the bytes the
//!                 filler covers (itself included), a multiple of 8
//! -- message records only --
//! 32 expiry  u32  unix seconds, 0xFFFFFFFF never
//! 36 msg_id  [20]
//! 56 payload      the packet bytes exactly as appended
//! ```
//!
//! Commit markers tell a torn tail from damage (see `core.rs`, "recovery"): every commit batch
//! starts with one, and one is written when the store goes idle and at a clean close. Fillers
//! are written only by salvage, over a damaged region, so later starts read past it.
//!
//! It must not interpret payloads.

use super::{Class, LookupId, MessageId, MessageMeta, QueueId};

/// Bytes of the header shared by every record.
pub const COMMON_HEADER: usize = 32;
/// Bytes before a message record's payload.
pub const MESSAGE_HEADER: usize = 56;
/// Record alignment.
pub const ALIGN: usize = 8;
/// The record format this build writes and reads (byte 19 of every record).
pub const FORMAT_VERSION: u8 = 2;

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A queue message.
    Message = 1,
    /// Removal of one message (receive).
    Remove = 2,
    /// Removal of all messages of a queue below a lookup id.
    Purge = 3,
    /// End of a segment: the log continues in the next one.
    Seal = 4,
    /// Commit marker: every seq below its `lookup` (D) was durable when it was written.
    Marker = 5,
    /// Salvage's patch over a damaged region: the next record is `lookup` bytes further on.
    Filler = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Message,
            2 => Kind::Remove,
            3 => Kind::Purge,
            4 => Kind::Seal,
            5 => Kind::Marker,
            6 => Kind::Filler,
            _ => return None,
        })
    }
}

/// Round up to the record alignment.
#[inline]
pub fn aligned(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// Bytes a message of `payload` bytes occupies in the log, padding included.
#[inline]
pub fn message_space(payload: usize) -> usize {
    aligned(MESSAGE_HEADER + payload)
}

/// Append a message record to `out` (zero padding included). Returns its offset in `out`.
#[inline]
pub fn encode_message(
    out: &mut Vec<u8>,
    seq: u64,
    queue: QueueId,
    lookup: LookupId,
    meta: &MessageMeta,
    payload: &[u8],
) -> usize {
    let start = out.len();
    let len = MESSAGE_HEADER + payload.len();
    // The header is built on the stack and the payload copied once: no zeroing pass over the
    // record first (a `resize` here showed as a memset of every payload in the profile).
    let mut h = [0u8; MESSAGE_HEADER];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16] = Kind::Message as u8;
    h[17] = meta.priority;
    h[18] = meta.class as u8;
    h[19] = FORMAT_VERSION;
    h[20..24].copy_from_slice(&queue.0.to_le_bytes());
    h[24..32].copy_from_slice(&lookup.0.to_le_bytes());
    h[32..36].copy_from_slice(&meta.expiry_unix_s.to_le_bytes());
    h[36..56].copy_from_slice(&meta.message_id.0);
    out.reserve(aligned(len));
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.resize(start + aligned(len), 0);
    let crc = crc32fast::hash(&out[start + 8..start + len]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    start
}

/// Append a control record (remove, purge, seal, marker, filler). Returns its offset in `out`.
pub fn encode_control(
    out: &mut Vec<u8>,
    seq: u64,
    kind: Kind,
    queue: QueueId,
    lookup: u64,
) -> usize {
    let start = out.len();
    let mut r = control(seq, kind, 0);
    r[20..24].copy_from_slice(&queue.0.to_le_bytes());
    patch_control(&mut r, lookup);
    out.extend_from_slice(&r);
    start
}

/// Rewrite the `lookup` field of the control record at the start of `r` and its crc (a commit
/// marker's D is known only when its batch is submitted; a purge's bound when it is staged).
pub fn patch_control(r: &mut [u8], lookup: u64) {
    r[24..32].copy_from_slice(&lookup.to_le_bytes());
    let crc = crc32fast::hash(&r[8..COMMON_HEADER]);
    r[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A 32-byte control record, standalone (markers and fillers written outside a batch); no
/// allocation.
pub fn control(seq: u64, kind: Kind, lookup: u64) -> [u8; COMMON_HEADER] {
    let mut r = [0u8; COMMON_HEADER];
    r[0..4].copy_from_slice(&(COMMON_HEADER as u32).to_le_bytes());
    r[8..16].copy_from_slice(&seq.to_le_bytes());
    r[16] = kind as u8;
    r[19] = FORMAT_VERSION;
    patch_control(&mut r, lookup);
    r
}

/// A record that passed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its queue.
    pub queue: QueueId,
    /// Lookup id (see the layout).
    pub lookup: u64,
    /// Message metadata (message records only).
    pub meta: Option<MessageMeta>,
    /// Payload (empty for control records).
    pub payload: &'a [u8],
    /// Bytes used including padding.
    pub space: usize,
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// A zero length: unwritten space.
    Empty,
    /// Anything else: bad length, crc, kind or fields.
    Invalid,
    /// A record whose crc verifies but that was written in another record format (the byte).
    Version(u8),
}

/// Cheap checks of the header at the start of `buf`, no crc: a known kind and the current
/// format version, `seq` in `(after, below)`, a length that fits `buf` and `max_len`. Recovery
/// runs this at every 8-byte step when it looks for records past a bad one, so stale data (a
/// recycled segment file, random payload bytes) costs a few comparisons, not a checksum.
/// Returns (seq, len, kind byte).
#[inline]
pub fn plausible(buf: &[u8], after: u64, below: u64, max_len: usize) -> Option<(u64, usize, u8)> {
    if buf.len() < COMMON_HEADER || buf[19] != FORMAT_VERSION || !(1..=6).contains(&buf[16]) {
        return None;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(COMMON_HEADER..=max_len.min(buf.len())).contains(&len) {
        return None;
    }
    if buf[16] != Kind::Message as u8 && len != COMMON_HEADER {
        return None;
    }
    let seq = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    (seq > after && seq < below).then_some((seq, len, buf[16]))
}

/// Read the sequence number of a plausible header without checking the crc (cheap pre-check).
#[inline]
pub fn peek_seq(buf: &[u8]) -> Option<u64> {
    if buf.len() < COMMON_HEADER {
        return None;
    }
    Some(u64::from_le_bytes(buf[8..16].try_into().ok()?))
}

/// Decode and verify the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Record<'_>, Bad> {
    if buf.len() < COMMON_HEADER {
        return Err(Bad::Invalid);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(Bad::Empty);
    }
    if len < COMMON_HEADER || len > buf.len() {
        return Err(Bad::Invalid);
    }
    let r = &buf[..len];
    let crc = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
    if crc32fast::hash(&r[8..]) != crc {
        return Err(Bad::Invalid);
    }
    if r[19] != FORMAT_VERSION {
        return Err(Bad::Version(r[19]));
    }
    let seq = u64::from_le_bytes(r[8..16].try_into().map_err(|_| Bad::Invalid)?);
    let queue = QueueId(u32::from_le_bytes([r[20], r[21], r[22], r[23]]));
    let lookup = u64::from_le_bytes(r[24..32].try_into().map_err(|_| Bad::Invalid)?);
    let mut space = aligned(len);
    let kind = Kind::from_u8(r[16]).ok_or(Bad::Invalid)?;
    if kind != Kind::Message {
        if len != COMMON_HEADER {
            return Err(Bad::Invalid);
        }
        if kind == Kind::Filler {
            let span = lookup as usize;
            if span < COMMON_HEADER || span % ALIGN != 0 || span > buf.len() {
                return Err(Bad::Invalid);
            }
            space = span;
        }
        return Ok(Record {
            seq,
            kind,
            queue,
            lookup,
            meta: None,
            payload: &[],
            space,
        });
    }
    if len < MESSAGE_HEADER || r[17] > 7 {
        return Err(Bad::Invalid);
    }
    let class = match Class::from_u8(r[18]) {
        Some(c) if c != Class::Express => c,
        _ => return Err(Bad::Invalid),
    };
    let mut id = [0u8; 20];
    id.copy_from_slice(&r[36..56]);
    let meta = MessageMeta {
        priority: r[17],
        class,
        message_id: MessageId(id),
        expiry_unix_s: u32::from_le_bytes([r[32], r[33], r[34], r[35]]),
    };
    Ok(Record {
        seq,
        kind,
        queue,
        lookup,
        meta: Some(meta),
        payload: &r[MESSAGE_HEADER..],
        space,
    })
}

/// Decode a message record already verified when it was indexed (no crc recomputation): used
/// on the read path, where the record is known good.
#[inline]
pub fn view_message(r: &[u8]) -> (MessageMeta, &[u8]) {
    let len = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
    let mut id = [0u8; 20];
    id.copy_from_slice(&r[36..56]);
    let meta = MessageMeta {
        priority: r[17],
        class: Class::from_u8(r[18]).unwrap_or(Class::Recoverable),
        message_id: MessageId(id),
        expiry_unix_s: u32::from_le_bytes([r[32], r[33], r[34], r[35]]),
    };
    (meta, &r[MESSAGE_HEADER..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_crc() {
        let meta = MessageMeta {
            priority: 5,
            class: Class::Recoverable,
            message_id: MessageId([9; 20]),
            expiry_unix_s: 77,
        };
        let mut out = vec![1, 2, 3, 4, 5, 6, 7, 8];
        let at = encode_message(&mut out, 42, QueueId(3), LookupId(42), &meta, b"hello");
        assert_eq!(at, 8);
        assert_eq!(out.len() % 8, 0);
        let r = decode(&out[at..]).unwrap();
        assert_eq!(
            (r.seq, r.kind, r.queue, r.lookup),
            (42, Kind::Message, QueueId(3), 42)
        );
        assert_eq!(r.meta, Some(meta));
        assert_eq!(r.payload, b"hello");
        assert_eq!(view_message(&out[at..]), (meta, &b"hello"[..]));
        for i in at..at + MESSAGE_HEADER + 5 {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad[at..]).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn control_round_trip() {
        let mut out = Vec::new();
        encode_control(&mut out, 7, Kind::Purge, QueueId(1), 99);
        let r = decode(&out).unwrap();
        assert_eq!((r.kind, r.lookup, r.space), (Kind::Purge, 99, 32));
        assert_eq!(decode(&[0u8; 64]), Err(Bad::Empty));
        // A record of another format version verifies but is refused as such.
        let mut old = out.clone();
        old[19] = 0;
        let crc = crc32fast::hash(&old[8..32]);
        old[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&old), Err(Bad::Version(0)));
        // A filler covers its span.
        let mut f = control(9, Kind::Filler, 96).to_vec();
        f.resize(96, 0xAB);
        assert_eq!(decode(&f).unwrap().space, 96);
        assert!(decode(&f[..64]).is_err());
    }
}
