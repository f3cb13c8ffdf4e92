//! One store partition and what it owes at its next group commit: the removals to release once
//! durable and the transactional sequence state records (written, replaced and dropped in the
//! internal queue [`TXN_STATE_QUEUE`]); and [`PartitionGuard`], the borrow of one partition by
//! the thread that runs it (a thread holds at most one).
//!
//! Ownership (issue 10): a partition is touched only by the shard that runs it (partition `p`
//! by shard `p % shards`). It is kept in an [`OwnedCell`], not behind a lock: a borrow never
//! waits. Another thread's borrow while the shards run is counted
//! (`lior_partition_locks_foreign_total`) and logged, and aborts with
//! `LIOR_PARTITION_OWNERSHIP=strict` (the test suite's setting); two borrows at once are a broken
//! ownership rule and panic rather than wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::qm::dedup::DuplicateTable;
use std::sync::Arc;

use atomic_refcell::{AtomicRefCell, AtomicRefMut};

use crate::qm::txn::{IncomingSequence, TxKey, TxnTable};
use crate::store::{
    Class, LookupId, MessageId, MessageMeta, QueueId, QueueStore, Reservation, Select, StoreError,
    Ticket, EXPIRY_NEVER,
};

use super::{COMMIT_WAIT_ROUNDS_MAX, TXN_STALE_RECORDS_MAX, TXN_STALE_TRIES_MAX};

/// Internal store queue holding the persistent transactional sequence states (one record per
/// sender and queue; the message id field is the sender GUID and the queue id).
pub const TXN_STATE_QUEUE: QueueId = QueueId(0xFFFF_FF10);

std::thread_local! {
    /// Partition guards this thread holds (at most one: no code needs two, and a thread
    /// holding two partitions would be running two shards' state in one step).
    static PARTITION_GUARDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

std::thread_local! {
    /// The shard this thread runs and the number of shards, set by the daemon's shard factory
    /// (see [`set_thread_shard`]); None on every other thread.
    static THREAD_SHARD: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
}

/// Set while the engine's shards run (`lior serve`): from then on a partition borrowed by a
/// thread that does not run it (another shard, the API, SRMP) is counted as foreign.
static SHARDS_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Foreign borrows logged at most (each names its call site; the metric counts them all).
const FOREIGN_LOCK_SITES_LOGGED_MAX: usize = 64;
static FOREIGN_LOCKS_LOGGED: AtomicUsize = AtomicUsize::new(0);

/// Marks the calling thread as the thread of `shard` (of `shards`): partition `p` is run by
/// shard `p % shards`, and a borrow of another partition from here is foreign.
pub fn set_thread_shard(shard: usize, shards: usize) {
    THREAD_SHARD.with(|c| c.set(Some((shard, shards.max(1)))));
}

/// Tells the probe whether the engine's shards run (see [`SHARDS_RUNNING`]).
pub fn set_shards_running(running: bool) {
    SHARDS_RUNNING.store(running, Ordering::SeqCst);
}

/// Whether the calling thread may touch partition `p` without reaching into another shard:
/// it runs `p`, or no shard runs (start-up, shutdown, tests, the simulation).
pub fn thread_runs_partition(p: usize) -> bool {
    match THREAD_SHARD.with(std::cell::Cell::get) {
        Some((s, n)) => p % n == s,
        None => !SHARDS_RUNNING.load(Ordering::Relaxed),
    }
}

/// Whether a foreign borrow stops the process (`LIOR_PARTITION_OWNERSHIP=strict`, set by the
/// test suite for every server it starts, so any path that still reaches into another shard's
/// partition fails the test that takes it).
fn ownership_strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| {
        std::env::var("LIOR_PARTITION_OWNERSHIP").is_ok_and(|v| v.eq_ignore_ascii_case("strict"))
    })
}

