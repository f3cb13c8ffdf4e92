//! Per-queue in-memory index: one deque per priority, sorted by lookup id (appends arrive in
//! lookup order, so inserting is a push at the back). Removals in the middle leave a marker
//! that is trimmed from the front or compacted when markers outnumber live entries.
//!
//! Messages with a TimeToBeReceived are also kept ordered by expiry (`expiring`), so finding
//! the expired ones costs what they are, not a walk of the whole queue.
//!
//! It owns no bytes, only locations; it must not do IO.

use std::collections::BTreeSet;

use super::chunked::ChunkedDeque;
use super::{QueueQuota, EXPIRY_NEVER};

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
    /// (expiry, lookup) of every live entry that expires; exactly the live ones.
    expiring: BTreeSet<(u32, u64)>,
}

impl QueueIndex {
    pub fn new(quota: QueueQuota) -> QueueIndex {
        QueueIndex {
            prios: Default::default(),
            removed: [0; 8],
            messages: 0,
            bytes: 0,
            quota,
            expiring: BTreeSet::new(),
        }
    }

    fn note_live(&mut self, e: &Entry) {
        if e.expiry != EXPIRY_NEVER {
            self.expiring.insert((e.expiry, e.lookup));
        }
    }

    fn note_gone(&mut self, e: &Entry) {
        if e.expiry != EXPIRY_NEVER {
            self.expiring.remove(&(e.expiry, e.lookup));
        }
    }

    /// Lookup ids of live entries whose expiry is `<= now_unix_s`, oldest expiry first.
    pub fn expired(&self, now_unix_s: u32) -> impl Iterator<Item = u64> + '_ {
        self.expiring
            .range(..=(now_unix_s, u64::MAX))
            .map(|&(_, lookup)| lookup)
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
                Ok(i) if !d[i].removed => {
                    let old = std::mem::replace(&mut d[i], e);
                    self.note_gone(&old);
                    self.note_live(&e);
                    return Some(old);
                }
                Ok(i) => {
                    d[i] = e;
                    self.removed[prio] -= 1;
                }
                Err(i) => d.insert(i, e),
            }
        }
        self.note_live(&e);
        self.messages += 1;
        self.bytes += e.bytes as u64;
        None
    }

    /// Remove the live entry at (prio, idx) and return it.
    pub fn take(&mut self, prio: usize, idx: usize) -> Entry {
        let e = self.prios[prio][idx];
        debug_assert!(!e.removed);
        self.note_gone(&e);
        let d = &mut self.prios[prio];
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
                    if e.expiry != EXPIRY_NEVER {
                        self.expiring.remove(&(e.expiry, e.lookup));
                    }
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

    #[test]
    fn expiring_entries_are_found_by_expiry_and_forgotten_when_they_leave() {
        let mut q = QueueIndex::new(QueueQuota::UNLIMITED);
        let at = |lookup, expiry| Entry {
            expiry,
            ..e(lookup)
        };
        q.insert(3, at(1, 50));
        q.insert(3, at(2, EXPIRY_NEVER));
        q.insert(5, at(3, 10));
        q.insert(3, at(4, 30));
        q.insert(3, at(6, 100));
        assert_eq!(
            q.expired(49).collect::<Vec<_>>(),
            vec![3, 4],
            "oldest expiry first"
        );
        assert_eq!(q.expired(9).count(), 0);
        let (p, i) = q.find(4).unwrap();
        q.take(p, i);
        assert_eq!(q.expired(60).collect::<Vec<_>>(), vec![3, 1], "taken: gone");
        // Recovery seeing a copied-forward message again keeps one entry.
        assert!(q.insert(3, at(1, 50)).is_some());
        assert_eq!(q.expired(60).collect::<Vec<_>>(), vec![3, 1]);
        let mut seen = Vec::new();
        q.purge_below(5, |x| seen.push(x.lookup));
        assert_eq!(
            q.expired(u32::MAX - 1).collect::<Vec<_>>(),
            vec![6],
            "purged: gone"
        );
        assert_eq!(q.expiring.len(), 1, "nothing left behind");
    }
}
