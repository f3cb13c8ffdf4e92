//! The store's IO boundary: segment files written through io_uring and read through memmap2.
//!
//! It owns files, mappings and in-flight buffers; it must not interpret records. This is the only
//! part of `store/` with `unsafe` (the mappings and the ring writes).

use super::{segment_file_name, StoreError};
use crate::engine::app::{FileOp, FileOpKind};
use crate::engine::uring::{
    classify_file_errno, Completion, FileErrnoDecision, OpKind, Ring, UserData, RING_ENTRIES,
};
use memmap2::{Mmap, MmapOptions};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes staged for one segment: written at `offset`, then that segment is data-synced.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The segment's base sequence number.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u32,
    /// The bytes; owned by the disk while the batch is in flight, handed back for reuse.
    pub buf: Vec<u8>,
}

/// What the store needs from storage. One batch is in flight at a time.
pub trait Disk: Sync {
    /// Base sequence numbers of the segments present, ascending.
    fn segments(&mut self) -> Result<Vec<u64>, StoreError>;
    /// Create (preallocate) segment `base` of `bytes`; its directory entry is durable on return.
    /// `StoreError::DiskFull` leaves nothing behind.
    fn create_segment(&mut self, base: u64, bytes: u32) -> Result<(), StoreError>;
    /// Remove a segment (durably; the file may be kept for reuse under a non-segment name).
    fn remove_segment(&mut self, base: u64) -> Result<(), StoreError>;
    /// The whole segment as the page cache holds it. Bytes of the in-flight batch must not be
    /// relied on until it completes.
    fn read(&self, base: u64) -> &[u8];
    /// Start writing `chunks` in order, each followed by an fdatasync of its segment; a chunk
    /// is written only after the previous chunk's sync completed.
    fn submit(&mut self, chunks: Vec<Chunk>) -> Result<(), StoreError>;
    /// If the in-flight batch is durable, hand its chunks back. Blocks for it when `wait`,
    /// except for a batch on a shard's ring ([`Disk::stage_on_shard`]): then
    /// `StoreError::NotDurable` (not a failure: its completions come with the shard's turns).
    /// Any other error means the batch's state on disk is unknown: the caller must poison the
    /// log.
    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Chunk>>, StoreError>;
    /// Signal eventfd `fd` when a submitted batch completes, so the thread that polls this disk
    /// learns it without blocking. Disks without completions of their own (in memory,
    /// simulated) ignore it.
    fn set_notify(&mut self, fd: std::os::fd::RawFd) -> Result<(), StoreError> {
        let _ = fd;
        Ok(())
    }
    /// Hand the writes and fdatasyncs of batches to the thread's own ring (`on`): from now on
    /// [`Disk::submit`] stages them for [`Disk::take_ops`] and [`Disk::complete`] reports
    /// their results; with `!on` the disk issues them itself again (its blocking driver). A
    /// batch handed out and not complete when `!on` comes can never be waited for: its buffers
    /// are leaked (the kernel may still read them) and the next poll poisons the log. Returns
    /// whether the disk now stages; disks without rings of their own ignore it (false).
    fn stage_on_shard(&mut self, on: bool) -> Result<bool, StoreError> {
        let _ = on;
        Ok(false)
    }
    /// Whether [`Disk::poll`] with `wait` may block (false while batches go to the shard's
    /// ring: the store then queues a full batch behind the one in flight instead of waiting).
    fn may_block(&self) -> bool {
        true
    }
    /// Move the staged operations of the batch in flight into `out` (see
    /// [`Disk::stage_on_shard`]); their tokens come back through [`Disk::complete`]. Each
    /// buffer stays owned by the disk, neither moved nor freed, until its completion.
    fn take_ops(&mut self, out: &mut Vec<FileOp>) {
        let _ = out;
    }
    /// The result of an operation handed out by [`Disk::take_ops`] (`>= 0` or `-errno`).
    fn complete(&mut self, token: u64, result: i32) {
        let _ = (token, result);
    }
    /// Durably overwrite a range with zeros (recovery cuts the torn tail with this).
    fn zero(&mut self, base: u64, offset: u64, len: u64) -> Result<(), StoreError>;
    /// Write `bytes` at `offset` of segment `base` now, while no batch is in flight, and
    /// fdatasync it if `sync`. Used for the idle commit marker (unsynced: it only states what is
    /// already durable, so it needs no sync of its own) and by salvage (synced). A disk that
    /// cannot (the benches' in-memory one) returns an error and the store does without.
    fn write_at(
        &mut self,
        base: u64,
        offset: u64,
        bytes: &[u8],
        sync: bool,
    ) -> Result<(), StoreError> {
        let _ = (base, offset, bytes, sync);
        Err(StoreError::Io {
            errno: libc::EOPNOTSUPP,
        })
    }
}