/// Notes a foreign borrow taken at `site` (the first [`FOREIGN_LOCK_SITES_LOGGED_MAX`] are
/// logged; with [`ownership_strict`] the process aborts instead).
pub(super) fn note_foreign_lock(p: usize, site: &'static std::panic::Location<'static>) {
    let shard = THREAD_SHARD.with(std::cell::Cell::get).map(|(s, _)| s);
    if ownership_strict() {
        tracing::error!(partition = p, ?shard, %site, "partition borrowed by a thread that does not run it (LIOR_PARTITION_OWNERSHIP=strict): aborting");
        eprintln!("lior: partition {p} borrowed at {site} by a thread that does not run it (shard {shard:?}); LIOR_PARTITION_OWNERSHIP=strict aborts");
        std::process::abort();
    }
    if FOREIGN_LOCKS_LOGGED.fetch_add(1, Ordering::Relaxed) < FOREIGN_LOCK_SITES_LOGGED_MAX {
        tracing::warn!(partition = p, ?shard, %site, "partition borrowed by a thread that does not run it");
    }
}

/// Something only the thread running it touches (a store partition, its FinalAck address
/// table), kept without a lock: [`OwnedCell::borrow`] never waits. The owner rule (checked by
/// `Broker::partition`'s probe) makes two borrows at once impossible; should it ever be broken,
/// the second borrow panics with the cell's name instead of waiting or racing.
#[derive(Debug)]
pub struct OwnedCell<T> {
    cell: AtomicRefCell<T>,
}

impl<T> OwnedCell<T> {
    pub fn new(value: T) -> Self {
        OwnedCell {
            cell: AtomicRefCell::new(value),
        }
    }

    /// The value, for the thread that runs it. Panics if it is borrowed already (by another
    /// thread: an ownership bug; by this one: a nested borrow, also a bug).
    #[track_caller]
    pub fn borrow(&self, what: &'static str, index: usize) -> AtomicRefMut<'_, T> {
        match self.cell.try_borrow_mut() {
            Ok(b) => b,
            Err(_) => panic!(
                "{what} {index} is borrowed already: two threads (or two nested steps) in one \
                 shard's state; its owner alone may touch it (issue 10)"
            ),
        }
    }

    pub fn into_inner(self) -> T {
        self.cell.into_inner()
    }
}

/// A borrowed partition. A thread holds at most one (checked in debug builds).
pub struct PartitionGuard<'a, S> {
    guard: AtomicRefMut<'a, Partition<S>>,
}

impl<'a, S> PartitionGuard<'a, S> {
    #[track_caller]
    pub(super) fn borrow(m: &'a OwnedCell<Partition<S>>, index: usize) -> Self {
        PARTITION_GUARDS.with(|c| {
            debug_assert_eq!(
                c.get(),
                0,
                "a thread borrows a second store partition while holding one"
            );
            c.set(c.get() + 1);
        });
        PartitionGuard {
            guard: m.borrow("store partition", index),
        }
    }
}

impl<S> Drop for PartitionGuard<'_, S> {
    fn drop(&mut self) {
        PARTITION_GUARDS.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

impl<S> std::ops::Deref for PartitionGuard<'_, S> {
    type Target = Partition<S>;
    fn deref(&self) -> &Partition<S> {
        &self.guard
    }
}

impl<S> std::ops::DerefMut for PartitionGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut Partition<S> {
        &mut self.guard
    }
}

/// An expired message leaving its queue: where it is, and its frame when a
/// NACK_RECEIVE_TIMEOUT is owed for it.
pub(super) type ExpiredItem = (QueueId, LookupId, Option<Vec<u8>>);

/// Expired messages copied into a dead-letter queue whose originals go once the copies are
/// durable.
#[derive(Debug, Default)]
pub(super) struct ExpiryWave {
    /// The partitions holding copies, with the highest copy ticket in each.
    pub(super) copies: Vec<(usize, Ticket)>,
    pub(super) items: Vec<ExpiredItem>,
    /// Copies sent to another shard's dead-letter queue whose placement has not come back.
    pub(super) unanswered: usize,
    /// A copy was refused by its dead-letter queue: the originals stay (found again by the next
    /// scan; a copy too many, never none).
    pub(super) refused: bool,
}

