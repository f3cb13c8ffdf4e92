//! Duplicate detection (MS-MQQB 3.1.5.8.1, 3.1.6.7, DIGEST §10.5): the MessageIDHistoryTable of
//! non-transactional message identifiers, bounded (`RemoveDuplicateSize`, Windows 10,000) and
//! purged of old entries every `RemoveDuplicateCleanup` (Windows 30 minutes).
//!
//! The full 20-byte identifier (source QM GUID + MessageID) is compared: MS-MQQB 3.1.5.8.1 names
//! only the ordinal, but 3.1.5.8.2 stores both, and ordinals of different senders collide.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use crate::wire::Guid;

/// A fast keyed hash for message identifiers (this table sits on the per-message hot path, and
/// SipHash showed in the profile). The keys come from the network, so the hash is seeded from a
/// random key per table: a sender cannot precompute colliding identifiers.
#[derive(Clone, Copy, Debug)]
pub struct KeyedHash {
    k0: u64,
    k1: u64,
}

impl KeyedHash {
    fn random() -> Self {
        let g = Guid::new_random().0;
        let k0 = u64::from_le_bytes(g[..8].try_into().unwrap_or([1; 8]));
        let k1 = u64::from_le_bytes(g[8..].try_into().unwrap_or([2; 8]));
        KeyedHash { k0, k1: k1 | 1 }
    }
}

/// A fresh random key: a map of network-supplied keys gets its own (as `RandomState` does).
impl Default for KeyedHash {
    fn default() -> Self {
        KeyedHash::random()
    }
}

impl BuildHasher for KeyedHash {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.k0,
            k: self.k1,
        }
    }
}

/// Folded multiply-mix over 8-byte words (the construction of foldhash/ahash's fallback).
#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher {
    h: u64,
    k: u64,
}

impl KeyedHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        let m = u128::from(self.h ^ v) * u128::from(self.k);
        self.h = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    fn finish(&self) -> u64 {
        self.h.rotate_left(23) ^ self.k
    }
}

/// A message identifier: source queue-manager GUID and its MessageID ordinal.
pub type MessageKey = (Guid, u32);

/// Where the first copy of a message was stored: store partition and the append's ticket. A
/// duplicate may be acknowledged only once that copy is durable.
pub type Origin = (usize, u64);

/// The origin of a message whose first copy is being stored right now (its ticket is not known
/// yet): a duplicate must wait for [`DuplicateTable::set_origin`], never be acknowledged at once.
pub const PENDING: Origin = (usize::MAX, u64::MAX);

/// The bounded history of recently seen message identifiers.
#[derive(Debug)]
pub struct DuplicateTable {
    capacity: usize,
    max_age_ms: u64,
    /// Last time each identifier was seen, and where its first copy went.
    seen: HashMap<MessageKey, (u64, Origin), KeyedHash>,
    /// One entry per key, in the order of the time recorded with it (older first). An entry
    /// whose key was seen again since carries a stale time and is refreshed when it surfaces.
    order: VecDeque<(MessageKey, u64)>,
    last_cleanup_ms: u64,
}

