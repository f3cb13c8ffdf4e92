//! Duplicate detection (MS-MQQB 3.1.5.8.1, 3.1.6.7, DIGEST §10.5): the MessageIDHistoryTable of
//! non-transactional message identifiers, bounded (`RemoveDuplicateSize`, Windows 10,000) and
//! purged of old entries every `RemoveDuplicateCleanup` (Windows 30 minutes).
//!
//! The full 20-byte identifier (source QM GUID + MessageID) is compared: MS-MQQB 3.1.5.8.1 names
//! only the ordinal, but 3.1.5.8.2 stores both, and ordinals of different senders collide.

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

/// One remembered identifier, in the ring of [`DuplicateTable`].
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: MessageKey,
    /// Last time the identifier was seen.
    seen_ms: u64,
    /// The time it took its place in the ring with (the ring is in that order, oldest at
    /// `head`); older than `seen_ms` when it was seen again since.
    placed_ms: u64,
    origin: Origin,
    /// False once forgotten (`remove`, `cleanup`): the slot waits to be reused.
    live: bool,
}

/// Index entries: `(hash high 32 bits) << 32 | (slot + 1)`; 0 is an empty place.
const EMPTY: u64 = 0;

/// The bounded history of recently seen message identifiers.
///
/// Laid out for the per-message path, where the whole table is usually out of the cache:
/// the entries sit in a ring of `capacity` slots in the order they were placed (the oldest is
/// the next to go, or to move up if it was seen again since), and an open-addressing index
/// of 8-byte entries (linear probing, at most half full) maps an identifier's hash to its
/// slot, with 32 bits of the hash kept in the entry so a probe rarely touches a slot that is
/// not the one sought. A new identifier costs one index probe, one slot write at the ring's
/// head and the removal of the evicted identifier's index entry.
#[derive(Debug)]
pub struct DuplicateTable {
    capacity: usize,
    max_age_ms: u64,
    hasher: KeyedHash,
    /// At most `capacity`; grows until full, then each new identifier reuses `head`'s slot.
    slots: Vec<Slot>,
    /// The oldest slot once the ring is full (0 while it grows).
    head: usize,
    /// Live entries.
    live: usize,
    index: Vec<u64>,
    mask: usize,
    last_cleanup_ms: u64,
}

