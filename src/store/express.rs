//! The express arena: express messages live in memory only, as records packed into blocks of
//! `EXPRESS_BLOCK_BYTES`, the way durable ones are packed into segments. One append costs no
//! allocation of its own (the profile showed one heap record per express message, and the
//! kernel zeroing pages for them, as the largest cost of the express path); a block is freed
//! when its last message is gone, and up to two freed blocks are kept for reuse.
//!
//! It owns no protocol meaning and does no IO.

use std::collections::VecDeque;

/// `Entry::seg` values at or above this name an arena block (`seg - EXPRESS_BASE` is its id);
/// segment bases are sequence numbers and never get near it.
pub(crate) const EXPRESS_BASE: u64 = 1 << 63;
/// Bytes per arena block (a larger record gets a block of its own size).
pub(crate) const EXPRESS_BLOCK_BYTES: usize = 1 << 20;
/// Freed blocks kept for reuse.
const SPARE_BLOCKS_MAX: usize = 2;

pub(crate) fn is_express(seg: u64) -> bool {
    seg >= EXPRESS_BASE
}

#[derive(Debug)]
struct Block {
    buf: Vec<u8>,
    live: u32,
}

/// Blocks by id; `None` marks a freed block that is not at the front yet.
#[derive(Debug, Default)]
pub(crate) struct ExpressArena {
    blocks: VecDeque<Option<Block>>,
    front_id: u64,
    spare: Vec<Vec<u8>>,
}

impl ExpressArena {
    /// Appends one record written by `write` (which appends `space` bytes to the vector it is
    /// given) and returns its (seg, offset).
    pub fn insert(&mut self, space: usize, write: impl FnOnce(&mut Vec<u8>)) -> (u64, u32) {
        let fits = self
            .blocks
            .back()
            .and_then(|b| b.as_ref())
            .is_some_and(|b| b.buf.len() + space <= b.buf.capacity());
        if !fits {
            let cap = space.max(EXPRESS_BLOCK_BYTES);
            let buf = match self.spare.iter().position(|b| b.capacity() >= cap) {
                Some(i) => self.spare.swap_remove(i),
                None => Vec::with_capacity(cap),
            };
            self.blocks.push_back(Some(Block { buf, live: 0 }));
        }
        let id = self.front_id + self.blocks.len() as u64 - 1;
        let b = self
            .blocks
            .back_mut()
            .and_then(|b| b.as_mut())
            .expect("a block was just made current");
        let off = b.buf.len();
        write(&mut b.buf);
        debug_assert_eq!(b.buf.len(), off + space);
        b.live += 1;
        (EXPRESS_BASE + id, off as u32)
    }

    fn block(&self, seg: u64) -> Option<&Block> {
        let i = (seg - EXPRESS_BASE).checked_sub(self.front_id)?;
        self.blocks.get(i as usize)?.as_ref()
    }

    /// The record at (seg, off), `space` bytes.
    pub fn get(&self, seg: u64, off: u32, space: u32) -> &[u8] {
        let b = self
            .block(seg)
            .expect("an index entry names a live arena block");
        &b.buf[off as usize..off as usize + space as usize]
    }

    /// Forgets one record of block `seg`; frees the block when it was the last one in it and
    /// no longer the block appends go to.
    pub fn remove(&mut self, seg: u64) {
        let Some(i) = (seg - EXPRESS_BASE).checked_sub(self.front_id) else {
            return;
        };
        let i = i as usize;
        let last = self.blocks.len().saturating_sub(1);
        let Some(Some(b)) = self.blocks.get_mut(i) else {
            return;
        };
        b.live = b.live.saturating_sub(1);
        if b.live > 0 || i == last {
            return;
        }
        if let Some(mut freed) = self.blocks[i].take().map(|b| b.buf) {
            if self.spare.len() < SPARE_BLOCKS_MAX {
                freed.clear();
                self.spare.push(freed);
            }
        }
        while matches!(self.blocks.front(), Some(None)) {
            self.blocks.pop_front();
            self.front_id += 1;
        }
    }

    /// Blocks held.
    #[cfg(test)]
    pub fn blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(a: &mut ExpressArena, byte: u8, n: usize) -> (u64, u32) {
        a.insert(n, |v| v.extend(std::iter::repeat_n(byte, n)))
    }

    #[test]
    fn records_pack_into_blocks_and_blocks_are_freed_when_empty() {
        let mut a = ExpressArena::default();
        let per_block = EXPRESS_BLOCK_BYTES / 1000;
        let mut recs = Vec::new();
        for i in 0..(per_block * 3) {
            recs.push(put(&mut a, (i % 251) as u8, 1000));
        }
        assert_eq!(a.blocks(), 3);
        for (i, (seg, off)) in recs.iter().enumerate() {
            assert!(a
                .get(*seg, *off, 1000)
                .iter()
                .all(|&b| b == (i % 251) as u8));
        }
        // Emptying the first block frees it; the others stay readable.
        for (seg, _) in &recs[..per_block] {
            a.remove(*seg);
        }
        assert_eq!(a.blocks(), 2);
        let (seg, off) = recs[per_block];
        assert_eq!(a.get(seg, off, 1000)[0], (per_block % 251) as u8);
        // A record larger than a block gets one of its own.
        let big = put(&mut a, 7, EXPRESS_BLOCK_BYTES + 8);
        assert_eq!(
            a.get(big.0, big.1, (EXPRESS_BLOCK_BYTES + 8) as u32).len(),
            EXPRESS_BLOCK_BYTES + 8
        );
        // Removing everything leaves only the current block.
        for (seg, _) in &recs[per_block..] {
            a.remove(*seg);
        }
        a.remove(big.0);
        assert!(a.blocks() <= 1);
    }
}