impl DuplicateTable {
    pub fn new(capacity: usize, max_age_ms: u64) -> Self {
        let capacity = capacity.max(1);
        DuplicateTable {
            capacity,
            max_age_ms,
            seen: HashMap::with_capacity_and_hasher(capacity + 1, KeyedHash::random()),
            order: VecDeque::with_capacity(capacity + 1),
            last_cleanup_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `key` at `now_ms` with the place its copy is about to be stored. Returns the
    /// origin of the first copy when it was already there: the message is a duplicate and is to
    /// be discarded (after its session-level accounting).
    pub fn check_and_insert(
        &mut self,
        key: MessageKey,
        now_ms: u64,
        origin: Origin,
    ) -> Option<Origin> {
        // One hash lookup for the common case (a new identifier): the entry either holds the
        // first copy's origin or takes this one. The table may exceed its capacity by this one
        // entry until the eviction below (it is allocated for capacity + 1).
        match self.seen.entry(key) {
            Entry::Occupied(mut e) => {
                let (t, o) = e.get_mut();
                *t = now_ms;
                return Some(*o);
            }
            Entry::Vacant(e) => {
                e.insert((now_ms, origin));
            }
        }
        self.order.push_back((key, now_ms));
        while self.seen.len() > self.capacity {
            self.evict_oldest();
        }
        None
    }

    /// Sets where the copy recorded by `check_and_insert` was stored, once the append returned
    /// its ticket.
    pub fn set_origin(&mut self, key: &MessageKey, origin: Origin) {
        if let Some((_, o)) = self.seen.get_mut(key) {
            *o = origin;
        }
    }

    /// Forgets `key`: its message was not stored after all (the store refused it), so a resend
    /// must be taken, not dropped as a duplicate.
    pub fn remove(&mut self, key: &MessageKey) {
        self.seen.remove(key);
    }

    fn evict_oldest(&mut self) {
        while let Some((key, t)) = self.order.pop_front() {
            // Removing first costs one lookup in the common case (the oldest entry was not seen
            // again); an entry seen again since goes back in with its newer time (rare: resends).
            match self.seen.remove(&key) {
                Some(v) if v.0 != t => {
                    self.seen.insert(key, v);
                    self.order.push_back((key, v.0));
                }
                Some(_) => return,
                None => {}
            }
        }
    }

    /// Drops entries older than the cleanup period; runs at most once per period.
    pub fn cleanup(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_cleanup_ms) < self.max_age_ms {
            return;
        }
        self.last_cleanup_ms = now_ms;
        let cutoff = now_ms.saturating_sub(self.max_age_ms);
        let mut n = self.order.len();
        while n > 0 {
            n -= 1;
            let Some((key, t)) = self.order.pop_front() else {
                break;
            };
            match self.seen.get(&key).map(|v| v.0) {
                Some(latest) if latest < cutoff => {
                    self.seen.remove(&key);
                }
                Some(latest) => self.order.push_back((key, latest.max(t))),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u32) -> MessageKey {
        (Guid([7; 16]), n)
    }

    #[test]
    fn duplicates_are_found_by_the_full_identifier() {
        let mut t = DuplicateTable::new(10, 1000);
        assert_eq!(t.check_and_insert(k(1), 0, (0, 5)), None);
        t.set_origin(&k(1), (1, 6));
        assert_eq!(
            t.check_and_insert(k(1), 1, (0, 9)),
            Some((1, 6)),
            "the first copy's place"
        );
        // Same ordinal from another queue manager is not a duplicate.
        assert_eq!(t.check_and_insert((Guid([8; 16]), 1), 2, (0, 0)), None);
        // A message the store refused is forgotten, so its resend is taken.
        t.remove(&k(1));
        assert_eq!(t.check_and_insert(k(1), 3, (0, 0)), None);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_seen() {
        let mut t = DuplicateTable::new(3, 1_000_000);
        for n in 1..=3 {
            t.check_and_insert(k(n), u64::from(n), (0, 0));
        }
        // Seeing 1 again makes 2 the oldest.
        assert!(t.check_and_insert(k(1), 10, (0, 0)).is_some());
        assert!(t.check_and_insert(k(4), 11, (0, 0)).is_none());
        assert_eq!(t.len(), 3);
        assert!(
            t.check_and_insert(k(1), 12, (0, 0)).is_some(),
            "1 was refreshed and kept"
        );
        assert!(
            t.check_and_insert(k(2), 13, (0, 0)).is_none(),
            "2 was evicted"
        );
        for n in 0..10_000 {
            t.check_and_insert(k(100 + n), 100 + u64::from(n), (0, 0));
        }
        assert_eq!(t.len(), 3);
        assert!(t.order.len() <= 3, "the order queue is bounded too");
    }

    #[test]
    fn cleanup_purges_entries_older_than_the_period() {
        let mut t = DuplicateTable::new(100, 1_800_000);
        t.check_and_insert(k(1), 0, (0, 0));
        t.check_and_insert(k(2), 1_000_000, (0, 0));
        t.cleanup(1_800_001);
        assert!(
            t.check_and_insert(k(1), 1_800_002, (0, 0)).is_none(),
            "1 was purged"
        );
        assert!(
            t.check_and_insert(k(2), 1_800_003, (0, 0)).is_some(),
            "2 is younger than the period"
        );
    }
}
