//! The queue manager proper: takes each incoming UserMessage to its queue (or to the dead-letter
//! queue, never dropping it without a trace), and serves the local API (queue administration,
//! peek, receive).
//!
//! Storage is partitioned: one store (one append-only log, one group commit) per partition, as
//! many partitions as engine shards. Each queue has one owning partition (`QueueDef.partition`,
//! persisted in the catalog) and every message of the queue is stored there, whichever shard,
//! API call or SRMP post brings it, so the queue has one delivery order: priority, then FIFO.
//! Only the shard running a partition touches it (a message for another shard's queue is
//! handed to that shard, `qm::handoff`); the partition is kept in an [`OwnedCell`], borrowed
//! without a lock (one at a time per thread: see [`PartitionGuard`]). Queues whose messages an
//! older lior spread over several partitions and which start-up could not move are read from
//! every partition (see `spread`). The catalog and the outgoing table are snapshots read
//! without a lock and replaced whole by each change (see [`CatalogCell`]); MessageIdOrdinals
//! come from a per-thread lease ([`OrdinalLeases`]).
//!
//! This file holds the [`Broker`] itself (its state, its construction, the partition accessors),
//! its counters and API error, the broker's limits, and the small helpers its files share. Each
//! other file adds one subject: `partition` (a store partition and its commit), `recovery` (what
//! a start restores), `delivery` (an incoming message to its queue), `requests` (the local
//! API), `outgoing` (outgoing queues and OrderAcks), `admin_acks`, `expiry`, and `wakeups`
//! (waking shards from other threads).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::qm::catalog::{Catalog, CatalogCell, CatalogError, QueueDef};
use crate::qm::identity::{load_or_create_guid, OrdinalAllocator, OrdinalLeases};
use crate::qm::outgoing::{OutgoingTable, SharedOutgoing};
use crate::qm::routing::LocalIdentity;
use crate::qm::txn::TxnLimits;
use crate::store::{FileStore, QueueStore, StoreConfig, StoreError, Ticket, UringDisk};
use crate::wire::user::UserMessage;
use crate::wire::Guid;

mod access;
mod admin_acks;
mod delivery;
mod expiry;
mod file_ops;
mod final_acks;
mod journal;
mod outgoing;
mod partition;
mod recovery;
mod requests;
mod wakeups;

pub use access::{sender_id, QueueDetail, RightsChange, RightsEntry};
pub use admin_acks::{Owed, RecordStored, SystemRecord};
pub use delivery::{everywhere, message_meta, Delivered, Here, RouteCache, Routed, Verdict};
pub use final_acks::{
    final_ack_peers_file, wants_final_ack, FinalAckPeers, AWAITING_FINAL_ACK_MAX,
    AWAITING_FINAL_ACK_QUEUE, FINAL_ACK_PEERS_FILE, FINAL_ACK_PEERS_MAX,
};
pub use journal::{journal_base, journal_id, JOURNAL_QUEUE_BIT, JOURNAL_SUFFIX};
pub use outgoing::{AckSource, OrderAckIn, OutgoingInfo, TxAckStep, TxOut};
pub use partition::{
    set_shards_running, set_thread_shard, thread_runs_partition, InFlight, OwnedCell, Partition,
    PartitionGuard, TXN_STATE_QUEUE,
};
pub use recovery::{migrate_spread, MigrationReport};
pub use requests::{
    check_move, QueueInfo, QueueLens, Received, SendOutcome, SendRequest, Staged,
    TIME_TO_REACH_QUEUE_DEFAULT_S,
};

use recovery::{rebuild_tables, restore_txn_states};

// The broker's limits, in one place: each file of the broker takes its own from here.

/// Sequence states one sweep looks at most.
pub const TXN_SWEEP_BATCH_MAX: usize = 4_096;
/// Ignored OrderAcks/FinalAcks are logged once per peer per this many seconds.
pub const TX_ACK_REFUSED_LOG_INTERVAL_S: u32 = 60;
/// Peers whose last such log line is remembered (the memory starts over when full).
pub const TX_ACK_REFUSED_LOG_PEERS_MAX: usize = 1_024;
/// Destinations the route cache remembers at most (it starts over when full).
pub const ROUTE_CACHE_MAX: usize = 4_096;
/// Expired messages one expiry pass handles at most (the rest wait for the next pass).
pub const EXPIRY_BATCH_MAX: usize = 1_024;
/// Messages one receive call returns at most.
pub const RECEIVE_BATCH_MAX: usize = 10_000;
/// State records whose removal waits for them to become visible, per partition, at most.
const TXN_STALE_RECORDS_MAX: usize = 65_536;
/// Commits a replaced state record is waited for at most before it is left to the start-up
/// clean-up (which keeps the newest record of each sequence).
const TXN_STALE_TRIES_MAX: u16 = 1_000;
/// Batches `commit` waits for at most before it gives up (a store that never completes).
const COMMIT_WAIT_ROUNDS_MAX: u32 = 64;