/// One store partition with the work it owes at its next commit.
#[derive(Debug)]
pub struct Partition<S> {
    pub store: S,
    /// This partition's index among the broker's partitions.
    pub index: usize,
    /// Reservations to release once their removal is durable.
    pending_release: Vec<Reservation>,
    /// Transactional sequence states changed since the last commit, written once per commit.
    pub(super) txn_dirty: HashMap<TxKey, IncomingSequence>,
    /// Where each sequence's state record lies in this partition (removed when replaced).
    pub(super) txn_records: HashMap<TxKey, LookupId>,
    /// State records to remove that were not visible yet when replaced, with the commits they
    /// have waited (a record that never shows up is left to the start-up clean-up).
    txn_stale: Vec<(LookupId, u16)>,
    /// Sequences the table forgot (evicted): their records here go at the next commit.
    pub(super) txn_forget: Vec<TxKey>,
    /// The incoming transactional sequences of this partition's queues (MS-MQQB's
    /// TxSequenceStates, keyed by sender and queue; `limits.tx_sequences_max` states each),
    /// checked and moved only under this partition, in the same step as the append.
    pub(super) txn: TxnTable,
    /// The durable watermark, published by every commit (whoever runs it) for shards that
    /// wait on this partition without locking it (see `Broker::durable_mark`).
    pub(super) durable_mark: Arc<AtomicU64>,
    /// The duplicate table of this partition's queues (MS-MQQB's MessageIDHistoryTable, one
    /// per owner: `RemoveDuplicateSize` entries each), read and written only under this
    /// partition, in the same step as the append it records.
    pub(super) dedup: DuplicateTable,
    /// Messages handed to AMQP consumers and not settled yet (for the consumers of every shard).
    pub inflight: InFlight,
    /// Moves whenever a commit of this partition saw new messages or a higher durable mark
    /// (something may have become visible): AMQP consumers waiting here are woken for it.
    pub arrivals: u64,
    /// The store's message count and durable mark at the last commit (for `arrivals`).
    arrivals_seen: (u64, Ticket),
    /// Expired messages of this partition whose dead-letter copies wait for the disk.
    pub(super) expiry_wave: Option<ExpiryWave>,
    /// Frames of expired messages whose senders asked for a NACK_RECEIVE_TIMEOUT, for the
    /// caller of the expiry to send (`Broker::take_expiry_nacks`).
    pub(super) expiry_nacks: Vec<(u32, Vec<u8>)>,
    /// (outown) The sender's side of the transactional sequences of the outgoing queues stored
    /// here, by outgoing queue id (MS-MQQB TxOutgoingSequence): numbered, marked sent and
    /// acknowledged only by this partition's owner, in the same step as the append or removal.
    pub(super) tx_out: HashMap<u32, super::TxOut>,
    /// (outown) Outgoing queues of this partition whose transactional sequence progressed (an
    /// OrderAck or a FinalAck removed messages): their owner restarts their resend schedule.
    pub(super) tx_progress: Vec<u32>,
    /// (outown) Each outgoing queue's state as its owner last published it (on a change), read
    /// by the owner when it answers the API's `Lens` request.
    pub(super) out_status: HashMap<u32, crate::qm::outgoing_queue::OutStatus>,
}

/// Messages an AMQP consumer holds unsettled (so no other consumer gets them) and how many
/// times each was given back as failed (`modified` with delivery-failed), by (queue, lookup id).
/// Lives with the partition: its owner keeps it for the consumers of every shard (a consumer
/// on another shard fetches and settles by mail).
#[derive(Debug, Default)]
pub struct InFlight {
    held: std::collections::HashSet<(QueueId, LookupId)>,
    failed: HashMap<(QueueId, LookupId), u32>,
}

/// Unsettled AMQP deliveries one partition holds, over all consumers and shards.
pub const AMQP_INFLIGHT_PER_PARTITION_MAX: usize = 1 << 20;
/// Messages of one partition whose failed deliveries are counted (beyond it the oldest counts
/// are not kept: a later delivery says a lower delivery-count).
pub const AMQP_FAILED_COUNTS_PER_PARTITION_MAX: usize = 65_536;

