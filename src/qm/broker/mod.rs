//! The queue manager proper: takes each incoming UserMessage to its queue (or to the dead-letter
//! queue, never dropping it without a trace), and serves the local API (queue administration,
//! peek, receive).
//!
//! Storage is partitioned: one store (one append-only log, one group commit) per partition, as
//! many partitions as engine shards. Each queue has one owning partition (`QueueDef.partition`,
//! persisted in the catalog) and every message of the queue is stored there, whichever shard,
//! API call or SRMP post brings it, so the queue has one delivery order: priority, then FIFO.
//! Under today's locks a shard locks the owner's partition for each message it stores there
//! (never two partition locks at once: see [`PartitionGuard`]). Queues whose messages an older
//! lior spread over several partitions are read from every partition (see `spread`). Tables
//! shared by all shards (catalog, duplicate table, transactional sequences) sit behind locks
//! taken once per message for a few hundred nanoseconds.

use std::collections::HashMap;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use crate::config::Config;
use crate::store::{
    Class, FileStore, MessageId, MessageMeta, QueueId, QueueStore, QuotaKind, StoreConfig,
    StoreError, Ticket, UringDisk, EXPIRY_NEVER,
};
use crate::wire::base::INFINITE;
use crate::wire::headers::MessageClass;
use crate::wire::user::UserMessage;
use crate::wire::Guid;

use crate::qm::catalog::{Catalog, CatalogError, QueueDef, DEADLETTER_ID, DEADXACT_ID};
use crate::qm::dedup::{DuplicateTable, PENDING};
use crate::qm::identity::{load_or_create_guid, OrdinalAllocator};
use crate::qm::outgoing::OutgoingTable;
use crate::qm::routing::{route, LocalIdentity, Route};
use crate::qm::txn::{IncomingSequence, TxKey, TxVerdict, TxnLimits, TxnTable};
use crate::wire::format_name::SystemQueue;

mod admin_acks;
mod expiry;
mod outgoing;
mod partition;
mod recovery;
mod requests;
mod wakeups;

pub use outgoing::{AckSource, TxOut};
pub use partition::{Partition, PartitionGuard, TXN_STATE_QUEUE};
pub use recovery::{migrate_spread, MigrationReport};
pub use requests::{QueueInfo, Received, SendOutcome, SendRequest, TIME_TO_REACH_QUEUE_DEFAULT_S};

use recovery::{rebuild_tables, restore_txn_states};

/// Sequence states one sweep looks at most.
pub const TXN_SWEEP_BATCH_MAX: usize = 4_096;
/// How long a duplicate waits at most for its first copy (being stored by another shard) to get
/// its place.
pub const DEDUP_PENDING_WAIT_MS: u64 = 1_000;
/// Ignored OrderAcks/FinalAcks are logged once per peer per this many seconds.
pub const TX_ACK_REFUSED_LOG_INTERVAL_S: u32 = 60;
/// Peers whose last such log line is remembered (the memory starts over when full).
pub const TX_ACK_REFUSED_LOG_PEERS_MAX: usize = 1_024;
/// Destinations the route cache remembers at most (it starts over when full).
pub const ROUTE_CACHE_MAX: usize = 4_096;

/// Destinations already resolved to a local queue, valid for one catalog generation.
#[derive(Debug, Default)]
struct RouteCache {
    generation: u64,
    /// By the raw UTF-16 bytes of a direct format name.
    direct: HashMap<Vec<u8>, Arc<QueueDef>>,
    /// By private queue number.
    numbers: HashMap<u32, Arc<QueueDef>>,
}

/// Expired messages one expiry pass handles at most (the rest wait for the next pass).
pub const EXPIRY_BATCH_MAX: usize = 1_024;
/// Messages one receive call returns at most.
pub const RECEIVE_BATCH_MAX: usize = 10_000;