/// The queue manager shared by the engine shards and the local API.
pub struct Broker<S> {
    pub identity: LocalIdentity,
    pub config: Config,
    /// Read without a lock (a snapshot); changed under a writer lock readers never take
    /// (`catalog.write()`, see [`CatalogCell`]; branch `stall`).
    catalog: CatalogCell,
    /// Each borrowed only by the shard running it (no lock: see [`OwnedCell`]).
    partitions: Vec<OwnedCell<Partition<S>>>,
    /// Per partition: its durable watermark, published by each commit (read without a lock by
    /// shards waiting for another shard's partition).
    durable_marks: Vec<Arc<AtomicU64>>,
    /// Unix seconds the full sequence table was last logged.
    txn_full_logged: std::sync::atomic::AtomicU32,
    pub counters: BrokerCounters,
    /// Rotates the partition receive starts at.
    receive_cursor: AtomicU64,
    /// The outgoing table: lookups read a published snapshot without a lock; a new
    /// destination, pause/resume and a new sequence id serialise on its writers' lock.
    outgoing: SharedOutgoing,
    /// MessageIdOrdinals, leased to each thread a block at a time (see [`OrdinalLeases`]).
    ordinals: OrdinalLeases,
    /// Per shard: new outgoing messages were queued for it by another thread.
    outgoing_dirty: Vec<AtomicBool>,
    /// Per partition: the shards (bit `s % 64`) waiting for its durability to advance, woken
    /// by the partition's owner once it sees a commit complete (see `wake_durable_interest`).
    durable_interest: Vec<AtomicU64>,
    /// Per partition: the shards (bit `s % 64`) with an AMQP consumer waiting for a message
    /// there (see `note_arrival_interest`).
    arrival_interest: Vec<AtomicU64>,
    /// Wakes a shard (set by the daemon once the engine runs).
    waker: OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
    /// Per partition: where each sending queue manager's FinalAcks go (see `final_acks`).
    /// Entry p is read and written only by the shard running partition p, like the partition.
    final_ack_peers: Vec<OwnedCell<FinalAckPeers>>,
    /// Bumped by every catalog change; the route cache is valid for one generation. Shared
    /// with `catalog`, which moves it after publishing each change.
    catalog_generation: Arc<AtomicU64>,
    /// Queues found at start-up with messages outside their owning partition (stored by a lior
    /// that spread a queue over the partitions): peek and receive look at every partition for
    /// them, in the older (not FIFO) order. New messages go to the owner only; S2 of issue 10
    /// migrates these at start-up.
    spread: std::collections::HashSet<u32>,
    /// Signs the messages this queue manager sends (`Parameters.Security.SigningCertificate`).
    pub signer: Option<crate::security::Signer>,
}