impl DuplicateTable {
    pub fn new(capacity: usize, max_age_ms: u64) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize / 4);
        let places = (capacity * 2).next_power_of_two();
        DuplicateTable {
            capacity,
            max_age_ms,
            hasher: KeyedHash::random(),
            slots: Vec::with_capacity(capacity),
            head: 0,
            live: 0,
            index: vec![EMPTY; places],
            mask: places - 1,
            last_cleanup_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The hash's high 32 bits: they choose the home place (`& mask`) and filter probes.
    fn tag(&self, key: &MessageKey) -> u32 {
        let mut h = self.hasher.build_hasher();
        let g = key.0 .0;
        h.write_u64(u64::from_le_bytes(g[..8].try_into().unwrap_or([0; 8])));
        h.write_u64(u64::from_le_bytes(g[8..].try_into().unwrap_or([0; 8])));
        h.write_u32(key.1);
        (h.finish() >> 32) as u32
    }

    /// Where `key`'s index entry is (Ok) or the empty place it would take (Err).
    fn find(&self, key: &MessageKey, tag: u32) -> Result<usize, usize> {
        let mut i = tag as usize & self.mask;
        loop {
            let e = self.index[i];
            if e == EMPTY {
                return Err(i);
            }
            if (e >> 32) as u32 == tag {
                let s = &self.slots[(e as u32 - 1) as usize];
                if s.key == *key {
                    return Ok(i);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Empties index place `i`, moving later entries of the same probe run back (linear
    /// probing's deletion without tombstones, so probes stay short however many go).
    fn unindex(&mut self, mut i: usize) {
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.index[j];
            if e == EMPTY {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            // Move e back into the hole at i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.index[i] = e;
                i = j;
            }
        }
        self.index[i] = EMPTY;
    }

    /// Forgets the live entry of slot `s` from the index.
    fn forget_slot(&mut self, s: usize) {
        let key = self.slots[s].key;
        let tag = self.tag(&key);
        if let Ok(i) = self.find(&key, tag) {
            self.unindex(i);
        }
        self.slots[s].live = false;
        self.live -= 1;
    }

    /// A slot for a new entry: a fresh one while the ring grows, else `head`'s, whose entry is
    /// evicted (an entry seen again since it was placed moves up instead, to the ring's
    /// newest end, and the next oldest is looked at).
    fn take_slot(&mut self) -> usize {
        if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key: (Guid([0; 16]), 0),
                seen_ms: 0,
                placed_ms: 0,
                origin: (0, 0),
                live: false,
            });
            return self.slots.len() - 1;
        }
        // Each slot moves up at most once (its placed time becomes its seen time), so this
        // ends within two turns of the ring.
        loop {
            let s = self.head;
            self.head = (self.head + 1) % self.capacity;
            let slot = self.slots[s];
            if slot.live && slot.seen_ms != slot.placed_ms {
                self.slots[s].placed_ms = slot.seen_ms;
                continue;
            }
            if slot.live {
                self.forget_slot(s);
            }
            return s;
        }
    }

    /// Loads the index entries a new identifier will touch, its own (`tag`) and, with a full
    /// ring, the one of the identifier at the ring's head that it will likely evict, one right
    /// after the other: the rest of a message's path has evicted the index from the caches, and
    /// two independent loads wait for memory once, where `find` then `take_slot` waited twice
    /// (perf/results/dedup-ring-2026-11-27.md).
    #[inline]
    fn load_both(&self, tag: u32) {
        let own = self.index[tag as usize & self.mask];
        let head = match self.slots.get(self.head) {
            Some(h) if h.live && self.slots.len() == self.capacity => {
                self.index[self.tag(&h.key) as usize & self.mask]
            }
            _ => EMPTY,
        };
        std::hint::black_box((own, head));
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
        let tag = self.tag(&key);
        self.load_both(tag);
        if let Ok(i) = self.find(&key, tag) {
            let s = &mut self.slots[(self.index[i] as u32 - 1) as usize];
            s.seen_ms = now_ms;
            return Some(s.origin);
        }
        let s = self.take_slot();
        self.slots[s] = Slot {
            key,
            seen_ms: now_ms,
            placed_ms: now_ms,
            origin,
            live: true,
        };
        self.live += 1;
        // The eviction may have moved entries of the index: look for the place again.
        if let Err(i) = self.find(&key, tag) {
            self.index[i] = (u64::from(tag) << 32) | (s as u64 + 1);
        }
        None
    }

    /// Sets where the copy recorded by `check_and_insert` was stored, once the append returned
    /// its ticket.
    pub fn set_origin(&mut self, key: &MessageKey, origin: Origin) {
        let tag = self.tag(key);
        if let Ok(i) = self.find(key, tag) {
            self.slots[(self.index[i] as u32 - 1) as usize].origin = origin;
        }
    }

    /// Forgets `key`: its message was not stored after all (the store refused it), so a resend
    /// must be taken, not dropped as a duplicate.
    pub fn remove(&mut self, key: &MessageKey) {
        let tag = self.tag(key);
        if let Ok(i) = self.find(key, tag) {
            let s = (self.index[i] as u32 - 1) as usize;
            self.unindex(i);
            self.slots[s].live = false;
            self.live -= 1;
        }
    }

    /// Drops entries older than the cleanup period; runs at most once per period. The ring is
    /// rebuilt with the entries that stay, oldest first.
    pub fn cleanup(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_cleanup_ms) < self.max_age_ms {
            return;
        }
        self.last_cleanup_ms = now_ms;
        let cutoff = now_ms.saturating_sub(self.max_age_ms);
        let n = self.slots.len();
        let mut kept: Vec<Slot> = (0..n)
            .map(|k| self.slots[(self.head + k) % n.max(1)])
            .filter(|s| s.live && s.seen_ms >= cutoff)
            .collect();
        for s in &mut kept {
            s.placed_ms = s.seen_ms.max(s.placed_ms);
        }
        self.index.fill(EMPTY);
        self.slots.clear();
        self.head = 0;
        self.live = 0;
        for s in kept {
            let tag = self.tag(&s.key);
            if let Err(i) = self.find(&s.key, tag) {
                self.slots.push(s);
                self.index[i] = (u64::from(tag) << 32) | self.slots.len() as u64;
                self.live += 1;
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

    /// The table as it was before the ring (a HashMap and a VecDeque of the order), kept here
    /// as the reference the ring must agree with.
    struct Model {
        capacity: usize,
        max_age_ms: u64,
        seen: std::collections::HashMap<MessageKey, (u64, Origin)>,
        order: std::collections::VecDeque<(MessageKey, u64)>,
        last_cleanup_ms: u64,
    }

    impl Model {
        fn new(capacity: usize, max_age_ms: u64) -> Self {
            Model {
                capacity,
                max_age_ms,
                seen: Default::default(),
                order: Default::default(),
                last_cleanup_ms: 0,
            }
        }
        fn check_and_insert(
            &mut self,
            key: MessageKey,
            now_ms: u64,
            origin: Origin,
        ) -> Option<Origin> {
            if let Some((t, o)) = self.seen.get_mut(&key) {
                *t = now_ms;
                return Some(*o);
            }
            // Room first, then the new identifier at the newest end. (The old table inserted
            // first and then evicted, so an identifier seen again since it was placed moved up
            // behind the new one, and when every older one had been seen again the new one
            // itself was evicted, so its duplicate was taken. The ring evicts first.)
            if self.seen.len() >= self.capacity {
                while let Some((k, t)) = self.order.pop_front() {
                    match self.seen.remove(&k) {
                        Some(v) if v.0 != t => {
                            self.seen.insert(k, v);
                            self.order.push_back((k, v.0));
                        }
                        Some(_) => break,
                        None => {}
                    }
                }
            }
            self.seen.insert(key, (now_ms, origin));
            self.order.push_back((key, now_ms));
            None
        }
        fn set_origin(&mut self, key: &MessageKey, origin: Origin) {
            if let Some((_, o)) = self.seen.get_mut(key) {
                *o = origin;
            }
        }
        fn cleanup(&mut self, now_ms: u64) {
            if now_ms.saturating_sub(self.last_cleanup_ms) < self.max_age_ms {
                return;
            }
            self.last_cleanup_ms = now_ms;
            let cutoff = now_ms.saturating_sub(self.max_age_ms);
            for _ in 0..self.order.len() {
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

    /// The ring answers every check as the reference table does, over long random runs with
    /// repeats (hits and refreshes), evictions, set_origin and cleanups, at several capacities.
    #[test]
    fn the_ring_agrees_with_the_reference_table() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (capacity, keys) in [
            (1usize, 4u64),
            (3, 8),
            (64, 100),
            (1_000, 3_000),
            (10_000, 12_000),
        ] {
            let max_age = 5_000;
            let mut ring = DuplicateTable::new(capacity, max_age);
            let mut model = Model::new(capacity, max_age);
            let mut now = 0u64;
            for step in 0..60_000u64 {
                now += rnd() % 3;
                let r = rnd();
                let key = (Guid([(r % 3) as u8; 16]), ((r >> 8) % keys) as u32);
                match r % 100 {
                    0 => {
                        ring.cleanup(now);
                        model.cleanup(now);
                    }
                    1..=10 => {
                        ring.set_origin(&key, (1, step));
                        model.set_origin(&key, (1, step));
                    }
                    _ => {
                        let a = ring.check_and_insert(key, now, (0, step));
                        let b = model.check_and_insert(key, now, (0, step));
                        assert_eq!(a, b, "capacity {capacity}, step {step}, key {key:?}");
                    }
                }
                assert_eq!(
                    ring.len(),
                    model.seen.len(),
                    "capacity {capacity}, step {step}"
                );
            }
        }
    }

    /// The old table, when every identifier it held had been seen again since it was placed,
    /// evicted the one it had just inserted: that message's duplicate was then taken.
    #[test]
    fn a_new_identifier_is_kept_when_every_older_one_was_seen_again() {
        let mut t = DuplicateTable::new(2, 1_000_000);
        t.check_and_insert(k(1), 1, (0, 1));
        t.check_and_insert(k(2), 2, (0, 2));
        assert!(t.check_and_insert(k(1), 3, (0, 0)).is_some());
        assert!(t.check_and_insert(k(2), 4, (0, 0)).is_some());
        assert_eq!(t.check_and_insert(k(3), 5, (0, 3)), None);
        assert_eq!(
            t.check_and_insert(k(3), 6, (0, 0)),
            Some((0, 3)),
            "the newest identifier was forgotten: its duplicate would be stored"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn removed_identifiers_are_taken_again_and_the_rest_stay() {
        let mut t = DuplicateTable::new(100, 1_000_000);
        for n in 0..100 {
            t.check_and_insert(k(n), u64::from(n), (0, u64::from(n)));
        }
        for n in (0..100).step_by(3) {
            t.remove(&k(n));
        }
        for n in 0..100 {
            let again = t.check_and_insert(k(n), 200, (9, 9));
            if n % 3 == 0 {
                assert_eq!(again, None, "{n} was removed");
            } else {
                assert_eq!(again, Some((0, u64::from(n))), "{n} stays");
            }
        }
        assert_eq!(t.len(), 100);
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
        assert!(t.slots.len() <= 3, "the ring is bounded too");
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
