//! Waking the engine's shards from other threads: the waker the daemon installs, each
//! partition's commit notification (its owning shard's eventfd), and the shards waiting for
//! another partition's durability to advance.

use std::sync::atomic::Ordering;

use crate::store::{QueueStore, StoreError};

use super::Broker;

impl<S: QueueStore> Broker<S> {
    /// Installs the function that wakes shard `i` (its engine loop) from another thread.
    pub fn set_waker(&self, f: Box<dyn Fn(usize) + Send + Sync>) {
        let _ = self.waker.set(f);
    }

    /// Wakes shard `shard` (its engine loop runs a turn soon).
    pub fn wake(&self, shard: usize) {
        if let Some(w) = self.waker.get() {
            w(shard);
        }
    }

    /// Makes partition `p`'s commit completions signal eventfd `fd` (its owning shard's), so
    /// the shard learns of durability without waiting for it.
    pub fn set_commit_notify(&self, p: usize, fd: std::os::fd::RawFd) -> Result<(), StoreError> {
        self.partition(p).store.set_notify(fd)
    }

    /// Shard `shard` waits for partition `p` (owned by another shard) to become durable
    /// further; the owner wakes it when it sees a commit complete. The caller reads
    /// [`Broker::durable_mark`] again after this: both are SeqCst, as is the committer's
    /// publication of the mark before it reads the bits (`wake_durable_interest`), so either
    /// the waiter sees the new mark or the committer sees the bit (no wake is lost).
    pub fn note_durable_interest(&self, p: usize, shard: usize) {
        if let Some(i) = self.durable_interest.get(p) {
            i.fetch_or(1 << (shard % 64), Ordering::SeqCst);
        }
    }

    /// Partition `p`'s durability advanced: wake the other shards waiting for it.
    pub fn wake_durable_interest(&self, p: usize, me: usize) {
        let Some(i) = self.durable_interest.get(p) else {
            return;
        };
        let own = 1u64 << (me % 64);
        if i.load(Ordering::SeqCst) & !own == 0 {
            return;
        }
        // The caller's own interest stays: a shard whose commit of another shard's partition
        // moved the mark may still wait there (it set its bit just before), and clearing it
        // would leave nobody to wake it when the owner reaps the rest (found by the simulation
        // with two shards, seed 7774064181399508077).
        let bits = i.fetch_and(own, Ordering::SeqCst) & !own;
        for b in 0..64usize {
            if bits & (1 << b) != 0 {
                // Shard indexes are below the partition count; `wake` maps them to shards.
                for s in (b..self.partitions.len()).step_by(64) {
                    self.wake(s);
                }
            }
        }
    }

    /// Shard `shard` has an AMQP consumer with credit and nothing to send in partition `p`:
    /// whoever sees something new there ([`Partition::arrivals`](super::Partition) moved) at
    /// its end of turn wakes it ([`Broker::wake_arrival_interest`]). The caller looks at the
    /// partition again after this (under its lock), so no arrival is missed.
    pub fn note_arrival_interest(&self, p: usize, shard: usize) {
        if let Some(i) = self.arrival_interest.get(p) {
            i.fetch_or(1 << (shard % 64), Ordering::SeqCst);
        }
    }

    /// Whether any shard waits for an arrival in partition `p` (no lock).
    pub fn has_arrival_interest(&self, p: usize) -> bool {
        self.arrival_interest
            .get(p)
            .is_some_and(|i| i.load(Ordering::SeqCst) != 0)
    }

    /// Something arrived in partition `p`: wakes every shard waiting for it and forgets their
    /// interest; returns the bits woken (the caller's own bit included, for its own links).
    pub fn wake_arrival_interest(&self, p: usize, me: usize) -> u64 {
        let Some(i) = self.arrival_interest.get(p) else {
            return 0;
        };
        let bits = i.swap(0, Ordering::SeqCst);
        for b in 0..64usize {
            if b != me % 64 && bits & (1 << b) != 0 {
                for s in (b..self.partitions.len()).step_by(64) {
                    self.wake(s);
                }
            }
        }
        bits
    }
}
