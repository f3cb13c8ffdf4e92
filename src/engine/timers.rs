//! The shard's timer heap: per-connection deadlines ordered by time, with lazy invalidation (a
//! popped entry counts only if its connection still holds that deadline); it knows nothing of
//! rings or protocols and never grows past its limit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One scheduled deadline: when, and for which slot and generation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct TimerEntry {
    pub(crate) deadline_ms: u64,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// A min-heap of deadlines. Changing a connection's deadline pushes a new entry and leaves the
/// old one in place; the caller rejects stale entries when they surface. When the heap reaches
/// its limit the caller rebuilds it from the live deadlines ([`TimerHeap::rebuild`]), so it
/// never holds more than `entries_max` entries.
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    entries_max: usize,
}

impl TimerHeap {
    pub(crate) fn new(entries_max: usize) -> Self {
        TimerHeap {
            heap: BinaryHeap::with_capacity(entries_max),
            entries_max,
        }
    }

    /// True when the next push needs a rebuild first.
    pub(crate) fn is_full(&self) -> bool {
        self.heap.len() >= self.entries_max
    }

    /// Adds an entry; returns false (and adds nothing) when the heap is full.
    pub(crate) fn push(&mut self, entry: TimerEntry) -> bool {
        if self.is_full() {
            return false;
        }
        self.heap.push(Reverse(entry));
        true
    }

    /// The earliest entry, live or stale.
    pub(crate) fn peek(&self) -> Option<TimerEntry> {
        self.heap.peek().map(|entry| entry.0)
    }

    pub(crate) fn pop(&mut self) -> Option<TimerEntry> {
        self.heap.pop().map(|entry| entry.0)
    }

    /// Replaces the contents with exactly the live deadlines (at most one per connection).
    pub(crate) fn rebuild(&mut self, live: impl Iterator<Item = TimerEntry>) {
        self.heap.clear();
        for entry in live {
            if self.heap.len() >= self.entries_max {
                break;
            }
            self.heap.push(Reverse(entry));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline_ms: u64, slot: u32) -> TimerEntry {
        TimerEntry {
            deadline_ms,
            slot,
            generation: 0,
        }
    }

    #[test]
    fn pops_in_deadline_order_and_refuses_when_full() {
        let mut heap = TimerHeap::new(3);
        assert!(heap.push(entry(30, 1)));
        assert!(heap.push(entry(10, 2)));
        assert!(heap.push(entry(20, 3)));
        assert!(!heap.push(entry(5, 4)));
        assert_eq!(heap.pop().map(|e| e.slot), Some(2));
        assert_eq!(heap.pop().map(|e| e.slot), Some(3));
        heap.rebuild([entry(7, 9)].into_iter());
        assert_eq!(heap.len(), 1);
        assert_eq!(heap.peek().map(|e| e.deadline_ms), Some(7));
    }
}
