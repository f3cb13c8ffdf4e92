//! An in-memory [`Disk`] for simulation: the store's real logic over a simulated disk that keeps
//! a "page cache" view and a "platter" view, tears unsynced writes and loses them on `crash`.
//!
//! It owns the fault model (drawn from one seed); it must not know about records.

use super::{Chunk, Disk, Store, StoreConfig, StoreError};
use std::collections::BTreeMap;

/// The store over a simulated disk.
pub type SimStore = Store<SimDisk>;

/// Sector size of the tearing model: each unsynced sector independently survives a crash or
/// not, and the last surviving one may be cut short.
pub const SECTOR: usize = 512;

#[derive(Clone)]
struct SimSegment {
    cache: Vec<u8>,
    platter: Vec<u8>,
}

/// Fault switches, settable between operations.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// The next sync fails with this errno (and the log must poison).
    pub fail_next_sync: Option<i32>,
    /// `create_segment` fails with `DiskFull`.
    pub disk_full: bool,
    /// Percent chance that a non-waiting `poll` finds the batch complete (models latency).
    pub complete_percent: u32,
}

/// A simulated disk.
pub struct SimDisk {
    rng: u64,
    segs: BTreeMap<u64, SimSegment>,
    inflight: Option<Vec<Chunk>>,
    unsynced: Vec<(u64, usize, usize)>,
    /// Fault switches.
    pub faults: SimFaults,
}

impl SimDisk {
    /// An empty disk whose faults are drawn from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            segs: BTreeMap::new(),
            inflight: None,
            unsynced: Vec::new(),
            faults: SimFaults {
                complete_percent: 50,
                ..SimFaults::default()
            },
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Power loss: every unsynced sector survives or not at random (the last survivor may be
    /// torn mid-sector); the page cache is lost. The in-flight batch never completes.
    pub fn crash(&mut self) {
        // Chunks of the in-flight batch are written in order, each after the previous chunk's
        // sync (io_uring links): some prefix of them may have completed.
        if let Some(chunks) = self.inflight.take() {
            let k = (self.next() % chunks.len() as u64) as usize;
            for i in 1..=k {
                self.sync_segment(chunks[i - 1].segment);
                self.write_cache(&chunks[i]);
            }
        }
        let unsynced = std::mem::take(&mut self.unsynced);
        for (base, off, len) in unsynced {
            let mut s = off;
            while s < off + len {
                let e = ((s / SECTOR + 1) * SECTOR).min(off + len);
                let roll = self.next() % 4;
                let seg = self
                    .segs
                    .get_mut(&base)
                    .expect("unsynced write to a live segment");
                match roll {
                    0 | 1 => seg.platter[s..e].copy_from_slice(&seg.cache[s..e]),
                    2 => {
                        let cut = s + (self.rng as usize % (e - s));
                        seg.platter[s..cut].copy_from_slice(&seg.cache[s..cut]);
                    }
                    _ => {}
                }
                s = e;
            }
        }
        for seg in self.segs.values_mut() {
            seg.cache.clone_from(&seg.platter);
        }
        self.inflight = None;
    }

    fn write_cache(&mut self, c: &Chunk) {
        let seg = self.segs.get_mut(&c.segment).expect("segment of a write");
        let o = c.offset as usize;
        seg.cache[o..o + c.buf.len()].copy_from_slice(&c.buf);
        self.unsynced.push((c.segment, o, c.buf.len()));
    }

    fn sync_segment(&mut self, base: u64) {
        let seg = self.segs.get_mut(&base).expect("segment of a sync");
        seg.platter.clone_from(&seg.cache);
        self.unsynced.retain(|u| u.0 != base);
    }

    /// Flip one bit of a segment on the platter and in the cache (media damage).
    pub fn flip_bit(&mut self, base: u64, offset: usize, bit: u8) {
        if let Some(s) = self.segs.get_mut(&base) {
            s.platter[offset] ^= 1 << (bit & 7);
            s.cache[offset] ^= 1 << (bit & 7);
        }
    }

    /// Zero a segment from `offset` to its end on the platter and in the cache (truncation).
    pub fn truncate(&mut self, base: u64, offset: usize) {
        if let Some(s) = self.segs.get_mut(&base) {
            let o = offset.min(s.platter.len());
            s.platter[o..].fill(0);
            s.cache[o..].fill(0);
        }
    }

    /// Segment bases present.
    pub fn bases(&self) -> Vec<u64> {
        self.segs.keys().copied().collect()
    }
}

impl Disk for SimDisk {
    fn segments(&mut self) -> Result<Vec<u64>, StoreError> {
        Ok(self.bases())
    }