/// Counters of the queue manager, for metrics and tests.
#[derive(Debug, Default)]
pub struct BrokerCounters {
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
    pub expired_in_queue: AtomicU64,
    pub order_acks_received: AtomicU64,
    pub final_acks_received: AtomicU64,
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
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What happened to one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stored in `queue`; the sender may be acknowledged once `ticket` is durable.
    Stored { queue: u32, ticket: Ticket },
    /// Stored in a dead-letter queue because it could not be delivered; `class` is the NACK
    /// the spec names for it.
    DeadLettered {
        queue: u32,
        ticket: Ticket,
        class: MessageClass,
    },
    /// A duplicate of a message already received: dropped, and acknowledged at session level
    /// once the first copy (in partition `origin.0`, ticket `origin.1`) is durable.
    Duplicate { origin: (usize, Ticket) },
    /// A transactional message out of order or already received: dropped; the OrderAck tells
    /// the sender where the sequence stands.
    TxRejected { origin: (usize, Ticket) },
    /// An OrderAck or FinalAck for our own transactional sends: not stored; the caller hands
    /// the frame to [`Broker::handle_tx_ack`] once it holds no partition lock.
    TxAck,
    /// It cannot be stored now (store poisoned, disk or machine quota full): the session must be
    /// closed so the sender keeps the message and tries again later.
    Refuse(StoreError),
}

/// The result of [`Broker::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub verdict: Verdict,
    /// Set for transactional messages: the sequence state to acknowledge with an OrderAck.
    pub order_ack: Option<(TxKey, IncomingSequence)>,
    /// An admin acknowledgement the sender asked for (ACK_REACH_QUEUE or a NACK class).
    pub admin_ack: Option<MessageClass>,
    /// The partition the message was stored in (the owner of its queue or of the dead-letter
    /// queue): a `Stored`/`DeadLettered` ticket is a ticket of this partition, and the caller
    /// commits it.
    pub partition: usize,
}

