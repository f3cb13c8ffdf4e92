//! The store's logic over any [`Disk`]: staging records, group commit, the index, consumption,
//! reclamation, compaction and recovery.
//!
//! It owns the index and the commit order; it must not do IO except through `Disk`, and it
//! holds no `unsafe`.

use super::express::{is_express, ExpressArena};
use super::index::{Entry, QueueIndex};
use super::record::{self, Kind, COMMON_HEADER};
use super::scan;
use super::segment_file_name;
use super::{
    Appended, Chunk, Class, Cursor, Disk, LookupId, Maintenance, MessageMeta, MessageRef, QueueId,
    QueueQuota, QueueStore, QuotaKind, RecoveryReport, Reservation, Select, StoreConfig,
    StoreError, StoreStats, Ticket,
};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hasher for ids that are already well spread (GUIDs, sequence numbers).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64)
    }
}

type Fast = BuildHasherDefault<IdHasher>;

/// Buffers kept for reuse between batches at most.
const FREE_BUFFERS_MAX: usize = 4;
/// Bytes at the end of every segment kept for its seal, an idle marker and a batch's marker.
const SEGMENT_SLACK: usize = 3 * COMMON_HEADER;

#[derive(Clone, Copy, Debug)]
struct Seg {
    base: u64,
    size: u32,
    /// End of staged records.
    write_end: u32,
    /// Messages whose current location is here (reserved ones included).
    live: u32,
    live_bytes: u64,
    /// Highest sequence number of a record that removed a message stored here; the segment
    /// may go only when that record is durable.
    last_kill: u64,
}

#[derive(Clone, Copy, Debug)]
struct Move {
    queue: QueueId,
    prio: u8,
    lookup: u64,
    old_seg: u64,
    new_seg: u64,
    new_off: u32,
    space: u32,
    seq: u64,
}

/// What replay needs of a record, detached from the disk's bytes.
#[derive(Clone, Copy)]
struct Replayed {
    seq: u64,
    kind: Kind,
    queue: QueueId,
    lookup: u64,
    meta: Option<MessageMeta>,
    payload_len: u32,
    space: u32,
}

struct Reserved {
    entry: Entry,
    ticket: Ticket,
}

/// Full batches a store keeps queued behind the one in flight when its disk cannot block
/// (its writes go to a shard's ring, [`Disk::may_block`]); one more full batch is refused with
/// [`StoreError::BatchFull`]. With 8 MiB batches that is 32 MiB staged at most, plus the
/// growing one. Batches still go to the disk one at a time, so recovery's torn tail is at
/// most one batch as before.
pub const QUEUED_BATCHES_MAX: usize = 4;

/// A full batch waiting for the one in flight (see [`QUEUED_BATCHES_MAX`]).
struct Queued {
    chunks: Vec<Chunk>,
    marker_at: Option<(usize, usize)>,
    /// `next_seq` when it was closed: every seq below is in it or before it.
    end: u64,
}

/// The durable queue store over a [`Disk`].
pub struct Store<D: Disk> {
    disk: D,
    cfg: StoreConfig,
    poisoned: Option<i32>,
    next_seq: u64,
    durable: u64,
    segs: VecDeque<Seg>,
    pending: Vec<Chunk>,
    pending_bytes: usize,
    inflight_end: Option<u64>,
    flush_wanted: bool,
    /// Where the staged batch's commit marker sits: (pending chunk, offset in its buffer).
    marker_at: Option<(usize, usize)>,
    /// Full batches behind the one in flight, oldest first (never more than
    /// [`QUEUED_BATCHES_MAX`]; only while the disk cannot block).
    queued: VecDeque<Queued>,
    free_bufs: Vec<Vec<u8>>,
    queues: HashMap<QueueId, QueueIndex, Fast>,
    quotas: HashMap<QueueId, QueueQuota, Fast>,
    reserved: HashMap<(QueueId, u64), Reserved, Fast>,
    express: ExpressArena,
    moves: VecDeque<Move>,
    compact_at: (u64, u32),
    messages: u64,
    bytes: u64,
    batches: u64,
}

fn seg_index(segs: &VecDeque<Seg>, base: u64) -> Option<usize> {
    segs.binary_search_by_key(&base, |s| s.base).ok()
}

impl<D: Disk> Store<D> {
    /// Open a store on `disk`, recovering what is there: verify every record, cut a torn tail,
    /// rebuild the index. Mid-segment damage fails with `Corrupt` unless `config.salvage`.
    pub fn open(disk: D, config: StoreConfig) -> Result<(Store<D>, RecoveryReport), StoreError> {
        Store::open_until(disk, config, &mut || false)
    }