/// Removed segment files kept for reuse at most. A reused file has every block already
/// written, so its fdatasyncs need no extent-conversion metadata (see perf/store.md).
pub const RECYCLE_MAX: usize = 4;

struct Segment {
    file: File,
    map: Mmap,
}

/// Who issues a batch's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Staged for the shard's ring, not yet taken ([`Disk::take_ops`]).
    Unissued,
    /// On the disk's own ring.
    Ring,
    /// Taken for the shard's ring: completions come through [`Disk::complete`].
    Shard,
}

/// Bits of a token handed out with a [`FileOp`]: `generation:24 | slot:16`. The caller may
/// use the bits above for its own routing (the broker puts the partition there).
pub const DISK_TOKEN_BITS: u32 = 40;

fn disk_token(slot: u32, generation: u32) -> u64 {
    ((generation as u64 & crate::engine::uring::GENERATION_MASK as u64) << 16)
        | (slot as u64 & 0xFFFF)
}

struct InFlight {
    chunks: Vec<Chunk>,
    via: Via,
    generation: u32,
    ops: u32,
    done: u32,
    resubmit: bool,
    failure: Option<StoreError>,
}

/// Segment files in a directory, written with io_uring, read with memmap2.
pub struct UringDisk {
    dir: PathBuf,
    dir_file: File,
    _lock: File,
    segs: BTreeMap<u64, Segment>,
    recycled: Vec<PathBuf>,
    ring: Ring,
    inflight: Option<InFlight>,
    generation: u32,
    completions: Vec<Completion>,
    /// Batches are staged for the shard's ring ([`Disk::stage_on_shard`]).
    on_shard: bool,
    /// Completions reported through [`Disk::complete`], for the next `poll`.
    shard_done: Vec<Completion>,
    /// A batch handed to a ring that went away before completing it (its buffers leaked).
    lost: bool,
}

fn io_err(e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull,
        Some(errno) => StoreError::Io { errno },
        None => StoreError::Io { errno: libc::EIO },
    }
}