/// Counters of the queue manager, for metrics and tests.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Partition locks taken, while the shards run, by a thread that does not run the
    /// partition (issue 10 removes them; see `partition::thread_runs_partition`).
    pub foreign_partition_locks: AtomicU64,
    pub messages_stored: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub tx_rejected: AtomicU64,
    pub expired_on_arrival: AtomicU64,
    pub nacks_owed: AtomicU64,
    pub refused_store_errors: AtomicU64,
    pub messages_received: AtomicU64,
    pub admin_acks_queued: AtomicU64,
    pub acks_unroutable: AtomicU64,
    pub nacks_suppressed: AtomicU64,
    pub outgoing_sent_acked: AtomicU64,
    /// SRMP posts lior sent that did not get a 2xx: refused, a malformed answer or none in
    /// time (the message stays queued and is sent again).
    pub srmp_out_failures: AtomicU64,
    /// Receipts (delivery, commitment, stream) that arrived at the SRMP endpoint.
    pub srmp_receipts_received: AtomicU64,
    /// Stream receipts lior queued for the senders of stream messages it received.
    pub srmp_stream_receipts_queued: AtomicU64,
    pub expired_in_queue: AtomicU64,
    pub order_acks_received: AtomicU64,
    pub final_acks_received: AtomicU64,
    /// FinalAcks queued for the senders of transactional messages (MS-MQQB 3.1.7.2.2).
    pub final_acks_sent: AtomicU64,
    /// FinalAcks owed but not sent: the sender's address is not known.
    pub final_acks_unroutable: AtomicU64,
    /// FinalAcks that named no message of ours awaiting one.
    pub final_acks_unmatched: AtomicU64,
    /// OrderAcked messages dropped without awaiting their FinalAck (AWAITING_FINAL_ACK_MAX).
    pub final_acks_not_awaited: AtomicU64,
    /// Copies stored in a journal (a queue's or the machine's).
    pub journal_copies: AtomicU64,
    /// Journal copies dropped: the journal was over its quota.
    pub journal_dropped: AtomicU64,
    /// OrderAcks and FinalAcks not taken: from a queue manager the sequence was not sent to,
    /// for an unknown sequence, or for numbers not sent.
    pub tx_acks_refused: AtomicU64,
    /// Messages refused because the transactional sequence table was full.
    pub tx_table_full: AtomicU64,
    /// Partitions whose store is poisoned (a failed write or fsync): nothing more becomes
    /// durable there until restart.
    pub store_poisoned: AtomicU64,
    /// Group commits that failed and are retried.
    pub commit_failures: AtomicU64,
    /// Messages refused at their target queue: no send right for the sender, or a queue with
    /// Authenticate and a message not authenticated (`qm::rights`).
    pub access_denied: AtomicU64,
    /// Messages refused because their body is encrypted (lior cannot decrypt MSMQ bodies).
    pub encrypted_refused: AtomicU64,
    /// API receives with a wait that their queue's shard keeps waiting for a message now.
    pub api_receives_waiting: AtomicU64,
}

/// Errors of the local API.
#[derive(Debug)]
pub enum ApiError {
    Catalog(CatalogError),
    Store(StoreError),
    NoSuchQueue(String),
    /// No message with that lookup id in that queue.
    NoSuchMessage(String),
    /// A send could not be placed (bad format name, outgoing table full, ...).
    Send(String),
    /// The shard that owns the queue cannot take the request now (its request channel or
    /// its list of waiting receives is full, or it is stopping): try again shortly (HTTP 503).
    Busy(String),
    /// What the request staged can never become durable (the store failed for good): HTTP 500.
    NotDurable(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Catalog(e) => write!(f, "{e}"),
            ApiError::Store(e) => write!(f, "{e}"),
            ApiError::NoSuchQueue(q) => write!(f, "no queue named {q}"),
            ApiError::NoSuchMessage(m) => write!(f, "{m}"),
            ApiError::Send(e) => write!(f, "{e}"),
            ApiError::Busy(e) => write!(f, "{e}"),
            ApiError::NotDurable(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}
impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        ApiError::Catalog(e)
    }
}

impl Broker<FileStore> {
    /// Opens the data directory with `partitions` store partitions (at least as many as exist).
    pub fn open(config: Config, partitions: usize) -> anyhow::Result<Broker<FileStore>> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let existing = count_partitions(&dir);
        let n = partitions.max(existing).max(1);
        let store_cfg = StoreConfig {
            machine_bytes_max: config.parameters.MachineQuota.saturating_mul(1024),
            ..StoreConfig::default()
        };
        let mut stores = Vec::with_capacity(n);
        for i in 0..n {
            let pdir = dir.join(format!("partition-{i}"));
            std::fs::create_dir_all(&pdir)?;
            let disk = UringDisk::open(&pdir)
                .map_err(|e| anyhow::anyhow!("store {}: {e}", pdir.display()))?;
            // Recovery stops promptly on SIGTERM/SIGINT (the handlers are installed first).
            let mut stop = || crate::engine::signal::stop_requested().is_some();
            let (store, report) = crate::store::Store::open_until(disk, store_cfg, &mut stop)
                .map_err(|e| {
                    if e == crate::store::StoreError::Interrupted {
                        tracing::warn!(partition = i, "store recovery stopped by a signal");
                    }
                    anyhow::anyhow!("store {}: {e}", pdir.display())
                })?;
            tracing::info!(
                partition = i,
                segments = report.segments,
                messages = report.messages,
                cut_bytes = report.cut_bytes,
                crc_bytes = report.crc_bytes,
                "store recovered"
            );
            stores.push(store);
        }
        Broker::with_stores(config, stores)
    }
}