    /// [`Store::open`], asking `stop` now and then during recovery (every segment, every 64 Ki
    /// records, every 8 MiB searched): `true` abandons it with `Interrupted`, nothing changed.
    pub fn open_until(
        disk: D,
        config: StoreConfig,
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<(Store<D>, RecoveryReport), StoreError> {
        assert!(config.segment_bytes % 8 == 0);
        assert!(
            record::message_space(config.message_bytes_max as usize) + COMMON_HEADER
                <= config.segment_bytes as usize
                && record::message_space(config.message_bytes_max as usize)
                    <= config.batch_bytes_max as usize
                && 2 * config.batch_bytes_max as usize
                    + 4 * COMMON_HEADER
                    + config.removal_reserve_bytes as usize
                    <= config.segment_bytes as usize,
            "a largest message must fit a segment and a batch"
        );
        let mut s = Store {
            disk,
            cfg: config,
            poisoned: None,
            next_seq: 1,
            durable: 1,
            segs: VecDeque::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            inflight_end: None,
            flush_wanted: false,
            marker_at: None,
            queued: VecDeque::new(),
            free_bufs: Vec::new(),
            queues: HashMap::default(),
            quotas: HashMap::default(),
            reserved: HashMap::default(),
            express: ExpressArena::default(),
            moves: VecDeque::new(),
            compact_at: (0, 0),
            messages: 0,
            bytes: 0,
            batches: 0,
        };
        let report = s.recover(stop)?;
        Ok((s, report))
    }

    /// Give the disk back (simulation: crash it and reopen).
    pub fn into_disk(self) -> D {
        self.disk
    }

    /// The disk (simulation: set faults).
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    /// Bytes staged for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Whether a commit batch is in flight.
    pub fn in_flight(&self) -> bool {
        self.inflight_end.is_some()
    }

    // ---- recovery ----

    /// Rebuild the index from the log. Each segment is walked by [`scan::scan_segment`], which
    /// tells a torn tail (cut: zeroed, as its batch was never acknowledged) from damage (a bad
    /// record in synced data, proven by a commit marker or a later segment after it). Damage
    /// stops start-up with `Corrupt` naming the segment, the offset and what follows, and
    /// nothing is written; with `salvage`, every valid record is kept and each damaged region
    /// gets a filler (or, at the end of a segment, a seal) so later starts read past it.
    fn recover(&mut self, stop: &mut dyn FnMut() -> bool) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let mut bases = self.disk.segments()?;
        if bases.is_empty() {
            self.disk.create_segment(1, self.cfg.segment_bytes)?;
            bases.push(1);
        }
        // A last segment without a single record whose predecessor is not sealed was created
        // for a roll whose batch never reached the disk: drop it, the predecessor is the tail.
        if bases.len() >= 2 {
            let last = *bases.last().expect("len >= 2");
            let prev = bases[bases.len() - 2];
            let empty = !matches!(record::decode(self.disk.read(last)), Ok(r) if r.seq >= last);
            if empty && !self.segment_sealed(prev) {
                self.disk.remove_segment(last)?;
                bases.pop();
            }
        }
        let mut prev_seq = 0u64;
        let n = bases.len();
        // The first damage: (segment, offset), and what verifies after it.
        let mut first_damage: Option<(u64, u64)> = None;
        let (mut records_after, mut bytes_after) = (0u64, 0u64);
        let mut patches: Vec<(u64, u64, [u8; COMMON_HEADER])> = Vec::new();
        let mut prev_sealed = true;
        for (i, &base) in bases.iter().enumerate() {
            if stop() {
                return Err(StoreError::Interrupted);
            }
            let next_base = bases.get(i + 1).copied();
            if i > 0 && prev_sealed && base != prev_seq + 1 {
                // A segment file is missing between two sealed ones. Salvage re-seals the
                // previous segment so the log continues here (its seal's seq is base - 1).
                first_damage.get_or_insert((base, 0));
                let prev = self.segs.back().expect("a previous segment");
                if prev.write_end as usize >= COMMON_HEADER && base > prev_seq + 1 {
                    patches.push((
                        prev.base,
                        (prev.write_end as usize - COMMON_HEADER) as u64,
                        record::control(base - 1, Kind::Seal, 0),
                    ));
                }
            }
            let size = self.disk.read(base).len() as u32;
            self.segs.push_back(Seg {
                base,
                size,
                write_end: 0,
                live: 0,
                live_bytes: 0,
                last_kill: 0,
            });
            report.segments += 1;
            let mut replayed = Vec::new();
            let damaged_before = first_damage.is_some();
            let scan = {
                let data = self.disk.read(base);
                scan::scan_segment(data, base, prev_seq, next_base, stop, &mut |off, r| {
                    replayed.push((
                        off,
                        Replayed {
                            seq: r.seq,
                            kind: r.kind,
                            queue: r.queue,
                            lookup: r.lookup,
                            meta: r.meta,
                            payload_len: r.payload.len() as u32,
                            space: r.space as u32,
                        },
                    ))
                })
                .map_err(|_| StoreError::Interrupted)?
            };
            report.crc_bytes += scan.crc_bytes;
            if let Some(found) = scan.old_format {
                return Err(StoreError::Format { found });
            }
            let first_hole_off = scan.holes.first().map(|h| h.offset);
            // A log that ends with a commit marker (idle or clean stop) continues on top of it,
            // as it would have before the restart (see `mark_idle`).
            let mut write_end = scan.end;
            if let Some(&(off, info)) = replayed.last() {
                if next_base.is_none()
                    && info.kind == Kind::Marker
                    && off + COMMON_HEADER == scan.end
                {
                    write_end = off;
                }
            }
            for (off, info) in replayed {
                if damaged_before || first_hole_off.is_some_and(|h| off > h) {
                    records_after += 1;
                    bytes_after += info.space as u64;
                }
                self.replay(base, off as u32, info);
                report.records += 1;
            }
            if let Some(h) = scan.holes.first() {
                first_damage.get_or_insert((base, h.offset as u64));
            }
            for h in &scan.holes {
                report.holes += 1;
                report.skipped_bytes += h.len as u64;
                tracing::warn!(
                    segment = %segment_file_name(base),
                    offset = h.offset,
                    bytes = h.len,
                    "store log damaged: a bad record in synced data"
                );
                match h.next_seq {
                    // A filler spanning the hole; its seq lies between its neighbours'.
                    Some(next) if h.len >= COMMON_HEADER && h.after_seq + 1 < next => {
                        patches.push((
                            base,
                            h.offset as u64,
                            record::control(h.after_seq + 1, Kind::Filler, h.len as u64),
                        ))
                    }
                    // The segment's end: a seal, so the log continues in the next segment.
                    None if h.len >= COMMON_HEADER
                        && next_base.is_some_and(|nb| nb - 1 > h.after_seq) =>
                    {
                        let nb = next_base.expect("checked");
                        patches.push((
                            base,
                            h.offset as u64,
                            record::control(nb - 1, Kind::Seal, 0),
                        ))
                    }
                    _ => {}
                }
            }
            prev_sealed = scan.sealed;
            prev_seq = scan.last_seq;
            self.segs.back_mut().expect("pushed").write_end = write_end as u32;
            if next_base.is_none() && (first_damage.is_none() || self.cfg.salvage) {
                // The tail: zero what a torn last batch left, so it is never read as records
                // once new ones are written before it. Only a batch can be torn.
                let window = self.cfg.batch_bytes_max as usize + 4 * COMMON_HEADER;
                let data = self.disk.read(base);
                let to = (scan.end + window).min(data.len());
                let (leftovers, crc) = scan::torn_leftovers(data, scan.end, to, prev_seq, base);
                report.crc_bytes += crc;
                if leftovers {
                    let last_nonzero = data[scan.end..to].iter().rposition(|&b| b != 0);
                    let len = last_nonzero.map_or(0, |l| l + 1);
                    report.cut_bytes = len as u64;
                    self.disk.zero(base, scan.end as u64, len as u64)?;
                }
            }
        }
        if let Some((segment, offset)) = first_damage {
            if !self.cfg.salvage {
                return Err(StoreError::Corrupt {
                    segment,
                    offset,
                    records_after,
                    bytes_after,
                });
            }
            for (base, off, rec) in &patches {
                self.disk.write_at(*base, *off, rec, true)?;
            }
            report.salvaged = true;
        }
        self.next_seq = prev_seq.max(bases[n - 1].saturating_sub(1)) + 1;
        self.durable = self.next_seq;
        report.messages = self.messages;
        Ok(report)
    }

