//! Per-queue in-memory index: one deque per priority, sorted by lookup id (appends arrive in
//! lookup order, so inserting is a push at the back). Removals in the middle leave a marker
//! that is trimmed from the front or compacted when markers outnumber live entries.
//!
//! It owns no bytes, only locations; it must not do IO.

use super::chunked::ChunkedDeque;
use super::QueueQuota;

/// Where a message is and what the index needs without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub lookup: u64,
    pub seg: u64,
    pub off: u32,
    /// Record bytes in the log, padding included.
    pub space: u32,
    /// Packet bytes (for quotas).
    pub bytes: u32,
    pub expiry: u32,
    pub removed: bool,
}

/// One queue's messages.
pub(crate) struct QueueIndex {
    pub prios: [ChunkedDeque<Entry>; 8],
    removed: [u32; 8],
    pub messages: u64,
    pub bytes: u64,
    pub quota: QueueQuota,
}

impl QueueIndex {
    pub fn new(quota: QueueQuota) -> QueueIndex {
        QueueIndex {
            prios: Default::default(),
            removed: [0; 8],
            messages: 0,
            bytes: 0,
            quota,
        }
    }

    /// Position of the live entry with `lookup`.
    pub fn find(&self, lookup: u64) -> Option<(usize, usize)> {
        for p in (0..8).rev() {
            if let Ok(i) = self.prios[p].binary_search_by_key(&lookup, |e| e.lookup) {
                if !self.prios[p][i].removed {
                    return Some((p, i));
                }
                return None;
            }
        }
        None
    }

    /// Insert in lookup order (a push at the back in the common case). Returns the replaced
    /// entry if `lookup` was present (a message copied forward, seen twice by recovery).
    pub fn insert(&mut self, prio: usize, e: Entry) -> Option<Entry> {
        let d = &mut self.prios[prio];
        if d.back().map(|b| b.lookup).unwrap_or(0) < e.lookup {
            d.push_back(e);
        } else {
            match d.binary_search_by_key(&e.lookup, |x| x.lookup) {
                Ok(i) if !d[i].removed => return Some(std::mem::replace(&mut d[i], e)),
                Ok(i) => {
                    d[i] = e;
                    self.removed[prio] -= 1;
                }
                Err(i) => d.insert(i, e),
            }
        }
        self.messages += 1;
        self.bytes += e.bytes as u64;
        None
    }

    /// Remove the live entry at (prio, idx) and return it.
    pub fn take(&mut self, prio: usize, idx: usize) -> Entry {
        let d = &mut self.prios[prio];
        let e = d[idx];
        debug_assert!(!e.removed);
        self.messages -= 1;
        self.bytes -= e.bytes as u64;
        if idx == 0 {
            d.pop_front();
        } else {
            d[idx].removed = true;
            self.removed[prio] += 1;
        }
        while d.front().is_some_and(|f| f.removed) {
            d.pop_front();
            self.removed[prio] -= 1;
        }
        let r = self.removed[prio] as usize;
        if r > 64 && r * 2 > d.len() {
            d.retain(|x| !x.removed);
            self.removed[prio] = 0;
        }
        e
    }

    /// First live entry of `prio` (it may not be visible yet).
    pub fn first(&self, prio: usize) -> Option<usize> {
        self.prios[prio].iter().position(|e| !e.removed)
    }

    /// Remove every live entry with lookup below `below`, calling `f` on each.
    pub fn purge_below(&mut self, below: u64, mut f: impl FnMut(&Entry)) {
        for p in 0..8 {
            let d = &mut self.prios[p];
            while d.front().is_some_and(|e| e.lookup < below) {
                let e = d.pop_front().expect("checked");
                if e.removed {
                    self.removed[p] -= 1;
                } else {
                    self.messages -= 1;
                    self.bytes -= e.bytes as u64;
                    f(&e);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(lookup: u64) -> Entry {
        Entry {
            lookup,
            seg: 1,
            off: 0,
            space: 64,
            bytes: 8,
            expiry: 0,
            removed: false,
        }
    }

    #[test]
    fn insert_find_take_purge() {
        let mut q = QueueIndex::new(QueueQuota::UNLIMITED);
        for l in [1, 2, 5, 9] {
            assert!(q.insert(3, e(l)).is_none());
        }
        assert!(q.insert(3, e(4)).is_none());
        assert_eq!(q.find(4), Some((3, 2)));
        assert!(q.insert(3, e(4)).is_some());
        assert_eq!(q.messages, 5);
        let (p, i) = q.find(5).unwrap();
        assert_eq!(q.take(p, i).lookup, 5);
        assert_eq!(q.find(5), None);
        let mut seen = Vec::new();
        q.purge_below(9, |x| seen.push(x.lookup));
        assert_eq!(seen, vec![1, 2, 4]);
        assert_eq!(q.messages, 1);
        assert_eq!(q.first(3), Some(0));
    }
}
