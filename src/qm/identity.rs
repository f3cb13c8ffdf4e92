//! The queue manager's persistent identity: its GUID (generated once, kept forever, like
//! Windows' `MachineCache\QMId`) and the MessageIdOrdinal counter that must survive restarts
//! (MS-MQQB 3.1.1.3), both in small files of the data directory written atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::wire::Guid;

/// File holding the GUID as text.
pub const QM_ID_FILE: &str = "qm.id";
/// File holding the reserved high-water mark of MessageIdOrdinal.
pub const ORDINAL_FILE: &str = "message-id.ordinal";
/// Ordinals reserved on disk at a time, so allocating one costs no fsync. After a crash the
/// counter resumes at the reserved mark: ordinals are skipped, never reused.
pub const ORDINAL_RESERVE_BLOCK: u32 = 1 << 16;

/// Writes `contents` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Loads the QM GUID from the data directory, creating it on first start.
pub fn load_or_create_guid(data_dir: &Path) -> std::io::Result<Guid> {
    let path = data_dir.join(QM_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Guid::parse_text(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a GUID: {:?}", path.display(), text.trim()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let g = Guid::new_random();
            write_atomic(&path, format!("{g}\n").as_bytes())?;
            Ok(g)
        }
        Err(e) => Err(e),
    }
}

/// Allocates MessageIdOrdinal values that never repeat across restarts or crashes.
#[derive(Debug)]
pub struct OrdinalAllocator {
    path: PathBuf,
    next: u32,
    reserved_until: u32,
}

impl OrdinalAllocator {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(ORDINAL_FILE);
        let start = match fs::read_to_string(&path) {
            Ok(t) => t.trim().parse::<u32>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a number", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        let mut a = OrdinalAllocator {
            path,
            next: start,
            reserved_until: start,
        };
        a.reserve()?;
        Ok(a)
    }

    fn reserve(&mut self) -> std::io::Result<()> {
        let until = self.next.wrapping_add(ORDINAL_RESERVE_BLOCK);
        write_atomic(&self.path, format!("{until}\n").as_bytes())?;
        self.reserved_until = until;
        Ok(())
    }

    /// `n` consecutive ordinals for a caller that hands them out itself (a shard's lease: no
    /// lock per message); reserved on disk before they are returned, like single ones, so
    /// none repeats after a crash (unused ones are skipped).
    pub fn allocate_block(&mut self, n: u32) -> std::io::Result<std::ops::Range<u32>> {
        let start = self.next;
        let left = self.reserved_until.wrapping_sub(start);
        if left < n {
            let until = start.wrapping_add(n).wrapping_add(ORDINAL_RESERVE_BLOCK);
            write_atomic(&self.path, format!("{until}\n").as_bytes())?;
            self.reserved_until = until;
        }
        self.next = start.wrapping_add(n);
        Ok(start..self.next)
    }

    /// The next ordinal; touches the disk once per `ORDINAL_RESERVE_BLOCK` calls.
    pub fn allocate(&mut self) -> std::io::Result<u32> {
        if self.next == self.reserved_until {
            self.reserve()?;
        }
        let v = self.next;
        self.next = self.next.wrapping_add(1);
        Ok(v)
    }
}

/// Ordinals a thread takes from the machine-wide allocator at a time (see [`OrdinalLeases`]).
pub const ORDINAL_THREAD_LEASE: u32 = 4_096;

/// The machine's [`OrdinalAllocator`] shared by its threads without a lock per message: each
/// thread (a shard, the API's threads) holds a lease of [`ORDINAL_THREAD_LEASE`] ordinals in a
/// thread-local and takes the allocator's lock once per lease, to reserve the next block on
/// disk. Leases are kept per allocator, so two queue managers in one process (tests) never
/// hand out each other's ordinals.
#[derive(Debug)]
pub struct OrdinalLeases {
    /// Tells this allocator's leases from another's in a thread's lease slot.
    id: u64,
    /// Taken once per lease (a reservation may write the ordinal file); never per message.
    allocator: std::sync::Mutex<OrdinalAllocator>,
}

std::thread_local! {
    /// This thread's lease: (allocator id, the ordinals left).
    static LEASE: std::cell::Cell<(u64, u32, u32)> = const { std::cell::Cell::new((0, 0, 0)) };
}

impl OrdinalLeases {
    pub fn new(allocator: OrdinalAllocator) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        OrdinalLeases {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            allocator: std::sync::Mutex::new(allocator),
        }
    }

    /// `n` consecutive ordinals straight from the allocator (reserved on disk first).
    pub fn lease(&self, n: u32) -> std::io::Result<std::ops::Range<u32>> {
        self.allocator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate_block(n)
    }

    /// The next ordinal from the calling thread's lease (a new lease when it is used up).
    pub fn next(&self) -> std::io::Result<u32> {
        let (id, next, end) = LEASE.with(std::cell::Cell::get);
        let (next, end) = if id == self.id && next != end {
            (next, end)
        } else {
            let r = self.lease(ORDINAL_THREAD_LEASE)?;
            (r.start, r.end)
        };
        LEASE.with(|c| c.set((self.id, next.wrapping_add(1), end)));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_of_several_threads_and_allocators_never_repeat() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            let a = std::sync::Arc::new(OrdinalLeases::new(
                OrdinalAllocator::open(d.path()).unwrap(),
            ));
            // Another queue manager in the same process: its leases stay its own.
            let b = OrdinalLeases::new(OrdinalAllocator::open(other.path()).unwrap());
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let a = a.clone();
                    std::thread::spawn(move || {
                        (0..ORDINAL_THREAD_LEASE + 5)
                            .map(|_| a.next().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for _ in 0..10 {
                a.next().unwrap();
                b.next().unwrap();
            }
            let mut mine = vec![a.next().unwrap()];
            for t in threads {
                mine.extend(t.join().unwrap());
            }
            for o in mine {
                assert!(seen.insert(o), "{o} twice");
            }
        }
    }

    #[test]
    fn blocks_and_single_ordinals_never_repeat_across_reopens() {
        let d = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let mut a = OrdinalAllocator::open(d.path()).unwrap();
            for _ in 0..3 {
                for o in a.allocate_block(ORDINAL_RESERVE_BLOCK + 7).unwrap() {
                    assert!(seen.insert(o), "{o} twice");
                }
                let o = a.allocate().unwrap();
                assert!(seen.insert(o), "{o} twice");
            }
        }
    }

    #[test]
    fn guid_is_generated_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let g1 = load_or_create_guid(d.path()).unwrap();
        let g2 = load_or_create_guid(d.path()).unwrap();
        assert_eq!(g1, g2);
        assert!(!g1.is_null());
        fs::write(d.path().join(QM_ID_FILE), "garbage").unwrap();
        let e = load_or_create_guid(d.path()).unwrap_err();
        assert!(e.to_string().contains("does not hold a GUID"));
    }

    #[test]
    fn ordinals_never_repeat_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut a = OrdinalAllocator::open(d.path()).unwrap();
        let first: Vec<u32> = (0..10).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(first, (1..=10).collect::<Vec<_>>());
        // A "crash": the allocator is dropped without any shutdown step.
        drop(a);
        let mut b = OrdinalAllocator::open(d.path()).unwrap();
        let after = b.allocate().unwrap();
        assert!(after > 10, "resumed at {after}");
    }
}
