//! The shard's buffer pools: the kernel-registered receive buffer ring (provided buffers for
//! multishot receive) and the pool of spare transmit vectors; this module decides nothing about
//! connections and never frees memory the kernel may still write to.

use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// Page alignment the kernel requires for a buffer ring, used for the data area too.
const PAGE_BYTES: usize = 4096;

/// A registered ring of provided receive buffers (IORING_REGISTER_PBUF_RING, Linux 5.19+).
///
/// Ownership protocol: a buffer whose id is in the ring belongs to the kernel, which may write
/// into it at any time. A completion that carries `IORING_CQE_F_BUFFER` hands that one buffer to
/// the shard; the shard reads it through [`RecvBufRing::bytes`] and gives it back with
/// [`RecvBufRing::give_back`], after which it must not touch it again. Both memory areas are
/// heap allocations owned by this struct, so their addresses never move.
pub(crate) struct RecvBufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    buffer_count: u16,
    buffer_size: u32,
    /// The next tail value the shard will publish; the kernel consumes from its own head.
    tail: u16,
    group_id: u16,
    registered: bool,
}

impl RecvBufRing {
    /// Allocates `buffer_count` buffers of `buffer_size` bytes. The count must be a power of two
    /// no larger than 32768 (a kernel rule for buffer rings).
    pub(crate) fn new(buffer_count: u16, buffer_size: u32, group_id: u16) -> io::Result<Self> {
        if !buffer_count.is_power_of_two() || buffer_count > 32768 || buffer_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer_count must be a power of two <= 32768 and recv_buffer_size > 0",
            ));
        }
        let entries_bytes = usize::from(buffer_count) * std::mem::size_of::<BufRingEntry>();
        let entries_layout = Layout::from_size_align(entries_bytes, PAGE_BYTES)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))?;
        let data_bytes = usize::from(buffer_count)
            .checked_mul(buffer_size as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "recv buffers too large"))?;
        let data_layout = Layout::from_size_align(data_bytes, PAGE_BYTES)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "recv buffers too large"))?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1). The allocations are
        // owned by the returned struct and freed in Drop with the same layouts.
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "buffer ring allocation",
            ));
        }
        // SAFETY: as above.
        let data = unsafe { alloc::alloc_zeroed(data_layout) };
        if data.is_null() {
            // SAFETY: `entries` was allocated just above with `entries_layout` and is unused.
            unsafe { alloc::dealloc(entries as *mut u8, entries_layout) };
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "recv buffer allocation",
            ));
        }
        Ok(RecvBufRing {
            entries,
            entries_layout,
            data,
            data_layout,
            buffer_count,
            buffer_size,
            tail: 0,
            group_id,
            registered: false,
        })
    }

    /// Registers the ring with the kernel and hands it every buffer.
    pub(crate) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: `self.entries` points at `buffer_count` entries, page aligned, and stays valid
        // until `unregister` or until the ring is dropped (Drop leaks it if still registered).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries as u64,
                self.buffer_count,
                self.group_id,
                0,
            )?;
        }
        self.registered = true;
        for bid in 0..self.buffer_count {
            self.give_back(bid);
        }
        Ok(())
    }

    /// Unregisters the ring. Call only once no operation that selects from it is in flight.
    pub(crate) fn unregister(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        if self.registered {
            submitter.unregister_buf_ring(self.group_id)?;
            self.registered = false;
        }
        Ok(())
    }

    pub(crate) fn group_id(&self) -> u16 {
        self.group_id
    }

    /// The first `len` bytes of buffer `bid`, which a completion has just handed to the shard.
    /// Returns None for an id or a length the ring never issued (a kernel contract breach the
    /// caller treats as a closed connection rather than a crash).
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.buffer_count || len > self.buffer_size as usize {
            return None;
        }
        let start = usize::from(bid) * self.buffer_size as usize;
        // SAFETY: the range lies inside the data allocation (checked above). The completion for
        // `bid` handed that buffer to the shard and the kernel will not write to it until
        // `give_back(bid)`, which needs `&mut self` and so cannot run while this borrow lives.
        Some(unsafe { std::slice::from_raw_parts(self.data.add(start), len) })
    }

    /// Returns buffer `bid` to the kernel. The caller must own it (a completion handed it over
    /// and it has not been given back since).
    pub(crate) fn give_back(&mut self, bid: u16) {
        if bid >= self.buffer_count {
            return;
        }
        let mask = self.buffer_count - 1;
        let index = usize::from(self.tail & mask);
        let addr = self.data as u64 + u64::from(bid) * u64::from(self.buffer_size);
        // SAFETY: `index` < buffer_count, so the entry is inside the ring allocation. The kernel
        // only reads entries between its head and the published tail; this slot is past the
        // published tail, so the kernel is not reading it now.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(addr);
            entry.set_len(self.buffer_size);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives inside the first entry of the ring allocation and is
        // 2-byte aligned. The kernel reads it concurrently, so it is written atomically with
        // Release ordering, which publishes the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Gives up the memory without freeing it: used when shutdown could not prove that the
    /// kernel is done with the buffers, because a leak is safe and a use-after-free is not.
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for RecvBufRing {
    fn drop(&mut self) {
        if self.registered {
            // The kernel still has the ring registered (the shard exited without unregistering):
            // freeing the memory could let a late write land in someone else's allocation.
            return;
        }
        // SAFETY: both pointers came from `alloc_zeroed` with these layouts and the ring is not
        // registered, so the kernel holds no reference to either area.
        unsafe {
            alloc::dealloc(self.entries as *mut u8, self.entries_layout);
            alloc::dealloc(self.data, self.data_layout);
        }
    }
}

/// Spare transmit vectors, recycled after their send completes so a steady stream of transmits
/// does not allocate. Bounded in count and in the capacity of each kept vector.
pub(crate) struct SparePool {
    spares: Vec<Vec<u8>>,
    count_max: usize,
    capacity_max_bytes: usize,
}

impl SparePool {
    pub(crate) fn new(count_max: usize, capacity_max_bytes: usize) -> Self {
        SparePool {
            spares: Vec::with_capacity(count_max),
            count_max,
            capacity_max_bytes,
        }
    }

    /// An empty vector, with capacity if one was recycled (an empty new Vec does not allocate).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.spares.pop().unwrap_or_default()
    }

    /// Keeps `spare` for reuse unless the pool is full or the vector is oversized.
    pub(crate) fn put(&mut self, mut spare: Vec<u8>) {
        if spare.capacity() == 0
            || spare.capacity() > self.capacity_max_bytes
            || self.spares.len() >= self.count_max
        {
            return;
        }
        spare.clear();
        self.spares.push(spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        assert!(RecvBufRing::new(3, 16, 0).is_err());
        assert!(RecvBufRing::new(4, 0, 0).is_err());
        assert!(RecvBufRing::new(4, 16, 0).is_ok());
    }

    #[test]
    fn spare_pool_is_bounded() {
        let mut pool = SparePool::new(2, 64);
        pool.put(Vec::with_capacity(8));
        pool.put(Vec::with_capacity(8));
        pool.put(Vec::with_capacity(8));
        pool.put(Vec::with_capacity(128));
        assert_eq!(pool.spares.len(), 2);
        assert!(pool.take().capacity() >= 8);
    }
}