fn count_partitions(dir: &Path) -> usize {
    (0..)
        .take_while(|i| dir.join(format!("partition-{i}")).is_dir())
        .count()
}

impl<S: QueueStore> Broker<S> {
    /// Builds a broker over already opened stores (tests and simulation use in-memory ones).
    pub fn with_stores(config: Config, stores: Vec<S>) -> anyhow::Result<Broker<S>> {
        let guid = load_or_create_guid(&config.data_dir)?;
        let mut identity = LocalIdentity::discover(guid, &config.aliases);
        // The address we listen on names this machine too.
        if !config.listen.ip().is_unspecified() && !identity.addrs.contains(&config.listen.ip()) {
            identity.addrs.push(config.listen.ip());
        }
        let mut catalog = Catalog::open(&config.data_dir, config.limits.queues_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let partition_count = u32::try_from(stores.len().max(1)).unwrap_or(u32::MAX);
        if catalog
            .assign_partitions(partition_count)
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            tracing::info!(
                partitions = partition_count,
                "queues given their owning partitions (queue id modulo partitions)"
            );
        }
        let now_s = unix_now();
        let mut not_restored = 0u64;
        let mut partitions = Vec::new();
        for store in stores {
            let index = partitions.len();
            let mut part = Partition::new(store, index, &config);
            // Restore the transactional sequence states; older records of a key go.
            not_restored += restore_txn_states(&mut part, now_s)
                .map_err(|e| anyhow::anyhow!("partition {index}: {e}"))?;
            partitions.push(part);
        }
        // Queues an older lior spread over the partitions are gathered into their owners.
        let migration = migrate_spread(&mut partitions, &catalog);
        if migration.moved > 0 || migration.purged > 0 {
            tracing::info!(
                queues = migration.queues,
                moved = migration.moved,
                already_there = migration.purged.saturating_sub(migration.moved),
                "messages of queues spread over several partitions (stored by an older lior) \
                 moved into each queue's owning partition, in priority then arrival order; \
                 their lookup ids changed"
            );
        }
        // The duplicate and sequence tables, from the messages still stored.
        let (spread, rebuilt_not_restored) = rebuild_tables(&mut partitions, &catalog, now_s);
        not_restored += rebuilt_not_restored;
        // Sequence states raised from stored messages are staged now, ahead of any record a
        // receive could stage, so a removal is never durable without them.
        for part in &mut partitions {
            if !part.txn_dirty.is_empty() {
                part.commit(None)
                    .map_err(|e| anyhow::anyhow!("partition {}: {e}", part.index))?;
            }
        }
        let partitions: Vec<OwnedCell<Partition<S>>> =
            partitions.into_iter().map(OwnedCell::new).collect();
        if not_restored > 0 {
            tracing::error!(
                not_restored,
                "more transactional sequence states on disk than limits.tx_sequences_max ({}); \
                 raise it, or those senders' next messages are refused until idle states age out",
                config.limits.tx_sequences_max
            );
        }
        let durable_marks = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| p.borrow("store partition", i).durable_mark.clone())
            .collect();
        let shards = partitions.len();
        let outgoing =
            OutgoingTable::open(&config.data_dir, shards).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ordinals = OrdinalAllocator::open(&config.data_dir)?;
        let final_ack_peers = (0..shards)
            .map(|p| OwnedCell::new(FinalAckPeers::open(&config.data_dir, p)))
            .collect();
        let signer = crate::security::Signer::from_config(&config.parameters.security)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let catalog_generation = Arc::new(AtomicU64::new(1));
        Ok(Broker {
            signer,
            identity,
            outgoing: SharedOutgoing::new(outgoing),
            ordinals: OrdinalLeases::new(ordinals),
            outgoing_dirty: (0..shards).map(|_| AtomicBool::new(true)).collect(),
            durable_interest: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            arrival_interest: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            waker: OnceLock::new(),
            final_ack_peers,
            catalog: CatalogCell::new(catalog, catalog_generation.clone()),
            catalog_generation,
            partitions,
            durable_marks,
            txn_full_logged: std::sync::atomic::AtomicU32::new(0),
            counters: BrokerCounters::default(),
            receive_cursor: AtomicU64::new(0),
            spread,
            config,
        })
    }

    /// Takes the stores back (tests simulate a crash and a restart with them).
    pub fn into_stores(self) -> Vec<S> {
        self.partitions
            .into_iter()
            .map(|p| p.into_inner().store)
            .collect()
    }

    pub fn guid(&self) -> Guid {
        self.identity.guid
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Whether `ticket` of partition `i` is durable, as far as the last commit of it (by any
    /// thread) published. Takes no lock.
    pub fn is_durable(&self, i: usize, ticket: Ticket) -> bool {
        ticket == Ticket::IMMEDIATE || ticket < self.durable_mark(i)
    }

    /// Partition `i`'s durable watermark as its last commit published it (tickets below it are
    /// durable). SeqCst: see `note_durable_interest`.
    pub fn durable_mark(&self, i: usize) -> Ticket {
        self.durable_marks
            .get(i)
            .map_or(Ticket(0), |m| Ticket(m.load(Ordering::SeqCst)))
    }

    /// Borrows partition `i`, for the thread that runs it. A thread holds at most one at a
    /// time (a debug assertion checks it): take what is needed, drop the guard, then borrow the
    /// next. No lock: another thread's borrow while the shards run is counted (and aborts
    /// under `LIOR_PARTITION_OWNERSHIP=strict`); a borrow while it is borrowed panics.
    #[track_caller]
    pub fn partition(&self, i: usize) -> PartitionGuard<'_, S> {
        let i = i % self.partitions.len();
        self.probe_ownership(i);
        PartitionGuard::borrow(&self.partitions[i], i)
    }

    /// Counts (or, strict, aborts on) a touch of partition `i`'s state by a thread that does
    /// not run it while the shards run (see the `partition` module).
    #[track_caller]
    fn probe_ownership(&self, i: usize) {
        if !partition::thread_runs_partition(i) {
            self.counters
                .foreign_partition_locks
                .fetch_add(1, Ordering::Relaxed);
            partition::note_foreign_lock(i, std::panic::Location::caller());
        }
    }

    /// The partition that owns queue `q` (stores every message of it).
    pub fn owner(&self, q: &QueueDef) -> usize {
        q.partition as usize % self.partitions.len()
    }

    /// The partitions peek and receive read for queue `q`: its owner, or for a queue an older
    /// lior spread over them (and start-up could not gather), every partition the calling
    /// thread runs (all of them before the shards start and in tools; on a shard, the rest
    /// stay where they are, unread, until a restart moves them into the owner).
    fn read_partitions(&self, q: &QueueDef) -> Vec<usize> {
        if self.spread.contains(&q.id) {
            (0..self.partitions.len())
                .filter(|&p| partition::thread_runs_partition(p))
                .collect()
        } else {
            vec![self.owner(q)]
        }
    }

    /// The catalog as it is now: a snapshot taken without a lock, which no change alters
    /// (the next call sees the change).
    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load()
    }

    /// A fresh MessageIdOrdinal (unique across restarts), from the calling thread's lease
    /// (see [`OrdinalLeases`]: no lock per message).
    pub fn next_ordinal(&self) -> u32 {
        self.ordinals.next().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot persist the message ordinal; using an unreserved one");
            0
        })
    }
}

impl<S> std::fmt::Debug for Broker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("guid", &self.identity.guid)
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

/// The limits of each partition's transactional sequence table.
pub(super) fn txn_limits(config: &Config) -> TxnLimits {
    TxnLimits {
        capacity: config.limits.tx_sequences_max,
        evict_idle_s: u32::try_from(config.limits.tx_sequence_evict_idle_s).unwrap_or(u32::MAX),
        idle_max_s: u32::try_from(config.tx_sequence_idle_s()).unwrap_or(u32::MAX),
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Encodes a message we built into its frame.
fn encode_message(m: &UserMessage<'_>) -> Result<Vec<u8>, ApiError> {
    let mut out = vec![0u8; m.frame_len()];
    let n = m
        .encode(&mut out)
        .map_err(|e| ApiError::Send(format!("cannot encode the message: {e}")))?;
    out.truncate(n);
    Ok(out)
}