/// Errors of the local API.
#[derive(Debug)]
pub enum ApiError {
    Catalog(CatalogError),
    Store(StoreError),
    NoSuchQueue(String),
    /// A send could not be placed (bad format name, outgoing table full, ...).
    Send(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Catalog(e) => write!(f, "{e}"),
            ApiError::Store(e) => write!(f, "{e}"),
            ApiError::NoSuchQueue(q) => write!(f, "no queue named {q}"),
            ApiError::Send(e) => write!(f, "{e}"),
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

/// The queue manager shared by the engine shards and the local API.
pub struct Broker<S> {
    pub identity: LocalIdentity,
    pub config: Config,
    catalog: RwLock<Catalog>,
    partitions: Vec<Mutex<Partition<S>>>,
    dedup: Mutex<DuplicateTable>,
    /// Signalled when a pending duplicate-table entry got its place (or was dropped).
    dedup_settled: std::sync::Condvar,
    /// Threads waiting on `dedup_settled`, changed only under the `dedup` lock: the common case
    /// (nobody waits) costs no wake-up syscall per message.
    dedup_waiters: AtomicUsize,
    txn: Mutex<TxnTable>,
    /// Per partition: sequences forgotten by the table, whose records go at its next commit.
    txn_forget: Vec<Arc<Mutex<Vec<TxKey>>>>,
    /// Unix seconds the full sequence table was last logged.
    txn_full_logged: std::sync::atomic::AtomicU32,
    pub counters: BrokerCounters,
    /// Woken whenever messages become receivable (for receive with a wait).
    pub arrivals: tokio::sync::Notify,
    /// Rotates the partition receive starts at.
    receive_cursor: AtomicU64,
    outgoing: Mutex<OutgoingTable>,
    ordinals: Mutex<OrdinalAllocator>,
    /// Per shard: new outgoing messages were queued for it by another thread.
    outgoing_dirty: Vec<AtomicBool>,
    /// Per partition: the shards (bit `s % 64`) waiting for its durability to advance, woken
    /// by the partition's owner once it sees a commit complete (see `wake_durable_interest`).
    durable_interest: Vec<AtomicU64>,
    /// Wakes a shard (set by the daemon once the engine runs).
    waker: OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
    /// Outgoing transactional sequences, by outgoing queue id (MS-MQQB TxOutgoingSequence).
    tx_out: Mutex<HashMap<u32, TxOut>>,
    /// Outgoing queues whose transactional sequence made progress (an OrderAck arrived).
    tx_progress: Mutex<Vec<u32>>,
    /// When an ignored OrderAck/FinalAck was last logged, per peer address.
    refused_log: Mutex<HashMap<std::net::IpAddr, u32>>,
    route_cache: RwLock<RouteCache>,
    /// Bumped by every catalog change; the route cache is valid for one generation.
    catalog_generation: AtomicU64,
    /// Queues found at start-up with messages outside their owning partition (stored by a lior
    /// that spread a queue over the partitions): peek and receive look at every partition for
    /// them, in the older (not FIFO) order. New messages go to the owner only; S2 of issue 10
    /// migrates these at start-up.
    spread: std::collections::HashSet<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a programmer error that already stopped a
    // shard; the data behind it is still consistent at message granularity.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut txn = TxnTable::new(TxnLimits {
            capacity: config.limits.tx_sequences_max,
            evict_idle_s: u32::try_from(config.limits.tx_sequence_evict_idle_s).unwrap_or(u32::MAX),
            idle_max_s: u32::try_from(config.tx_sequence_idle_s()).unwrap_or(u32::MAX),
        });
        let mut not_restored = 0u64;
        let mut partitions = Vec::new();
        for store in stores {
            let index = partitions.len();
            let mut part = Partition::new(store, index);
            // Restore the transactional sequence states; older records of a key go.
            not_restored += restore_txn_states(&mut part, &mut txn, now_s)
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
        let p = &config.parameters;
        let mut dedup = DuplicateTable::new(
            p.RemoveDuplicateSize as usize,
            u64::from(p.RemoveDuplicateCleanup),
        );
        // The duplicate and sequence tables, from the messages still stored.
        let (spread, rebuilt_not_restored) =
            rebuild_tables(&partitions, &catalog, &mut txn, &mut dedup, now_s);
        not_restored += rebuilt_not_restored;
        let partitions: Vec<Mutex<Partition<S>>> = partitions.into_iter().map(Mutex::new).collect();
        if not_restored > 0 {
            tracing::error!(
                not_restored,
                "more transactional sequence states on disk than limits.tx_sequences_max ({}); \
                 raise it, or those senders' next messages are refused until idle states age out",
                config.limits.tx_sequences_max
            );
        }
        let txn_forget = partitions
            .iter()
            .map(|p| lock(p).txn_forget.clone())
            .collect();
        let shards = partitions.len();
        let outgoing =
            OutgoingTable::open(&config.data_dir, shards).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ordinals = OrdinalAllocator::open(&config.data_dir)?;
        Ok(Broker {
            identity,
            outgoing: Mutex::new(outgoing),
            ordinals: Mutex::new(ordinals),
            outgoing_dirty: (0..shards).map(|_| AtomicBool::new(true)).collect(),
            durable_interest: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            waker: OnceLock::new(),
            tx_out: Mutex::new(HashMap::new()),
            tx_progress: Mutex::new(Vec::new()),
            refused_log: Mutex::new(HashMap::new()),
            route_cache: RwLock::new(RouteCache::default()),
            catalog_generation: AtomicU64::new(1),
            catalog: RwLock::new(catalog),
            partitions,
            dedup: Mutex::new(dedup),
            dedup_settled: std::sync::Condvar::new(),
            dedup_waiters: AtomicUsize::new(0),
            txn: Mutex::new(txn),
            txn_forget,
            txn_full_logged: std::sync::atomic::AtomicU32::new(0),
            counters: BrokerCounters::default(),
            arrivals: tokio::sync::Notify::new(),
            receive_cursor: AtomicU64::new(0),
            spread,
            config,
        })
    }

