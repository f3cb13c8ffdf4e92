//! A double-ended queue stored in fixed-size chunks, for the per-queue index. Growing it never
//! copies or reallocates what is there (a `VecDeque` of a million entries doubles by copying
//! 40 MB and faulting in fresh pages at once, which the open-loop benchmark saw as stalls of
//! tens of milliseconds); a chunk is freed when its last entry leaves the front.
//!
//! Only what the index needs: push at the back, pop at the front, indexing, binary search, and
//! the rare insert in the middle or compaction (which rebuild, O(n), as a `VecDeque` would).

use std::collections::VecDeque;

/// Entries per chunk.
pub(crate) const CHUNK: usize = 4096;

#[derive(Debug, Clone)]
pub(crate) struct ChunkedDeque<T> {
    chunks: VecDeque<Vec<T>>,
    /// Index of the first element inside `chunks[0]`.
    head: usize,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T: Copy> ChunkedDeque<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn locate(&self, i: usize) -> (usize, usize) {
        let j = self.head + i;
        (j / CHUNK, j % CHUNK)
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, o) = self.locate(i);
        self.chunks.get(c)?.get(o)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        let (c, o) = self.locate(i);
        self.chunks.get_mut(c)?.get_mut(o)
    }

    pub fn front(&self) -> Option<&T> {
        self.get(0)
    }

    pub fn back(&self) -> Option<&T> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    pub fn push_back(&mut self, v: T) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < CHUNK => c.push(v),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(v);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let v = *self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.head == CHUNK || self.len == 0 {
            self.chunks.pop_front();
            self.head = 0;
            if self.len == 0 {
                self.chunks.clear();
            }
        }
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.range_from(0)
    }

    /// The elements from index `from` on.
    pub fn range_from(&self, from: usize) -> impl Iterator<Item = &T> + '_ {
        let head = self.head;
        self.chunks
            .iter()
            .flatten()
            .skip(head + from)
            .take(self.len.saturating_sub(from))
    }

    /// First index whose element does not satisfy `pred` (which must be true, then false).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn binary_search_by_key<K: Ord>(
        &self,
        key: &K,
        mut f: impl FnMut(&T) -> K,
    ) -> Result<usize, usize> {
        let i = self.partition_point(|x| f(x) < *key);
        if i < self.len && f(&self[i]) == *key {
            Ok(i)
        } else {
            Err(i)
        }
    }

    fn rebuild(&mut self, items: Vec<T>) {
        *self = ChunkedDeque::default();
        for v in items {
            self.push_back(v);
        }
    }

    /// Inserts at `i` (rare: out-of-order recovery or copy-forward); rebuilds, O(n).
    pub fn insert(&mut self, i: usize, v: T) {
        let mut items: Vec<T> = self.iter().copied().collect();
        items.insert(i.min(items.len()), v);
        self.rebuild(items);
    }

    /// Keeps the elements for which `f` is true; rebuilds, O(n).
    pub fn retain(&mut self, mut f: impl FnMut(&T) -> bool) {
        let items: Vec<T> = self.iter().copied().filter(|x| f(x)).collect();
        self.rebuild(items);
    }
}

impl<T: Copy> std::ops::Index<usize> for ChunkedDeque<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i).expect("index within the deque")
    }
}

impl<T: Copy> std::ops::IndexMut<usize> for ChunkedDeque<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.get_mut(i).expect("index within the deque")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any sequence of operations leaves the same contents as a VecDeque.
        #[test]
        fn behaves_like_a_vecdeque(ops in proptest::collection::vec((0u8..5, 0u32..20_000), 0..120)) {
            let mut a: ChunkedDeque<u32> = ChunkedDeque::default();
            let mut b: VecDeque<u32> = VecDeque::new();
            let mut next = 0u32;
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        for _ in 0..(n % 3000) {
                            next += 1;
                            a.push_back(next);
                            b.push_back(next);
                        }
                    }
                    2 => {
                        for _ in 0..(n % 5000) {
                            prop_assert_eq!(a.pop_front(), b.pop_front());
                        }
                    }
                    3 => {
                        let i = (n as usize) % (b.len() + 1);
                        a.insert(i, n);
                        b.insert(i, n);
                    }
                    _ => {
                        a.retain(|x| x % 7 != 0);
                        b.retain(|x| x % 7 != 0);
                    }
                }
                prop_assert_eq!(a.len(), b.len());
                prop_assert_eq!(a.front(), b.front());
                prop_assert_eq!(a.back(), b.back());
            }
            let av: Vec<u32> = a.iter().copied().collect();
            let bv: Vec<u32> = b.iter().copied().collect();
            prop_assert_eq!(&av, &bv);
            let from = av.len() / 2;
            prop_assert_eq!(a.range_from(from).count(), av.len() - from);
            for (i, v) in bv.iter().enumerate().step_by(97) {
                prop_assert_eq!(a[i], *v);
            }
        }
    }

    #[test]
    fn binary_search_and_partition_point() {
        let mut d = ChunkedDeque::default();
        for i in 0..10_000u64 {
            d.push_back(i * 2);
        }
        for _ in 0..3_000 {
            d.pop_front();
        }
        assert_eq!(d.binary_search_by_key(&7000, |x| *x), Ok(500));
        assert_eq!(d.binary_search_by_key(&7001, |x| *x), Err(501));
        assert_eq!(d.partition_point(|x| *x <= 7000), 501);
    }
}