    fn segment_sealed(&self, base: u64) -> bool {
        let data = self.disk.read(base);
        let mut off = 0usize;
        let mut prev = 0u64;
        while let Ok(r) = record::decode(&data[off..]) {
            if r.seq < base || r.seq <= prev {
                return false;
            }
            if r.kind == Kind::Seal {
                return true;
            }
            prev = r.seq;
            off += r.space;
        }
        false
    }

    fn replay(&mut self, base: u64, off: u32, rec: Replayed) {
        match rec.kind {
            Kind::Message => {
                let meta = rec.meta.expect("message records carry meta");
                let e = Entry {
                    lookup: rec.lookup,
                    seg: base,
                    off,
                    space: rec.space,
                    bytes: rec.payload_len,
                    expiry: meta.expiry_unix_s,
                    removed: false,
                };
                let quota = self.quota_of(rec.queue);
                let q = self
                    .queues
                    .entry(rec.queue)
                    .or_insert_with(|| QueueIndex::new(quota));
                let si = seg_index(&self.segs, base).expect("replaying a known segment");
                self.segs[si].live += 1;
                self.segs[si].live_bytes += e.space as u64;
                match q.insert(meta.priority as usize, e) {
                    Some(old) => {
                        // The same message copied forward: the later copy wins.
                        q.messages -= 1;
                        q.bytes -= old.bytes as u64;
                        if let Some(oi) = seg_index(&self.segs, old.seg) {
                            self.segs[oi].live -= 1;
                            self.segs[oi].live_bytes -= old.space as u64;
                        }
                    }
                    None => {
                        self.messages += 1;
                        self.bytes += e.bytes as u64;
                    }
                }
            }
            Kind::Remove => {
                let Some(q) = self.queues.get_mut(&rec.queue) else {
                    return;
                };
                if let Some((p, i)) = q.find(rec.lookup) {
                    let e = q.take(p, i);
                    self.forget(rec.queue, &e, rec.seq);
                }
            }
            Kind::Purge => {
                let Some(q) = self.queues.get_mut(&rec.queue) else {
                    return;
                };
                let mut gone = Vec::new();
                q.purge_below(rec.lookup, |e| gone.push(*e));
                for e in gone {
                    self.forget(rec.queue, &e, rec.seq);
                }
            }
            Kind::Seal | Kind::Marker | Kind::Filler => {}
        }
    }