impl InFlight {
    /// Whether a consumer holds the message.
    pub fn contains(&self, q: QueueId, l: LookupId) -> bool {
        self.held.contains(&(q, l))
    }
    /// Marks the message held; false when the table is full (send nothing more now).
    pub fn hold(&mut self, q: QueueId, l: LookupId) -> bool {
        if self.held.len() >= AMQP_INFLIGHT_PER_PARTITION_MAX {
            return false;
        }
        self.held.insert((q, l))
    }
    /// Gives the message back (released, link lost) or forgets it (removed).
    pub fn drop_held(&mut self, q: QueueId, l: LookupId) {
        self.held.remove(&(q, l));
    }
    /// Messages held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
    /// Counts one failed delivery of the message; returns the count.
    pub fn note_failed(&mut self, q: QueueId, l: LookupId) -> u32 {
        if self.failed.len() >= AMQP_FAILED_COUNTS_PER_PARTITION_MAX
            && !self.failed.contains_key(&(q, l))
        {
            return 0;
        }
        let c = self.failed.entry((q, l)).or_insert(0);
        *c = c.saturating_add(1);
        *c
    }
    /// Failed deliveries counted for the message.
    pub fn failed(&self, q: QueueId, l: LookupId) -> u32 {
        self.failed.get(&(q, l)).copied().unwrap_or(0)
    }
    /// The message left its queue: its count goes.
    pub fn forget(&mut self, q: QueueId, l: LookupId) {
        self.held.remove(&(q, l));
        self.failed.remove(&(q, l));
    }
}

impl<S: QueueStore> Partition<S> {
    /// A partition over `store` with its duplicate and transactional tables sized from
    /// `config` (`RemoveDuplicateSize`, `RemoveDuplicateCleanup`, `limits.tx_sequences_*`).
    pub fn new(store: S, index: usize, config: &crate::config::Config) -> Self {
        let p = &config.parameters;
        Partition {
            store,
            index,
            pending_release: Vec::new(),
            txn_dirty: HashMap::new(),
            txn_records: HashMap::new(),
            txn_stale: Vec::new(),
            txn_forget: Vec::new(),
            txn: TxnTable::new(super::txn_limits(config)),
            durable_mark: Arc::new(AtomicU64::new(0)),
            expiry_wave: None,
            expiry_nacks: Vec::new(),
            dedup: DuplicateTable::new(
                p.RemoveDuplicateSize as usize,
                u64::from(p.RemoveDuplicateCleanup),
            ),
            inflight: InFlight::default(),
            arrivals: 0,
            arrivals_seen: (0, Ticket(0)),
            tx_out: HashMap::new(),
            tx_progress: Vec::new(),
            out_status: HashMap::new(),
        }
    }

    /// Stages the removal of a state record, or remembers it until it is visible.
    pub(super) fn drop_txn_record(&mut self, l: LookupId) -> Result<(), StoreError> {
        self.drop_txn_record_try(l, 0)
    }

    fn drop_txn_record_try(&mut self, l: LookupId, tries: u16) -> Result<(), StoreError> {
        match self.store.receive(TXN_STATE_QUEUE, Select::Lookup(l))? {
            Some(r) => self.pending_release.push(r),
            None => {
                if self.txn_stale.len() < TXN_STALE_RECORDS_MAX && tries < TXN_STALE_TRIES_MAX {
                    self.txn_stale.push((l, tries + 1));
                }
            }
        }
        Ok(())
    }