impl UringDisk {
    /// Open (creating if needed) a store directory. Takes an exclusive `flock` on `LOCK` so no
    /// other process maps or truncates these files while we run.
    pub fn open(dir: &Path) -> Result<UringDisk, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err)?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Io {
                errno: libc::EWOULDBLOCK,
            });
        }
        let dir_file = File::open(dir).map_err(io_err)?;
        let ring = Ring::new(RING_ENTRIES).map_err(StoreError::Ring)?;
        let mut d = UringDisk {
            dir: dir.to_path_buf(),
            dir_file,
            _lock: lock,
            segs: BTreeMap::new(),
            recycled: Vec::new(),
            ring,
            inflight: None,
            generation: 0,
            completions: Vec::with_capacity(RING_ENTRIES as usize),
            on_shard: false,
            shard_done: Vec::new(),
            lost: false,
        };
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(num) = name.strip_suffix(".log") {
                if num.len() == 20 {
                    if let Ok(base) = num.parse::<u64>() {
                        d.map_segment(base)?;
                    }
                }
            } else if name.starts_with("free-") {
                if d.recycled.len() < RECYCLE_MAX {
                    d.recycled.push(entry.path());
                } else {
                    std::fs::remove_file(entry.path()).map_err(io_err)?;
                }
            }
        }
        Ok(d)
    }

    fn map_segment(&mut self, base: u64) -> Result<(), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(segment_file_name(base)))
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        // SAFETY: the file belongs to this store: the directory is locked with flock, and the
        // store never truncates a mapped file. The mapping lives in `self.segs` until
        // `remove_segment`, which needs `&mut self`, so no slice from `read(&self)` outlives it.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file) }.map_err(io_err)?;
        self.segs.insert(base, Segment { file, map });
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        self.dir_file.sync_all().map_err(io_err)
    }

    fn push_batch(&mut self) -> Result<(), StoreError> {
        let Some(inf) = self.inflight.as_mut() else {
            return Ok(());
        };
        let n = inf.chunks.len();
        for (i, c) in inf.chunks.iter().enumerate() {
            let seg = self.segs.get(&c.segment).ok_or(StoreError::Io {
                errno: libc::ENOENT,
            })?;
            let fd = seg.file.as_raw_fd();
            let slot = (i * 2) as u32;
            // SAFETY: the buffer is owned by `self.inflight` and neither moved nor freed until
            // every completion of this generation has been drained in `poll`; the file stays
            // open in `self.segs` (segments are not removed while a batch is in flight).
            unsafe {
                self.ring
                    .push_write(
                        fd,
                        c.buf.as_ptr(),
                        c.buf.len() as u32,
                        c.offset as u64,
                        UserData::new(OpKind::StoreWrite, slot, inf.generation),
                        true,
                    )
                    .map_err(StoreError::Ring)?;
            }
            self.ring
                .push_fdatasync(
                    fd,
                    UserData::new(OpKind::StoreSync, slot + 1, inf.generation),
                    i + 1 < n,
                )
                .map_err(StoreError::Ring)?;
        }
        inf.ops = 2 * n as u32;
        inf.done = 0;
        inf.resubmit = false;
        inf.via = Via::Ring;
        self.ring.submit(0).map_err(StoreError::Ring)
    }
}

impl Disk for UringDisk {
    fn segments(&mut self) -> Result<Vec<u64>, StoreError> {
        Ok(self.segs.keys().copied().collect())
    }