    /// Account for a message leaving the store for good (removal record `kill_seq`).
    fn forget(&mut self, queue: QueueId, e: &Entry, kill_seq: u64) {
        let _ = queue;
        self.messages -= 1;
        self.bytes -= e.bytes as u64;
        if is_express(e.seg) {
            self.express.remove(e.seg);
        } else if let Some(si) = seg_index(&self.segs, e.seg) {
            let s = &mut self.segs[si];
            s.live -= 1;
            s.live_bytes -= e.space as u64;
            s.last_kill = s.last_kill.max(kill_seq);
        }
    }

    // ---- reading ----

    fn record_bytes(&self, e: &Entry) -> &[u8] {
        if is_express(e.seg) {
            return self.express.get(e.seg, e.off, e.space);
        }
        let data = self.disk.read(e.seg);
        &data[e.off as usize..e.off as usize + e.space as usize]
    }

    fn view(&self, queue: QueueId, e: &Entry) -> MessageRef<'_> {
        let (meta, bytes) = record::view_message(self.record_bytes(e));
        MessageRef {
            queue,
            lookup_id: LookupId(e.lookup),
            meta,
            bytes,
        }
    }

    fn visible(&self, e: &Entry) -> bool {
        is_express(e.seg) || e.lookup < self.durable
    }

    /// Position of the message `select` means, if visible.
    fn locate(&self, queue: QueueId, select: Select) -> Option<(usize, usize)> {
        let q = self.queues.get(&queue)?;
        let pos = match select {
            Select::Front => {
                for p in (0..8).rev() {
                    if let Some(i) = q.first(p) {
                        if self.visible(&q.prios[p][i]) {
                            return Some((p, i));
                        }
                    }
                }
                return None;
            }
            Select::Lookup(l) => q.find(l.0)?,
            Select::MessageId(id) => {
                // A scan in delivery order over visible messages. A hash index cost 17% of
                // append time at 3 M messages (perf/store.md); receive by message id is rare.
                for p in (0..8).rev() {
                    for (i, e) in q.prios[p].iter().enumerate() {
                        if e.removed {
                            continue;
                        }
                        if !self.visible(e) {
                            break;
                        }
                        if record::view_message(self.record_bytes(e)).0.message_id == id {
                            return Some((p, i));
                        }
                    }
                }
                return None;
            }
        };
        let e = &q.prios[pos.0][pos.1];
        if !self.visible(e) {
            return None;
        }
        // FIFO within a priority: a message is delivered only when all earlier ones of its
        // priority are visible too (they are, unless classes are mixed in one queue).
        Some(pos)
    }

    fn quota_of(&self, queue: QueueId) -> QueueQuota {
        self.quotas
            .get(&queue)
            .copied()
            .unwrap_or(self.cfg.queue_quota_default)
    }

    // ---- staging ----

    fn check_writable(&self) -> Result<(), StoreError> {
        match self.poisoned {
            Some(errno) => Err(StoreError::Poisoned { errno }),
            None => Ok(()),
        }
    }

    /// Make room for `space` bytes in the active segment, rolling to a new one if needed. The
    /// last bytes of a segment stay free for its seal, an idle marker and a batch's marker.
    fn room(&mut self, space: usize, reserve: usize) -> Result<(), StoreError> {
        let s = *self.segs.back().expect("at least one segment");
        if s.write_end as usize + space + reserve + SEGMENT_SLACK <= s.size as usize {
            return Ok(());
        }
        let seal_seq = self.next_seq;
        let new_base = seal_seq + 1;
        self.disk.create_segment(new_base, self.cfg.segment_bytes)?;
        self.stage_control(Kind::Seal, QueueId(0), 0);
        debug_assert_eq!(self.next_seq, new_base);
        self.segs.push_back(Seg {
            base: new_base,
            size: self.cfg.segment_bytes,
            write_end: 0,
            live: 0,
            live_bytes: 0,
            last_kill: 0,
        });
        Ok(())
    }

    /// The buffer staging bytes at the active segment's write end.
    fn stage_buf(&mut self) -> &mut Vec<u8> {
        let s = *self.segs.back().expect("at least one segment");
        let contiguous = self.pending.last().is_some_and(|c| {
            c.segment == s.base && c.offset as usize + c.buf.len() == s.write_end as usize
        });
        if !contiguous {
            let buf = self.free_bufs.pop().unwrap_or_default();
            self.pending.push(Chunk {
                segment: s.base,
                offset: s.write_end,
                buf,
            });
        }
        &mut self.pending.last_mut().expect("pushed").buf
    }

    fn stage_control(&mut self, kind: Kind, queue: QueueId, lookup: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let buf = self.stage_buf();
        record::encode_control(buf, seq, kind, queue, lookup);
        let s = self.segs.back_mut().expect("at least one segment");
        s.write_end += COMMON_HEADER as u32;
        self.pending_bytes += COMMON_HEADER;
        seq
    }

    /// Stage a control record, making room first.
    fn stage_removal(
        &mut self,
        kind: Kind,
        queue: QueueId,
        lookup: u64,
    ) -> Result<u64, StoreError> {
        self.check_writable()?;
        self.begin_record(COMMON_HEADER, 0, true)?;
        Ok(self.stage_control(kind, queue, lookup))
    }

    /// Before staging a record of `space` bytes: keep the batch within `batch_bytes_max` (a
    /// full batch is submitted, after waiting for the one in flight, unless `may_submit` is
    /// false: then `BatchFull`), make room in the segment, and open the batch with its commit
    /// marker. Staged memory stays below two batches: the one in flight and this one.
    fn begin_record(
        &mut self,
        space: usize,
        reserve: usize,
        may_submit: bool,
    ) -> Result<(), StoreError> {
        if self.pending_bytes > 0 && self.pending_bytes + space > self.cfg.batch_bytes_max as usize
        {
            if !may_submit {
                return Err(StoreError::BatchFull);
            }
            if self.disk.may_block() {
                // Queued batches first (left from a time the disk could not block), then
                // this one.
                while !self.pending.is_empty() {
                    self.submit_now()?;
                }
            } else if self.inflight_end.is_none() && self.queued.is_empty() {
                self.submit()?;
            } else if self.queued.len() < QUEUED_BATCHES_MAX {
                // The loop must not wait for the disk: close this batch and start the next.
                self.queued.push_back(Queued {
                    chunks: std::mem::take(&mut self.pending),
                    marker_at: self.marker_at.take(),
                    end: self.next_seq,
                });
                self.pending_bytes = 0;
            } else {
                return Err(StoreError::BatchFull);
            }
        }
        let marker = if self.marker_at.is_none() {
            COMMON_HEADER
        } else {
            0
        };
        self.room(space + marker, reserve)?;
        if self.marker_at.is_none() {
            // D is patched in at submit, when the previous batch is durable.
            self.stage_control(Kind::Marker, QueueId(0), 0);
            let ci = self.pending.len() - 1;
            let at = self.pending[ci].buf.len() - COMMON_HEADER;
            self.marker_at = Some((ci, at));
        }
        Ok(())
    }

    /// Submit the next batch (queued, else staged) now, waiting first for the one in flight.
    fn submit_now(&mut self) -> Result<(), StoreError> {
        while self.inflight_end.is_some() {
            match self.disk.poll(true) {
                Ok(Some(chunks)) => self.completed(chunks),
                Ok(None) => {}
                // Its completions come through the shard's ring: not a failure of the log.
                Err(StoreError::NotDurable) => return Err(StoreError::NotDurable),
                Err(e) => return Err(self.poison(e)),
            }
        }
        self.submit()
    }

    /// After a batch completed with nothing staged: write a commit marker after it, so recovery
    /// can tell damage in this last batch from a torn tail. It gets no sync of its own (it
    /// states only what is durable already) and the write end does not move past it: the next
    /// batch starts on top of it with its own marker (or a seal) stating the same. Were the
    /// next batch written after it instead, a crash could keep that batch's marker and lose
    /// this unsynced one, and the lost one would look like damage to synced data. Skipped if
    /// the disk cannot write outside a batch.
    fn mark_idle(&mut self) {
        let s = *self.segs.back().expect("at least one segment");
        if s.write_end as usize + COMMON_HEADER > s.size as usize {
            return;
        }
        let rec = record::control(self.next_seq, Kind::Marker, self.durable);
        if self
            .disk
            .write_at(s.base, s.write_end as u64, &rec, false)
            .is_ok()
        {
            self.next_seq += 1;
        }
    }

    /// A clean stop: commit what is staged, wait for it, and write a synced commit marker at
    /// the end of the log, so the last batch is confirmed. The store stays usable.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.check_writable()?;
        while !self.pending.is_empty() || !self.queued.is_empty() {
            self.submit_now()?;
        }
        self.submit_now()?;
        let s = *self.segs.back().expect("at least one segment");
        if s.write_end as usize + COMMON_HEADER > s.size as usize {
            return Ok(());
        }
        // Like the idle marker, at the write end (the next batch, if any, starts on top of it).
        let rec = record::control(self.next_seq, Kind::Marker, self.durable);
        match self.disk.write_at(s.base, s.write_end as u64, &rec, true) {
            Ok(()) => {
                self.next_seq += 1;
                Ok(())
            }
            Err(StoreError::Io { errno }) if errno == libc::EOPNOTSUPP => Ok(()),
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Stage a message record; returns (seq, segment, offset, space).
    fn stage_message(
        &mut self,
        queue: QueueId,
        lookup: Option<u64>,
        meta: &MessageMeta,
        bytes: &[u8],
    ) -> Result<(u64, u64, u32, u32), StoreError> {
        let space = record::message_space(bytes.len());
        self.begin_record(
            space,
            self.cfg.removal_reserve_bytes as usize,
            lookup.is_none(),
        )?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let lookup = lookup.unwrap_or(seq);
        let buf = self.stage_buf();
        record::encode_message(buf, seq, queue, LookupId(lookup), meta, bytes);
        let s = self.segs.back_mut().expect("at least one segment");
        let off = s.write_end;
        s.write_end += space as u32;
        s.live += 1;
        s.live_bytes += space as u64;
        let base = s.base;
        self.pending_bytes += space;
        Ok((seq, base, off, space as u32))
    }

    /// Submit the oldest queued batch, else the staged one (nothing may be in flight).
    fn submit(&mut self) -> Result<(), StoreError> {
        let (mut chunks, marker_at, end) = if let Some(q) = self.queued.pop_front() {
            (q.chunks, q.marker_at, q.end)
        } else {
            if self.pending.is_empty() {
                return Ok(());
            }
            self.pending_bytes = 0;
            self.flush_wanted = false;
            (
                std::mem::take(&mut self.pending),
                self.marker_at.take(),
                self.next_seq,
            )
        };
        if let Some((ci, at)) = marker_at {
            // Nothing is in flight: every seq below `durable` is on disk.
            record::patch_control(&mut chunks[ci].buf[at..], self.durable);
        }
        self.inflight_end = Some(end);
        if let Err(e) = self.disk.submit(chunks) {
            return Err(self.poison(e));
        }
        Ok(())
    }

    fn poison(&mut self, e: StoreError) -> StoreError {
        let errno = match e {
            StoreError::Poisoned { errno } | StoreError::Io { errno } => errno,
            _ => libc::EIO,
        };
        if self.poisoned.is_none() {
            tracing::error!(
                errno,
                "store log write/fsync failed ({e}); the log is poisoned and refuses all \
                 writes until restart"
            );
        }
        self.poisoned = Some(errno);
        StoreError::Poisoned { errno }
    }

    fn completed(&mut self, chunks: Vec<Chunk>) {
        self.durable = self.inflight_end.take().expect("a batch was in flight");
        self.batches += 1;
        for mut c in chunks {
            if self.free_bufs.len() < FREE_BUFFERS_MAX {
                c.buf.clear();
                self.free_bufs.push(c.buf);
            }
        }
        while let Some(m) = self.moves.front().copied() {
            if m.seq >= self.durable {
                break;
            }
            self.moves.pop_front();
            self.apply_move(m);
        }
    }

    fn apply_move(&mut self, m: Move) {
        let moved = match self.queues.get_mut(&m.queue) {
            Some(q) => {
                let d = &mut q.prios[m.prio as usize];
                match d.binary_search_by_key(&m.lookup, |e| e.lookup) {
                    Ok(i) if !d[i].removed && d[i].seg == m.old_seg => {
                        d[i].seg = m.new_seg;
                        d[i].off = m.new_off;
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        };
        let (from, to) = if moved {
            (m.old_seg, m.new_seg)
        } else {
            (m.new_seg, m.old_seg)
        };
        let to_kill = seg_index(&self.segs, to)
            .map(|i| self.segs[i].last_kill)
            .unwrap_or(0);
        if let Some(i) = seg_index(&self.segs, from) {
            let s = &mut self.segs[i];
            s.live -= 1;
            s.live_bytes -= m.space as u64;
            s.last_kill = s.last_kill.max(m.seq).max(to_kill);
        }
    }

    fn reclaim(&mut self) -> Result<u32, StoreError> {
        let mut n = 0;
        // The head's seal is durable before it goes, so no write in flight targets it.
        while self.segs.len() > 1 {
            let h = self.segs[0];
            let next_base = self.segs[1].base;
            if h.live != 0 || h.last_kill >= self.durable || next_base > self.durable {
                break;
            }
            self.disk.remove_segment(h.base)?;
            self.segs.pop_front();
            n += 1;
        }
        Ok(n)
    }

    fn compact(&mut self) -> Result<u32, StoreError> {
        if self.segs.len() < self.cfg.compact_segments_min as usize || !self.moves.is_empty() {
            return Ok(0);
        }
        let h = self.segs[0];
        if h.live == 0 || h.live_bytes * 100 > h.size as u64 * self.cfg.compact_live_percent as u64
        {
            return Ok(0);
        }
        let mut off = if self.compact_at.0 == h.base {
            self.compact_at.1 as usize
        } else {
            0
        };
        let mut copied = 0u32;
        let mut budget = self.cfg.compact_bytes_per_call as usize;
        while off < h.write_end as usize && budget > 0 {
            let data = self.disk.read(h.base);
            let Ok(rec) = record::decode(&data[off..]) else {
                break;
            };
            let space = rec.space;
            if rec.kind == Kind::Message {
                let meta = rec.meta.expect("message");
                let live = self.queues.get(&rec.queue).and_then(|q| {
                    let d = &q.prios[meta.priority as usize];
                    let i = d.binary_search_by_key(&rec.lookup, |e| e.lookup).ok()?;
                    let e = d[i];
                    (!e.removed && e.seg == h.base && e.off as usize == off).then_some(e)
                });
                if let Some(e) = live {
                    let payload = rec.payload.to_vec();
                    let (queue, lookup) = (rec.queue, e.lookup);
                    let (seq, new_seg, new_off, space2) =
                        match self.stage_message(queue, Some(lookup), &meta, &payload) {
                            Ok(x) => x,
                            // Compaction is optional work: a full batch waits for the next
                            // call, and a full disk must not fail the caller's commit (that
                            // wedged a shard's acks after disk-full until a restart).
                            Err(StoreError::BatchFull) | Err(StoreError::DiskFull) => break,
                            Err(e) => return Err(e),
                        };
                    self.moves.push_back(Move {
                        queue,
                        prio: meta.priority,
                        lookup,
                        old_seg: h.base,
                        new_seg,
                        new_off,
                        space: space2,
                        seq,
                    });
                    copied += 1;
                    budget = budget.saturating_sub(space2 as usize);
                }
            }
            off += space;
        }
        self.compact_at = (h.base, off as u32);
        Ok(copied)
    }
}

impl<D: Disk> QueueStore for Store<D> {
    fn append(
        &mut self,
        queue: QueueId,
        meta: &MessageMeta,
        bytes: &[u8],
    ) -> Result<Appended, StoreError> {
        if meta.priority > 7 {
            return Err(StoreError::BadPriority);
        }
        if bytes.len() > self.cfg.message_bytes_max as usize {
            return Err(StoreError::TooLarge {
                bytes: bytes.len() as u32,
            });
        }
        let n = bytes.len() as u64;
        if self.messages + 1 > self.cfg.machine_messages_max {
            return Err(StoreError::Quota {
                kind: QuotaKind::MachineMessages,
                used: self.messages,
                limit: self.cfg.machine_messages_max,
            });
        }
        if self.bytes + n > self.cfg.machine_bytes_max {
            return Err(StoreError::Quota {
                kind: QuotaKind::MachineBytes,
                used: self.bytes,
                limit: self.cfg.machine_bytes_max,
            });
        }
        let (qm, qb, quota) = match self.queues.get(&queue) {
            Some(q) => (q.messages, q.bytes, q.quota),
            None => {
                if self.queues.len() >= self.cfg.queues_max as usize {
                    return Err(StoreError::TooManyQueues);
                }
                (0, 0, self.quota_of(queue))
            }
        };
        if qm + 1 > quota.messages_max {
            return Err(StoreError::Quota {
                kind: QuotaKind::QueueMessages,
                used: qm,
                limit: quota.messages_max,
            });
        }
        if qb + n > quota.bytes_max {
            return Err(StoreError::Quota {
                kind: QuotaKind::QueueBytes,
                used: qb,
                limit: quota.bytes_max,
            });
        }
        let (lookup, ticket, e) = if meta.class == Class::Express {
            let seq = self.next_seq;
            self.next_seq += 1;
            let space = record::message_space(bytes.len());
            let (seg, off) = self.express.insert(space, |buf| {
                record::encode_message(buf, seq, queue, LookupId(seq), meta, bytes);
            });
            let e = Entry {
                lookup: seq,
                seg,
                off,
                space: space as u32,
                bytes: bytes.len() as u32,
                expiry: meta.expiry_unix_s,
                removed: false,
            };
            (seq, Ticket::IMMEDIATE, e)
        } else {
            self.check_writable()?;
            let (seq, seg, off, space) = self.stage_message(queue, None, meta, bytes)?;
            let e = Entry {
                lookup: seq,
                seg,
                off,
                space,
                bytes: bytes.len() as u32,
                expiry: meta.expiry_unix_s,
                removed: false,
            };
            (seq, Ticket(seq), e)
        };
        let q = self
            .queues
            .entry(queue)
            .or_insert_with(|| QueueIndex::new(quota));
        q.insert(meta.priority as usize, e);
        self.messages += 1;
        self.bytes += n;
        Ok(Appended {
            ticket,
            lookup_id: LookupId(lookup),
        })
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.check_writable()?;
        if self.inflight_end.is_none() {
            self.submit()?;
        }
        if self.inflight_end.is_some() {
            self.flush_wanted = !self.pending.is_empty();
        }
        Ok(())
    }

    fn poll_durable(&mut self, wait: bool) -> Result<Ticket, StoreError> {
        self.check_writable()?;
        while self.inflight_end.is_some() {
            match self.disk.poll(wait) {
                Ok(Some(chunks)) => {
                    self.completed(chunks);
                    if self.flush_wanted || !self.queued.is_empty() {
                        self.submit()?;
                    } else if self.pending.is_empty() {
                        self.mark_idle();
                    }
                    if !wait {
                        break;
                    }
                }
                Ok(None) => break,
                // Its completions come through the shard's ring: not a failure of the log.
                Err(StoreError::NotDurable) => return Err(StoreError::NotDurable),
                Err(e) => return Err(self.poison(e)),
            }
            if wait {
                break;
            }
        }
        Ok(Ticket(self.durable))
    }

    fn is_durable(&self, ticket: Ticket) -> bool {
        ticket.0 < self.durable
    }

    fn peek(&self, queue: QueueId, select: Select) -> Option<MessageRef<'_>> {
        let (p, i) = self.locate(queue, select)?;
        let e = self.queues.get(&queue)?.prios[p][i];
        Some(self.view(queue, &e))
    }

    fn cursor_next(&self, cursor: &mut Cursor) -> Option<MessageRef<'_>> {
        let q = self.queues.get(&cursor.queue)?;
        let (start_prio, after) = match cursor.last {
            None => (7usize, None),
            Some((p, l)) => (p as usize, Some(l.0)),
        };
        for p in (0..=start_prio).rev() {
            let d = &q.prios[p];
            let from = match after {
                Some(l) if p == start_prio => d.partition_point(|e| e.lookup <= l),
                _ => 0,
            };
            for e in d.range_from(from) {
                if e.removed {
                    continue;
                }
                if !self.visible(e) {
                    break;
                }
                cursor.last = Some((p as u8, LookupId(e.lookup)));
                return Some(self.view(cursor.queue, e));
            }
        }
        None
    }

    fn receive(
        &mut self,
        queue: QueueId,
        select: Select,
    ) -> Result<Option<Reservation>, StoreError> {
        let Some((p, i)) = self.locate(queue, select) else {
            return Ok(None);
        };
        let e = self.queues[&queue].prios[p][i];
        let ticket = if is_express(e.seg) {
            Ticket::IMMEDIATE
        } else {
            Ticket(self.stage_removal(Kind::Remove, queue, e.lookup)?)
        };
        let q = self.queues.get_mut(&queue).expect("located");
        q.take(p, i);
        if let Some(si) = seg_index(&self.segs, e.seg) {
            let s = &mut self.segs[si];
            s.last_kill = s.last_kill.max(ticket.0);
        }
        self.reserved
            .insert((queue, e.lookup), Reserved { entry: e, ticket });
        Ok(Some(Reservation {
            ticket,
            queue,
            lookup_id: LookupId(e.lookup),
        }))
    }

    fn reserved(&self, r: &Reservation) -> Result<MessageRef<'_>, StoreError> {
        let res = self
            .reserved
            .get(&(r.queue, r.lookup_id.0))
            .ok_or(StoreError::NotFound)?;
        if !self.is_durable(res.ticket) {
            return Err(StoreError::NotDurable);
        }
        Ok(self.view(r.queue, &res.entry))
    }

    fn release(&mut self, r: Reservation) -> Result<(), StoreError> {
        let key = (r.queue, r.lookup_id.0);
        let res = self.reserved.get(&key).ok_or(StoreError::NotFound)?;
        if !self.is_durable(res.ticket) {
            return Err(StoreError::NotDurable);
        }
        let res = self.reserved.remove(&key).expect("checked");
        let e = res.entry;
        self.messages -= 1;
        self.bytes -= e.bytes as u64;
        if is_express(e.seg) {
            self.express.remove(e.seg);
        } else if let Some(si) = seg_index(&self.segs, e.seg) {
            let s = &mut self.segs[si];
            s.live -= 1;
            s.live_bytes -= e.space as u64;
        }
        Ok(())
    }

    fn purge(&mut self, queue: QueueId) -> Result<Ticket, StoreError> {
        let Some(q) = self.queues.get(&queue) else {
            return Ok(Ticket::IMMEDIATE);
        };
        if q.is_empty() {
            return Ok(Ticket::IMMEDIATE);
        }
        let seq = self.stage_removal(Kind::Purge, queue, 0)?;
        // The record says "below seq": patch the lookup field now that seq is known.
        let c = self.pending.last_mut().expect("just staged");
        let at = c.buf.len() - COMMON_HEADER;
        record::patch_control(&mut c.buf[at..], seq);
        let mut gone = Vec::new();
        if let Some(q) = self.queues.get_mut(&queue) {
            q.purge_below(seq, |e| gone.push(*e));
        }
        for e in gone {
            self.forget(queue, &e, seq);
        }
        Ok(Ticket(seq))
    }

    fn delete_queue(&mut self, queue: QueueId) -> Result<Ticket, StoreError> {
        let t = self.purge(queue)?;
        self.queues.remove(&queue);
        self.quotas.remove(&queue);
        Ok(t)
    }

    fn set_queue_quota(&mut self, queue: QueueId, quota: QueueQuota) {
        self.quotas.insert(queue, quota);
        if let Some(q) = self.queues.get_mut(&queue) {
            q.quota = quota;
        }
    }

    fn expired(&self, now_unix_s: u32, max: usize, out: &mut Vec<(QueueId, LookupId)>) {
        // Each queue keeps its expiring messages ordered by expiry: this costs the number of
        // queues plus what expired, not a walk of every message.
        let mut n = 0;
        for (&qid, q) in &self.queues {
            for lookup in q.expired(now_unix_s) {
                if n >= max {
                    return;
                }
                out.push((qid, LookupId(lookup)));
                n += 1;
            }
        }
    }

    fn queue_len(&self, queue: QueueId) -> (u64, u64) {
        self.queues
            .get(&queue)
            .map(|q| (q.messages, q.bytes))
            .unwrap_or((0, 0))
    }

    fn maintain(&mut self) -> Result<Maintenance, StoreError> {
        self.check_writable()?;
        let segments_reclaimed = self.reclaim()?;
        let messages_copied = self.compact()?;
        Ok(Maintenance {
            segments_reclaimed,
            messages_copied,
        })
    }

    fn set_notify(&mut self, fd: std::os::fd::RawFd) -> Result<(), StoreError> {
        self.disk.set_notify(fd)
    }

    fn stage_on_shard(&mut self, on: bool) -> Result<bool, StoreError> {
        self.disk.stage_on_shard(on)
    }

    fn take_file_ops(&mut self, out: &mut Vec<crate::engine::app::FileOp>) {
        self.disk.take_ops(out)
    }

    fn file_complete(&mut self, token: u64, result: i32) {
        self.disk.complete(token, result)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            messages: self.messages,
            bytes: self.bytes,
            segments: self.segs.len() as u32,
            pending_bytes: self.pending_bytes as u64,
            durable: Ticket(self.durable),
            batches: self.batches,
        }
    }
}