    /// Writes what is owed and starts a group commit, then reaps completions; with `wait_for`,
    /// blocks until that ticket is durable. Returns the durable watermark. On an error the
    /// state records not yet written stay owed, so a later commit writes them.
    pub fn commit(&mut self, wait_for: Option<Ticket>) -> Result<Ticket, StoreError> {
        let forget = std::mem::take(&mut self.txn_forget);
        for key in forget {
            if let Some(l) = self.txn_records.remove(&key) {
                self.drop_txn_record(l)?;
            }
        }
        for (l, tries) in std::mem::take(&mut self.txn_stale) {
            self.drop_txn_record_try(l, tries)?;
        }
        let dirty: Vec<(TxKey, IncomingSequence)> = self.txn_dirty.drain().collect();
        for (i, (key, s)) in dirty.iter().enumerate() {
            let id = txn_record_id(key);
            // (seq_id, seq_no) and, after a move to a newer sequence, where the older stood.
            let mut bytes = [0u8; 24];
            bytes[..8].copy_from_slice(&s.seq_id.to_le_bytes());
            bytes[8..12].copy_from_slice(&s.seq_no.to_le_bytes());
            let len = match s.prior {
                Some((pid, pno)) => {
                    bytes[12..20].copy_from_slice(&pid.to_le_bytes());
                    bytes[20..].copy_from_slice(&pno.to_le_bytes());
                    24
                }
                None => 12,
            };
            let bytes = &bytes[..len];
            let meta = MessageMeta {
                priority: 0,
                class: Class::Recoverable,
                message_id: id,
                expiry_unix_s: EXPIRY_NEVER,
            };
            match self.store.append(TXN_STATE_QUEUE, &meta, bytes) {
                Ok(a) => {
                    // The previous record of this key goes (durable since an earlier commit).
                    if let Some(old) = self.txn_records.insert(*key, a.lookup_id) {
                        self.drop_txn_record(old)?;
                    }
                }
                Err(e) => {
                    for (k, s) in &dirty[i..] {
                        self.txn_dirty.entry(*k).or_insert(*s);
                    }
                    return Err(e);
                }
            }
        }
        self.store.flush()?;
        let mut mark = self.store.poll_durable(false)?;
        if let Some(t) = wait_for {
            // Each round waits for one batch; the batch holding `t` is at most the second one
            // from now (one may already be in flight), so the bound is generous.
            let mut rounds = 0;
            while !self.store.is_durable(t) {
                rounds += 1;
                if rounds > COMMIT_WAIT_ROUNDS_MAX {
                    return Err(StoreError::NotDurable);
                }
                mark = self.store.poll_durable(true)?;
                self.store.flush()?;
            }
        }
        let store = &mut self.store;
        let mut keep = Vec::new();
        for r in self.pending_release.drain(..) {
            if store.is_durable(r.ticket) {
                store.release(r)?;
            } else {
                keep.push(r);
            }
        }
        self.pending_release = keep;
        // SeqCst: pairs with the waiter's interest bit (`Broker::note_durable_interest`), so
        // either the waiter sees this mark or the committer sees its bit and wakes it.
        self.durable_mark.fetch_max(mark.0, Ordering::SeqCst);
        // Something may have become visible to AMQP consumers (new messages, or recoverable
        // ones now durable): the committer wakes those waiting (`Broker::wake_arrival_interest`).
        let seen = (self.store.stats().messages, mark);
        if seen.0 > self.arrivals_seen.0 || seen.1 > self.arrivals_seen.1 {
            self.arrivals = self.arrivals.wrapping_add(1);
        }
        self.arrivals_seen = seen;
        // Reclaim consumed segments and copy a few old live messages forward (bounded work per
        // call, so a few old messages never pin unbounded space).
        let m = self.store.maintain()?;
        if m.segments_reclaimed > 0 || m.messages_copied > 0 {
            tracing::debug!(
                reclaimed = m.segments_reclaimed,
                copied = m.messages_copied,
                "store maintenance"
            );
        }
        Ok(mark)
    }

    /// Keeps a reservation until its removal is durable, then releases it (at a later commit).
    pub fn release_when_durable(&mut self, r: Reservation) {
        self.pending_release.push(r);
    }

    /// Removes a message the remote queue manager acknowledged from its outgoing queue; the
    /// removal is committed with the next group commit.
    pub fn remove_delivered(&mut self, queue: QueueId, lookup: LookupId) -> Result<(), StoreError> {
        if let Some(r) = self.store.receive(queue, Select::Lookup(lookup))? {
            self.pending_release.push(r);
        }
        Ok(())
    }
}

fn txn_record_id(key: &TxKey) -> MessageId {
    let mut id = [0u8; 20];
    id[..16].copy_from_slice(&key.0 .0);
    id[16..].copy_from_slice(&key.1.to_le_bytes());
    MessageId(id)
}