    /// Takes the stores back (tests simulate a crash and a restart with them).
    pub fn into_stores(self) -> Vec<S> {
        self.partitions
            .into_iter()
            .map(|p| p.into_inner().unwrap_or_else(|e| e.into_inner()).store)
            .collect()
    }

    pub fn guid(&self) -> Guid {
        self.identity.guid
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Whether `ticket` of partition `i` is durable.
    pub fn is_durable(&self, i: usize, ticket: Ticket) -> bool {
        ticket == Ticket::IMMEDIATE || self.partition(i).store.is_durable(ticket)
    }

    /// Locks partition `i`. A thread holds at most one partition lock at a time (a debug
    /// assertion checks it): take what is needed, drop the guard, then lock the next.
    pub fn partition(&self, i: usize) -> PartitionGuard<'_, S> {
        PartitionGuard::lock(&self.partitions[i % self.partitions.len()])
    }

    /// The partition that owns queue `q` (stores every message of it).
    pub fn owner(&self, q: &QueueDef) -> usize {
        q.partition as usize % self.partitions.len()
    }

    /// The partitions peek and receive read for queue `q`: its owner, or every partition for a
    /// queue an older lior spread over them.
    fn read_partitions(&self, q: &QueueDef) -> Vec<usize> {
        if self.spread.contains(&q.id) {
            (0..self.partitions.len()).collect()
        } else {
            vec![self.owner(q)]
        }
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_route(&self, dest: &crate::wire::user::QueueRef<'_>) -> Option<Arc<QueueDef>> {
        let c = self.route_cache.read().unwrap_or_else(|p| p.into_inner());
        if c.generation != self.catalog_generation.load(Ordering::Acquire) {
            return None;
        }
        match dest {
            crate::wire::user::QueueRef::Direct(s) => c.direct.get(s.0).cloned(),
            crate::wire::user::QueueRef::DestinationPrivate(n) => c.numbers.get(n).cloned(),
            _ => None,
        }
    }

    fn cache_route(&self, dest: &crate::wire::user::QueueRef<'_>, q: &Arc<QueueDef>) {
        let mut c = self.route_cache.write().unwrap_or_else(|p| p.into_inner());
        let generation = self.catalog_generation.load(Ordering::Acquire);
        if c.generation != generation || c.direct.len() + c.numbers.len() >= ROUTE_CACHE_MAX {
            c.direct.clear();
            c.numbers.clear();
            c.generation = generation;
        }
        match dest {
            crate::wire::user::QueueRef::Direct(s) => {
                c.direct.insert(s.0.to_vec(), q.clone());
            }
            crate::wire::user::QueueRef::DestinationPrivate(n) => {
                c.numbers.insert(*n, q.clone());
            }
            _ => {}
        }
    }

    fn resolve(&self, route: &Route) -> Option<QueueDef> {
        let cat = self.catalog();
        match route {
            Route::Named(n) => cat.lookup(n).cloned(),
            Route::Number(n) => cat.by_id(*n).cloned(),
            Route::System(SystemQueue::DeadLetter) => cat.lookup("deadletter").cloned(),
            Route::System(SystemQueue::DeadXact) => cat.lookup("deadxact").cloned(),
            Route::System(SystemQueue::Journal) => cat.lookup("journal").cloned(),
            Route::NotHere(_) | Route::Unknown(_) => None,
        }
    }

    /// Takes one incoming UserMessage (MS-MQQB 3.1.5.8): expiry, routing, transactional and
    /// duplicate checks, then storage in its queue's owning partition or a dead-letter queue's.
    /// Locks that one partition itself: call it holding no partition lock. The caller commits
    /// `Delivered::partition`.
    pub fn deliver(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        let u = &msg.user;
        if msg.is_order_ack() || msg.is_final_ack() {
            return Delivered {
                verdict: Verdict::TxAck,
                order_ack: None,
                admin_ack: None,
                partition: 0,
            };
        }
        // The hot path: a destination seen before resolves from the cache without parsing the
        // format name or cloning the queue definition.
        if u.queue_manager_address.is_null() || u.queue_manager_address == self.identity.guid {
            if let Some(q) = self.cached_route(&u.destination) {
                return self.deliver_to(frame, msg, &q, now_unix, now_ms);
            }
        }
        let route = route(u, &self.identity);
        let Some(queue) = self.resolve(&route) else {
            let why = match &route {
                Route::NotHere(w) | Route::Unknown(w) => w.clone(),
                Route::Named(n) => format!("no queue named {n}"),
                Route::Number(n) => format!("no private queue number {n:#x}"),
                Route::System(s) => format!("no system queue {s:?}"),
            };
            return self.dead_letter(frame, msg, MessageClass::NACK_BAD_DST_Q, &why);
        };
        let queue = Arc::new(queue);
        self.cache_route(&u.destination, &queue);
        self.deliver_to(frame, msg, &queue, now_unix, now_ms)
    }

    /// Delivers a message whose queue is already known (an SRMP post names it by its URL).
    /// Locks the queue's owning partition (or the dead-letter queue's) itself.
    pub fn deliver_to(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        queue: &QueueDef,
        now_unix: u32,
        now_ms: u64,
    ) -> Delivered {
        let u = &msg.user;
        let transactional = u.flags.transactional();
        let acks = msg.properties.flags;
        let mut out = Delivered {
            verdict: Verdict::Duplicate {
                origin: (0, Ticket::IMMEDIATE),
            },
            order_ack: None,
            admin_ack: None,
            partition: self.owner(queue),
        };
        // TimeToReachQueue, checked after routing as MS-MQQB 3.1.5.8 orders the steps. The spec
        // has the receiver ignore an expired message; lior keeps it in the dead-letter queue
        // instead, so nothing is dropped without a trace.
        let ttrq = msg.base.time_to_reach_queue;
        if ttrq != INFINITE && u.sent_time != 0 && now_unix.saturating_sub(u.sent_time) > ttrq {
            bump(&self.counters.expired_on_arrival);
            return self.dead_letter(
                frame,
                msg,
                MessageClass::NACK_REACH_QUEUE_TIMEOUT,
                &format!(
                    "expired before reaching queue {} (sent {} s ago, TimeToReachQueue {} s)",
                    queue.name,
                    now_unix.saturating_sub(u.sent_time),
                    ttrq
                ),
            );
        }
        if transactional && !queue.transactional {
            return self.dead_letter(
                frame,
                msg,
                MessageClass::NACK_NOT_TRANSACTIONAL_Q,
                &format!(
                    "transactional message for non-transactional queue {}",
                    queue.name
                ),
            );
        }
        if !transactional && queue.transactional {
            return self.dead_letter(
                frame,
                msg,
                MessageClass::NACK_NOT_TRANSACTIONAL_MSG,
                &format!(
                    "non-transactional message for transactional queue {}",
                    queue.name
                ),
            );
        }
        // The owner's lock is held from the transactional and duplicate checks to the append,
        // so the queue's order is the order of its appends. Lock order: partition, then the
        // transactional table, then the duplicate table.
        let mut part = self.partition(out.partition);
        let key = (u.source_queue_manager, queue.id);
        let mut tx_state = None;
        // Held from the check until the state is recorded, so an accepted message always gets
        // its state (no other shard fills the table or moves the sequence in between).
        let mut txn_guard = None;
        if let (true, Some(th)) = (transactional, msg.transaction) {
            let seq_id = th.tx_sequence_id;
            let mut txn = lock(&self.txn);
            let mut verdict = txn.check(
                key,
                seq_id,
                th.tx_sequence_number,
                th.previous_tx_sequence_number,
            );
            if verdict == TxVerdict::Accept && !txn.has_room(&key, now_unix) {
                // Full of recently active sequences: refused, not stored without its state
                // (which would store it again on every resend). The sender resends later.
                verdict = TxVerdict::Reject;
                self.log_txn_full(txn.len());
            }
            if verdict == TxVerdict::Reject {
                bump(&self.counters.tx_rejected);
                let state = txn.get(&key);
                out.verdict = Verdict::TxRejected {
                    origin: (state.origin.0, Ticket(state.origin.1)),
                };
                out.order_ack = Some((key, state));
                return out;
            }
            tx_state = Some((seq_id, th.tx_sequence_number));
            txn_guard = Some(txn);
        }
        let dedup_key = (u.source_queue_manager, u.message_id);
        if tx_state.is_none() {
            match self.dedup_check(dedup_key, now_ms) {
                Ok(None) => {}
                Ok(Some(origin)) => {
                    bump(&self.counters.duplicates_dropped);
                    out.verdict = Verdict::Duplicate {
                        origin: (origin.0, Ticket(origin.1)),
                    };
                    return out;
                }
                Err(e) => {
                    bump(&self.counters.refused_store_errors);
                    out.verdict = Verdict::Refuse(e);
                    return out;
                }
            }
        }
        let stored = self.store(&mut part, queue.id, frame, msg);
        if tx_state.is_none() {
            let mut dedup = lock(&self.dedup);
            match stored {
                Ok(ticket) => dedup.set_origin(&dedup_key, (part.index, ticket.0)),
                // Not stored: a resend must be taken, not dropped as a duplicate.
                Err(_) => dedup.remove(&dedup_key),
            }
            // Read under the lock a waiter registers under: no wake-up is lost.
            let waiting = self.dedup_waiters.load(Ordering::Relaxed) > 0;
            drop(dedup);
            if waiting {
                self.dedup_settled.notify_all();
            }
        }
        match stored {
            Ok(ticket) => {
                bump(&self.counters.messages_stored);
                self.counters
                    .bytes_stored
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                out.verdict = Verdict::Stored {
                    queue: queue.id,
                    ticket,
                };
                if let (Some((seq_id, seq_no)), Some(txn)) = (tx_state, txn_guard.as_mut()) {
                    match txn.commit(key, seq_id, seq_no, (part.index, ticket.0), now_unix) {
                        Ok(s) => {
                            part.txn_dirty.insert(key, s);
                            out.order_ack = Some((key, s));
                        }
                        // Room was made above, under the same lock.
                        Err(_) => self.log_txn_full(txn.len()),
                    }
                    let evicted = txn.take_evicted();
                    self.forget_txn(evicted);
                }
                drop(txn_guard);
                if acks.positive_arrival() {
                    out.admin_ack = Some(MessageClass::ACK_REACH_QUEUE);
                }
                if u.flags.recoverable() {
                    // Visible to receivers once durable; waiters poll after the commit.
                } else {
                    self.arrivals.notify_waiters();
                }
                out
            }
            Err(StoreError::Quota {
                kind: QuotaKind::QueueBytes | QuotaKind::QueueMessages,
                used,
                limit,
            }) => {
                // A full queue: NACK_Q_EXCEED_QUOTA; the message goes to our dead-letter queue
                // if the sender asked for negative journaling (MS-MQQB 3.1.5.8.8).
                if crate::ratelog::QUOTA.allow() {
                    tracing::info!(queue = %queue.name, used, limit, "queue quota exceeded (limits.queue_messages_max or the queue's quota)");
                }
                if u.flags.journal_negative() && !transactional {
                    // The dead-letter queue has its own owner: one partition lock at a time.
                    drop(txn_guard);
                    drop(part);
                    self.dead_letter(frame, msg, MessageClass::NACK_Q_EXCEED_QUOTA, "quota")
                } else {
                    bump(&self.counters.nacks_owed);
                    Delivered {
                        verdict: Verdict::DeadLettered {
                            queue: queue.id,
                            ticket: Ticket::IMMEDIATE,
                            class: MessageClass::NACK_Q_EXCEED_QUOTA,
                        },
                        order_ack: None,
                        admin_ack: Some(MessageClass::NACK_Q_EXCEED_QUOTA)
                            .filter(|_| acks.negative_arrival()),
                        partition: out.partition,
                    }
                }
            }
            Err(e) => {
                bump(&self.counters.refused_store_errors);
                Delivered {
                    verdict: Verdict::Refuse(e),
                    order_ack: None,
                    admin_ack: None,
                    partition: out.partition,
                }
            }
        }
    }

    /// Logs (once a minute) that the transactional sequence table is full.
    fn log_txn_full(&self, len: usize) {
        bump(&self.counters.tx_table_full);
        let now = unix_now();
        let last = self.txn_full_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= TX_ACK_REFUSED_LOG_INTERVAL_S
            && self
                .txn_full_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                states = len,
                "transactional sequence table full (limits.tx_sequences_max = {}); messages \
                 starting new sequences are refused until states idle for \
                 limits.tx_sequence_evict_idle_s = {} s can be evicted; raise the limit if \
                 these senders are legitimate",
                self.config.limits.tx_sequences_max,
                self.config.limits.tx_sequence_evict_idle_s
            );
        }
    }

    /// Hands forgotten sequence states to every partition (their records go at its next
    /// commit).
    fn forget_txn(&self, keys: Vec<TxKey>) {
        if keys.is_empty() {
            return;
        }
        for f in &self.txn_forget {
            lock(f).extend_from_slice(&keys);
        }
    }

    /// Forgets transactional sequence states idle past their time (bounded work per call).
    pub fn sweep_txn(&self, now_unix: u32) {
        let evicted = {
            let mut t = lock(&self.txn);
            t.sweep(now_unix, TXN_SWEEP_BATCH_MAX);
            t.take_evicted()
        };
        self.forget_txn(evicted);
    }

    /// Transactional sequence states kept now.
    pub fn txn_len(&self) -> usize {
        lock(&self.txn).len()
    }

    /// Looks a non-transactional message up in the duplicate table and records it as pending
    /// when new. A duplicate whose first copy another shard is storing at this very moment waits
    /// (a few microseconds) until that copy has its ticket: until then it has no place the
    /// duplicate's acknowledgement could wait for. Past [`DEDUP_PENDING_WAIT_MS`] the message is
    /// refused (the session closes; the sender resends).
    fn dedup_check(
        &self,
        key: (Guid, u32),
        now_ms: u64,
    ) -> Result<Option<(usize, u64)>, StoreError> {
        // The clock is read only when there is something to wait for.
        let mut deadline = None;
        let mut dedup = lock(&self.dedup);
        loop {
            match dedup.check_and_insert(key, now_ms, PENDING) {
                Some(o) if o == PENDING => {}
                found => return Ok(found),
            }
            let deadline = *deadline.get_or_insert_with(|| {
                std::time::Instant::now() + std::time::Duration::from_millis(DEDUP_PENDING_WAIT_MS)
            });
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::error!(source = %key.0, id = key.1, "the first copy of a duplicate was not stored in time; refusing the copy");
                return Err(StoreError::NotDurable);
            }
            self.dedup_waiters.fetch_add(1, Ordering::Relaxed);
            dedup = self
                .dedup_settled
                .wait_timeout(dedup, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.dedup_waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn store(
        &self,
        part: &mut Partition<S>,
        queue: u32,
        frame: &[u8],
        msg: &UserMessage<'_>,
    ) -> Result<Ticket, StoreError> {
        let meta = message_meta(msg);
        let (used, _) = part.store.queue_len(QueueId(queue));
        let limit = self.config.limits.queue_messages_max;
        if used >= limit {
            return Err(StoreError::Quota {
                kind: QuotaKind::QueueMessages,
                used,
                limit,
            });
        }
        // A full commit batch is submitted by the store itself (it never returns BatchFull for
        // a message that fits a batch), so three 3 MB messages in one turn are all stored.
        part.store
            .append(QueueId(queue), &meta, frame)
            .map(|a| a.ticket)
    }

    /// Stores `frame` in the dead-letter queue (transactional or not) at that queue's owner;
    /// locks that partition itself.
    fn dead_letter(
        &self,
        frame: &[u8],
        msg: &UserMessage<'_>,
        class: MessageClass,
        why: &str,
    ) -> Delivered {
        let dlq = if msg.user.flags.transactional() {
            DEADXACT_ID
        } else {
            DEADLETTER_ID
        };
        let acks = msg.properties.flags;
        let admin_ack = (acks.negative_arrival()).then_some(class);
        let has_admin_queue = msg.user.admin.code() != 0;
        // One line per message would let a sender fill the disk with log: rate-limited, with
        // a summary of what was left out (the dead_lettered counter has every one).
        if crate::ratelog::DEAD_LETTER.allow() {
            tracing::warn!(
                source = %msg.user.source_queue_manager,
                id = msg.user.message_id,
                nack = ?class,
                nack_requested = acks.negative_arrival(),
                admin_queue = has_admin_queue,
                "undeliverable message moved to the dead-letter queue: {why}"
            );
        }
        let pi = self.dead_letter_partition(dlq);
        let stored = self.store(&mut self.partition(pi), dlq, frame, msg);
        match stored {
            Ok(ticket) => {
                bump(&self.counters.dead_lettered);
                if admin_ack.is_some() && has_admin_queue {
                    bump(&self.counters.nacks_owed);
                }
                Delivered {
                    verdict: Verdict::DeadLettered {
                        queue: dlq,
                        ticket,
                        class,
                    },
                    order_ack: None,
                    admin_ack,
                    partition: pi,
                }
            }
            Err(e) => {
                bump(&self.counters.refused_store_errors);
                Delivered {
                    verdict: Verdict::Refuse(e),
                    order_ack: None,
                    admin_ack: None,
                    partition: pi,
                }
            }
        }
    }

    /// The owning partition of dead-letter queue `dlq` (DEADLETTER_ID or DEADXACT_ID).
    fn dead_letter_partition(&self, dlq: u32) -> usize {
        self.catalog()
            .by_id(dlq)
            .map_or(dlq as usize % self.partitions.len(), |q| self.owner(q))
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

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn encode_message(m: &UserMessage<'_>) -> Result<Vec<u8>, ApiError> {
    let mut out = vec![0u8; m.frame_len()];
    let n = m
        .encode(&mut out)
        .map_err(|e| ApiError::Send(format!("cannot encode the message: {e}")))?;
    out.truncate(n);
    Ok(out)
}

impl<S: QueueStore> Broker<S> {
    /// A fresh MessageIdOrdinal (unique across restarts).
    pub fn next_ordinal(&self) -> u32 {
        lock(&self.ordinals).allocate().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot persist the message ordinal; using an unreserved one");
            0
        })
    }
}

/// The store metadata of a message we built.
pub fn message_meta(m: &UserMessage<'_>) -> MessageMeta {
    let u = &m.user;
    let mut id = [0u8; 20];
    id[..16].copy_from_slice(&u.source_queue_manager.0);
    id[16..].copy_from_slice(&u.message_id.to_le_bytes());
    MessageMeta {
        priority: m.base.flags.priority(),
        class: if u.flags.transactional() {
            Class::Transactional
        } else if u.flags.recoverable() {
            Class::Recoverable
        } else {
            Class::Express
        },
        message_id: MessageId(id),
        expiry_unix_s: if u.time_to_be_received == INFINITE {
            EXPIRY_NEVER
        } else {
            u.sent_time
                .saturating_add(u.time_to_be_received)
                .min(EXPIRY_NEVER - 1)
        },
    }
}