    fn create_segment(&mut self, base: u64, bytes: u32) -> Result<(), StoreError> {
        if self.faults.disk_full {
            return Err(StoreError::DiskFull);
        }
        let z = vec![0u8; bytes as usize];
        self.segs.insert(
            base,
            SimSegment {
                cache: z.clone(),
                platter: z,
            },
        );
        Ok(())
    }

    fn remove_segment(&mut self, base: u64) -> Result<(), StoreError> {
        self.segs.remove(&base);
        self.unsynced.retain(|u| u.0 != base);
        Ok(())
    }

    fn read(&self, base: u64) -> &[u8] {
        self.segs.get(&base).map(|s| &s.cache[..]).unwrap_or(&[])
    }

    fn submit(&mut self, chunks: Vec<Chunk>) -> Result<(), StoreError> {
        assert!(self.inflight.is_none(), "one batch in flight at a time");
        if chunks.iter().any(|c| !self.segs.contains_key(&c.segment)) {
            return Err(StoreError::Io {
                errno: libc::ENOENT,
            });
        }
        // Only the first chunk is written now; each later one after the previous one's sync.
        if let Some(c) = chunks.first() {
            self.write_cache(c);
        }
        self.inflight = Some(chunks);
        Ok(())
    }

    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Chunk>>, StoreError> {
        if self.inflight.is_none() {
            return Ok(None);
        }
        if !wait && self.next() % 100 >= self.faults.complete_percent as u64 {
            return Ok(None);
        }
        let chunks = self.inflight.take().expect("checked");
        if let Some(errno) = self.faults.fail_next_sync.take() {
            // The kernel dropped the dirty pages: what reached the platter is unknown.
            return Err(StoreError::Poisoned { errno });
        }
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                self.write_cache(c);
            }
            self.sync_segment(c.segment);
        }
        Ok(Some(chunks))
    }

    fn zero(&mut self, base: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        if let Some(s) = self.segs.get_mut(&base) {
            let o = offset as usize;
            let e = (o + len as usize).min(s.platter.len());
            s.platter[o..e].fill(0);
            s.cache[o..e].fill(0);
        }
        Ok(())
    }

    fn write_at(
        &mut self,
        base: u64,
        offset: u64,
        bytes: &[u8],
        sync: bool,
    ) -> Result<(), StoreError> {
        assert!(
            self.inflight.is_none(),
            "write_at while a batch is in flight"
        );
        if !self.segs.contains_key(&base) {
            return Err(StoreError::Io {
                errno: libc::ENOENT,
            });
        }
        self.write_cache(&Chunk {
            segment: base,
            offset: offset as u32,
            buf: bytes.to_vec(),
        });
        if sync {
            self.sync_segment(base);
        }
        Ok(())
    }
}

impl Store<SimDisk> {
    /// Simulate power loss and restart: unsynced data is lost or torn, then recovery runs.
    pub fn crash_and_recover(
        self,
        config: StoreConfig,
    ) -> Result<(SimStore, super::RecoveryReport), StoreError> {
        let mut disk = self.into_disk();
        disk.crash();
        Store::open(disk, config)
    }
}