    fn create_segment(&mut self, base: u64, bytes: u32) -> Result<(), StoreError> {
        let path = self.dir.join(segment_file_name(base));
        if let Some(old) = self.recycled.pop() {
            let ok = std::fs::metadata(&old)
                .map(|m| m.len() == bytes as u64)
                .unwrap_or(false);
            if ok {
                std::fs::rename(&old, &path).map_err(io_err)?;
                self.sync_dir()?;
                return self.map_segment(base);
            }
            std::fs::remove_file(&old).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: fallocate on an fd we own; no memory is involved.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        let res = if rc != 0 {
            Err(io_err(std::io::Error::last_os_error()))
        } else {
            file.sync_all()
                .map_err(io_err)
                .and_then(|_| self.sync_dir())
        };
        if let Err(e) = res {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        drop(file);
        self.map_segment(base)
    }

    fn remove_segment(&mut self, base: u64) -> Result<(), StoreError> {
        let Some(seg) = self.segs.remove(&base) else {
            return Ok(());
        };
        drop(seg);
        let path = self.dir.join(segment_file_name(base));
        if self.recycled.len() < RECYCLE_MAX {
            let free = self.dir.join(format!("free-{base:020}"));
            std::fs::rename(&path, &free).map_err(io_err)?;
            self.recycled.push(free);
        } else {
            std::fs::remove_file(&path).map_err(io_err)?;
        }
        self.sync_dir()
    }

    fn read(&self, base: u64) -> &[u8] {
        match self.segs.get(&base) {
            Some(s) => &s.map[..],
            None => &[],
        }
    }

    fn submit(&mut self, chunks: Vec<Chunk>) -> Result<(), StoreError> {
        assert!(self.inflight.is_none(), "one batch in flight at a time");
        assert!(chunks.len() * 2 <= RING_ENTRIES as usize);
        self.generation = self.generation.wrapping_add(1);
        let n = chunks.len() as u32;
        self.inflight = Some(InFlight {
            chunks,
            via: Via::Unissued,
            generation: self.generation & crate::engine::uring::GENERATION_MASK,
            ops: 2 * n,
            done: 0,
            resubmit: false,
            failure: None,
        });
        if self.on_shard {
            // Taken by the shard after its turn (`take_ops`).
            return Ok(());
        }
        self.push_batch()
    }

    fn stage_on_shard(&mut self, on: bool) -> Result<bool, StoreError> {
        if !on {
            if let Some(inf) = self.inflight.as_mut() {
                if inf.via == Via::Shard && inf.done < inf.ops {
                    // The ring that holds these operations is going without their
                    // completions: the kernel may still read the buffers, so they are never
                    // freed, and the batch's fate on disk is unknown.
                    let inf = self.inflight.take().expect("checked above");
                    std::mem::forget(inf.chunks);
                    self.lost = true;
                }
            }
            self.shard_done.clear();
        }
        self.on_shard = on;
        Ok(on)
    }

    fn may_block(&self) -> bool {
        !self.on_shard
    }

    fn take_ops(&mut self, out: &mut Vec<FileOp>) {
        let Some(inf) = self.inflight.as_mut() else {
            return;
        };
        if inf.via != Via::Unissued || !self.on_shard {
            return;
        }
        let n = inf.chunks.len();
        let mut ops = Vec::with_capacity(2 * n);
        for (i, c) in inf.chunks.iter().enumerate() {
            let Some(seg) = self.segs.get(&c.segment) else {
                // Cannot happen (segments in flight are not removed); fail the batch.
                inf.failure.get_or_insert(StoreError::Poisoned {
                    errno: libc::ENOENT,
                });
                inf.done = inf.ops;
                inf.via = Via::Shard;
                return;
            };
            let fd = seg.file.as_raw_fd();
            let slot = (i * 2) as u32;
            ops.push(FileOp {
                fd,
                kind: FileOpKind::Write {
                    ptr: c.buf.as_ptr(),
                    len: c.buf.len() as u32,
                    offset: c.offset as u64,
                },
                link: true,
                token: disk_token(slot, inf.generation),
            });
            ops.push(FileOp {
                fd,
                kind: FileOpKind::Fdatasync,
                link: i + 1 < n,
                token: disk_token(slot + 1, inf.generation),
            });
        }
        inf.ops = 2 * n as u32;
        inf.done = 0;
        inf.resubmit = false;
        inf.via = Via::Shard;
        out.append(&mut ops);
    }

    fn complete(&mut self, token: u64, result: i32) {
        let slot = (token & 0xFFFF) as u32;
        let generation = ((token >> 16) as u32) & crate::engine::uring::GENERATION_MASK;
        let kind = if slot % 2 == 0 {
            OpKind::StoreWrite
        } else {
            OpKind::StoreSync
        };
        self.shard_done.push(Completion {
            user_data: UserData::new(kind, slot, generation),
            result,
        });
    }

    fn set_notify(&mut self, fd: std::os::fd::RawFd) -> Result<(), StoreError> {
        self.ring.register_eventfd(fd).map_err(StoreError::Ring)
    }

    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Chunk>>, StoreError> {
        if self.lost {
            self.lost = false;
            return Err(StoreError::Poisoned { errno: libc::EIO });
        }
        loop {
            let Some(inf) = self.inflight.as_ref() else {
                return Ok(None);
            };
            self.completions.clear();
            match inf.via {
                Via::Unissued if wait || !self.on_shard => {
                    // Nobody takes it for the shard's ring (a caller that must wait, or the
                    // disk is back on its own driver): issue it here.
                    self.push_batch()?;
                    continue;
                }
                Via::Unissued => return Ok(None),
                Via::Shard => {
                    // Completions of an earlier batch's generation are dropped below.
                    self.completions.append(&mut self.shard_done);
                    if self.completions.is_empty() {
                        if wait && inf.done < inf.ops {
                            // They arrive on the shard's ring, which only its loop reaps.
                            return Err(StoreError::NotDurable);
                        }
                        if inf.done < inf.ops {
                            return Ok(None);
                        }
                    }
                }
                Via::Ring => {
                    let remaining = (inf.ops - inf.done) as usize;
                    self.ring.drain(&mut self.completions);
                    if self.completions.is_empty() {
                        if !wait {
                            return Ok(None);
                        }
                        self.ring
                            .submit(remaining.max(1))
                            .map_err(StoreError::Ring)?;
                        self.ring.drain(&mut self.completions);
                    }
                }
            }
            let inf = self.inflight.as_mut().expect("checked above");
            for c in &self.completions {
                if c.user_data.generation() != inf.generation {
                    continue; // A stale completion of an earlier batch: dropped.
                }
                inf.done += 1;
                let slot = c.user_data.slot() as usize;
                let expected = match c.user_data.kind() {
                    Some(OpKind::StoreWrite) => inf.chunks[slot / 2].buf.len() as i32,
                    _ => 0,
                };
                if c.result == expected || (expected == 0 && c.result >= 0) {
                    continue;
                }
                if c.result >= 0 {
                    // A short write into preallocated space: the device is failing. Poison.
                    inf.failure
                        .get_or_insert(StoreError::Poisoned { errno: libc::EIO });
                    continue;
                }
                let errno = -c.result;
                match classify_file_errno(errno) {
                    FileErrnoDecision::Resubmit => inf.resubmit = true,
                    FileErrnoDecision::LinkCancelled => {}
                    // Space was preallocated, so ENOSPC on a write or sync means the file system
                    // could not keep its promise (thin provisioning, CoW): the written state is
                    // unknown, so this poisons like any other failed write.
                    FileErrnoDecision::DiskFull | FileErrnoDecision::Poison => {
                        inf.failure.get_or_insert(StoreError::Poisoned { errno });
                    }
                }
            }
            if inf.done < inf.ops {
                if wait {
                    continue;
                }
                return Ok(None);
            }
            if let Some(e) = inf.failure {
                // Never retried: a failed fsync may already have dropped the dirty pages.
                self.inflight = None;
                return Err(e);
            }
            if inf.resubmit {
                // Nothing failed, an op was interrupted (EINTR/EAGAIN) and its successors
                // cancelled: the writes are idempotent, so the whole batch is issued again.
                if self.on_shard {
                    inf.via = Via::Unissued;
                    inf.done = 0;
                    inf.resubmit = false;
                    return Ok(None);
                }
                self.push_batch()?;
                continue;
            }
            return Ok(self.inflight.take().map(|i| i.chunks));
        }
    }

    fn zero(&mut self, base: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        let Some(seg) = self.segs.get(&base) else {
            return Ok(());
        };
        let zeros = vec![0u8; len as usize];
        seg.file.write_all_at(&zeros, offset).map_err(io_err)?;
        seg.file.sync_data().map_err(io_err)
    }

    fn write_at(
        &mut self,
        base: u64,
        offset: u64,
        bytes: &[u8],
        sync: bool,
    ) -> Result<(), StoreError> {
        debug_assert!(
            self.inflight.is_none(),
            "write_at while a batch is in flight"
        );
        let seg = self.segs.get(&base).ok_or(StoreError::Io {
            errno: libc::ENOENT,
        })?;
        seg.file.write_all_at(bytes, offset).map_err(io_err)?;
        if sync {
            seg.file.sync_data().map_err(io_err)?;
        }
        Ok(())
    }
}
